//! A client connection of either transport (TCP or Unix stream socket), with the handful of
//! socket operations the protocol loops need. Protocol code takes a [`Conn`], never a raw fd.
//!
//! Writes and the send timeout: a connection's SO_SNDTIMEO is a short [`stall_tick`], so a
//! write call returns after at most one tick. [`write_or_stall`] reports a call that waited
//! out the whole tick (nothing, or only part, written: the socket is full) as
//! [`Wrote::Stalled`]: the caller then gives its response buffers back (a client that stopped
//! reading holds no buffer memory) and waits in `poll` for room, up to the rest of the send
//! timeout ([`WaitWritable`]). [`write_all_timed`] is the same for small writes that keep
//! their bytes.

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Longest time a write call waits for room before its caller hears of the stall. Short, so
/// stalled clients give their buffers back quickly; long enough that a client that reads
/// rarely pauses this long (a false alarm only costs reading the data again).
pub const STALL_TICK: Duration = Duration::from_millis(500);

/// Unsent bytes an accepted TCP socket queues before a write waits and `poll` stops calling it
/// writable (TCP_NOTSENT_LOWAT; a writer is woken again below half of it). Without it Linux
/// wakes a writer only once a third of the send buffer is free, and the buffer autotunes to
/// megabytes: a client reading steadily at 20-40 KB/s freed too little per send timeout to
/// wake the writer, and was closed as one that read nothing (review, 2026-11-29: cut after
/// 5 s with `send_timeout = "5s"` while reading 39 KB/s). With it a client that drains 32 KiB
/// per send timeout keeps its connection, and a stalled one holds at most this much unsent
/// data in the kernel besides what is in flight.
///
/// The value, measured with interleaved servers on the reference's 512 MiB image from the
/// cache (`wrk` 1 MiB ranges 5 s, `nbdcopy` to `null:`, 3-5 rounds): unset 2.7-3.1 GB/s
/// nbdcopy, 3.9-5.6 k req/s; 16 KiB 2.9-4.4 GB/s; 64 KiB 4.2-4.9 GB/s, 3.8-5.5 k req/s;
/// 128 KiB 4.0 GB/s; 256 KiB 2.9-3.7 GB/s, 4.8-5.3 k req/s. 4 KiB ranges and `fio` at queue
/// depth 1 and 32 did not change. Smaller queues keep the bytes a client is about to read in
/// the CPU caches (on loopback both copies happen on this machine).
pub const NOTSENT_LOWAT: u32 = 64 * 1024;

/// Socket options of an accepted TCP connection: [`NOTSENT_LOWAT`]. Best effort: without it
/// only slow readers are worse off.
pub fn tune_accepted(s: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(s).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
        log::debug!("TCP_NOTSENT_LOWAT: {e}");
    }
}

/// The SO_SNDTIMEO for a send timeout: [`STALL_TICK`], or the send timeout if shorter.
pub fn stall_tick(send_timeout: Duration) -> Duration {
    send_timeout.min(STALL_TICK).max(Duration::from_millis(1))
}

/// Who is on the other end, for per-client limits: an IP address (IPv4-mapped IPv6 addresses
/// as IPv4), or a local user (Unix sockets, by SO_PEERCRED uid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// A TCP peer.
    Ip(IpAddr),
    /// A Unix-socket peer's user id.
    Uid(u32),
}

impl ClientId {
    /// True for peers on this host: loopback addresses and Unix sockets.
    pub fn is_local(self) -> bool {
        match self {
            ClientId::Ip(ip) => ip.is_loopback(),
            ClientId::Uid(_) => true,
        }
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientId::Ip(ip) => write!(f, "{ip}"),
            ClientId::Uid(u) => write!(f, "uid {u}"),
        }
    }
}

/// Waiting for a socket to take more bytes.
pub trait WaitWritable {
    /// Waits up to `timeout` for room to write; false if there was none by then.
    fn wait_writable(&self, timeout: Duration) -> io::Result<bool>;
}

/// A reader whose reads can be bounded in time, like SO_RCVTIMEO: a read that gets nothing
/// within the timeout fails with `WouldBlock` or `TimedOut`. Plaintext sockets and TLS readers.
pub trait ReadTimeout: Read {
    /// Sets the timeout (`None`: reads wait forever).
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;
}

impl ReadTimeout for Conn {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        Conn::set_read_timeout(self, t)
    }
}

/// Blocking files (stdio) always take bytes eventually; they have no send timeout.
impl WaitWritable for std::fs::File {
    fn wait_writable(&self, _timeout: Duration) -> io::Result<bool> {
        Ok(true)
    }
}

impl WaitWritable for Conn {
    fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
        self.wait_for(PollFlags::POLLOUT, timeout)
    }
}

/// How a [`write_or_stall`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// Everything was written.
    All,
    /// A write made no progress for a tick; `written` bytes went out before it.
    Stalled {
        /// Bytes written by this call.
        written: usize,
    },
}

/// Writes `bufs` whole, or stops after the first write call that waited a whole `tick` (the
/// socket's SO_SNDTIMEO) for room: one that timed out, or took the tick to write only part.
/// Ends with a flush: a TLS writer takes bytes before their records are all on the wire, and
/// a flush that times out is a stall too (with every byte of `bufs` written). Plaintext
/// sockets flush at no cost.
pub fn write_or_stall(
    w: &mut impl Write,
    mut bufs: &mut [IoSlice<'_>],
    tick: Duration,
) -> io::Result<Wrote> {
    IoSlice::advance_slices(&mut bufs, 0);
    let mut written = 0;
    while !bufs.is_empty() {
        let started = Instant::now();
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n;
                IoSlice::advance_slices(&mut bufs, n);
                if !bufs.is_empty() && started.elapsed() >= tick {
                    return Ok(Wrote::Stalled { written });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Ok(Wrote::Stalled { written }),
            Err(e) => return Err(e),
        }
    }
    loop {
        match w.flush() {
            Ok(()) => return Ok(Wrote::All),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Ok(Wrote::Stalled { written }),
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bufs` whole, waiting through stalls; fails with `TimedOut` after `send_timeout`
/// without progress. For small writes (heads, short replies) whose bytes are kept anyway.
pub fn write_all_timed<W: Write + WaitWritable>(
    w: &mut W,
    bufs: &mut [IoSlice<'_>],
    send_timeout: Duration,
) -> io::Result<()> {
    let mut bufs = bufs;
    loop {
        match write_or_stall(w, bufs, stall_tick(send_timeout))? {
            Wrote::All => return Ok(()),
            Wrote::Stalled { written } => {
                IoSlice::advance_slices(&mut bufs, written);
                wait_after_stall(w, send_timeout)?;
            }
        }
    }
}

/// After a stall: waits for room for the rest of the send timeout (a tick has passed
/// already); `TimedOut` if none came.
pub fn wait_after_stall(w: &impl WaitWritable, send_timeout: Duration) -> io::Result<()> {
    let rest = send_timeout.saturating_sub(stall_tick(send_timeout));
    if w.wait_writable(rest)? {
        Ok(())
    } else {
        Err(send_timed_out(send_timeout))
    }
}

/// The error of a send timeout.
pub fn send_timed_out(send_timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "send timeout: the client read nothing for {} ms",
            send_timeout.as_millis()
        ),
    )
}

/// True for the errors of a socket timeout.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// An accepted (or connected) stream socket.
#[derive(Debug)]
pub enum Conn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain stream connection.
    Unix(UnixStream),
}

impl Conn {
    /// Waits up to `timeout` for the client to send something (or close); false if it sent
    /// nothing by then.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        self.wait_for(PollFlags::POLLIN, timeout)
    }

    /// Waits up to `timeout` for `flags` on the socket. An error or hang-up condition also
    /// ends the wait: the next read or write says which.
    fn wait_for(&self, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let t = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.fd(), flags)];
            match poll(&mut fds, t) {
                Ok(n) if n > 0 => return Ok(true),
                Ok(_) if left.is_zero() => return Ok(false),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    /// A second handle to the same socket (for a separate reader and writer thread).
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    /// Sets SO_RCVTIMEO (`None` = block forever). Reads then fail with `WouldBlock` or
    /// `TimedOut` after the timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Sets SO_SNDTIMEO (`None` = block forever): bounds how long a client that stops reading
    /// can hold a writer.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(t),
            Conn::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// Turns Nagle off on TCP (no-op on Unix sockets).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_nodelay(true),
            Conn::Unix(_) => Ok(()),
        }
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(how),
            Conn::Unix(s) => s.shutdown(how),
        }
    }

    /// The socket's descriptor, for `poll`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Tcp(s) => s.as_fd(),
            Conn::Unix(s) => s.as_fd(),
        }
    }

    /// The peer for per-client limits; `None` if the kernel cannot say.
    pub fn client_id(&self) -> Option<ClientId> {
        match self {
            Conn::Tcp(s) => s.peer_addr().ok().map(|a| {
                let ip = match a.ip() {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                    v4 => v4,
                };
                ClientId::Ip(ip)
            }),
            Conn::Unix(s) => {
                nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
                    .ok()
                    .map(|c| ClientId::Uid(c.uid()))
            }
        }
    }

    /// The peer, for logs: `ip:port` for TCP, `unix` for Unix sockets.
    pub fn peer(&self) -> String {
        match self {
            Conn::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "unknown".to_string(), |a| a.to_string()),
            Conn::Unix(_) => "unix".to_string(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write_vectored(bufs),
            Conn::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// True for errors that mean the peer went away (logged at debug level, style.md §4).
pub fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    )
}

/// `write_all` over several buffers (std's `write_all_vectored` is unstable): one `writev` per
/// round, so a reply's header and its data usually leave in one segment.
pub fn write_all_vectored(w: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
