//! The archive header (hexz-format.md §3): a bincode `Header` at byte 0, zero-padded to 4096
//! bytes. Decoding checks magic, version, every enum value, bool and `Option` tag.

use super::bincode::{Decoder, Encoder};
use super::codec::Compression;
use super::{FormatError, HEADER_SIZE, MAGIC, VERSION};

/// PBKDF2 parameters of an encrypted archive (§10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptionParams {
    /// 16 random bytes.
    pub salt: [u8; 16],
    /// PBKDF2-HMAC-SHA256 iteration count (Hexz writes 600,000).
    pub iterations: u32,
}

/// Writer-side feature bits (§3). Informational: readers never depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// The main stream has at least one page.
    pub has_main: bool,
    /// The auxiliary stream has at least one page.
    pub has_auxiliary: bool,
    /// Blocks come from content-defined chunking.
    pub variable_blocks: bool,
}

/// FastCDC parameters (§3): average chunk 2^f, min and max in bytes. Informational.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CdcParams {
    /// log2 of the average chunk size.
    pub f: u32,
    /// Minimum chunk size in bytes.
    pub min: u32,
    /// Maximum chunk size in bytes.
    pub max: u32,
}

/// The decoded header. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Nominal block size; informational only (§16 #10).
    pub block_size: u32,
    /// Absolute offset of the master index.
    pub index_offset: u64,
    /// Parent archive paths of a thin snapshot, as stored.
    pub parent_paths: Vec<String>,
    /// Zstd dictionary location.
    pub dictionary_offset: Option<u64>,
    /// Zstd dictionary length.
    pub dictionary_length: Option<u32>,
    /// Metadata blob location (right after the master index).
    pub metadata_offset: Option<u64>,
    /// Metadata blob length.
    pub metadata_length: Option<u32>,
    /// Ed25519 signature location.
    pub signature_offset: Option<u64>,
    /// Ed25519 signature length (64).
    pub signature_length: Option<u32>,
    /// Encryption parameters, when the blocks are AES-256-GCM encrypted.
    pub encryption: Option<EncryptionParams>,
    /// The codec of every block.
    pub compression: Compression,
    /// Writer feature bits.
    pub features: Features,
    /// CDC parameters, if the writer used content-defined chunking.
    pub cdc_params: Option<CdcParams>,
}

impl Header {
    /// A header for a new archive with no parents, metadata or encryption.
    pub fn new(compression: Compression, block_size: u32) -> Self {
        Header {
            block_size,
            index_offset: 0,
            parent_paths: Vec::new(),
            dictionary_offset: None,
            dictionary_length: None,
            metadata_offset: None,
            metadata_length: None,
            signature_offset: None,
            signature_length: None,
            encryption: None,
            compression,
            features: Features::default(),
            cdc_params: None,
        }
    }

    /// Decodes a header from the start of an archive. `buf` is the first 4096 bytes (or the
    /// whole file when it is shorter); trailing padding is ignored.
    pub fn decode(buf: &[u8]) -> Result<Header, FormatError> {
        let mut d = Decoder::new(buf, "header");
        let magic: [u8; 4] = d.array("magic")?;
        if magic != MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        let version = d.u32("version")?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let block_size = d.u32("block_size")?;
        let index_offset = d.u64("index_offset")?;
        // Each path costs at least its 8-byte length prefix.
        let n_parents = d.vec_len(8, "parent_paths")?;
        let mut parent_paths = Vec::with_capacity(n_parents);
        for _ in 0..n_parents {
            parent_paths.push(d.string("parent_paths")?);
        }
        let dictionary_offset = opt_u64(&mut d, "dictionary_offset")?;
        let dictionary_length = opt_u32(&mut d, "dictionary_length")?;
        let metadata_offset = opt_u64(&mut d, "metadata_offset")?;
        let metadata_length = opt_u32(&mut d, "metadata_length")?;
        let signature_offset = opt_u64(&mut d, "signature_offset")?;
        let signature_length = opt_u32(&mut d, "signature_length")?;
        let encryption = if d.option_tag("encryption")? {
            Some(EncryptionParams {
                salt: d.array("encryption.salt")?,
                iterations: d.u32("encryption.iterations")?,
            })
        } else {
            None
        };
        let codec = d.u32("compression")?;
        let compression =
            Compression::from_u32(codec).ok_or(FormatError::UnknownCompression(codec))?;
        let features = Features {
            has_main: d.bool("features.has_main")?,
            has_auxiliary: d.bool("features.has_auxiliary")?,
            variable_blocks: d.bool("features.variable_blocks")?,
        };
        let cdc_params = if d.option_tag("cdc_params")? {
            Some(CdcParams {
                f: d.u32("cdc_params.f")?,
                min: d.u32("cdc_params.min")?,
                max: d.u32("cdc_params.max")?,
            })
        } else {
            None
        };
        Ok(Header {
            block_size,
            index_offset,
            parent_paths,
            dictionary_offset,
            dictionary_length,
            metadata_offset,
            metadata_length,
            signature_offset,
            signature_length,
            encryption,
            compression,
            features,
            cdc_params,
        })
    }

    /// Encodes the header and pads it with zeros to exactly [`HEADER_SIZE`] bytes. Fails when
    /// the encoding does not fit (many or long parent paths).
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let mut e = Encoder::with_capacity(HEADER_SIZE);
        e.bytes(&MAGIC);
        e.u32(VERSION);
        e.u32(self.block_size);
        e.u64(self.index_offset);
        e.u64(self.parent_paths.len() as u64);
        for p in &self.parent_paths {
            e.string(p);
        }
        put_opt_u64(&mut e, self.dictionary_offset);
        put_opt_u32(&mut e, self.dictionary_length);
        put_opt_u64(&mut e, self.metadata_offset);
        put_opt_u32(&mut e, self.metadata_length);
        put_opt_u64(&mut e, self.signature_offset);
        put_opt_u32(&mut e, self.signature_length);
        e.option_tag(self.encryption.is_some());
        if let Some(enc) = &self.encryption {
            e.bytes(&enc.salt);
            e.u32(enc.iterations);
        }
        e.u32(self.compression as u32);
        e.bool(self.features.has_main);
        e.bool(self.features.has_auxiliary);
        e.bool(self.features.variable_blocks);
        e.option_tag(self.cdc_params.is_some());
        if let Some(c) = &self.cdc_params {
            e.u32(c.f);
            e.u32(c.min);
            e.u32(c.max);
        }
        if e.buf.len() > HEADER_SIZE {
            return Err(FormatError::HeaderTooLarge(e.buf.len()));
        }
        e.buf.resize(HEADER_SIZE, 0);
        Ok(e.buf)
    }
}

fn opt_u64(d: &mut Decoder<'_>, field: &'static str) -> Result<Option<u64>, FormatError> {
    Ok(if d.option_tag(field)? {
        Some(d.u64(field)?)
    } else {
        None
    })
}

fn opt_u32(d: &mut Decoder<'_>, field: &'static str) -> Result<Option<u32>, FormatError> {
    Ok(if d.option_tag(field)? {
        Some(d.u32(field)?)
    } else {
        None
    })
}

fn put_opt_u64(e: &mut Encoder, v: Option<u64>) {
    e.option_tag(v.is_some());
    if let Some(v) = v {
        e.u64(v);
    }
}

fn put_opt_u32(e: &mut Encoder, v: Option<u32>) {
    e.option_tag(v.is_some());
    if let Some(v) = v {
        e.u32(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The observed header of an LZ4 pack of a 3,727,417-byte file (hexz-format.md §3).
    const OBSERVED: [u8; 55] = [
        0x48, 0x45, 0x58, 0x5A, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x79, 0x96, 0x17,
        0x00, 0x00, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x00, 0x01, 0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00,
        0x00, 0x04, 0x00,
    ];

    #[test]
    fn decodes_the_observed_plain_pack_header() {
        let h = Header::decode(&OBSERVED).unwrap();
        assert_eq!(h.block_size, 65536);
        assert_eq!(h.index_offset, 0x0017_9679);
        assert!(h.parent_paths.is_empty());
        assert_eq!(h.compression, Compression::Lz4);
        assert_eq!(
            h.features,
            Features {
                has_main: true,
                has_auxiliary: false,
                variable_blocks: true
            }
        );
        assert_eq!(
            h.cdc_params,
            Some(CdcParams {
                f: 16,
                min: 16384,
                max: 262_144
            })
        );
    }

    #[test]
    fn encode_reproduces_the_observed_bytes_then_zero_padding() {
        let h = Header::decode(&OBSERVED).unwrap();
        let enc = h.encode().unwrap();
        assert_eq!(enc.len(), HEADER_SIZE);
        assert_eq!(&enc[..55], &OBSERVED[..]);
        assert!(enc[55..].iter().all(|&b| b == 0));
    }

    #[test]
    fn minimum_header_is_43_bytes() {
        let h = Header::new(Compression::Lz4, 65536);
        let enc = h.encode().unwrap();
        assert!(enc[43..].iter().all(|&b| b == 0));
        assert_eq!(Header::decode(&enc[..43]).unwrap(), h);
        assert!(matches!(
            Header::decode(&enc[..42]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn round_trips_parents_encryption_and_every_option() {
        let mut h = Header::new(Compression::Zstd, 4096);
        h.index_offset = 123_456;
        h.parent_paths = vec!["out/base.hxz".into(), "../b.hxz".into()];
        h.dictionary_offset = Some(4096);
        h.dictionary_length = Some(100);
        h.metadata_offset = Some(9);
        h.metadata_length = Some(10);
        h.signature_offset = Some(11);
        h.signature_length = Some(64);
        h.encryption = Some(EncryptionParams {
            salt: [7; 16],
            iterations: 600_000,
        });
        h.cdc_params = Some(CdcParams {
            f: 13,
            min: 2048,
            max: 65536,
        });
        assert_eq!(Header::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut b = OBSERVED;
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(FormatError::BadMagic(_))));
    }

    #[test]
    fn version_other_than_one_is_refused() {
        let mut b = OBSERVED;
        b[4] = 2;
        assert_eq!(Header::decode(&b), Err(FormatError::UnsupportedVersion(2)));
    }

    #[test]
    fn unknown_codec_is_refused() {
        let mut b = OBSERVED;
        b[0x23] = 2;
        assert_eq!(Header::decode(&b), Err(FormatError::UnknownCompression(2)));
    }

    #[test]
    fn bad_feature_bool_is_refused() {
        let mut b = OBSERVED;
        b[0x27] = 2;
        assert!(matches!(
            Header::decode(&b),
            Err(FormatError::BadBool { .. })
        ));
    }

    #[test]
    fn header_larger_than_4096_bytes_is_refused_on_encode() {
        let mut h = Header::new(Compression::Lz4, 65536);
        h.parent_paths = vec!["x".repeat(5000)];
        assert!(matches!(h.encode(), Err(FormatError::HeaderTooLarge(_))));
    }
}
