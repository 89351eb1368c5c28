//! Opening the files a user names (archives, and for the daemon and the CLI the config file
//! and secret files) so that opening never blocks, and anything that is not a file is one clear
//! error at once.
//!
//! `open(2)` on a FIFO blocks until a writer appears: a FIFO on the command line would hang
//! start-up with no message, and one named by a reloaded config would hang the reload. Opening
//! a device can have side effects (a tty, a tape), and a socket cannot be opened at all
//! (ENXIO, which reads like "no such device"). So the path is `stat`ed first and only the
//! accepted kinds are opened; the open uses `O_NONBLOCK | O_NOCTTY` (`O_CLOEXEC` is std's
//! default) in case the path was swapped for a FIFO since the `stat`, the opened descriptor is
//! `fstat`ed again, and `O_NONBLOCK` is cleared before anything reads.

use std::fs::{File, Metadata};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// What a file is opened as, for the error message ("… is a FIFO, not an archive file").
pub const ARCHIVE: &str = "an archive file";

/// A file that could not be opened or read as what it was meant to be.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FileError {
    /// `stat`, `open` or `read` failed.
    #[error("{path}: cannot {op}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// A FIFO, socket, directory or device where a file was expected.
    #[error("{path}: is {kind}, not {what}", path = path.display())]
    NotAFile {
        path: PathBuf,
        kind: &'static str,
        what: &'static str,
    },
    /// ELOOP: resolving the path met more symbolic links than the kernel follows.
    #[error("{path}: symbolic link loop (too many levels of symbolic links)", path = path.display())]
    Loop { path: PathBuf },
    /// A small file (config, secret) larger than its bound.
    #[error("{path}: larger than {max} bytes; is this really {what}?", path = path.display())]
    TooLarge {
        path: PathBuf,
        max: u64,
        what: &'static str,
    },
    /// A secret file with nothing in it.
    #[error("{path}: the file is empty", path = path.display())]
    Empty { path: PathBuf },
}

impl FileError {
    fn io(path: &Path, op: &'static str, e: io::Error) -> FileError {
        if e.raw_os_error() == Some(libc::ELOOP) {
            return FileError::Loop {
                path: path.to_path_buf(),
            };
        }
        FileError::Io {
            path: path.to_path_buf(),
            op,
            source: Arc::new(e),
        }
    }
}

/// An opened archive file: the descriptor (blocking again), its `fstat`, and its length in
/// bytes (a block device's `st_size` is 0, so the length comes from seeking to the end).
#[derive(Debug)]
pub struct Opened {
    /// The file, without `O_NONBLOCK`.
    pub file: File,
    /// `fstat` of the descriptor.
    pub meta: Metadata,
    /// Length in bytes.
    pub len: u64,
}

/// The kind of a non-file, for messages; `None` for what `accept_block` admits.
fn refused_kind(meta: &Metadata, accept_block: bool) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() || (accept_block && t.is_block_device()) {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else {
        Some("not a regular file")
    }
}

/// Opens `path` without blocking, refusing every kind but regular files (and block devices
/// when `accept_block`). `what` names the role in errors.
fn open_checked(path: &Path, accept_block: bool, what: &'static str) -> Result<Opened, FileError> {
    let refuse = |meta: &Metadata| match refused_kind(meta, accept_block) {
        None => Ok(()),
        Some(kind) => Err(FileError::NotAFile {
            path: path.to_path_buf(),
            kind,
            what,
        }),
    };
    refuse(&std::fs::metadata(path).map_err(|e| FileError::io(path, "open", e))?)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| FileError::io(path, "open", e))?;
    let meta = file
        .metadata()
        .map_err(|e| FileError::io(path, "stat", e))?;
    refuse(&meta)?;
    let flags =
        fcntl(&file, FcntlArg::F_GETFL).map_err(|e| FileError::io(path, "open", e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(&file, FcntlArg::F_SETFL(flags)).map_err(|e| FileError::io(path, "open", e.into()))?;
    let len = if meta.file_type().is_block_device() {
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| FileError::io(path, "seek", e))?;
        file.rewind().map_err(|e| FileError::io(path, "seek", e))?;
        len
    } else {
        meta.len()
    };
    Ok(Opened { file, meta, len })
}

/// Opens an archive: a regular file or a block device, never blocking. A FIFO, socket,
/// directory or character device is [`FileError::NotAFile`]; a symbolic link loop is
/// [`FileError::Loop`].
pub fn open_archive(path: &Path) -> Result<Opened, FileError> {
    open_checked(path, true, ARCHIVE)
}

/// Opens the input of `pack`: a regular file or a block device, never blocking. A FIFO would
/// hang the open with no message, and a character device (`/dev/zero`) never ends.
pub fn open_raw_image(path: &Path) -> Result<Opened, FileError> {
    open_checked(path, true, "a raw image (a file or a block device)")
}

/// What `meta` is when it is not a regular file ("a character device"), for a path about to
/// be replaced; `None` for a regular file.
pub fn not_a_file(meta: &Metadata) -> Option<&'static str> {
    refused_kind(meta, false)
}

/// Reads a small regular file whole (a config file, a token, a password), never blocking.
/// `what` names its role in errors ("a config file"); more than `max` bytes is an error.
pub fn read_small(path: &Path, what: &'static str, max: u64) -> Result<Vec<u8>, FileError> {
    let opened = open_checked(path, false, what)?;
    let mut out = Vec::new();
    opened
        .file
        .take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| FileError::io(path, "read", e))?;
    if out.len() as u64 > max {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            max,
            what,
        });
    }
    Ok(out)
}

/// Longest password file accepted.
pub const MAX_PASSWORD_FILE: u64 = 64 * 1024;

/// Reads a password file: the whole file minus one trailing newline (`\n` or `\r\n`). An empty
/// password is an error.
pub fn read_password(path: &Path) -> Result<Vec<u8>, FileError> {
    let mut pw = read_small(path, "a password file", MAX_PASSWORD_FILE)?;
    if pw.last() == Some(&b'\n') {
        pw.pop();
        if pw.last() == Some(&b'\r') {
            pw.pop();
        }
    }
    if pw.is_empty() {
        return Err(FileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(pw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path) -> PathBuf {
        let p = dir.join("fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path());
        let e = open_archive(&p).unwrap_err().to_string();
        assert!(e.ends_with("fifo: is a FIFO, not an archive file"), "{e}");
        let e = read_small(&p, "a config file", 10).unwrap_err().to_string();
        assert!(e.ends_with("is a FIFO, not a config file"), "{e}");
    }

    #[test]
    fn directories_sockets_and_char_devices_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_archive(dir.path()).unwrap_err().to_string();
        assert!(e.ends_with("is a directory, not an archive file"), "{e}");
        let sock = dir.path().join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = open_archive(&sock).unwrap_err().to_string();
        assert!(e.ends_with("is a socket, not an archive file"), "{e}");
        let e = open_archive(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("is a character device, not an archive file"),
            "{e}"
        );
    }

    #[test]
    fn a_symlink_loop_is_a_loop_not_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(matches!(open_archive(&a), Err(FileError::Loop { .. })));
        assert!(matches!(read_password(&a), Err(FileError::Loop { .. })));
        let e = open_archive(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot open") && e.contains("No such file"),
            "{e}"
        );
    }

    #[test]
    fn regular_files_open_blocking_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        let o = open_archive(&p).unwrap();
        assert_eq!(o.len, 5);
        let flags = OFlag::from_bits_truncate(fcntl(&o.file, FcntlArg::F_GETFL).unwrap());
        assert!(!flags.contains(OFlag::O_NONBLOCK));
        assert_eq!(read_small(&p, "a token file", 5).unwrap(), b"12345");
        assert!(matches!(
            read_small(&p, "a token file", 4),
            Err(FileError::TooLarge { .. })
        ));
    }

    #[test]
    fn password_file_loses_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), b"secret");
        std::fs::write(&p, "secret\r\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), b"secret");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_password(&p), Err(FileError::Empty { .. })));
        assert!(read_password(&dir.path().join("missing")).is_err());
    }
}
