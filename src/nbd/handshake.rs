//! The server side of the fixed newstyle handshake (nbd.md §2): greeting, client flags, then the
//! option haggling loop until EXPORT_NAME, GO or ABORT. Works over any `Read` and `Write`; the
//! caller owns timeouts.
//!
//! Every option is answered (unknown ones with `NBD_REP_ERR_UNSUP`); the connection is dropped
//! only for protocol violations the client cannot recover from: bad client flags, a bad option
//! magic, option data over [`MAX_OPTION_DATA`], more than [`MAX_OPTIONS`] options, and an
//! EXPORT_NAME for an export that does not exist, or before TLS when TLS is required (that
//! option has no error reply).
//!
//! TLS (the NBD protocol's "TLS support", nbdkit's `--tls` modes as [`TlsMode`]):
//! `NBD_OPT_STARTTLS` is acknowledged and the handshake ends with [`Outcome::StartTls`]; the
//! caller runs the TLS handshake and continues the option haggling over TLS with
//! [`resume_after_tls`], with everything negotiated before TLS forgotten (structured replies,
//! meta contexts) as nbdkit does. With [`TlsMode::Require`], every option before TLS but
//! STARTTLS and ABORT is answered `NBD_REP_ERR_TLS_REQD`, so LIST and INFO reveal nothing.
//! Each reply is flushed before the next option is read (a TLS writer queues records).

use std::io::{self, Read, Write};

mod tls;

use super::proto::*;
use crate::format::Stream;
use crate::serving::names::{self, Export};
use crate::serving::{Catalog, NamedSnapshot};
use tls::Tls;
pub use tls::{TlsMode, Upgrade};

/// Largest option data accepted; beyond it the client is disconnected without reading the data
/// (nbd.md §2.2). Real options carry at most a 4 KiB name and a few queries.
pub const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Most options accepted on one connection (nbdinfo --list sends one INFO per export, so this
/// leaves room for catalogs of a few hundred snapshots).
pub const MAX_OPTIONS: usize = 4096;

/// Block size constraints advertised in `NBD_INFO_BLOCK_SIZE`: minimum 1 (any alignment),
/// preferred 4096, maximum 32 MiB (nbd.md §2.4, §3.5).
pub const BLOCK_SIZE_MIN: u32 = 1;
/// Preferred block size.
pub const BLOCK_SIZE_PREFERRED: u32 = 4096;
/// Largest READ payload served; longer requests get EINVAL.
pub const BLOCK_SIZE_MAX: u32 = 32 * 1024 * 1024;

/// Context id of `base:allocation` after SET_META_CONTEXT.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Handshake flags hexzd offers: what every real server sends (nbd.md §2.1).
pub const SERVER_HANDSHAKE_FLAGS: u16 = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
const KNOWN_CLIENT_FLAGS: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

/// Why a handshake ended without an export.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or the client hung up (EOF included).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Client flags with unknown bits, or without fixed newstyle.
    #[error("client flags {0:#x} are not acceptable (fixed newstyle only, no unknown bits)")]
    ClientFlags(u32),
    /// An option header without `IHAVEOPT`.
    #[error("option header: {0}")]
    Proto(#[from] ProtoError),
    /// Option data larger than [`MAX_OPTION_DATA`].
    #[error("{option} carries {length} bytes of data (limit {MAX_OPTION_DATA})")]
    OptionTooLong { option: String, length: u32 },
    /// More than [`MAX_OPTIONS`] options.
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    /// NBD_OPT_EXPORT_NAME for a name not served (the protocol allows no error reply).
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    /// NBD_OPT_EXPORT_NAME before TLS on a server that requires TLS (no error reply exists).
    #[error("NBD_OPT_EXPORT_NAME without TLS, which this server requires")]
    TlsRequired,
}

impl HandshakeError {
    /// True when the client simply went away (logged at debug level).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, HandshakeError::Io(e) if crate::serving::is_disconnect(e))
    }
}

/// The export the client chose and what was negotiated on the way.
#[derive(Debug, Clone)]
pub struct Session {
    /// The export name the client asked for.
    pub export_name: String,
    /// The snapshot behind it.
    pub snapshot: NamedSnapshot,
    /// Which stream of the snapshot.
    pub stream: Stream,
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Structured replies negotiated.
    pub structured: bool,
    /// Context id of `base:allocation`, when selected for this export.
    pub base_allocation: Option<u32>,
}

/// How the handshake ended.
#[derive(Debug)]
pub enum Outcome {
    /// An export was chosen; transmission follows on the same stream.
    Transmission(Box<Session>),
    /// The client sent NBD_OPT_ABORT, which was acknowledged.
    Aborted,
    /// The client sent NBD_OPT_STARTTLS, which was acknowledged: run the TLS handshake, then
    /// [`resume_after_tls`] over it.
    StartTls(Upgrade),
}

/// Transmission flags for an export (nbd.md §3.3): read-only, multi-connection safe (the data
/// never changes), CACHE and FLUSH (a no-op) understood; DF only with structured replies.
pub fn transmission_flags(structured: bool) -> u16 {
    let mut f = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_READ_ONLY
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_CAN_MULTI_CONN
        | NBD_FLAG_SEND_CACHE;
    if structured {
        f |= NBD_FLAG_SEND_DF;
    }
    f
}

/// Negotiation state between options.
struct State<'c> {
    catalog: &'c Catalog,
    tls: Tls,
    no_zeroes: bool,
    structured: bool,
    /// The export (snapshot name, stream) `base:allocation` was selected for.
    meta: Option<(String, Stream)>,
    options: usize,
    data: Vec<u8>,
}

/// Runs the handshake without TLS: greeting, client flags, options. Returns the chosen
/// export, or `Aborted`, or an error after which the connection must be closed.
pub fn negotiate<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    catalog: &Catalog,
) -> Result<Outcome, HandshakeError> {
    negotiate_tls(r, w, catalog, TlsMode::Off)
}

/// Runs the handshake with STARTTLS handled per `mode`: as [`negotiate`], and
/// [`Outcome::StartTls`] when the client asks for TLS and `mode` allows it.
pub fn negotiate_tls<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    catalog: &Catalog,
    mode: TlsMode,
) -> Result<Outcome, HandshakeError> {
    w.write_all(&greeting(SERVER_HANDSHAKE_FLAGS))?;
    w.flush()?;
    let mut cf = [0u8; 4];
    r.read_exact(&mut cf)?;
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & !KNOWN_CLIENT_FLAGS != 0 || client_flags & NBD_FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::ClientFlags(client_flags));
    }
    options(
        r,
        w,
        State {
            catalog,
            tls: Tls::Plain(mode),
            no_zeroes: client_flags & NBD_FLAG_C_NO_ZEROES != 0,
            structured: false,
            meta: None,
            options: 0,
            data: Vec::new(),
        },
    )
}

/// Continues the option haggling over TLS after [`Outcome::StartTls`] (`r` and `w` are the
/// TLS halves), afresh: nothing negotiated before TLS holds (nbdkit does the same).
pub fn resume_after_tls<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    catalog: &Catalog,
    upgrade: Upgrade,
) -> Result<Outcome, HandshakeError> {
    options(
        r,
        w,
        State {
            catalog,
            tls: Tls::Active,
            no_zeroes: upgrade.no_zeroes,
            structured: false,
            meta: None,
            options: upgrade.options,
            data: Vec::new(),
        },
    )
}

/// The option loop, until an option ends the handshake. Every reply is flushed before the
/// next option is read.
fn options<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    mut st: State<'_>,
) -> Result<Outcome, HandshakeError> {
    loop {
        w.flush()?;
        let mut hb = [0u8; OPTION_HEADER_LEN];
        r.read_exact(&mut hb)?;
        let h = OptionHeader::decode(&hb)?;
        st.options += 1;
        if st.options > MAX_OPTIONS {
            return Err(HandshakeError::TooManyOptions);
        }
        if h.length > MAX_OPTION_DATA {
            return Err(HandshakeError::OptionTooLong {
                option: OptName(h.option).to_string(),
                length: h.length,
            });
        }
        st.data.clear();
        st.data.resize(h.length as usize, 0);
        r.read_exact(&mut st.data)?;
        log::trace!("nbd: {} with {} bytes", OptName(h.option), h.length);
        if let Some(outcome) = st.option(h.option, w)? {
            w.flush()?;
            return Ok(outcome);
        }
    }
}

impl State<'_> {
    /// Answers one option; `Some` ends the handshake.
    fn option<W: Write>(
        &mut self,
        option: u32,
        w: &mut W,
    ) -> Result<Option<Outcome>, HandshakeError> {
        if self.refused_before_tls(option, w)? {
            return Ok(None);
        }
        match option {
            NBD_OPT_EXPORT_NAME => self.export_name(w).map(Some),
            NBD_OPT_ABORT => {
                // Data, if any, is ignored (nbd.md §2.3). Clients tolerate the close that follows
                // even if they never read the ACK.
                w.write_all(&option_reply(option, NBD_REP_ACK, &[]))?;
                Ok(Some(Outcome::Aborted))
            }
            NBD_OPT_LIST => {
                if self.data.is_empty() {
                    self.list(w)?;
                } else {
                    invalid(w, option, "NBD_OPT_LIST takes no data")?;
                }
                Ok(None)
            }
            NBD_OPT_STARTTLS => self.starttls(w),
            NBD_OPT_INFO | NBD_OPT_GO => self.info_or_go(option, w),
            NBD_OPT_STRUCTURED_REPLY => {
                if self.data.is_empty() {
                    self.structured = true;
                    w.write_all(&option_reply(option, NBD_REP_ACK, &[]))?;
                } else {
                    invalid(w, option, "NBD_OPT_STRUCTURED_REPLY takes no data")?;
                }
                Ok(None)
            }
            NBD_OPT_LIST_META_CONTEXT | NBD_OPT_SET_META_CONTEXT => {
                self.meta_context(option, w)?;
                Ok(None)
            }
            _ => {
                // PEEK_EXPORT (withdrawn), EXTENDED_HEADERS (draft) and anything unknown: the data
                // has been read and discarded; the handshake goes on (nbd.md §8 pitfall 1).
                w.write_all(&option_error(
                    option,
                    NBD_REP_ERR_UNSUP,
                    &format!("{} is not supported", OptName(option)),
                ))?;
                Ok(None)
            }
        }
    }

    fn export_name<W: Write>(&mut self, w: &mut W) -> Result<Outcome, HandshakeError> {
        let name = String::from_utf8_lossy(&self.data).into_owned();
        let Some((snap, stream)) = names::resolve_export(self.catalog, &name) else {
            return Err(HandshakeError::UnknownExport(name));
        };
        let session = self.session(name, snap, stream);
        w.write_all(&export_name_reply(
            session.size,
            session.flags,
            self.no_zeroes,
        ))?;
        Ok(Outcome::Transmission(Box::new(session)))
    }

    fn session(&self, export_name: String, snap: &NamedSnapshot, stream: Stream) -> Session {
        let base_allocation = match &self.meta {
            Some((n, s)) if *n == snap.name && *s == stream && self.structured => {
                Some(BASE_ALLOCATION_ID)
            }
            _ => None,
        };
        Session {
            export_name,
            snapshot: snap.clone(),
            stream,
            size: snap.snapshot.size(stream),
            flags: transmission_flags(self.structured),
            structured: self.structured,
            base_allocation,
        }
    }

    fn list<W: Write>(&self, w: &mut W) -> io::Result<()> {
        for Export {
            name, description, ..
        } in names::exports(self.catalog)
        {
            if let Some(payload) = rep_server(&name, &description) {
                w.write_all(&option_reply(NBD_OPT_LIST, NBD_REP_SERVER, &payload))?;
            }
        }
        w.write_all(&option_reply(NBD_OPT_LIST, NBD_REP_ACK, &[]))
    }

    fn info_or_go<W: Write>(
        &mut self,
        option: u32,
        w: &mut W,
    ) -> Result<Option<Outcome>, HandshakeError> {
        let data = std::mem::take(&mut self.data);
        let result = self.info_or_go_parsed(option, &data, w);
        self.data = data;
        result
    }

    fn info_or_go_parsed<W: Write>(
        &mut self,
        option: u32,
        data: &[u8],
        w: &mut W,
    ) -> Result<Option<Outcome>, HandshakeError> {
        let req = match parse_info_request(data) {
            Ok(r) => r,
            Err(e) => {
                invalid(w, option, &format!("{}: {e}", OptName(option)))?;
                return Ok(None);
            }
        };
        let Some((snap, stream)) = names::resolve_export(self.catalog, req.name) else {
            w.write_all(&option_error(
                option,
                NBD_REP_ERR_UNKNOWN,
                &format!(
                    "export {:?} is not served here (NBD_OPT_LIST shows the exports)",
                    truncate_utf8(req.name, 256)
                ),
            ))?;
            return Ok(None);
        };
        let session = self.session(req.name.to_string(), snap, stream);
        // NBD_INFO_EXPORT first and always; the rest only when asked, each at most once.
        let reply = |payload: &[u8]| option_reply(option, NBD_REP_INFO, payload);
        w.write_all(&reply(&info_export(session.size, session.flags)))?;
        let mut sent = [false; 4];
        for &info in &req.infos {
            let slot = usize::from(info);
            if slot >= sent.len() || sent[slot] {
                continue;
            }
            sent[slot] = true;
            match info {
                NBD_INFO_NAME => {
                    w.write_all(&reply(&info_text(
                        info,
                        &names::canonical_export(snap, stream),
                    )))?;
                }
                NBD_INFO_DESCRIPTION => {
                    w.write_all(&reply(&info_text(
                        info,
                        &names::describe_export(snap, stream),
                    )))?;
                }
                NBD_INFO_BLOCK_SIZE => {
                    w.write_all(&reply(&info_block_size(
                        BLOCK_SIZE_MIN,
                        BLOCK_SIZE_PREFERRED,
                        BLOCK_SIZE_MAX,
                    )))?;
                }
                _ => {}
            }
        }
        w.write_all(&option_reply(option, NBD_REP_ACK, &[]))?;
        if option == NBD_OPT_GO {
            return Ok(Some(Outcome::Transmission(Box::new(session))));
        }
        Ok(None)
    }

    fn meta_context<W: Write>(&mut self, option: u32, w: &mut W) -> io::Result<()> {
        let set = option == NBD_OPT_SET_META_CONTEXT;
        if set {
            // SET replaces the previous selection, even when it fails.
            self.meta = None;
        }
        let req = match parse_meta_context_request(&self.data) {
            Ok(r) => r,
            Err(e) => return invalid(w, option, &format!("{}: {e}", OptName(option))),
        };
        if set && !self.structured {
            return invalid(
                w,
                option,
                "NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first",
            );
        }
        let Some((snap, stream)) = names::resolve_export(self.catalog, req.name) else {
            return w.write_all(&option_error(
                option,
                NBD_REP_ERR_UNKNOWN,
                &format!(
                    "export {:?} is not served here",
                    truncate_utf8(req.name, 256)
                ),
            ));
        };
        // LIST with no queries lists everything; "base:" lists the base namespace under LIST
        // and is ignored under SET. Unknown namespaces and leaves are ignored, not errors.
        let selected = req
            .queries
            .iter()
            .any(|q| *q == BASE_ALLOCATION || (!set && *q == "base:"))
            || (!set && req.queries.is_empty());
        if selected {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            w.write_all(&option_reply(
                option,
                NBD_REP_META_CONTEXT,
                &rep_meta_context(id, BASE_ALLOCATION),
            ))?;
            if set {
                self.meta = Some((snap.name.clone(), stream));
            }
        }
        w.write_all(&option_reply(option, NBD_REP_ACK, &[]))
    }
}

/// Sends `NBD_REP_ERR_INVALID` with a message.
fn invalid<W: Write>(w: &mut W, option: u32, message: &str) -> io::Result<()> {
    w.write_all(&option_error(option, NBD_REP_ERR_INVALID, message))
}

#[cfg(test)]
mod tests;
