//! One connection of the HTTP front end, plaintext or TLS, with the socket operations its loop
//! needs (`http::connection`): reads with a timeout, writes within a stall tick, waiting for
//! bytes or room, and the ways of closing. The TLS case is both halves of `stream` used by one
//! thread (the lock is never contended).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use super::stream::{TlsReader, TlsWriter};
use crate::serving::Conn;
use crate::serving::conn::{ReadTimeout, WaitWritable};

/// A served connection: plaintext, or TLS after its handshake.
#[derive(Debug)]
pub enum Transport {
    /// A plaintext socket in blocking mode.
    Plain(Conn),
    /// A TLS connection (its socket is non-blocking; the halves wait in `poll`).
    Tls(TlsReader, TlsWriter),
}

impl Transport {
    /// The socket.
    pub fn conn(&self) -> &Conn {
        match self {
            Transport::Plain(c) => c,
            Transport::Tls(r, _) => r.conn(),
        }
    }

    /// True for TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(..))
    }

    /// Prepares the socket: blocking mode for plaintext (the timeouts below need it), no
    /// Nagle delay, and the read timeout and write tick.
    pub fn setup(&mut self, read_timeout: Duration, write_tick: Duration) -> io::Result<()> {
        match self {
            Transport::Plain(c) => {
                match c {
                    Conn::Tcp(s) => s.set_nonblocking(false)?,
                    Conn::Unix(s) => s.set_nonblocking(false)?,
                }
                c.set_read_timeout(Some(read_timeout))?;
                c.set_write_timeout(Some(write_tick))?;
            }
            Transport::Tls(r, w) => {
                r.set_read_timeout(Some(read_timeout))?;
                w.set_write_timeout(Some(write_tick))?;
            }
        }
        self.conn().set_nodelay()
    }

    /// Waits up to `wait` for the client to send something (or close).
    pub fn wait_readable(&self, wait: Duration) -> io::Result<bool> {
        match self {
            Transport::Tls(r, _) => r.wait_readable(wait),
            Transport::Plain(c) => c.wait_readable(wait),
        }
    }

    /// Stops sending: close_notify first over TLS (when the socket takes it), then FIN.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(_, w) = self {
            w.close_notify();
        }
        let _ = self.conn().shutdown(Shutdown::Write);
    }

    /// Ends the TLS stream politely before the socket closes (nothing for plaintext).
    pub fn close(&mut self) {
        if let Transport::Tls(_, w) = self {
            w.close_notify();
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(c) => c.read(buf),
            Transport::Tls(r, _) => r.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(c) => c.write(buf),
            Transport::Tls(_, w) => w.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(c) => c.write_vectored(bufs),
            Transport::Tls(_, w) => w.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(_, w) => w.flush(),
        }
    }
}

impl WaitWritable for Transport {
    fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
        match self {
            Transport::Plain(c) => c.wait_writable(timeout),
            Transport::Tls(_, w) => w.wait_writable(timeout),
        }
    }
}
