//! The master index (hexz-format.md §4), index pages and block entries (§5), and block kinds
//! (§6). Pure decode/encode over byte slices.

use super::bincode::{Decoder, Encoder};
use super::{BLOCK_INFO_SIZE, BLOCK_OFFSET_PARENT, FormatError, PAGE_ENTRY_SIZE};

/// One entry of a stream's page directory (28 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntry {
    /// Absolute file offset of the serialised page.
    pub offset: u64,
    /// Byte length of the serialised page.
    pub length: u32,
    /// Global index of the page's first block (runs across both streams).
    pub start_block: u64,
    /// Stream byte offset where the page's first block begins.
    pub start_logical: u64,
}

/// The master index: page directories and logical sizes of both streams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MasterIndex {
    /// Page directory of the main stream, ascending `start_logical`.
    pub main_pages: Vec<PageEntry>,
    /// Page directory of the auxiliary stream.
    pub aux_pages: Vec<PageEntry>,
    /// Logical length of the main stream in bytes.
    pub main_size: u64,
    /// Logical length of the auxiliary stream in bytes.
    pub aux_size: u64,
}

/// One block entry of an index page (52 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockInfo {
    /// Absolute file offset of the stored bytes; 0 for sparse, `u64::MAX` for a parent block.
    pub offset: u64,
    /// Stored byte count (after compression and encryption).
    pub length: u32,
    /// Uncompressed byte count.
    pub logical_len: u32,
    /// CRC-32 of the stored bytes.
    pub checksum: u32,
    /// BLAKE3 of the uncompressed block; zero for sparse blocks and encrypted archives.
    pub hash: [u8; 32],
}

/// What a block entry means, decided from `offset`, `length` and `logical_len` (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Stored bytes to read, check, decrypt and decompress.
    Data,
    /// `logical_len` zero bytes (offset 0 and length 0).
    Sparse,
    /// Resolved by hash in the parent archives (offset `u64::MAX`).
    Parent,
    /// Covers no bytes (`logical_len` 0); never read.
    Empty,
    /// A non-zero offset with a zero stored length: no valid writer produces it.
    Invalid,
}

impl BlockInfo {
    /// A sparse (all-zero) entry of `logical_len` bytes.
    pub fn sparse(logical_len: u32) -> Self {
        BlockInfo {
            offset: 0,
            length: 0,
            logical_len,
            checksum: 0,
            hash: [0; 32],
        }
    }

    /// A parent reference to the block whose plaintext has BLAKE3 `hash`.
    pub fn parent(logical_len: u32, hash: [u8; 32]) -> Self {
        BlockInfo {
            offset: BLOCK_OFFSET_PARENT,
            length: 0,
            logical_len,
            checksum: 0,
            hash,
        }
    }

    /// Classifies the entry.
    pub fn kind(&self) -> BlockKind {
        if self.logical_len == 0 {
            BlockKind::Empty
        } else if self.offset == BLOCK_OFFSET_PARENT {
            BlockKind::Parent
        } else if self.length == 0 {
            if self.offset == 0 {
                BlockKind::Sparse
            } else {
                BlockKind::Invalid
            }
        } else {
            BlockKind::Data
        }
    }

    fn decode(d: &mut Decoder<'_>) -> Result<BlockInfo, FormatError> {
        Ok(BlockInfo {
            offset: d.u64("block.offset")?,
            length: d.u32("block.length")?,
            logical_len: d.u32("block.logical_len")?,
            checksum: d.u32("block.checksum")?,
            hash: d.array("block.hash")?,
        })
    }

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.offset);
        e.u32(self.length);
        e.u32(self.logical_len);
        e.u32(self.checksum);
        e.bytes(&self.hash);
    }
}

impl PageEntry {
    fn decode(d: &mut Decoder<'_>) -> Result<PageEntry, FormatError> {
        Ok(PageEntry {
            offset: d.u64("page.offset")?,
            length: d.u32("page.length")?,
            start_block: d.u64("page.start_block")?,
            start_logical: d.u64("page.start_logical")?,
        })
    }

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.offset);
        e.u32(self.length);
        e.u64(self.start_block);
        e.u64(self.start_logical);
    }
}

impl MasterIndex {
    /// Decodes the master index from the start of `buf`, ignoring trailing bytes (metadata and
    /// signature follow it in the file).
    pub fn decode(buf: &[u8]) -> Result<MasterIndex, FormatError> {
        let mut d = Decoder::new(buf, "master index");
        let main_pages = decode_page_entries(&mut d, "main_pages")?;
        let aux_pages = decode_page_entries(&mut d, "auxiliary_pages")?;
        let main_size = d.u64("main_size")?;
        let aux_size = d.u64("auxiliary_size")?;
        Ok(MasterIndex {
            main_pages,
            aux_pages,
            main_size,
            aux_size,
        })
    }

    /// Encodes the master index: 8 + 28·n_main + 8 + 28·n_aux + 16 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let n = self.main_pages.len() + self.aux_pages.len();
        let mut e = Encoder::with_capacity(32 + n * PAGE_ENTRY_SIZE);
        for pages in [&self.main_pages, &self.aux_pages] {
            e.u64(pages.len() as u64);
            for p in pages {
                p.encode(&mut e);
            }
        }
        e.u64(self.main_size);
        e.u64(self.aux_size);
        e.buf
    }
}

fn decode_page_entries(
    d: &mut Decoder<'_>,
    field: &'static str,
) -> Result<Vec<PageEntry>, FormatError> {
    let n = d.vec_len(PAGE_ENTRY_SIZE, field)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(PageEntry::decode(d)?);
    }
    Ok(v)
}

/// Decodes an index page: u64 count, then `count` block entries. Trailing bytes are ignored, as
/// the reference does.
pub fn decode_page(buf: &[u8]) -> Result<Vec<BlockInfo>, FormatError> {
    let mut d = Decoder::new(buf, "index page");
    let n = d.vec_len(BLOCK_INFO_SIZE, "block entry")?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(BlockInfo::decode(&mut d)?);
    }
    Ok(v)
}

/// Encodes an index page.
pub fn encode_page(blocks: &[BlockInfo]) -> Vec<u8> {
    let mut e = Encoder::with_capacity(8 + blocks.len() * BLOCK_INFO_SIZE);
    e.u64(blocks.len() as u64);
    for b in blocks {
        b.encode(&mut e);
    }
    e.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_master_index_is_32_zero_bytes() {
        let m = MasterIndex::default();
        assert_eq!(m.encode(), vec![0u8; 32]);
        assert_eq!(MasterIndex::decode(&[0u8; 32]).unwrap(), m);
    }

    #[test]
    fn one_page_master_index_is_60_bytes_and_round_trips() {
        let m = MasterIndex {
            main_pages: vec![PageEntry {
                offset: 1000,
                length: 8 + 52,
                start_block: 0,
                start_logical: 0,
            }],
            aux_pages: vec![],
            main_size: 1080,
            aux_size: 0,
        };
        let b = m.encode();
        assert_eq!(b.len(), 60);
        let mut with_trailer = b.clone();
        with_trailer.extend_from_slice(b"{\"metadata\":1}");
        assert_eq!(MasterIndex::decode(&with_trailer).unwrap(), m);
    }

    #[test]
    fn full_page_is_213000_bytes() {
        let blocks = vec![BlockInfo::sparse(65536); 4096];
        let b = encode_page(&blocks);
        assert_eq!(b.len(), 213_000);
        assert_eq!(decode_page(&b).unwrap(), blocks);
    }

    #[test]
    fn page_count_larger_than_its_bytes_is_refused() {
        let mut b = encode_page(&[BlockInfo::sparse(1)]);
        b[0] = 2;
        assert!(matches!(
            decode_page(&b),
            Err(FormatError::LengthTooLarge { count: 2, .. })
        ));
    }

    #[test]
    fn block_kinds_follow_offset_and_length() {
        let data = BlockInfo {
            offset: 4096,
            length: 10,
            logical_len: 100,
            checksum: 1,
            hash: [0; 32],
        };
        assert_eq!(data.kind(), BlockKind::Data);
        assert_eq!(BlockInfo::sparse(5).kind(), BlockKind::Sparse);
        assert_eq!(BlockInfo::parent(5, [1; 32]).kind(), BlockKind::Parent);
        assert_eq!(BlockInfo::sparse(0).kind(), BlockKind::Empty);
        let zero_len_data = BlockInfo { length: 0, ..data };
        assert_eq!(zero_len_data.kind(), BlockKind::Invalid);
    }
}
