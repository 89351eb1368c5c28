//! Shared helpers of the HTTP integration tests: an in-process server (a listener on port 0,
//! an accept loop with a connection cap, one `http-conn-N` thread per connection calling
//! `HttpService::serve_connection`, as the daemon does), fixtures, and a small raw HTTP/1.1
//! client that checks framing byte for byte.
#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hexzd::daemon::{Catalog, CatalogHandle, Conn, Metrics, NamedSnapshot, ProtoMetrics};
use hexzd::http::{HttpService, HttpSettings};
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot};

/// The reference fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2")
}

/// Password of `mixed-enc-lz4.hxz`.
pub const PASSWORD: &str = "correct-horse-battery";

/// One archive to serve: path, name, password.
#[derive(Debug, Clone)]
pub struct Archive {
    pub path: PathBuf,
    pub name: String,
    pub password: Option<String>,
}

impl Archive {
    pub fn new(path: impl Into<PathBuf>, name: &str) -> Archive {
        Archive {
            path: path.into(),
            name: name.to_string(),
            password: None,
        }
    }

    pub fn with_password(mut self, p: &str) -> Archive {
        self.password = Some(p.to_string());
        self
    }
}

/// Every fixture with its raw streams: (archive file, name, password, main raw, aux raw).
pub fn all_fixtures() -> Vec<(Archive, PathBuf, Option<PathBuf>)> {
    let d = fixtures();
    let plain = |f: &str, n: &str, raw: &str| (Archive::new(d.join(f), n), d.join(raw), None);
    vec![
        plain("hello-lz4.hxz", "hello", "hello.txt"),
        plain("mixed-lz4.hxz", "mixed", "mixed.img"),
        plain("mixed-zstd.hxz", "mixed-zstd", "mixed.img"),
        plain("mixed-serial-lz4.hxz", "mixed-serial", "mixed.img"),
        plain("zeros-serial-lz4.hxz", "zeros", "zeros.img"),
        plain("mixed-child-thin-lz4.hxz", "thin", "mixed-child.img"),
        plain("empty-lz4.hxz", "empty", "empty.img"),
        (
            Archive::new(d.join("mixed-enc-lz4.hxz"), "enc").with_password(PASSWORD),
            d.join("mixed.img"),
            None,
        ),
        (
            Archive::new(d.join("vm-dir-lz4.hxz"), "vm"),
            d.join("vm/disk.img"),
            Some(d.join("vm/memory")),
        ),
    ]
}

/// Opens archives on one shared engine.
pub fn open(archives: &[Archive], cache_bytes: usize) -> (Vec<NamedSnapshot>, Arc<Engine>) {
    let engine = Engine::new(EngineConfig {
        cache_bytes,
        workers: 2,
        ..EngineConfig::default()
    })
    .unwrap();
    let snaps = archives
        .iter()
        .map(|a| NamedSnapshot {
            name: a.name.clone(),
            snapshot: Snapshot::open_with(
                &a.path,
                &engine,
                &OpenOptions {
                    password: a.password.as_ref().map(|p| p.as_bytes().to_vec()),
                    index_only: false,
                },
            )
            .unwrap_or_else(|e| panic!("{}: {e}", a.path.display())),
        })
        .collect();
    (snaps, engine)
}

/// A deterministic, mildly compressible pattern.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            if i % 64 < 16 {
                (i / 64) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            }
        })
        .collect()
}

/// Packs `data` (and `aux`) into `dir/name.hxz` with hexzd's own packer.
pub fn pack(dir: &Path, name: &str, data: &[u8], aux: Option<&[u8]>) -> PathBuf {
    let input = dir.join(format!("{name}.img"));
    std::fs::write(&input, data).unwrap();
    let mut options = hexzd::pack::PackOptions {
        force: true,
        ..Default::default()
    };
    if let Some(aux) = aux {
        let p = dir.join(format!("{name}.aux"));
        std::fs::write(&p, aux).unwrap();
        options.aux = Some(p);
    }
    let out = dir.join(format!("{name}.hxz"));
    hexzd::pack::pack(&input, &out, &options).unwrap();
    out
}

/// An in-process HTTP server on 127.0.0.1:0.
pub struct Server {
    pub addr: SocketAddr,
    pub service: Arc<HttpService>,
    pub metrics: Arc<Metrics>,
    pub catalog: Arc<CatalogHandle>,
    /// Connection threads running now.
    pub active: Arc<AtomicUsize>,
}

impl Server {
    /// Serves `snapshots` (the first is the default) with `settings`; the cap is
    /// `settings.max_connections`.
    pub fn start(settings: HttpSettings, snapshots: Vec<NamedSnapshot>, engine: &Engine) -> Server {
        let catalog = Arc::new(CatalogHandle::new(Catalog::new(snapshots, None).unwrap()));
        let metrics = Arc::new(Metrics::new(Arc::clone(&engine.metrics)));
        let cap = settings.max_connections;
        let service = Arc::new(HttpService::new(
            settings,
            Arc::clone(&catalog),
            Arc::clone(&metrics),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let active = Arc::new(AtomicUsize::new(0));
        {
            let service = Arc::clone(&service);
            let metrics = Arc::clone(&metrics);
            let active = Arc::clone(&active);
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || accept_loop(&listener, &service, &metrics, &active, cap))
                .unwrap();
        }
        Server {
            addr,
            service,
            metrics,
            catalog,
            active,
        }
    }

    /// Serves `archives` with `settings` and a 64 MiB cache.
    pub fn with(settings: HttpSettings, archives: &[Archive]) -> Server {
        let (snaps, engine) = open(archives, 64 << 20);
        Server::start(settings, snaps, &engine)
    }

    /// A new connection to the server.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits (polling, bounded) until no connection thread is running.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        wait_until(limit, || self.active.load(Ordering::SeqCst) == 0)
    }
}

fn accept_loop(
    listener: &TcpListener,
    service: &Arc<HttpService>,
    metrics: &Arc<Metrics>,
    active: &Arc<AtomicUsize>,
    cap: usize,
) {
    let mut n = 0u64;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if active.load(Ordering::SeqCst) >= cap {
            ProtoMetrics::add(&metrics.http.connections_rejected, 1);
            service.reject_busy(Conn::Tcp(stream));
            continue;
        }
        n += 1;
        active.fetch_add(1, Ordering::SeqCst);
        ProtoMetrics::add(&metrics.http.connections_total, 1);
        let service = Arc::clone(service);
        let active = Arc::clone(active);
        std::thread::Builder::new()
            .name(format!("http-conn-{n}"))
            .stack_size(256 << 10)
            .spawn(move || {
                service.serve_connection(Conn::Tcp(stream));
                active.fetch_sub(1, Ordering::SeqCst);
            })
            .unwrap();
    }
}

/// Polls `f` every few milliseconds until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of a header (case-insensitive name), if present exactly once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut it = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = it.next()?;
        assert!(it.next().is_none(), "header {name} repeated");
        Some(first.1.as_str())
    }

    /// Content-Length as a number.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length").map(|v| v.parse().unwrap())
    }
}

/// Reads one response from `r`. `head_request` says the body is empty whatever the
/// Content-Length says. Returns `None` on a clean EOF before the first byte.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> Option<Response> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).unwrap();
        if n == 0 {
            assert!(head.is_empty(), "EOF inside a response head");
            return None;
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    assert!(resp.parse(&head).unwrap().is_complete());
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect();
    let mut out = Response {
        status,
        headers,
        body: Vec::new(),
    };
    assert!(
        out.header("transfer-encoding").is_none(),
        "hexzd never sends chunked"
    );
    let body_len = if head_request || status == 304 || status == 100 {
        0
    } else {
        out.content_length()
            .expect("every response has Content-Length")
    };
    out.body = vec![0; usize::try_from(body_len).unwrap()];
    r.read_exact(&mut out.body).unwrap();
    Some(out)
}

/// Sends one request on a new connection (with `Connection: close`) and reads its answer.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers)
}

/// Like [`get`] with any method.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, method == "HEAD").expect("a response");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the response: {}", rest.len());
    resp
}

/// A keep-alive client on one connection.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::with_capacity(1 << 20, s),
        }
    }

    /// Sends a GET with `headers` and reads the answer.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes()).unwrap();
        read_response(&mut self.reader, false).expect("a response")
    }

    /// GET with `Range: bytes=first-last`, checked to be a 206 of exactly those bytes.
    pub fn range(&mut self, path: &str, first: u64, last: u64) -> Vec<u8> {
        let r = self.get(path, &[("Range", &format!("bytes={first}-{last}"))]);
        assert_eq!(r.status, 206, "{path} {first}-{last}");
        let cr = r.header("content-range").unwrap();
        assert!(
            cr.starts_with(&format!("bytes {first}-{last}/")),
            "{path}: asked {first}-{last}, got {cr}"
        );
        r.body
    }
}

/// Sends raw bytes on a new connection, half-closes nothing, and reads everything until the
/// server closes (or 30 s pass).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// The status code at the start of a raw response.
pub fn status_of(raw: &[u8]) -> u16 {
    let s = String::from_utf8_lossy(raw);
    s.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Runs a command and returns its output, panicking with stderr on a spawn failure.
pub fn run(cmd: &mut std::process::Command) -> std::process::Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// True when `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Number of threads and open fds of this process.
pub fn threads_and_fds() -> (usize, usize) {
    let count = |p: &str| std::fs::read_dir(p).unwrap().count();
    (count("/proc/self/task"), count("/proc/self/fd"))
}

/// Where the tests run: the in-process harness above, or the real `hexzd serve` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InProcess,
    Binary,
}

/// A running HTTP server of either kind.
pub trait Target {
    /// Its HTTP address.
    fn addr(&self) -> SocketAddr;
    /// Connection threads running now.
    fn conn_threads(&self) -> usize;
    /// Threads and open fds of the serving process (meaningful in-process only when the test
    /// binary runs a single test).
    fn proc_counts(&self) -> (usize, usize);
    /// `http://ADDR/path`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }
    /// A new connection.
    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }
    /// Waits (bounded) until no connection thread runs.
    fn wait_idle(&self, limit: Duration) -> bool {
        wait_until(limit, || self.conn_threads() == 0)
    }
}

impl Target for Server {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn conn_threads(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    fn proc_counts(&self) -> (usize, usize) {
        threads_and_fds()
    }
}

/// Starts a server of `kind` serving `archives` (the first is the default) with `settings`.
pub fn start(kind: Kind, settings: HttpSettings, archives: &[Archive]) -> Box<dyn Target> {
    match kind {
        Kind::InProcess => Box::new(Server::with(settings, archives)),
        Kind::Binary => Box::new(Daemon::start(&settings, archives)),
    }
}

/// `hexzd serve` as a child process, configured through a config file in a temporary
/// directory, HTTP on 127.0.0.1:0 and NBD off. Ready once it prints its HTTP listening line
/// on stderr (no sleeps). SIGTERM and wait on drop.
pub struct Daemon {
    child: std::process::Child,
    pub addr: SocketAddr,
    /// Every stderr line so far (the reader thread keeps draining it).
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// The config file text for `settings` and `archives` (passwords go to files in `dir`).
    pub fn config(settings: &HttpSettings, archives: &[Archive], dir: &Path) -> String {
        let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let mut c = format!(
            "[http]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = {}\nheader_timeout = {}\n\
             idle_timeout = {}\nmax_range_bytes = {}\n",
            settings.max_connections,
            ms(settings.header_timeout),
            ms(settings.idle_timeout),
            settings.max_range_bytes,
        );
        if let Some(t) = &settings.auth_token {
            let f = dir.join("token");
            std::fs::write(&f, format!("{t}\n")).unwrap();
            c.push_str(&format!(
                "auth_token_file = {:?}\n",
                f.display().to_string()
            ));
        }
        c.push_str("[nbd]\nlisten = []\n[cache]\nmemory = \"128MiB\"\nworkers = 2\n");
        for (i, a) in archives.iter().enumerate() {
            c.push_str(&format!(
                "[[snapshot]]\nname = {:?}\npath = {:?}\n",
                a.name,
                a.path.display().to_string()
            ));
            if let Some(p) = &a.password {
                let f = dir.join(format!("pw{i}"));
                std::fs::write(&f, p).unwrap();
                c.push_str(&format!("password_file = {:?}\n", f.display().to_string()));
            }
        }
        c
    }

    /// Starts the daemon and waits for its readiness line.
    pub fn start(settings: &HttpSettings, archives: &[Archive]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("hexzd.toml");
        std::fs::write(&config, Daemon::config(settings, archives, dir.path())).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hexzd"));
        cmd.arg("serve").arg("--config").arg(&config);
        Daemon::spawn(cmd, dir)
    }

    /// Spawns `cmd` (a `hexzd serve` command line) and waits for its readiness line.
    pub fn spawn(mut cmd: std::process::Command, dir: tempfile::TempDir) -> Daemon {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if std::env::var_os("HEXZD_LOG").is_none() {
            cmd.env("HEXZD_LOG", "info");
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("HTTP listening on ").nth(1) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(rest.trim().to_string());
                        }
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hexzd serve did not get ready:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        Daemon {
            child,
            addr,
            stderr: lines,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for a stderr line containing all of `needles`.
    pub fn wait_log(&self, needles: &[&str]) -> Option<String> {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            found.is_some()
        });
        found
    }
}

impl Target for Daemon {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn conn_threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.starts_with("http-conn"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }
    fn proc_counts(&self) -> (usize, usize) {
        let count = |p: String| std::fs::read_dir(p).unwrap().count();
        (
            count(format!("/proc/{}/task", self.pid())),
            count(format!("/proc/{}/fd", self.pid())),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let done = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Defines `in_process::NAME` and `binary::NAME` tests calling `NAME(Kind)` for each name.
#[macro_export]
macro_rules! both_kinds {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(#[test] fn $name() { super::$name($crate::http_support::Kind::InProcess) })*
        }
        mod binary {
            $(#[test] fn $name() { super::$name($crate::http_support::Kind::Binary) })*
        }
    };
}

/// A file under the target's test scratch directory holding `name`'s packed archive of
/// `pattern(len, seed)`, packed once and reused across runs (a temporary file renamed into
/// place, so concurrent tests never see half an archive).
pub fn cached_archive(name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("http-archives");
    std::fs::create_dir_all(&dir).unwrap();
    let data = pattern(len, seed);
    let path = dir.join(format!("{name}-{len}-{seed}.hxz"));
    if !path.exists() {
        let tmp = tempfile::tempdir_in(&dir).unwrap();
        let packed = pack(tmp.path(), name, &data, None);
        std::fs::rename(packed, &path).unwrap();
    }
    (path, data)
}

/// A 3 MiB archive with one corrupted stored block beyond the first MiB, and the stream
/// offsets (64 KiB steps) whose reads fail.
pub fn corrupt_archive(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, Vec<u64>) {
    let data = pattern(3 << 20, 9);
    let path = pack(dir, "corrupt", &data, None);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() * 4 / 5;
    bytes[at] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let snap = hexzd::store::Snapshot::open(&path).unwrap();
    let mut buf = vec![0; 65536];
    let bad: Vec<u64> = (0..48u64)
        .map(|i| i * 65536)
        .filter(|&off| {
            snap.read_at(hexzd::format::Stream::Main, off, &mut buf)
                .is_err()
        })
        .collect();
    assert!(!bad.is_empty() && bad[0] > (1 << 20) + 65536, "{bad:?}");
    (path, data, bad)
}
