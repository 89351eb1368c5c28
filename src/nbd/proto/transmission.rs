//! Transmission codecs (nbd.md §3–§4): request headers, simple replies and structured reply
//! chunks, each with its client-side counterpart. Pure functions over bytes;
//! `nbd::transmission`, `nbd::reply` and `nbd::client` do the I/O.

use super::{
    CHUNK_HEADER_LEN, MAX_REPLY_PAYLOAD, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS,
    NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA,
    NBD_REPLY_TYPE_OFFSET_HOLE, NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC,
    NBD_STRUCTURED_REPLY_MAGIC, ProtoError, REQUEST_LEN, SIMPLE_REPLY_LEN, be_u16, be_u32, be_u64,
    truncate_utf8, wire_len,
};

/// A request header (nbd.md §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `NBD_CMD_FLAG_*`.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub command: u16,
    /// Opaque, echoed in the reply.
    pub cookie: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte count (WRITE: payload bytes that follow).
    pub length: u32,
}

impl Request {
    /// Decodes a 28-byte request header, checking the magic.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
        let magic = be_u32(&b[0..4]);
        if magic != NBD_REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                expected: u64::from(NBD_REQUEST_MAGIC),
                found: u64::from(magic),
            });
        }
        Ok(Request {
            flags: be_u16(&b[4..6]),
            command: be_u16(&b[6..8]),
            cookie: be_u64(&b[8..16]),
            offset: be_u64(&b[16..24]),
            length: be_u32(&b[24..28]),
        })
    }

    /// Encodes the header (client side).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// A simple reply header: magic, error, cookie.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// A structured chunk header: magic, flags, type, cookie, payload length.
pub fn chunk_header(flags: u16, chunk_type: u16, cookie: u64, length: u32) -> [u8; 20] {
    let mut b = [0u8; CHUNK_HEADER_LEN];
    b[0..4].copy_from_slice(&NBD_STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..20].copy_from_slice(&length.to_be_bytes());
    b
}

/// An `NBD_REPLY_TYPE_OFFSET_DATA` chunk header plus its 8-byte offset; `data_len` bytes of
/// data follow.
pub fn offset_data_header(flags: u16, cookie: u64, offset: u64, data_len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..20].copy_from_slice(&chunk_header(
        flags,
        NBD_REPLY_TYPE_OFFSET_DATA,
        cookie,
        data_len.saturating_add(8),
    ));
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b
}

/// A complete `NBD_REPLY_TYPE_OFFSET_HOLE` chunk.
pub fn offset_hole_chunk(flags: u16, cookie: u64, offset: u64, size: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..20].copy_from_slice(&chunk_header(flags, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 12));
    b[20..28].copy_from_slice(&offset.to_be_bytes());
    b[28..32].copy_from_slice(&size.to_be_bytes());
    b
}

/// A complete `NBD_REPLY_TYPE_NONE` chunk with DONE (a successful zero-length READ).
pub fn none_chunk(cookie: u64) -> [u8; 20] {
    chunk_header(NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0)
}

/// A complete `NBD_REPLY_TYPE_ERROR` chunk with DONE: error, message length, message
/// (truncated to keep the payload under 4 KiB).
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = truncate_utf8(message, MAX_REPLY_PAYLOAD - 6);
    let mut v = Vec::with_capacity(CHUNK_HEADER_LEN + 6 + message.len());
    v.extend_from_slice(&chunk_header(
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_ERROR,
        cookie,
        wire_len(6 + message.len()),
    ));
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&u16::try_from(message.len()).unwrap_or(0).to_be_bytes());
    v.extend_from_slice(message.as_bytes());
    v
}

/// One `base:allocation` extent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireExtent {
    /// Length in bytes (never 0).
    pub length: u32,
    /// `NBD_STATE_*`.
    pub flags: u32,
}

/// A complete `NBD_REPLY_TYPE_BLOCK_STATUS` chunk with DONE: context id, then the extents.
pub fn block_status_chunk(cookie: u64, context_id: u32, extents: &[WireExtent]) -> Vec<u8> {
    let payload = 4 + 8 * extents.len();
    let mut v = Vec::with_capacity(CHUNK_HEADER_LEN + payload);
    v.extend_from_slice(&chunk_header(
        NBD_REPLY_FLAG_DONE,
        NBD_REPLY_TYPE_BLOCK_STATUS,
        cookie,
        wire_len(payload),
    ));
    v.extend_from_slice(&context_id.to_be_bytes());
    for e in extents {
        v.extend_from_slice(&e.length.to_be_bytes());
        v.extend_from_slice(&e.flags.to_be_bytes());
    }
    v
}

/// A decoded reply header (client side): the first 4 bytes tell the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHeader {
    /// Simple reply: error, cookie.
    Simple { error: u32, cookie: u64 },
    /// Structured chunk: flags, type, cookie, payload length.
    Chunk {
        flags: u16,
        chunk_type: u16,
        cookie: u64,
        length: u32,
    },
}

impl ReplyHeader {
    /// Bytes of the header whose magic is in `b[0..4]`.
    pub fn header_len(b: &[u8; 4]) -> Result<usize, ProtoError> {
        match be_u32(b) {
            NBD_SIMPLE_REPLY_MAGIC => Ok(SIMPLE_REPLY_LEN),
            NBD_STRUCTURED_REPLY_MAGIC => Ok(CHUNK_HEADER_LEN),
            other => Err(ProtoError::BadMagic {
                expected: u64::from(NBD_SIMPLE_REPLY_MAGIC),
                found: u64::from(other),
            }),
        }
    }

    /// Decodes a simple (16-byte) or structured (20-byte) reply header.
    pub fn decode(b: &[u8]) -> Result<ReplyHeader, ProtoError> {
        let magic: [u8; 4] = b
            .get(0..4)
            .and_then(|m| m.try_into().ok())
            .ok_or(ProtoError::Malformed("short reply header"))?;
        let need = ReplyHeader::header_len(&magic)?;
        if b.len() < need {
            return Err(ProtoError::Malformed("short reply header"));
        }
        Ok(if need == SIMPLE_REPLY_LEN {
            ReplyHeader::Simple {
                error: be_u32(&b[4..8]),
                cookie: be_u64(&b[8..16]),
            }
        } else {
            ReplyHeader::Chunk {
                flags: be_u16(&b[4..6]),
                chunk_type: be_u16(&b[6..8]),
                cookie: be_u64(&b[8..16]),
                length: be_u32(&b[16..20]),
            }
        })
    }
}
