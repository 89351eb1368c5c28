//! Remote archives (issue 14): a ≥ 256 MiB archive served by nginx on loopback against the
//! same archive read locally, in one run. Cold sequential reads (8 MiB `read_at`, a fresh
//! engine each run, block cache off, read-ahead on) and 4 KiB random reads (a fresh engine,
//! so every chunk starts cold): throughput, HTTP requests per MiB read, and the ratio remote
//! / local. Target: cold sequential ≥ 0.8 of local.
//!
//! `cargo bench --bench remote`. Environment: `HEXZD_BENCH_MB` (data size in MiB, default
//! 256), `HEXZD_BENCH_REPS` (runs per figure, default 3), `HEXZD_BENCH_RANDOM` (random reads
//! per run, default 4000), `HEXZD_BENCH_PROFILE` (only remote sequential passes, for `perf
//! record`), `TMPDIR`. Needs nginx (scripts/deps.sh installs it); without it the
//! bench says so and exits 0. The machine is shared: compare ratios within one run.

// Sizes and counts of test data fit every integer type used here.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss
)]

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

/// CPU seconds (user + system) this process has used, all threads included.
fn cpu_self() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to an owned rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds (user + system) process `pid` has used, from /proc (clock ticks of 1/100 s).
fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

/// Minor page faults this process has taken (fresh buffers faulting in), all threads.
fn faults_self() -> u64 {
    // SAFETY: as in `cpu_self`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer to an owned rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) } != 0 {
        return 0;
    }
    u64::try_from(ru.ru_minflt).unwrap_or(0)
}

/// Minor page faults of the last `with_cpu` call.
static LAST_FAULTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// CPU seconds used by this process and by nginx while `f` runs, with its result; the page
/// faults it took go to `LAST_FAULTS`.
fn with_cpu<T>(nginx: u32, f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (s0, n0, f0) = (cpu_self(), cpu_of(nginx), faults_self());
    let r = f();
    LAST_FAULTS.store(faults_self() - f0, Ordering::Relaxed);
    (r, cpu_self() - s0, cpu_of(nginx) - n0)
}

/// The raw transfer ceiling: the whole file by 16 MiB range GETs on `conns` connections at
/// once (each its own part of the file, bytes read into one reused buffer and dropped).
/// Returns MB/s.
fn raw_fetch(url: &str, size: u64, conns: u64) -> Result<f64, BoxError> {
    const PIECE: u64 = 16 << 20;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(conns as usize)
        .build()
        .into();
    let part = size.div_ceil(conns);
    let t = Instant::now();
    std::thread::scope(|s| -> Result<(), BoxError> {
        let handles: Vec<_> = (0..conns)
            .map(|i| {
                let agent = agent.clone();
                s.spawn(move || -> Result<(), String> {
                    let mut buf = vec![0u8; 256 << 10];
                    let (mut at, end) = (i * part, ((i + 1) * part).min(size));
                    while at < end {
                        let last = (at + PIECE).min(end) - 1;
                        let mut resp = agent
                            .get(url)
                            .header("Range", format!("bytes={at}-{last}"))
                            .call()
                            .map_err(|e| e.to_string())?;
                        if resp.status() != 206 {
                            return Err(format!("HTTP {}", resp.status()));
                        }
                        let mut r = resp.body_mut().as_reader();
                        let mut got = 0u64;
                        loop {
                            match std::io::Read::read(&mut r, &mut buf) {
                                Ok(0) => break,
                                Ok(n) => got += n as u64,
                                Err(e) => return Err(e.to_string()),
                            }
                        }
                        if got != last - at + 1 {
                            return Err(format!("short body: {got} bytes"));
                        }
                        at = last + 1;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "fetch thread panicked")??;
        }
        Ok(())
    })?;
    Ok(size as f64 / t.elapsed().as_secs_f64() / 1e6)
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

/// Results of one run of random reads.
struct Random {
    per_sec: f64,
    requests: u64,
    bytes: u64,
    /// Latency of each read in µs, sorted.
    latency: Vec<f64>,
}

/// `n` random 4 KiB reads from a cold engine.
fn random(target: &str, n: u64, seed: u64) -> Result<Random, BoxError> {
    let snap = Snapshot::open_with(
        target,
        &engine(RemoteConfig::default())?,
        &OpenOptions::default(),
    )?;
    let size = snap.size(Stream::Main);
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 4096];
    let before = snap.metrics().remote.requests.load(Ordering::Relaxed);
    let bytes_before = snap.metrics().remote.bytes.load(Ordering::Relaxed);
    let mut lat = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for _ in 0..n {
        let off = (rng.next() % (size / 4096)) * 4096;
        let one = Instant::now();
        snap.read_at(Stream::Main, off, &mut buf)?;
        lat.push(one.elapsed().as_secs_f64() * 1e6);
    }
    let secs = t.elapsed().as_secs_f64();
    let reqs = snap.metrics().remote.requests.load(Ordering::Relaxed) - before;
    lat.sort_by(f64::total_cmp);
    Ok(Random {
        per_sec: n as f64 / secs,
        requests: reqs,
        bytes: snap.metrics().remote.bytes.load(Ordering::Relaxed) - bytes_before,
        latency: lat,
    })
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

    let nginx_pid = server.id();
    if std::env::var_os("HEXZD_BENCH_PROFILE").is_some() {
        // Only remote cold sequential passes, for `perf record`.
        for _ in 0..reps {
            let (r, cpu, ngx) = with_cpu(nginx_pid, || sequential(&url));
            let (mbs, reqs) = r?;
            println!(
                "remote sequential: {mbs:.0} MB/s, {reqs} requests, CPU {cpu:.3} s + nginx {ngx:.3} s, {} page faults",
                LAST_FAULTS.load(Ordering::Relaxed)
            );
        }
        let _ = server.kill();
        let _ = server.wait();
        return Ok(());
    }
    let archive_len = std::fs::metadata(&hxz)?.len();
    let (mut ls, mut rs, mut lr, mut rr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ls_cpu, mut rs_cpu, mut rs_ngx) = (Vec::new(), Vec::new(), Vec::new());
    let mut raw: [Vec<(f64, f64, f64)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let (mut seq_reqs, mut rnd_reqs, mut rs_faults, mut rnd_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut lat = (Vec::new(), Vec::new());
    for rep in 0..reps {
        // Interleaved, so both sides see the same machine load.
        let (r, cpu, _) = with_cpu(nginx_pid, || sequential(&local));
        ls.push(r?.0);
        ls_cpu.push(cpu);
        let (r, cpu, ngx) = with_cpu(nginx_pid, || sequential(&url));
        let (mbs, reqs) = r?;
        rs.push(mbs);
        rs_cpu.push(cpu);
        rs_ngx.push(ngx);
        rs_faults = LAST_FAULTS.load(Ordering::Relaxed);
        seq_reqs = reqs;
        for (k, conns) in [1u64, 2, 4].into_iter().enumerate() {
            let (r, cpu, ngx) = with_cpu(nginx_pid, || raw_fetch(&url, archive_len, conns));
            raw[k].push((r?, cpu, ngx));
        }
        let r = random(&local, n_random, rep as u64 + 7)?;
        lr.push(r.per_sec);
        lat.0 = r.latency;
        let r = random(&url, n_random, rep as u64 + 7)?;
        rr.push(r.per_sec);
        lat.1 = r.latency;
        rnd_reqs = r.requests;
        rnd_bytes = r.bytes;
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
        "  HTTP requests: {seq_reqs} for {size_mib:.0} MiB = {:.3} per MiB read; {:.1} page faults per MiB read",
        seq_reqs as f64 / size_mib,
        rs_faults as f64 / size_mib
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
    println!(
        "  bytes fetched: {:.1} KiB per 4 KiB read",
        rnd_bytes as f64 / n_random as f64 / 1024.0
    );
    let pct = |v: &[f64], p: f64| {
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "  latency of one 4 KiB read (last run): local p50 {:.0} us, p99 {:.0} us; remote p50 {:.0} us, p99 {:.0} us",
        pct(&lat.0, 0.5),
        pct(&lat.0, 0.99),
        pct(&lat.1, 0.5),
        pct(&lat.1, 0.99)
    );

    // Ceilings. Throughputs of reads count image (decoded) bytes; transfers count archive
    // bytes, shown also as the image bytes they carry.
    let image_mb = (mib << 20) as f64 / 1e6;
    let archive_mb = archive_len as f64 / 1e6;
    let expand = image_mb / archive_mb;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as f64;
    println!("\nceilings ({cores} cores; CPU is this process + nginx, from getrusage and /proc)");
    let mut best_raw = 0.0f64;
    let mut fetch_cpu = f64::MAX;
    for (k, conns) in [1, 2, 4].into_iter().enumerate() {
        let rates: Vec<f64> = raw[k].iter().map(|r| r.0).collect();
        let cpu: Vec<f64> = raw[k]
            .iter()
            .map(|r| (r.1 + r.2) / archive_mb * 1e3)
            .collect();
        let ngx: Vec<f64> = raw[k].iter().map(|r| r.2 / archive_mb * 1e3).collect();
        best_raw = best_raw.max(best(&rates));
        fetch_cpu = fetch_cpu.min(median(&cpu));
        println!(
            "  range GETs of the archive file, {conns} connection(s): best {:.0} MB/s, median {:.0} MB/s (= {:.0} MB/s of image); CPU {:.3} ms/MB ({:.3} of it nginx)",
            best(&rates),
            median(&rates),
            median(&rates) * expand,
            median(&cpu),
            median(&ngx)
        );
    }
    let decode_cpu = median(&ls_cpu) / image_mb * 1e3;
    println!(
        "  local decode (cold sequential, archive in page cache): {:.0} MB/s, CPU {decode_cpu:.3} ms per image MB",
        median(&ls)
    );
    // Both stages on the same cores: every image MB costs its decode plus the transfer of
    // the archive bytes it came from.
    let per_mb = decode_cpu + fetch_cpu / expand;
    let pipeline = (cores * 1e3 / per_mb).min(best_raw * expand).min(best(&ls));
    println!(
        "  fetch + decode sharing {cores} cores: at most {pipeline:.0} MB/s of image = {:.2} of local ({per_mb:.3} ms CPU per image MB)",
        pipeline / median(&ls)
    );
    println!(
        "  remote cold sequential as measured: CPU {:.3} ms per image MB ({:.3} of it nginx)",
        (median(&rs_cpu) + median(&rs_ngx)) / image_mb * 1e3,
        median(&rs_ngx) / image_mb * 1e3
    );
    Ok(())
}
