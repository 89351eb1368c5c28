//! The cap on READ payload in flight on one connection ([`BYTES_IN_FLIGHT`]): the reader
//! thread acquires a READ's bytes before dispatching it and waits while the cap is reached;
//! the reply releases them.

use std::sync::{Condvar, Mutex, PoisonError};

/// READ bytes dispatched but not yet replied, per connection. One READ of the maximum size is
/// always admitted when nothing else is in flight.
pub const BYTES_IN_FLIGHT: u64 = 64 * 1024 * 1024;

/// Bytes of READ payload in flight on a connection, with a cap the reader waits on.
#[derive(Debug)]
pub(super) struct InFlight {
    used: Mutex<Used>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct Used {
    bytes: u64,
    /// The reader waits on `freed` (signalled only then: every reply releases bytes).
    waiting: bool,
}

impl InFlight {
    pub(super) fn new() -> InFlight {
        InFlight {
            used: Mutex::new(Used::default()),
            freed: Condvar::new(),
        }
    }

    pub(super) fn acquire(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        while used.bytes > 0 && used.bytes + n > BYTES_IN_FLIGHT {
            used.waiting = true;
            used = self
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        used.waiting = false;
        used.bytes += n;
    }

    pub(super) fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        used.bytes = used.bytes.saturating_sub(n);
        if used.waiting {
            drop(used);
            self.freed.notify_all();
        }
    }
}
