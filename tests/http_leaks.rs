//! Clients that disconnect mid-body, mid-head or before sending anything: each connection
//! thread ends and no thread or fd leaks (counted in /proc/self before and after). One test in
//! its own binary, so no other test's threads disturb the counts.
#![allow(clippy::unwrap_used)]

mod http_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hexzd::http::HttpSettings;
use http_support::{Archive, Server, get, pattern, threads_and_fds, wait_until};

#[test]
fn clients_that_disconnect_mid_body_leak_no_thread_or_fd() {
    let dir = tempfile::tempdir().unwrap();
    // 24 MiB: far more than the socket buffers hold, so the server is mid-body when the
    // client goes.
    let data = pattern(24 << 20, 3);
    let path = http_support::pack(dir.path(), "big", &data, None);
    let srv = Server::with(HttpSettings::default(), &[Archive::new(path, "big")]);
    // Warm up (threads of the pool, lazily opened files), then count.
    assert_eq!(
        get(srv.addr, "/disk", &[("Range", "bytes=0-9")]).body,
        data[..10]
    );
    assert!(srv.wait_idle(Duration::from_secs(10)));
    let before = threads_and_fds();

    let mut clients = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        match i % 4 {
            // Full GET, read 100 KiB, hang up.
            0 | 1 => {
                s.write_all(b"GET /disk HTTP/1.1\r\nHost: a\r\n\r\n")
                    .unwrap();
                let mut buf = vec![0; 100 << 10];
                s.read_exact(&mut buf).unwrap();
            }
            // A large range, hang up after the head.
            2 => {
                s.write_all(b"GET /disk HTTP/1.1\r\nHost: a\r\nRange: bytes=1000-\r\n\r\n")
                    .unwrap();
                let mut buf = vec![0; 512];
                s.read_exact(&mut buf).unwrap();
            }
            // Half a head.
            _ => s.write_all(b"GET /disk HTTP/1.1\r\nHo").unwrap(),
        }
        clients.push(s);
    }
    assert!(wait_until(Duration::from_secs(10), || {
        srv.active.load(std::sync::atomic::Ordering::SeqCst) == 20
    }));
    drop(clients);
    assert!(
        srv.wait_idle(Duration::from_secs(30)),
        "connection threads ended"
    );
    let settled = wait_until(Duration::from_secs(10), || threads_and_fds() == before);
    assert!(settled, "before {before:?}, after {:?}", threads_and_fds());
    // And it still serves.
    assert_eq!(
        get(srv.addr, "/disk", &[("Range", "bytes=5-9")]).body,
        data[5..10]
    );
}
