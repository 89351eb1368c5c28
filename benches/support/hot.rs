//! Section 4 of the store benchmark: hot random `read_at` (4 KiB and 1 MiB, 1 and N
//! threads) from a warm block cache, against a plain 1 MiB memcpy measured in the same run.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot, Stream};

use super::{BoxError, Rng, Stat, mbps, ratio_row, row, run_threads};
use crate::{Config, MIB, Summary, WORKING_SET};

/// Section 4: hot random `read_at` from a warm cache against plain memcpy.
pub fn section(cfg: &Config, lz4: &Path, cores: usize, sum: &mut Summary) -> Result<(), BoxError> {
    let engine = Engine::new(EngineConfig::default())?;
    let snap = Snapshot::open_with(lz4, &engine, &OpenOptions::default())?;
    let region = WORKING_SET.min(snap.size(Stream::Main));
    // Warm: read the working set twice, then check that a third pass misses nothing.
    let mut buf = vec![0u8; MIB];
    for _ in 0..3 {
        let mut off = 0;
        while off < region {
            off += snap.read_at(Stream::Main, off, &mut buf)? as u64;
        }
    }
    let m = &engine.metrics;
    let misses0 = m.cache_misses.load(Ordering::Relaxed);
    let hits0 = m.cache_hits.load(Ordering::Relaxed);
    println!(
        "hot: {:.0} MiB working set in a {} MiB cache ({:.1} MiB of blocks cached after warm-up)",
        region as f64 / MIB as f64,
        engine.config().cache_bytes >> 20,
        engine.cache_used() as f64 / MIB as f64
    );
    let src = {
        let mut v = vec![0u8; usize::try_from(WORKING_SET)?];
        Rng::new(5).fill(&mut v);
        v
    };
    let mut threads = vec![1];
    if cores > 1 {
        threads.push(cores);
    }
    for &t in &threads {
        let mut r4 = Stat::default();
        let mut r4ops = Stat::default();
        let mut r1 = Stat::default();
        let mut mc = Stat::default();
        for _ in 0..cfg.reps {
            let (ops, d) = hot_reads(&snap, t, 4096, region, cfg.hot)?;
            r4.push(mbps(ops * 4096, d));
            r4ops.push(ops as f64 / d.as_secs_f64());
            let (ops, d) = hot_reads(&snap, t, MIB, region, cfg.hot)?;
            r1.push(mbps(ops * MIB as u64, d));
            let (ops, d) = memcpy(&src, t, cfg.hot)?;
            mc.push(mbps(ops * MIB as u64, d));
        }
        sum.add(row(
            &format!("hot random read_at 4 KiB, {t} thread(s)"),
            r4.max(),
            r4.median(),
            "MB/s",
        ));
        sum.add(row(
            &format!("hot random read_at 4 KiB, {t} thread(s)"),
            r4ops.max() / 1e3,
            r4ops.median() / 1e3,
            "k ops/s",
        ));
        sum.add(row(
            &format!("hot random read_at 1 MiB, {t} thread(s)"),
            r1.max(),
            r1.median(),
            "MB/s",
        ));
        sum.add(row(
            &format!("memcpy 1 MiB (copy_from_slice, 64 MiB source), {t} thread(s)"),
            mc.max(),
            mc.median(),
            "MB/s",
        ));
        sum.add(ratio_row(
            &format!("  ratio hot 1 MiB read_at / memcpy, {t} thread(s)"),
            r1.max() / mc.max(),
            r1.median() / mc.median(),
            Some(0.5),
        ));
    }
    println!(
        "hot: {} cache misses and {} hits during the timed runs",
        m.cache_misses.load(Ordering::Relaxed) - misses0,
        m.cache_hits.load(Ordering::Relaxed) - hits0
    );
    Ok(())
}

/// Random `len`-byte reads at 4 KiB-aligned offsets of the first `region` bytes.
fn hot_reads(
    snap: &Snapshot,
    threads: usize,
    len: usize,
    region: u64,
    dur: Duration,
) -> Result<(u64, Duration), BoxError> {
    let slots = (region - len as u64) / 4096 + 1;
    run_threads(
        threads,
        dur,
        |t| (Rng::new(1000 + t as u64), vec![0u8; len]),
        |(rng, buf)| {
            let off = rng.below(slots) * 4096;
            let n = snap.read_at(Stream::Main, off, buf)?;
            if n != buf.len() {
                return Err(format!("short hot read at {off}").into());
            }
            black_box(buf);
            Ok(())
        },
    )
}

/// 1 MiB `copy_from_slice` from random 4 KiB-aligned offsets of `src`.
fn memcpy(src: &[u8], threads: usize, dur: Duration) -> Result<(u64, Duration), BoxError> {
    let slots = ((src.len() - MIB) / 4096 + 1) as u64;
    run_threads(
        threads,
        dur,
        |t| (Rng::new(2000 + t as u64), vec![0u8; MIB]),
        |(rng, dst)| {
            let off = usize::try_from(rng.below(slots) * 4096)?;
            dst.copy_from_slice(&src[off..off + MIB]);
            black_box(dst);
            Ok(())
        },
    )
}
