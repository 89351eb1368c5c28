//! Shared helpers of the remote-archive tests (issue 14): a small scripted HTTP/1.1 server
//! whose faults a test sets per path and byte range (Range ignored, short bodies, wrong
//! Content-Range, status codes, resets, stalls, redirects, a replaced object, Basic auth), and
//! launchers for nginx and moto's standalone S3 server on loopback ports. A test needing a
//! tool that is missing skips with a message, or fails under `HEXZD_REQUIRE_TOOLS=1`.
#![allow(dead_code, clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hexzd::store::{Engine, EngineConfig, RemoteConfig};

/// True if `tool` is on PATH; otherwise says why the test skips, or fails under
/// `HEXZD_REQUIRE_TOOLS=1` (CI installs every tool).
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if !found {
        assert!(
            std::env::var("HEXZD_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "{tool} is not installed and HEXZD_REQUIRE_TOOLS=1"
        );
        eprintln!("SKIP: {tool} is not installed (scripts/deps.sh installs it)");
    }
    found
}

/// An engine for remote tests: no block cache (every read goes to the source), two workers,
/// and `remote` as given.
pub fn engine(remote: RemoteConfig) -> Arc<Engine> {
    Engine::with_remote(
        EngineConfig {
            cache_bytes: 0,
            workers: 2,
            ..EngineConfig::default()
        },
        remote,
    )
    .unwrap()
}

/// Remote settings for fault tests: short timeouts, two retries, no read-ahead (so nothing
/// fetches behind a test's back).
pub fn quick() -> RemoteConfig {
    RemoteConfig {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_millis(400),
        request_timeout: Duration::from_secs(10),
        retries: 2,
        readahead: 0,
        ..RemoteConfig::default()
    }
}

/// A fault the test server applies to matching requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 200 with the whole object.
    IgnoreRange,
    /// 206 whose body stops halfway (then the connection closes).
    ShortBody,
    /// 206 for the range shifted by one byte.
    WrongContentRange,
    /// This status, empty body.
    Status(u16),
    /// Half the body, then a TCP reset.
    Reset,
    /// Read the request, never answer.
    Stall,
    /// 302 to this location.
    Redirect(String),
}

/// Applies `fault` to GETs of `path` whose range overlaps `range` (file offsets, end
/// exclusive; `None` = any), `times` times (`None` = always).
#[derive(Debug, Clone)]
pub struct Rule {
    pub path: String,
    pub range: Option<(u64, u64)>,
    pub fault: Fault,
    pub times: Option<usize>,
}

#[derive(Debug, Clone)]
struct Object {
    bytes: Arc<Vec<u8>>,
    etag: String,
    /// Answer without looking at If-Match (a server without conditional requests).
    ignore_if_match: bool,
}

#[derive(Debug, Default)]
struct Inner {
    objects: Mutex<HashMap<String, Object>>,
    rules: Mutex<Vec<Rule>>,
    /// (path, Range header) of every request, in order.
    log: Mutex<Vec<(String, String)>>,
    /// Every request head, raw (to check what clients send).
    heads: Mutex<Vec<String>>,
    basic: Mutex<Option<String>>,
    stalled: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// The scripted HTTP server on 127.0.0.1:0.
pub struct FaultServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        self.inner.stalled.lock().unwrap().clear();
    }
}

impl FaultServer {
    /// Starts the server (one thread per connection).
    pub fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner::default());
        let i = Arc::clone(&inner);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if i.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let i = Arc::clone(&i);
                std::thread::spawn(move || serve(&i, conn));
            }
        });
        FaultServer { addr, inner }
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves `bytes` at `path` (replacing what was there: a new ETag).
    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        let etag = format!("\"{}\"", &blake3::hash(&bytes).to_hex()[..16]);
        self.inner.objects.lock().unwrap().insert(
            path.into(),
            Object {
                bytes: Arc::new(bytes),
                etag,
                ignore_if_match: false,
            },
        );
    }

    /// Makes `path` ignore If-Match (it still sends its ETag).
    pub fn ignore_if_match(&self, path: &str) {
        if let Some(o) = self.inner.objects.lock().unwrap().get_mut(path) {
            o.ignore_if_match = true;
        }
    }

    /// Adds a fault rule.
    pub fn rule(&self, path: &str, range: Option<(u64, u64)>, fault: Fault, times: Option<usize>) {
        self.inner.rules.lock().unwrap().push(Rule {
            path: path.into(),
            range,
            fault,
            times,
        });
    }

    /// Requires `Authorization: Basic` with these credentials.
    pub fn require_basic(&self, user: &str, password: &str) {
        use base64::Engine as _;
        let token = base64::prelude::BASE64_STANDARD.encode(format!("{user}:{password}"));
        *self.inner.basic.lock().unwrap() = Some(format!("Basic {token}"));
    }

    /// (path, Range) of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.inner.log.lock().unwrap().clone()
    }

    /// Every request head so far.
    pub fn heads(&self) -> Vec<String> {
        self.inner.heads.lock().unwrap().clone()
    }

    /// Forgets the request log.
    pub fn reset_log(&self) {
        self.inner.log.lock().unwrap().clear();
    }
}

fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn serve(inner: &Inner, conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
            if head.len() > 65536 {
                return;
            }
        }
        inner.heads.lock().unwrap().push(head.clone());
        let mut lines = head.lines();
        let request = lines.next().unwrap_or("");
        let target = request.split(' ').nth(1).unwrap_or("/").to_string();
        let path = target.split('?').next().unwrap_or("/").to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let range_header = headers.get("range").cloned().unwrap_or_default();
        inner
            .log
            .lock()
            .unwrap()
            .push((path.clone(), range_header.clone()));

        let send = |conn: &mut TcpStream, status: &str, extra: &[String], body: &[u8]| {
            let mut h = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
            for e in extra {
                h.push_str(e);
                h.push_str("\r\n");
            }
            h.push_str("\r\n");
            conn.write_all(h.as_bytes()).is_ok() && conn.write_all(body).is_ok()
        };

        let required = inner.basic.lock().unwrap().clone();
        if let Some(req) = required {
            if headers.get("authorization") != Some(&req) {
                if !send(&mut conn, "401 Unauthorized", &[], b"") {
                    return;
                }
                continue;
            }
        }
        let Some(obj) = inner.objects.lock().unwrap().get(&path).cloned() else {
            if !send(&mut conn, "404 Not Found", &[], b"") {
                return;
            }
            continue;
        };
        let requested = parse_range(&range_header);
        let fault = {
            let (lo, hi) = requested.unwrap_or((0, u64::MAX - 1));
            let mut rules = inner.rules.lock().unwrap();
            let hit = rules.iter_mut().find(|r| {
                r.path == path
                    && r.times != Some(0)
                    && r.range.is_none_or(|(a, b)| lo < b && hi >= a)
            });
            hit.map(|r| {
                if let Some(t) = &mut r.times {
                    *t -= 1;
                }
                r.fault.clone()
            })
        };
        // These answer before the object is looked at.
        let early = match &fault {
            Some(Fault::Status(s)) => Some(send(&mut conn, &format!("{s} Fault"), &[], b"")),
            Some(Fault::Redirect(to)) => Some(send(
                &mut conn,
                "302 Found",
                &[format!("Location: {to}")],
                b"",
            )),
            Some(Fault::Stall) => {
                inner.stalled.lock().unwrap().push(conn);
                return;
            }
            _ => None,
        };
        if let Some(ok) = early {
            if !ok {
                return;
            }
            continue;
        }
        let len = obj.bytes.len() as u64;
        let (start, end) = match requested {
            Some((a, b)) if a < len => (a, b.min(len - 1)),
            Some(_) => {
                let cr = format!("Content-Range: bytes */{len}");
                if !send(&mut conn, "416 Range Not Satisfiable", &[cr], b"") {
                    return;
                }
                continue;
            }
            None => (0, len.saturating_sub(1)),
        };
        let etag = format!("ETag: {}", obj.etag);
        let lm = "Last-Modified: Sat, 01 Jan 2022 00:00:00 GMT".to_string();
        if !obj.ignore_if_match {
            if let Some(m) = headers.get("if-match") {
                if *m != obj.etag {
                    if !send(&mut conn, "412 Precondition Failed", &[etag], b"") {
                        return;
                    }
                    continue;
                }
            }
        }
        let body = &obj.bytes[start as usize..=end as usize];
        let cr = format!("Content-Range: bytes {start}-{end}/{len}");
        let ok = match fault {
            None => send(&mut conn, "206 Partial Content", &[cr, etag, lm], body),
            Some(Fault::IgnoreRange) => send(&mut conn, "200 OK", &[etag, lm], &obj.bytes),
            Some(Fault::WrongContentRange) => {
                let (s2, e2) = (start + 1, (end + 1).min(len - 1));
                let cr = format!("Content-Range: bytes {s2}-{e2}/{len}");
                send(
                    &mut conn,
                    "206 Partial Content",
                    &[cr, etag],
                    &obj.bytes[s2 as usize..=e2 as usize],
                )
            }
            Some(Fault::ShortBody) => {
                let h = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n{cr}\r\n{etag}\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(h.as_bytes());
                let _ = conn.write_all(&body[..body.len() / 2]);
                return;
            }
            Some(Fault::Reset) => {
                let h = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n{cr}\r\n{etag}\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(h.as_bytes());
                let _ = conn.write_all(&body[..body.len() / 2]);
                let _ = conn.flush();
                let linger = nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                let _ =
                    nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &linger);
                return;
            }
            Some(Fault::Status(_) | Fault::Redirect(_) | Fault::Stall) => unreachable!(),
        };
        if !ok {
            return;
        }
    }
}

/// Waits (polling, bounded) until something accepts connections on `port`: the readiness of
/// servers that print nothing when ready (nginx).
fn wait_port(port: u16, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A free loopback port (bound and released: a server started right after takes it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nginx serving a directory on a loopback port, in the foreground, killed on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// Starts nginx on `root`, or `None` (after saying why) when nginx is not installed.
    pub fn start(root: &Path) -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var("HEXZD_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "nginx is not installed and HEXZD_REQUIRE_TOOLS=1"
            );
            eprintln!("SKIP: nginx is not installed (scripts/deps.sh installs it)");
            return None;
        };
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let d = dir.path().display();
            let conf = format!(
                "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
                 error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
                 http {{ access_log {d}/access.log; client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n\
                 fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
                 server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
                root.display()
            );
            let cf = dir.path().join("nginx.conf");
            std::fs::write(&cf, conf).unwrap();
            let mut child = Command::new(bin)
                .arg("-c")
                .arg(&cf)
                .arg("-p")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if wait_port(port, Duration::from_secs(10)) {
                return Some(Nginx {
                    child,
                    port,
                    _dir: dir,
                });
            }
            // Most likely the port was taken between bind and nginx: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nginx did not start");
    }

    /// `http://127.0.0.1:PORT/name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// Requests in nginx's access log so far.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self._dir.path().join("access.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

/// moto's standalone S3 (and IAM) server on a loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `moto_server`, waiting for its "Running on" line; `None` (after saying why)
    /// when it is not installed.
    pub fn start() -> Option<Moto> {
        if !have("moto_server") {
            return None;
        }
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let mut seen = Vec::new();
            let mut ready = false;
            for line in lines.by_ref().map_while(Result::ok) {
                ready = line.contains("Running on");
                seen.push(line);
                if ready {
                    break;
                }
            }
            if ready {
                std::thread::spawn(move || for _ in lines {});
                return Some(Moto { child, port });
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("moto_server did not start: {}", seen.join("\n"));
        }
        panic!("moto_server did not start");
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Raw bytes of a file.
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fixture directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2")
}

/// Reads every byte of `stream` through `read_at` in `chunk`-byte reads.
pub fn read_stream(
    snap: &hexzd::store::Snapshot,
    stream: hexzd::store::Stream,
    chunk: usize,
) -> Result<Vec<u8>, hexzd::store::StoreError> {
    let size = snap.size(stream);
    let mut out = vec![0u8; size as usize];
    let mut pos = 0usize;
    while pos < out.len() {
        let end = (pos + chunk).min(out.len());
        let n = snap.read_at(stream, pos as u64, &mut out[pos..end])?;
        assert!(n > 0, "read_at returned 0 inside the stream");
        pos += n;
    }
    Ok(out)
}

/// Reads a whole HTTP body with curl-free std: `GET path` on `addr`, returning (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, all[split + 4..].to_vec())
}
