//! Shared helpers of the NBD integration tests: the 0.8.2 fixtures and the raw inputs they must
//! serve, an NBD server on a loopback port and a Unix socket, a raw NBD client over
//! `hexzd::nbd::proto` for the torture tests, and tool discovery that skips (or fails, with
//! `HEXZD_REQUIRE_TOOLS=1`, as CI sets it) when a client is not installed.
//!
//! `Server::start` runs the real daemon (`hexzd serve`) and waits for its readiness lines.
//! `Server::in_process`
//! and `with_settings` run `NbdService::serve_connection` in the test process, one thread per
//! connection as the daemon's accept loop does, for tests that need custom settings or the
//! counters.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hexzd::nbd::proto::*;
use hexzd::nbd::{NbdService, NbdSettings};
use hexzd::serving::{Catalog, CatalogHandle, Conn, Metrics, NamedSnapshot, ProtoMetrics};
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot};

/// Password of `mixed-enc-lz4.hxz`.
pub const PASSWORD: &str = "correct-horse-battery";

/// The fixture directory.
pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2")
}

/// A fixture served under a name, with the raw inputs of its streams.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: &'static str,
    pub archive: &'static str,
    pub main: &'static str,
    /// Raw aux input; `None` means the aux stream is empty.
    pub aux: Option<&'static str>,
    pub password: Option<&'static str>,
}

/// Every 0.8.2 fixture.
pub fn fixtures() -> Vec<Fixture> {
    let f = |name, archive, main, aux, password| Fixture {
        name,
        archive,
        main,
        aux,
        password,
    };
    vec![
        f(
            "vm",
            "vm-dir-lz4.hxz",
            "vm/disk.img",
            Some("vm/memory"),
            None,
        ),
        f("hello", "hello-lz4.hxz", "hello.txt", None, None),
        f("mixed", "mixed-lz4.hxz", "mixed.img", None, None),
        f("mixed-zstd", "mixed-zstd.hxz", "mixed.img", None, None),
        f(
            "mixed-serial",
            "mixed-serial-lz4.hxz",
            "mixed.img",
            None,
            None,
        ),
        f("zeros", "zeros-serial-lz4.hxz", "zeros.img", None, None),
        f(
            "child",
            "mixed-child-thin-lz4.hxz",
            "mixed-child.img",
            None,
            None,
        ),
        f(
            "enc",
            "mixed-enc-lz4.hxz",
            "mixed.img",
            None,
            Some(PASSWORD),
        ),
        f("empty", "empty-lz4.hxz", "empty.img", None, None),
    ]
}

/// One snapshot to serve: name, archive path, password.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub path: PathBuf,
    pub password: Option<String>,
}

impl Spec {
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Spec {
        Spec {
            name: name.into(),
            path: path.into(),
            password: None,
        }
    }
}

impl From<&Fixture> for Spec {
    fn from(f: &Fixture) -> Spec {
        Spec {
            name: f.name.into(),
            path: data().join(f.archive),
            password: f.password.map(String::from),
        }
    }
}

/// Specs for every fixture (the first, `vm`, is the default snapshot).
pub fn all_fixture_specs() -> Vec<Spec> {
    fixtures().iter().map(Spec::from).collect()
}

/// An NBD server on 127.0.0.1:PORT and on a Unix socket: a `hexzd serve` process, or
/// `NbdService` in this process when a test needs custom settings or
/// the counters.
pub struct Server {
    pub port: u16,
    pub socket: PathBuf,
    metrics: Option<Arc<Metrics>>,
    child: Option<Child>,
    /// The daemon's stderr lines after readiness, as they arrive.
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Server {
    /// Serves `specs` from a server process: `hexzd serve --http off --nbd 127.0.0.1:0
    /// --nbd-unix PATH ARCHIVE=NAME...`, ready once it has printed both listening lines.
    pub fn start(specs: &[Spec]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let mut cmd = Command::new(server_program());
        cmd.args([
            "serve",
            "--http",
            "off",
            "--nbd",
            "127.0.0.1:0",
            "--nbd-unix",
        ])
        .arg(&socket);
        for s in specs {
            cmd.arg(format!("{}={}", s.path.display(), s.name));
        }
        // One password file serves every archive given on the command line; archives that are
        // not encrypted ignore it.
        if let Some(pw) = specs.iter().find_map(|s| s.password.as_ref()) {
            let f = dir.path().join("password");
            std::fs::write(&f, pw).unwrap();
            cmd.arg("--password-file").arg(f);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut port, mut unix, mut seen) = (None, false, Vec::new());
        while port.is_none() || !unix {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("{cmd:?} exited before it was ready:\n{}", seen.join("\n"));
            };
            if let Some(p) = line.strip_prefix("hexzd: NBD listening on 127.0.0.1:") {
                port = p.trim().parse().ok();
            }
            if line.starts_with("hexzd: NBD listening on unix ") {
                unix = true;
            }
            seen.push(line);
        }
        // Keep draining stderr so the server never blocks on a full pipe; keep it for
        // `wait_for_log` and show it with the test's output.
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("server: {line}");
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        Server {
            port: port.unwrap(),
            socket,
            metrics: None,
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    /// Serves `specs` in this process with default settings.
    pub fn in_process(specs: &[Spec]) -> Server {
        Server::with_settings(specs, NbdSettings::default())
    }

    /// Serves `specs` in this process with `settings`.
    pub fn with_settings(specs: &[Spec], settings: NbdSettings) -> Server {
        let engine = Engine::new(EngineConfig {
            cache_bytes: 128 << 20,
            page_cache_bytes: 16 << 20,
            workers: 2,
        })
        .unwrap();
        let entries = specs
            .iter()
            .map(|s| NamedSnapshot {
                name: s.name.clone(),
                snapshot: Snapshot::open_with(
                    &s.path,
                    &engine,
                    &OpenOptions {
                        password: s.password.as_ref().map(|p| p.as_bytes().to_vec()),
                        index_only: false,
                    },
                )
                .unwrap_or_else(|e| panic!("open {}: {e}", s.path.display())),
            })
            .collect();
        let catalog = Arc::new(CatalogHandle::new(Catalog::new(entries, None).unwrap()));
        let metrics = Arc::new(Metrics::new(Arc::clone(&engine.metrics)));
        let service = Arc::new(NbdService::new(settings, catalog, Arc::clone(&metrics)));
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let unix = UnixListener::bind(&socket).unwrap();
        let svc = Arc::clone(&service);
        std::thread::spawn(move || {
            for (n, s) in tcp.incoming().enumerate() {
                let Ok(s) = s else { continue };
                let svc = Arc::clone(&svc);
                std::thread::Builder::new()
                    .name(format!("nbd-conn-{n}"))
                    .spawn(move || svc.serve_connection(Conn::Tcp(s)))
                    .unwrap();
            }
        });
        std::thread::spawn(move || {
            for (n, s) in unix.incoming().enumerate() {
                let Ok(s) = s else { continue };
                let svc = Arc::clone(&service);
                std::thread::Builder::new()
                    .name(format!("nbd-unix-{n}"))
                    .spawn(move || svc.serve_connection(Conn::Unix(s)))
                    .unwrap();
            }
        });
        Server {
            port,
            socket,
            metrics: Some(metrics),
            child: None,
            log: Arc::default(),
            _dir: dir,
        }
    }

    /// Waits (up to 30 s) for a daemon log line containing `needle` and returns it.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let (lines, cv) = &*self.log;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut g = lines.lock().unwrap();
        loop {
            if let Some(l) = g.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {needle:?} in:\n{}",
                g.join("\n")
            );
            g = cv.wait_timeout(g, left).unwrap().0;
        }
    }

    /// The NBD counters (in-process servers only).
    pub fn metrics(&self) -> &ProtoMetrics {
        &self
            .metrics
            .as_ref()
            .expect("counters are only visible for Server::in_process / with_settings")
            .nbd
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// `nbd+unix:///EXPORT?socket=PATH`.
    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// A TCP connection to the server.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        // A test that hangs is worse than one that fails.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }
}

/// True if `tool` is on PATH. Otherwise prints why the test is skipped, or panics when
/// `HEXZD_REQUIRE_TOOLS=1` (CI installs every client, so a missing one is a failure there).
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        assert!(
            std::env::var("HEXZD_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{tool} is not installed and HEXZD_REQUIRE_TOOLS=1"
        );
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// Runs a command, returning its output; panics with stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The python3 that has libnbd's `nbd` module (Debian's, not a pyenv shim).
pub const PYTHON: &str = "/usr/bin/python3";

/// Runs a Python script against libnbd with `URI` in the environment; panics with its output on
/// failure.
pub fn nbd_python(uri: &str, script: &str) -> String {
    let out = run_ok(Command::new(PYTHON).arg("-c").arg(script).env("URI", uri));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when libnbd's Python module can be imported.
pub fn have_python_nbd() -> bool {
    let ok = Path::new(PYTHON).exists()
        && Command::new(PYTHON)
            .args(["-c", "import nbd"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("HEXZD_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "python3-libnbd is not installed and HEXZD_REQUIRE_TOOLS=1"
        );
        eprintln!("SKIP: python3-libnbd (module nbd for {PYTHON}) is not installed");
    }
    ok
}

/// Writes a deterministic, moderately compressible image: `size` bytes where each 64 KiB chunk
/// is either all zeros (every fourth) or pseudo-random words repeated in short runs.
pub fn write_image(path: &Path, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, chunk) in v.chunks_mut(65536).enumerate() {
        if i % 4 == 3 {
            continue;
        }
        for run in chunk.chunks_mut(64) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            for (j, c) in run.iter_mut().enumerate() {
                *c = b[j % 4];
            }
        }
    }
    std::fs::write(path, &v).unwrap();
    v
}

/// Packs `raw` into `out` with hexzd's writer.
pub fn pack(raw: &Path, out: &Path, aux: Option<&Path>) {
    hexzd::pack::pack(
        raw,
        out,
        &hexzd::pack::PackOptions {
            aux: aux.map(Path::to_path_buf),
            force: true,
            workers: 2,
            ..Default::default()
        },
    )
    .unwrap();
}

/// A minimal NBD client over the protocol codecs, for byte-level tests.
pub struct RawClient {
    pub s: TcpStream,
    pub structured: bool,
    pub size: u64,
    pub flags: u16,
}

impl RawClient {
    /// Reads the greeting and sends client flags.
    pub fn greet(s: &mut TcpStream, flags: u32) {
        let mut g = [0u8; GREETING_LEN];
        s.read_exact(&mut g).unwrap();
        assert_eq!(g, greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
        s.write_all(&flags.to_be_bytes()).unwrap();
    }

    /// Sends one option.
    pub fn send_option(s: &mut TcpStream, option: u32, data: &[u8]) {
        let h = OptionHeader {
            option,
            length: u32::try_from(data.len()).unwrap(),
        };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(data);
        s.write_all(&b).unwrap();
    }

    /// Reads one option reply.
    pub fn read_option_reply(s: &mut TcpStream) -> std::io::Result<(OptionReplyHeader, Vec<u8>)> {
        let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut h)?;
        let h = OptionReplyHeader::decode(&h).unwrap();
        let mut p = vec![0u8; h.length as usize];
        s.read_exact(&mut p)?;
        Ok((h, p))
    }

    /// Connects and negotiates `export` with GO (optionally structured replies and
    /// base:allocation first).
    pub fn connect(server: &Server, export: &str, structured: bool) -> RawClient {
        let mut s = server.connect();
        Self::greet(&mut s, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        if structured {
            Self::send_option(&mut s, NBD_OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(
                Self::read_option_reply(&mut s).unwrap().0.reply_type,
                NBD_REP_ACK
            );
            Self::send_option(
                &mut s,
                NBD_OPT_SET_META_CONTEXT,
                &encode_meta_context_request(export, &[BASE_ALLOCATION]),
            );
            loop {
                let (h, _) = Self::read_option_reply(&mut s).unwrap();
                if h.reply_type == NBD_REP_ACK {
                    break;
                }
                assert_eq!(h.reply_type, NBD_REP_META_CONTEXT);
            }
        }
        Self::send_option(&mut s, NBD_OPT_GO, &encode_info_request(export, &[]));
        let (mut size, mut flags) = (0, 0);
        loop {
            let (h, p) = Self::read_option_reply(&mut s).unwrap();
            match h.reply_type {
                NBD_REP_ACK => break,
                NBD_REP_INFO if p[..2] == [0, 0] => {
                    size = u64::from_be_bytes(p[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([p[10], p[11]]);
                }
                NBD_REP_INFO => {}
                t => panic!(
                    "GO {export:?}: reply type {t:#x}: {}",
                    String::from_utf8_lossy(&p)
                ),
            }
        }
        RawClient {
            s,
            structured,
            size,
            flags,
        }
    }

    /// Sends a request header (and `payload`).
    pub fn request(
        &mut self,
        command: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let r = Request {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        let mut b = r.encode().to_vec();
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// Reads a simple reply: (error, cookie), then `data_len` bytes if error is 0.
    pub fn simple_reply(&mut self, data_len: usize) -> (u32, u64, Vec<u8>) {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        self.s.read_exact(&mut h).unwrap();
        let ReplyHeader::Simple { error, cookie } = ReplyHeader::decode(&h).unwrap() else {
            panic!("expected a simple reply");
        };
        let mut d = vec![0u8; if error == 0 { data_len } else { 0 }];
        self.s.read_exact(&mut d).unwrap();
        (error, cookie, d)
    }

    /// Reads one structured reply chunk: (flags, type, cookie, payload).
    pub fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        self.s.read_exact(&mut h).unwrap();
        let ReplyHeader::Chunk {
            flags,
            chunk_type,
            cookie,
            length,
        } = ReplyHeader::decode(&h).unwrap()
        else {
            panic!("expected a structured chunk");
        };
        let mut p = vec![0u8; length as usize];
        self.s.read_exact(&mut p).unwrap();
        (flags, chunk_type, cookie, p)
    }

    /// Waits until the server closes the connection: true on EOF or reset, false if it sent
    /// another byte instead. Panics if nothing happens within the read timeout.
    pub fn closed(s: &mut TcpStream) -> bool {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("waiting for the server to close: {e}"),
        }
    }
}

/// The `hexzd` binary under test.
pub fn server_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hexzd"))
}
