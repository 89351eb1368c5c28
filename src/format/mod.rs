//! The `.hxz` version 1 archive format as Hexz 0.8.2 writes it (hexz-format.md).
//!
//! Everything here is pure: headers, master indexes and index pages decode from and encode to
//! byte slices, and block payloads go through [`codec`] and [`crypto`] as functions of their
//! bytes. Files, caches and threads belong to `store/` and `pack`.

pub mod bincode;
pub mod codec;
pub mod crypto;
pub mod header;
pub mod index;
pub mod lz4_prefix;
pub mod writer;

pub use codec::{CodecError, Compression};
pub use header::{CdcParams, EncryptionParams, Features, Header};
pub use index::{BlockInfo, BlockKind, MasterIndex, PageEntry};

/// Size of the fixed header region at the start of every archive (hexz-format.md §1).
pub const HEADER_SIZE: usize = 4096;
/// ASCII `HEXZ`.
pub const MAGIC: [u8; 4] = *b"HEXZ";
/// The only format version that exists.
pub const VERSION: u32 = 1;
/// Writers cap an index page at this many entries (§5).
pub const ENTRIES_PER_PAGE: usize = 4096;
/// Encoded size of one `BlockInfo` (§5).
pub const BLOCK_INFO_SIZE: usize = 52;
/// Encoded size of one `PageEntry` (§4).
pub const PAGE_ENTRY_SIZE: usize = 28;
/// The reference refuses a master index region (index_offset to EOF) larger than this (§4).
pub const MAX_MASTER_INDEX_BYTES: u64 = 64 * 1024 * 1024;
/// `offset` value that marks a parent reference (§6).
pub const BLOCK_OFFSET_PARENT: u64 = u64::MAX;
/// hexzd's bound on one block's `logical_len`. Hexz 0.8.2 writes at most 256 KiB with default
/// CDC; anything above this bound is treated as corruption so that a hostile index cannot drive
/// a huge allocation (§12).
pub const MAX_BLOCK_LEN: u32 = 16 * 1024 * 1024;
/// Bound on a block's stored length: the LZ4 worst case for [`MAX_BLOCK_LEN`] plus the size
/// prefix and an AES-GCM tag, rounded up.
pub const MAX_STORED_LEN: u32 = MAX_BLOCK_LEN + MAX_BLOCK_LEN / 128 + 4096;

/// The two logical streams of an archive (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    /// Stream 0, formerly "disk": served as `/disk` and the default NBD export.
    Main,
    /// Stream 1, formerly "memory": served as `/memory`.
    Aux,
}

impl Stream {
    /// Both streams, main first.
    pub const ALL: [Stream; 2] = [Stream::Main, Stream::Aux];

    /// The user-facing name: `main` or `aux`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Main => "main",
            Stream::Aux => "aux",
        }
    }

    /// The reference route name: `disk` or `memory`.
    pub fn route_name(self) -> &'static str {
        match self {
            Stream::Main => "disk",
            Stream::Aux => "memory",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A structural decoding or encoding failure of the header, master index or an index page.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The input ended inside a value.
    #[error("truncated {what}: field {field} at byte {offset} needs {need} bytes, {have} remain")]
    Truncated {
        what: &'static str,
        field: &'static str,
        offset: u64,
        need: u64,
        have: u64,
    },
    /// The first four bytes are not `HEXZ`.
    #[error("not a Hexz archive: magic is {0:02x?}, expected \"HEXZ\"")]
    BadMagic([u8; 4]),
    /// A format version other than 1.
    #[error("unsupported format version {0} (hexzd reads version 1 only)")]
    UnsupportedVersion(u32),
    /// A compression enum value other than 0 (LZ4) or 1 (Zstd).
    #[error("unknown compression codec {0} in header (0 = LZ4, 1 = Zstd)")]
    UnknownCompression(u32),
    /// An `Option` tag other than 0 or 1.
    #[error("bad Option tag {tag} for {field} at byte {offset} of the {what}")]
    BadOptionTag {
        what: &'static str,
        field: &'static str,
        offset: u64,
        tag: u8,
    },
    /// A bool byte other than 0 or 1.
    #[error("bad bool value {value} for {field} at byte {offset} of the {what}")]
    BadBool {
        what: &'static str,
        field: &'static str,
        offset: u64,
        value: u8,
    },
    /// A string that is not UTF-8.
    #[error("{field} at byte {offset} of the {what} is not UTF-8")]
    BadUtf8 {
        what: &'static str,
        field: &'static str,
        offset: u64,
    },
    /// A count that needs more bytes than remain.
    #[error(
        "{field} count {count} at byte {offset} of the {what} exceeds the {remaining} bytes that remain"
    )]
    LengthTooLarge {
        what: &'static str,
        field: &'static str,
        offset: u64,
        count: u64,
        remaining: u64,
    },
    /// The encoded header does not fit in [`HEADER_SIZE`] bytes.
    #[error(
        "encoded header is {0} bytes, more than the 4096-byte header region (too many or too long parent paths)"
    )]
    HeaderTooLarge(usize),
}
