//! nbd-proxy's `config.json` (nbd-proxy.md §4), selection of a configuration and the device
//! check (§6), with the original's messages. Entries are checked in file order and the first
//! error stops the load; the file is loaded before anything else, so its errors are fatal even
//! for `--metadata`.
//!
//! hexzd adds three optional keys to a configuration, ignored by the original: `snapshot` (a
//! local `.hxz` archive to attach instead of relaying stdin/stdout), `stream` (`main` or `aux`)
//! and `password-file` (for an encrypted archive).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{SFlag, stat};

use super::json::{self, Object, Value};
use crate::format::Stream;
use crate::kernel::DevNum;

/// Where the original reads its configuration.
pub const DEFAULT_CONFIG: &str = "/etc/nbd-proxy/config.json";
/// The original's state hook.
pub const DEFAULT_STATE_HOOK: &str = "/etc/nbd-proxy/state";
/// `timeout` when the file has none, in seconds.
pub const DEFAULT_TIMEOUT: i32 = 30;
/// Larger files are refused unread: a configuration is a few hundred bytes.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A local archive a configuration attaches instead of relaying (a hexzd extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSource {
    /// The archive.
    pub snapshot: PathBuf,
    /// Which stream becomes the device.
    pub stream: Stream,
    /// Password file of an encrypted archive.
    pub password_file: Option<PathBuf>,
}

/// One entry of `configurations`.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    /// Its name (the object key).
    pub name: String,
    /// `nbd-device`.
    pub nbd_device: String,
    /// `default`, with json-c truthiness.
    pub is_default: bool,
    /// `metadata`, when it is an object.
    pub metadata: Option<Object>,
    /// `snapshot` (and `stream`, `password-file`), when given.
    pub local: Option<LocalSource>,
}

/// A loaded configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// `timeout` as json-c reads it (may be negative; see [`ProxyConfig::kernel_timeout`]).
    pub timeout: i32,
    /// The configurations, in file order.
    pub configurations: Vec<Configuration>,
    /// The default configuration: the only one, or the one flagged `default`.
    pub default: Option<usize>,
}

/// Why the file could not be loaded. The first line of each is the contract's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable, not JSON, or `null`.
    #[error("can't read configuration from {}\n", .0.display())]
    Unreadable(PathBuf),
    /// No `configurations` key (or the top level is not an object).
    #[error("no configurations specified")]
    NoConfigurations,
    /// `configurations` is not an object.
    #[error("invalid configurations format")]
    InvalidConfigurations,
    /// An entry without `nbd-device`, or not an object.
    #[error("config {0} doesn't specify a nbd-device")]
    NoDevice(String),
    /// `nbd-device` is not a string.
    #[error("config {0} has invalid nbd-device")]
    InvalidDevice(String),
    /// A second truthy `default`. The original prints a stale errno after it, which is always
    /// 0 ("Success"; nbd-proxy.md §11, §13).
    #[error("multiple configs flagged as default: Success")]
    MultipleDefaults,
    /// A hexzd key (`snapshot`, `stream`, `password-file`) of the wrong type or value.
    #[error("config {name} has invalid {key} ({expected})")]
    InvalidKey {
        name: String,
        key: &'static str,
        expected: &'static str,
    },
}

impl ConfigError {
    /// The lines printed for this error (each after the program prefix): the message, then,
    /// except for an unreadable file, `failed to load config from PATH`.
    pub fn lines(&self, path: &Path) -> Vec<String> {
        let mut v = vec![self.to_string()];
        if !matches!(self, ConfigError::Unreadable(_)) {
            v.push(format!("failed to load config from {}", path.display()));
        }
        v
    }
}

/// Why no configuration could be used (nbd-proxy.md §6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// No name given and no default.
    #[error("no config specified, and no default")]
    NoDefault,
    /// No configuration has that name (exact, case-sensitive).
    #[error("no such configuration '{0}'")]
    NotFound(String),
    /// `stat` of the device failed.
    #[error("can't stat nbd device {device}: {}", errno.desc())]
    Stat { device: String, errno: Errno },
    /// The device is not a block device (the original's stale errno is always 0).
    #[error("specified nbd path {0} isn't a block device: Success")]
    NotBlock(String),
}

impl ProxyConfig {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let unreadable = || ConfigError::Unreadable(path.to_path_buf());
        // Only regular files: a FIFO or a device would block or never end.
        let meta = std::fs::metadata(path).map_err(|_| unreadable())?;
        if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
            return Err(unreadable());
        }
        let text = std::fs::read_to_string(path).map_err(|_| unreadable())?;
        ProxyConfig::parse(&text).map_err(|e| e.unwrap_or_else(unreadable))
    }

    /// Parses a document; `Err(None)` when it is not JSON (or `null`).
    pub fn parse(text: &str) -> Result<ProxyConfig, Option<ConfigError>> {
        // json-c's tokener cannot tell that a bare number or literal at the very end of the
        // file is complete, and reports no object (`5` is unreadable, `5\n` is not).
        let bare = !text.trim_start().starts_with(['{', '[', '"']);
        if bare && !text.ends_with([' ', '\t', '\n', '\r']) {
            return Err(None);
        }
        let top = match json::parse(text) {
            Ok(Value::Null) | Err(_) => return Err(None),
            Ok(v) => v,
        };
        let top = match top {
            Value::Object(o) => o,
            _ => return Err(Some(ConfigError::NoConfigurations)),
        };
        let timeout = top.get("timeout").map_or(DEFAULT_TIMEOUT, Value::get_int);
        let entries = match top.get("configurations") {
            None => return Err(Some(ConfigError::NoConfigurations)),
            Some(Value::Object(o)) => o,
            Some(_) => return Err(Some(ConfigError::InvalidConfigurations)),
        };
        let mut configurations = Vec::new();
        let mut default = None;
        for (name, value) in &entries.0 {
            let c = parse_one(name, value).map_err(Some)?;
            if c.is_default {
                if default.is_some() {
                    return Err(Some(ConfigError::MultipleDefaults));
                }
                default = Some(configurations.len());
            }
            configurations.push(c);
        }
        // A single configuration is the default whatever its flag says (§4; kept).
        if configurations.len() == 1 {
            default = Some(0);
        }
        Ok(ProxyConfig {
            timeout,
            configurations,
            default,
        })
    }

    /// The `--metadata` line: every configuration's metadata object (or `null`), by name, in
    /// json-c's spaced style, without the trailing newline.
    pub fn metadata_json(&self) -> String {
        let mut o = Object::default();
        for c in &self.configurations {
            let v = c.metadata.clone().map_or(Value::Null, Value::Object);
            o.insert(c.name.clone(), v);
        }
        let mut out = String::new();
        json::write_object(&mut out, &o);
        out
    }

    /// Picks the configuration `name`, or the default, and checks that its device is a block
    /// device; returns it with the device number uevents will carry.
    pub fn select(&self, name: Option<&str>) -> Result<(&Configuration, DevNum), SelectError> {
        let c = match name {
            None => self
                .default
                .map(|i| &self.configurations[i])
                .ok_or(SelectError::NoDefault)?,
            Some(n) => self
                .configurations
                .iter()
                .find(|c| c.name == n)
                .ok_or_else(|| SelectError::NotFound(n.to_string()))?,
        };
        let st = stat(c.nbd_device.as_str()).map_err(|errno| SelectError::Stat {
            device: c.nbd_device.clone(),
            errno,
        })?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFBLK {
            return Err(SelectError::NotBlock(c.nbd_device.clone()));
        }
        Ok((c, DevNum::from_rdev(st.st_rdev)))
    }

    /// The timeout handed to the kernel: negative values mean none (0), with a warning for
    /// the caller to print (nbd-proxy.md §11: nbd-client's handling of them is unknown and a
    /// negative kernel timeout makes no sense).
    pub fn kernel_timeout(&self) -> (u32, Option<String>) {
        match u32::try_from(self.timeout) {
            Ok(t) => (t, None),
            Err(_) => (
                0,
                Some(format!(
                    "timeout {} is negative; running without a timeout",
                    self.timeout
                )),
            ),
        }
    }
}

fn parse_one(name: &str, value: &Value) -> Result<Configuration, ConfigError> {
    let Value::Object(o) = value else {
        return Err(ConfigError::NoDevice(name.to_string()));
    };
    let nbd_device = match o.get("nbd-device") {
        None => return Err(ConfigError::NoDevice(name.to_string())),
        Some(Value::String(s)) => s.split('\0').next().unwrap_or("").to_string(),
        Some(_) => return Err(ConfigError::InvalidDevice(name.to_string())),
    };
    let is_default = o.get("default").is_some_and(Value::get_boolean);
    let metadata = match o.get("metadata") {
        Some(Value::Object(m)) => Some(m.clone()),
        _ => None,
    };
    Ok(Configuration {
        name: name.to_string(),
        nbd_device,
        is_default,
        metadata,
        local: parse_local(name, o)?,
    })
}

/// hexzd's `snapshot`, `stream` and `password-file` keys.
fn parse_local(name: &str, o: &Object) -> Result<Option<LocalSource>, ConfigError> {
    let invalid = |key, expected| ConfigError::InvalidKey {
        name: name.to_string(),
        key,
        expected,
    };
    let path = |key| match o.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => Ok(Some(PathBuf::from(s))),
        Some(_) => Err(invalid(key, "a path")),
    };
    let snapshot = path("snapshot")?;
    let password_file = path("password-file")?;
    let stream = match o.get("stream") {
        None => Stream::Main,
        Some(Value::String(s)) if s == "main" => Stream::Main,
        Some(Value::String(s)) if s == "aux" => Stream::Aux,
        Some(_) => return Err(invalid("stream", "\"main\" or \"aux\"")),
    };
    match snapshot {
        Some(snapshot) => Ok(Some(LocalSource {
            snapshot,
            stream,
            password_file,
        })),
        None if o.get("stream").is_some() || password_file.is_some() => Err(invalid(
            "snapshot",
            "stream and password-file need a snapshot",
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests;
