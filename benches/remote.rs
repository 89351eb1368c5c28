//! Remote archives (issue 14): a ≥ 256 MiB archive served by nginx on loopback against the
//! same archive read locally, in one run. Cold sequential reads (8 MiB `read_at`, a fresh
//! engine each run, block cache off, read-ahead on) and 4 KiB random reads (a fresh engine,
//! so every chunk starts cold): throughput, HTTP requests per MiB read, and the ratio remote
//! / local. Target: cold sequential ≥ 0.8 of local.
//!
//! `cargo bench --bench remote`. Environment: `HEXZD_BENCH_MB` (data size in MiB, default
//! 256), `HEXZD_BENCH_REPS` (runs per figure, default 3), `HEXZD_BENCH_RANDOM` (random reads
//! per run, default 4000), `TMPDIR`. Needs nginx (scripts/deps.sh installs it); without it the
//! bench says so and exits 0. The machine is shared: compare ratios within one run.

// Sizes and counts of test data fit every integer type used here.
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hexzd::pack::{PackOptions, pack};
use hexzd::store::{Engine, EngineConfig, OpenOptions, RemoteConfig, Snapshot, Stream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SEQ_READ: usize = 8 << 20;
const BLOCK: usize = 64 * 1024;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Mixed data like a disk image: random, text-like, zero and repeated 64 KiB blocks
/// (LZ4 about 2:1).
fn write_image(path: &Path, mib: u64) -> Result<(), BoxError> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let words: Vec<&[u8]> = [
        "block ", "sector ", "index ", "page ", "stream ", "image ", "\n",
    ]
    .iter()
    .map(|w| w.as_bytes())
    .collect();
    let mut block = vec![0u8; BLOCK];
    let mut repeated = vec![0u8; BLOCK];
    for b in repeated.iter_mut() {
        *b = rng.next() as u8;
    }
    for _ in 0..(mib << 20) / BLOCK as u64 {
        match rng.next() % 10 {
            0..=3 => {
                for c in block.chunks_mut(8) {
                    c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]);
                }
            }
            4..=6 => {
                let mut pos = 0;
                while pos < BLOCK {
                    let w = words[(rng.next() % words.len() as u64) as usize];
                    let n = w.len().min(BLOCK - pos);
                    block[pos..pos + n].copy_from_slice(&w[..n]);
                    pos += n;
                }
            }
            7..=8 => block.fill(0),
            _ => block.copy_from_slice(&repeated),
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

fn engine(remote: RemoteConfig) -> Result<std::sync::Arc<Engine>, BoxError> {
    Ok(Engine::with_remote(
        EngineConfig {
            cache_bytes: 0,
            ..EngineConfig::default()
        },
        remote,
    )?)
}

/// One cold sequential pass: (MB/s, HTTP requests).
fn sequential(target: &str) -> Result<(f64, u64), BoxError> {
    let snap = Snapshot::open_with(
        target,
        &engine(RemoteConfig::default())?,
        &OpenOptions::default(),
    )?;
    let size = snap.size(Stream::Main);
    let mut buf = vec![0u8; SEQ_READ];
    let t = Instant::now();
    let mut pos = 0u64;
    while pos < size {
        pos += snap.read_at(Stream::Main, pos, &mut buf)? as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    let reqs = snap.metrics().remote.requests.load(Ordering::Relaxed);
    Ok((size as f64 / secs / 1e6, reqs))
}

/// `n` random 4 KiB reads from a cold engine: (reads/s, HTTP requests).
fn random(target: &str, n: u64, seed: u64) -> Result<(f64, u64), BoxError> {
    let snap = Snapshot::open_with(
        target,
        &engine(RemoteConfig::default())?,
        &OpenOptions::default(),
    )?;
    let size = snap.size(Stream::Main);
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 4096];
    let before = snap.metrics().remote.requests.load(Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..n {
        let off = (rng.next() % (size / 4096)) * 4096;
        snap.read_at(Stream::Main, off, &mut buf)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let reqs = snap.metrics().remote.requests.load(Ordering::Relaxed) - before;
    Ok((n as f64 / secs, reqs))
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn main() -> Result<(), BoxError> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let mib = env_num("HEXZD_BENCH_MB", 256).max(16);
    let reps = env_num("HEXZD_BENCH_REPS", 3).max(1) as usize;
    let n_random = env_num("HEXZD_BENCH_RANDOM", 4000).max(100);
    let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("SKIP: nginx is not installed (scripts/deps.sh installs it)");
        return Ok(());
    };
    let tmp = tempfile::Builder::new()
        .prefix("hexzd-bench-remote-")
        .tempdir()?;
    let dir = tmp.path();
    let raw = dir.join("image.raw");
    write_image(&raw, mib)?;
    let hxz = dir.join("image.hxz");
    let s = pack(&raw, &hxz, &PackOptions::default())?;
    std::fs::remove_file(&raw)?;
    println!(
        "archive: {mib} MiB image, {} bytes packed (LZ4, 64 KiB blocks), {} blocks",
        s.archive_bytes, s.blocks
    );

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{ access_log off; sendfile on; client_body_temp_path {d}/b; proxy_temp_path {d}/p;\n\
             fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
             server {{ listen 127.0.0.1:{port}; root {d}; }} }}\n"
        ),
    )?;
    let mut server = Command::new(nginx)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t.elapsed() > Duration::from_secs(10) {
            let _ = server.kill();
            return Err("nginx did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let url = format!("http://127.0.0.1:{port}/image.hxz");
    let local = hxz.display().to_string();
    let size_mib = (mib << 20) as f64 / f64::from(1 << 20);

    let (mut ls, mut rs, mut lr, mut rr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut seq_reqs, mut rnd_reqs) = (0u64, 0u64);
    for rep in 0..reps {
        // Interleaved, so both sides see the same machine load.
        ls.push(sequential(&local)?.0);
        let (mbs, reqs) = sequential(&url)?;
        rs.push(mbs);
        seq_reqs = reqs;
        lr.push(random(&local, n_random, rep as u64 + 7)?.0);
        let (ops, reqs) = random(&url, n_random, rep as u64 + 7)?;
        rr.push(ops);
        rnd_reqs = reqs;
    }
    let _ = server.kill();
    let _ = server.wait();

    let rnd_mib = (n_random * 4096) as f64 / f64::from(1 << 20);
    println!("\n{:<58} {:>10} {:>10}", "figure", "best", "median");
    let row = |l: &str, v: &[f64], unit: &str| {
        println!("{l:<58} {:>10.1} {:>10.1}  {unit}", best(v), median(v))
    };
    row("cold sequential read_at 8 MiB, local file", &ls, "MB/s");
    row(
        "cold sequential read_at 8 MiB, nginx on loopback",
        &rs,
        "MB/s",
    );
    println!(
        "  ratio remote / local (target >= 0.80)                     {:>10.2} {:>10.2}  {}",
        best(&rs) / best(&ls),
        median(&rs) / median(&ls),
        if median(&rs) / median(&ls) >= 0.8 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  HTTP requests: {seq_reqs} for {size_mib:.0} MiB = {:.3} per MiB read",
        seq_reqs as f64 / size_mib
    );
    row(
        "random read_at 4 KiB, cold engine, local file",
        &lr,
        "reads/s",
    );
    row(
        "random read_at 4 KiB, cold engine, nginx on loopback",
        &rr,
        "reads/s",
    );
    println!(
        "  ratio remote / local                                      {:>10.2} {:>10.2}",
        best(&rr) / best(&lr),
        median(&rr) / median(&lr)
    );
    println!(
        "  HTTP requests: {rnd_reqs} for {n_random} reads ({rnd_mib:.1} MiB) = {:.1} per MiB read, {:.2} per read",
        rnd_reqs as f64 / rnd_mib,
        rnd_reqs as f64 / n_random as f64
    );
    Ok(())
}
