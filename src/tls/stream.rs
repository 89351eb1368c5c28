//! rustls on the daemon's blocking, thread-per-connection sockets: the server handshake with a
//! deadline ([`accept`]), then a connection in two halves, [`TlsReader`] and [`TlsWriter`],
//! that behave like the halves of a plaintext [`Conn`] to the front ends: reads time out like
//! SO_RCVTIMEO, writes return within their stall tick like SO_SNDTIMEO, and
//! [`WaitWritable`] waits for room.
//!
//! **Why two halves over one locked connection.** NBD transmission reads requests on one
//! thread while handler threads write replies (`nbd::transmission`), and a rustls connection
//! cannot be split. The halves share one `ServerConnection` behind a mutex, on a socket in
//! non-blocking mode: a half takes the lock only for non-blocking steps (decrypting what has
//! arrived, encrypting up to the buffer limit, a `read`/`writev` that returns at once) and
//! waits in `poll` without it, so a reader waiting for the next request never holds up a
//! reply, and a stalled reply never holds up the reader. The alternative, a pump thread per
//! connection relaying between the TCP socket and a plaintext socketpair, would leave the
//! front ends untouched but copy every byte twice more and add a thread and two wake-ups per
//! reply. Measured (README "TLS"): nbdcopy over TLS runs at 0.55 of its plaintext speed here
//! (qemu-nbd's own TLS: 0.48), and a profile shows encryption (7 % of the server's CPU) and
//! the copy into records, not the lock.
//!
//! **Writes that time out mid-record.** rustls encrypts what it accepts at once and keeps the
//! records it has not sent yet. A write call first sends what is left of earlier records
//! (waiting at most its tick for room), and only then accepts new plaintext; bytes it accepts
//! count as written even if the socket takes only part of their records, because those stay
//! queued in the connection, in order, and go out first on the next call. So a stall never
//! drops or repeats a byte of the TLS stream; it only leaves records queued, which
//! [`Write::flush`] sends (callers flush at the end of a response: `serving::conn`). The
//! queue is bounded by rustls's buffer limit ([`SEND_BUFFER`]), so a client that stops
//! reading holds at most that much here.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv};
use rustls::{ServerConfig, ServerConnection};

use super::TlsError;
use super::sniff::{Hello, classify};
use crate::serving::conn::{ReadTimeout, WaitWritable};
use crate::serving::{Conn, is_disconnect};

/// Encrypted bytes a connection queues before a write call stops accepting plaintext: the
/// most a stalled client holds here besides its socket buffers.
pub const SEND_BUFFER: usize = 64 * 1024;

/// The socket and the TLS state both halves share.
#[derive(Debug)]
struct Shared {
    tls: Mutex<ServerConnection>,
    sock: Conn,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ServerConnection> {
        self.tls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.fd()
    }

    /// Sends queued records until none is left (`true`) or the socket is full (`false`).
    fn send_queued(&self, tls: &mut ServerConnection) -> io::Result<bool> {
        let mut io = SockIo(&self.sock);
        while tls.wants_write() {
            match tls.write_tls(&mut io) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Non-blocking reads and writes on the shared socket, for rustls.
struct SockIo<'a>(&'a Conn);

impl Read for SockIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0 {
            Conn::Tcp(s) => (&mut &*s).read(buf),
            Conn::Unix(s) => (&mut &*s).read(buf),
        }
    }
}

impl Write for SockIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0 {
            Conn::Tcp(s) => (&mut &*s).write(buf),
            Conn::Unix(s) => (&mut &*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.0 {
            Conn::Tcp(s) => (&mut &*s).write_vectored(bufs),
            Conn::Unix(s) => (&mut &*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits until `fd` has `flags` (or an error or hang-up) or `deadline` passes (`None`: no
/// deadline); false when the deadline passed.
fn wait(fd: BorrowedFd<'_>, flags: PollFlags, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(fd, flags)];
        match poll(&mut fds, timeout) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

fn set_nonblocking(conn: &Conn) -> io::Result<()> {
    match conn {
        Conn::Tcp(s) => s.set_nonblocking(true),
        Conn::Unix(s) => s.set_nonblocking(true),
    }
}

/// Waits until `deadline` for the first bytes of a connection and says what they are, without
/// consuming them (the handshake, or a refusal, reads them).
pub fn peek_hello(conn: &Conn, deadline: Instant) -> Result<Hello, TlsError> {
    if !wait(conn.fd(), PollFlags::POLLIN, Some(deadline)).map_err(TlsError::Io)? {
        return Err(TlsError::HandshakeTimeout);
    }
    let mut b = [0u8; 8];
    loop {
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        match recv(conn.fd().as_raw_fd(), &mut b, flags) {
            Ok(0) => {
                return Err(TlsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection without sending anything",
                )));
            }
            Ok(n) => return Ok(classify(&b[..n])),
            Err(nix::errno::Errno::EINTR) => {}
            // Readable but nothing there (a spurious wake-up): let the handshake decide.
            Err(nix::errno::Errno::EAGAIN) => return Ok(Hello::Unknown),
            Err(e) => return Err(TlsError::Io(io::Error::from(e))),
        }
    }
}

/// Runs the server side of a TLS handshake on `conn` with `config`, to be finished by
/// `deadline`. The socket is switched to non-blocking mode for good. Failures are
/// [`TlsError::HandshakeTimeout`], [`TlsError::Handshake`] (the TLS alert rustls sent, if the
/// socket took it, says why to the client) or [`TlsError::Io`] (the client went away).
pub fn accept(
    conn: Conn,
    config: Arc<ServerConfig>,
    deadline: Instant,
) -> Result<(TlsReader, TlsWriter), TlsError> {
    set_nonblocking(&conn).map_err(TlsError::Io)?;
    let mut tls = ServerConnection::new(config).map_err(|e| TlsError::Rustls(e.to_string()))?;
    tls.set_buffer_limit(Some(SEND_BUFFER));
    let mut io = SockIo(&conn);
    let fd = conn.fd();
    loop {
        // A client dripping its hello a byte at a time is still bounded by the deadline.
        if Instant::now() >= deadline {
            return Err(TlsError::HandshakeTimeout);
        }
        while tls.wants_write() {
            match tls.write_tls(&mut io) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wait(fd, PollFlags::POLLOUT, Some(deadline)).map_err(TlsError::Io)? {
                        return Err(TlsError::HandshakeTimeout);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TlsError::Io(e)),
            }
        }
        if !tls.is_handshaking() {
            break;
        }
        match tls.read_tls(&mut io) {
            Ok(0) => {
                return Err(TlsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    // rustls has queued the alert that tells the client why: send it if the
                    // socket takes it now, and close either way.
                    let _ = tls.write_tls(&mut io);
                    return Err(TlsError::Handshake(e.to_string()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait(fd, PollFlags::POLLIN, Some(deadline)).map_err(TlsError::Io)? {
                    return Err(TlsError::HandshakeTimeout);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TlsError::Io(e)),
        }
    }
    let shared = Arc::new(Shared {
        tls: Mutex::new(tls),
        sock: conn,
    });
    Ok((
        TlsReader {
            shared: Arc::clone(&shared),
            timeout: None,
        },
        TlsWriter { shared, tick: None },
    ))
}

/// The reading half: decrypted bytes, with a per-call timeout like SO_RCVTIMEO.
#[derive(Debug)]
pub struct TlsReader {
    shared: Arc<Shared>,
    timeout: Option<Duration>,
}

impl TlsReader {
    /// True when a read would not have to wait for the socket: decrypted bytes are waiting,
    /// or the client has closed.
    pub fn has_buffered(&self) -> bool {
        match self.shared.lock().process_new_packets() {
            Ok(st) => st.plaintext_bytes_to_read() > 0 || st.peer_has_closed(),
            // The next read reports the error.
            Err(_) => true,
        }
    }

    /// Waits up to `wait` for something to read (or the end of the connection).
    pub fn wait_readable(&self, wait_for: Duration) -> io::Result<bool> {
        if self.has_buffered() {
            return Ok(true);
        }
        wait(
            self.shared.fd(),
            PollFlags::POLLIN,
            Some(Instant::now() + wait_for),
        )
    }

    /// The socket, for `poll` and logs.
    pub fn conn(&self) -> &Conn {
        &self.shared.sock
    }
}

impl ReadTimeout for TlsReader {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.timeout = t;
        Ok(())
    }
}

impl Read for TlsReader {
    /// Returns decrypted bytes; `Ok(0)` once the client sent close_notify, `UnexpectedEof` if
    /// it closed without; `WouldBlock` when nothing came within the timeout; `InvalidData`
    /// for a TLS protocol error (after sending rustls's alert if the socket takes it).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = self.timeout.map(|t| Instant::now() + t);
        loop {
            {
                let mut tls = self.shared.lock();
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match tls.read_tls(&mut SockIo(&self.shared.sock)) {
                    // EOF is recorded by rustls: the next `reader().read` reports it.
                    Ok(0) => continue,
                    Ok(_) => {
                        if let Err(e) = tls.process_new_packets() {
                            let _ = self.shared.send_queued(&mut tls);
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                        }
                        // Records the reading produced (a KeyUpdate answer, an alert) go out
                        // now if the socket takes them; otherwise with the next reply.
                        if let Err(e) = self.shared.send_queued(&mut tls) {
                            if !is_disconnect(&e) {
                                return Err(e);
                            }
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if !wait(self.shared.fd(), PollFlags::POLLIN, deadline)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }
}

/// The writing half: plaintext in, records out, each call returning within its tick.
#[derive(Debug)]
pub struct TlsWriter {
    shared: Arc<Shared>,
    tick: Option<Duration>,
}

impl TlsWriter {
    /// Sets how long one write or flush call waits for room (like SO_SNDTIMEO; `None`: no
    /// limit). Timed-out calls fail with `WouldBlock`.
    pub fn set_write_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.tick = t;
        Ok(())
    }

    /// Queues close_notify and sends what the socket takes now, without waiting: a polite
    /// end of the TLS stream where the socket has room for it.
    pub fn close_notify(&self) {
        let mut tls = self.shared.lock();
        tls.send_close_notify();
        let _ = self.shared.send_queued(&mut tls);
    }

    /// Another handle on the writing half (the same connection), to send close_notify after
    /// the writer itself has been handed to the transmission loop.
    pub fn handle(&self) -> TlsWriter {
        TlsWriter {
            shared: Arc::clone(&self.shared),
            tick: self.tick,
        }
    }

    /// Shuts the socket down (both directions): wakes a reader waiting on it.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = self.shared.sock.shutdown(how);
    }

    /// The socket, for logs.
    pub fn conn(&self) -> &Conn {
        &self.shared.sock
    }

    fn deadline(&self) -> Option<Instant> {
        self.tick.map(|t| Instant::now() + t)
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        let deadline = self.deadline();
        loop {
            {
                let mut tls = self.shared.lock();
                if self.shared.send_queued(&mut tls)? {
                    let n = tls.writer().write_vectored(bufs)?;
                    // Accepted bytes are written whatever the socket takes now: their records
                    // stay queued and go first next time (module doc). A socket error shows
                    // again on that next call.
                    let _ = self.shared.send_queued(&mut tls);
                    return Ok(n);
                }
            }
            if !wait(self.shared.fd(), PollFlags::POLLOUT, deadline)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Sends every queued record, waiting at most the tick for room (`WouldBlock` after it).
    fn flush(&mut self) -> io::Result<()> {
        let deadline = self.deadline();
        loop {
            if self.shared.send_queued(&mut self.shared.lock())? {
                return Ok(());
            }
            if !wait(self.shared.fd(), PollFlags::POLLOUT, deadline)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }
}

impl WaitWritable for TlsWriter {
    fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
        if !self.shared.lock().wants_write() {
            return Ok(true);
        }
        wait(
            self.shared.fd(),
            PollFlags::POLLOUT,
            Some(Instant::now() + timeout),
        )
    }
}

impl AsFd for TlsWriter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.fd()
    }
}
