//! Helpers for the tests of `hexzd serve` as a systemd service: the real binary with its stderr
//! lines on a channel, a private `NOTIFY_SOCKET`, a small NBD client and an HTTP GET. Every
//! wait is on a line the daemon prints, a datagram it sends, or its exit; never a sleep.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Longest any single wait may take before the test calls it a hang.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Path of a Hexz 0.8.2 fixture.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/hexz-0.8.2")
        .join(name)
}

/// The `hexzd serve` command with a clean environment for these tests.
pub fn serve_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hexzd"));
    cmd.arg("serve")
        .env("HEXZD_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("HEXZD_TEST_WEDGE_ACCEPT");
    cmd
}

/// A running `hexzd serve` whose stderr lines arrive on a channel.
pub struct Daemon {
    pub child: Child,
    lines: Receiver<String>,
    /// Every line so far, and whether a wait has already returned it.
    seen: Vec<(String, bool)>,
}

impl Daemon {
    /// Starts `cmd` (stdin and stdout null, stderr captured).
    pub fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a stderr line containing `needle` that no earlier wait returned.
    pub fn wait_for(&mut self, needle: &str) -> String {
        if let Some(l) = self
            .seen
            .iter_mut()
            .find(|(l, used)| !used && l.contains(needle))
        {
            l.1 = true;
            return l.0.clone();
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push((line.clone(), hit));
                    if hit {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("no {needle:?} line; saw {:?}", self.seen),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("daemon exited before {needle:?}; saw {:?}", self.seen)
                }
            }
        }
    }

    /// Every stderr line received so far (after draining what is waiting).
    pub fn lines(&mut self) -> Vec<String> {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push((l, false));
        }
        self.seen.iter().map(|(l, _)| l.clone()).collect()
    }

    /// The port of the readiness line `PROTO listening on ADDR:PORT`.
    pub fn port(&mut self, proto: &str) -> u16 {
        let line = self.wait_for(&format!("{proto} listening on "));
        line.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits (bounded by `limit`) for the process to exit and returns its status, after
    /// receiving the rest of its stderr (also bounded by `limit`): the reader thread reaches
    /// the pipe's end after the exit, not with it, so `lines` right after the exit could miss
    /// the last lines (seen once in CI: `daemon_attach` found no lines at all).
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.lines.recv_timeout(left) {
                        Ok(l) => self.seen.push((l, false)),
                        // A child of the daemon may still hold the pipe: its lines are
                        // not waited for past `limit`.
                        Err(_) => return status,
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}; lines: {:?}",
                self.lines()
            );
            // Process exit has no readiness signal to block on here; poll with a short pause.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `NOTIFY_SOCKET`: a bound datagram socket in a temporary directory.
pub struct Notify {
    pub path: PathBuf,
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
}

impl Notify {
    /// Binds a fresh socket.
    pub fn bind() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        Notify {
            path,
            sock,
            _dir: dir,
        }
    }

    /// The next datagram, or `None` after `limit`.
    pub fn recv_within(&self, limit: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(limit.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Waits (bounded) for a datagram with a line starting with `key`, skipping `WATCHDOG=1`
    /// pings and status refreshes unless they are what is asked for; returns it.
    pub fn expect(&self, key: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        let mut skipped = Vec::new();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(m) = self.recv_within(left) {
                if m.lines().any(|l| l.starts_with(key)) {
                    return m;
                }
                skipped.push(m);
            }
        }
        panic!("no {key:?} datagram; got {skipped:?}");
    }
}

/// A GET on a fresh connection; returns (status, head, body).
pub fn get(port: u16, path: &str, range: Option<(u64, u64)>) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let range = range.map_or_else(String::new, |(a, b)| format!("Range: bytes={a}-{b}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{range}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, all[split + 4..].to_vec())
}

/// A header's value in a response head.
pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A minimal NBD client (fixed newstyle, `NBD_OPT_EXPORT_NAME`, simple replies): enough to
/// read bytes the way any client does.
pub struct Nbd {
    pub s: TcpStream,
    pub size: u64,
    cookie: u64,
}

impl Nbd {
    /// Connects to `port` and opens `export`.
    pub fn connect(port: u16, export: &str) -> std::io::Result<Nbd> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(LIMIT))?;
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting)?;
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        // NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES
        s.write_all(&3u32.to_be_bytes())?;
        let mut opt = Vec::new();
        opt.extend_from_slice(b"IHAVEOPT");
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&u32::try_from(export.len()).unwrap().to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt)?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply)?;
        let size = u64::from_be_bytes(reply[..8].try_into().unwrap());
        Ok(Nbd { s, size, cookie: 0 })
    }

    /// Sends a READ request without waiting for the reply.
    pub fn send_read(&mut self, offset: u64, len: u32) -> std::io::Result<u64> {
        self.cookie += 1;
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes()); // NBD_CMD_READ
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        self.s.write_all(&r)?;
        Ok(self.cookie)
    }

    /// Receives one simple READ reply of `len` bytes; returns (cookie, data).
    pub fn recv_read(&mut self, len: u32) -> std::io::Result<(u64, Vec<u8>)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        if error != 0 {
            return Err(std::io::Error::other(format!("NBD error {error}")));
        }
        let cookie = u64::from_be_bytes(h[8..].try_into().unwrap());
        let mut data = vec![0u8; len as usize];
        self.s.read_exact(&mut data)?;
        Ok((cookie, data))
    }

    /// One READ, start to end.
    pub fn read(&mut self, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        self.send_read(offset, len)?;
        Ok(self.recv_read(len)?.1)
    }

    /// NBD_CMD_DISC.
    pub fn disconnect(mut self) {
        let mut r = Vec::with_capacity(28);
        r.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&2u16.to_be_bytes());
        r.extend_from_slice(&[0u8; 20]);
        let _ = self.s.write_all(&r);
    }
}

/// True when `tool` is on the PATH. When it is not, the test prints SKIP and returns, unless
/// HEXZD_REQUIRE_TOOLS=1 makes that a failure (CI).
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("HEXZD_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{tool} is required (HEXZD_REQUIRE_TOOLS=1) but not installed"
        );
        eprintln!("SKIP: {tool} not installed (scripts/deps.sh installs it)");
    }
    found
}

/// A config file serving `snapshots` (name, path) on an HTTP and an NBD port of the kernel's
/// choosing, with `extra` appended.
pub fn config(snapshots: &[(&str, &Path)], extra: &str) -> String {
    let mut s =
        String::from("[http]\nlisten = [\"127.0.0.1:0\"]\n[nbd]\nlisten = [\"127.0.0.1:0\"]\n");
    s.push_str(extra);
    for (name, path) in snapshots {
        s.push_str(&format!(
            "[[snapshot]]\nname = {name:?}\npath = {:?}\n",
            path.display().to_string()
        ));
    }
    s
}
