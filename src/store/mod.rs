//! The snapshot store: opens archives, resolves parent chains, decrypts, decompresses on a
//! worker pool, caches blocks, and answers `read_at` and `extents` for HTTP, NBD and the CLI.
//!
//! Every read in hexzd goes through [`Snapshot::read_at`]; front ends never touch the format.

mod archive;
mod block;
pub mod cache;
mod chain;
mod engine;
pub mod file;
pub mod pool;
mod read;
pub mod remote;
mod snapshot;
mod source;
mod verify;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::format::Stream;
use crate::format::{CodecError, FormatError, crypto::CryptoError};
pub use archive::{Archive, Page};
pub use chain::ParentRef;
pub use engine::{Engine, EngineConfig, StoreMetrics};
pub use remote::{CHUNK as CHUNK_BYTES, Location, LocationError, RemoteConfig, RemoteError};
pub use snapshot::{Extent, ExtentKind, OpenOptions, Segment, Snapshot};
pub use verify::{BadBlock, VerifyReport};

/// Why one block could not be served. Carried inside [`StoreError::Block`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlockFault {
    /// CRC mismatch, corrupt codec data, or a size other than `logical_len`.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// AES-GCM authentication failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The stored bytes lie (partly) past the end of the file.
    #[error(
        "stored bytes at file offset {offset} (+{length}) lie past the end of the {file_len}-byte file"
    )]
    PastEof {
        offset: u64,
        length: u32,
        file_len: u64,
    },
    /// `logical_len` above hexzd's bound.
    #[error("logical length {0} exceeds hexzd's 16 MiB block bound")]
    TooLarge(u32),
    /// Stored length above hexzd's bound.
    #[error("stored length {0} exceeds hexzd's block bound")]
    StoredTooLarge(u32),
    /// A zero stored length at a non-zero offset.
    #[error("entry has a zero stored length at file offset {0}")]
    Invalid(u64),
    /// The file could not be read.
    #[error("read failed: {0}")]
    Io(Arc<io::Error>),
    /// The remote object could not be read (the message names the URL and the status).
    #[error(transparent)]
    Remote(Box<RemoteError>),
    /// A parent reference whose hash no archive of the chain holds.
    #[error("parent block {0} is not in any parent archive")]
    ParentMissing(String),
    /// A parent block of another size than the reference says.
    #[error("parent block has {actual} bytes, the reference says {expected}")]
    ParentSize { expected: u32, actual: u32 },
    /// The block's BLAKE3 does not match the stored hash (`verify` only).
    #[error("BLAKE3 of the decoded block does not match the index")]
    HashMismatch,
    /// The archive is encrypted and was opened without its key.
    #[error("archive is encrypted and was opened without a password")]
    Locked,
    /// A bug: a decode job ended without reporting.
    #[error("internal error: decode job did not complete")]
    Internal,
}

/// A store failure: at open (start-up errors) or during a read (HTTP 500, NBD EIO).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The archive file could not be opened, stat'ed or read.
    #[error("{path}: cannot {op}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// The path is not something an archive can be read from (a FIFO, a directory, a
    /// symbolic link loop, ...), or it cannot be opened.
    #[error(transparent)]
    File(#[from] file::FileError),
    /// A URL that cannot be used (bad syntax, unsupported scheme).
    #[error(transparent)]
    Location(#[from] LocationError),
    /// A remote archive could not be opened or read (outside a block: the probe, the
    /// header, the index). `path` is the URL without credentials; the message names it.
    #[error("cannot {op}: {source}")]
    Remote {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: Box<RemoteError>,
    },
    /// The header or master index does not decode.
    #[error("{path}: {source}", path = path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    /// Structural corruption of the index (offsets past EOF, overlapping pages, ...).
    #[error("{path}: corrupt archive: {detail}", path = path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// One block failed to read, verify, decrypt or decode.
    #[error("{path}: {stream} stream, block {block} (stream offset {offset}): {fault}", path = path.display())]
    Block {
        path: PathBuf,
        stream: Stream,
        block: u64,
        offset: u64,
        fault: BlockFault,
    },
    /// An encrypted archive was opened without a password.
    #[error("{path}: encrypted archive needs a password (give --password-file FILE, password_file in the config, or HEXZ_PASSWORD for CLI commands)", path = path.display())]
    NeedsPassword { path: PathBuf },
    /// The password does not authenticate the archive's first data block.
    #[error("{path}: wrong password (block {block} does not authenticate)", path = path.display())]
    WrongPassword { path: PathBuf, block: u64 },
    /// Bad encryption parameters in the header.
    #[error("{path}: {source}", path = path.display())]
    Crypto {
        path: PathBuf,
        #[source]
        source: CryptoError,
    },
    /// A parent archive of a thin snapshot is missing or unreadable.
    #[error("{path}: parent archive {parent:?} cannot be opened (tried {tried}): {reason}", path = path.display())]
    Parent {
        path: PathBuf,
        parent: String,
        tried: String,
        reason: String,
    },
}

/// Finds a data block with BLAKE3 `hash` in `chain` (each archive, then its own parents, depth
/// first) and returns its logical length. Used by `pack --base`.
pub fn resolve_in_chain(
    engine: &Engine,
    chain: &[Arc<Archive>],
    hash: &[u8; 32],
) -> Result<Option<u32>, StoreError> {
    Ok(chain::resolve(engine, chain, hash)?.map(|r| r.info.logical_len))
}

/// Where hexzd looks for a thin snapshot's parent: beside the child first, then as written.
pub fn parent_candidates(child: &std::path::Path, parent: &str) -> Vec<PathBuf> {
    chain::candidates(child, parent)
}

impl StoreError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, e: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            op,
            source: Arc::new(e),
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    /// True for errors caused by corrupt data (CRC, codec, tag, structure), as opposed to I/O
    /// or configuration. Front ends count these as corrupt blocks in their metrics.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Block { fault, .. } => {
                !matches!(fault, BlockFault::Io(_) | BlockFault::Remote(_))
            }
            StoreError::Corrupt { .. } | StoreError::Format { .. } => true,
            _ => false,
        }
    }
}
