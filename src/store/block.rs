//! Decoding one stored block (hexz-format.md §12 step 3): bounds check, read, CRC, decrypt,
//! decompress to exactly `logical_len` bytes. Runs on a pool worker.

use super::BlockFault;
use super::archive::Archive;
use super::pool::Scratch;
use super::source::SourceError;
use crate::format::codec::{Part, check_crc};
use crate::format::{BlockInfo, MAX_BLOCK_LEN, MAX_STORED_LEN};

/// Decodes the data block `info` (global index `index`) of `archive` into a new vector.
pub(crate) fn decode(
    archive: &Archive,
    info: &BlockInfo,
    index: u64,
    scratch: &mut Scratch,
) -> Result<Vec<u8>, BlockFault> {
    let plain_len = load(archive, info, index, scratch)?;
    Ok(scratch.codec.decompress_to_vec(
        archive.header().compression,
        &scratch.stored[..plain_len],
        info.logical_len as usize,
        archive.dictionary.as_ref(),
    )?)
}

/// Decodes the data block `info` straight into `out`, which is exactly `logical_len` long:
/// a reader decoding a block its read covers whole saves the copy out of a block buffer.
pub(crate) fn decode_into(
    archive: &Archive,
    info: &BlockInfo,
    index: u64,
    scratch: &mut Scratch,
    out: &mut [u8],
) -> Result<(), BlockFault> {
    let plain_len = load(archive, info, index, scratch)?;
    Ok(scratch.codec.decompress(
        archive.header().compression,
        &scratch.stored[..plain_len],
        out,
        archive.dictionary.as_ref(),
    )?)
}

/// Decodes the first `need` bytes of the data block `info` into `scratch.block[..need]`: LZ4
/// stops there, so a read of a few KiB that the cache will not keep decodes half a block on
/// average instead of all of it. The stored bytes stay in `scratch` for [`decode_loaded`].
///
/// `length_checked` says the block was already seen to decode to exactly `logical_len`, so
/// the rest of an LZ4 block need not be walked again (its CRC is checked here all the same).
/// Returns whether this call checked the whole block's length.
pub(crate) fn decode_prefix(
    archive: &Archive,
    info: &BlockInfo,
    index: u64,
    scratch: &mut Scratch,
    need: usize,
    length_checked: bool,
) -> Result<bool, BlockFault> {
    scratch.plain_len = load(archive, info, index, scratch)?;
    let Scratch {
        codec,
        stored,
        plain_len,
        block,
    } = scratch;
    let part = Part {
        logical_len: info.logical_len as usize,
        need,
        length_checked,
    };
    Ok(codec.decompress_prefix(
        archive.header().compression,
        &stored[..*plain_len],
        part,
        block,
        archive.dictionary.as_ref(),
    )?)
}

/// Decodes the whole block whose stored bytes [`decode_prefix`] left in `scratch` into a new
/// vector (for a reader that arrived while the prefix was decoded and needs all of it).
pub(crate) fn decode_loaded(
    archive: &Archive,
    info: &BlockInfo,
    scratch: &mut Scratch,
) -> Result<Vec<u8>, BlockFault> {
    Ok(scratch.codec.decompress_to_vec(
        archive.header().compression,
        &scratch.stored[..scratch.plain_len],
        info.logical_len as usize,
        archive.dictionary.as_ref(),
    )?)
}

#[inline]
fn read(archive: &Archive, info: &BlockInfo, stored: &mut [u8]) -> Result<(), BlockFault> {
    archive
        .read_stored(info.offset, stored)
        .map_err(|e| match e {
            SourceError::Io(e) => BlockFault::Io(std::sync::Arc::new(e)),
            SourceError::Remote(e) => BlockFault::Remote(Box::new(e)),
        })
}

/// Checks the entry's bounds, reads its stored bytes into `scratch.stored`, checks the CRC
/// and decrypts in place. Returns the length of the plaintext at the start of the buffer.
fn load(
    archive: &Archive,
    info: &BlockInfo,
    index: u64,
    scratch: &mut Scratch,
) -> Result<usize, BlockFault> {
    if archive.locked() {
        return Err(BlockFault::Locked);
    }
    if info.logical_len > MAX_BLOCK_LEN {
        return Err(BlockFault::TooLarge(info.logical_len));
    }
    if info.length > MAX_STORED_LEN {
        return Err(BlockFault::StoredTooLarge(info.length));
    }
    if info.length == 0 {
        return Err(BlockFault::Invalid(info.offset));
    }
    let past_eof = BlockFault::PastEof {
        offset: info.offset,
        length: info.length,
        file_len: archive.file_len(),
    };
    match info.offset.checked_add(u64::from(info.length)) {
        Some(end) if end <= archive.file_len() => {}
        _ => return Err(past_eof),
    }
    // The buffer only grows: resizing it down and up again per block would zero the
    // difference on every miss.
    let len = info.length as usize;
    if scratch.stored.len() < len {
        scratch.stored.resize(len, 0);
    }
    let stored = &mut scratch.stored[..len];
    read(archive, info, stored)?;
    if let Err(e) = check_crc(stored, info.checksum) {
        // Bytes of a remote archive may have come from a cache file or a transfer that went
        // wrong: forget them and fetch the block once more before calling it corrupt.
        let Some(object) = archive.source.remote() else {
            return Err(e.into());
        };
        object.invalidate(info.offset, u64::from(info.length));
        read(archive, info, stored)?;
        check_crc(stored, info.checksum)?;
    }
    Ok(match &archive.cipher {
        Some(cipher) => cipher.decrypt_in_place(index, stored)?,
        None => stored.len(),
    })
}
