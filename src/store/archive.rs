//! One opened `.hxz` file: header, master index, validated page directory, lazily loaded index
//! pages, the decryption key and the parent archives (hexz-format.md §12 "open").
//!
//! Files by role: this file opens and validates an archive and answers questions about it;
//! `page` owns the index pages (the parsed [`Page`], loading one through the page cache, and
//! the check of the page directory at open).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::chain::HashIndex;
use super::engine::Engine;
use super::remote::Location;
use super::source::{ChainId, Source, SourceError};
use super::{StoreError, Stream};
use crate::format::crypto::BlockCipher;
use crate::format::{
    BlockKind, HEADER_SIZE, Header, MAX_MASTER_INDEX_BYTES, MasterIndex, PageEntry,
};
use page::validate_pages;

mod page;

pub use page::Page;

/// Bound on a Zstd dictionary.
const MAX_DICTIONARY_BYTES: u32 = 64 * 1024 * 1024;

/// An open archive file. Shared (`Arc`) by every snapshot and chain that uses it.
#[derive(Debug)]
pub struct Archive {
    pub(crate) id: u64,
    /// The path, or the URL without credentials.
    path: PathBuf,
    /// Where it was opened from (parents resolve against it).
    location: Location,
    pub(crate) source: Source,
    file_len: u64,
    modified: SystemTime,
    header: Header,
    index: MasterIndex,
    identity: [u8; 32],
    pub(crate) cipher: Option<BlockCipher>,
    pub(crate) dictionary: Option<crate::format::codec::Dictionary>,
    pub(crate) parents: Vec<Arc<Archive>>,
    /// BLAKE3 → block map over this archive's data blocks, built on first parent lookup
    /// (`None` until then).
    pub(crate) hash_index: std::sync::RwLock<Option<HashIndex>>,
}

/// What opening needs beyond the path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenContext<'a> {
    pub engine: &'a Engine,
    pub password: Option<&'a [u8]>,
    /// Parent depth of this archive (0 for the snapshot itself).
    pub depth: usize,
    /// Archives already on the chain, to refuse cycles.
    pub chain: &'a [ChainId],
    /// Open the header and index only: no key derivation, no parents (for `inspect`).
    pub index_only: bool,
}

/// Longest parent chain hexzd follows.
pub const MAX_CHAIN_DEPTH: usize = 32;

impl Archive {
    /// Opens and validates an archive (and, recursively, its parents).
    pub(crate) fn open(path: &Path, cx: OpenContext<'_>) -> Result<Arc<Archive>, StoreError> {
        // Never blocks (a FIFO is an error, not a wait); regular files, block devices and
        // remote objects only.
        Archive::from_source(super::source::open(path, cx.engine)?, cx)
    }

    /// Opens a local file, never as a URL (a parent path of a local archive).
    pub(crate) fn open_file(path: &Path, cx: OpenContext<'_>) -> Result<Arc<Archive>, StoreError> {
        Archive::from_source(super::source::open_local(path)?, cx)
    }

    /// Opens a remote archive (a parent, whose URL may carry the child's credentials).
    pub(crate) fn open_url(
        url: &super::remote::RemoteUrl,
        cx: OpenContext<'_>,
    ) -> Result<Arc<Archive>, StoreError> {
        Archive::from_source(super::source::open_remote(url, cx.engine)?, cx)
    }

    fn from_source(
        opened: super::source::Opened,
        cx: OpenContext<'_>,
    ) -> Result<Arc<Archive>, StoreError> {
        let file_len = opened.len;
        let path = opened.shown.as_path();
        let fingerprint = match cx.password {
            Some(p) => *blake3::hash(p).as_bytes(),
            None => [0; 32],
        };
        let key = opened.key(fingerprint);
        if !cx.index_only {
            if let Some(a) = cx.engine.registered(&key) {
                return Ok(a);
            }
        }
        if cx.chain.contains(&opened.chain_id) {
            return Err(StoreError::corrupt(
                path,
                "parent chain loops back to this archive",
            ));
        }
        let modified = opened.modified;
        let source = &opened.source;

        let head_len = usize::try_from(file_len.min(HEADER_SIZE as u64)).unwrap_or(HEADER_SIZE);
        let mut head = vec![0u8; head_len];
        read_exact_at(source, path, &mut head, 0, "read header")?;
        let header = Header::decode(&head).map_err(|source| StoreError::Format {
            path: path.to_path_buf(),
            source,
        })?;

        if header.index_offset < HEADER_SIZE as u64 || header.index_offset >= file_len {
            return Err(StoreError::corrupt(
                path,
                format!(
                    "index offset {} is outside the file (length {file_len})",
                    header.index_offset
                ),
            ));
        }
        let tail = file_len - header.index_offset;
        let tail_read = tail.min(MAX_MASTER_INDEX_BYTES);
        let mut tail_buf = vec![0u8; usize::try_from(tail_read).unwrap_or(0)];
        read_exact_at(
            source,
            path,
            &mut tail_buf,
            header.index_offset,
            "read master index",
        )?;
        let index = MasterIndex::decode(&tail_buf).map_err(|source| {
            if tail > MAX_MASTER_INDEX_BYTES {
                StoreError::corrupt(path, "master index larger than 64 MiB")
            } else {
                StoreError::Format {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        for stream in Stream::ALL {
            validate_pages(
                path,
                stream,
                pages_of(&index, stream),
                file_len,
                header.index_offset,
            )?;
        }

        let mut identity = blake3::Hasher::new();
        identity.update(&opened.identity);
        identity.update(&file_len.to_le_bytes());
        identity.update(&head);
        identity.update(&tail_buf[..tail_buf.len().min(1 << 20)]);
        let identity = *identity.finalize().as_bytes();

        let dictionary = match (header.dictionary_offset, header.dictionary_length) {
            (Some(off), Some(len)) => {
                if len > MAX_DICTIONARY_BYTES
                    || off.checked_add(u64::from(len)).is_none_or(|e| e > file_len)
                {
                    return Err(StoreError::corrupt(
                        path,
                        format!("Zstd dictionary at {off} (+{len}) lies outside the file"),
                    ));
                }
                let mut d = vec![0u8; len as usize];
                read_exact_at(source, path, &mut d, off, "read Zstd dictionary")?;
                Some(crate::format::codec::Dictionary::new(&d))
            }
            (None, None) => None,
            _ => {
                return Err(StoreError::corrupt(
                    path,
                    "dictionary offset and length must be both present or both absent",
                ));
            }
        };

        let cipher = match &header.encryption {
            None => None,
            Some(_) if cx.index_only => None,
            Some(params) => {
                let pw = cx.password.ok_or_else(|| StoreError::NeedsPassword {
                    path: path.to_path_buf(),
                })?;
                Some(
                    BlockCipher::derive(pw, params).map_err(|source| StoreError::Crypto {
                        path: path.to_path_buf(),
                        source,
                    })?,
                )
            }
        };

        let mut chain = cx.chain.to_vec();
        chain.push(opened.chain_id);
        let parents = if cx.index_only {
            Vec::new()
        } else {
            super::chain::open_parents(
                path,
                &opened.location,
                &header,
                &OpenContext {
                    chain: &chain,
                    ..cx
                },
            )?
        };

        let archive = Arc::new(Archive {
            id: cx.engine.next_archive_id(),
            path: path.to_path_buf(),
            location: opened.location,
            source: opened.source,
            file_len,
            modified,
            header,
            index,
            identity,
            cipher,
            dictionary,
            parents,
            hash_index: std::sync::RwLock::new(None),
        });
        if archive.cipher.is_some() {
            archive.check_password(cx.engine)?;
        }
        if !cx.index_only {
            cx.engine.register(key, &archive);
        }
        Ok(archive)
    }

    /// Authenticates the first data blocks whose CRC is intact: a tag failure there means the
    /// password is wrong (the bytes are as written), so say so at open rather than failing
    /// every read later.
    fn check_password(&self, engine: &Engine) -> Result<(), StoreError> {
        // A block whose CRC fails says nothing about the password, and one intact-looking block
        // that fails could have been altered with its CRC rewritten: the password is wrong
        // only if no CRC-intact block among the first few authenticates.
        const CANDIDATES: usize = 4;
        const LOOK_AT: usize = 32;
        let Some(cipher) = &self.cipher else {
            return Ok(());
        };
        let (mut looked, mut failed) = (0usize, None);
        for stream in Stream::ALL {
            for p in 0..self.pages(stream).len() {
                let page = self.page(engine, stream, p)?;
                for (i, b) in page.blocks.iter().enumerate() {
                    if b.kind() != BlockKind::Data || b.length > crate::format::MAX_STORED_LEN {
                        continue;
                    }
                    looked += 1;
                    let mut stored = vec![0u8; b.length as usize];
                    let intact = self.read_stored(b.offset, &mut stored).is_ok()
                        && crate::format::codec::crc32(&stored) == b.checksum;
                    if intact {
                        let index = page.start_block + i as u64;
                        if cipher.decrypt_in_place(index, &mut stored).is_ok() {
                            return Ok(());
                        }
                        let (first, n) = failed.unwrap_or((index, 0));
                        failed = Some((first, n + 1));
                    }
                    if failed.is_some_and(|(_, n)| n >= CANDIDATES) || looked >= LOOK_AT {
                        return match failed {
                            Some((block, _)) => Err(StoreError::WrongPassword {
                                path: self.path.clone(),
                                block,
                            }),
                            None => Ok(()),
                        };
                    }
                }
            }
        }
        match failed {
            Some((block, _)) => Err(StoreError::WrongPassword {
                path: self.path.clone(),
                block,
            }),
            None => Ok(()),
        }
    }

    /// The file this archive was opened from, or its URL without credentials.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where this archive was opened from (a path, or a URL with its credentials: never
    /// show it; show [`path`](Self::path)).
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// True when the archive is a remote object.
    pub fn is_remote(&self) -> bool {
        self.source.remote().is_some()
    }

    /// True when this archive or any of its parents is a remote object: reading it may wait
    /// for the network, even for index pages.
    pub fn any_remote(&self) -> bool {
        self.is_remote() || self.parents.iter().any(|p| p.any_remote())
    }

    /// Size of the archive file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Modification time of the archive file.
    pub fn modified(&self) -> SystemTime {
        self.modified
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The decoded master index.
    pub fn index(&self) -> &MasterIndex {
        &self.index
    }

    /// A digest of the file identity, header and master index: changes whenever the served
    /// bytes can change (used for HTTP ETags).
    pub fn identity(&self) -> &[u8; 32] {
        &self.identity
    }

    /// True when the blocks are encrypted but no key was derived (opened index-only).
    pub fn locked(&self) -> bool {
        self.header.encryption.is_some() && self.cipher.is_none()
    }

    /// The directly referenced parent archives, in header order.
    pub fn parents(&self) -> &[Arc<Archive>] {
        &self.parents
    }

    /// Logical size of a stream.
    pub fn stream_size(&self, stream: Stream) -> u64 {
        match stream {
            Stream::Main => self.index.main_size,
            Stream::Aux => self.index.aux_size,
        }
    }

    /// The page directory of a stream.
    pub fn pages(&self, stream: Stream) -> &[PageEntry] {
        pages_of(&self.index, stream)
    }

    /// Reads the metadata region, if the header names one.
    pub fn metadata(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let (Some(off), Some(len)) = (self.header.metadata_offset, self.header.metadata_length)
        else {
            return Ok(None);
        };
        if off
            .checked_add(u64::from(len))
            .is_none_or(|e| e > self.file_len)
        {
            return Err(StoreError::corrupt(
                &self.path,
                "metadata lies outside the file",
            ));
        }
        let mut buf = vec![0u8; len as usize];
        read_exact_at(&self.source, &self.path, &mut buf, off, "read metadata")?;
        Ok(Some(buf))
    }

    /// Reads stored block bytes at `offset` into `buf` (bounds already checked by the caller).
    #[inline]
    pub(crate) fn read_stored(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.source.read_exact_at(buf, offset)
    }
}

pub(crate) fn stream_number(stream: Stream) -> u8 {
    match stream {
        Stream::Main => 0,
        Stream::Aux => 1,
    }
}

fn pages_of(index: &MasterIndex, stream: Stream) -> &[PageEntry] {
    match stream {
        Stream::Main => &index.main_pages,
        Stream::Aux => &index.aux_pages,
    }
}

fn read_exact_at(
    source: &Source,
    path: &Path,
    buf: &mut [u8],
    offset: u64,
    op: &'static str,
) -> Result<(), StoreError> {
    source.read_exact_at(buf, offset).map_err(|e| match e {
        SourceError::Io(e) => StoreError::io(path, op, e),
        SourceError::Remote(source) => StoreError::Remote {
            path: path.to_path_buf(),
            op,
            source: Box::new(source),
        },
    })
}
