//! HTTP front-end benchmark (`cargo bench --bench http`): an in-process `HttpService` behind a
//! loopback listener (the same accept loop as the integration tests), driven by client
//! threads, each result printed beside its ceiling from the same run (`Snapshot::read_at` in
//! process, same threads and sizes):
//!
//! - 1 MiB ranges, hot (block cache holds the region) and cold (cache off: every read
//!   decompresses), at 1, 4 and 16 connections: MB/s and the ratio to the ceiling;
//! - 4 KiB random ranges, hot, at 16 and 256 connections: requests/s, p50 and p99;
//! - RSS per idle connection with 1 000 idle connections;
//! - RSS per stalled connection: 300 clients that ask for the whole stream and never read
//!   (measured once every one has given its buffer back);
//! - the response budget's cost when nothing stalls: 1 MiB hot ranges with the default budget
//!   beside a budget too large to ever wait, same run.
//!
//! The archive (256 MiB, LZ4, 64 KiB blocks) is generated and packed by the bench with
//! `hexzd::pack::pack`. Client and server share the machine's cores, so the ratios are lower
//! bounds of what a remote client would see; the load average is printed because other work on
//! the machine moves every number.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

#[path = "../tests/http_support/mod.rs"]
mod http_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hexzd::format::Stream;
use hexzd::http::HttpSettings;
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot};
use http_support::Server;

const STREAM: usize = 256 << 20;
const HOT_REGION: u64 = 64 << 20;
const MIB: usize = 1 << 20;
const RUN: Duration = Duration::from_secs(2);

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A keep-alive range client with a reused body buffer.
struct BenchClient {
    w: TcpStream,
    r: BufReader<TcpStream>,
    body: Vec<u8>,
    line: String,
}

impl BenchClient {
    fn new(addr: SocketAddr, max_body: usize) -> BenchClient {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        BenchClient {
            w: s.try_clone().unwrap(),
            r: BufReader::with_capacity(64 << 10, s),
            body: vec![0; max_body],
            line: String::new(),
        }
    }

    fn range(&mut self, first: u64, len: u64) -> usize {
        let req = format!(
            "GET /disk HTTP/1.1\r\nHost: b\r\nRange: bytes={first}-{}\r\n\r\n",
            first + len - 1
        );
        self.w.write_all(req.as_bytes()).unwrap();
        let mut cl = 0usize;
        let mut status_ok = false;
        loop {
            self.line.clear();
            self.r.read_line(&mut self.line).unwrap();
            if self.line == "\r\n" || self.line.is_empty() {
                break;
            }
            if self.line.starts_with("HTTP/1.1 206") {
                status_ok = true;
            }
            if let Some(v) = self
                .line
                .strip_prefix("Content-Length: ")
                .or_else(|| self.line.strip_prefix("content-length: "))
            {
                cl = v.trim().parse().unwrap();
            }
        }
        assert!(status_ok, "expected 206");
        self.r.read_exact(&mut self.body[..cl]).unwrap();
        cl
    }
}

/// Runs `threads` workers for `RUN`; each calls `op(rng)` and returns bytes moved. Returns
/// total bytes, operations and per-operation latencies.
fn drive<F>(threads: usize, make: impl Fn(usize) -> F) -> (u64, u64, Vec<Duration>, Duration)
where
    F: FnMut(&mut Rng) -> usize + Send + 'static,
{
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + RUN;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let mut op = make(i);
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 + i as u64 * 7919);
                let mut bytes = 0u64;
                let mut lat = Vec::new();
                while Instant::now() < start {
                    std::hint::spin_loop();
                }
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    bytes += op(&mut rng) as u64;
                    lat.push(t.elapsed());
                }
                (bytes, lat)
            })
        })
        .collect();
    let mut bytes = 0;
    let mut lat = Vec::new();
    for h in handles {
        let (b, l) = h.join().unwrap();
        bytes += b;
        lat.extend(l);
    }
    let elapsed = Instant::now().saturating_duration_since(start);
    (bytes, lat.len() as u64, lat, elapsed)
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn percentile(lat: &mut [Duration], p: f64) -> Duration {
    if lat.is_empty() {
        return Duration::ZERO;
    }
    lat.sort_unstable();
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i]
}

fn open(path: &std::path::Path, cache: usize) -> (Snapshot, Arc<Engine>) {
    let engine = Engine::new(EngineConfig {
        cache_bytes: cache,
        ..EngineConfig::default()
    })
    .unwrap();
    let s = Snapshot::open_with(path, &engine, &OpenOptions::default()).unwrap();
    (s, engine)
}

fn serve(snapshot: &Snapshot, engine: &Engine, max_connections: usize) -> Server {
    serve_budget(
        snapshot,
        engine,
        max_connections,
        hexzd::serving::budget::DEFAULT_BUFFER_MEMORY,
    )
}

fn serve_budget(
    snapshot: &Snapshot,
    engine: &Engine,
    max_connections: usize,
    budget: u64,
) -> Server {
    Server::start_with_budget(
        HttpSettings {
            max_connections,
            // The idle-RSS run holds fresh connections without a request for a few seconds.
            header_timeout: Duration::from_secs(120),
            ..HttpSettings::default()
        },
        vec![hexzd::serving::NamedSnapshot {
            name: "bench".into(),
            snapshot: snapshot.clone(),
        }],
        engine,
        budget,
    )
}

/// The transport ceiling: a minimal server on loopback that answers every request head with
/// a fixed 206 head and `len` bytes from memory, in one write, with no parsing or storage.
fn loopback_server(len: usize) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                s.set_nodelay(true).unwrap();
                let mut resp =
                    format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\n\r\n")
                        .into_bytes();
                resp.resize(resp.len() + len, 7);
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(e) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        if s.write_all(&resp).is_err() {
                            return;
                        }
                        buf.copy_within(e + 4..have, 0);
                        have -= e + 4;
                    }
                }
            });
        }
    });
    addr
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench --bench http -- 1m|4k|idle|stalled|budget` runs one section.
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "hexzd HTTP bench: {cores} CPU(s), load average at start {}",
        load_average()
    );
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let data = http_support::pattern(STREAM, 42);
    let path = http_support::pack(dir.path(), "bench", &data, None);
    drop(data);
    let archive = std::fs::metadata(&path).unwrap().len();
    println!(
        "archive: {} MiB stream packed to {} MiB (LZ4, 64 KiB blocks) in {:.1} s",
        STREAM >> 20,
        archive >> 20,
        t.elapsed().as_secs_f64()
    );

    let (hot, hot_engine) = open(&path, 512 << 20);
    let (cold, cold_engine) = open(&path, 0);
    // Warm the hot region.
    let mut buf = vec![0u8; MIB];
    for off in (0..HOT_REGION).step_by(MIB) {
        hot.read_at(Stream::Main, off, &mut buf).unwrap();
    }
    let hot_srv = serve(&hot, &hot_engine, 4096);
    let cold_srv = serve(&cold, &cold_engine, 4096);

    if run("1m") {
        one_mib(&hot, &hot_srv, &cold, &cold_srv);
    }
    if run("4k") {
        four_kib(&hot, &hot_srv);
    }
    if run("idle") {
        println!();
        idle_rss(&hot, &hot_engine);
    }
    if run("stalled") {
        println!();
        stalled_rss(&hot, &hot_engine);
    }
    if run("budget") {
        println!();
        budget_cost(&hot, &hot_engine);
    }
    println!();
    println!("load average at end {}", load_average());
}

fn one_mib(hot: &Snapshot, hot_srv: &Server, cold: &Snapshot, cold_srv: &Server) {
    println!();
    println!(
        "1 MiB ranges (random offsets; hot = within a cached 64 MiB region, cold = cache off)"
    );
    println!("(ceiling = Snapshot::read_at in process; loopback = a no-op server sending the same");
    println!(" bytes from memory over the same loopback TCP: the transport's own ceiling)");
    println!(
        "{:<6} {:>5}  {:>10} {:>12} {:>7} {:>13} {:>7}",
        "", "conns", "HTTP MB/s", "ceiling MB/s", "ratio", "loopback MB/s", "ratio"
    );
    let lo_mib = loopback_server(MIB);
    for (label, snap, srv, region) in [
        ("hot", hot, hot_srv, HOT_REGION),
        ("cold", cold, cold_srv, STREAM as u64),
    ] {
        for conns in [1usize, 4, 16] {
            let (cb, _, _, cd) = drive(conns, |_| {
                let snap = snap.clone();
                let mut buf = vec![0u8; MIB];
                move |rng: &mut Rng| {
                    let off = rng.below(region - MIB as u64);
                    snap.read_at(Stream::Main, off, &mut buf).unwrap()
                }
            });
            let addr = srv.addr;
            let (hb, _, _, hd) = drive(conns, |_| {
                let mut c = BenchClient::new(addr, MIB);
                move |rng: &mut Rng| {
                    let off = rng.below(region - MIB as u64);
                    c.range(off, MIB as u64)
                }
            });
            let (lb, _, _, ld) = drive(conns, |_| {
                let mut c = BenchClient::new(lo_mib, MIB);
                move |rng: &mut Rng| c.range(rng.below(region), MIB as u64)
            });
            let (h, c, l) = (mbps(hb, hd), mbps(cb, cd), mbps(lb, ld));
            println!(
                "{label:<6} {conns:>5}  {h:>10.0} {c:>12.0} {:>7.2} {l:>13.0} {:>7.2}",
                h / c,
                h / l
            );
        }
    }
}

fn four_kib(hot: &Snapshot, hot_srv: &Server) {
    println!();
    println!("4 KiB random ranges, hot");
    println!(
        "{:<9} {:>5}  {:>10} {:>9} {:>9}",
        "", "conns", "req/s", "p50", "p99"
    );
    let lo_4k = loopback_server(4096);
    for conns in [16usize, 256] {
        let (_, ops, mut lat, d) = drive(conns.min(16), |_| {
            let snap = hot.clone();
            let mut buf = vec![0u8; 4096];
            move |rng: &mut Rng| {
                let off = rng.below(HOT_REGION - 4096);
                snap.read_at(Stream::Main, off, &mut buf).unwrap()
            }
        });
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        println!(
            "{:<9} {:>5}  {:>10.0} {:>9.1?} {:>9.1?}",
            "ceiling",
            conns.min(16),
            ops as f64 / d.as_secs_f64(),
            p50,
            p99
        );
        let addr = hot_srv.addr;
        let (_, ops, mut lat, d) = drive(conns, |_| {
            let mut c = BenchClient::new(addr, 4096);
            move |rng: &mut Rng| {
                let off = rng.below(HOT_REGION - 4096);
                c.range(off, 4096)
            }
        });
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        println!(
            "{:<9} {:>5}  {:>10.0} {:>9.1?} {:>9.1?}",
            "HTTP",
            conns,
            ops as f64 / d.as_secs_f64(),
            p50,
            p99
        );
        let (_, ops, mut lat, d) = drive(conns, |_| {
            let mut c = BenchClient::new(lo_4k, 4096);
            move |_: &mut Rng| c.range(0, 4096)
        });
        let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
        println!(
            "{:<9} {:>5}  {:>10.0} {:>9.1?} {:>9.1?}",
            "loopback",
            conns,
            ops as f64 / d.as_secs_f64(),
            p50,
            p99
        );
    }
}

/// RSS per idle connection: 1000 connections that never sent a request, then 1000 that made
/// one 4 KiB request each and then stayed idle (measured right away and after the idle
/// grace period, when they have released their buffers).
fn idle_rss(snap: &Snapshot, engine: &Engine) {
    const N: u64 = 1000;
    let srv = serve(snap, engine, 4096);
    // One connection first, so the accept thread and allocator arenas exist.
    let mut warm = BenchClient::new(srv.addr, 4096);
    warm.range(0, 4096);
    drop(warm);
    assert!(srv.wait_idle(Duration::from_secs(10)));
    let base = rss_kib();
    let mut conns: Vec<TcpStream> = (0..N)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    assert!(http_support::wait_until(Duration::from_secs(30), || {
        srv.active.load(std::sync::atomic::Ordering::SeqCst) == N as usize
    }));
    let fresh = rss_kib();
    // Now each makes one request.
    let mut head = [0u8; 4096 + 512];
    for (i, c) in conns.iter_mut().enumerate() {
        let off = (i as u64 * 4096) % HOT_REGION;
        c.write_all(
            format!(
                "GET /disk HTTP/1.1\r\nHost: b\r\nRange: bytes={off}-{}\r\n\r\n",
                off + 4095
            )
            .as_bytes(),
        )
        .unwrap();
        let mut got = 0;
        // Head (< 512 bytes) + 4096 bytes of body.
        loop {
            let n = c.read(&mut head[got..]).unwrap();
            got += n;
            let end = head[..got].windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(e) = end {
                if got >= e + 4 + 4096 {
                    break;
                }
            }
        }
    }
    let used = rss_kib();
    std::thread::sleep(Duration::from_millis(1500));
    let settled = rss_kib();
    let per = |kib: u64| (kib.saturating_sub(base)) as f64 / N as f64;
    println!("RSS per idle connection ({N} connections, target <= 64 KiB):");
    println!(
        "  never sent a request:                 {:>6.1} KiB",
        per(fresh)
    );
    println!(
        "  after one 4 KiB request, at once:     {:>6.1} KiB",
        per(used)
    );
    println!(
        "  after one 4 KiB request, idle 1.5 s:  {:>6.1} KiB",
        per(settled)
    );
    drop(conns);
}

/// RSS per stalled connection: 300 clients send `GET /disk` (256 MiB) and never read. Measured
/// once all of them are open and the response budget is back to zero (each stalled response
/// gave its buffer back after the stall tick).
fn stalled_rss(snap: &Snapshot, engine: &Engine) {
    const N: usize = 300;
    let srv = serve(snap, engine, 4096);
    let mut warm = BenchClient::new(srv.addr, 4096);
    warm.range(0, 4096);
    drop(warm);
    assert!(srv.wait_idle(Duration::from_secs(10)));
    let base = rss_kib();
    let conns: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).unwrap();
            s.write_all(b"GET /disk HTTP/1.1\r\nHost: b\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let t = Instant::now();
    let settled = http_support::wait_until(Duration::from_secs(60), || {
        srv.active.load(std::sync::atomic::Ordering::SeqCst) == N && srv.metrics.budget.used() == 0
    });
    let kib = rss_kib();
    println!(
        "RSS per stalled connection ({N} clients asking for {} MiB and reading nothing): {:.1} KiB \
         ({}settled in {:.1} s; response buffers in use: {} KiB)",
        STREAM >> 20,
        kib.saturating_sub(base) as f64 / N as f64,
        if settled { "" } else { "NOT " },
        t.elapsed().as_secs_f64(),
        srv.metrics.budget.used() >> 10
    );
    drop(conns);
}

/// The budget costs nothing measurable when nothing stalls: 1 MiB hot ranges at 4 and 16
/// connections against the default budget and against one no response ever waits for, best
/// of three 2 s runs each, interleaved.
fn budget_cost(hot: &Snapshot, engine: &Engine) {
    println!("1 MiB hot ranges: default budget (256 MiB) vs unlimited, best of 3 interleaved runs");
    let default = serve(hot, engine, 4096);
    let unlimited = serve_budget(hot, engine, 4096, 1 << 50);
    for conns in [4usize, 16] {
        let (mut d, mut u) = (0f64, 0f64);
        for _ in 0..3 {
            for (srv, best) in [(&default, &mut d), (&unlimited, &mut u)] {
                let addr = srv.addr;
                let (b, _, _, t) = drive(conns, |_| {
                    let mut c = BenchClient::new(addr, MIB);
                    move |rng: &mut Rng| c.range(rng.below(HOT_REGION - MIB as u64), MIB as u64)
                });
                *best = best.max(mbps(b, t));
            }
        }
        println!(
            "  {conns:>2} conns: default {d:>7.0} MB/s   unlimited {u:>7.0} MB/s   ratio {:.3}",
            d / u
        );
    }
}
