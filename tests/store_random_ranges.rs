//! Property: thousands of random `read_at` ranges (empty, 1 byte, block-straddling,
//! page-straddling, ending exactly at EOF, past EOF, aligned, large) equal the raw input, in
//! every store configuration (cache on/off, tiny evicting cache, 1 or N workers) and with many
//! threads reading one snapshot at once. Runs over every fixture and over a multi-page archive
//! packed here with 512-byte blocks (both streams more than 4096 blocks).
//!
//! `extents` is checked along the way: it tiles the range exactly, and its zero extents read as
//! zeros.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{ArchiveBytes, FIXTURES, Rng, engine, fixture, mixed_data};
use hexzd::format::Stream;
use hexzd::pack::{PackOptions, pack};
use hexzd::store::{ExtentKind, OpenOptions, Snapshot};

/// One store configuration: block cache bytes, decompression workers, reader threads.
#[derive(Debug, Clone, Copy)]
struct Config {
    cache: usize,
    workers: usize,
    threads: usize,
    /// Include the encrypted fixture (each open derives a PBKDF2 key, which takes seconds in
    /// a debug build, so one configuration, the busiest, covers it).
    encrypted: bool,
}

const CACHE_OFF_ONE: Config = Config {
    cache: 0,
    workers: 1,
    threads: 1,
    encrypted: false,
};
const CACHE_OFF_N: Config = Config {
    cache: 0,
    workers: 4,
    threads: 1,
    encrypted: false,
};
const CACHE_ON_ONE: Config = Config {
    cache: 64 << 20,
    workers: 1,
    threads: 1,
    encrypted: false,
};
const CACHE_ON_N: Config = Config {
    cache: 64 << 20,
    workers: 4,
    threads: 1,
    encrypted: false,
};
/// A cache smaller than a few of the fixtures' blocks: constant eviction under contention.
const TINY_CACHE_THREADS: Config = Config {
    cache: 1 << 20,
    workers: 3,
    threads: 8,
    encrypted: true,
};
const CACHE_OFF_THREADS: Config = Config {
    cache: 0,
    workers: 2,
    threads: 6,
    encrypted: false,
};

/// What a stream looks like: its raw bytes, block starts and page starts.
struct Layout {
    stream: Stream,
    raw: Vec<u8>,
    /// Stream offsets where blocks begin (and the end of the last block).
    block_edges: Vec<u64>,
    /// Stream offsets where pages begin (after the first).
    page_edges: Vec<u64>,
}

fn layouts(archive: &Path, raws: [Vec<u8>; 2]) -> Vec<Layout> {
    let a = ArchiveBytes::load(archive);
    let blocks = a.blocks();
    let [main, aux] = raws;
    Stream::ALL
        .into_iter()
        .zip([main, aux])
        .map(|(stream, raw)| {
            let mut block_edges: Vec<u64> = blocks
                .iter()
                .filter(|b| b.stream == stream)
                .flat_map(|b| [b.logical, b.logical + u64::from(b.info.logical_len)])
                .collect();
            block_edges.sort_unstable();
            block_edges.dedup();
            let page_edges = a
                .pages(stream)
                .iter()
                .skip(1)
                .map(|p| p.start_logical)
                .collect();
            Layout {
                stream,
                raw,
                block_edges,
                page_edges,
            }
        })
        .collect()
}

/// A random range of one of the interesting kinds. Lengths may run past EOF.
fn pick(rng: &mut Rng, l: &Layout, max_len: u64) -> (u64, u64) {
    let size = l.raw.len() as u64;
    let near = |rng: &mut Rng, edge: u64| {
        let before = rng.range(1, edge.clamp(1, 700));
        let after = rng.range(1, 700);
        (edge.saturating_sub(before), before + after)
    };
    match rng.below(10) {
        // Empty, anywhere (including past EOF).
        0 => (rng.below(size + 100), 0),
        // One byte.
        1 => (rng.below(size.max(1)), 1),
        // Straddling a block edge.
        2 | 3 if l.block_edges.len() > 2 => {
            let e = l.block_edges[1 + rng.index(l.block_edges.len() - 2)];
            near(rng, e)
        }
        // Straddling a page edge.
        4 if !l.page_edges.is_empty() => {
            let e = l.page_edges[rng.index(l.page_edges.len())];
            near(rng, e)
        }
        // Ending exactly at EOF.
        5 => {
            let len = rng.range(1, size.clamp(1, max_len));
            (size.saturating_sub(len), len)
        }
        // Past EOF: starting at or after it, or running over it.
        6 => {
            if rng.chance(1, 2) {
                (size + rng.below(3), rng.range(1, 5000))
            } else {
                let off = size.saturating_sub(rng.range(0, 3000));
                (off, rng.range(1, 10_000) + (size - off))
            }
        }
        // Exactly one block, aligned.
        7 if l.block_edges.len() > 1 => {
            let i = rng.index(l.block_edges.len() - 1);
            let (s, e) = (l.block_edges[i], l.block_edges[i + 1]);
            (s, e - s)
        }
        // Anything.
        _ => (rng.below(size.max(1)), rng.range(1, max_len)),
    }
}

/// Reads `count` random ranges of every stream and compares them with the raw input.
fn check_ranges(snap: &Snapshot, layouts: &[Layout], seed: u64, count: usize, max_len: u64) {
    let mut rng = Rng::new(seed);
    let mut buf = Vec::new();
    for l in layouts {
        let size = l.raw.len() as u64;
        assert_eq!(snap.size(l.stream), size, "{} size", l.stream);
        for k in 0..count {
            let (off, len) = pick(&mut rng, l, max_len);
            let len = usize::try_from(len).expect("len");
            buf.clear();
            buf.resize(len, 0xA5);
            let n = snap
                .read_at(l.stream, off, &mut buf)
                .unwrap_or_else(|e| panic!("{} read {off}+{len}: {e}", l.stream));
            let start = usize::try_from(off.min(size)).expect("usize");
            let end = (start + len).min(l.raw.len());
            assert_eq!(n, end - start, "{} read {off}+{len}: length", l.stream);
            assert!(
                buf[..n] == l.raw[start..end],
                "{} {}: read {off}+{len} (#{k}, seed {seed}) differs from the raw input",
                snap.path().display(),
                l.stream
            );
            if k % 8 == 0 {
                check_extents(snap, l, off, len as u64);
            }
        }
    }
}

fn check_extents(snap: &Snapshot, l: &Layout, off: u64, len: u64) {
    let size = l.raw.len() as u64;
    let ext = snap.extents(l.stream, off, len).expect("extents");
    let want_end = off.saturating_add(len).min(size);
    if off >= size || len == 0 {
        assert!(ext.is_empty() || off < size, "extents past EOF: {ext:?}");
        return;
    }
    let mut pos = off;
    for e in &ext {
        assert_eq!(e.offset, pos, "extents must tile the range: {ext:?}");
        assert!(e.length > 0);
        if e.kind == ExtentKind::Zero {
            let s = usize::try_from(e.offset).expect("usize");
            let t = usize::try_from(e.offset + e.length).expect("usize");
            assert!(
                l.raw[s..t].iter().all(|&b| b == 0),
                "zero extent {e:?} holds data"
            );
        }
        pos += e.length;
    }
    assert_eq!(pos, want_end, "extents end: {ext:?}");
}

/// Runs the property over one archive in one configuration, from `threads` threads at once.
fn run_config(
    archive: &Path,
    options: &OpenOptions,
    layouts: &Arc<Vec<Layout>>,
    cfg: Config,
    seed: u64,
    count: usize,
    max_len: u64,
) {
    let engine = engine(cfg.cache, cfg.workers);
    let snap = Snapshot::open_with(archive, &engine, options)
        .unwrap_or_else(|e| panic!("open {}: {e}", archive.display()));
    if cfg.cache > 0 {
        // Readahead into the cache must not disturb what is read next.
        for l in layouts.iter() {
            snap.prefetch(l.stream, 0, l.raw.len() as u64 / 2)
                .expect("prefetch");
        }
    }
    std::thread::scope(|s| {
        for t in 0..cfg.threads {
            let snap = snap.clone();
            let layouts = Arc::clone(layouts);
            s.spawn(move || {
                check_ranges(&snap, &layouts, seed ^ (t as u64) << 32, count, max_len);
            });
        }
    });
}

fn fixtures_in(cfg: Config, count: usize) {
    for (i, f) in FIXTURES.iter().enumerate() {
        if f.encrypted && !cfg.encrypted {
            continue;
        }
        let layouts = Arc::new(layouts(
            &fixture(f.archive),
            [f.expected(Stream::Main), f.expected(Stream::Aux)],
        ));
        run_config(
            &fixture(f.archive),
            &f.options(),
            &layouts,
            cfg,
            0x5EED_0000 + i as u64,
            count,
            400_000,
        );
    }
}

#[test]
fn fixtures_random_ranges_cache_off_one_worker() {
    fixtures_in(CACHE_OFF_ONE, 120);
}

#[test]
fn fixtures_random_ranges_cache_off_n_workers() {
    fixtures_in(CACHE_OFF_N, 120);
}

#[test]
fn fixtures_random_ranges_cache_on_one_worker() {
    fixtures_in(CACHE_ON_ONE, 200);
}

#[test]
fn fixtures_random_ranges_cache_on_n_workers() {
    fixtures_in(CACHE_ON_N, 200);
}

#[test]
fn fixtures_random_ranges_tiny_cache_many_threads() {
    fixtures_in(TINY_CACHE_THREADS, 30);
}

#[test]
fn fixtures_random_ranges_cache_off_many_threads() {
    fixtures_in(CACHE_OFF_THREADS, 20);
}

/// Main stream of 6,000+ 512-byte blocks and aux of 4,100+: two pages each.
#[test]
fn multi_page_archive_random_ranges_in_every_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = mixed_data(3 * 1024 * 1024 + 777, 512, 11);
    let aux = mixed_data(4100 * 512 + 300, 512, 12);
    let main_path = common::write_file(dir.path(), "main.img", &main);
    let aux_path = common::write_file(dir.path(), "aux.img", &aux);
    for (codec, name) in [
        (hexzd::format::Compression::Lz4, "multi-lz4.hxz"),
        (hexzd::format::Compression::Zstd, "multi-zstd.hxz"),
    ] {
        let out = dir.path().join(name);
        pack(
            &main_path,
            &out,
            &PackOptions {
                compression: Some(codec),
                block_size: Some(512),
                aux: Some(aux_path.clone()),
                workers: 2,
                ..PackOptions::default()
            },
        )
        .expect("pack");
        let a = ArchiveBytes::load(&out);
        assert!(a.pages(Stream::Main).len() >= 2, "main must be multi-page");
        assert!(a.pages(Stream::Aux).len() >= 2, "aux must be multi-page");
        let layouts = Arc::new(layouts(&out, [main.clone(), aux.clone()]));
        for (k, cfg) in [
            CACHE_OFF_ONE,
            CACHE_OFF_N,
            CACHE_ON_ONE,
            CACHE_ON_N,
            TINY_CACHE_THREADS,
            CACHE_OFF_THREADS,
        ]
        .into_iter()
        .enumerate()
        {
            let count = if cfg.threads > 1 { 40 } else { 200 };
            run_config(
                &out,
                &OpenOptions::default(),
                &layouts,
                cfg,
                0xABCD + k as u64,
                count,
                40_000,
            );
        }
    }
}
