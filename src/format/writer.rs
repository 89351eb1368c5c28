//! The archive writer (hexz-format.md §13): lays out stored blocks, index pages, the master
//! index and the header. It takes blocks that are already compressed (and encrypted); the
//! compression pipeline that feeds it lives in `pack`.

use std::io::{self, Seek, SeekFrom, Write};

use super::index::{BlockInfo, MasterIndex, PageEntry, encode_page};
use super::{ENTRIES_PER_PAGE, FormatError, HEADER_SIZE, Header, MAX_MASTER_INDEX_BYTES, Stream};

/// A failure while writing an archive.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The output could not be written (a full disk, usually).
    #[error("write failed at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The header or index cannot be encoded.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The master index would exceed what Hexz readers accept.
    #[error(
        "master index and metadata would be {0} bytes, more than the 64 MiB Hexz readers accept"
    )]
    IndexTooLarge(u64),
    /// A stream offset or file offset overflowed u64.
    #[error("archive larger than 2^64 bytes")]
    Overflow,
}

/// What the writer produced, for progress and `inspect`-style summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Total archive size in bytes.
    pub file_size: u64,
    /// Offset of the master index.
    pub index_offset: u64,
    /// Number of block entries across both streams.
    pub blocks: u64,
    /// Number of index pages across both streams.
    pub pages: u64,
}

#[derive(Debug)]
struct OpenStream {
    stream: Stream,
    /// Entries of the page being filled.
    page: Vec<BlockInfo>,
    /// Global block index of `page[0]`.
    page_start_block: u64,
    /// Stream offset of `page[0]`.
    page_start_logical: u64,
    /// Stream offset after the last pushed entry.
    logical: u64,
}

/// Writes one archive to `W`. Streams are written one after the other (main, then aux); within
/// a stream, stored bytes and entries are appended in order.
#[derive(Debug)]
pub struct ArchiveWriter<W: Write + Seek> {
    out: W,
    header: Header,
    pos: u64,
    next_block: u64,
    index: MasterIndex,
    open: Option<OpenStream>,
    pages: u64,
}

impl<W: Write + Seek> ArchiveWriter<W> {
    /// Starts an archive: reserves the 4096-byte header region. `header` supplies everything
    /// but the index offset and feature bits, which are filled in by [`finish`](Self::finish).
    pub fn new(mut out: W, header: Header) -> Result<Self, WriteError> {
        // Fail early if the header (parents) can never fit.
        header.encode()?;
        out.write_all(&[0u8; HEADER_SIZE])
            .map_err(|source| WriteError::Io { offset: 0, source })?;
        Ok(ArchiveWriter {
            out,
            header,
            pos: HEADER_SIZE as u64,
            next_block: 0,
            index: MasterIndex::default(),
            open: None,
            pages: 0,
        })
    }

    /// Global index the next pushed entry will get (the AES-GCM nonce of that block).
    pub fn next_block_index(&self) -> u64 {
        self.next_block
    }

    /// Opens `stream`, ending the previous one.
    pub fn begin_stream(&mut self, stream: Stream) -> Result<(), WriteError> {
        self.end_stream()?;
        self.open = Some(OpenStream {
            stream,
            page: Vec::with_capacity(ENTRIES_PER_PAGE),
            page_start_block: self.next_block,
            page_start_logical: 0,
            logical: 0,
        });
        Ok(())
    }

    /// Appends stored bytes (compressed, perhaps encrypted) and returns their file offset.
    pub fn append_stored(&mut self, stored: &[u8]) -> Result<u64, WriteError> {
        let at = self.pos;
        self.write(stored)?;
        Ok(at)
    }

    /// Adds a block entry to the open stream, flushing a page every 4096 entries. Empty entries
    /// are never written (hexz-format.md §16 #3).
    pub fn push_entry(&mut self, info: BlockInfo) -> Result<(), WriteError> {
        if info.logical_len == 0 {
            return Ok(());
        }
        let Some(open) = self.open.as_mut() else {
            debug_assert!(false, "push_entry without begin_stream");
            return Ok(());
        };
        open.logical = open
            .logical
            .checked_add(u64::from(info.logical_len))
            .ok_or(WriteError::Overflow)?;
        open.page.push(info);
        self.next_block += 1;
        if open.page.len() == ENTRIES_PER_PAGE {
            self.flush_page()?;
        }
        Ok(())
    }

    /// Writes the remaining page of the open stream and records its size.
    fn end_stream(&mut self) -> Result<(), WriteError> {
        self.flush_page()?;
        if let Some(open) = self.open.take() {
            match open.stream {
                Stream::Main => self.index.main_size = open.logical,
                Stream::Aux => self.index.aux_size = open.logical,
            }
        }
        Ok(())
    }

    fn flush_page(&mut self) -> Result<(), WriteError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if open.page.is_empty() {
            return Ok(());
        }
        let bytes = encode_page(&open.page);
        let entry = PageEntry {
            offset: self.pos,
            length: u32::try_from(bytes.len()).map_err(|_| WriteError::Overflow)?,
            start_block: open.page_start_block,
            start_logical: open.page_start_logical,
        };
        match open.stream {
            Stream::Main => self.index.main_pages.push(entry),
            Stream::Aux => self.index.aux_pages.push(entry),
        }
        open.page_start_block += open.page.len() as u64;
        open.page_start_logical = open.logical;
        open.page.clear();
        self.pages += 1;
        self.write(&bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(bytes).map_err(|source| WriteError::Io {
            offset: self.pos,
            source,
        })?;
        self.pos = self
            .pos
            .checked_add(bytes.len() as u64)
            .ok_or(WriteError::Overflow)?;
        Ok(())
    }

    /// Ends the last stream, writes the master index, optional metadata, and the header, and
    /// flushes. Returns the output and a summary.
    pub fn finish(mut self, metadata: Option<&[u8]>) -> Result<(W, WriteSummary), WriteError> {
        self.end_stream()?;
        let index_offset = self.pos;
        let index = self.index.encode();
        let tail = index.len() as u64 + metadata.map_or(0, |m| m.len() as u64);
        if tail > MAX_MASTER_INDEX_BYTES {
            return Err(WriteError::IndexTooLarge(tail));
        }
        self.write(&index)?;
        let mut header = self.header.clone();
        header.index_offset = index_offset;
        header.features.has_main = !self.index.main_pages.is_empty();
        header.features.has_auxiliary = !self.index.aux_pages.is_empty();
        if let Some(m) = metadata {
            header.metadata_offset = Some(self.pos);
            header.metadata_length =
                Some(u32::try_from(m.len()).map_err(|_| WriteError::Overflow)?);
            self.write(m)?;
        }
        let file_size = self.pos;
        let bytes = header.encode()?;
        let io = |source| WriteError::Io { offset: 0, source };
        self.out.seek(SeekFrom::Start(0)).map_err(io)?;
        self.out.write_all(&bytes).map_err(io)?;
        self.out.flush().map_err(io)?;
        Ok((
            self.out,
            WriteSummary {
                file_size,
                index_offset,
                blocks: self.next_block,
                pages: self.pages,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::format::Compression;
    use crate::format::index::decode_page;

    #[test]
    fn empty_archive_is_header_plus_32_zero_bytes() {
        let w = ArchiveWriter::new(
            Cursor::new(Vec::new()),
            Header::new(Compression::Lz4, 65536),
        )
        .unwrap();
        let (out, sum) = w.finish(None).unwrap();
        let bytes = out.into_inner();
        assert_eq!(bytes.len(), HEADER_SIZE + 32);
        assert!(bytes[HEADER_SIZE..].iter().all(|&b| b == 0));
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(h.index_offset, HEADER_SIZE as u64);
        assert!(!h.features.has_main);
        assert_eq!(sum.blocks, 0);
    }

    #[test]
    fn pages_flush_every_4096_entries_and_number_blocks_across_streams() {
        let mut w =
            ArchiveWriter::new(Cursor::new(Vec::new()), Header::new(Compression::Lz4, 1)).unwrap();
        w.begin_stream(Stream::Main).unwrap();
        for _ in 0..4097 {
            w.push_entry(BlockInfo::sparse(1)).unwrap();
        }
        w.begin_stream(Stream::Aux).unwrap();
        w.push_entry(BlockInfo::sparse(3)).unwrap();
        w.push_entry(BlockInfo::sparse(0)).unwrap(); // dropped: never an empty block
        let (out, sum) = w.finish(None).unwrap();
        let bytes = out.into_inner();
        let h = Header::decode(&bytes).unwrap();
        assert!(h.features.has_main && h.features.has_auxiliary);
        let off = usize::try_from(h.index_offset).unwrap();
        let m = MasterIndex::decode(&bytes[off..]).unwrap();
        assert_eq!(m.main_size, 4097);
        assert_eq!(m.aux_size, 3);
        assert_eq!(m.main_pages.len(), 2);
        assert_eq!(m.main_pages[1].start_block, 4096);
        assert_eq!(m.main_pages[1].start_logical, 4096);
        assert_eq!(m.aux_pages[0].start_block, 4097);
        assert_eq!(m.aux_pages[0].start_logical, 0);
        let p = m.main_pages[0];
        let page = decode_page(&bytes[usize::try_from(p.offset).unwrap()..]).unwrap();
        assert_eq!(page.len(), 4096);
        assert_eq!(p.length, 213_000);
        assert_eq!(sum.blocks, 4098);
        assert_eq!(sum.pages, 3);
    }
}
