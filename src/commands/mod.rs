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

use std::io::Write;
use std::path::Path;

use crate::cli::PasswordArgs;
use crate::pack::PackError;
use crate::store::StoreError;
use crate::store::{Engine, EngineConfig, OpenOptions, RemoteConfig, Snapshot};

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
    Daemon(#[from] crate::daemon::DaemonError),
    /// The S3 settings in the environment are unusable.
    #[error(transparent)]
    S3(#[from] crate::store::remote::S3Error),
    /// A password file could not be used.
    #[error("password file {0}")]
    PasswordFile(crate::store::file::FileError),
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

/// Writes a command's output to stdout. A reader that went away (`inspect | head`) ends the
/// output quietly, as for `cat`; any other failure (a full disk) is
/// [`CommandError::Output`], one line and exit status 1, where `print!` would panic.
pub fn write_stdout(text: &str) -> Result<(), CommandError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .or_else(quiet_pipe)
}

/// `Ok` for a broken pipe (the reader has all it wanted), else the write error.
pub(crate) fn quiet_pipe(e: std::io::Error) -> Result<(), CommandError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(CommandError::Output(e))
    }
}

/// Reads a password file (never blocking; see [`crate::store::file::read_password`]): the
/// whole file, minus one trailing newline. Refuses an empty password.
pub fn read_password_file(path: &Path) -> Result<Vec<u8>, CommandError> {
    crate::store::file::read_password(path).map_err(CommandError::PasswordFile)
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

/// Opens `archive` for a one-shot command that reads each block once (`cat`, `verify`): no
/// block cache (it would only cost copies), remote settings from the environment, the password
/// from `--password-file` or `HEXZ_PASSWORD`.
pub fn open_uncached(archive: &Path, password: &PasswordArgs) -> Result<Snapshot, CommandError> {
    let engine = Engine::with_remote(
        EngineConfig {
            cache_bytes: 0,
            ..EngineConfig::default()
        },
        RemoteConfig::from_env()?,
    )
    .map_err(CommandError::Output)?;
    Ok(Snapshot::open_with(
        archive,
        &engine,
        &OpenOptions {
            password: cli_password(password)?,
            index_only: false,
        },
    )?)
}
