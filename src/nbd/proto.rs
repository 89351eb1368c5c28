//! NBD wire constants and pure codecs (nbd.md §1–§4): the greeting, option headers and option
//! data, option replies, requests, simple replies and structured reply chunks. Nothing here
//! does I/O; the handshake, transmission and client code read and write the bytes.
//!
//! Names follow the NBD protocol document (`doc/proto.md`), so they can be grepped there.
//!
//! Files by role: this file holds the constants, sizes, [`ProtoError`] and the byte helpers the
//! codecs share; `handshake` the greeting and option codecs (§2); `transmission` the request and
//! reply codecs (§3–§4). Their items are re-exported here, so callers name them `proto::…`.

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

mod handshake;
mod transmission;

pub use handshake::{
    InfoRequest, MetaContextRequest, OptName, OptionHeader, OptionReplyHeader, encode_info_request,
    encode_meta_context_request, export_name_reply, greeting, info_block_size, info_export,
    info_text, option_error, option_reply, parse_info_request, parse_meta_context_request,
    rep_meta_context, rep_server,
};
pub use transmission::{
    ReplyHeader, Request, WireExtent, block_status_chunk, chunk_header, error_chunk, none_chunk,
    offset_data_header, offset_hole_chunk, simple_reply,
};

#[cfg(test)]
mod tests;
