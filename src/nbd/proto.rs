//! NBD wire constants and pure codecs (nbd.md §1–§4): the greeting, option headers and option
//! data, option replies, requests, simple replies and structured reply chunks. Nothing here
//! does I/O; the handshake, transmission and client code read and write the bytes.
//!
//! Names follow the NBD protocol document (`doc/proto.md`), so they can be grepped there.

use std::fmt;

// ----- Magics (nbd.md §1) -----

/// First 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle greeting bytes 8–15, and the prefix of every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Prefix of every option reply (wire bytes `00 03 e8 89 04 55 65 a9`).
pub const NBD_OPTS_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of a simple reply.
pub const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const NBD_STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// ----- Handshake flags (nbd.md §2.1) -----

/// Server handshake flag: fixed newstyle.
pub const NBD_FLAG_FIXED_NEWSTYLE: u16 = 0x1;
/// Server handshake flag: the client may skip the 124 zero bytes after EXPORT_NAME.
pub const NBD_FLAG_NO_ZEROES: u16 = 0x2;
/// Client flag: fixed newstyle.
pub const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 0x1;
/// Client flag: no zero padding after EXPORT_NAME.
pub const NBD_FLAG_C_NO_ZEROES: u32 = 0x2;

// ----- Options (nbd.md §2.3) -----

pub const NBD_OPT_EXPORT_NAME: u32 = 1;
pub const NBD_OPT_ABORT: u32 = 2;
pub const NBD_OPT_LIST: u32 = 3;
pub const NBD_OPT_PEEK_EXPORT: u32 = 4;
pub const NBD_OPT_STARTTLS: u32 = 5;
pub const NBD_OPT_INFO: u32 = 6;
pub const NBD_OPT_GO: u32 = 7;
pub const NBD_OPT_STRUCTURED_REPLY: u32 = 8;
pub const NBD_OPT_LIST_META_CONTEXT: u32 = 9;
pub const NBD_OPT_SET_META_CONTEXT: u32 = 10;
pub const NBD_OPT_EXTENDED_HEADERS: u32 = 11;

// ----- Option reply types (nbd.md §2.4) -----

pub const NBD_REP_ACK: u32 = 1;
pub const NBD_REP_SERVER: u32 = 2;
pub const NBD_REP_INFO: u32 = 3;
pub const NBD_REP_META_CONTEXT: u32 = 4;
/// Bit set in every error reply type.
pub const NBD_REP_FLAG_ERROR: u32 = 0x8000_0000;
pub const NBD_REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const NBD_REP_ERR_POLICY: u32 = 0x8000_0002;
pub const NBD_REP_ERR_INVALID: u32 = 0x8000_0003;
pub const NBD_REP_ERR_PLATFORM: u32 = 0x8000_0004;
pub const NBD_REP_ERR_TLS_REQD: u32 = 0x8000_0005;
pub const NBD_REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const NBD_REP_ERR_SHUTDOWN: u32 = 0x8000_0007;
pub const NBD_REP_ERR_BLOCK_SIZE_REQD: u32 = 0x8000_0008;
pub const NBD_REP_ERR_TOO_BIG: u32 = 0x8000_0009;

// ----- Info types (nbd.md §2.4) -----

pub const NBD_INFO_EXPORT: u16 = 0;
pub const NBD_INFO_NAME: u16 = 1;
pub const NBD_INFO_DESCRIPTION: u16 = 2;
pub const NBD_INFO_BLOCK_SIZE: u16 = 3;

// ----- Transmission flags (nbd.md §3.3) -----

pub const NBD_FLAG_HAS_FLAGS: u16 = 0x0001;
pub const NBD_FLAG_READ_ONLY: u16 = 0x0002;
pub const NBD_FLAG_SEND_FLUSH: u16 = 0x0004;
pub const NBD_FLAG_SEND_FUA: u16 = 0x0008;
pub const NBD_FLAG_ROTATIONAL: u16 = 0x0010;
pub const NBD_FLAG_SEND_TRIM: u16 = 0x0020;
pub const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 0x0040;
pub const NBD_FLAG_SEND_DF: u16 = 0x0080;
pub const NBD_FLAG_CAN_MULTI_CONN: u16 = 0x0100;
pub const NBD_FLAG_SEND_RESIZE: u16 = 0x0200;
pub const NBD_FLAG_SEND_CACHE: u16 = 0x0400;
pub const NBD_FLAG_SEND_FAST_ZERO: u16 = 0x0800;

// ----- Commands and command flags (nbd.md §3.2) -----

pub const NBD_CMD_READ: u16 = 0;
pub const NBD_CMD_WRITE: u16 = 1;
pub const NBD_CMD_DISC: u16 = 2;
pub const NBD_CMD_FLUSH: u16 = 3;
pub const NBD_CMD_TRIM: u16 = 4;
pub const NBD_CMD_CACHE: u16 = 5;
pub const NBD_CMD_WRITE_ZEROES: u16 = 6;
pub const NBD_CMD_BLOCK_STATUS: u16 = 7;
pub const NBD_CMD_RESIZE: u16 = 8;

pub const NBD_CMD_FLAG_FUA: u16 = 0x01;
pub const NBD_CMD_FLAG_NO_HOLE: u16 = 0x02;
pub const NBD_CMD_FLAG_DF: u16 = 0x04;
pub const NBD_CMD_FLAG_REQ_ONE: u16 = 0x08;
pub const NBD_CMD_FLAG_FAST_ZERO: u16 = 0x10;

// ----- Structured replies (nbd.md §4) -----

pub const NBD_REPLY_FLAG_DONE: u16 = 0x1;
pub const NBD_REPLY_TYPE_NONE: u16 = 0;
pub const NBD_REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const NBD_REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Block status chunk. The nbd repository's `nbd.h` says 3; the protocol (and every client)
/// uses 5 (nbd.md §8 pitfall 11).
pub const NBD_REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const NBD_REPLY_TYPE_ERROR: u16 = 0x8001;
pub const NBD_REPLY_TYPE_ERROR_OFFSET: u16 = 0x8002;

/// `base:allocation` extent flag: the range is a hole (unallocated).
pub const NBD_STATE_HOLE: u32 = 0x1;
/// `base:allocation` extent flag: the range reads as zeros.
pub const NBD_STATE_ZERO: u32 = 0x2;

/// The one metadata context hexzd serves.
pub const BASE_ALLOCATION: &str = "base:allocation";

// ----- Errors (nbd.md §3.4) -----

pub const NBD_EPERM: u32 = 1;
pub const NBD_EIO: u32 = 5;
pub const NBD_ENOMEM: u32 = 12;
pub const NBD_EINVAL: u32 = 22;
pub const NBD_ENOSPC: u32 = 28;
pub const NBD_EOVERFLOW: u32 = 75;
pub const NBD_ENOTSUP: u32 = 95;
pub const NBD_ESHUTDOWN: u32 = 108;

// ----- Sizes -----

/// Bytes of the fixed newstyle greeting.
pub const GREETING_LEN: usize = 18;
/// Bytes of an option header (IHAVEOPT, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Zero bytes after the EXPORT_NAME reply unless `NBD_FLAG_C_NO_ZEROES`.
pub const EXPORT_NAME_ZEROES: usize = 124;
/// Largest option reply payload hexzd sends: below 4096 (nbd.md §8 pitfall 13: libnbd rejects
/// error strings over 4096 bytes, qemu longer LIST entries; nbd-client master desyncs).
pub const MAX_REPLY_PAYLOAD: usize = 4095;
/// Longest string (export name, context name, query) a client may send (nbd.md §1).
pub const MAX_STRING: usize = 4096;

/// A malformed message. Codecs report these; the caller decides between an error reply and a
/// disconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A magic number other than the one expected.
    #[error("bad magic {found:#x} (expected {expected:#x})")]
    BadMagic { expected: u64, found: u64 },
    /// Lengths inside option data that do not add up.
    #[error("malformed option data: {0}")]
    Malformed(&'static str),
    /// A string longer than the protocol allows.
    #[error("string of {0} bytes exceeds the 4096-byte limit")]
    StringTooLong(usize),
    /// A string that is not UTF-8.
    #[error("string is not valid UTF-8")]
    NotUtf8,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Length of a payload as the u32 the wire wants. Payloads here are bounded far below 4 GiB
/// (option replies < 4 KiB, data ≤ 32 MiB), so saturation never happens in practice.
pub fn wire_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ----- Handshake -----

/// The fixed newstyle greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn greeting(flags: u16) -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..18].copy_from_slice(&flags.to_be_bytes());
    g
}

/// An option header from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// `NBD_OPT_*`.
    pub option: u32,
    /// Bytes of option data that follow.
    pub length: u32,
}

impl OptionHeader {
    /// Decodes a 16-byte option header, checking `IHAVEOPT`.
    pub fn decode(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
        let magic = be_u64(&b[0..8]);
        if magic != IHAVEOPT {
            return Err(ProtoError::BadMagic {
                expected: IHAVEOPT,
                found: magic,
            });
        }
        Ok(OptionHeader {
            option: be_u32(&b[8..12]),
            length: be_u32(&b[12..16]),
        })
    }

    /// Encodes the header (client side).
    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut b = [0u8; OPTION_HEADER_LEN];
        b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b
    }
}

/// An option reply: header and payload in one buffer. The payload must already be below
/// [`MAX_REPLY_PAYLOAD`]; builders here guarantee it.
pub fn option_reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + payload.len());
    v.extend_from_slice(&NBD_OPTS_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply_type.to_be_bytes());
    v.extend_from_slice(&wire_len(payload.len()).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// An error reply with a message, truncated to keep the payload under 4 KiB.
pub fn option_error(option: u32, reply_type: u32, message: &str) -> Vec<u8> {
    option_reply(
        option,
        reply_type,
        truncate_utf8(message, MAX_REPLY_PAYLOAD).as_bytes(),
    )
}

/// A decoded option reply header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// Echo of the option.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply_type: u32,
    /// Payload bytes that follow.
    pub length: u32,
}

impl OptionReplyHeader {
    /// Decodes a 20-byte option reply header, checking the magic.
    pub fn decode(b: &[u8; OPTION_REPLY_HEADER_LEN]) -> Result<Self, ProtoError> {
        let magic = be_u64(&b[0..8]);
        if magic != NBD_OPTS_REPLY_MAGIC {
            return Err(ProtoError::BadMagic {
                expected: NBD_OPTS_REPLY_MAGIC,
                found: magic,
            });
        }
        Ok(OptionReplyHeader {
            option: be_u32(&b[8..12]),
            reply_type: be_u32(&b[12..16]),
            length: be_u32(&b[16..20]),
        })
    }
}

/// `NBD_REP_SERVER` payload: name length, name, description. The description is truncated so
/// the payload stays under 4 KiB; a name that alone would not fit yields `None`.
pub fn rep_server(name: &str, description: &str) -> Option<Vec<u8>> {
    if 4 + name.len() > MAX_REPLY_PAYLOAD {
        return None;
    }
    let room = MAX_REPLY_PAYLOAD - 4 - name.len();
    let description = truncate_utf8(description, room);
    let mut v = Vec::with_capacity(4 + name.len() + description.len());
    v.extend_from_slice(&wire_len(name.len()).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(description.as_bytes());
    Some(v)
}

/// `NBD_INFO_EXPORT` payload (length 12): type, size, transmission flags.
pub fn info_export(size: u64, flags: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    b[2..10].copy_from_slice(&size.to_be_bytes());
    b[10..12].copy_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION` payload: type, then text (truncated below 4 KiB).
pub fn info_text(info: u16, text: &str) -> Vec<u8> {
    let text = truncate_utf8(text, MAX_REPLY_PAYLOAD - 2);
    let mut v = Vec::with_capacity(2 + text.len());
    v.extend_from_slice(&info.to_be_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

/// `NBD_INFO_BLOCK_SIZE` payload (length 14): type, minimum, preferred, maximum.
pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> [u8; 14] {
    let mut b = [0u8; 14];
    b[0..2].copy_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
    b[2..6].copy_from_slice(&minimum.to_be_bytes());
    b[6..10].copy_from_slice(&preferred.to_be_bytes());
    b[10..14].copy_from_slice(&maximum.to_be_bytes());
    b
}

/// `NBD_REP_META_CONTEXT` payload: context id, name.
pub fn rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + name.len());
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v
}

/// The reply to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes unless the
/// client set `NBD_FLAG_C_NO_ZEROES`. No option-reply framing.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(10 + EXPORT_NAME_ZEROES);
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        v.resize(10 + EXPORT_NAME_ZEROES, 0);
    }
    v
}

/// Reads a u32-length-prefixed string at `*pos`, advancing it.
fn take_string<'a>(data: &'a [u8], pos: &mut usize) -> Result<&'a str, ProtoError> {
    let len = data
        .get(*pos..*pos + 4)
        .map(be_u32)
        .ok_or(ProtoError::Malformed("truncated string length"))? as usize;
    *pos += 4;
    if len > MAX_STRING {
        return Err(ProtoError::StringTooLong(len));
    }
    let bytes = data
        .get(*pos..*pos + len)
        .ok_or(ProtoError::Malformed("string runs past the option data"))?;
    *pos += len;
    std::str::from_utf8(bytes).map_err(|_| ProtoError::NotUtf8)
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name.
    pub name: &'a str,
    /// Requested `NBD_INFO_*` types, in order.
    pub infos: Vec<u16>,
}

/// Parses INFO/GO data: u32 name length, name, u16 count, count × u16. The lengths must add up
/// to exactly the option length.
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest<'_>, ProtoError> {
    let mut pos = 0;
    let name = take_string(data, &mut pos)?;
    let n = data
        .get(pos..pos + 2)
        .map(be_u16)
        .ok_or(ProtoError::Malformed("missing information request count"))? as usize;
    pos += 2;
    if data.len() - pos != n * 2 {
        return Err(ProtoError::Malformed(
            "information request count does not match the option length",
        ));
    }
    let infos = data[pos..].chunks_exact(2).map(be_u16).collect();
    Ok(InfoRequest { name, infos })
}

/// Encodes INFO/GO data (client side).
pub fn encode_info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + name.len() + 2 * infos.len());
    v.extend_from_slice(&wire_len(name.len()).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&u16::try_from(infos.len()).unwrap_or(u16::MAX).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest<'a> {
    /// Export name.
    pub name: &'a str,
    /// Queries (context names or `namespace:` prefixes).
    pub queries: Vec<&'a str>,
}

/// Parses meta-context data: u32 name length, name, u32 count, count × (u32 length, query).
pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest<'_>, ProtoError> {
    let mut pos = 0;
    let name = take_string(data, &mut pos)?;
    let n = data
        .get(pos..pos + 4)
        .map(be_u32)
        .ok_or(ProtoError::Malformed("missing query count"))? as usize;
    pos += 4;
    // Each query takes at least 4 bytes: refuse counts the data cannot hold before allocating.
    if n > (data.len() - pos) / 4 {
        return Err(ProtoError::Malformed(
            "query count does not match the option length",
        ));
    }
    let mut queries = Vec::with_capacity(n);
    for _ in 0..n {
        queries.push(take_string(data, &mut pos)?);
    }
    if pos != data.len() {
        return Err(ProtoError::Malformed("trailing bytes after the queries"));
    }
    Ok(MetaContextRequest { name, queries })
}

/// Encodes meta-context data (client side).
pub fn encode_meta_context_request(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wire_len(name.len()).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&wire_len(queries.len()).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&wire_len(q.len()).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

// ----- Transmission -----

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

/// The name of an option, for logs.
#[derive(Debug, Clone, Copy)]
pub struct OptName(pub u32);

impl fmt::Display for OptName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            NBD_OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
            NBD_OPT_ABORT => "NBD_OPT_ABORT",
            NBD_OPT_LIST => "NBD_OPT_LIST",
            NBD_OPT_PEEK_EXPORT => "NBD_OPT_PEEK_EXPORT",
            NBD_OPT_STARTTLS => "NBD_OPT_STARTTLS",
            NBD_OPT_INFO => "NBD_OPT_INFO",
            NBD_OPT_GO => "NBD_OPT_GO",
            NBD_OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
            NBD_OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
            NBD_OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
            NBD_OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
            other => return write!(f, "option {other}"),
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests;
