//! Section 5b of the store benchmark: parent chains of length 1, 2, 4 and 8 built with
//! `pack --base`, and the time to first byte (open + one 4 KiB `read_at`) of a block that only
//! the deepest archive stores.

use std::path::Path;
use std::time::Instant;

use hexzd::format::{BlockKind, Compression};
use hexzd::pack::pack;
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot, Stream};

use super::{BLOCK, BoxError, MixedGen, Rng, Stat, mbps, row};
use crate::{Config, Summary, pack_options, stream_entries};

/// Deepest chain measured.
const LEVELS: usize = 8;
/// Blocks rewritten at each level ("slightly modified copy").
const CHANGED_PER_LEVEL: usize = 16;
/// Blocks never modified; the probe block is among them.
const KEPT: usize = 8;
/// Chain lengths reported (0 = the full archive alone, for reference).
const LENGTHS: [usize; 5] = [0, 1, 2, 4, 8];

/// Builds the chain and prints time to first byte per chain length.
pub fn section(cfg: &Config, dir: &Path, sum: &mut Summary) -> Result<(), BoxError> {
    let size = usize::try_from(cfg.chain_mb << 20)?;
    let mut img = vec![0u8; size];
    let mut g = MixedGen::new(7);
    for b in img.chunks_mut(BLOCK) {
        g.block(b);
    }
    // The probe: the first stored (non-zero) block among those never modified.
    let probe = (0..KEPT)
        .find(|&b| img[b * BLOCK..(b + 1) * BLOCK].iter().any(|&x| x != 0))
        .ok_or("chain image starts with zero blocks only")?;
    let probe_off = (probe * BLOCK) as u64;
    let want = img[probe * BLOCK..probe * BLOCK + 4096].to_vec();

    let archive = |l: usize| dir.join(format!("chain-{l}.hxz"));
    let raw = dir.join("chain.raw");
    let mut thin = Stat::default();
    let mut rng = Rng::new(11);
    let blocks = size / BLOCK;
    for level in 0..=LEVELS {
        if level > 0 {
            for _ in 0..CHANGED_PER_LEVEL {
                let b = KEPT + rng.below_usize(blocks - KEPT);
                rng.fill(&mut img[b * BLOCK..(b + 1) * BLOCK]);
            }
        }
        std::fs::write(&raw, &img)?;
        let mut opts = pack_options(Compression::Lz4, None);
        if level > 0 {
            opts.base = Some(archive(level - 1));
        }
        let t = Instant::now();
        let s = pack(&raw, &archive(level), &opts)?;
        if level > 0 {
            thin.push(mbps(s.main_bytes, t.elapsed()));
        }
        if level == LEVELS || level == 1 {
            println!(
                "chain level {level}: {:.1} MB archive, {} of {} entries are parent references",
                s.archive_bytes as f64 / 1e6,
                s.parent_refs,
                s.blocks
            );
        }
        // The probe must be a parent reference at every level above 0, so reading it at
        // level L walks L archives before the data.
        if level > 0 {
            let e = stream_entries(&archive(level))?;
            if e.get(probe).map(hexzd::format::BlockInfo::kind) != Some(BlockKind::Parent) {
                return Err(
                    format!("chain level {level}: probe block is not a parent reference").into(),
                );
            }
        }
    }
    std::fs::remove_file(&raw)?;
    println!(
        "chain: {} MiB image, {CHANGED_PER_LEVEL} random 64 KiB blocks rewritten per level; probe = 4 KiB at stream offset {probe_off}, stored only in chain-0",
        cfg.chain_mb
    );
    sum.add(row(
        "pack --base, thin level of the chain (input MB/s)",
        thin.max(),
        thin.median(),
        "MB/s",
    ));

    let reps = cfg.reps.max(5);
    let mut buf = vec![0u8; 4096];
    for (len, dropped) in LENGTHS
        .iter()
        .map(|&l| (l, false))
        .chain(LENGTHS.iter().map(|&l| (l, true)))
    {
        let (mut total, mut open, mut first) = (Stat::default(), Stat::default(), Stat::default());
        for _ in 0..reps {
            if dropped {
                for l in 0..=len {
                    drop_os_cache(&archive(l))?;
                }
            }
            // A fresh engine: no archive registered, no page or block cached.
            let engine = Engine::new(EngineConfig::default())?;
            let t = Instant::now();
            let snap = Snapshot::open_with(archive(len), &engine, &OpenOptions::default())?;
            let t_open = t.elapsed();
            let n = snap.read_at(Stream::Main, probe_off, &mut buf)?;
            let t_all = t.elapsed();
            if n != buf.len() || buf != want {
                return Err(format!("chain length {len}: wrong bytes at the probe").into());
            }
            total.push(t_all.as_secs_f64() * 1e3);
            open.push(t_open.as_secs_f64() * 1e3);
            first.push((t_all - t_open).as_secs_f64() * 1e3);
            drop(snap);
            drop(engine);
        }
        sum.add(row(
            &format!(
                "TTFB, chain length {len}{} (open + 4 KiB)",
                if dropped { ", OS cache dropped" } else { "" }
            ),
            total.min(),
            total.median(),
            &format!(
                "ms  (open {:.2} / {:.2}, first read_at {:.2} / {:.2})",
                open.min(),
                open.median(),
                first.min(),
                first.median()
            ),
        ));
    }
    Ok(())
}

/// Asks the kernel to drop `path` from the page cache (the packs were fsynced, so the pages
/// are clean and go), so the next open reads the disk.
fn drop_os_cache(path: &Path) -> Result<(), BoxError> {
    let f = std::fs::File::open(path)?;
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )?;
    Ok(())
}
