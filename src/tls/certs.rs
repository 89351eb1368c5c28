//! The certificate directory, in the x509 layout qemu-nbd (`--object tls-creds-x509,dir=`) and
//! nbdkit (`--tls-certificates DIR`) use: `server-cert.pem` (the server's certificate, then
//! its chain), `server-key.pem` (its private key: PKCS#8, PKCS#1 RSA or SEC1 EC, unencrypted)
//! and `ca-cert.pem` (the CA that client certificates must chain to; needed only with
//! `verify_peer`). Files are read with `store::file::read_small` (never blocking on a FIFO,
//! bounded in size), PEM is decoded by `rustls-pki-types`, and the rustls server
//! configurations for both front ends are built here. Every error names the file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::TlsError;
use crate::store::file::read_small;

/// The server's certificate chain, leaf first.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The CA client certificates are checked against.
pub const CA_CERT: &str = "ca-cert.pem";
/// Largest PEM file read (a long chain is a few tens of KiB).
const MAX_PEM_FILE: u64 = 1 << 20;
/// ALPN protocol of the HTTPS listeners (HTTP/1.1 only: there is no h2 here).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider every configuration is built with (Cargo.toml says why aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What a certificate directory holds, checked: the chain and key match, and the rustls
/// configurations of both front ends are built from them.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// For HTTPS: ALPN `http/1.1`.
    pub http: Arc<ServerConfig>,
    /// For NBD after `NBD_OPT_STARTTLS`: no ALPN (qemu, libnbd and nbd-client send none).
    pub nbd: Arc<ServerConfig>,
    /// One line for the log: the certificate, its expiry, whether client certificates are
    /// required.
    pub summary: String,
    /// Problems that do not stop serving (an expired certificate, a key others can read),
    /// each naming its file; the caller logs them as warnings.
    pub warnings: Vec<String>,
}

/// Reads and checks the directory `dir` at time `now`; with `verify_peer`, clients must
/// present a certificate that chains to `ca-cert.pem`.
pub fn load(dir: &Path, verify_peer: bool, now: SystemTime) -> Result<Loaded, TlsError> {
    let meta = std::fs::metadata(dir).map_err(|e| TlsError::File {
        path: dir.to_path_buf(),
        problem: format!("cannot open the certificate directory: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(TlsError::File {
            path: dir.to_path_buf(),
            problem: format!(
                "is not a directory (expected a directory holding {SERVER_CERT}, {SERVER_KEY} \
                 and {CA_CERT})"
            ),
        });
    }
    let cert_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let chain = certificates(&cert_path)?;
    let key = private_key(&key_path)?;
    let mut warnings = Vec::new();
    if let Some(w) = key_permissions(&key_path) {
        warnings.push(w);
    }
    let validity = validity(&chain[0]).map_err(|problem| TlsError::File {
        path: cert_path.clone(),
        problem,
    })?;
    if let Some(w) = validity.warning(now) {
        warnings.push(format!("{}: {w}", cert_path.display()));
    }
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = if verify_peer {
        let ca_path = dir.join(CA_CERT);
        let mut roots = RootCertStore::empty();
        for c in certificates(&ca_path)? {
            roots.add(c).map_err(|e| TlsError::File {
                path: ca_path.clone(),
                problem: format!("not a usable CA certificate: {e}"),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::File {
                path: ca_path.clone(),
                problem: format!("cannot check client certificates against it: {e}"),
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let nbd = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::File {
            path: key_path.clone(),
            problem: format!("this key does not belong to the certificate in {SERVER_CERT}"),
        },
        e => TlsError::File {
            path: key_path.clone(),
            problem: format!("unusable key or certificate: {e}"),
        },
    })?;
    let mut http = nbd.clone();
    http.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    let summary = format!(
        "TLS certificates from {}: {}, valid until {}; client certificates {}",
        dir.display(),
        validity.subject,
        validity.not_after,
        if verify_peer {
            format!("required (checked against {CA_CERT})")
        } else {
            "not requested".to_string()
        }
    );
    Ok(Loaded {
        http: Arc::new(http),
        nbd: Arc::new(nbd),
        summary,
        warnings,
    })
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    read_small(path, what, MAX_PEM_FILE).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        problem: e.to_string().replace(&format!("{}: ", path.display()), ""),
    })
}

/// Every certificate of a PEM file, in file order; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path, "a PEM certificate file")?;
    let bad = |problem: String| TlsError::File {
        path: path.to_path_buf(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file: the first PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key in it.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(path, "a PEM key file")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        problem: match e {
            pem::Error::NoItemsFound if contains(&bytes, b"ENCRYPTED") => {
                "the key is encrypted; hexzd needs it unencrypted (openssl pkey -in KEY -out \
                 KEY.plain, then keep it mode 0600)"
                    .into()
            }
            pem::Error::NoItemsFound => "holds no private key (expected -----BEGIN PRIVATE \
                 KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .into(),
            e => format!("not valid PEM: {e}"),
        },
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A warning when users other than the owner and group can read the key.
fn key_permissions(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{}: the private key is readable by every user (mode {:04o}); chmod 600 it (or 640 \
             with a group of its readers)",
            path.display(),
            mode & 0o7777
        )
    })
}

/// The validity window and subject of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// The subject's distinguished name, as RFC 4514 text.
    pub subject: String,
    /// Start of validity (seconds since the epoch) and its text.
    pub not_before: (Duration, String),
    /// End of validity: RFC 3339 text (`2027-01-31T12:00:00Z`).
    pub not_after: String,
    not_after_unix: Duration,
}

impl Validity {
    /// What is wrong with the dates at `now`, if anything.
    pub fn warning(&self, now: SystemTime) -> Option<String> {
        let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        if now > self.not_after_unix {
            Some(format!(
                "the certificate ({}) expired on {}: clients will refuse it; renew it and \
                 reload (SIGHUP)",
                self.subject, self.not_after
            ))
        } else if now < self.not_before.0 {
            Some(format!(
                "the certificate ({}) is not valid before {}: clients will refuse it until then",
                self.subject, self.not_before.1
            ))
        } else {
            None
        }
    }
}

/// The validity dates of a DER certificate.
pub fn validity(cert: &[u8]) -> Result<Validity, String> {
    use x509_cert::der::Decode;
    let c = x509_cert::Certificate::from_der(cert)
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    let v = &c.tbs_certificate.validity;
    Ok(Validity {
        subject: c.tbs_certificate.subject.to_string(),
        not_before: (v.not_before.to_unix_duration(), v.not_before.to_string()),
        not_after: v.not_after.to_string(),
        not_after_unix: v.not_after.to_unix_duration(),
    })
}
