//! Validation: the file's values with the command line's applied over them, checked once into
//! a [`Config`], secrets read. Every error names where the bad value came from: `FILE: key` or
//! the flag.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawConfig, Value, parse_duration, parse_size};
use super::{
    ArchiveArg, AttachConfig, Config, ConfigError, MAX_TIMEOUT, MAX_WORKERS, Overrides, Secret,
    SnapshotConfig,
};
use crate::format::Stream;
use crate::serving::valid_name;
use crate::store::file::{read_password, read_small};

/// Longest bearer token file.
const MAX_TOKEN_FILE: u64 = 64 * 1024;
/// Smallest `[limits] buffer_memory`: one HTTP body chunk. (An NBD READ larger than the
/// budget is still served, alone.)
const MIN_BUFFER_MEMORY: u64 = 1 << 20;

/// Where a value came from, for its error.
pub(super) enum Place {
    /// A key of the config file.
    Key(String),
    /// A command-line flag.
    Flag(&'static str),
}

/// The file being validated: names keys in errors and anchors relative paths.
pub(super) struct Source<'a> {
    pub(super) file: Option<&'a Path>,
}

impl Source<'_> {
    pub(super) fn key(&self, key: &str) -> Place {
        let file = self
            .file
            .map_or_else(String::new, |f| f.display().to_string());
        Place::Key(format!("{file}: {key}"))
    }

    /// A path from the file: relative to the file's directory.
    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        let base = self
            .file
            .and_then(Path::parent)
            .unwrap_or_else(|| Path::new("."));
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    }
}

impl Place {
    pub(super) fn invalid(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            place: match self {
                Place::Key(k) => k.clone(),
                Place::Flag(f) => (*f).to_string(),
            },
            problem: problem.into(),
        }
    }

    pub(super) fn duration(&self, v: &Value) -> Result<Duration, ConfigError> {
        let d = match v {
            Value::Int(n) => Duration::from_secs(*n),
            Value::Str(s) => parse_duration(s).map_err(|p| self.invalid(p))?,
        };
        self.bounded(d)
    }

    fn bounded(&self, d: Duration) -> Result<Duration, ConfigError> {
        // Deadlines are computed as `Instant + timeout`; an absurd value would overflow there
        // on every connection rather than here once.
        if d > MAX_TIMEOUT {
            return Err(self.invalid(format!("{} s is longer than a year", d.as_secs())));
        }
        Ok(d)
    }

    pub(super) fn positive_duration(&self, v: &Value) -> Result<Duration, ConfigError> {
        let d = self.duration(v)?;
        if d.is_zero() {
            return Err(self.invalid("must be greater than 0"));
        }
        Ok(d)
    }

    pub(super) fn size(&self, v: &Value) -> Result<u64, ConfigError> {
        match v {
            Value::Int(n) => Ok(*n),
            Value::Str(s) => parse_size(s).map_err(|p| self.invalid(p)),
        }
    }

    fn at_least_one(&self, n: usize) -> Result<usize, ConfigError> {
        if n == 0 {
            return Err(self.invalid("must be at least 1"));
        }
        Ok(n)
    }

    /// The bearer token: the file's first line, trimmed.
    fn token(&self, path: &Path) -> Result<String, ConfigError> {
        let bytes = read_small(path, "a token file", MAX_TOKEN_FILE)
            .map_err(|e| self.invalid(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            self.invalid(format!("{}: the token is not UTF-8 text", path.display()))
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(self.invalid(format!("{}: the token file is empty", path.display())));
        }
        Ok(token.to_string())
    }

    fn password(&self, path: &Path) -> Result<Secret, ConfigError> {
        read_password(path)
            .map(Secret)
            .map_err(|e| self.invalid(e.to_string()))
    }
}

/// Validates the file's values (if a file was read) with `ov` applied over them.
pub(super) fn validate(
    raw: Option<(RawConfig, &Path)>,
    ov: &Overrides,
) -> Result<Config, ConfigError> {
    let (raw, file) = match raw {
        Some((r, f)) => (r, Some(f)),
        None => (RawConfig::default(), None),
    };
    let src = Source { file };
    let mut c = Config {
        file: file.map(Path::to_path_buf),
        ..Config::default()
    };

    let h = raw.http.unwrap_or_default();
    let n = raw.nbd.unwrap_or_default();
    let t = super::tls::tls(&src, raw.tls.as_ref(), &h, &n, ov)?;
    c.http.listen_tls = t.listen_tls;
    c.nbd.settings.tls = t.nbd_tls;
    c.tls = t.tls;
    if let Some(l) = ov.http_listen.clone().or(h.listen) {
        c.http.listen = l;
    }
    let flag_or = |flag: bool, name, key: &str| {
        if flag {
            Place::Flag(name)
        } else {
            src.key(key)
        }
    };
    let place = flag_or(ov.http_listen.is_some(), "--http", "http.listen");
    listen_addresses(&place, &c.http.listen)?;
    let place = flag_or(ov.https_listen.is_some(), "--https", "http.listen_tls");
    listen_addresses(&place, &c.http.listen_tls)?;
    let s = &mut c.http.settings;
    if let Some(n) = h.max_connections {
        s.max_connections = src.key("http.max_connections").at_least_one(n)?;
    }
    if let Some(v) = &h.header_timeout {
        s.header_timeout = src.key("http.header_timeout").positive_duration(v)?;
    }
    if let Some(v) = &h.idle_timeout {
        s.idle_timeout = src.key("http.idle_timeout").positive_duration(v)?;
    }
    if let Some(m) = ov.max_range_bytes {
        s.max_range_bytes = m;
    } else if let Some(v) = &h.max_range_bytes {
        s.max_range_bytes = src.key("http.max_range_bytes").size(v)?;
    }
    if let Some(p) = &ov.auth_token_file {
        s.auth_token = Some(Place::Flag("--auth-token-file").token(p)?);
    } else if let Some(p) = &h.auth_token_file {
        s.auth_token = Some(src.key("http.auth_token_file").token(&src.resolve(p))?);
    }

    if let Some(l) = ov.nbd_listen.clone().or(n.listen) {
        c.nbd.listen = l;
    }
    let place = flag_or(ov.nbd_listen.is_some(), "--nbd", "nbd.listen");
    listen_addresses(&place, &c.nbd.listen)?;
    if let Some(u) = &ov.nbd_unix {
        c.nbd.unix.clone_from(u);
    } else if let Some(u) = &n.unix {
        c.nbd.unix = u.iter().map(|p| src.resolve(p)).collect();
    }
    let s = &mut c.nbd.settings;
    if let Some(m) = n.max_connections {
        s.max_connections = src.key("nbd.max_connections").at_least_one(m)?;
    }
    if let Some(v) = &n.handshake_timeout {
        s.handshake_timeout = src.key("nbd.handshake_timeout").positive_duration(v)?;
    }
    if let Some(v) = &n.idle_timeout {
        let d = src.key("nbd.idle_timeout").duration(v)?;
        s.idle_timeout = (!d.is_zero()).then_some(d);
    }

    let cache = raw.cache.unwrap_or_default();
    if let Some(m) = ov.cache_memory {
        c.cache.memory = m;
    } else if let Some(v) = &cache.memory {
        c.cache.memory = src.key("cache.memory").size(v)?;
    }
    let workers = match (ov.workers, cache.workers) {
        (Some(w), _) => Some((w, Place::Flag("--workers"))),
        (None, Some(w)) => Some((w, src.key("cache.workers"))),
        (None, None) => None,
    };
    if let Some((w, place)) = workers {
        if w > MAX_WORKERS {
            return Err(place.invalid(format!("{w} is more than {MAX_WORKERS}")));
        }
        c.cache.workers = w;
    }

    let l = raw.limits.unwrap_or_default();
    if let Some(v) = &l.buffer_memory {
        let place = src.key("limits.buffer_memory");
        let n = place.size(v)?;
        if n < MIN_BUFFER_MEMORY {
            return Err(place.invalid(format!(
                "{n} bytes is less than the {} MiB one full-size response needs",
                MIN_BUFFER_MEMORY >> 20
            )));
        }
        c.limits.buffer_memory = n;
    }
    if let Some(n) = l.max_connections_per_client {
        c.limits.max_connections_per_client = super::PerClientCap {
            limit: n,
            local_exempt: false,
        };
    }
    if let Some(v) = &l.send_timeout {
        let d = src.key("limits.send_timeout").positive_duration(v)?;
        c.limits.send_timeout = d;
    }
    // The front ends read the send timeout from their own settings.
    c.http.settings.send_timeout = c.limits.send_timeout;
    c.nbd.settings.send_timeout = c.limits.send_timeout;

    let daemon = raw.daemon.unwrap_or_default();
    if let Some(d) = ov.shutdown_timeout {
        c.daemon.shutdown_timeout = Place::Flag("--shutdown-timeout").bounded(d)?;
    } else if let Some(v) = &daemon.shutdown_timeout {
        c.daemon.shutdown_timeout = src.key("daemon.shutdown_timeout").duration(v)?;
    }

    c.remote = super::remote::remote(&src, &cache, raw.s3.as_ref(), raw.remote.as_ref())?;
    c.snapshots = snapshots(&src, &raw.snapshot)?;
    c.snapshots.extend(archive_arguments(ov)?);

    // After the command line's archives: an entry may name one of them.
    c.attach = attachments(&src, &raw.attach, &c.snapshots)?;
    Ok(c)
}

/// Checks that every address has the form `serve` binds, so that `--check-config` (and a
/// reload) refuses what start-up would: `HOST:PORT`, the port a number from 0 to 65535, the
/// host an IP address (IPv6 in brackets) or a name. Names are resolved only when binding: a
/// check must not wait on DNS.
fn listen_addresses(place: &Place, list: &[String]) -> Result<(), ConfigError> {
    for a in list {
        if let Err(why) = listen_address(a) {
            return Err(place.invalid(format!(
                "bad listen address {a:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:8080 or \
                 [::1]:8080)"
            )));
        }
    }
    Ok(())
}

fn listen_address(a: &str) -> Result<(), &'static str> {
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err("no :PORT");
    };
    if port.parse::<u16>().is_err() {
        return Err("the port is not a number from 0 to 65535");
    }
    if host.is_empty() {
        return Err("no host");
    }
    if host.starts_with('[') || host.ends_with(']') {
        return Err("not an IPv6 address in brackets");
    }
    Ok(())
}

/// The file's `[[snapshot]]` entries: names unique and valid, at most one default, archives
/// openable (without blocking), passwords read.
fn snapshots(
    src: &Source<'_>,
    raw: &[super::raw::RawSnapshot],
) -> Result<Vec<SnapshotConfig>, ConfigError> {
    let mut out: Vec<SnapshotConfig> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let key = |k: &str| src.key(&format!("snapshot[{i}].{k}"));
        if !valid_name(&s.name) {
            return Err(key("name").invalid(format!(
                "{:?} is not a valid name: use letters, digits, '.', '_' or '-', not \"disk\" or \"memory\"",
                s.name
            )));
        }
        if out.iter().any(|o| o.name == s.name) {
            return Err(key("name").invalid(format!("duplicate snapshot name {:?}", s.name)));
        }
        let default = s.default.unwrap_or(false);
        if default && out.iter().any(|o| o.default) {
            return Err(key("default").invalid("only one snapshot can be the default"));
        }
        // A URL is checked for syntax here and fetched when the snapshot opens.
        let path = if crate::store::Location::is_url(&s.path) {
            crate::store::Location::parse(&s.path)
                .map_err(|e| key("path").invalid(e.to_string()))?;
            s.path.clone()
        } else {
            let path = src.resolve(&s.path);
            crate::store::file::open_archive(&path)
                .map_err(|e| key("path").invalid(e.to_string()))?;
            path
        };
        let password = match &s.password_file {
            Some(p) => Some(key("password_file").password(&src.resolve(p))?),
            None => None,
        };
        out.push(SnapshotConfig {
            name: s.name.clone(),
            path,
            default,
            password,
        });
    }
    Ok(out)
}

/// The archive arguments, with the `--password-file` password (read once, and only when there
/// are archives to use it). The archives themselves are checked when they are opened.
fn archive_arguments(ov: &Overrides) -> Result<Vec<SnapshotConfig>, ConfigError> {
    if ov.archives.is_empty() {
        return Ok(Vec::new());
    }
    let password = match &ov.password_file {
        Some(p) => Some(Place::Flag("--password-file").password(p)?),
        None => None,
    };
    ov.archives
        .iter()
        .map(|a| {
            let a = ArchiveArg::parse(a).map_err(ConfigError::Argument)?;
            Ok(SnapshotConfig {
                name: a.name,
                path: a.path,
                default: false,
                password: password.clone(),
            })
        })
        .collect()
}

/// The `[[attach]]` entries: each names a snapshot of `snapshots`, a device node that is an
/// absolute path under `/dev` used by no other entry, a stream and a whole number of seconds
/// of kernel timeout. Nothing is opened here: the device is the daemon's to check when it
/// attaches (a `--check-config` run must not disturb a running attachment).
fn attachments(
    src: &Source<'_>,
    raw: &[super::raw::RawAttach],
    snapshots: &[SnapshotConfig],
) -> Result<Vec<AttachConfig>, ConfigError> {
    let mut out: Vec<AttachConfig> = Vec::with_capacity(raw.len());
    for (i, a) in raw.iter().enumerate() {
        let key = |k: &str| src.key(&format!("attach[{i}].{k}"));
        if !snapshots.iter().any(|s| s.name == a.snapshot) {
            let names: Vec<&str> = snapshots.iter().map(|s| s.name.as_str()).collect();
            let known = if names.is_empty() {
                "there are no snapshots".to_string()
            } else {
                format!("the snapshots are: {}", names.join(", "))
            };
            return Err(
                key("snapshot").invalid(format!("no snapshot is named {:?} ({known})", a.snapshot))
            );
        }
        device_path(&a.device).map_err(|p| key("device").invalid(p))?;
        if let Some(j) = out.iter().position(|o| o.device == a.device) {
            return Err(key("device").invalid(format!(
                "{} is already used by attach[{j}]; one device serves one entry",
                a.device.display()
            )));
        }
        let stream = match a.stream.as_deref() {
            None | Some("main") => Stream::Main,
            Some("aux") => Stream::Aux,
            Some(other) => {
                return Err(key("stream").invalid(format!(
                    "{other:?} is not a stream: use \"main\" or \"aux\""
                )));
            }
        };
        let timeout = match &a.timeout {
            None => 0,
            Some(v) => {
                let place = key("timeout");
                let d = place.duration(v)?;
                if d.subsec_nanos() != 0 {
                    return Err(place.invalid("the kernel counts whole seconds"));
                }
                // A year (MAX_TIMEOUT) fits: the kernel takes an unsigned long of seconds.
                u32::try_from(d.as_secs()).map_err(|_| place.invalid("too long"))?
            }
        };
        out.push(AttachConfig {
            snapshot: a.snapshot.clone(),
            device: a.device.clone(),
            stream,
            timeout,
        });
    }
    Ok(out)
}

/// Checks that `p` names a device node: an absolute path under `/dev` without `.` or `..`.
fn device_path(p: &Path) -> Result<(), String> {
    use std::path::Component;
    let mut parts = p.components();
    let under_dev = parts.next() == Some(Component::RootDir)
        && parts.next() == Some(Component::Normal("dev".as_ref()))
        && parts.clone().next().is_some()
        && parts.all(|c| matches!(c, Component::Normal(_)));
    if under_dev {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a device: give an absolute path under /dev, such as \"/dev/nbd0\"",
            p.display().to_string()
        ))
    }
}
