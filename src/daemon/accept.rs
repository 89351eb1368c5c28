//! Accept loops. One thread per listener accepts connections and starts one named thread per
//! connection (`http-conn-N`, `nbd-conn-N`) under the protocol's connection cap, then hands
//! the connection to its front end through [`Service`], the closed set of front ends (no boxed
//! callbacks: nothing below `daemon/` calls back up). Accept errors never end the loop: running
//! out of file descriptors slows accepting down (systemd.md §7), it never stops it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::clients::ClientCounts;
use super::drain::OpenConns;
use super::listener::{Listener, Protocol};
use super::shutdown::Shutdown;
use super::watchdog::Probe;
use crate::http::HttpService;
use crate::nbd::NbdService;
use crate::serving::{Conn, Metrics, ProtoMetrics, RateLog};
use crate::tls::TlsContext;

/// Stack size of connection threads. Connection state lives on the heap; a small stack keeps
/// thousands of idle connections cheap.
pub const CONN_STACK_SIZE: usize = 256 * 1024;
/// Pause after an accept failure caused by resource exhaustion (EMFILE, ENFILE, ENOMEM).
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(50);

/// A running front end, as the accept loops see it. A new front end is a new variant here
/// (and in [`Protocol`]); the compiler then lists every place that must handle it.
#[derive(Debug, Clone)]
pub enum Service {
    /// The HTTP front end.
    Http(Arc<HttpService>),
    /// The NBD front end.
    Nbd(Arc<NbdService>),
    /// The HTTP front end behind TLS, with the certificates in effect.
    Https(Arc<HttpService>, Arc<TlsContext>),
}

impl Service {
    /// Which protocol this is.
    pub fn protocol(&self) -> Protocol {
        match self {
            Service::Http(_) => Protocol::Http,
            Service::Nbd(_) => Protocol::Nbd,
            Service::Https(..) => Protocol::Https,
        }
    }

    /// The connection cap, shared by every listener of the protocol (HTTPS counts as HTTP).
    pub fn max_connections(&self) -> usize {
        match self {
            Service::Http(s) | Service::Https(s, _) => s.settings().max_connections,
            Service::Nbd(s) => s.settings().max_connections,
        }
    }

    /// This protocol's counters.
    pub fn counters<'m>(&self, metrics: &'m Metrics) -> &'m ProtoMetrics {
        match self {
            Service::Http(_) | Service::Https(..) => &metrics.http,
            Service::Nbd(_) => &metrics.nbd,
        }
    }

    /// Serves an accepted connection until it closes (on the connection's own thread).
    fn serve(&self, conn: Conn) {
        match self {
            Service::Http(s) => s.serve_connection(conn),
            Service::Nbd(s) => s.serve_connection(conn),
            Service::Https(s, tls) => s.serve_tls_connection(conn, tls),
        }
    }

    /// Answers a connection over the cap without blocking, then drops it.
    fn reject(&self, conn: Conn) {
        match self {
            Service::Http(s) => s.reject_busy(conn),
            // NBD has no way to say "busy" before the handshake, and an HTTPS 503 would cost
            // a TLS handshake on the accept thread: close.
            Service::Nbd(_) | Service::Https(..) => drop(conn),
        }
    }

    fn thread_prefix(&self) -> &'static str {
        match self {
            Service::Http(_) => "http-conn",
            Service::Nbd(_) => "nbd-conn",
            Service::Https(..) => "https-conn",
        }
    }
}

/// What an accept loop needs besides its listener.
#[derive(Debug, Clone)]
pub struct AcceptLoop {
    /// The front end its connections go to.
    pub service: Service,
    /// The process counters (the cap is checked against `connections_active`).
    pub metrics: Arc<Metrics>,
    /// Shared connection sequence number, for thread names.
    pub seq: Arc<AtomicU64>,
    /// Open connections per client, shared by the protocol's listeners.
    pub clients: Arc<ClientCounts>,
    /// Ends the loop when triggered.
    pub shutdown: Arc<Shutdown>,
    /// Every open connection, for the graceful stop (`drain`).
    pub open: Arc<OpenConns>,
    /// The watchdog's liveness check of this loop.
    pub probe: Arc<Probe>,
}

/// When a connection thread ends, however it ends: forgets the connection in [`OpenConns`]
/// and decrements the active-connection gauge.
struct ActiveGuard(Arc<Metrics>, Service, Arc<OpenConns>, Option<u64>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(id) = self.3 {
            self.2.remove(id);
        }
        ProtoMetrics::sub(&self.1.counters(&self.0).connections_active, 1);
    }
}

/// Starts the accept thread for `listener`. It exits when `cfg.shutdown` triggers.
pub fn spawn(listener: Listener, cfg: AcceptLoop) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking()?;
    let name = format!(
        "{}-accept",
        cfg.service.protocol().name().to_ascii_lowercase()
    );
    std::thread::Builder::new()
        .name(name)
        .spawn(move || accept_loop(&listener, &cfg))
}

fn accept_loop(listener: &Listener, cfg: &AcceptLoop) {
    let proto = cfg.service.protocol().name();
    let max = cfg.service.max_connections();
    let m = cfg.service.counters(&cfg.metrics);
    let mut last_refusal_log: Option<Instant> = None;
    while !cfg.shutdown.is_triggered() {
        let mut fds = [
            PollFd::new(listener.poll_fd(), PollFlags::POLLIN),
            PollFd::new(cfg.shutdown.wake_fd(), PollFlags::POLLIN),
            PollFd::new(cfg.probe.fd(), PollFlags::POLLIN),
        ];
        let probed = match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => fds[2].any().unwrap_or(false),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("{proto} accept loop: poll failed: {e}");
                std::thread::sleep(EXHAUSTED_BACKOFF);
                continue;
            }
        };
        if cfg.shutdown.is_triggered() {
            break;
        }
        if probed && !cfg.probe.answer(listener.poll_fd()) {
            // Test hook: behave as a wedged loop (no answers, no accepts) until shutdown.
            cfg.shutdown.wait();
            break;
        }
        // Drain the backlog: the listener is non-blocking.
        loop {
            let conn = match listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog;
                    // back off so that connections closing elsewhere can free descriptors.
                    log::warn!("{proto} accept failed: {e}; retrying");
                    std::thread::sleep(EXHAUSTED_BACKOFF);
                    break;
                }
            };
            // Check and count in one step: several listeners (v4 and v6, or two addresses)
            // share the cap.
            let admitted =
                m.connections_active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < max as u64).then_some(n + 1)
                    });
            if admitted.is_err() {
                ProtoMetrics::add(&m.connections_rejected, 1);
                // The counter records every refusal; the log says so at most once a second,
                // so a connection flood does not become a log flood.
                if last_refusal_log.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                    last_refusal_log = Some(Instant::now());
                    log::warn!(
                        "{proto} connection from {} refused: at the cap of {max} connections ({} refused so far)",
                        conn.peer(),
                        crate::serving::get(&m.connections_rejected),
                    );
                }
                cfg.service.reject(conn);
                continue;
            }
            let mut guard = ActiveGuard(
                Arc::clone(&cfg.metrics),
                cfg.service.clone(),
                Arc::clone(&cfg.open),
                None,
            );
            let slot = match cfg.clients.admit(conn.client_id()) {
                Ok(slot) => slot,
                Err(over) => {
                    ProtoMetrics::add(&m.connections_rejected_per_client, 1);
                    if let Some(n) = m.per_client_log.ready() {
                        log::warn!(
                            "{proto} connection from {} refused: it has {} connections open \
                             ([limits] max_connections_per_client){}",
                            over.client,
                            over.limit,
                            RateLog::suffix(n)
                        );
                    }
                    drop(guard);
                    cfg.service.reject(conn);
                    continue;
                }
            };
            ProtoMetrics::add(&m.connections_total, 1);
            guard.3 = cfg.open.register(&conn);
            let service = cfg.service.clone();
            let n = cfg.seq.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{n}", cfg.service.thread_prefix()))
                .stack_size(CONN_STACK_SIZE)
                .spawn(move || {
                    let _guard = (guard, slot);
                    service.serve(conn);
                });
            if let Err(e) = spawned {
                // The closure (and with it the connection and the guard) was dropped.
                log::warn!("{proto} connection dropped: cannot start a thread: {e}");
                std::thread::sleep(EXHAUSTED_BACKOFF);
            }
        }
    }
}
