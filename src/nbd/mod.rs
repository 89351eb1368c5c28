//! The NBD front end (nbd.md): serves every snapshot stream of the catalog read-only over the
//! fixed newstyle NBD protocol, to nbd-client and the kernel, qemu and libnbd.
//!
//! Files by role: [`proto`] holds the constants and pure codecs; [`handshake`] the option
//! state machine; [`transmission`] request validation, dispatch and the concurrent request
//! loop; `execute` runs valid requests against the store; [`reply`] writes whole replies;
//! [`client`] is the client-side handshake nbd-proxy mode needs. This file ties the server
//! parts to a [`Conn`] (timeouts, logging) or to stdin/stdout.
//!
//! The daemon owns listeners, the connection cap and the connection counters; it calls
//! [`NbdService::serve_connection`] on a thread per accepted connection.
//!
//! TLS: with `[nbd] tls = "on"` or `"require"` and certificates ([`NbdService::with_tls`]),
//! `NBD_OPT_STARTTLS` upgrades the connection (`tls::accept`, within the handshake timeout),
//! the option haggling resumes over TLS and transmission runs over the TLS halves exactly as
//! over a socket (`tls::stream` says why the halves share one locked rustls connection).

pub mod client;
mod execute;
pub mod handshake;
mod in_flight;
pub mod proto;
pub mod reply;
pub mod transmission;

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::serving::conn::{ReadTimeout, stall_tick};
use crate::serving::{Catalog, CatalogHandle, Conn, Draining, Metrics, ProtoMetrics, RateLog};
use crate::tls::TlsContext;
pub use handshake::TlsMode;
use handshake::{HandshakeError, Outcome, Session, Upgrade};
use transmission::{End, TransmissionError};

/// Settings of the NBD front end, validated by the daemon's config loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdSettings {
    /// Most NBD connections served at once (enforced by the daemon's accept loop).
    pub max_connections: usize,
    /// Time a client has from connecting to choosing an export.
    pub handshake_timeout: Duration,
    /// Close a connection after this long without a request and with nothing in flight.
    /// `None` (the default): kernel clients are legitimately idle for hours.
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose client reads nothing of a reply for this long, whatever
    /// `idle_timeout` says (`[limits] send_timeout`).
    pub send_timeout: Duration,
    /// When NBD_OPT_STARTTLS is accepted (`[nbd] tls`); needs certificates.
    pub tls: TlsMode,
}

impl Default for NbdSettings {
    fn default() -> Self {
        NbdSettings {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: None,
            send_timeout: crate::serving::budget::DEFAULT_SEND_TIMEOUT,
            tls: TlsMode::Off,
        }
    }
}

/// The NBD server: settings, the catalog to resolve export names in, and the counters. Shared
/// by every connection thread through an `Arc`.
#[derive(Debug)]
pub struct NbdService {
    settings: NbdSettings,
    catalog: Arc<CatalogHandle>,
    metrics: Arc<Metrics>,
    /// Set by the daemon at a graceful stop: connections read no new request.
    draining: Arc<Draining>,
    /// The certificates for STARTTLS (`None`: TLS off whatever `settings.tls` says).
    tls: Option<Arc<TlsContext>>,
}

/// Reads from a connection (plaintext, or TLS after STARTTLS) with one deadline for the whole
/// handshake, so a client dripping a byte at a time cannot hold a connection slot beyond it.
struct DeadlineReader<R> {
    conn: R,
    deadline: Instant,
}

impl<R: ReadTimeout> Read for DeadlineReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(handshake_timed_out());
        }
        self.conn.set_read_timeout(Some(left))?;
        match self.conn.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(handshake_timed_out())
            }
            r => r,
        }
    }
}

fn handshake_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")
}

impl NbdService {
    /// A service over `catalog` (re-read at each connection start, so a reload applies to new
    /// connections only) counting into `metrics.nbd`.
    pub fn new(settings: NbdSettings, catalog: Arc<CatalogHandle>, metrics: Arc<Metrics>) -> Self {
        NbdService {
            settings,
            catalog,
            metrics,
            draining: Arc::new(Draining::new()),
            tls: None,
        }
    }

    /// Accepts NBD_OPT_STARTTLS as `settings.tls` says, with the certificates of `tls`.
    #[must_use]
    pub fn with_tls(mut self, tls: Arc<TlsContext>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Uses `draining` as the graceful-stop flag (the daemon's; by default a flag of its own
    /// that is never set).
    #[must_use]
    pub fn with_draining(mut self, draining: Arc<Draining>) -> Self {
        self.draining = draining;
        self
    }

    /// The settings in effect.
    pub fn settings(&self) -> &NbdSettings {
        &self.settings
    }

    /// Serves one connection: handshake, then transmission, until DISC, EOF or an error. Every
    /// failure closes this connection only. Never panics: a bug in a request handler is caught,
    /// logged and closes the connection.
    pub fn serve_connection(&self, conn: Conn) {
        let peer = conn.peer();
        let served = std::panic::catch_unwind(AssertUnwindSafe(|| self.serve_conn(conn, &peer)));
        if served.is_err() {
            log::error!("nbd {peer}: connection handler panicked (a bug); connection closed");
        }
    }

    fn serve_conn(&self, mut conn: Conn, peer: &str) {
        let _ = conn.set_nodelay();
        let reader = match conn.try_clone() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("nbd {peer}: cannot clone the socket: {e}");
                return;
            }
        };
        let mut reader = DeadlineReader {
            conn: reader,
            deadline: Instant::now() + self.settings.handshake_timeout,
        };
        let _ = conn.set_write_timeout(Some(self.settings.handshake_timeout));
        let catalog = self.catalog.load();
        let mode = match self.tls {
            Some(_) => self.settings.tls,
            None => TlsMode::Off,
        };
        let outcome = handshake::negotiate_tls(&mut reader, &mut conn, &catalog, mode);
        if let Ok(Outcome::StartTls(upgrade)) = outcome {
            // From here the TLS halves own the socket.
            let deadline = reader.deadline;
            drop(reader);
            self.serve_tls(conn, peer, &catalog, upgrade, deadline);
            return;
        }
        let Some(session) = self.handshake_done(outcome, peer) else {
            return;
        };
        let reader = reader.conn;
        let idle = self.settings.idle_timeout;
        let tick = stall_tick(self.settings.send_timeout);
        if reader.set_read_timeout(idle).is_err() || conn.set_write_timeout(Some(tick)).is_err() {
            log::warn!("nbd {peer}: cannot set socket timeouts");
            return;
        }
        let result = transmission::serve(reader, conn, &session, self.shared(), peer);
        self.transmission_done(result, peer, &session);
    }

    /// The rest of a connection after NBD_OPT_STARTTLS was acknowledged: the TLS handshake and
    /// the rest of the option haggling by `deadline`, then transmission over TLS, then
    /// close_notify.
    fn serve_tls(
        &self,
        conn: Conn,
        peer: &str,
        catalog: &Catalog,
        upgrade: Upgrade,
        deadline: Instant,
    ) {
        let Some(tls) = &self.tls else {
            return;
        };
        let m = &self.metrics.nbd;
        let (reader, mut writer) = match crate::tls::accept(conn, tls.nbd(), deadline) {
            Ok(halves) => {
                ProtoMetrics::add(&m.tls_handshakes, 1);
                halves
            }
            Err(e) => {
                // Counted; at debug level only, so failing clients cannot flood the log.
                ProtoMetrics::add(&m.tls_handshake_failures, 1);
                log::debug!("nbd {peer}: {e}");
                return;
            }
        };
        let closer = writer.handle();
        let mut reader = DeadlineReader {
            conn: reader,
            deadline,
        };
        let _ = writer.set_write_timeout(Some(self.settings.handshake_timeout));
        let outcome = handshake::resume_after_tls(&mut reader, &mut writer, catalog, upgrade);
        if let Some(session) = self.handshake_done(outcome, peer) {
            let mut reader = reader.conn;
            let _ = reader.set_read_timeout(self.settings.idle_timeout);
            let _ = writer.set_write_timeout(Some(stall_tick(self.settings.send_timeout)));
            let result = transmission::serve(reader, writer, &session, self.shared(), peer);
            self.transmission_done(result, peer, &session);
        }
        closer.close_notify();
    }

    /// One NBD session on stdin/stdout (`hexzd serve --stdio`), without timeouts. Protocol
    /// errors are logged and returned as `InvalidData`; a client going away is a normal end.
    pub fn serve_stdio(&self) -> io::Result<()> {
        let mut r = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let mut w = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?);
        let peer = "stdio";
        let catalog = self.catalog.load();
        let outcome = handshake::negotiate(&mut r, &mut w, &catalog);
        let protocol_error = matches!(&outcome, Err(e) if !e.is_disconnect());
        let Some(session) = self.handshake_done(outcome, peer) else {
            return if protocol_error {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "NBD handshake failed",
                ))
            } else {
                Ok(())
            };
        };
        let result = transmission::serve(r, w, &session, self.shared(), peer);
        let failed = matches!(&result, Err(e) if !e.is_disconnect());
        self.transmission_done(result, peer, &session);
        if failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "NBD session ended with an error",
            ));
        }
        Ok(())
    }

    fn shared(&self) -> transmission::Shared<'_> {
        transmission::Shared {
            metrics: &self.metrics.nbd,
            budget: &self.metrics.budget,
            send_timeout: self.settings.send_timeout,
            draining: &self.draining,
        }
    }

    /// Logs how the handshake ended; returns the session if transmission follows.
    fn handshake_done(
        &self,
        outcome: Result<Outcome, HandshakeError>,
        peer: &str,
    ) -> Option<Box<Session>> {
        match outcome {
            Ok(Outcome::Transmission(s)) => {
                log::debug!(
                    "nbd {peer}: export {:?} = {} ({} stream, {} bytes), \
                     structured replies {}, base:allocation {}",
                    s.export_name,
                    s.snapshot.snapshot.path().display(),
                    s.stream,
                    s.size,
                    if s.structured { "on" } else { "off" },
                    if s.base_allocation.is_some() {
                        "on"
                    } else {
                        "off"
                    },
                );
                Some(s)
            }
            Ok(Outcome::Aborted) => {
                log::debug!("nbd {peer}: client aborted the handshake");
                None
            }
            Ok(Outcome::StartTls(_)) => {
                // Handled by the caller before this point; reaching here is a second STARTTLS
                // outcome, which the handshake never produces.
                log::warn!("nbd {peer}: unexpected STARTTLS outcome; closing");
                None
            }
            Err(HandshakeError::TlsRequired) => {
                log::info!(
                    "nbd {peer}: the client chose an export without TLS, which this server \
                     requires; closing"
                );
                None
            }
            Err(e) if e.is_disconnect() => {
                log::debug!("nbd {peer}: client went away during the handshake: {e}");
                None
            }
            Err(HandshakeError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                log::info!("nbd {peer}: {e}, closing");
                None
            }
            Err(HandshakeError::Io(e)) => {
                log::info!("nbd {peer}: handshake failed: {e}");
                None
            }
            Err(e) => {
                log::warn!("nbd {peer}: protocol error in the handshake, closing: {e}");
                ProtoMetrics::add(&self.metrics.nbd.protocol_errors, 1);
                None
            }
        }
    }

    fn transmission_done(
        &self,
        result: Result<End, TransmissionError>,
        peer: &str,
        session: &Session,
    ) {
        let export = &session.export_name;
        match result {
            Ok(End::Disconnect) => log::debug!("nbd {peer}: export {export:?}: disconnected"),
            Ok(End::Eof) => log::debug!("nbd {peer}: export {export:?}: client closed"),
            Ok(End::Idle) => {
                log::info!("nbd {peer}: export {export:?}: idle timeout, closing");
            }
            Ok(End::SendTimeout) => {
                let m = &self.metrics.nbd;
                ProtoMetrics::add(&m.send_timeouts, 1);
                if let Some(n) = m.send_timeout_log.ready() {
                    log::info!(
                        "nbd {peer}: export {export:?}: the client read no reply for {} ms \
                         ([limits] send_timeout); connection closed{}",
                        self.settings.send_timeout.as_millis(),
                        RateLog::suffix(n)
                    );
                }
            }
            Ok(End::Draining) => {
                log::debug!("nbd {peer}: export {export:?}: shutting down, closed");
            }
            Ok(End::WriterFailed) => {
                log::debug!("nbd {peer}: export {export:?}: reply failed, closed");
            }
            Err(e) if e.is_disconnect() => {
                log::debug!("nbd {peer}: export {export:?}: client went away: {e}");
            }
            Err(e @ (TransmissionError::Io(_) | TransmissionError::Truncated(_))) => {
                log::info!("nbd {peer}: export {export:?}: connection failed: {e}");
            }
            Err(e @ TransmissionError::Proto(_)) => {
                log::warn!("nbd {peer}: export {export:?}: protocol error, closing: {e}");
                ProtoMetrics::add(&self.metrics.nbd.protocol_errors, 1);
            }
        }
    }
}

/// A type check: the service is shared between connection threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NbdService>();
};
