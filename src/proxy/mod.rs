//! nbd-proxy mode and local attach (nbd-proxy.md, nbd.md §6.6): hexzd as a drop-in for
//! OpenBMC's `nbd-proxy`, driving `/dev/nbdX` itself, and attaching local `.hxz` snapshots to
//! the kernel.
//!
//! Files by role: [`json`] and [`config`] read `config.json` as json-c does; [`getopt`] is the
//! original's command line; [`hook`] runs the state hook; [`relay`] moves bytes between stdio
//! and the kernel's socket; [`session`] is the controller that configures the device, waits
//! for events (signals, uevents, hook and kernel endings) and tears down; [`attach`] serves a
//! local snapshot into a session and offers [`attach::Attachment`] for programmatic use;
//! [`program`] is the `nbd-proxy`/`hexzd nbd-proxy` program with its exit statuses; [`notify`]
//! is the sd_notify datagram.
//!
//! The kernel interface itself (ioctls, uevent socket) lives in `crate::kernel`; NBD bytes are
//! only ever produced and parsed by `crate::nbd`.

pub mod attach;
pub mod config;
pub mod getopt;
pub mod hook;
pub mod json;
pub mod notify;
pub mod program;
pub mod relay;
pub mod session;

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

/// Writes one-line messages to stderr as `warnx(3)` does: `PROGRAM: message`. Shared by the
/// threads of a session; tests capture the text.
#[derive(Clone)]
pub struct Reporter {
    prefix: String,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Reporter {
    /// Messages prefixed with `prefix` (the program's name) to `out`.
    pub fn new(prefix: impl Into<String>, out: Box<dyn Write + Send>) -> Reporter {
        Reporter {
            prefix: prefix.into(),
            out: Arc::new(Mutex::new(out)),
        }
    }

    /// Messages to stderr.
    pub fn stderr(prefix: impl Into<String>) -> Reporter {
        Reporter::new(prefix, Box::new(std::io::stderr()))
    }

    /// Writes `PREFIX: msg` and a newline. Failures to write are ignored (stderr closed).
    pub fn say(&self, msg: &str) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(out, "{}: {msg}", self.prefix);
        let _ = out.flush();
    }

    /// Writes raw bytes (getopt's diagnostics and the usage text).
    pub fn raw(&self, bytes: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = out.write_all(bytes);
        let _ = out.flush();
    }
}
