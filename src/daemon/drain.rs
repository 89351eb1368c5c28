//! The graceful stop (design.md §4 `[daemon] shutdown_timeout`, systemd.md §4): once the accept
//! loops have stopped, every connection is told to take no new request, idle ones are woken
//! so that they close at once, in-flight HTTP responses and NBD commands get until the
//! deadline to finish, and whatever is still open then is cut.
//!
//! How connections are told, in the smallest way that reaches a thread blocked anywhere:
//! - the [`Draining`] flag, which the HTTP and NBD loops check before each new request;
//! - `shutdown(SHUT_RD)` on every open connection ([`OpenConns`] keeps a second handle to
//!   each): a thread waiting for a request (an idle keep-alive connection, an idle NBD client,
//!   a handshake) reads end-of-file and closes; a thread sending a response is not disturbed;
//! - at the deadline, `shutdown(SHUT_RDWR)`: a send in progress fails and its thread ends.

use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::serving::{Conn, Draining, Metrics, get};

/// How often the drain looks at the connection gauges.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A second handle on every open connection, so the stop can reach threads blocked in a read
/// or a write. Costs one file descriptor per connection (counted in `limits`).
#[derive(Debug, Default)]
pub struct OpenConns {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Conn>>,
}

impl OpenConns {
    /// An empty set.
    pub fn new() -> OpenConns {
        OpenConns::default()
    }

    /// Keeps a handle on `conn`; `None` when the handle cannot be made (out of descriptors):
    /// that connection is then only reached by the [`Draining`] flag and the process exit.
    pub fn register(&self, conn: &Conn) -> Option<u64> {
        let handle = conn.try_clone().ok()?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, handle);
        Some(id)
    }

    /// Forgets connection `id` (its thread has ended), closing the handle.
    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Shuts down `how` on every open connection; returns how many there are.
    pub fn shutdown_all(&self, how: Shutdown) -> usize {
        let conns = self.lock();
        for c in conns.values() {
            // ENOTCONN when the peer has already gone: nothing to do.
            let _ = c.shutdown(how);
        }
        conns.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Conn>> {
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Connections open now, both protocols.
fn open_connections(metrics: &Metrics) -> u64 {
    get(&metrics.http.connections_active) + get(&metrics.nbd.connections_active)
}

/// Stops every connection gracefully within `timeout` (see the module doc). Call after the
/// accept loops have ended.
pub fn drain(metrics: &Metrics, open: &OpenConns, draining: &Draining, timeout: Duration) {
    draining.start();
    open.shutdown_all(Shutdown::Read);
    let deadline = Instant::now() + timeout;
    let mut left = open_connections(metrics);
    if left > 0 {
        log::info!("waiting up to {timeout:?} for {left} connection(s) to finish");
    }
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(DRAIN_POLL.min(deadline.saturating_duration_since(Instant::now())));
        left = open_connections(metrics);
    }
    if left > 0 {
        open.shutdown_all(Shutdown::Both);
        log::warn!("{left} connection(s) still busy at the shutdown deadline ({timeout:?}); cut");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;

    #[test]
    fn shutdown_read_wakes_a_blocked_reader_and_remove_forgets() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let open = OpenConns::new();
        let id = open.register(&Conn::Unix(a.try_clone().unwrap())).unwrap();
        let reader = std::thread::spawn(move || {
            let mut a = a;
            a.read(&mut [0u8; 8]).unwrap()
        });
        assert_eq!(open.shutdown_all(Shutdown::Read), 1);
        assert_eq!(reader.join().unwrap(), 0);
        open.remove(id);
        assert_eq!(open.shutdown_all(Shutdown::Read), 0);
    }
}
