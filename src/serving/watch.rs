//! Polling for a client's next request before a connection's thread blocks in `read`.
//!
//! A client that sends its next request as soon as it has the answer (wrk, fio at queue depth
//! 1, a forensic tool reading range after range) does so within a loopback round trip. A thread
//! that polls its socket that long takes the request without being put to sleep and woken,
//! which on this project's 2-core VM cost more than answering a cached 4 KiB request.
//! `yield_now` between polls lets other runnable threads go first, and only one thread of the
//! process polls at a time, so a slow client wastes at most one core's [`WATCH`] per answer.
//!
//! Measured (2026-11-29, same binary, window set by an experimental variable, interleaved):
//! HTTP, wrk, random 4 KiB ranges from the cache: 8 connections 70–79 k req/s without, 86–95 k
//! with 20 µs (50 µs: no better); 1 connection 13–15 k without, 19–37 k with; 64 connections
//! and 1 MiB ranges within noise. NBD: see `nbd::transmission`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long one thread polls for the next request before it blocks.
pub const WATCH: Duration = Duration::from_micros(20);

/// Set while some connection's thread polls (one at a time, process-wide).
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Polls `ready` (whether the client has sent something, or closed) for up to [`WATCH`],
/// yielding between polls, unless another thread is polling already. Returns when `ready`
/// says so or the time is up; the caller then reads (blocking if need be).
pub fn watch(ready: impl FnMut() -> bool) {
    watch_with(&WATCHING, ready);
}

/// [`watch`] with its one-at-a-time flag given (tests use their own).
fn watch_with(watching: &AtomicBool, mut ready: impl FnMut() -> bool) {
    if watching.swap(true, Ordering::Acquire) {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < WATCH {
        if ready() {
            break;
        }
        std::thread::yield_now();
    }
    watching.store(false, Ordering::Release);
}

/// Whether a connection has something to read now (or has closed), without blocking: what
/// [`watch`] polls.
pub trait ReadableNow {
    /// `true` also when it cannot tell: the caller then simply reads.
    fn readable_now(&self) -> bool;
}

impl ReadableNow for super::Conn {
    fn readable_now(&self) -> bool {
        self.wait_readable(Duration::ZERO).unwrap_or(true)
    }
}

impl ReadableNow for crate::tls::TlsReader {
    fn readable_now(&self) -> bool {
        self.wait_readable(Duration::ZERO).unwrap_or(true)
    }
}

/// `hexzd serve --stdio`: no polling.
impl ReadableNow for std::fs::File {
    fn readable_now(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_when_ready_and_gives_up_after_the_window() {
        let flag = AtomicBool::new(false);
        let mut polls = 0;
        watch_with(&flag, || {
            polls += 1;
            polls == 3
        });
        assert_eq!(polls, 3);
        let start = Instant::now();
        watch_with(&flag, || false);
        assert!(start.elapsed() >= WATCH);
        // The flag is free again afterwards: a second watcher polls too.
        let mut polled = false;
        watch_with(&flag, || {
            polled = true;
            true
        });
        assert!(polled);
    }

    #[test]
    fn only_one_thread_polls_at_a_time() {
        let flag = AtomicBool::new(true);
        let mut polled = false;
        watch_with(&flag, || {
            polled = true;
            true
        });
        assert!(!polled, "another thread holds the flag: no polling");
    }
}
