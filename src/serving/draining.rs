//! The one piece of shutdown state the front ends see: a flag the daemon sets when a graceful
//! stop begins. Connection loops check it before taking each new request (an HTTP request
//! head, an NBD request header) and close instead; what is already in flight finishes. The
//! daemon owns the rest of the stop (waking idle connections, the deadline, cutting what is
//! left).

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once, when the daemon stops; never cleared.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// A flag not yet set.
    pub fn new() -> Draining {
        Draining::default()
    }

    /// Tells every connection to take no new request.
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once [`start`](Self::start) was called.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
