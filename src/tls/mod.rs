//! TLS for both front ends (design.md §2 `tls/`): rustls set-up, the certificate directory
//! (qemu-nbd's and nbdkit's x509 layout), verify-peer, reload, and rustls on the blocking
//! sockets. No protocol details: HTTPS (`http`) and NBD STARTTLS (`nbd`) call in here.
//!
//! Files by role: `certs` reads and checks the directory and builds the rustls
//! configurations; `context` holds the ones in effect and swaps them on reload; `stream` runs
//! handshakes and splits a connection into a reading and a writing half; `transport` is the
//! HTTP connection's plaintext-or-TLS socket; `sniff` tells a ClientHello from a request line.

pub mod certs;
mod context;
pub mod sniff;
mod stream;
mod transport;

use std::path::PathBuf;

pub use context::{TlsContext, TlsSettings};
pub use stream::{SEND_BUFFER, TlsReader, TlsWriter, accept, peek_hello};
pub use transport::Transport;

/// A TLS failure: loading certificates (naming the file), or one connection's handshake.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the certificate directory is missing, unreadable or unusable.
    #[error("{path}: {problem}", path = path.display())]
    File { path: PathBuf, problem: String },
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// The handshake failed (the client's hello, its certificate, a protocol error).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The socket failed or the client went away during the handshake.
    #[error("TLS handshake: {0}")]
    Io(std::io::Error),
}
