//! NBD over TLS in the handshake (the NBD protocol's "TLS support" section): the STARTTLS
//! policy ([`TlsMode`], nbdkit's `--tls` modes), the answer to `NBD_OPT_STARTTLS`, and the
//! refusals of `require` before TLS.

use std::io::Write;

use super::{HandshakeError, Outcome, State, invalid};
use crate::nbd::proto::*;

/// When `NBD_OPT_STARTTLS` is accepted (nbdkit's `--tls=off|on|require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// STARTTLS is refused with `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// STARTTLS is accepted; clients may also go on in plaintext.
    On,
    /// Only STARTTLS and ABORT are accepted before TLS.
    Require,
}

impl TlsMode {
    /// The config spelling: `off`, `on`, `require`.
    pub fn parse(s: &str) -> Option<TlsMode> {
        match s {
            "off" => Some(TlsMode::Off),
            "on" => Some(TlsMode::On),
            "require" => Some(TlsMode::Require),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::On => "on",
            TlsMode::Require => "require",
        }
    }
}

/// What carries over the TLS upgrade: the client's flags and the option count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    pub(super) no_zeroes: bool,
    pub(super) options: usize,
}

/// Where the connection stands with TLS during option haggling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    /// Plaintext, under this mode.
    Plain(TlsMode),
    /// TLS has been negotiated.
    Active,
}

impl State<'_> {
    /// Under [`TlsMode::Require`] before TLS: answers `option` with `NBD_REP_ERR_TLS_REQD`
    /// (true) unless it is STARTTLS or ABORT (false); EXPORT_NAME, which has no error reply,
    /// ends the session.
    pub(super) fn refused_before_tls<W: Write>(
        &self,
        option: u32,
        w: &mut W,
    ) -> Result<bool, HandshakeError> {
        if self.tls != Tls::Plain(TlsMode::Require)
            || matches!(option, NBD_OPT_STARTTLS | NBD_OPT_ABORT)
        {
            return Ok(false);
        }
        if option == NBD_OPT_EXPORT_NAME {
            return Err(HandshakeError::TlsRequired);
        }
        w.write_all(&option_error(
            option,
            NBD_REP_ERR_TLS_REQD,
            "this server requires TLS: send NBD_OPT_STARTTLS first (nbds:// URIs, \
             --tls-creds, nbd-client -enable-tls)",
        ))?;
        Ok(true)
    }

    /// NBD_OPT_STARTTLS: ACK (the TLS handshake follows), or why not.
    pub(super) fn starttls<W: Write>(
        &mut self,
        w: &mut W,
    ) -> Result<Option<Outcome>, HandshakeError> {
        const OPT: u32 = NBD_OPT_STARTTLS;
        if !self.data.is_empty() {
            invalid(w, OPT, "NBD_OPT_STARTTLS takes no data")?;
            return Ok(None);
        }
        match self.tls {
            Tls::Active => invalid(w, OPT, "TLS is already active on this connection")?,
            Tls::Plain(TlsMode::Off) => w.write_all(&option_error(
                OPT,
                NBD_REP_ERR_POLICY,
                "TLS is not enabled on this server ([nbd] tls = \"on\" or \"require\")",
            ))?,
            Tls::Plain(TlsMode::On | TlsMode::Require) => {
                w.write_all(&option_reply(OPT, NBD_REP_ACK, &[]))?;
                return Ok(Some(Outcome::StartTls(Upgrade {
                    no_zeroes: self.no_zeroes,
                    options: self.options,
                })));
            }
        }
        Ok(None)
    }
}
