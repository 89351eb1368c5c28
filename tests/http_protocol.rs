//! HTTP/1.1 connection behaviour: keep-alive, pipelining, HTTP/1.0, Expect, framing errors,
//! routes, bearer token, `/snapshots`, `/metrics`, the `max_range_bytes` clamp, read errors
//! before and after the head, and Unix-socket connections.
#![allow(clippy::unwrap_used)]

mod http_support;

use std::io::{BufReader, Read, Write};
use std::sync::OnceLock;

use hexzd::http::HttpSettings;
use http_support::{
    Archive, Client, Server, fixtures, get, raw, read_response, request, status_of,
};

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        Server::with(
            HttpSettings::default(),
            &[
                Archive::new(fixtures().join("mixed-lz4.hxz"), "mixed"),
                Archive::new(fixtures().join("vm-dir-lz4.hxz"), "vm"),
            ],
        )
    })
}

fn mixed() -> &'static [u8] {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| std::fs::read(fixtures().join("mixed.img")).unwrap())
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let mut c = Client::new(server().addr);
    for i in 0..200usize {
        let body = c.range("/disk", (i * 1000) as u64, (i * 1000 + 99) as u64);
        assert_eq!(body, mixed()[i * 1000..i * 1000 + 100]);
    }
    let r = c.get("/disk", &[]);
    assert_eq!(r.body, mixed());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = server().connect();
    let mut w = s.try_clone().unwrap();
    let reqs = "GET /disk HTTP/1.1\r\nHost: a\r\nRange: bytes=0-9\r\n\r\n\
                HEAD /disk HTTP/1.1\r\nHost: a\r\n\r\n\
                GET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
                GET /disk HTTP/1.1\r\nHost: a\r\nRange: bytes=10-19\r\n\r\n\
                GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    // One write, so the server finds several requests in one read.
    w.write_all(reqs.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let a = read_response(&mut r, false).unwrap();
    assert_eq!((a.status, a.body.as_slice()), (206, &mixed()[0..10]));
    let b = read_response(&mut r, true).unwrap();
    assert_eq!(
        (b.status, b.content_length()),
        (200, Some(mixed().len() as u64))
    );
    let c = read_response(&mut r, false).unwrap();
    assert_eq!(c.status, 404);
    let d = read_response(&mut r, false).unwrap();
    assert_eq!((d.status, d.body.as_slice()), (206, &mixed()[10..20]));
    let e = read_response(&mut r, false).unwrap();
    assert_eq!((e.status, e.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(e.header("connection"), Some("close"));
    assert!(
        read_response(&mut r, false).is_none(),
        "closed after Connection: close"
    );
}

#[test]
fn pipelined_requests_split_across_reads() {
    let s = server().connect();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let reqs = b"GET /disk HTTP/1.1\r\nHost: a\r\nRange: bytes=5-6\r\n\r\nGET /disk HTTP/1.1\r\nHost: a\r\nRange: bytes=7-8\r\n\r\n";
    for chunk in reqs.chunks(7) {
        w.write_all(chunk).unwrap();
        w.flush().unwrap();
    }
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).unwrap().body, mixed()[5..7]);
    assert_eq!(read_response(&mut r, false).unwrap().body, mixed()[7..9]);
}

#[test]
fn http10_closes_unless_keep_alive() {
    let out = raw(server().addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&out), 200);
    assert!(String::from_utf8_lossy(&out).contains("Connection: close"));
    assert!(out.ends_with(b"ok\n"));

    let s = server().connect();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for _ in 0..2 {
        w.write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn expect_100_continue() {
    // Without a body there is nothing to continue: the final answer comes at once.
    let r = get(server().addr, "/healthz", &[("Expect", "100-continue")]);
    assert_eq!(r.status, 200);
    // With a body: refused before the client sends it (no 100), and closed.
    let out = raw(
        server().addr,
        b"GET /disk HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    );
    assert_eq!(status_of(&out), 413);
    assert!(!String::from_utf8_lossy(&out).contains("100 Continue"));
    let r = get(server().addr, "/healthz", &[("Expect", "tea")]);
    assert_eq!(r.status, 417);
}

#[test]
fn framing_errors() {
    let out = raw(server().addr, b"GET /disk HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&out), 400, "HTTP/1.1 without Host");
    let out = raw(
        server().addr,
        b"GET /disk HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    );
    assert_eq!(status_of(&out), 400, "two Hosts");
    let out = raw(
        server().addr,
        b"GET /disk HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
    );
    assert_eq!(status_of(&out), 400);
    let out = raw(
        server().addr,
        b"POST /disk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(status_of(&out), 413);
    let out = raw(
        server().addr,
        b"GET /disk HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&out), 200, "Content-Length: 0 is no body");
}

#[test]
fn routes() {
    let a = server().addr;
    let vm_disk = std::fs::read(fixtures().join("vm/disk.img")).unwrap();
    let vm_mem = std::fs::read(fixtures().join("vm/memory")).unwrap();
    assert_eq!(get(a, "/snapshots/vm/disk", &[]).body, vm_disk);
    assert_eq!(get(a, "/snapshots/vm/memory", &[]).body, vm_mem);
    assert_eq!(get(a, "/snapshots/mixed/disk", &[]).body, mixed());
    assert_eq!(get(a, "/disk?cache=no", &[]).body, mixed());
    assert_eq!(get(a, &format!("http://{a}/disk"), &[]).body, mixed());
    for p in [
        "/",
        "/disk/",
        "/snapshots/nope/disk",
        "/snapshots/vm/swap",
        "/snapshots/",
    ] {
        let r = get(a, p, &[]);
        assert_eq!((r.status, r.body.len()), (404, 0), "{p}");
    }
    let r = request(a, "POST", "/snapshots", &[]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[test]
fn snapshots_list_is_json() {
    let r = get(server().addr, "/snapshots", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "mixed");
    assert_eq!(list[0]["default"], true);
    assert_eq!(list[1]["default"], false);
    assert_eq!(list[0]["disk"]["size"], mixed().len() as u64);
    assert_eq!(list[0]["memory"]["size"], 0);
    assert_eq!(list[1]["memory"]["size"], 307_277);
    let disk = get(server().addr, "/disk", &[]);
    assert_eq!(list[0]["disk"]["etag"].as_str(), disk.header("etag"));
    assert_eq!(list[1]["disk"]["url"], "/snapshots/vm/disk");
    let h = request(server().addr, "HEAD", "/snapshots", &[]);
    assert_eq!(h.content_length(), Some(r.body.len() as u64));
}

#[test]
fn metrics_are_prometheus_text() {
    let _ = get(server().addr, "/disk", &[("Range", "bytes=0-99")]);
    let r = get(server().addr, "/metrics", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(r.body).unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    };
    assert!(value("hexzd_http_requests_total") >= 1);
    assert!(value("hexzd_http_sent_bytes_total") >= 100);
    assert!(value("hexzd_store_cache_hits_total") + value("hexzd_store_cache_misses_total") >= 1);
    for name in [
        "hexzd_http_read_errors_total",
        "hexzd_http_corrupt_block_errors_total",
        "hexzd_http_connections_active",
        "hexzd_nbd_requests_total",
        "hexzd_store_decompressions_total",
        "hexzd_store_block_errors_total",
        "hexzd_cache_bytes",
        "hexzd_snapshots",
    ] {
        let _ = value(name);
        assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
    }
}

#[test]
fn bearer_token() {
    let srv = Server::with(
        HttpSettings {
            auth_token: Some("s3cret".into()),
            ..HttpSettings::default()
        },
        &[Archive::new(fixtures().join("hello-lz4.hxz"), "hello")],
    );
    for (path, headers) in [
        ("/disk", vec![]),
        ("/disk", vec![("Authorization", "Bearer wrong")]),
        ("/disk", vec![("Authorization", "Basic czNjcmV0")]),
        ("/snapshots", vec![]),
        ("/metrics", vec![]),
        ("/nope", vec![]),
    ] {
        let r = get(srv.addr, path, &headers);
        assert_eq!(r.status, 401, "{path} {headers:?}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
        assert!(r.body.is_empty());
    }
    let hello = std::fs::read(fixtures().join("hello.txt")).unwrap();
    let r = get(srv.addr, "/disk", &[("Authorization", "Bearer s3cret")]);
    assert_eq!((r.status, r.body), (200, hello));
    assert_eq!(get(srv.addr, "/healthz", &[]).status, 200);
    // Keep-alive survives a 401.
    let mut c = Client::new(srv.addr);
    assert_eq!(c.get("/disk", &[]).status, 401);
    assert_eq!(
        c.get("/disk", &[("Authorization", "bearer s3cret")]).status,
        200
    );
}

#[test]
fn max_range_bytes_clamps_ranges_but_never_a_plain_get() {
    let srv = Server::with(
        HttpSettings {
            max_range_bytes: 4096,
            ..HttpSettings::default()
        },
        &[Archive::new(fixtures().join("mixed-lz4.hxz"), "mixed")],
    );
    let len = mixed().len();
    let r = get(srv.addr, "/disk", &[("Range", "bytes=1000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1000-5095/{len}").as_str())
    );
    assert_eq!(r.body, mixed()[1000..5096]);
    let r = get(srv.addr, "/disk", &[("Range", "bytes=0-99,200-5000")]);
    assert_eq!(r.status, 206);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("multipart/byteranges")
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains(&format!("Content-Range: bytes 0-99/{len}")));
    assert!(body.contains(&format!("Content-Range: bytes 200-4195/{len}")));
    let r = get(srv.addr, "/disk", &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, mixed()));
    // Exact ranges with 0.
    let srv0 = Server::with(
        HttpSettings {
            max_range_bytes: 0,
            ..HttpSettings::default()
        },
        &[Archive::new(fixtures().join("mixed-lz4.hxz"), "mixed")],
    );
    let r = get(srv0.addr, "/disk", &[("Range", "bytes=1000-")]);
    assert_eq!(r.body, mixed()[1000..]);
}

#[test]
fn read_errors_are_500_before_the_head_and_close_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, data, bad) = http_support::corrupt_archive(dir.path());
    let srv = Server::with(HttpSettings::default(), &[Archive::new(&path, "corrupt")]);
    let off = bad[0];
    // Small range inside the bad block: 500, empty, and the connection stays usable.
    let mut c = Client::new(srv.addr);
    let r = c.get("/disk", &[("Range", &format!("bytes={off}-{}", off + 99))]);
    assert_eq!((r.status, r.content_length()), (500, Some(0)));
    assert_eq!(c.range("/disk", 0, 99), data[..100]);
    // Full GET: the first MiB is good, so the head goes out, then the connection closes
    // short of Content-Length.
    let mut s = srv.connect();
    s.write_all(b"GET /disk HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(status_of(&out), 200);
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&out[..head_end]);
    assert!(head.contains(&format!("Content-Length: {}", data.len())));
    let body = &out[head_end..];
    assert!(body.len() < data.len(), "short body, then close");
    assert!(body.len() as u64 <= off);
    assert_eq!(body, &data[..body.len()]);
    let m = &srv.metrics.http;
    assert!(hexzd::serving::get(&m.read_errors) >= 2);
    let text = String::from_utf8(get(srv.addr, "/metrics", &[]).body).unwrap();
    assert!(
        text.contains("hexzd_http_corrupt_block_errors_total 2"),
        "{text}"
    );
}

#[test]
fn unix_socket_connections_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("http.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let svc = std::sync::Arc::clone(&server().service);
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        svc.serve_connection(hexzd::serving::Conn::Unix(s));
    });
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(b"GET /disk HTTP/1.1\r\nHost: a\r\nRange: bytes=0-3\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.body, mixed()[..4]);
}
