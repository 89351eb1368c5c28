//! Handshake codecs (nbd.md §2): the greeting, option headers, option replies and their
//! payloads, and the data of `NBD_OPT_INFO`/`GO` and the meta-context options, each with its
//! client-side counterpart. Pure functions over bytes; `nbd::handshake` and `nbd::client` do
//! the I/O.

use std::fmt;

use super::{
    EXPORT_NAME_ZEROES, GREETING_LEN, IHAVEOPT, MAX_REPLY_PAYLOAD, MAX_STRING, NBD_INFO_BLOCK_SIZE,
    NBD_INFO_EXPORT, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_EXTENDED_HEADERS, NBD_OPT_GO,
    NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT, NBD_OPT_PEEK_EXPORT,
    NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_OPTS_REPLY_MAGIC,
    NBDMAGIC, OPTION_HEADER_LEN, OPTION_REPLY_HEADER_LEN, ProtoError, be_u16, be_u32, be_u64,
    truncate_utf8, wire_len,
};

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
