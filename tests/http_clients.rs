//! Real clients (http.md §6): curl `-r`, `-I` and `-C -`, wget `-c`, Python `http.client` with
//! keep-alive and pipelining, and aria2c segmented downloads with a checksum. The resume tests
//! run against both `max_range_bytes` settings on a 40 MiB stream: with the default 32 MiB
//! clamp a resume of more than 32 MiB is silently short (curl and wget exit 0), which is why
//! the README tells users of these clients to set `max_range_bytes = 0`.
#![allow(clippy::unwrap_used)]

mod http_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use hexzd::http::HttpSettings;
use http_support::{Archive, Kind, Target, cached_archive, fixtures, have, run};

both_kinds!(
    curl_r_single_and_multi,
    curl_i_reports_the_200_header_set,
    curl_resume_is_exact_with_max_range_bytes_0,
    curl_resume_over_32_mib_is_short_with_the_default_clamp,
    wget_continue,
    python_http_client_keep_alive,
    python_pipelining,
    aria2c_segmented_download_with_checksum,
);

const BIG: usize = 40 << 20;
const PARTIAL: usize = 1 << 20;

/// The 40 MiB stream and its archive (packed once, kept in the target's scratch directory).
fn big() -> &'static (PathBuf, Vec<u8>) {
    static B: std::sync::OnceLock<(PathBuf, Vec<u8>)> = std::sync::OnceLock::new();
    B.get_or_init(|| cached_archive("big", BIG, 11))
}

/// A server of `kind` over the big archive (default) and `mixed`, with `max_range_bytes`.
fn server(kind: Kind, max_range_bytes: u64) -> Box<dyn Target> {
    http_support::start(
        kind,
        HttpSettings {
            max_range_bytes,
            ..HttpSettings::default()
        },
        &[
            Archive::new(&big().0, "big"),
            Archive::new(fixtures().join("mixed-lz4.hxz"), "mixed"),
        ],
    )
}

fn clamped(kind: Kind) -> Box<dyn Target> {
    server(kind, 32 << 20)
}

fn exact(kind: Kind) -> Box<dyn Target> {
    server(kind, 0)
}

/// True if `tool` is installed. Otherwise the test prints SKIP and returns, unless
/// `HEXZD_REQUIRE_TOOLS=1` (as CI sets it), where a missing client is a failure.
fn require(tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    assert!(
        std::env::var("HEXZD_REQUIRE_TOOLS").as_deref() != Ok("1"),
        "{tool} is required (apt-get install {tool}) and HEXZD_REQUIRE_TOOLS=1"
    );
    eprintln!("SKIP: {tool} is not installed");
    false
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn curl_r_single_and_multi(kind: Kind) {
    if !require("curl") {
        return;
    }
    let srv = clamped(kind);
    let o = run(Command::new("curl")
        .args(["-sS", "--fail", "-r", "100-199"])
        .arg(srv.url("/disk")));
    assert!(o.status.success());
    assert_eq!(o.stdout, big().1[100..200]);
    let o = run(Command::new("curl")
        .args(["-sS", "--fail", "-r", "0-9,20-29", "-D", "-"])
        .arg(srv.url("/disk")));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("HTTP/1.1 206"));
    assert!(text.contains("multipart/byteranges; boundary="));
    assert!(text.contains("Content-Range: bytes 20-29/41943040"));
}

fn curl_i_reports_the_200_header_set(kind: Kind) {
    if !require("curl") {
        return;
    }
    let srv = clamped(kind);
    let o = run(Command::new("curl")
        .args(["-sS", "--fail", "-I"])
        .arg(srv.url("/disk")));
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200 ok"), "{text}");
    for h in [
        "content-length: 41943040",
        "accept-ranges: bytes",
        "content-type: application/octet-stream",
        "etag: \"",
        "last-modified: ",
    ] {
        assert!(text.contains(h), "{h} missing in {text}");
    }
}

fn partial(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, &big().1[..PARTIAL]).unwrap();
    p
}

fn curl_resume_is_exact_with_max_range_bytes_0(kind: Kind) {
    if !require("curl") {
        return;
    }
    let srv = exact(kind);
    let dir = tempfile::tempdir().unwrap();
    let p = partial(dir.path(), "curl-exact");
    let o = run(Command::new("curl")
        .args(["-sS", "--fail", "-C", "-", "-o"])
        .arg(&p)
        .arg(srv.url("/disk")));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&p).unwrap() == big().1);
}

fn curl_resume_over_32_mib_is_short_with_the_default_clamp(kind: Kind) {
    if !require("curl") {
        return;
    }
    let srv = clamped(kind);
    let dir = tempfile::tempdir().unwrap();
    let p = partial(dir.path(), "curl-clamped");
    let o = run(Command::new("curl")
        .args(["-sS", "--fail", "-C", "-", "-o"])
        .arg(&p)
        .arg(srv.url("/disk")));
    // curl exits 0 and the file is silently short: the documented reason for
    // `max_range_bytes = 0` (http.md §3a, §6).
    assert!(o.status.success());
    let got = std::fs::read(&p).unwrap();
    assert_eq!(got.len(), PARTIAL + (32 << 20));
    assert!(got[..] == big().1[..got.len()]);
    // A resume of 32 MiB or less is exact even with the clamp.
    let p = dir.path().join("curl-clamped-small");
    std::fs::write(&p, &big().1[..BIG - (32 << 20)]).unwrap();
    let o = run(Command::new("curl")
        .args(["-sS", "--fail", "-C", "-", "-o"])
        .arg(&p)
        .arg(srv.url("/disk")));
    assert!(o.status.success());
    assert!(std::fs::read(&p).unwrap() == big().1);
}

fn wget_continue(kind: Kind) {
    if !require("wget") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (server, name, exact) in [
        (exact(kind), "wget-exact", true),
        (clamped(kind), "wget-clamped", false),
    ] {
        let p = partial(dir.path(), name);
        let o = run(Command::new("wget")
            .args(["-q", "-c", "-O"])
            .arg(&p)
            .arg(server.url("/disk")));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got = std::fs::read(&p).unwrap();
        if exact {
            assert!(got == big().1);
        } else {
            // Short like curl's: wget trusts the 206 and stops.
            assert_eq!(got.len(), PARTIAL + (32 << 20));
            assert!(got[..] == big().1[..got.len()]);
        }
    }
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

const PY_KEEPALIVE: &str = r#"
import http.client, sys, random
host, port, path, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3], open(sys.argv[4], 'rb').read()
c = http.client.HTTPConnection(host, port, timeout=30)
rng = random.Random(5)
sock = None
for i in range(300):
    a = rng.randrange(len(raw)); b = min(len(raw) - 1, a + rng.randrange(100000))
    c.request('GET', path, headers={'Range': 'bytes=%d-%d' % (a, b)})
    r = c.getresponse()
    body = r.read()
    assert r.status == 206, r.status
    assert r.getheader('Content-Range') == 'bytes %d-%d/%d' % (a, b, len(raw)), r.getheader('Content-Range')
    assert body == raw[a:b + 1], (a, b)
    if sock is None:
        sock = c.sock
    assert c.sock is sock, 'connection was not kept alive'
c.request('HEAD', path)
r = c.getresponse(); r.read()
assert r.status == 200 and int(r.getheader('Content-Length')) == len(raw)
c.request('GET', path)
r = c.getresponse()
assert r.read() == raw
assert c.sock is sock
print('ok')
"#;

const PY_PIPELINE: &str = r#"
import http.client, socket, sys
host, port, path, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3], open(sys.argv[4], 'rb').read()
s = socket.create_connection((host, port), timeout=30)
ranges = [(i * 7919 % len(raw), min(len(raw) - 1, i * 7919 % len(raw) + 4095)) for i in range(50)]
reqs = b''.join(b'GET %s HTTP/1.1\r\nHost: x\r\nRange: bytes=%d-%d\r\n\r\n' % (path.encode(), a, b) for a, b in ranges)
reqs += b'HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n' % path.encode()
s.sendall(reqs)  # all 51 requests before reading any answer
class Shared:
    # One buffered reader for all responses; HTTPResponse closes its reader when a body
    # ends, which must not end the connection.
    def __init__(self, f): self.f = f
    def __getattr__(self, name): return getattr(self.f, name)
    def close(self): pass
fp = Shared(s.makefile('rb'))
for a, b in ranges:
    r = http.client.HTTPResponse(s)
    r.fp = fp  # share one buffered reader so no response is swallowed
    r.begin()
    assert r.status == 206
    assert r.read() == raw[a:b + 1], (a, b)
r = http.client.HTTPResponse(s, method='HEAD')
r.fp = fp
r.begin()
assert r.status == 200 and int(r.getheader('Content-Length')) == len(raw)
print('ok')
"#;

fn python_script(kind: Kind, script: &str) {
    let raw = fixtures().join("mixed.img");
    let srv = clamped(kind);
    let o = run(Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(srv.addr().ip().to_string())
        .arg(srv.addr().port().to_string())
        .arg("/snapshots/mixed/disk")
        .arg(&raw));
    assert!(
        o.status.success() && o.stdout == b"ok\n",
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn python_http_client_keep_alive(kind: Kind) {
    python_script(kind, PY_KEEPALIVE);
}

fn python_pipelining(kind: Kind) {
    python_script(kind, PY_PIPELINE);
}

fn aria2c_segmented_download_with_checksum(kind: Kind) {
    if !require("aria2c") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for (server, path, data, name) in [
        (exact(kind), "/disk", big().1.clone(), "aria-big"),
        (
            clamped(kind),
            "/snapshots/mixed/disk",
            std::fs::read(fixtures().join("mixed.img")).unwrap(),
            "aria-mixed",
        ),
    ] {
        let dir = tmp.path();
        let o = run(Command::new("aria2c")
            .args([
                "-q",
                "-x",
                "4",
                "-s",
                "4",
                "-k",
                "1M",
                "--allow-overwrite=true",
            ])
            .arg(format!("--checksum=sha-256={}", sha256(&data)))
            .arg("-d")
            .arg(dir)
            .arg("-o")
            .arg(name)
            .arg(server.url(path)));
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(std::fs::read(dir.join(name)).unwrap() == data, "{name}");
    }
}
