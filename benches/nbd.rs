//! NBD front-end benchmark (issue 4), `cargo bench --bench nbd`. Not a timed test: it prints
//! numbers, each beside the in-process `Snapshot::read_at` ceiling measured in the same run.
//!
//! - sequential read of a generated, `hexzd::pack`ed export (default 256 MiB; set
//!   `HEXZD_BENCH_MIB`) over one NBD connection with 16 requests of 256 KiB in flight, cold (fresh
//!   block cache; the archive file itself is in the page cache) and hot;
//! - 4 KiB random reads at queue depth 1 and 64 (hot): IOPS, p50, p99;
//! - `nbdcopy` of the export to `null:` from hexzd, against `qemu-nbd -r` serving the raw image,
//!   both over Unix sockets, with and without extents;
//! - the response budget's cost when nothing stalls: sequential hot with the default budget
//!   beside a budget too large to ever wait;
//! - memory: RSS per idle connection after a burst (20 connections, 16 x 2 MiB READs each,
//!   then idle past the handler reaping time) and per stalled connection (24 connections
//!   with 4 x 32 MiB READs unread, once every one has given its buffers back).
//!
//! `cargo bench --bench nbd -- memory` runs only the memory section.
//!
//! Each figure is the best of `HEXZD_BENCH_RUNS` (default 3) runs: the machine is shared. The
//! server runs in-process (`NbdService::serve_connection` on a thread per connection); the
//! client is a small pipelining client over `hexzd::nbd::proto`.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hexzd::format::Stream;
use hexzd::nbd::proto::*;
use hexzd::nbd::{NbdService, NbdSettings};
use hexzd::serving::{Catalog, CatalogHandle, Conn, Metrics, NamedSnapshot};
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot};

const REQUEST: usize = 256 * 1024;
const SEQ_DEPTH: usize = 16;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Moderately compressible data (about 3:1 with LZ4) with every eighth 64 KiB chunk zero.
fn generate(path: &Path, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut chunk = vec![0u8; 65536];
    for i in 0..size / 65536 {
        if i % 8 == 7 {
            chunk.fill(0);
        } else {
            for run in chunk.chunks_mut(16) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let b = x.to_le_bytes();
                for (j, c) in run.iter_mut().enumerate() {
                    *c = if j < 6 { b[j] } else { b[j % 3] & 0x3f };
                }
            }
        }
        f.write_all(&chunk).unwrap();
    }
    f.flush().unwrap();
}

/// A fresh engine (empty block cache) and the snapshot opened in it.
fn open(archive: &Path) -> (Arc<Engine>, Snapshot) {
    let engine = Engine::new(EngineConfig {
        cache_bytes: 1 << 30,
        ..EngineConfig::default()
    })
    .unwrap();
    let snap = Snapshot::open_with(archive, &engine, &OpenOptions::default()).unwrap();
    (engine, snap)
}

struct Server {
    port: u16,
    socket: PathBuf,
    metrics: Arc<Metrics>,
}

fn serve(engine: &Arc<Engine>, snap: &Snapshot, dir: &Path, tag: &str) -> Server {
    let budget = hexzd::serving::budget::DEFAULT_BUFFER_MEMORY;
    serve_budget(engine, snap, dir, tag, budget)
}

fn serve_budget(
    engine: &Arc<Engine>,
    snap: &Snapshot,
    dir: &Path,
    tag: &str,
    budget: u64,
) -> Server {
    let catalog = Catalog::new(
        vec![NamedSnapshot {
            name: "bench".into(),
            snapshot: snap.clone(),
        }],
        None,
    )
    .unwrap();
    let metrics = Arc::new(Metrics::with_budget(Arc::clone(&engine.metrics), budget));
    let svc = Arc::new(NbdService::new(
        NbdSettings::default(),
        Arc::new(CatalogHandle::new(catalog)),
        Arc::clone(&metrics),
    ));
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port();
    let socket = dir.join(format!("hexzd-{tag}.sock"));
    let unix = UnixListener::bind(&socket).unwrap();
    let s2 = Arc::clone(&svc);
    std::thread::spawn(move || {
        for s in tcp.incoming().flatten() {
            let svc = Arc::clone(&s2);
            std::thread::spawn(move || svc.serve_connection(Conn::Tcp(s)));
        }
    });
    std::thread::spawn(move || {
        for s in unix.incoming().flatten() {
            let svc = Arc::clone(&svc);
            std::thread::spawn(move || svc.serve_connection(Conn::Unix(s)));
        }
    });
    Server {
        port,
        socket,
        metrics,
    }
}

/// A pipelining client on one connection (simple replies).
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut g = [0u8; GREETING_LEN];
        s.read_exact(&mut g).unwrap();
        s.write_all(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
        let data = encode_info_request("bench", &[]);
        let mut o = OptionHeader {
            option: NBD_OPT_GO,
            length: u32::try_from(data.len()).unwrap(),
        }
        .encode()
        .to_vec();
        o.extend_from_slice(&data);
        s.write_all(&o).unwrap();
        loop {
            let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
            s.read_exact(&mut h).unwrap();
            let h = OptionReplyHeader::decode(&h).unwrap();
            let mut p = vec![0u8; h.length as usize];
            s.read_exact(&mut p).unwrap();
            if h.reply_type == NBD_REP_ACK {
                break;
            }
            assert_eq!(h.reply_type, NBD_REP_INFO);
        }
        Client {
            s,
            buf: vec![0u8; 32 << 20],
        }
    }

    fn send(&mut self, cookie: u64, offset: u64, len: usize) {
        let r = Request {
            flags: 0,
            command: NBD_CMD_READ,
            cookie,
            offset,
            length: u32::try_from(len).unwrap(),
        };
        self.s.write_all(&r.encode()).unwrap();
    }

    /// Receives one reply and its payload; returns the cookie.
    fn recv(&mut self, lens: &HashMap<u64, usize>) -> u64 {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        self.s.read_exact(&mut h).unwrap();
        let ReplyHeader::Simple { error, cookie } = ReplyHeader::decode(&h).unwrap() else {
            panic!("simple replies only");
        };
        assert_eq!(error, 0);
        let n = lens[&cookie];
        self.s.read_exact(&mut self.buf[..n]).unwrap();
        cookie
    }

    /// Reads `reqs` (offset, len) keeping `depth` in flight; returns per-request latencies.
    fn run(&mut self, reqs: &[(u64, usize)], depth: usize) -> Vec<Duration> {
        let mut lens = HashMap::new();
        let mut start = HashMap::new();
        let mut lat = Vec::with_capacity(reqs.len());
        let mut next = 0;
        while next < reqs.len().min(depth) {
            lens.insert(next as u64, reqs[next].1);
            start.insert(next as u64, Instant::now());
            self.send(next as u64, reqs[next].0, reqs[next].1);
            next += 1;
        }
        for _ in 0..reqs.len() {
            let c = self.recv(&lens);
            lat.push(start[&c].elapsed());
            if next < reqs.len() {
                lens.insert(next as u64, reqs[next].1);
                start.insert(next as u64, Instant::now());
                self.send(next as u64, reqs[next].0, reqs[next].1);
                next += 1;
            }
        }
        lat
    }
}

fn sequential(size: u64) -> Vec<(u64, usize)> {
    (0..size)
        .step_by(REQUEST)
        .map(|o| (o, REQUEST.min(usize::try_from(size - o).unwrap())))
        .collect()
}

fn random_4k(size: u64, n: usize, seed: u64) -> Vec<(u64, usize)> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (((x >> 16) % (size / 4096)) * 4096, 4096)
        })
        .collect()
}

/// In-process ceiling: `threads` threads share `reqs`, each calling `read_at` in turn.
fn ceiling(snap: &Snapshot, reqs: &[(u64, usize)], threads: usize) -> (Duration, Vec<Duration>) {
    let t0 = Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut buf = vec![0u8; REQUEST];
                    let mut lat = Vec::new();
                    for &(o, n) in reqs.iter().skip(t).step_by(threads) {
                        let t = Instant::now();
                        assert_eq!(snap.read_at(Stream::Main, o, &mut buf[..n]).unwrap(), n);
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    (t0.elapsed(), lat)
}

fn mbs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn pct(lat: &mut [Duration], p: f64) -> f64 {
    lat.sort_unstable();
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i].as_secs_f64() * 1e6
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn nbdcopy(uri: &str, extra: &[&str]) -> Option<Duration> {
    let t = Instant::now();
    let out = Command::new("nbdcopy")
        .args(extra)
        .arg(uri)
        .arg("null:")
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("nbdcopy {uri}: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(t.elapsed())
}

/// Transport ceiling: the same reply stream (16-byte header + 256 KiB from memory) pushed
/// through loopback TCP with no NBD server behind it. No socket server can beat this.
fn transport_ceiling(size: u64) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let data = vec![7u8; REQUEST];
        let mut sent = 0u64;
        while sent < size {
            let h = simple_reply(0, 0);
            let bufs = [std::io::IoSlice::new(&h), std::io::IoSlice::new(&data)];
            let mut n = s.write_vectored(&bufs).unwrap();
            if n < h.len() + data.len() {
                n = n.saturating_sub(h.len());
                s.write_all(&data[n..]).unwrap();
            }
            sent += REQUEST as u64;
        }
    });
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = vec![0u8; REQUEST];
    let t = Instant::now();
    let mut got = 0u64;
    while got < size {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        s.read_exact(&mut h).unwrap();
        s.read_exact(&mut buf).unwrap();
        got += REQUEST as u64;
    }
    mbs(size, t.elapsed())
}

/// Transport floor at queue depth 1: a thread that answers each 28-byte request with a 16-byte
/// header and 4 KiB, over loopback TCP: the round trip no NBD server can beat.
fn transport_qd1(n: usize) -> (f64, Vec<Duration>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut reply = vec![0u8; SIMPLE_REPLY_LEN + 4096];
        let mut r = [0u8; REQUEST_LEN];
        while s.read_exact(&mut r).is_ok() {
            reply[..SIMPLE_REPLY_LEN].copy_from_slice(&simple_reply(0, 0));
            if s.write_all(&reply).is_err() {
                break;
            }
        }
    });
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = vec![0u8; SIMPLE_REPLY_LEN + 4096];
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&[0u8; REQUEST_LEN]).unwrap();
        s.read_exact(&mut buf).unwrap();
        lat.push(t.elapsed());
    }
    (n as f64 / t0.elapsed().as_secs_f64(), lat)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let mib: u64 = std::env::var("HEXZD_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let size = mib << 20;
    // The machine is shared: each figure is the best of this many runs.
    let runs: usize = std::env::var("HEXZD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let only_memory = std::env::args().skip(1).any(|a| a == "memory");
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("bench.img");
    let archive = dir.path().join("bench.hxz");
    println!(
        "nbd bench: load average at start {}; best of {runs} run(s) per figure",
        loadavg()
    );
    let t = Instant::now();
    generate(&raw, usize::try_from(size).unwrap());
    hexzd::pack::pack(&raw, &archive, &hexzd::pack::PackOptions::default()).unwrap();
    println!(
        "export: {mib} MiB packed to {:.1} MiB in {:.1} s; workers: {}",
        std::fs::metadata(&archive).unwrap().len() as f64 / 1048576.0,
        t.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    if only_memory {
        memory(&archive, dir.path());
        return;
    }
    let transport = (0..runs)
        .map(|_| transport_ceiling(size))
        .fold(0f64, f64::max);
    println!(
        "loopback TCP transport ceiling (256 KiB replies, no server work): {transport:8.1} MB/s"
    );

    // Sequential, 16 in flight, cold then hot: best of `runs` for the ceiling and for NBD.
    let seq = sequential(size);
    for phase in ["cold", "hot"] {
        let (mut ceil, mut nbd) = (0f64, 0f64);
        let mut hot_engine = None;
        for run in 0..runs {
            let (engine, snap) = match &hot_engine {
                Some((e, s)) => (Arc::clone(e), Snapshot::clone(s)),
                None => open(&archive),
            };
            if phase == "hot" && hot_engine.is_none() {
                ceiling(&snap, &seq, SEQ_DEPTH);
                hot_engine = Some((Arc::clone(&engine), snap.clone()));
            }
            ceil = ceil.max(mbs(size, ceiling(&snap, &seq, SEQ_DEPTH).0));
            let (engine, snap) = if phase == "cold" {
                open(&archive)
            } else {
                (engine, snap)
            };
            let server = serve(&engine, &snap, dir.path(), &format!("{phase}{run}"));
            let mut c = Client::connect(server.port);
            let t = Instant::now();
            c.run(&seq, SEQ_DEPTH);
            nbd = nbd.max(mbs(size, t.elapsed()));
        }
        println!(
            "sequential {phase:>4}, {SEQ_DEPTH} x 256 KiB in flight: NBD {nbd:8.1} MB/s   read_at ceiling {ceil:8.1} MB/s   ratio {:.2}   (to transport ceiling {:.2})",
            nbd / ceil,
            nbd / transport
        );
    }

    let (mut tiops, mut tlat) = (0f64, Vec::new());
    for _ in 0..runs {
        let (x, l) = transport_qd1(20_000);
        if x > tiops {
            (tiops, tlat) = (x, l);
        }
    }
    println!(
        "loopback TCP round trip at QD1 (28-byte request, 4 KiB reply, no server work): {tiops:9.0} IOPS p50 {:6.1} us p99 {:6.1} us",
        pct(&mut tlat, 0.5),
        pct(&mut tlat, 0.99)
    );

    // The budget when nothing stalls: sequential hot, default budget vs one never waited for.
    {
        let (engine, snap) = open(&archive);
        ceiling(&snap, &seq, SEQ_DEPTH);
        let default = serve(&engine, &snap, dir.path(), "budget-default");
        let unlimited = serve_budget(&engine, &snap, dir.path(), "budget-unlimited", 1 << 50);
        let (mut d, mut u) = (0f64, 0f64);
        for _ in 0..runs {
            for (srv, best) in [(&default, &mut d), (&unlimited, &mut u)] {
                let mut c = Client::connect(srv.port);
                let t = Instant::now();
                c.run(&seq, SEQ_DEPTH);
                *best = best.max(mbs(size, t.elapsed()));
            }
        }
        println!(
            "sequential  hot, budget 256 MiB {d:8.1} MB/s   unlimited {u:8.1} MB/s   ratio {:.3}",
            d / u
        );
    }

    // Random 4 KiB, hot: the run with the best IOPS, for the ceiling and for NBD.
    let (engine, snap) = open(&archive);
    ceiling(&snap, &seq, SEQ_DEPTH);
    let server = serve(&engine, &snap, dir.path(), "random");
    for depth in [1usize, 64] {
        let n = if depth == 1 { 20_000 } else { 100_000 };
        let reqs = random_4k(size, n, depth as u64);
        let (mut ciops, mut clat) = (0f64, Vec::new());
        let (mut iops, mut lat) = (0f64, Vec::new());
        for _ in 0..runs {
            let (d, l) = ceiling(&snap, &reqs, depth);
            if n as f64 / d.as_secs_f64() > ciops {
                (ciops, clat) = (n as f64 / d.as_secs_f64(), l);
            }
            let mut c = Client::connect(server.port);
            let t = Instant::now();
            let l = c.run(&reqs, depth);
            let x = n as f64 / t.elapsed().as_secs_f64();
            if x > iops {
                (iops, lat) = (x, l);
            }
        }
        println!(
            "random 4 KiB QD{depth:<2}: NBD {iops:9.0} IOPS p50 {:7.1} us p99 {:7.1} us   read_at ({depth} thread(s)) {ciops:9.0} IOPS p50 {:6.1} us p99 {:6.1} us   ratio {:.2}",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut clat, 0.5),
            pct(&mut clat, 0.99),
            iops / ciops
        );
    }

    // nbdcopy: hexzd vs qemu-nbd -r on the raw image, both on Unix sockets; best of `runs`.
    if have("nbdcopy") && have("qemu-nbd") {
        let qsock = dir.path().join("qemu.sock");
        let pid = dir.path().join("qemu.pid");
        // --fork returns once the socket is listening: readiness, no sleep.
        let st = Command::new("qemu-nbd")
            .args(["-r", "-f", "raw", "-x", "bench", "--fork", "--persistent"])
            .arg("-k")
            .arg(&qsock)
            .arg("--pid-file")
            .arg(&pid)
            .arg(&raw)
            .status()
            .unwrap();
        assert!(st.success());
        let quri = format!("nbd+unix:///bench?socket={}", qsock.display());
        nbdcopy(&quri, &[]);
        for (i, extra) in [&[][..], &["--no-extents"][..]].into_iter().enumerate() {
            let best = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let (mut hc, mut hf, mut hh, mut q) = (None, None, None, None);
            for run in 0..runs {
                // A fresh engine each time: the first copy is cold. The cache admits a block
                // on its second miss (cache.rs), so the second copy fills the cache and only
                // the third is served from it.
                let (engine, snap) = open(&archive);
                let server = serve(&engine, &snap, dir.path(), &format!("nbdcopy{i}-{run}"));
                let huri = format!("nbd+unix:///bench?socket={}", server.socket.display());
                hc = best(hc, nbdcopy(&huri, extra));
                hf = best(hf, nbdcopy(&huri, extra));
                hh = best(hh, nbdcopy(&huri, extra));
                q = best(q, nbdcopy(&quri, extra));
            }
            if let (Some(hc), Some(hf), Some(hh), Some(q)) = (hc, hf, hh, q) {
                println!(
                    "nbdcopy {:<12} to null: hexzd cold {:7.1} MB/s filling {:7.1} MB/s hot {:7.1} MB/s   qemu-nbd -r raw {:7.1} MB/s   ratio (hot) {:.2}",
                    if extra.is_empty() {
                        "(extents)"
                    } else {
                        "--no-extents"
                    },
                    mbs(size, hc),
                    mbs(size, hf),
                    mbs(size, hh),
                    mbs(size, q),
                    q.as_secs_f64() / hh.as_secs_f64()
                );
            }
        }
        if let Ok(p) = std::fs::read_to_string(&pid) {
            let _ = Command::new("kill").arg(p.trim()).status();
        }
    } else {
        println!("nbdcopy comparison skipped: nbdcopy or qemu-nbd not installed");
    }
    memory(&archive, dir.path());
    println!("nbd bench: load average at end {}", loadavg());
}

/// This process's resident memory in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `n` READs of `len` bytes (offsets `i * len`), then reads every reply into `scratch`.
fn burst(c: &mut Client, n: usize, len: usize, scratch: &mut [u8]) {
    for i in 0..n {
        c.send(i as u64, (i * len) as u64, len);
    }
    for _ in 0..n {
        let mut h = [0u8; SIMPLE_REPLY_LEN];
        c.s.read_exact(&mut h).unwrap();
        c.s.read_exact(&mut scratch[..len]).unwrap();
    }
}

/// RSS per idle connection after a burst, and per stalled connection.
fn memory(archive: &Path, dir: &Path) {
    let (engine, snap) = open(archive);
    let server = serve(&engine, &snap, dir, "memory");
    let mut scratch = vec![0u8; 2 << 20];
    // Warm: the cache holds what the bursts read; pool threads exist.
    let mut c = Client::connect(server.port);
    c.buf = Vec::new();
    burst(&mut c, 16, 2 << 20, &mut scratch);
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let base = rss_kib();
    let mut conns: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = Client::connect(server.port);
            c.buf = Vec::new();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let idle_before = rss_kib();
    for c in &mut conns {
        burst(c, 16, 2 << 20, &mut scratch);
    }
    let after = rss_kib();
    // Past the reaping time of idle handlers.
    std::thread::sleep(hexzd::nbd::transmission::HANDLER_IDLE + Duration::from_secs(1));
    let reaped = rss_kib();
    let per = |kib: u64, from: u64| kib.saturating_sub(from) as f64 / 20.0;
    println!(
        "RSS per idle NBD connection (20): {:.0} KiB before any request, {:.0} KiB right after a \
         16 x 2 MiB burst, {:.0} KiB once idle {} s",
        per(idle_before, base),
        per(after, base),
        per(reaped, base),
        (hexzd::nbd::transmission::HANDLER_IDLE + Duration::from_secs(1)).as_secs()
    );
    drop(conns);
    // The stalled READs below cover the first 64 MiB: have the cache hold them first, so the
    // figure is the connections' cost, not the cache filling.
    let mut c = Client::connect(server.port);
    c.buf = Vec::new();
    burst(&mut c, 32, 2 << 20, &mut scratch);
    drop(c);
    std::thread::sleep(Duration::from_millis(500));

    let base = rss_kib();
    let mut stalled = Vec::new();
    for _ in 0..24 {
        let mut c = Client::connect(server.port);
        c.buf = Vec::new();
        for i in 0..4u64 {
            c.send(i, (i % 2) * (32 << 20), 32 << 20);
        }
        stalled.push(c);
    }
    let t = Instant::now();
    while server.metrics.budget.used() > 0 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "RSS per stalled NBD connection (24, each with 4 x 32 MiB READs unread): {:.0} KiB \
         (buffers given back after {:.1} s; in use now {} KiB)",
        rss_kib().saturating_sub(base) as f64 / 24.0,
        t.elapsed().as_secs_f64(),
        server.metrics.budget.used() >> 10
    );
    drop(stalled);
}
