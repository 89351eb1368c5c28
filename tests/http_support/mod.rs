//! Shared helpers of the HTTP integration tests: an in-process server (a listener on port 0,
//! an accept loop with a connection cap, one `http-conn-N` thread per connection calling
//! `HttpService::serve_connection`, as the daemon does), fixtures, and a small raw HTTP/1.1
//! client that checks framing byte for byte.
#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)]

mod client;
mod daemon;

#[allow(unused_imports)]
pub use client::*;
pub use daemon::Daemon;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hexzd::http::{HttpService, HttpSettings};
use hexzd::serving::{Catalog, CatalogHandle, Conn, Metrics, NamedSnapshot, ProtoMetrics};
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
        let budget = hexzd::serving::budget::DEFAULT_BUFFER_MEMORY;
        Server::start_with_budget(settings, snapshots, engine, budget)
    }

    /// [`Server::start`] with a response-buffer budget of `budget` bytes.
    pub fn start_with_budget(
        settings: HttpSettings,
        snapshots: Vec<NamedSnapshot>,
        engine: &Engine,
        budget: u64,
    ) -> Server {
        let catalog = Arc::new(CatalogHandle::new(Catalog::new(snapshots, None).unwrap()));
        let metrics = Arc::new(Metrics::with_budget(Arc::clone(&engine.metrics), budget));
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
