//! The client side of the NBD handshake, done exactly as nbd-client 3.24 does it before handing
//! a socket to the kernel (nbd.md §5, §6.6 step 3), for nbd-proxy mode: fixed newstyle, client
//! flags echoing what the server offers, `NBD_OPT_GO` with no information requests, and on
//! `NBD_REP_ERR_UNSUP` a fall-back to `NBD_OPT_EXPORT_NAME`. Never structured replies, meta
//! contexts or extended headers: the kernel understands simple replies only.

use std::io::{self, Read, Write};

use super::proto::*;

/// The export the server agreed to serve, as the kernel needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientExport {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_*`), for `NBD_SET_FLAGS`.
    pub flags: u16,
}

/// Why the client handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed or the server hung up.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not an NBD server, or a magic number out of place.
    #[error("not an NBD newstyle server: {0}")]
    Proto(#[from] ProtoError),
    /// The server speaks only oldstyle NBD (refused, as nbd-client does since 3.10).
    #[error("the server speaks the oldstyle protocol, which is not supported")]
    Oldstyle,
    /// An option reply for another option than the one sent (qemu and libnbd abort too).
    #[error("the server answered option {got} to option {sent}")]
    WrongOption { sent: u32, got: u32 },
    /// A reply payload larger than the protocol allows.
    #[error("option reply of {0} bytes is too long")]
    ReplyTooLong(u32),
    /// `NBD_INFO_EXPORT` of the wrong length, or an ACK without it.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    /// The server refused the export (error reply type and its message).
    #[error("the server refused export {export:?}: {message} (reply {reply_type:#x})")]
    Refused {
        export: String,
        reply_type: u32,
        message: String,
    },
}

/// Largest option reply payload accepted (the protocol's string limit plus headers).
const MAX_REPLY: u32 = 64 * 1024;

/// Negotiates `export` on a fresh connection. On success the stream is in the transmission
/// phase.
pub fn handshake<S: Read + Write>(s: &mut S, export: &str) -> Result<ClientExport, ClientError> {
    let mut g = [0u8; 16];
    s.read_exact(&mut g)?;
    let magic = u64::from_be_bytes(g[..8].try_into().unwrap_or_default());
    if magic != NBDMAGIC {
        return Err(ProtoError::BadMagic {
            expected: NBDMAGIC,
            found: magic,
        }
        .into());
    }
    if u64::from_be_bytes(g[8..16].try_into().unwrap_or_default()) != IHAVEOPT {
        return Err(ClientError::Oldstyle);
    }
    let mut sf = [0u8; 2];
    s.read_exact(&mut sf)?;
    let server_flags = u16::from_be_bytes(sf);
    let fixed = server_flags & NBD_FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = server_flags & NBD_FLAG_NO_ZEROES != 0;
    let mut client_flags = 0;
    if fixed {
        client_flags |= NBD_FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        client_flags |= NBD_FLAG_C_NO_ZEROES;
    }
    s.write_all(&client_flags.to_be_bytes())?;
    // Only fixed newstyle servers may be sent anything but EXPORT_NAME.
    if fixed {
        if let Some(e) = go(s, export)? {
            return Ok(e);
        }
    }
    export_name(s, export, no_zeroes)
}

fn send_option<S: Write>(s: &mut S, option: u32, data: &[u8]) -> io::Result<()> {
    let mut b = OptionHeader {
        option,
        length: wire_len(data.len()),
    }
    .encode()
    .to_vec();
    b.extend_from_slice(data);
    s.write_all(&b)
}

/// `NBD_OPT_GO` with no information requests; `None` if the server does not support GO.
fn go<S: Read + Write>(s: &mut S, export: &str) -> Result<Option<ClientExport>, ClientError> {
    send_option(s, NBD_OPT_GO, &encode_info_request(export, &[]))?;
    let mut found = None;
    loop {
        let mut hb = [0u8; OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut hb)?;
        let h = OptionReplyHeader::decode(&hb)?;
        if h.option != NBD_OPT_GO {
            return Err(ClientError::WrongOption {
                sent: NBD_OPT_GO,
                got: h.option,
            });
        }
        if h.length > MAX_REPLY {
            return Err(ClientError::ReplyTooLong(h.length));
        }
        let mut p = vec![0u8; h.length as usize];
        s.read_exact(&mut p)?;
        match h.reply_type {
            NBD_REP_ACK => {
                return found.map(Some).ok_or(ClientError::Malformed(
                    "NBD_REP_ACK to GO without NBD_INFO_EXPORT",
                ));
            }
            NBD_REP_INFO if p.len() >= 2 && p[..2] == NBD_INFO_EXPORT.to_be_bytes() => {
                if p.len() != 12 {
                    return Err(ClientError::Malformed("NBD_INFO_EXPORT is not 12 bytes"));
                }
                found = Some(ClientExport {
                    size: u64::from_be_bytes(p[2..10].try_into().unwrap_or_default()),
                    flags: u16::from_be_bytes([p[10], p[11]]),
                });
            }
            NBD_REP_INFO => {}
            NBD_REP_ERR_UNSUP => return Ok(None),
            t if t & NBD_REP_FLAG_ERROR != 0 => {
                return Err(ClientError::Refused {
                    export: export.to_string(),
                    reply_type: t,
                    message: String::from_utf8_lossy(&p).into_owned(),
                });
            }
            // Unknown non-error replies are ignored, as nbd-client does.
            _ => {}
        }
    }
}

/// `NBD_OPT_EXPORT_NAME`: size, flags, and 124 zero bytes unless NO_ZEROES was negotiated.
fn export_name<S: Read + Write>(
    s: &mut S,
    export: &str,
    no_zeroes: bool,
) -> Result<ClientExport, ClientError> {
    send_option(s, NBD_OPT_EXPORT_NAME, export.as_bytes())?;
    let mut b = [0u8; 10 + EXPORT_NAME_ZEROES];
    let n = if no_zeroes { 10 } else { b.len() };
    s.read_exact(&mut b[..n])?;
    Ok(ClientExport {
        size: u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
        flags: u16::from_be_bytes([b[8], b[9]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted server: reads come from `input`, writes are recorded.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn duplex(input: Vec<u8>) -> Duplex {
        Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }

    #[test]
    fn go_with_no_information_requests_like_nbd_client_3_24() {
        let mut server = greeting(0x0003).to_vec();
        server.extend(option_reply(
            NBD_OPT_GO,
            NBD_REP_INFO,
            &info_export(4096, 0x0103),
        ));
        server.extend(option_reply(NBD_OPT_GO, NBD_REP_ACK, &[]));
        let mut d = duplex(server);
        let e = handshake(&mut d, "").unwrap();
        assert_eq!(
            e,
            ClientExport {
                size: 4096,
                flags: 0x0103
            }
        );
        // Client flags 3, then GO("") with zero information requests.
        let mut want = vec![0, 0, 0, 3];
        want.extend(
            OptionHeader {
                option: NBD_OPT_GO,
                length: 6,
            }
            .encode(),
        );
        want.extend([0, 0, 0, 0, 0, 0]);
        assert_eq!(d.output, want);
    }

    #[test]
    fn err_unsup_on_go_falls_back_to_export_name() {
        let mut server = greeting(NBD_FLAG_FIXED_NEWSTYLE).to_vec();
        server.extend(option_error(NBD_OPT_GO, NBD_REP_ERR_UNSUP, "no"));
        server.extend(export_name_reply(1 << 20, 0x0003, false));
        let mut d = duplex(server);
        let e = handshake(&mut d, "vm").unwrap();
        assert_eq!(
            e,
            ClientExport {
                size: 1 << 20,
                flags: 0x0003
            }
        );
        // Without NO_ZEROES offered, the client does not set C_NO_ZEROES.
        assert_eq!(d.output[..4], [0, 0, 0, 1]);
        assert!(d.output.ends_with(b"\0\0\0\x01\0\0\0\x02vm"));
    }

    #[test]
    fn other_go_errors_are_fatal_with_the_server_message() {
        let mut server = greeting(0x0003).to_vec();
        server.extend(option_error(
            NBD_OPT_GO,
            NBD_REP_ERR_UNKNOWN,
            "no such export",
        ));
        let err = handshake(&mut duplex(server), "x").unwrap_err();
        assert!(err.to_string().contains("no such export"), "{err}");
    }

    #[test]
    fn non_fixed_newstyle_servers_get_export_name_only() {
        let mut server = greeting(0).to_vec();
        server.extend(export_name_reply(512, 0x0001, false));
        let mut d = duplex(server);
        assert_eq!(handshake(&mut d, "").unwrap().size, 512);
        assert_eq!(d.output[..4], [0, 0, 0, 0]);
        assert_eq!(d.output[12..16], NBD_OPT_EXPORT_NAME.to_be_bytes());
    }

    #[test]
    fn oldstyle_and_garbage_are_refused() {
        let mut old = NBDMAGIC.to_be_bytes().to_vec();
        old.extend(0x0000_4202_8186_1253_u64.to_be_bytes());
        old.extend([0u8; 2]);
        assert!(matches!(
            handshake(&mut duplex(old), ""),
            Err(ClientError::Oldstyle)
        ));
        assert!(matches!(
            handshake(&mut duplex(vec![0u8; 18]), ""),
            Err(ClientError::Proto(_))
        ));
    }

    #[test]
    fn a_reply_echoing_another_option_is_refused() {
        let mut server = greeting(0x0003).to_vec();
        server.extend(option_reply(NBD_OPT_INFO, NBD_REP_ACK, &[]));
        assert!(matches!(
            handshake(&mut duplex(server), ""),
            Err(ClientError::WrongOption { .. })
        ));
    }
}
