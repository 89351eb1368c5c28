//! The TLS settings: `[tls]` (`--tls-certificates`, `--tls-verify-peer`), `[http] listen_tls`
//! (`--https`) and `[nbd] tls` (`--nbd-tls`). Whatever uses TLS needs a certificate
//! directory (by default `/etc/hexzd/tls`), and the directory is read and checked here like
//! any file the config names (its key is a secret read here); the daemon reads it again into
//! its `tls::TlsContext` at start and on every reload, so a bad certificate fails start-up,
//! or the reload, naming its file.

use std::path::PathBuf;
use std::time::SystemTime;

use super::raw::{RawHttp, RawNbd, RawTls};
use super::validate::{Place, Source};
use super::{ConfigError, Overrides};
use crate::nbd::TlsMode;
use crate::tls::TlsSettings;

/// `[tls] certificates` when TLS is used and no directory is named (design.md §4).
pub const DEFAULT_CERTIFICATES: &str = "/etc/hexzd/tls";

/// The validated TLS settings.
pub(super) struct Validated {
    pub tls: Option<TlsSettings>,
    pub listen_tls: Vec<String>,
    pub nbd_tls: TlsMode,
}

/// Validates the TLS settings of the file (`tls`, `http.listen_tls`, `nbd.tls`) with the
/// command line's over them.
pub(super) fn tls(
    src: &Source<'_>,
    raw: Option<&RawTls>,
    http: &RawHttp,
    nbd: &RawNbd,
    ov: &Overrides,
) -> Result<Validated, ConfigError> {
    let (certificates, cert_place) = match (
        &ov.tls_certificates,
        raw.and_then(|t| t.certificates.as_ref()),
    ) {
        (Some(d), _) => (Some(d.clone()), Place::Flag("--tls-certificates")),
        (None, Some(d)) => (Some(src.resolve(d)), src.key("tls.certificates")),
        (None, None) => (None, src.key("tls.certificates")),
    };
    let verify_peer = ov.tls_verify_peer || raw.and_then(|t| t.verify_peer).unwrap_or(false);
    let (listen_tls, https_place) = match (&ov.https_listen, &http.listen_tls) {
        (Some(l), _) => (l.clone(), Place::Flag("--https")),
        (None, Some(l)) => (l.clone(), src.key("http.listen_tls")),
        (None, None) => (Vec::new(), src.key("http.listen_tls")),
    };
    let (nbd_tls, nbd_place) = match (ov.nbd_tls, &nbd.tls) {
        (Some(m), _) => (m, Place::Flag("--nbd-tls")),
        (None, Some(s)) => {
            let place = src.key("nbd.tls");
            let m = TlsMode::parse(s).ok_or_else(|| {
                place.invalid(format!("{s:?} is not a TLS mode (off, on or require)"))
            })?;
            (m, place)
        }
        (None, None) => (TlsMode::Off, src.key("nbd.tls")),
    };
    let needs = if !listen_tls.is_empty() {
        Some((https_place, "HTTPS listeners need"))
    } else if nbd_tls != TlsMode::Off {
        Some((nbd_place, "NBD over TLS needs"))
    } else if verify_peer {
        Some((
            if ov.tls_verify_peer {
                Place::Flag("--tls-verify-peer")
            } else {
                src.key("tls.verify_peer")
            },
            "checking client certificates needs",
        ))
    } else {
        None
    };
    // Without a directory, whatever uses TLS reads the default one; its errors then say
    // which setting needed it and how to name another.
    let (dir, cert_place, default_hint) = match (certificates, needs) {
        (Some(d), _) => (d, cert_place, String::new()),
        (None, Some((place, what))) => (
            PathBuf::from(DEFAULT_CERTIFICATES),
            place,
            format!(
                "{what} certificates, from {DEFAULT_CERTIFICATES} by default (set [tls] \
                 certificates = DIR or --tls-certificates DIR): "
            ),
        ),
        (None, None) => {
            return Ok(Validated {
                tls: None,
                listen_tls,
                nbd_tls,
            });
        }
    };
    let settings = TlsSettings {
        certificates: dir,
        verify_peer,
    };
    crate::tls::certs::load(&settings.certificates, verify_peer, SystemTime::now())
        .map_err(|e| cert_place.invalid(format!("{default_hint}{e}")))?;
    Ok(Validated {
        tls: Some(settings),
        listen_tls,
        nbd_tls,
    })
}
