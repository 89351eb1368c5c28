//! Listening sockets and accept loops. One thread per listener accepts connections and starts
//! one named thread per connection (`http-conn-N`, `nbd-conn-N`) under the protocol's
//! connection cap. Accept errors never end the loop: running out of file descriptors slows
//! accepting down (systemd.md §7), it never stops it.

use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::shutdown::Shutdown;
use crate::serving::{Conn, Metrics, ProtoMetrics};

/// Stack size of connection threads. Connection state lives on the heap; a small stack keeps
/// thousands of idle connections cheap.
pub const CONN_STACK_SIZE: usize = 256 * 1024;
/// Pause after an accept failure caused by resource exhaustion (EMFILE, ENFILE, ENOMEM).
const EXHAUSTED_BACKOFF: Duration = Duration::from_millis(50);

/// A failure to set up a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address does not parse or resolve.
    #[error(
        "bad listen address {addr:?}: {reason} (expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080)"
    )]
    Address { addr: String, reason: String },
    /// bind/listen failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
}

/// Which protocol a listener serves (never inferred from the port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 range server.
    Http,
    /// NBD server.
    Nbd,
}

impl Proto {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http => "HTTP",
            Proto::Nbd => "NBD",
        }
    }

    fn thread_prefix(self) -> &'static str {
        match self {
            Proto::Http => "http-conn",
            Proto::Nbd => "nbd-conn",
        }
    }
}

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream socket, with the path to remove at exit.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds every address `addr` resolves to (`HOST:PORT`; host names and `[v6]:port`
    /// accepted). Succeeds if at least one binds; the others are logged.
    pub fn bind_tcp(addr: &str) -> Result<Vec<Listener>, ListenError> {
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| ListenError::Address {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .collect();
        let mut out = Vec::new();
        let mut last_err = None;
        for a in &addrs {
            match TcpListener::bind(a) {
                Ok(l) => out.push(Listener::Tcp(l)),
                Err(e) => {
                    log::warn!("cannot listen on {a} (from {addr}): {e}");
                    last_err = Some(e);
                }
            }
        }
        if out.is_empty() {
            return Err(ListenError::Bind {
                addr: addr.to_string(),
                source: last_err.unwrap_or_else(|| io::Error::other("address resolved to nothing")),
            });
        }
        Ok(out)
    }

    /// Binds a Unix stream socket, replacing a stale socket file left by an earlier run.
    pub fn bind_unix(path: &Path) -> Result<Listener, ListenError> {
        let err = |source| ListenError::Bind {
            addr: path.display().to_string(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            // Only a socket nobody answers on is ours to replace.
            if meta.file_type().is_socket()
                && std::os::unix::net::UnixStream::connect(path).is_err()
            {
                let _ = std::fs::remove_file(path);
            }
        }
        UnixListener::bind(path)
            .map(|l| Listener::Unix(l, path.to_path_buf()))
            .map_err(err)
    }

    /// Adopts an already-listening TCP socket (systemd socket activation, tests).
    pub fn from_tcp(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }

    /// The bound address, for the readiness line: `127.0.0.1:8080` or `unix /path`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "unknown".into(), |a| a.to_string()),
            Listener::Unix(_, p) => format!("unix {}", p.display()),
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
    }

    fn accept(&self) -> io::Result<Conn> {
        let conn = match self {
            Listener::Tcp(l) => Conn::Tcp(l.accept()?.0),
            Listener::Unix(l, _) => Conn::Unix(l.accept()?.0),
        };
        // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
        match &conn {
            Conn::Tcp(s) => s.set_nonblocking(false)?,
            Conn::Unix(s) => s.set_nonblocking(false)?,
        }
        Ok(conn)
    }

    fn poll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What an accept loop does with connections.
pub struct Handler {
    /// Serves an accepted connection; runs on its own thread and returns when it closes.
    pub serve: Box<dyn Fn(Conn) + Send + Sync>,
    /// Answers a connection over the cap (must not block), then drops it.
    pub reject: Box<dyn Fn(Conn) + Send + Sync>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

/// An accept loop's configuration.
#[derive(Debug)]
pub struct AcceptLoop {
    /// Protocol (for thread names, logs and its counters).
    pub proto: Proto,
    /// Connection cap for this protocol, shared by all its listeners through the
    /// `connections_active` gauge.
    pub max_connections: usize,
    /// The process counters.
    pub metrics: Arc<Metrics>,
    /// What to do with connections.
    pub handler: Arc<Handler>,
    /// Shared connection sequence number, for thread names.
    pub seq: Arc<AtomicU64>,
}

/// The counters of one protocol.
fn counters(m: &Metrics, proto: Proto) -> &ProtoMetrics {
    match proto {
        Proto::Http => &m.http,
        Proto::Nbd => &m.nbd,
    }
}

/// Decrements the active-connection gauge when a connection thread ends, however it ends.
struct ActiveGuard(Arc<Metrics>, Proto);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        ProtoMetrics::sub(&counters(&self.0, self.1).connections_active, 1);
    }
}

/// Starts the accept thread for `listener`. It exits when `shutdown` triggers.
pub fn spawn(
    listener: Listener,
    cfg: AcceptLoop,
    shutdown: Arc<Shutdown>,
) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking()?;
    let name = format!("{}-accept", cfg.proto.name().to_ascii_lowercase());
    std::thread::Builder::new()
        .name(name)
        .spawn(move || accept_loop(&listener, &cfg, &shutdown))
}

fn accept_loop(listener: &Listener, cfg: &AcceptLoop, shutdown: &Shutdown) {
    let m = counters(&cfg.metrics, cfg.proto);
    let mut last_refusal_log: Option<Instant> = None;
    while !shutdown.is_triggered() {
        let mut fds = [
            PollFd::new(listener.poll_fd(), PollFlags::POLLIN),
            PollFd::new(shutdown.wake_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                log::error!("{} accept loop: poll failed: {e}", cfg.proto.name());
                std::thread::sleep(EXHAUSTED_BACKOFF);
                continue;
            }
        }
        if shutdown.is_triggered() {
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
                    log::warn!("{} accept failed: {e}; retrying", cfg.proto.name());
                    std::thread::sleep(EXHAUSTED_BACKOFF);
                    break;
                }
            };
            // Check and count in one step: several listeners (v4 and v6, or two addresses)
            // share the cap.
            let admitted =
                m.connections_active
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < cfg.max_connections as u64).then_some(n + 1)
                    });
            if admitted.is_err() {
                ProtoMetrics::add(&m.connections_rejected, 1);
                // The counter records every refusal; the log says so at most once a second,
                // so a connection flood does not become a log flood.
                if last_refusal_log.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                    last_refusal_log = Some(Instant::now());
                    log::warn!(
                        "{} connection from {} refused: at the cap of {} connections ({} refused so far)",
                        cfg.proto.name(),
                        conn.peer(),
                        cfg.max_connections,
                        crate::serving::get(&m.connections_rejected),
                    );
                }
                (cfg.handler.reject)(conn);
                continue;
            }
            ProtoMetrics::add(&m.connections_total, 1);
            let guard = ActiveGuard(Arc::clone(&cfg.metrics), cfg.proto);
            let handler = Arc::clone(&cfg.handler);
            let n = cfg.seq.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{n}", cfg.proto.thread_prefix()))
                .stack_size(CONN_STACK_SIZE)
                .spawn(move || {
                    let _guard = guard;
                    (handler.serve)(conn);
                });
            if let Err(e) = spawned {
                // The closure (and with it the connection and the guard) was dropped.
                log::warn!(
                    "{} connection dropped: cannot start a thread: {e}",
                    cfg.proto.name()
                );
                std::thread::sleep(EXHAUSTED_BACKOFF);
            }
        }
    }
}
