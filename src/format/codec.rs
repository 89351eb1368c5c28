//! Block codecs (hexz-format.md §8) and the CRC-32 of stored bytes (§9).
//!
//! LZ4 blocks carry a 4-byte little-endian size prefix followed by one raw LZ4 block; Zstd
//! blocks are exactly one frame. Decoding always produces exactly `logical_len` bytes or fails:
//! a size mismatch is corruption, never short data.

/// The codec of every block of an archive (header field `compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Value 0: LZ4 block with a u32 size prefix.
    Lz4 = 0,
    /// Value 1: one Zstd frame.
    Zstd = 1,
}

impl Compression {
    /// Maps the header's u32 enum value; `None` for values Hexz does not define.
    pub fn from_u32(v: u32) -> Option<Compression> {
        match v {
            0 => Some(Compression::Lz4),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The user-facing name (`lz4`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Zstd level Hexz 0.8.2 writes.
pub const ZSTD_LEVEL: i32 = 3;

/// A block payload that does not decode to its recorded size.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The stored bytes do not match the recorded CRC-32.
    #[error("checksum mismatch: expected {expected:08x}, got {actual:08x}")]
    Crc { expected: u32, actual: u32 },
    /// An LZ4 block shorter than its 4-byte size prefix.
    #[error("LZ4 block of {0} bytes is shorter than its 4-byte size prefix")]
    Lz4TooShort(usize),
    /// The LZ4 decoder refused the data.
    #[error("LZ4 data is corrupt: {0}")]
    Lz4(String),
    /// The Zstd decoder refused the data.
    #[error("Zstd frame is corrupt: {0}")]
    Zstd(String),
    /// The LZ4 decoder refused the part of the block a read needs.
    #[error("LZ4 data is corrupt: {0}")]
    Lz4Prefix(#[from] super::lz4_prefix::PrefixError),
    /// The block decoded to a size other than `logical_len`.
    #[error("block decompressed to {actual} bytes, expected {expected}")]
    SizeMismatch { expected: usize, actual: usize },
    /// The Zstd encoder failed (only on resource exhaustion).
    #[error("Zstd compression failed: {0}")]
    ZstdCompress(String),
}

/// CRC-32/IEEE of `data` (check value of "123456789" is 0xCBF43926).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Checks stored bytes against their recorded CRC-32.
pub fn check_crc(stored: &[u8], expected: u32) -> Result<(), CodecError> {
    let actual = crc32(stored);
    if actual == expected {
        Ok(())
    } else {
        Err(CodecError::Crc { expected, actual })
    }
}

/// An archive's Zstd dictionary, parsed once when the archive opens (hexz-format.md §8): decoding
/// a block then only references it instead of loading the dictionary again.
pub struct Dictionary(zstd::dict::DecoderDictionary<'static>);

impl Dictionary {
    /// Prepares raw dictionary bytes.
    pub fn new(bytes: &[u8]) -> Dictionary {
        Dictionary(zstd::dict::DecoderDictionary::copy(bytes))
    }
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dictionary { .. }")
    }
}

/// The part of a block [`CodecContext::decompress_prefix`] decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The block's decoded length.
    pub logical_len: usize,
    /// Bytes wanted from its start (at most `logical_len`).
    pub need: usize,
    /// The same stored bytes (same CRC) were already seen to decode to exactly
    /// `logical_len` bytes, so the rest of the block need not be checked again.
    pub length_checked: bool,
}

/// Per-thread codec state: Zstd contexts are expensive to create, so each worker keeps its own.
#[derive(Default)]
pub struct CodecContext {
    zstd_d: Option<zstd::bulk::Decompressor<'static>>,
    zstd_c: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for CodecContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodecContext").finish_non_exhaustive()
    }
}

impl CodecContext {
    /// This thread's Zstd decompression context, created on first use.
    fn zstd_decompressor(&mut self) -> Result<&mut zstd::bulk::Decompressor<'static>, CodecError> {
        match &mut self.zstd_d {
            Some(d) => Ok(d),
            slot => Ok(slot.insert(
                zstd::bulk::Decompressor::new().map_err(|e| CodecError::Zstd(e.to_string()))?,
            )),
        }
    }

    /// Decodes `stored` (already CRC-checked and decrypted) into `out`, which must be exactly
    /// `logical_len` long. `dictionary` is the archive's Zstd dictionary, if it has one.
    pub fn decompress(
        &mut self,
        codec: Compression,
        stored: &[u8],
        out: &mut [u8],
        dictionary: Option<&Dictionary>,
    ) -> Result<(), CodecError> {
        let n = match codec {
            Compression::Lz4 => {
                if stored.len() < 4 {
                    return Err(CodecError::Lz4TooShort(stored.len()));
                }
                // The prefix repeats the size; like the reference we decode into a buffer of
                // `logical_len` bytes and let the length check below decide.
                lz4_flex::block::decompress_into(&stored[4..], out)
                    .map_err(|e| CodecError::Lz4(e.to_string()))?
            }
            Compression::Zstd => match dictionary {
                Some(dict) => zstd::bulk::Decompressor::with_prepared_dictionary(&dict.0)
                    .and_then(|mut d| d.decompress_to_buffer(stored, out))
                    .map_err(|e| CodecError::Zstd(e.to_string()))?,
                None => self
                    .zstd_decompressor()?
                    .decompress_to_buffer(stored, out)
                    .map_err(|e| CodecError::Zstd(e.to_string()))?,
            },
        };
        if n != out.len() {
            return Err(CodecError::SizeMismatch {
                expected: out.len(),
                actual: n,
            });
        }
        Ok(())
    }

    /// Decodes `stored` into a new vector of exactly `logical_len` bytes. Zstd writes into the
    /// vector's spare capacity; lz4_flex's safe decoder (the "safe-decode" feature, see
    /// Cargo.toml) zero-fills the new vector first. Decoding into reused buffers instead saves
    /// that memset but measured no faster (the decoder then writes to memory that is not in
    /// the CPU cache; README, Performance, round 4).
    pub fn decompress_to_vec(
        &mut self,
        codec: Compression,
        stored: &[u8],
        logical_len: usize,
        dictionary: Option<&Dictionary>,
    ) -> Result<Vec<u8>, CodecError> {
        let out = match (codec, dictionary) {
            (Compression::Lz4, _) => {
                if stored.len() < 4 {
                    return Err(CodecError::Lz4TooShort(stored.len()));
                }
                // Output is bounded by the capacity (`logical_len`); a longer block is an error.
                lz4_flex::block::decompress(&stored[4..], logical_len)
                    .map_err(|e| CodecError::Lz4(e.to_string()))?
            }
            (Compression::Zstd, Some(_)) => {
                let mut out = vec![0u8; logical_len];
                self.decompress(codec, stored, &mut out, dictionary)?;
                return Ok(out);
            }
            (Compression::Zstd, None) => {
                let mut out = Vec::with_capacity(logical_len);
                self.zstd_decompressor()?
                    .decompress_to_buffer(stored, &mut out)
                    .map_err(|e| CodecError::Zstd(e.to_string()))?;
                out
            }
        };
        if out.len() != logical_len {
            return Err(CodecError::SizeMismatch {
                expected: logical_len,
                actual: out.len(),
            });
        }
        Ok(out)
    }

    /// Decodes the first `part.need` bytes of a block of `part.logical_len` bytes into
    /// `buf[..need]`, growing `buf` if it is shorter (it is a buffer reused across blocks, so
    /// it is zeroed only when it grows). LZ4 stops writing at byte `need`
    /// ([`lz4_prefix`](super::lz4_prefix)); a whole block (`need == logical_len`) and Zstd
    /// frames are decoded whole.
    ///
    /// Unless `part.length_checked`, the rest of an LZ4 block is walked to check that it
    /// decodes to exactly `logical_len` bytes, and a block of any other length is an error.
    /// Returns whether this call checked the whole block's length (so the caller can
    /// remember it).
    pub fn decompress_prefix(
        &mut self,
        codec: Compression,
        stored: &[u8],
        part: Part,
        buf: &mut Vec<u8>,
        dictionary: Option<&Dictionary>,
    ) -> Result<bool, CodecError> {
        let Part {
            logical_len,
            need,
            length_checked,
        } = part;
        let partial = codec == Compression::Lz4 && need < logical_len;
        let n = if partial { need } else { logical_len };
        if buf.len() < n {
            buf.resize(n, 0);
        }
        let out = &mut buf[..n];
        if !partial {
            self.decompress(codec, stored, out, dictionary)?;
            return Ok(true);
        }
        if stored.len() < 4 {
            return Err(CodecError::Lz4TooShort(stored.len()));
        }
        if length_checked {
            super::lz4_prefix::decode_head(&stored[4..], out)?;
            return Ok(false);
        }
        let actual = super::lz4_prefix::decode_prefix(&stored[4..], out)?;
        if actual != logical_len {
            return Err(CodecError::SizeMismatch {
                expected: logical_len,
                actual,
            });
        }
        Ok(true)
    }

    /// Compresses `data` and appends the stored form to `out` (LZ4 with its size prefix, or one
    /// Zstd frame at level 3).
    pub fn compress(
        &mut self,
        codec: Compression,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        match codec {
            Compression::Lz4 => {
                let start = out.len();
                let bound = lz4_flex::block::get_maximum_output_size(data.len());
                out.resize(start + 4 + bound, 0);
                let len = u32::try_from(data.len()).map_err(|_| CodecError::SizeMismatch {
                    expected: u32::MAX as usize,
                    actual: data.len(),
                })?;
                out[start..start + 4].copy_from_slice(&len.to_le_bytes());
                let n = lz4_flex::block::compress_into(data, &mut out[start + 4..])
                    .map_err(|e| CodecError::Lz4(e.to_string()))?;
                out.truncate(start + 4 + n);
            }
            Compression::Zstd => {
                let c = match &mut self.zstd_c {
                    Some(c) => c,
                    slot => slot.insert(
                        zstd::bulk::Compressor::new(ZSTD_LEVEL)
                            .map_err(|e| CodecError::ZstdCompress(e.to_string()))?,
                    ),
                };
                let frame = c
                    .compress(data)
                    .map_err(|e| CodecError::ZstdCompress(e.to_string()))?;
                out.extend_from_slice(&frame);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..70_000u32)
            .map(|i| (i % 251).to_le_bytes()[0] ^ (i / 1000).to_le_bytes()[0])
            .collect()
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn lz4_round_trip_has_size_prefix() {
        let data = sample();
        let mut ctx = CodecContext::default();
        let mut stored = Vec::new();
        ctx.compress(Compression::Lz4, &data, &mut stored).unwrap();
        assert_eq!(
            &stored[..4],
            &u32::try_from(data.len()).unwrap().to_le_bytes()
        );
        // Same layout as lz4_flex's size-prepended format.
        assert_eq!(lz4_flex::decompress_size_prepended(&stored).unwrap(), data);
        let mut out = vec![0; data.len()];
        ctx.decompress(Compression::Lz4, &stored, &mut out, None)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_round_trip() {
        let data = sample();
        let mut ctx = CodecContext::default();
        let mut stored = Vec::new();
        ctx.compress(Compression::Zstd, &data, &mut stored).unwrap();
        assert_eq!(&stored[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        let mut out = vec![0; data.len()];
        ctx.decompress(Compression::Zstd, &stored, &mut out, None)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn decompressed_size_other_than_logical_len_is_corruption() {
        let data = sample();
        let mut ctx = CodecContext::default();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let mut stored = Vec::new();
            ctx.compress(codec, &data, &mut stored).unwrap();
            let mut longer = vec![0; data.len() + 1];
            assert!(ctx.decompress(codec, &stored, &mut longer, None).is_err());
            let mut shorter = vec![0; data.len() - 1];
            assert!(ctx.decompress(codec, &stored, &mut shorter, None).is_err());
        }
    }

    #[test]
    fn decompress_to_vec_matches_and_checks_the_size() {
        let data = sample();
        let mut ctx = CodecContext::default();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let mut stored = Vec::new();
            ctx.compress(codec, &data, &mut stored).unwrap();
            assert_eq!(
                ctx.decompress_to_vec(codec, &stored, data.len(), None)
                    .unwrap(),
                data
            );
            assert!(
                ctx.decompress_to_vec(codec, &stored, data.len() - 1, None)
                    .is_err()
            );
            assert!(
                ctx.decompress_to_vec(codec, &stored, data.len() + 1, None)
                    .is_err()
            );
            for cut in [0, 4, stored.len() / 2, stored.len() - 1] {
                assert!(
                    ctx.decompress_to_vec(codec, &stored[..cut], data.len(), None)
                        .is_err()
                );
            }
        }
    }

    #[test]
    fn truncated_payloads_fail_cleanly() {
        let data = sample();
        let mut ctx = CodecContext::default();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let mut stored = Vec::new();
            ctx.compress(codec, &data, &mut stored).unwrap();
            for cut in [0, 3, 4, 5, stored.len() / 2, stored.len() - 1] {
                let mut out = vec![0; data.len()];
                assert!(
                    ctx.decompress(codec, &stored[..cut], &mut out, None)
                        .is_err(),
                    "{codec:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn decompress_prefix_gives_the_first_bytes_and_reuses_the_buffer() {
        let data = sample();
        let mut ctx = CodecContext::default();
        let mut buf = Vec::new();
        for codec in [Compression::Lz4, Compression::Zstd] {
            let mut stored = Vec::new();
            ctx.compress(codec, &data, &mut stored).unwrap();
            for need in [1, 4096, 33_333, data.len()] {
                for checked in [false, true] {
                    let part = Part {
                        logical_len: data.len(),
                        need,
                        length_checked: checked,
                    };
                    let whole = ctx
                        .decompress_prefix(codec, &stored, part, &mut buf, None)
                        .unwrap();
                    assert!(buf[..need] == data[..need], "{codec:?} {need}");
                    // Only a partial LZ4 decode of a checked block leaves the length unchecked.
                    let skipped = checked && codec == Compression::Lz4 && need < data.len();
                    assert_eq!(whole, !skipped, "{codec:?} {need} {checked}");
                }
            }
            // A whole block is still checked against its length.
            assert!(
                ctx.decompress_prefix(
                    codec,
                    &stored,
                    Part {
                        logical_len: data.len() + 1,
                        need: data.len() + 1,
                        length_checked: false
                    },
                    &mut buf,
                    None,
                )
                .is_err()
            );
            // Cut stored bytes fail, however little is needed from them.
            for cut in [0, 3, stored.len() / 2] {
                assert!(
                    ctx.decompress_prefix(
                        codec,
                        &stored[..cut],
                        Part {
                            logical_len: data.len(),
                            need: data.len() - 1,
                            length_checked: false
                        },
                        &mut buf,
                        None,
                    )
                    .is_err(),
                    "{codec:?} cut at {cut}"
                );
            }
        }
        assert!(buf.capacity() >= data.len());
    }

    #[test]
    fn literal_only_lz4_block_is_accepted() {
        // A token 0x50 = 5 literals, no match: a valid, uncompressed LZ4 block.
        let stored = [5, 0, 0, 0, 0x50, b'h', b'e', b'l', b'l', b'o'];
        let mut out = [0u8; 5];
        CodecContext::default()
            .decompress(Compression::Lz4, &stored, &mut out, None)
            .unwrap();
        assert_eq!(&out, b"hello");
    }
}
