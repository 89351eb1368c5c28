//! The TLS configuration in effect, shared by the accept paths of both front ends and swapped
//! by a reload: a new connection takes the configuration current when its handshake starts
//! and keeps it (rustls holds an `Arc` of it), so a renewed certificate reaches new
//! connections only, and a bad one on reload leaves the old one serving.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;

use super::TlsError;
use super::certs::{self, Loaded};

/// `[tls]`: where the certificates are, and whether clients must present one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate directory (`server-cert.pem`, `server-key.pem`, `ca-cert.pem`).
    pub certificates: PathBuf,
    /// Require client certificates signed by `ca-cert.pem`.
    pub verify_peer: bool,
}

/// The certificates in effect.
#[derive(Debug)]
pub struct TlsContext {
    current: RwLock<Loaded>,
}

impl TlsContext {
    /// Loads `settings` once; the warnings are logged here.
    pub fn load(settings: &TlsSettings) -> Result<TlsContext, TlsError> {
        Ok(TlsContext {
            current: RwLock::new(load_logged(settings)?),
        })
    }

    /// Checks `settings` without keeping anything (`serve --check-config`): the summary line.
    pub fn check(settings: &TlsSettings) -> Result<String, TlsError> {
        load_logged(settings).map(|l| l.summary)
    }

    /// The summary line of the certificates in effect.
    pub fn summary(&self) -> String {
        self.read().summary.clone()
    }

    /// The HTTPS configuration for a new connection.
    pub fn http(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.read().http)
    }

    /// The NBD (STARTTLS) configuration for a new connection.
    pub fn nbd(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.read().nbd)
    }

    /// Loads `settings` (the directory named again, or a new one) and, if everything checks
    /// out, makes it the configuration of new connections. On error nothing changes.
    pub fn reload(&self, settings: &TlsSettings) -> Result<String, TlsError> {
        let loaded = self.prepare(settings)?;
        Ok(self.commit(loaded))
    }

    /// The first half of a reload: loads and checks `settings` without using them, so the
    /// daemon can check everything a reload changes before it swaps anything.
    pub fn prepare(&self, settings: &TlsSettings) -> Result<Loaded, TlsError> {
        load_logged(settings)
    }

    /// The second half: swaps `loaded` in for new connections; returns its summary.
    pub fn commit(&self, loaded: Loaded) -> String {
        let summary = loaded.summary.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        summary
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn load_logged(settings: &TlsSettings) -> Result<Loaded, TlsError> {
    let loaded = certs::load(
        &settings.certificates,
        settings.verify_peer,
        SystemTime::now(),
    )?;
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    Ok(loaded)
}
