//! The config file (`/etc/hexzd/hexzd.toml`, design.md §4), parsed and validated once into an
//! immutable [`Config`]. Unknown keys, bad values, missing files and duplicate names are errors
//! that name the file, the key and the problem. Relative paths are relative to the config
//! file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::serving::valid_name;

/// Default HTTP listen address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Default NBD listen address.
pub const DEFAULT_NBD: &str = "127.0.0.1:10809";
/// Longest timeout the config accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default `max_range_bytes` (the reference's documented 32 MiB clamp).
pub const DEFAULT_MAX_RANGE_BYTES: u64 = 32 * 1024 * 1024;

/// A config file problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read config: {source}", file = file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type (the message names the key
    /// and line).
    #[error("{file}: {message}", file = file.display())]
    Parse { file: PathBuf, message: String },
    /// A value that parses but is not acceptable.
    #[error("{file}: {key}: {problem}", file = file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        problem: String,
    },
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Addresses to listen on (empty = HTTP off).
    pub listen: Vec<String>,
    /// Connection cap.
    pub max_connections: usize,
    /// Time allowed for a request line and headers.
    pub header_timeout: Duration,
    /// Keep-alive wait for the next request.
    pub idle_timeout: Duration,
    /// Clamp of ranged responses; 0 = exact.
    pub max_range_bytes: u64,
    /// File holding the bearer token.
    pub auth_token_file: Option<PathBuf>,
}

/// `[nbd]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdConfig {
    /// TCP addresses to listen on (empty = none).
    pub listen: Vec<String>,
    /// Unix socket paths to listen on.
    pub unix: Vec<PathBuf>,
    /// Connection cap.
    pub max_connections: usize,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Idle timeout in transmission (`None` = never; kernel clients idle for hours).
    pub idle_timeout: Option<Duration>,
}

/// `[cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Block cache bytes (0 = off).
    pub memory: u64,
    /// Decompression workers (0 = one per CPU).
    pub workers: usize,
}

/// One `[[snapshot]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Unique name.
    pub name: String,
    /// Archive path.
    pub path: PathBuf,
    /// Serve as the default snapshot.
    pub default: bool,
    /// Password file of an encrypted archive.
    pub password_file: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (for reload), if any.
    pub file: Option<PathBuf>,
    /// HTTP front end.
    pub http: HttpConfig,
    /// NBD front end.
    pub nbd: NbdConfig,
    /// Store sizing.
    pub cache: CacheConfig,
    /// Snapshots, in file order.
    pub snapshots: Vec<SnapshotConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: None,
            http: HttpConfig {
                listen: vec![DEFAULT_HTTP.to_string()],
                max_connections: 1024,
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(60),
                max_range_bytes: DEFAULT_MAX_RANGE_BYTES,
                auth_token_file: None,
            },
            nbd: NbdConfig {
                listen: vec![DEFAULT_NBD.to_string()],
                unix: Vec::new(),
                max_connections: 256,
                handshake_timeout: Duration::from_secs(30),
                idle_timeout: None,
            },
            cache: CacheConfig {
                memory: 256 << 20,
                workers: 0,
            },
            snapshots: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    http: Option<RawHttp>,
    nbd: Option<RawNbd>,
    cache: Option<RawCache>,
    #[serde(default)]
    snapshot: Vec<RawSnapshot>,
    #[serde(default)]
    attach: Vec<RawAttach>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<Vec<String>>,
    max_connections: Option<usize>,
    header_timeout: Option<Value>,
    idle_timeout: Option<Value>,
    max_range_bytes: Option<Value>,
    auth_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNbd {
    listen: Option<Vec<String>>,
    unix: Option<Vec<PathBuf>>,
    max_connections: Option<usize>,
    handshake_timeout: Option<Value>,
    idle_timeout: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    memory: Option<Value>,
    workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshot {
    name: String,
    path: PathBuf,
    default: Option<bool>,
    password_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RawAttach {
    snapshot: String,
    device: PathBuf,
}

/// A number, or a string with a unit ("10s", "256MiB").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Value {
    Int(u64),
    Str(String),
}

/// Parses a duration: seconds as an integer, or a number with `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration (expected e.g. 30, \"30s\", \"500ms\", \"5m\")")
    })?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Validates config text; `file` names it in errors and anchors relative paths.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let base = file.parent().unwrap_or_else(|| Path::new("."));
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        let duration = |key: &str, v: &Value| -> Result<Duration, ConfigError> {
            let d = match v {
                Value::Int(n) => Duration::from_secs(*n),
                Value::Str(s) => parse_duration(s).map_err(|p| invalid(key, p))?,
            };
            // Deadlines are computed as `Instant + timeout`; an absurd value would overflow
            // there on every connection rather than here once.
            if d > MAX_TIMEOUT {
                return Err(invalid(
                    key,
                    format!("{} s is longer than a year", d.as_secs()),
                ));
            }
            Ok(d)
        };
        let size = |key: &str, v: &Value| -> Result<u64, ConfigError> {
            match v {
                Value::Int(n) => Ok(*n),
                Value::Str(s) => crate::cli::parse_size(s).map_err(|p| invalid(key, p)),
            }
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let readable = |key: &str, p: &Path| -> Result<PathBuf, ConfigError> {
            let p = resolve(p);
            std::fs::File::open(&p)
                .map(|_| p.clone())
                .map_err(|e| invalid(key, format!("{}: {e}", p.display())))
        };

        let mut c = Config {
            file: Some(file.to_path_buf()),
            ..Config::default()
        };
        if let Some(h) = raw.http {
            if let Some(l) = h.listen {
                c.http.listen = l;
            }
            if let Some(n) = h.max_connections {
                if n == 0 {
                    return Err(invalid("http.max_connections", "must be at least 1".into()));
                }
                c.http.max_connections = n;
            }
            if let Some(v) = &h.header_timeout {
                c.http.header_timeout = duration("http.header_timeout", v)?;
            }
            if let Some(v) = &h.idle_timeout {
                c.http.idle_timeout = duration("http.idle_timeout", v)?;
            }
            for (key, d) in [
                ("http.header_timeout", c.http.header_timeout),
                ("http.idle_timeout", c.http.idle_timeout),
            ] {
                if d.is_zero() {
                    return Err(invalid(key, "must be greater than 0".into()));
                }
            }
            if let Some(v) = &h.max_range_bytes {
                c.http.max_range_bytes = size("http.max_range_bytes", v)?;
            }
            if let Some(p) = &h.auth_token_file {
                c.http.auth_token_file = Some(readable("http.auth_token_file", p)?);
            }
        }
        if let Some(n) = raw.nbd {
            if let Some(l) = n.listen {
                c.nbd.listen = l;
            }
            if let Some(u) = n.unix {
                c.nbd.unix = u.iter().map(|p| resolve(p)).collect();
            }
            if let Some(m) = n.max_connections {
                if m == 0 {
                    return Err(invalid("nbd.max_connections", "must be at least 1".into()));
                }
                c.nbd.max_connections = m;
            }
            if let Some(v) = &n.handshake_timeout {
                c.nbd.handshake_timeout = duration("nbd.handshake_timeout", v)?;
                if c.nbd.handshake_timeout.is_zero() {
                    return Err(invalid(
                        "nbd.handshake_timeout",
                        "must be greater than 0".into(),
                    ));
                }
            }
            if let Some(v) = &n.idle_timeout {
                let d = duration("nbd.idle_timeout", v)?;
                c.nbd.idle_timeout = (!d.is_zero()).then_some(d);
            }
        }
        if let Some(cache) = raw.cache {
            if let Some(v) = &cache.memory {
                c.cache.memory = size("cache.memory", v)?;
            }
            if let Some(w) = cache.workers {
                if w > 1024 {
                    return Err(invalid("cache.workers", format!("{w} is more than 1024")));
                }
                c.cache.workers = w;
            }
        }
        let mut defaults = 0;
        for (i, s) in raw.snapshot.iter().enumerate() {
            let key = |k: &str| format!("snapshot[{i}].{k}");
            if !valid_name(&s.name) {
                return Err(invalid(
                    &key("name"),
                    format!(
                        "{:?} is not a valid name: use letters, digits, '.', '_' or '-', not \"disk\" or \"memory\"",
                        s.name
                    ),
                ));
            }
            if raw.snapshot[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(
                    &key("name"),
                    format!("duplicate snapshot name {:?}", s.name),
                ));
            }
            let default = s.default.unwrap_or(false);
            if default {
                defaults += 1;
                if defaults > 1 {
                    return Err(invalid(
                        &key("default"),
                        "only one snapshot can be the default".into(),
                    ));
                }
            }
            let path = readable(&key("path"), &s.path)?;
            let password_file = match &s.password_file {
                Some(p) => Some(readable(&key("password_file"), p)?),
                None => None,
            };
            c.snapshots.push(SnapshotConfig {
                name: s.name.clone(),
                path,
                default,
                password_file,
            });
        }
        if let Some(a) = raw.attach.first() {
            return Err(invalid(
                "attach",
                format!(
                    "attaching {:?} to {} needs the kernel (nbd-proxy) support, which this build does not have yet",
                    a.snapshot,
                    a.device.display()
                ),
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/nonexistent/hexzd.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.http.listen, [DEFAULT_HTTP]);
        assert_eq!(c.nbd.listen, [DEFAULT_NBD]);
        assert_eq!(c.http.max_range_bytes, 33_554_432);
        assert!(c.snapshots.is_empty());
    }

    #[test]
    fn values_with_units() {
        let c = parse(
            "[http]\nlisten = []\nheader_timeout = \"500ms\"\nidle_timeout = 5\nmax_range_bytes = \"0\"\n[nbd]\nidle_timeout = \"0\"\n[cache]\nmemory = \"1GiB\"\nworkers = 2\n",
        )
        .unwrap();
        assert!(c.http.listen.is_empty());
        assert_eq!(c.http.header_timeout, Duration::from_millis(500));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.http.max_range_bytes, 0);
        assert_eq!(c.nbd.idle_timeout, None);
        assert_eq!(c.cache.memory, 1 << 30);
    }

    #[test]
    fn unknown_key_names_the_key() {
        let e = parse("[http]\nlisten_on = []\n").unwrap_err().to_string();
        assert!(e.contains("listen_on"), "{e}");
        assert!(e.starts_with("/nonexistent/hexzd.toml"), "{e}");
        let e = parse("[web]\n").unwrap_err().to_string();
        assert!(e.contains("web"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_problem() {
        let e = parse("[http]\nheader_timeout = \"10 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.header_timeout"), "{e}");
        let e = parse("[cache]\nmemory = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.memory"), "{e}");
        let e = parse("[http]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.max_connections"), "{e}");
    }

    #[test]
    fn missing_snapshot_file_is_an_error() {
        let e = parse("[[snapshot]]\nname = \"a\"\npath = \"missing.hxz\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("snapshot[0].path") && e.contains("/nonexistent/missing.hxz"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_and_invalid_names_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.hxz");
        std::fs::write(&f, b"x").unwrap();
        let cfg = dir.path().join("c.toml");
        let text = format!(
            "[[snapshot]]\nname = \"a\"\npath = \"{0}\"\n[[snapshot]]\nname = \"a\"\npath = \"{0}\"\n",
            f.display()
        );
        let e = Config::parse(&text, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("snapshot[1].name") && e.contains("duplicate"),
            "{e}"
        );
        let text = format!(
            "[[snapshot]]\nname = \"disk\"\npath = \"{}\"\n",
            f.display()
        );
        let e = Config::parse(&text, &cfg).unwrap_err().to_string();
        assert!(e.contains("snapshot[0].name"), "{e}");
        // Relative paths are relative to the config file's directory.
        let c = Config::parse("[[snapshot]]\nname = \"a\"\npath = \"a.hxz\"\n", &cfg).unwrap();
        assert_eq!(c.snapshots[0].path, f);
    }

    #[test]
    fn the_shipped_sample_config_is_valid_and_shows_the_defaults() {
        let text = include_str!("../../etc/hexzd/hexzd.toml");
        let c = Config::parse(text, Path::new("/etc/hexzd/hexzd.toml")).unwrap();
        assert_eq!(Config { file: None, ..c }, Config::default());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
