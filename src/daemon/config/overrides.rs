//! The command line's part of the configuration: values that replace the file's (or the
//! defaults), and the archives given as arguments. Applied before validation, so a flag is
//! checked exactly like the key it replaces, and errors name the flag.

use std::path::PathBuf;
use std::time::Duration;

use crate::serving::valid_name;

/// Command-line values that replace the config file's. `None` (or empty) leaves the file's
/// value, or the default, in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--http` (`Some(vec![])` = HTTP off).
    pub http_listen: Option<Vec<String>>,
    /// `--nbd` (`Some(vec![])` = NBD over TCP off).
    pub nbd_listen: Option<Vec<String>>,
    /// `--nbd-unix`.
    pub nbd_unix: Option<Vec<PathBuf>>,
    /// `--auth-token-file`.
    pub auth_token_file: Option<PathBuf>,
    /// `--max-range-bytes`.
    pub max_range_bytes: Option<u64>,
    /// `--cache`.
    pub cache_memory: Option<u64>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--shutdown-timeout`.
    pub shutdown_timeout: Option<Duration>,
    /// `ARCHIVE[=NAME]` arguments, served after the file's snapshots.
    pub archives: Vec<String>,
    /// `--password-file`: the password of every archive argument.
    pub password_file: Option<PathBuf>,
}

/// One archive given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveArg {
    /// Archive path.
    pub path: PathBuf,
    /// Snapshot name.
    pub name: String,
}

impl ArchiveArg {
    /// Parses `PATH` or `PATH=NAME`; the name defaults to the file stem.
    pub fn parse(s: &str) -> Result<ArchiveArg, String> {
        if let Some((path, name)) = s.rsplit_once('=') {
            if valid_name(name) && !path.is_empty() {
                return Ok(ArchiveArg {
                    path: PathBuf::from(path),
                    name: name.to_string(),
                });
            }
        }
        let path = PathBuf::from(s);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !valid_name(&stem) {
            return Err(format!(
                "cannot name the snapshot for {s:?} after its file name; give PATH=NAME (letters, digits, '.', '_', '-')"
            ));
        }
        Ok(ArchiveArg { path, name: stem })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_arguments() {
        assert_eq!(
            ArchiveArg::parse("/srv/a/vm1.hxz").unwrap(),
            ArchiveArg {
                path: "/srv/a/vm1.hxz".into(),
                name: "vm1".into()
            }
        );
        assert_eq!(
            ArchiveArg::parse("x/y.hxz=prod").unwrap(),
            ArchiveArg {
                path: "x/y.hxz".into(),
                name: "prod".into()
            }
        );
        assert!(ArchiveArg::parse("disk.hxz").is_err());
        assert_eq!(ArchiveArg::parse("disk.hxz=d1").unwrap().name, "d1");
        assert!(ArchiveArg::parse("my file.hxz").is_err());
    }
}
