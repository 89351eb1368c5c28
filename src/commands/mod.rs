//! The CLI commands other than `serve`: each turns parsed arguments into calls on the library
//! and prints the result. Failures come back as [`CommandError`], which `main` prints as one
//! line and maps to exit status 1.

pub mod attach;
pub mod cat;
pub mod inspect;
pub mod nbd_proxy;
pub mod pack;
pub mod serve;
pub mod verify;

use std::path::{Path, PathBuf};

use crate::cli::PasswordArgs;
use crate::pack::PackError;
use crate::store::StoreError;

/// Environment variable the CLI commands read a password from (as Hexz does).
pub const PASSWORD_ENV: &str = "HEXZ_PASSWORD";

/// A command failure, printed by `main`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Opening or reading an archive failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Packing failed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// `serve` could not start.
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    /// A password file could not be used.
    #[error("password file {path}: {reason}", path = path.display())]
    PasswordFile { path: PathBuf, reason: String },
    /// `--encrypt` without any password source.
    #[error("--encrypt needs a password: give --password-file FILE or set HEXZ_PASSWORD")]
    NoPassword,
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    /// An argument out of range for this archive.
    #[error("{0}")]
    Invalid(String),
    /// `verify` found bad blocks (already listed on stdout).
    #[error("{0} bad block(s)")]
    BadBlocks(usize),
}

/// Reads a password file: the whole file, minus one trailing newline. Refuses an empty
/// password.
pub fn read_password_file(path: &Path) -> Result<Vec<u8>, CommandError> {
    let mut pw = std::fs::read(path).map_err(|e| CommandError::PasswordFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if pw.last() == Some(&b'\n') {
        pw.pop();
        if pw.last() == Some(&b'\r') {
            pw.pop();
        }
    }
    if pw.is_empty() {
        return Err(CommandError::PasswordFile {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    Ok(pw)
}

/// The password for a CLI command: `--password-file`, else `HEXZ_PASSWORD`, else none.
pub fn cli_password(args: &PasswordArgs) -> Result<Option<Vec<u8>>, CommandError> {
    if let Some(p) = &args.password_file {
        return read_password_file(p).map(Some);
    }
    Ok(std::env::var_os(PASSWORD_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\n").unwrap();
        assert_eq!(read_password_file(&p).unwrap(), b"secret");
        std::fs::write(&p, "secret\r\n").unwrap();
        assert_eq!(read_password_file(&p).unwrap(), b"secret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_password_file(&p).is_err());
        assert!(read_password_file(&dir.path().join("missing")).is_err());
    }
}
