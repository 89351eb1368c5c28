//! The config file's syntax: the TOML tables as serde reads them (every key optional, unknown
//! keys refused), and the units its values are written in. Nothing here checks a value's
//! meaning or touches the file system; that is `validate`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub http: Option<RawHttp>,
    pub nbd: Option<RawNbd>,
    pub cache: Option<RawCache>,
    pub s3: Option<RawS3>,
    pub remote: Option<RawRemote>,
    pub limits: Option<RawLimits>,
    pub daemon: Option<RawDaemon>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub snapshot: Vec<RawSnapshot>,
    #[serde(default)]
    pub attach: Vec<RawAttach>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub listen: Option<Vec<String>>,
    pub listen_tls: Option<Vec<String>>,
    pub max_connections: Option<usize>,
    pub header_timeout: Option<Value>,
    pub idle_timeout: Option<Value>,
    pub max_range_bytes: Option<Value>,
    pub auth_token_file: Option<PathBuf>,
}

/// `[nbd]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNbd {
    pub listen: Option<Vec<String>>,
    pub unix: Option<Vec<PathBuf>>,
    pub max_connections: Option<usize>,
    pub handshake_timeout: Option<Value>,
    pub idle_timeout: Option<Value>,
    pub tls: Option<String>,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub certificates: Option<PathBuf>,
    pub verify_peer: Option<bool>,
}

/// `[cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub memory: Option<Value>,
    pub workers: Option<usize>,
    /// Directory of the disk cache of remote archives' bytes.
    pub disk: Option<PathBuf>,
    pub disk_size: Option<Value>,
}

/// `[s3]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub credentials_file: Option<PathBuf>,
    pub profile: Option<String>,
}

/// `[remote]`: fetching remote archives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRemote {
    pub allow_origins: Option<Vec<String>>,
    pub proxy: Option<String>,
    pub connect_timeout: Option<Value>,
    pub read_timeout: Option<Value>,
    pub timeout: Option<Value>,
    pub retries: Option<u32>,
    pub readahead: Option<Value>,
    pub memory: Option<Value>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub buffer_memory: Option<Value>,
    pub max_connections_per_client: Option<usize>,
    pub send_timeout: Option<Value>,
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub shutdown_timeout: Option<Value>,
}

/// One `[[snapshot]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSnapshot {
    pub name: String,
    pub path: PathBuf,
    pub default: Option<bool>,
    pub password_file: Option<PathBuf>,
}

/// One `[[attach]]` (design.md §4): a snapshot attached to a kernel NBD device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttach {
    pub snapshot: String,
    pub device: PathBuf,
    pub stream: Option<String>,
    pub timeout: Option<Value>,
}

/// A number, or a string with a unit ("10s", "256MiB").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Value {
    Int(u64),
    Str(String),
}

impl RawConfig {
    /// Parses config text. The error is one line that names the key and line.
    pub fn parse(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
}

/// The forms named when a duration is refused.
const DURATION_FORMS: &str = "expected e.g. 30, \"30s\", \"500ms\", \"5m\", \"1h 30m\"";

/// Parses a duration: whole seconds as a bare integer (the config's TOML integers are the same),
/// or anything `humantime` reads ("500ms", "30s", "5m", "1h 30m", "2days"). Also the command
/// line's duration parser.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: the one way `parse` fails is a number past u64.
        return t
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too long"));
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => format!("{s:?} is too long"),
        humantime::DurationError::UnknownUnit { unit, .. } if !unit.is_empty() => {
            format!("{s:?} is not a duration (unknown unit {unit:?}; {DURATION_FORMS})")
        }
        _ => format!("{s:?} is not a duration ({DURATION_FORMS})"),
    })
}

/// Parses a byte count with `parse-size` in its binary unit system: a number with an optional
/// suffix where K, KB and KiB are all 1024 (up to E), e.g. `65536`, `64K`, `256MiB`, `1.5G`.
/// Also the command line's size parser.
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| match e {
            parse_size::Error::PosOverflow => format!("{s:?} is too large"),
            _ => format!("{s:?} is not a size (expected e.g. 4096, 64K, 256MiB)"),
        })
}
