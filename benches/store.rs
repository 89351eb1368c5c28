//! Store benchmark of issues 2 and 5: pack throughput, the lz4_flex ceiling, cold sequential
//! and hot random `read_at`, a memcpy baseline, encrypted reads and parent-chain time to first
//! byte. `cargo bench --bench store` prints a table; every timed figure is the best and the
//! median of several runs because the machine is shared.
//!
//! Environment: `HEXZD_BENCH_MB` or `HEXZD_BENCH_MIB` (data size in MiB, default 256),
//! `HEXZD_BENCH_REPS` or `HEXZD_BENCH_RUNS` (runs per figure, default 5), `HEXZD_BENCH_CHAIN_MB`
//! (chain image, default 32), `HEXZD_BENCH_HOT_MS` (length of one hot run, default 300),
//! `HEXZD_BENCH_ONLY` (comma list of sections: zstd, cold, cold-ceiling, cold-nocache,
//! cold-cache, hot, enc, chain; default all; the LZ4 pack always runs), `TMPDIR` (where the
//! data goes).

mod support;

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hexzd::format::index::decode_page;
use hexzd::format::{BlockInfo, BlockKind, Compression};
use hexzd::pack::{PackOptions, PackSummary, pack};
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot, Stream};
use support::{BoxError, Rng, Stat, mbps, ratio_row, row};

/// Size of one sequential read and of the large random reads.
pub(crate) const MIB: usize = 1 << 20;
/// Hot working set.
pub(crate) const WORKING_SET: u64 = 64 << 20;
/// Password of the encrypted copy.
pub(crate) const PASSWORD: &[u8] = b"hexzd-bench-password";

/// Settings from the environment.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub mb: u64,
    pub reps: usize,
    pub chain_mb: u64,
    pub hot: Duration,
    pub only: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> Result<Config, BoxError> {
        let num = |name: &str, default: u64| -> Result<u64, BoxError> {
            match std::env::var(name) {
                Ok(v) => Ok(v.trim().parse().map_err(|e| format!("{name}={v}: {e}"))?),
                Err(_) => Ok(default),
            }
        };
        Ok(Config {
            // The names of benches/nbd.rs work too, so one setting sizes every bench.
            mb: num("HEXZD_BENCH_MB", num("HEXZD_BENCH_MIB", 256)?)?.max(8),
            reps: usize::try_from(num("HEXZD_BENCH_REPS", num("HEXZD_BENCH_RUNS", 5)?)?.max(1))?,
            chain_mb: num("HEXZD_BENCH_CHAIN_MB", 32)?.max(2),
            hot: Duration::from_millis(num("HEXZD_BENCH_HOT_MS", 300)?.max(10)),
            only: std::env::var("HEXZD_BENCH_ONLY")
                .ok()
                .map(|s| s.split(',').map(|p| p.trim().to_string()).collect()),
        })
    }

    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }
}

/// Final summary lines, collected as sections finish.
#[derive(Debug, Default)]
pub(crate) struct Summary(Vec<String>);

impl Summary {
    pub(crate) fn add(&mut self, line: String) {
        println!("{line}");
        self.0.push(line);
    }
}

fn main() -> Result<(), BoxError> {
    let cfg = Config::from_env()?;
    let cores = support::cores();
    let load_start = support::loadavg();
    println!("== hexzd store benchmark ==");
    println!("cores: {cores}; load average at start: {load_start}");
    println!(
        "data {} MiB, {} runs per figure (best / median), MB = 10^6 bytes",
        cfg.mb, cfg.reps
    );
    let tmp = tempfile::Builder::new().prefix("hexzd-bench-").tempdir()?;
    let dir = tmp.path();
    let mut sum = Summary::default();

    // 1. Data and packs.
    let raw = dir.join("mixed.raw");
    let t = Instant::now();
    let mix = support::write_image(&raw, cfg.mb << 20, 1)?;
    println!(
        "generated {} MiB in {:.1} s: {}",
        cfg.mb,
        t.elapsed().as_secs_f64(),
        mix.describe()
    );
    let lz4 = dir.join("mixed-lz4.hxz");
    let (stat, s) = pack_reps(
        &raw,
        &lz4,
        &pack_options(Compression::Lz4, None),
        cfg.reps.min(3),
    )?;
    println!("{}", describe_pack("LZ4", &s));
    sum.add(row(
        "pack LZ4, 64 KiB blocks (input MB/s)",
        stat.max(),
        stat.median(),
        "MB/s",
    ));
    if cfg.runs("zstd") {
        let zst = dir.join("mixed-zstd.hxz");
        let opts = pack_options(Compression::Zstd, None);
        let (stat, s) = pack_reps(&raw, &zst, &opts, cfg.reps.min(3))?;
        println!("{}", describe_pack("Zstd", &s));
        sum.add(row(
            "pack Zstd level 3 (input MB/s)",
            stat.max(),
            stat.median(),
            "MB/s",
        ));
        verify_sample(&zst, None, &raw, 64)?;
        std::fs::remove_file(&zst)?;
    }
    verify_full(&lz4, &raw)?;
    println!("read_at of the whole LZ4 archive equals the input (checked once, untimed)");

    // 2–3. Ceiling and cold sequential reads, interleaved so that load from other processes
    // hits both alike.
    let file_bytes = std::fs::read(&lz4)?;
    let entries = stream_entries(&lz4)?;
    let stream_bytes: u64 = entries.iter().map(|e| u64::from(e.logical_len)).sum();
    let data: Vec<&BlockInfo> = entries
        .iter()
        .filter(|e| e.kind() == BlockKind::Data)
        .collect();
    let data_bytes: u64 = data.iter().map(|e| u64::from(e.logical_len)).sum();
    let mut distinct: Vec<u64> = data.iter().map(|e| e.offset).collect();
    distinct.sort_unstable();
    distinct.dedup();
    println!(
        "main stream: {} entries, {} data ({} distinct stored blocks, {:.1} MB decoded), {} sparse ({:.1} MB)",
        entries.len(),
        data.len(),
        distinct.len(),
        data_bytes as f64 / 1e6,
        entries.len() - data.len(),
        (stream_bytes - data_bytes) as f64 / 1e6
    );
    if ["cold", "cold-ceiling", "cold-nocache", "cold-cache"]
        .iter()
        .any(|s| cfg.runs(s))
    {
        println!(
            "ceiling = decompress_into of every data entry (dedup references again, as read_at without cache does) and fill(0) of every sparse one, into a per-thread 64 KiB buffer; rate over the {:.1} MB stream",
            stream_bytes as f64 / 1e6
        );
        cold_section(&cfg, &lz4, &file_bytes, &entries, cores, &mut sum)?;
    }
    drop(file_bytes);

    // 4. Hot random reads and the memcpy baseline.
    if cfg.runs("hot") {
        support::hot::section(&cfg, &lz4, cores, &mut sum)?;
    }

    // 5. Issue 5: encryption and chains.
    if cfg.runs("enc") {
        support::enc::section(&cfg, &raw, dir, cores, &mut sum)?;
    }
    std::fs::remove_file(&raw)?;
    if cfg.runs("chain") {
        support::chain::section(&cfg, dir, &mut sum)?;
    }

    println!();
    println!("== summary (best, median; ratios are best/best and median/median) ==");
    println!("{:<58} {:>10} {:>10}", "", "best", "median");
    for l in &sum.0 {
        println!("{l}");
    }
    println!("cores: {cores}");
    println!("load average at start: {load_start}");
    println!("load average at end:   {}", support::loadavg());
    Ok(())
}

pub(crate) fn pack_options(compression: Compression, password: Option<&[u8]>) -> PackOptions {
    PackOptions {
        compression: Some(compression),
        password: password.map(<[u8]>::to_vec),
        ..PackOptions::default()
    }
}

/// Packs `input` `reps` times (the first output is kept at `out`) and returns input MB/s.
pub(crate) fn pack_reps(
    input: &Path,
    out: &Path,
    opts: &PackOptions,
    reps: usize,
) -> Result<(Stat, PackSummary), BoxError> {
    let mut stat = Stat::default();
    let mut summary = PackSummary::default();
    for r in 0..reps {
        let path = if r == 0 {
            out.to_path_buf()
        } else {
            out.with_extension(format!("rep{r}.hxz"))
        };
        let t = Instant::now();
        summary = pack(input, &path, opts)?;
        stat.push(mbps(summary.main_bytes, t.elapsed()));
        if r > 0 {
            std::fs::remove_file(&path)?;
        }
    }
    Ok((stat, summary))
}

pub(crate) fn describe_pack(name: &str, s: &PackSummary) -> String {
    format!(
        "{name} archive: {:.1} MB from {:.1} MB (ratio {:.2}:1), {} entries: {} sparse, {} deduplicated, {} parent references",
        s.archive_bytes as f64 / 1e6,
        s.main_bytes as f64 / 1e6,
        s.main_bytes as f64 / s.archive_bytes.max(1) as f64,
        s.blocks,
        s.sparse,
        s.deduplicated,
        s.parent_refs
    )
}

/// Every block entry of the main stream, decoded from the file's index pages.
pub(crate) fn stream_entries(path: &Path) -> Result<Vec<BlockInfo>, BoxError> {
    Ok(indexed_entries(path)?.into_iter().map(|(_, e)| e).collect())
}

/// Every block entry of the main stream with its global block index (the GCM nonce).
pub(crate) fn indexed_entries(path: &Path) -> Result<Vec<(u64, BlockInfo)>, BoxError> {
    let engine = Engine::new(EngineConfig::default())?;
    let opts = OpenOptions {
        password: None,
        index_only: true,
    };
    let snap = Snapshot::open_with(path, &engine, &opts)?;
    let file = File::open(path)?;
    let mut out = Vec::new();
    for pe in snap.archive().pages(Stream::Main) {
        let mut buf = vec![0u8; pe.length as usize];
        file.read_exact_at(&mut buf, pe.offset)?;
        for (i, e) in decode_page(&buf)?.into_iter().enumerate() {
            out.push((pe.start_block + i as u64, e));
        }
    }
    Ok(out)
}

/// Runs `block` over every entry on `threads` threads (contiguous static split), each with
/// its own output buffer of the largest logical length, and returns the wall time.
fn static_split<F>(entries: &[BlockInfo], threads: usize, block: F) -> Result<Duration, BoxError>
where
    F: Fn(&BlockInfo, &mut [u8], &mut Vec<u8>) -> Result<(), BoxError> + Sync,
{
    let max = entries
        .iter()
        .map(|e| e.logical_len as usize)
        .max()
        .unwrap_or(0);
    let chunk = entries.len().div_ceil(threads).max(1);
    let block = &block;
    let start = Instant::now();
    std::thread::scope(|s| -> Result<(), BoxError> {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<(), BoxError> {
                    let (mut out, mut stored) = (vec![0u8; max], Vec::new());
                    for e in part {
                        let out = &mut out[..e.logical_len as usize];
                        if e.kind() == BlockKind::Data {
                            block(e, out, &mut stored)?;
                        } else {
                            out.fill(0);
                        }
                        black_box(&mut *out);
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "static split thread panicked")??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

/// Decodes LZ4 `stored` (size prefix included) into `out`, which it must fill exactly.
fn lz4_exact(stored: &[u8], out: &mut [u8]) -> Result<(), BoxError> {
    let body = stored
        .get(4..)
        .ok_or("stored block shorter than its size prefix")?;
    let n = lz4_flex::block::decompress_into(body, out)?;
    if n != out.len() {
        return Err("short block".into());
    }
    Ok(())
}

/// The lz4_flex ceiling: every entry decoded from memory on `threads` threads (contiguous
/// static split), no cache, no I/O, no CRC, no allocation.
fn ceiling(file: &[u8], entries: &[BlockInfo], threads: usize) -> Result<Duration, BoxError> {
    static_split(entries, threads, |e, out, _| {
        let off = usize::try_from(e.offset)?;
        lz4_exact(&file[off..off + e.length as usize], out)
    })
}

/// The I/O bound: the ceiling plus the work `read_at` cannot skip, with none of its
/// coordination. Each thread `pread`s every stored block of its static share into a reused
/// buffer, checks its CRC and decodes it into a per-thread buffer. The gap between this and
/// the ceiling is the cost of reading through the page cache rather than from memory.
fn io_bound(path: &Path, entries: &[BlockInfo], threads: usize) -> Result<Duration, BoxError> {
    let file = File::open(path)?;
    static_split(entries, threads, |e, out, stored| {
        stored.resize(e.length as usize, 0);
        file.read_exact_at(stored, e.offset)?;
        if hexzd::format::codec::crc32(stored) != e.checksum {
            return Err("I/O bound: CRC mismatch".into());
        }
        lz4_exact(stored, out)
    })
}

/// Sections 2 and 3: the ceiling and cold sequential reads, interleaved run by run so that
/// load from other processes hits them alike. `HEXZD_BENCH_ONLY=cold-ceiling`, `cold-nocache`
/// or `cold-cache` runs one of them alone (for a profiler).
fn cold_section(
    cfg: &Config,
    lz4: &Path,
    file_bytes: &[u8],
    entries: &[BlockInfo],
    cores: usize,
    sum: &mut Summary,
) -> Result<(), BoxError> {
    let stream_bytes: u64 = entries.iter().map(|e| u64::from(e.logical_len)).sum();
    let no_cache = EngineConfig {
        cache_bytes: 0,
        ..EngineConfig::default()
    };
    let all = cfg.runs("cold");
    let small_cache = EngineConfig {
        cache_bytes: 32 << 20,
        ..EngineConfig::default()
    };
    let (mut ceil, mut ceil1, mut io, mut off, mut on, mut big, mut evict) = (
        Stat::default(),
        Stat::default(),
        Stat::default(),
        Stat::default(),
        Stat::default(),
        Stat::default(),
        Stat::default(),
    );
    for _ in 0..cfg.reps {
        if all || cfg.runs("cold-ceiling") {
            ceil.push(mbps(stream_bytes, ceiling(file_bytes, entries, cores)?));
            ceil1.push(mbps(stream_bytes, ceiling(file_bytes, entries, 1)?));
            io.push(mbps(stream_bytes, io_bound(lz4, entries, cores)?));
        }
        if all || cfg.runs("cold-nocache") {
            off.push(cold_seq(lz4, no_cache, None)?.mbps);
            big.push(cold_seq_with(lz4, no_cache, None, 8 * MIB)?.mbps);
        }
        if all || cfg.runs("cold-cache") {
            on.push(cold_seq(lz4, EngineConfig::default(), None)?.mbps);
            evict.push(cold_seq(lz4, small_cache, None)?.mbps);
        }
    }
    if ceil.max() > 0.0 {
        sum.add(row(
            &format!("ceiling: lz4_flex decompress_into, {cores} threads, static split"),
            ceil.max(),
            ceil.median(),
            "MB/s",
        ));
        sum.add(row(
            "ceiling: lz4_flex decompress_into, 1 thread",
            ceil1.max(),
            ceil1.median(),
            "MB/s",
        ));
        // About the core count when the cores are free; near 1 means other processes held
        // them during the run, and every ratio below is then suspect.
        sum.add(ratio_row(
            &format!("  contention check: ceiling {cores} threads / 1 thread"),
            ceil.max() / ceil1.max(),
            ceil.median() / ceil1.median(),
            None,
        ));
        sum.add(row(
            &format!("I/O bound: pread + CRC + decode, {cores} threads, static split"),
            io.max(),
            io.median(),
            "MB/s",
        ));
        sum.add(ratio_row(
            "  ratio to ceiling (the most read_at could reach)",
            io.max() / ceil.max(),
            io.median() / ceil.median(),
            None,
        ));
    }
    let runs = [
        (
            format!("cold seq read_at 1 MiB, cache off, {cores} workers"),
            off,
        ),
        (
            "cold seq read_at 1 MiB, default cache (cold start)".to_string(),
            on,
        ),
        (
            "  diagnostic: 32 MiB cache (full, evicting)".to_string(),
            evict,
        ),
        ("  diagnostic: cache off, 8 MiB reads".to_string(), big),
    ];
    let (off_best, off_median) = (runs[0].1.max(), runs[0].1.median());
    for (i, (label, stat)) in runs.into_iter().enumerate() {
        if stat.max() == 0.0 {
            continue;
        }
        sum.add(row(&label, stat.max(), stat.median(), "MB/s"));
        if ceil.max() > 0.0 {
            sum.add(ratio_row(
                "  ratio to ceiling",
                stat.max() / ceil.max(),
                stat.median() / ceil.median(),
                None,
            ));
        }
        // Issue 11: cold sequential at 0.9 of the I/O bound (cache off and default cache).
        if io.max() > 0.0 {
            sum.add(ratio_row(
                "  ratio to I/O bound",
                stat.max() / io.max(),
                stat.median() / io.median(),
                (i < 2).then_some(0.9),
            ));
        }
        // Issue 11: the default cache is never slower than no cache on a cold scan.
        if i == 1 && off_best > 0.0 {
            sum.add(ratio_row(
                "  ratio to cache off (same run)",
                stat.max() / off_best,
                stat.median() / off_median,
                Some(1.0),
            ));
        }
    }
    Ok(())
}

/// One cold sequential pass.
struct Cold {
    mbps: f64,
    open: Duration,
    decompressions: u64,
}

/// Opens `path` on a fresh engine (untimed) and reads the whole main stream in 1 MiB reads.
pub(crate) fn cold_seq(
    path: &Path,
    cfg: EngineConfig,
    password: Option<&[u8]>,
) -> Result<Cold, BoxError> {
    cold_seq_with(path, cfg, password, MIB)
}

/// [`cold_seq`] with reads of `read_len` bytes.
fn cold_seq_with(
    path: &Path,
    cfg: EngineConfig,
    password: Option<&[u8]>,
    read_len: usize,
) -> Result<Cold, BoxError> {
    let engine = Engine::new(cfg)?;
    let opts = OpenOptions {
        password: password.map(<[u8]>::to_vec),
        index_only: false,
    };
    let t = Instant::now();
    let snap = Snapshot::open_with(path, &engine, &opts)?;
    let open = t.elapsed();
    let size = snap.size(Stream::Main);
    let mut buf = vec![1u8; read_len];
    let t = Instant::now();
    let mut off = 0u64;
    while off < size {
        let n = snap.read_at(Stream::Main, off, &mut buf)?;
        if n == 0 {
            return Err(format!("read_at returned 0 at {off} of {size}").into());
        }
        black_box(&mut buf);
        off += n as u64;
    }
    let elapsed = t.elapsed();
    let decompressions = engine.metrics.decompressions.load(Ordering::Relaxed);
    drop(snap);
    drop(engine);
    Ok(Cold {
        mbps: mbps(size, elapsed),
        open,
        decompressions,
    })
}

/// Compares the whole main stream of `archive` with `raw` (1 MiB reads, cache off).
fn verify_full(archive: &Path, raw: &Path) -> Result<(), BoxError> {
    let engine = Engine::new(EngineConfig {
        cache_bytes: 0,
        ..EngineConfig::default()
    })?;
    let snap = Snapshot::open_with(archive, &engine, &OpenOptions::default())?;
    let f = File::open(raw)?;
    let (mut a, mut b) = (vec![0u8; MIB], vec![0u8; MIB]);
    let size = snap.size(Stream::Main);
    if size != f.metadata()?.len() {
        return Err(format!("{}: size {size} differs from the input", archive.display()).into());
    }
    let mut off = 0;
    while off < size {
        let n = snap.read_at(Stream::Main, off, &mut a)?;
        f.read_exact_at(&mut b[..n], off)?;
        if a[..n] != b[..n] {
            return Err(format!("{}: bytes differ at {off}", archive.display()).into());
        }
        off += n as u64;
    }
    Ok(())
}

/// Compares `n` random ranges (up to 2 MiB) of `archive` with `raw`.
pub(crate) fn verify_sample(
    archive: &Path,
    password: Option<&[u8]>,
    raw: &Path,
    n: usize,
) -> Result<(), BoxError> {
    let engine = Engine::new(EngineConfig::default())?;
    let opts = OpenOptions {
        password: password.map(<[u8]>::to_vec),
        index_only: false,
    };
    let snap = Snapshot::open_with(archive, &engine, &opts)?;
    let f = File::open(raw)?;
    let size = snap.size(Stream::Main);
    let mut rng = Rng::new(99);
    let (mut a, mut b) = (vec![0u8; 2 * MIB], vec![0u8; 2 * MIB]);
    for _ in 0..n {
        let off = rng.below(size);
        let len = 1 + rng.below_usize(2 * MIB);
        let got = snap.read_at(Stream::Main, off, &mut a[..len])?;
        let want = usize::try_from((size - off).min(len as u64))?;
        f.read_exact_at(&mut b[..want], off)?;
        if got != want || a[..got] != b[..got] {
            return Err(format!("{}: bytes differ at {off} (+{len})", archive.display()).into());
        }
    }
    Ok(())
}
