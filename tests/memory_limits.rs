//! Bounded memory whatever clients do (issue 12), against the real binary: stalled readers
//! (HTTP and NBD) hold no response buffers and are closed by the send timeout while a fresh
//! client is served; idle NBD connections give back what a burst took; the per-client cap.
//! RSS, threads and fds come from /proc/PID of the daemon. The tests take turns (one lock), so
//! one's load does not disturb another's counts.
#![allow(clippy::unwrap_used)]

mod http_support;
mod memory_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use memory_support::{
    Daemon, connect_from, http_get, http_get_on, http_status, mib, nbd_handshake,
};

static TURN: Mutex<()> = Mutex::new(());

const MIB: u64 = 1 << 20;
/// Size of the served stream.
const STREAM: usize = 64 << 20;

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn stalled_readers_hold_no_buffers_a_fresh_client_is_served_and_the_send_timeout_closes_them() {
    let _t = turn();
    let (archive, data) = http_support::cached_archive("memory", STREAM, 5);
    // The default configuration, but a send timeout short enough for a test.
    let d = Daemon::start(&archive, "[limits]\nsend_timeout = \"10s\"\n");
    // Warm up: pool threads, the cache holding the whole stream (64 MiB of the 256 MiB).
    assert_eq!(http_get(d.http, "/disk", None).1.len(), STREAM);
    let base_rss = d.rss();
    let base_threads = d.threads();
    let base_fds = d.fds();
    let budget = d.metric("hexzd_buffer_memory_bytes");
    assert_eq!(budget, 256 * MIB, "the default budget");

    // 300 HTTP clients ask for the whole 64 MiB stream and never read.
    let mut stalled: Vec<TcpStream> = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(d.http).unwrap();
        std::io::Write::write_all(&mut s, b"GET /disk HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        stalled.push(s);
    }
    // 24 NBD clients send 4 READs of 32 MiB each and never read the replies.
    let mut nbd_stalled = Vec::new();
    for _ in 0..24 {
        let mut c = nbd_handshake(TcpStream::connect(d.nbd).unwrap()).unwrap();
        for i in 0..4u64 {
            c.send_read(i, (i % 2) * (32 * MIB), 32 << 20);
        }
        nbd_stalled.push(c);
    }
    // Every one of them is open, and every one has given its buffers back.
    let settled = d.wait(Duration::from_secs(60), |d| {
        d.metric("hexzd_http_connections_active") >= 300
            && d.metric("hexzd_nbd_connections_active") == 24
            && d.metric("hexzd_buffer_memory_used_bytes") == 0
    });
    assert!(
        settled,
        "stalled clients did not settle: http {} nbd {} used {} waits {}",
        d.metric("hexzd_http_connections_active"),
        d.metric("hexzd_nbd_connections_active"),
        d.metric("hexzd_buffer_memory_used_bytes"),
        d.metric("hexzd_buffer_memory_waits_total"),
    );
    let stalled_rss = d.rss();
    let per_conn = stalled_rss.saturating_sub(base_rss) / 324;
    eprintln!(
        "324 stalled connections: RSS {:.1} -> {:.1} MiB ({:.0} KiB each), threads {base_threads} -> {}",
        mib(base_rss),
        mib(stalled_rss),
        per_conn as f64 / 1024.0,
        d.threads()
    );
    assert!(
        per_conn <= 512 << 10,
        "{} KiB per stalled connection",
        per_conn >> 10
    );

    // A fresh client is served while they are still open.
    let (status, body) = http_get(d.http, "/disk", Some("1000-1049575"));
    assert_eq!(status, 206);
    assert!(body == data[1000..1_049_576]);
    let mut fresh = nbd_handshake(TcpStream::connect(d.nbd).unwrap()).unwrap();
    fresh.send_read(7, 5 * MIB, 32 << 20);
    let (cookie, got) = fresh.read_reply(32 << 20);
    assert_eq!(cookie, 7);
    assert!(got == data[5 << 20..37 << 20]);
    drop(fresh);
    assert_eq!(
        d.metric("hexzd_http_send_timeouts_total") + d.metric("hexzd_nbd_send_timeouts_total"),
        0,
        "the fresh clients were served before any stalled one was closed"
    );
    assert_eq!(d.metric("hexzd_buffer_memory_timeouts_total"), 0);

    // The send timeout closes every stalled connection (nbd.idle_timeout is 0: never idle).
    let closed = d.wait(Duration::from_secs(60), |d| {
        d.metric("hexzd_http_send_timeouts_total") >= 300
            && d.metric("hexzd_nbd_send_timeouts_total") >= 24
            && d.metric("hexzd_nbd_connections_active") == 0
    });
    assert!(closed, "stalled clients not closed:\n{}", d.log_text());
    // The clients see the end of their streams.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    drop(stalled);
    drop(nbd_stalled);
    let peak = d.status("VmHWM");
    let growth = peak.saturating_sub(base_rss);
    eprintln!(
        "peak RSS {:.1} MiB: growth {:.1} MiB (budget 256 + cache 256 + 64 allowed)",
        mib(peak),
        mib(growth)
    );
    assert!(
        growth <= budget + 256 * MIB + 64 * MIB,
        "RSS grew by {:.1} MiB",
        mib(growth)
    );
    // Threads and fds come back.
    let back = d.wait(Duration::from_secs(30), |d| {
        d.threads() <= base_threads + 2 && d.fds() <= base_fds + 2
    });
    assert!(
        back,
        "threads {} (were {base_threads}), fds {} (were {base_fds})",
        d.threads(),
        d.fds()
    );
    // Logged once per event class and second, not once per connection.
    let timeouts_logged = d
        .log_text()
        .lines()
        .filter(|l| l.contains("send_timeout"))
        .count();
    assert!(
        timeouts_logged < 100,
        "{timeouts_logged} send-timeout lines"
    );
}

#[test]
fn idle_nbd_connections_after_a_burst_cost_what_they_cost_before() {
    let _t = turn();
    let (archive, data) = http_support::cached_archive("memory", STREAM, 5);
    let d = Daemon::start(&archive, "");
    // Two bursts first, so the block cache holds what the bursts below read (it admits a
    // block on its second miss).
    let burst = |c: &mut memory_support::Nbd<TcpStream>| {
        for i in 0..16u64 {
            c.send_read(i, i * 2 * MIB, 2 << 20);
        }
        for _ in 0..16 {
            let (cookie, got) = c.read_reply(2 << 20);
            let at = memory_support_offset(cookie);
            assert!(got == data[at..at + (2 << 20)]);
        }
    };
    let mut warm = nbd_handshake(TcpStream::connect(d.nbd).unwrap()).unwrap();
    burst(&mut warm);
    burst(&mut warm);
    drop(warm);
    assert!(d.wait(
        Duration::from_secs(10),
        |d| d.metric("hexzd_nbd_connections_active") == 0
    ));
    let base_threads = d.threads();

    // 20 connections, idle after their handshake: what an idle connection costs.
    let mut conns: Vec<_> = (0..20)
        .map(|_| nbd_handshake(TcpStream::connect(d.nbd).unwrap()).unwrap())
        .collect();
    assert!(d.wait(
        Duration::from_secs(10),
        |d| d.metric("hexzd_nbd_connections_active") == 20
    ));
    let before = d.rss();
    // One burst of 16 concurrent 2 MiB READs each, then idle.
    for c in &mut conns {
        burst(c);
    }
    let after_burst = d.rss();
    // Idle handlers give their buffers back and all but one exit.
    let reaped = d.wait(Duration::from_secs(30), |d| {
        d.threads() <= base_threads + 20 * 2 && d.metric("hexzd_buffer_memory_used_bytes") == 0
    });
    assert!(reaped, "threads {} (base {base_threads})", d.threads());
    let idle = d.rss();
    let per_conn = idle.saturating_sub(before) / 20;
    eprintln!(
        "20 idle NBD connections: RSS {:.1} MiB before the burst, {:.1} MiB after it, {:.1} MiB \
         once idle ({:.0} KiB per connection more than before)",
        mib(before),
        mib(after_burst),
        mib(idle),
        per_conn as f64 / 1024.0
    );
    assert!(
        per_conn <= MIB,
        "{:.1} MiB per idle connection",
        mib(per_conn)
    );
    // Still served.
    burst(&mut conns[0]);
}

#[test]
fn a_large_nbd_read_buffer_is_kept_between_reads_only_briefly() {
    let _t = turn();
    let (archive, data) = http_support::cached_archive("memory", STREAM, 5);
    let d = Daemon::start(&archive, "");
    let mut c = nbd_handshake(TcpStream::connect(d.nbd).unwrap()).unwrap();
    // Larger than what a handler keeps for good (2 MiB): kept for the next READ for a short
    // while (no fresh mapping to fault in per READ), and the bytes stay right.
    let len = 16usize << 20;
    for round in 0..3u64 {
        let at = round * 8 * MIB;
        c.send_read(round, at, u32::try_from(len).unwrap());
        let (cookie, got) = c.read_reply(len);
        assert_eq!(cookie, round);
        let at = usize::try_from(at).unwrap();
        assert!(got == data[at..at + len], "round {round}");
    }
    // Then given back, with the connection still open and nothing else to do.
    assert!(
        d.wait(Duration::from_secs(10), |d| d
            .metric("hexzd_buffer_memory_used_bytes")
            == 0),
        "{} bytes of buffers still held",
        d.metric("hexzd_buffer_memory_used_bytes")
    );
    drop(c);
}

/// The stream offset of a burst's reply, from its cookie.
fn memory_support_offset(cookie: u64) -> usize {
    usize::try_from(cookie * 2 * MIB).unwrap()
}

#[test]
fn a_client_at_its_cap_is_refused_and_another_client_is_not() {
    let _t = turn();
    let (archive, data) = http_support::cached_archive("memory-small", 1 << 20, 6);
    let d = Daemon::start(&archive, "[limits]\nmax_connections_per_client = 2\n");
    let one = Ipv4Addr::new(127, 0, 0, 1);
    let two = Ipv4Addr::new(127, 0, 0, 2);

    // HTTP: two idle connections from 127.0.0.1 are admitted, the third is answered 503.
    let held: Vec<_> = (0..2).map(|_| connect_from(one, d.http)).collect();
    assert!(d.wait(
        Duration::from_secs(10),
        |d| d.metric("hexzd_http_connections_active") >= 3
    ));
    let mut third = connect_from(one, d.http);
    let mut refused = Vec::new();
    third.read_to_end(&mut refused).unwrap();
    let text = String::from_utf8_lossy(&refused);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("Retry-After: 1"), "{text}");
    // 127.0.0.2 is another client.
    let mut other = connect_from(two, d.http);
    let (status, body) = http_get_on(&mut other, "/disk", Some("0-99"));
    assert_eq!((status, body.as_slice()), (206, &data[..100]));

    // NBD: the same, and a refusal is a close before the greeting.
    let nbd_held: Vec<_> = (0..2)
        .map(|_| nbd_handshake(connect_from(one, d.nbd)).unwrap())
        .collect();
    assert!(nbd_handshake(connect_from(one, d.nbd)).is_none());
    let mut c = nbd_handshake(connect_from(two, d.nbd)).unwrap();
    c.send_read(1, 0, 4096);
    assert!(c.read_reply(4096).1 == data[..4096]);

    // Unix-socket peers count by user: this test's uid has its two connections.
    let unix: Vec<_> = (0..2)
        .map(|_| nbd_handshake(UnixStream::connect(&d.unix).unwrap()).unwrap())
        .collect();
    assert!(nbd_handshake(UnixStream::connect(&d.unix).unwrap()).is_none());

    assert_eq!(
        d.metric("hexzd_http_connections_rejected_per_client_total"),
        1
    );
    assert_eq!(
        d.metric("hexzd_nbd_connections_rejected_per_client_total"),
        2
    );
    // A slot comes back when its connection closes.
    drop(held);
    assert!(d.wait(Duration::from_secs(10), |_| http_status(
        d.http,
        "/disk",
        Some("0-9")
    ) == Some(206)));
    drop((nbd_held, unix));
}

/// A daemon serving the 64 MiB test stream (default config but a 30 s send timeout), and the
/// stream's bytes.
fn stream_daemon() -> (Daemon, Vec<u8>) {
    let (archive, data) = http_support::cached_archive("memory", STREAM, 5);
    (
        Daemon::start(&archive, "[limits]\nsend_timeout = \"30s\"\n"),
        data,
    )
}

/// [`stream_daemon`] with the whole stream in its cache, read through the NBD connection it
/// returns.
fn cached_nbd_daemon() -> (Daemon, Vec<u8>, memory_support::Nbd<TcpStream>) {
    let (d, data) = stream_daemon();
    let mut c = nbd_handshake(TcpStream::connect(d.nbd).unwrap()).unwrap();
    // Twice over the stream: a block enters the cache on its second miss.
    let step = 8usize << 20;
    for round in 0..2u64 {
        for off in (0..STREAM).step_by(step) {
            c.send_read(round, off as u64, 8 << 20);
            let (_, got) = c.read_reply(step);
            assert!(got == data[off..off + step], "round {round} at {off}");
        }
    }
    (d, data, c)
}

/// Waits until the cache has answered `hits` lookups in all and no response budget is in
/// use: the replies answered from it have stalled and given their memory back.
fn wait_stalled(d: &Daemon, hits: u64) {
    let settled = d.wait(Duration::from_secs(30), |d| {
        d.metric("hexzd_store_cache_hits_total") >= hits
            && d.metric("hexzd_buffer_memory_used_bytes") == 0
    });
    assert!(
        settled,
        "hits {} (waiting for {hits}), budget used {}",
        d.metric("hexzd_store_cache_hits_total"),
        d.metric("hexzd_buffer_memory_used_bytes")
    );
}

#[test]
fn a_nbd_read_sent_from_the_cache_gives_its_memory_back_on_a_stall_and_resumes_byte_exact() {
    let _t = turn();
    let (d, data, mut c) = cached_nbd_daemon();
    // Two READs of 32 MiB answered straight from the cache, which the client does not read
    // yet: their replies stall and give their budget back (the blocks with it).
    let hits = d.metric("hexzd_store_cache_hits_total");
    let reads = [(100u64, 3 * MIB + 17), (101, 29 * MIB + 5)];
    for (cookie, off) in reads {
        c.send_read(cookie, off, 32 << 20);
    }
    wait_stalled(&d, hits + 2);
    // Then the client reads: both replies whole and byte-exact, in either order.
    for _ in 0..2 {
        let (cookie, got) = c.read_reply(32 << 20);
        let (_, off) = reads.iter().find(|r| r.0 == cookie).expect("a cookie sent");
        let o = usize::try_from(*off).unwrap();
        assert!(got == data[o..o + (32 << 20)], "reply {cookie}");
    }
    assert_eq!(d.metric("hexzd_nbd_send_timeouts_total"), 0);
}

#[test]
fn an_http_body_sent_from_the_cache_gives_its_memory_back_on_a_stall_and_resumes_byte_exact() {
    let _t = turn();
    let (d, data) = stream_daemon();
    // Twice over the stream: a block enters the cache on its second miss.
    for _ in 0..2 {
        assert!(http_get(d.http, "/disk", None).1 == data);
    }
    // A 30 MiB range answered from the cache, which the client does not read yet: the body
    // stalls and gives its budget back (the blocks with it).
    let hits = d.metric("hexzd_store_cache_hits_total");
    let (first, last) = (3 * MIB + 17, 33 * MIB + 4);
    let mut s = TcpStream::connect(d.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!(
        "GET /disk HTTP/1.1\r\nHost: t\r\nRange: bytes={first}-{last}\r\nConnection: close\r\n\r\n"
    );
    std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
    wait_stalled(&d, hits + 1);
    // Then the client reads: the whole range, byte-exact.
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert_eq!(&all[9..12], b"206");
    let (f, l) = (
        usize::try_from(first).unwrap(),
        usize::try_from(last).unwrap(),
    );
    let body = &all[end + 4..];
    let want = &data[f..=l];
    let diff = body.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        body == want,
        "body {} bytes, expected {}; first difference at {diff:?}; head {:?}",
        body.len(),
        want.len(),
        String::from_utf8_lossy(&all[..end])
    );
    assert_eq!(d.metric("hexzd_http_send_timeouts_total"), 0);
}

#[test]
fn small_cached_nbd_reads_left_unread_hold_no_memory_and_stop_only_their_connection() {
    let _t = turn();
    let (d, data, mut c) = cached_nbd_daemon();
    // 400 READs of 256 KiB from the cache (100 MiB of replies), which the connection's own
    // thread answers, and which the client does not read yet: the reader's reply stalls
    // once the socket is full, and gives its budget back while it waits.
    let hits = d.metric("hexzd_store_cache_hits_total");
    let len = 256usize << 10;
    let at = |cookie: u64| (usize::try_from(cookie).unwrap() * 160_001) % (STREAM - len);
    for cookie in 0..400u64 {
        c.send_read(cookie, at(cookie) as u64, 256 << 10);
    }
    wait_stalled(&d, hits + 1);
    // Another client is served meanwhile.
    let mut other = nbd_handshake(TcpStream::connect(d.nbd).unwrap()).unwrap();
    other.send_read(9999, 12_345, 1 << 20);
    let (cookie, got) = other.read_reply(1 << 20);
    assert_eq!(cookie, 9999);
    assert!(got == data[12_345..12_345 + (1 << 20)]);
    // Then the first client reads: every reply whole and byte-exact.
    let mut seen = vec![false; 400];
    for _ in 0..400 {
        let (cookie, got) = c.read_reply(len);
        let i = usize::try_from(cookie).unwrap();
        assert!(!seen[i], "reply {cookie} twice");
        seen[i] = true;
        assert!(got == data[at(cookie)..at(cookie) + len], "reply {cookie}");
    }
    assert_eq!(d.metric("hexzd_buffer_memory_used_bytes"), 0);
    assert_eq!(d.metric("hexzd_nbd_send_timeouts_total"), 0);
}

/// A client that reads slowly but steadily is not a stalled one: it keeps its connection past
/// the send timeout and gets every byte. Linux reports a TCP socket writable only once a third
/// of its send buffer is free, and the buffer autotunes to megabytes: without TCP_NOTSENT_LOWAT
/// (`serving::conn::NOTSENT_LOWAT`) this reader drained too little per send timeout and was
/// closed as one that read nothing (found in review: 39 KB/s cut after a 5 s timeout). The
/// client's receive buffer is fixed and small, as a slow client's is: a large one opens its
/// window only after a sixteenth of it is read, which no server can see sooner.
#[test]
fn a_slow_but_steady_http_reader_outlives_the_send_timeout() {
    let _t = turn();
    let (archive, data) = http_support::cached_archive("memory", STREAM, 5);
    let d = Daemon::start(&archive, "[limits]\nsend_timeout = \"2s\"\n");
    let mut s = TcpStream::connect(d.http).unwrap();
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /disk HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    // 8 KiB every 50 ms (160 KB/s) for two send timeouts. The pauses are the client's pace
    // under test, not a wait for the server.
    let slow_until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < slow_until {
        let n = s.read(&mut buf[..8192]).unwrap();
        assert!(n > 0, "closed after {} bytes", all.len());
        all.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        d.metric("hexzd_http_send_timeouts_total"),
        0,
        "cut as stalled"
    );
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(
        all[end + 4..] == data[..],
        "{} body bytes",
        all.len() - end - 4
    );
    assert_eq!(d.metric("hexzd_http_send_timeouts_total"), 0);
}
