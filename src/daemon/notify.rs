//! sd_notify without libsystemd (systemd.md §2): one datagram of `KEY=VALUE` lines, sent from
//! an unbound `AF_UNIX` datagram socket to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). The message texts are built by pure functions below; [`Notifier`] only sends.
//!
//! Sending never fails the daemon: without `NOTIFY_SOCKET` nothing is sent, and a send error
//! is logged (the first as a warning, the rest at debug level) and forgotten. systemd
//! identifies the sender by PID, which every thread shares, so `NotifyAccess=main` suffices.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Sends sd_notify messages, or nothing when the service manager did not ask for them.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// True once a send failure has been logged as a warning.
    warned: AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            warned: AtomicBool::new(false),
        }
    }

    /// A notifier for the `NOTIFY_SOCKET` value `socket` (`None`: disabled). An address hexzd
    /// cannot use (e.g. `vsock:`, systemd 253+) is logged and disables notification.
    pub fn new(socket: Option<&OsStr>) -> Notifier {
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return Notifier::disabled();
        };
        let target = address(socket).and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match target {
            Ok(t) => Notifier {
                target: Some(t),
                warned: AtomicBool::new(false),
            },
            Err(e) => {
                log::warn!(
                    "NOTIFY_SOCKET={}: {e}; not notifying the service manager",
                    socket.to_string_lossy()
                );
                Notifier::disabled()
            }
        }
    }

    /// True when messages are actually sent.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `message` (newline-separated `KEY=VALUE` lines) as one datagram.
    pub fn send(&self, message: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        log::debug!("sd_notify: {}", message.replace('\n', " "));
        if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
            if self.warned.swap(true, Ordering::Relaxed) {
                log::debug!("sd_notify failed: {e}");
            } else {
                log::warn!("sd_notify failed: {e} (further failures are logged at debug level)");
            }
        }
    }
}

/// The socket address of a `NOTIFY_SOCKET` value: `/path`, or `@name` (abstract namespace).
fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket),
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only absolute paths and @abstract names are supported",
        )),
    }
}

/// One line of status text: control characters (a newline would start a new `KEY=`) become
/// spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `READY=1` with a status line: start-up done, or a reload finished (either way).
pub fn ready(status: &str) -> String {
    format!("READY=1\nSTATUS={}", one_line(status))
}

/// `RELOADING=1` and `MONOTONIC_USEC` (now, `CLOCK_MONOTONIC` in µs), in one datagram, as
/// `Type=notify-reload` (systemd 253) requires; 252 ignores the timestamp.
pub fn reloading(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the configuration")
}

/// `STOPPING=1` with a status line.
pub fn stopping(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}", one_line(status))
}

/// A status line alone.
pub fn status(status: &str) -> String {
    format!("STATUS={}", one_line(status))
}

/// `WATCHDOG=1`: every accept loop answered its check.
pub fn watchdog() -> String {
    "WATCHDOG=1".to_string()
}

/// `EXTEND_TIMEOUT_USEC`: asks for `more` beyond now (a slow start), with a status line.
pub fn extend_timeout(more: Duration, status: &str) -> String {
    format!(
        "EXTEND_TIMEOUT_USEC={}\nSTATUS={}",
        more.as_micros(),
        one_line(status)
    )
}

/// `CLOCK_MONOTONIC` now, in microseconds (what `MONOTONIC_USEC` carries).
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        let us = Duration::from(t).as_micros();
        u64::try_from(us).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(ready("serving 1"), "READY=1\nSTATUS=serving 1");
        assert_eq!(
            reloading(42),
            "RELOADING=1\nMONOTONIC_USEC=42\nSTATUS=reloading the configuration"
        );
        assert_eq!(stopping("a\nb"), "STOPPING=1\nSTATUS=a b");
        assert_eq!(
            extend_timeout(Duration::from_secs(30), "opening x"),
            "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=opening x"
        );
        assert!(monotonic_usec() > 0);
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.as_os_str()));
        assert!(n.enabled());
        n.send(&ready("ok"));
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=ok");

        let name = format!("hexzd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(Some(OsStr::new(&format!("@{name}"))));
        n.send("WATCHDOG=1");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn unusable_addresses_disable_it() {
        assert!(!Notifier::new(None).enabled());
        assert!(!Notifier::new(Some(OsStr::new(""))).enabled());
        assert!(!Notifier::new(Some(OsStr::new("vsock:2:1234"))).enabled());
        // A socket nobody listens on: sending fails quietly.
        Notifier::new(Some(OsStr::new("/nonexistent/notify"))).send("READY=1");
    }
}
