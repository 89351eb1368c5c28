//! The real `hexzd serve` with HTTP and NBD on 127.0.0.1:0 (and an NBD Unix socket), its
//! process counts from /proc (RSS, peak RSS, threads, fds), its `/metrics`, and a raw NBD
//! client small enough to leave replies unread on purpose.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexzd::nbd::proto::{
    IHAVEOPT, NBD_CMD_READ, NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NBD_OPT_EXPORT_NAME,
    NBD_REQUEST_MAGIC, NBD_SIMPLE_REPLY_MAGIC,
};

/// A running `hexzd serve`; SIGKILL and reaped on drop.
pub struct Daemon {
    child: Child,
    pub http: SocketAddr,
    pub nbd: SocketAddr,
    pub unix: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Serves `archive` as the default snapshot with `extra` config text appended (e.g. a
    /// `[limits]` table); ready once both listening lines (TCP NBD and Unix NBD) and the HTTP
    /// one are printed.
    pub fn start(archive: &Path, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let unix = dir.path().join("nbd.sock");
        let config = dir.path().join("hexzd.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = [\"127.0.0.1:0\"]\n[nbd]\nlisten = [\"127.0.0.1:0\"]\n\
                 unix = [{:?}]\n{extra}\n[[snapshot]]\nname = \"m\"\npath = {:?}\n",
                unix.display().to_string(),
                archive.display().to_string()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_hexzd"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("HEXZD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut http, mut nbd, mut sock, mut seen) = (None, None, false, Vec::new());
        while http.is_none() || nbd.is_none() || !sock {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("hexzd exited before it was ready:\n{}", seen.join("\n"));
            };
            if let Some(a) = line.strip_prefix("hexzd: HTTP listening on ") {
                http = a.trim().parse().ok();
            }
            if let Some(a) = line.strip_prefix("hexzd: NBD listening on ") {
                if a.starts_with("unix ") {
                    sock = true;
                } else {
                    nbd = a.trim().parse().ok();
                }
            }
            seen.push(line);
        }
        let log = Arc::new(Mutex::new(seen));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Daemon {
            child,
            http: http.unwrap(),
            nbd: nbd.unwrap(),
            unix,
            log,
            _dir: dir,
        }
    }

    /// A `/proc/PID/status` field in bytes (`VmRSS`, `VmHWM`) or as a count (`Threads`).
    pub fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap();
        let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        if line.ends_with("kB") { n * 1024 } else { n }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now.
    pub fn rss(&self) -> u64 {
        self.status("VmRSS")
    }

    /// Threads now.
    pub fn threads(&self) -> u64 {
        self.status("Threads")
    }

    /// Open file descriptors now.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// One value of `/metrics` (0 if absent), asked from an address of 127.1/16 used once,
    /// so that it never counts against a client's per-client cap.
    pub fn metric(&self, name: &str) -> u64 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 60_000;
        let [_, _, hi, lo] = (n / 250 * 256 + n % 250 + 1).to_be_bytes();
        let from = Ipv4Addr::new(127, 1, hi, lo);
        let mut s = connect_from(from, self.http);
        let (status, body) = http_get_on(&mut s, "/metrics", None);
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// Waits (up to `limit`) for `f`, polling every 50 ms.
    pub fn wait(&self, limit: Duration, mut f: impl FnMut(&Daemon) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if f(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far, for failure messages.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// A TCP connection to `to` from the local address `from` (e.g. 127.0.0.2: every 127/8
/// address is loopback on Linux).
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)),
    )
    .unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// `GET path` on a new connection (`Connection: close`), with an optional Range; status and
/// body.
pub fn http_get(addr: SocketAddr, path: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    http_get_on(&mut s, path, range)
}

/// The status of `GET path` on a new connection, or `None` when the exchange fails (a refused
/// connection can be reset before the request is even written).
pub fn http_status(addr: SocketAddr, path: &str, range: Option<&str>) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let range = range.map_or(String::new(), |r| format!("Range: bytes={r}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\n{range}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    std::str::from_utf8(all.get(9..12)?).ok()?.parse().ok()
}

/// `GET path` on `s` (`Connection: close`); status and body.
pub fn http_get_on(s: &mut TcpStream, path: &str, range: Option<&str>) -> (u16, Vec<u8>) {
    let range = range.map_or(String::new(), |r| format!("Range: bytes={r}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\n{range}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&all[9..12]).unwrap().parse().unwrap();
    (status, all[end + 4..].to_vec())
}

/// A raw NBD client after `NBD_OPT_EXPORT_NAME` of the default export.
pub struct Nbd<S> {
    pub s: S,
    pub size: u64,
}

/// Does the fixed newstyle handshake on `s`; `None` if the server closed instead.
pub fn nbd_handshake<S: Read + Write>(mut s: S) -> Option<Nbd<S>> {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).ok()?;
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&NBD_OPT_EXPORT_NAME.to_be_bytes());
    opt.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&opt).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    let size = u64::from_be_bytes(reply[..8].try_into().unwrap());
    Some(Nbd { s, size })
}

impl<S: Read + Write> Nbd<S> {
    /// Sends a READ without waiting for its reply.
    pub fn send_read(&mut self, cookie: u64, offset: u64, length: u32) {
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&NBD_REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&NBD_CMD_READ.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&length.to_be_bytes());
        self.s.write_all(&r).unwrap();
    }

    /// Reads one simple reply with `length` bytes of data: its cookie and data.
    pub fn read_reply(&mut self, length: usize) -> (u64, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().unwrap()),
            NBD_SIMPLE_REPLY_MAGIC
        );
        assert_eq!(
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            0,
            "NBD error"
        );
        let mut data = vec![0; length];
        self.s.read_exact(&mut data).unwrap();
        (u64::from_be_bytes(h[8..16].try_into().unwrap()), data)
    }
}

/// MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}
