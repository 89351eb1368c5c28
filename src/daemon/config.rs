//! The configuration `serve` runs with (design.md §4): the config file
//! (`/etc/hexzd/hexzd.toml`), with the command-line overrides applied **before** validation,
//! checked once into an immutable [`Config`] that also holds the secrets (the bearer token and
//! archive passwords, read here from their files). The validated value is exactly what runs:
//! nothing downstream re-reads a file or re-applies a flag.
//!
//! Files by role: `raw` is the TOML syntax and value units, `overrides` the command line's
//! part, `validate` the checks and the reading of secrets. Unknown keys, bad values, missing
//! files and duplicate names are errors that name the file, the key (or the flag) and the
//! problem. Relative paths in the file are relative to its directory; on the command line, to
//! the working directory. `[[attach]]` devices are absolute `/dev` paths and name a snapshot
//! of the same configuration.

mod overrides;
mod raw;
mod remote;
mod tls;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use overrides::{ArchiveArg, Overrides};
pub use raw::{parse_duration, parse_size};

use crate::format::Stream;
use crate::http::HttpSettings;
use crate::nbd::NbdSettings;
use crate::store::file::FileError;
use crate::store::{EngineConfig, RemoteConfig};

/// Default HTTP listen address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default NBD listen address.
pub const DEFAULT_NBD: &str = "127.0.0.1:10809";
/// Default `[daemon] shutdown_timeout`: below the unit's `TimeoutStopSec=30s`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest timeout the config accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Most decompression workers the config accepts.
pub const MAX_WORKERS: usize = 1024;
/// Largest config file read (a config is a few KiB; this refuses a wrong path, such as an
/// archive, before parsing it).
pub const MAX_CONFIG_FILE: u64 = 16 * 1024 * 1024;

/// A configuration problem: one line naming the file and key, or the flag, and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (missing, a FIFO, a directory, too large, ...).
    #[error("config file {0}")]
    Read(FileError),
    /// The config file is not UTF-8 text.
    #[error("{file}: cannot read config: not UTF-8 text", file = file.display())]
    NotText { file: PathBuf },
    /// TOML syntax, an unknown key or a value of the wrong type (the message names the key
    /// and line).
    #[error("{file}: {message}", file = file.display())]
    Parse { file: PathBuf, message: String },
    /// A value that parses but is not acceptable. `place` is `FILE: key` or `--flag`.
    #[error("{place}: {problem}")]
    Invalid { place: String, problem: String },
    /// An archive argument that is not `PATH` or `PATH=NAME` with a usable name.
    #[error("{0}")]
    Argument(String),
}

/// A secret read from a file (a password): compared and cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `[http]`: where to listen, and the front end's settings as it will run with them (the
/// bearer token already read from `auth_token_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Addresses to listen on (empty = HTTP off).
    pub listen: Vec<String>,
    /// Addresses to listen on with TLS (HTTPS; empty = none).
    pub listen_tls: Vec<String>,
    /// The HTTP front end's settings.
    pub settings: HttpSettings,
}

/// `[nbd]`: where to listen, and the front end's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdConfig {
    /// TCP addresses to listen on (empty = none).
    pub listen: Vec<String>,
    /// Unix socket paths to listen on.
    pub unix: Vec<PathBuf>,
    /// The NBD front end's settings.
    pub settings: NbdSettings,
}

/// `[cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Block cache bytes (0 = off).
    pub memory: u64,
    /// Decompression workers (0 = one per CPU).
    pub workers: usize,
}

impl CacheConfig {
    /// The store engine's configuration.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            cache_bytes: usize::try_from(self.memory).unwrap_or(usize::MAX),
            workers: self.workers,
            ..EngineConfig::default()
        }
    }
}

/// `max_connections_per_client` when the file does not set it: this many connections per
/// remote peer address, no cap for loopback and Unix-socket peers (README "Limits" says why).
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// How many connections one client may have open per protocol (`[limits]
/// max_connections_per_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerClientCap {
    /// Connections per client; 0 = no cap.
    pub limit: usize,
    /// Loopback and Unix-socket peers are not capped (the default when the key is absent).
    pub local_exempt: bool,
}

impl PerClientCap {
    /// The cap that applies to `client`, if any.
    pub fn for_client(self, client: crate::serving::ClientId) -> Option<usize> {
        (self.limit > 0 && !(self.local_exempt && client.is_local())).then_some(self.limit)
    }
}

/// `[limits]`: what clients together, and each client, can make the daemon hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Bytes of response buffers (HTTP bodies, NBD replies) in flight at once.
    pub buffer_memory: u64,
    /// Connections per client, per protocol.
    pub max_connections_per_client: PerClientCap,
    /// Time a response may make no progress before its connection is closed (HTTP and NBD;
    /// also in their settings, where the front ends read it).
    pub send_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            buffer_memory: crate::serving::budget::DEFAULT_BUFFER_MEMORY,
            max_connections_per_client: PerClientCap {
                limit: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
                local_exempt: true,
            },
            send_timeout: crate::serving::budget::DEFAULT_SEND_TIMEOUT,
        }
    }
}

/// `[daemon]`: the lifecycle's own settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonConfig {
    /// How long a graceful stop waits for in-flight requests before cutting connections.
    pub shutdown_timeout: Duration,
}

/// One snapshot to serve: a `[[snapshot]]` of the file or an archive argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Unique name.
    pub name: String,
    /// Archive path.
    pub path: PathBuf,
    /// Serve as the default snapshot.
    pub default: bool,
    /// Password of an encrypted archive, read from its password file.
    pub password: Option<Secret>,
}

/// One `[[attach]]` entry: a snapshot of the configuration attached to a kernel NBD device
/// for as long as the daemon runs (daemon::attach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachConfig {
    /// The name of a snapshot of this configuration (file or command line).
    pub snapshot: String,
    /// The device node: an absolute path under `/dev`, unique among the entries.
    pub device: PathBuf,
    /// The stream given to the device.
    pub stream: Stream,
    /// Kernel per-request timeout in seconds (0: none, as `hexzd attach`; the server is this
    /// process).
    pub timeout: u32,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (re-read on reload), if any.
    pub file: Option<PathBuf>,
    /// HTTP front end.
    pub http: HttpConfig,
    /// NBD front end.
    pub nbd: NbdConfig,
    /// Store sizing.
    pub cache: CacheConfig,
    /// Remote archives: `[s3]`, `[remote]` and `[cache] disk` (S3 credentials read here).
    pub remote: RemoteConfig,
    /// Memory and per-client limits.
    pub limits: LimitsConfig,
    /// Lifecycle settings.
    pub daemon: DaemonConfig,
    /// `[tls]`: the certificate directory, when anything uses TLS (or it is set anyway).
    pub tls: Option<crate::tls::TlsSettings>,
    /// Snapshots: the file's in file order, then the command line's.
    pub snapshots: Vec<SnapshotConfig>,
    /// `[[attach]]` entries, in file order.
    pub attach: Vec<AttachConfig>,
}

/// The defaults, written once: the listen addresses here, everything else from the front
/// ends' and the store's own defaults.
impl Default for Config {
    fn default() -> Self {
        let engine = EngineConfig::default();
        Config {
            file: None,
            http: HttpConfig {
                listen: vec![DEFAULT_HTTP.to_string()],
                listen_tls: Vec::new(),
                settings: HttpSettings::default(),
            },
            nbd: NbdConfig {
                listen: vec![DEFAULT_NBD.to_string()],
                unix: Vec::new(),
                settings: NbdSettings::default(),
            },
            cache: CacheConfig {
                memory: engine.cache_bytes as u64,
                workers: engine.workers,
            },
            remote: RemoteConfig::default(),
            limits: LimitsConfig::default(),
            daemon: DaemonConfig {
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            },
            tls: None,
            snapshots: Vec::new(),
            attach: Vec::new(),
        }
    }
}

impl Config {
    /// Reads `file` (if any; none means defaults), applies `overrides`, and validates the
    /// result, reading secrets. Never blocks on a FIFO (store::file).
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = match file {
            Some(f) => {
                let bytes = crate::store::file::read_small(f, "a config file", MAX_CONFIG_FILE)
                    .map_err(ConfigError::Read)?;
                let text = String::from_utf8(bytes).map_err(|_| ConfigError::NotText {
                    file: f.to_path_buf(),
                })?;
                Some((parse_raw(&text, f)?, f))
            }
            None => None,
        };
        validate::validate(raw, overrides)
    }

    /// Validates config text without overrides; `file` names it in errors and anchors
    /// relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        validate::validate(Some((parse_raw(text, file)?, file)), &Overrides::default())
    }
}

fn parse_raw(text: &str, file: &Path) -> Result<raw::RawConfig, ConfigError> {
    raw::RawConfig::parse(text).map_err(|message| ConfigError::Parse {
        file: file.to_path_buf(),
        message,
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_attach;
