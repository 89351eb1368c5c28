//! Process-wide shutdown state, owned by `daemon/` and passed to whoever needs it (no globals).
//! Triggering it wakes every accept loop through a pipe they poll, and every thread blocked in
//! [`Shutdown::wait`].

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

/// The shutdown flag plus its wake-up pipe.
#[derive(Debug)]
pub struct Shutdown {
    flag: AtomicBool,
    wake_read: OwnedFd,
    wake_write: OwnedFd,
    lock: Mutex<bool>,
    cv: Condvar,
}

impl Shutdown {
    /// A not-yet-triggered shutdown.
    pub fn new() -> std::io::Result<Shutdown> {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(std::io::Error::from)?;
        Ok(Shutdown {
            flag: AtomicBool::new(false),
            wake_read: r,
            wake_write: w,
            lock: Mutex::new(false),
            cv: Condvar::new(),
        })
    }

    /// Starts shutdown: idempotent, callable from any thread.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // The pipe stays readable forever after: every poller wakes, now or later. A full pipe
        // (EAGAIN) is fine for the same reason.
        let _ = nix::unistd::write(&self.wake_write, &[1u8]);
        let mut done = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *done = true;
        self.cv.notify_all();
    }

    /// True once [`trigger`](Self::trigger) was called.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Blocks until shutdown is triggered.
    pub fn wait(&self) {
        let mut done = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !*done {
            done = self
                .cv
                .wait(done)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// An fd that becomes readable when shutdown is triggered (for `poll`).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }
}
