//! Listening sockets, and where they come from: [`obtain`] is the one step that turns the
//! configuration and the sockets systemd passed (`activation`) into `(Protocol, Listener)`
//! pairs. A protocol with passed sockets serves those and binds none of its configured
//! addresses; the others bind theirs. The accept loops that serve them are `accept`.

use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::config::Config;
use crate::serving::Conn;

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
    /// Sockets passed by systemd (or another activator) cannot be used.
    #[error("socket activation: {0}")]
    Activation(String),
    /// Both protocols are off, no socket was passed and there is no `[[attach]]` entry: there
    /// would be nothing to serve on.
    #[error(
        "nothing to listen on: HTTP and NBD are both off (give --http ADDR or --nbd ADDR, a listen address in the config file, or sockets through systemd socket activation)"
    )]
    Nothing,
}

/// Which protocol a listener serves (never inferred from the port). The closed set of front
/// ends; `accept::Service` pairs each with its running service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 range server.
    Http,
    /// NBD server.
    Nbd,
    /// HTTP over TLS (the HTTP front end behind a TLS handshake).
    Https,
}

impl Protocol {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Nbd => "NBD",
            Protocol::Https => "HTTPS",
        }
    }
}

/// The listeners to serve: `passed` (socket activation, already adopted), then, for each
/// protocol without a passed socket, the configured ones bound in config order (HTTP
/// addresses, HTTPS addresses, NBD addresses, NBD Unix sockets). Everything is ready before anything is
/// served, so a bad address fails start-up cleanly; no listener at all is an error too. A
/// reload never calls this again, so activated or bound sockets stay as they are.
pub fn obtain(
    config: &Config,
    passed: Vec<(Protocol, Listener)>,
) -> Result<Vec<(Protocol, Listener)>, ListenError> {
    let has = |p: Protocol| passed.iter().any(|(q, _)| *q == p);
    let (http_passed, nbd_passed) = (has(Protocol::Http), has(Protocol::Nbd));
    let https_passed = has(Protocol::Https);
    let mut listeners = passed;
    if !http_passed {
        for a in &config.http.listen {
            for l in Listener::bind_tcp(a)? {
                listeners.push((Protocol::Http, l));
            }
        }
    }
    if !https_passed {
        for a in &config.http.listen_tls {
            for l in Listener::bind_tcp(a)? {
                listeners.push((Protocol::Https, l));
            }
        }
    }
    if !nbd_passed {
        for a in &config.nbd.listen {
            for l in Listener::bind_tcp(a)? {
                listeners.push((Protocol::Nbd, l));
            }
        }
        for p in &config.nbd.unix {
            listeners.push((Protocol::Nbd, Listener::bind_unix(p)?));
        }
    }
    // A daemon that only keeps `[[attach]]` devices attached needs no listener.
    if listeners.is_empty() && config.attach.is_empty() {
        return Err(ListenError::Nothing);
    }
    Ok(listeners)
}

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream socket, with the path to remove at exit (`None`: a passed socket, whose
    /// file belongs to whoever created it).
    Unix(UnixListener, Option<PathBuf>),
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
        let mut failed = Vec::new();
        for a in &addrs {
            match TcpListener::bind(a) {
                Ok(l) => out.push(Listener::Tcp(l)),
                Err(e) => failed.push((a, e)),
            }
        }
        if out.is_empty() {
            // One line: the error says it all (a port in use is not also a warning).
            return Err(ListenError::Bind {
                addr: addr.to_string(),
                source: failed
                    .pop()
                    .map_or_else(|| io::Error::other("address resolved to nothing"), |f| f.1),
            });
        }
        // Some addresses bound (say IPv4 but not IPv6): serve those, and say what is missing.
        for (a, e) in failed {
            log::warn!("cannot listen on {a} (from {addr}): {e}");
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
            .map(|l| Listener::Unix(l, Some(path.to_path_buf())))
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
            Listener::Unix(_, Some(p)) => format!("unix {}", p.display()),
            Listener::Unix(l, None) => match l.local_addr() {
                Ok(a) => match a.as_pathname() {
                    Some(p) => format!("unix {}", p.display()),
                    None => "unix (unnamed)".into(),
                },
                Err(_) => "unix".into(),
            },
        }
    }

    pub(super) fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.set_nonblocking(true),
            Listener::Unix(l, _) => l.set_nonblocking(true),
        }
    }

    pub(super) fn accept(&self) -> io::Result<Conn> {
        let conn = match self {
            Listener::Tcp(l) => Conn::Tcp(l.accept()?.0),
            Listener::Unix(l, _) => Conn::Unix(l.accept()?.0),
        };
        // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
        match &conn {
            Conn::Tcp(s) => {
                s.set_nonblocking(false)?;
                crate::serving::conn::tune_accepted(s);
            }
            Conn::Unix(s) => s.set_nonblocking(false)?,
        }
        Ok(conn)
    }

    pub(super) fn poll_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(p)) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}
