//! Moving bytes between the remote NBD server's stream (stdin/stdout) and hexzd's end of the
//! kernel's socketpair, one thread per direction (nbd-proxy.md §7 step 7). Nothing here looks
//! at the bytes.
//!
//! `splice(2)` moves data without copying it through user space, but needs a pipe on one side:
//! it is used from stdin into the socket when stdin is a pipe or FIFO (bmcweb and websocketd
//! give pipes), and `read`/`write` with a large buffer everywhere else, or when the kernel
//! refuses (nbd-proxy.md §11). [`StdioBackend`] is the relay as a session backend.
//! A peer closing its end (EOF, `EPIPE`, `ECONNRESET`) is an end of stream, not an error.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use crossbeam_channel::Sender;

use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice};
use nix::sys::stat::{SFlag, fstat};

use super::session::{Backend, Event, Export};
use crate::nbd::client::{ClientError, handshake};
use crate::nbd::proto::NBD_FLAG_READ_ONLY;

/// Bytes moved per `splice` call, as the original (128 KiB).
const SPLICE_LEN: usize = 128 * 1024;
/// Buffer of the read/write fallback.
const COPY_BUFFER: usize = 256 * 1024;

/// How one direction of the relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// The sending side closed (or the receiving side went away).
    Eof,
    /// An I/O error, with the original's wording (`read failure: …`, `write failure: …`,
    /// `splice: …`).
    Error(String),
}

fn is_pipe(f: &impl AsFd) -> bool {
    fstat(f.as_fd())
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO)
}

fn is_hangup(e: Errno) -> bool {
    matches!(e, Errno::EPIPE | Errno::ECONNRESET)
}

/// Copies `from` to `to` until EOF or an error. Uses `splice` when `from` is a pipe.
///
/// Only in that direction: splicing from the socket whose peer is the kernel's NBD client into
/// a pipe stalled on Linux 6.1 (observed in tools/nbdvm: the kernel's first request never
/// reached the pipe and timed out), while `read` on the same socket gets it at once.
pub fn pump(from: &File, to: &File) -> RelayEnd {
    if is_pipe(from) {
        match splice_loop(from, to) {
            Some(end) => return end,
            // The kernel cannot splice between these two: copy instead.
            None => log::debug!("splice refused; relaying with read/write"),
        }
    }
    copy_loop(from, to)
}

/// `None` if the first `splice` fails with `EINVAL` (unsupported pair of files).
fn splice_loop(from: &File, to: &File) -> Option<RelayEnd> {
    let mut first = true;
    loop {
        match splice(
            from,
            None,
            to,
            None,
            SPLICE_LEN,
            SpliceFFlags::SPLICE_F_MOVE,
        ) {
            Ok(0) => return Some(RelayEnd::Eof),
            Ok(_) => first = false,
            Err(Errno::EINTR) => {}
            Err(Errno::EINVAL) if first => return None,
            Err(e) if is_hangup(e) => return Some(RelayEnd::Eof),
            Err(e) => return Some(RelayEnd::Error(format!("splice: {}", e.desc()))),
        }
    }
}

fn is_io_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

fn copy_loop(mut from: &File, mut to: &File) -> RelayEnd {
    let mut buf = vec![0u8; COPY_BUFFER];
    let desc = |e: &io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return RelayEnd::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_io_hangup(&e) => return RelayEnd::Eof,
            Err(e) => return RelayEnd::Error(format!("read failure: {}", desc(&e))),
        };
        match to.write_all(&buf[..n]) {
            Ok(()) => {}
            Err(e) if is_io_hangup(&e) => return RelayEnd::Eof,
            Err(e) => return RelayEnd::Error(format!("write failure: {}", desc(&e))),
        }
    }
}

/// The relay backend of a session: the remote NBD server's stream on stdin and stdout.
#[derive(Debug)]
pub struct StdioBackend {
    input: File,
    output: File,
}

/// stdin and stdout as one `Read + Write` stream for the handshake.
struct Duplex<'a>(&'a File, &'a File);

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.1.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StdioBackend {
    /// A backend over `input` (the server's replies) and `output` (requests to the server).
    pub fn new(input: File, output: File) -> StdioBackend {
        StdioBackend { input, output }
    }

    /// A backend over this process's stdin and stdout (duplicated descriptors).
    pub fn stdio() -> io::Result<StdioBackend> {
        let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        let output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        Ok(StdioBackend::new(input, output))
    }
}

impl Backend for StdioBackend {
    fn connect(&mut self) -> Result<Export, String> {
        match handshake(&mut Duplex(&self.input, &self.output), "") {
            Ok(e) => Ok(Export {
                size: e.size,
                flags: e.flags,
                read_only: e.flags & NBD_FLAG_READ_ONLY != 0,
            }),
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                Err("the NBD server closed the connection during the handshake".into())
            }
            Err(e) => Err(format!("NBD handshake failed: {e}")),
        }
    }

    fn serve(self: Box<Self>, sock: UnixStream, events: Sender<Event>) {
        let StdioBackend { input, output } = *self;
        let sock_in = match sock.try_clone() {
            Ok(s) => File::from(OwnedFd::from(s)),
            Err(e) => {
                let msg = format!(
                    "can't create socket: {}",
                    Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
                );
                let _ = events.send(Event::BackendEnded(RelayEnd::Error(msg)));
                return;
            }
        };
        let sock_out = File::from(OwnedFd::from(sock));
        let up_events = events.clone();
        // stdin -> socket on a thread of its own; it may stay blocked on a silent stdin after
        // the session ended, which only matters until the process exits.
        let up = std::thread::Builder::new()
            .name("relay-in".into())
            .spawn(move || {
                let end = pump(&input, &sock_out);
                let _ = up_events.send(Event::BackendEnded(end));
            });
        if let Err(e) = up {
            let msg = format!("can't start the relay thread: {e}");
            let _ = events.send(Event::BackendEnded(RelayEnd::Error(msg)));
            return;
        }
        let end = pump(&sock_in, &output);
        let _ = events.send(Event::BackendEnded(end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn sock_file(s: UnixStream) -> File {
        File::from(std::os::fd::OwnedFd::from(s))
    }

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    /// Pipe to socket (splice) and socket to pipe (read/write), with data larger than one call.
    #[test]
    fn splices_between_pipes_and_sockets() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let (pr, mut pw) = pipe();
        let (a, b) = UnixStream::pair().unwrap();
        let (a, b) = (sock_file(a), sock_file(b));
        let (out_r, out_w) = pipe();
        let d = data.clone();
        let writer = std::thread::spawn(move || {
            pw.write_all(&d).unwrap();
        });
        let up = std::thread::spawn(move || pump(&pr, &a));
        let down = std::thread::spawn(move || {
            let end = pump(&b, &out_w);
            drop(out_w);
            end
        });
        let mut got = Vec::new();
        let mut out_r = out_r;
        out_r.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(up.join().unwrap(), RelayEnd::Eof);
        assert_eq!(down.join().unwrap(), RelayEnd::Eof);
        assert_eq!(got, data);
    }

    /// Socket to socket: splice is impossible, read/write is used.
    #[test]
    fn copies_between_sockets() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, d) = UnixStream::pair().unwrap();
        let mut a = a;
        let mut d = d;
        let (b, c) = (sock_file(b), sock_file(c));
        let t = std::thread::spawn(move || pump(&b, &c));
        a.write_all(b"hello").unwrap();
        drop(a);
        let mut got = Vec::new();
        assert_eq!(t.join().unwrap(), RelayEnd::Eof);
        d.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
    }

    /// A reader that went away ends the relay as an EOF (SIGPIPE is ignored by Rust programs).
    #[test]
    fn a_closed_reader_is_an_end_of_stream() {
        let (a, b) = UnixStream::pair().unwrap();
        let (pr, pw) = pipe();
        drop(pr);
        let mut a = a;
        a.write_all(b"data").unwrap();
        let b = sock_file(b);
        assert_eq!(pump(&b, &pw), RelayEnd::Eof);
    }
}
