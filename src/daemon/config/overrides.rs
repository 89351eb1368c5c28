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
    /// `--https` (`Some(vec![])` = no HTTPS listener).
    pub https_listen: Option<Vec<String>>,
    /// `--tls-certificates`.
    pub tls_certificates: Option<PathBuf>,
    /// `--tls-verify-peer`.
    pub tls_verify_peer: bool,
    /// `--nbd-tls`.
    pub nbd_tls: Option<crate::nbd::TlsMode>,
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
            if !path.is_empty() {
                if valid_name(name) {
                    return Ok(ArchiveArg {
                        path: PathBuf::from(path),
                        name: name.to_string(),
                    });
                }
                // A file whose own name contains '=' is still served by its path; otherwise
                // the part after '=' was meant as a name, and that name is the problem.
                if std::fs::symlink_metadata(s).is_err() {
                    return Err(format!(
                        "{s:?}: {name:?} is not a valid snapshot name: {}",
                        name_problem(name)
                    ));
                }
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

/// Why `name` is refused (it is not [`valid_name`]).
fn name_problem(name: &str) -> &'static str {
    if name.is_empty() {
        "it is empty"
    } else if name == "disk" || name == "memory" {
        "\"disk\" and \"memory\" are reserved (they name the streams of the default snapshot)"
    } else if name == "." || name == ".." {
        "\".\" and \"..\" are not names"
    } else if name.len() > crate::serving::names::MAX_NAME_LEN {
        "it is too long"
    } else {
        "use letters, digits, '.', '_' and '-' only"
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
        // A bad name after '=' is named as the problem, not "no such file".
        let e = ArchiveArg::parse("demo.hxz=disk").unwrap_err();
        assert!(e.contains("\"disk\" is not a valid snapshot name") && e.contains("reserved"));
        let e = ArchiveArg::parse("demo.hxz=bad name").unwrap_err();
        assert!(
            e.contains("\"bad name\" is not a valid snapshot name"),
            "{e}"
        );
    }
}
