//! Fuzz-style property (issue 2): thousands of mutations of real archives (random bit flips,
//! byte runs, structured field edits with extreme values, truncations; fixed seeds). For each,
//! `open`, `read_at` over the streams, `extents` and `verify` either succeed or return an
//! error: never a panic (in the caller or on a decompression worker), never a hang, never a
//! job that dies without reporting.

mod common;

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{ArchiveBytes, Rng, fixture, mixed_data};
use hexzd::format::codec::{CodecContext, crc32};
use hexzd::format::crypto::{BlockCipher, MIN_ITERATIONS};
use hexzd::format::writer::ArchiveWriter;
use hexzd::format::{
    BlockInfo, Compression, EncryptionParams, HEADER_SIZE, Header, MAX_BLOCK_LEN, Stream,
};
use hexzd::store::{BlockFault, Engine, EngineConfig, OpenOptions, Snapshot, StoreError};

/// Longest one mutation may take before it counts as a hang (debug build, loaded machine).
const MUTATION_LIMIT: Duration = Duration::from_secs(60);
/// Bytes of each stream read per mutation (declared sizes may be absurd).
const READ_CAP: u64 = 4 << 20;

/// Panics seen on any thread (decompression workers included) while this test binary runs.
fn panics() -> &'static Mutex<Vec<String>> {
    static PANICS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            if let Ok(mut v) = panics().lock() {
                v.push(format!("thread {thread}: {info}"));
            }
            default(info);
        }));
        Mutex::new(Vec::new())
    })
}

/// An archive to mutate, with whatever it needs beside it.
struct Source {
    name: &'static str,
    bytes: Vec<u8>,
    password: Option<Vec<u8>>,
    /// A parent archive written beside the mutated file under this name.
    parent: Option<(&'static str, Vec<u8>)>,
    mutations: usize,
}

/// Values that tend to sit on boundaries of the checks.
fn interesting(rng: &mut Rng, file_len: u64) -> u64 {
    let v = [
        0,
        1,
        4095,
        HEADER_SIZE as u64,
        file_len.saturating_sub(1),
        file_len,
        file_len + 1,
        u64::from(MAX_BLOCK_LEN),
        u64::from(MAX_BLOCK_LEN) + 1,
        u64::from(u32::MAX),
        u64::MAX,
        u64::MAX - 1,
        1 << 32,
        1 << 40,
    ];
    if rng.chance(1, 4) {
        rng.next_u64() >> rng.below(64)
    } else {
        v[rng.index(v.len())]
    }
}

/// Positions of the structured fields of an archive: (file offset, width in bytes).
fn fields(a: &ArchiveBytes) -> Vec<(usize, usize)> {
    let mut v = vec![(4, 4), (8, 4), (12, 8), (20, 8)];
    let at = a.index_offset();
    let m = a.master();
    let mut pos = at;
    for pages in [&m.main_pages, &m.aux_pages] {
        v.push((pos, 8));
        pos += 8;
        for _ in pages.iter() {
            v.extend([(pos, 8), (pos + 8, 4), (pos + 12, 8), (pos + 20, 8)]);
            pos += 28;
        }
    }
    v.extend([(pos, 8), (pos + 8, 8)]);
    for s in Stream::ALL {
        for p in a.pages(s) {
            v.push((usize::try_from(p.offset).expect("offset"), 8));
        }
    }
    for b in a.blocks() {
        let e = b.entry_pos;
        v.extend([(e, 8), (e + 8, 4), (e + 12, 4), (e + 16, 4), (e + 20, 4)]);
    }
    v
}

/// One random mutation of `orig`; returns the bytes and a description for failure messages.
fn mutate(rng: &mut Rng, orig: &[u8], fields: &[(usize, usize)]) -> (Vec<u8>, String) {
    let mut b = orig.to_vec();
    let len = b.len();
    let what = match rng.below(9) {
        0 | 1 => {
            let n = rng.range(1, 4);
            let mut d = String::from("flip bits at");
            for _ in 0..n {
                let at = rng.index(len);
                b[at] ^= 1 << rng.below(8);
                d.push_str(&format!(" {at}"));
            }
            d
        }
        2 => {
            let at = rng.index(len.min(64));
            b[at] = rng.byte();
            format!("header byte {at} = {}", b[at])
        }
        3 => {
            let start = rng.index(len);
            let n = rng.index(32).min(len - start);
            for x in &mut b[start..start + n] {
                *x = rng.byte();
            }
            format!("random run {start}+{n}")
        }
        4 | 5 if !fields.is_empty() => {
            let (at, width) = fields[rng.index(fields.len())];
            let v = interesting(rng, len as u64);
            if at + width <= len {
                b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            format!("field at {at} (u{}) = {v}", width * 8)
        }
        6 => {
            let at = rng.index(len);
            b.truncate(at);
            format!("truncate to {at}")
        }
        7 => {
            let at = len.saturating_sub(rng.index(300.min(len) + 1));
            b.truncate(at);
            format!("truncate tail to {at}")
        }
        _ => {
            // A byte of the stored data region, where most of a real file is.
            let at = rng.range(
                HEADER_SIZE as u64,
                (len as u64).max(HEADER_SIZE as u64 + 1) - 1,
            );
            let at = usize::try_from(at).expect("usize").min(len - 1);
            b[at] ^= 0xFF;
            format!("invert byte {at}")
        }
    };
    (b, what)
}

/// Everything a reader may do with an archive. Errors are fine; `Internal` (a decode job that
/// died) is not.
fn exercise(path: &Path, password: Option<&[u8]>, rng: &mut Rng) -> Result<Outcome, String> {
    let engine = Engine::new(EngineConfig {
        cache_bytes: 4 << 20,
        page_cache_bytes: 1 << 20,
        workers: 2,
    })
    .map_err(|e| e.to_string())?;
    let options = OpenOptions {
        password: password.map(<[u8]>::to_vec),
        index_only: false,
    };
    let no_internal = |e: StoreError| -> Result<(), String> {
        match e {
            StoreError::Block {
                fault: BlockFault::Internal,
                ..
            } => Err(format!("a decode job died: {e}")),
            _ => Ok(()),
        }
    };
    // `inspect` opens the index only: that must be as safe.
    let _ = Snapshot::open_with(
        path,
        &engine,
        &OpenOptions {
            password: None,
            index_only: true,
        },
    );
    let snap = match Snapshot::open_with(path, &engine, &options) {
        Ok(s) => s,
        Err(e) => return no_internal(e).map(|()| Outcome::Refused),
    };
    let mut outcome = Outcome::Clean;
    for stream in Stream::ALL {
        let size = snap.size(stream);
        let end = size.min(READ_CAP);
        let mut buf = vec![0u8; 300_000];
        let mut pos = 0;
        while pos < end {
            let n = usize::try_from((end - pos).min(buf.len() as u64)).expect("usize");
            match snap.read_at(stream, pos, &mut buf[..n]) {
                Ok(got) if got == n => {}
                Ok(got) => return Err(format!("{stream}: short read {got} of {n} at {pos}")),
                Err(e) => {
                    no_internal(e)?;
                    outcome = Outcome::ReadErrors;
                }
            }
            pos += n as u64;
        }
        // A few reads anywhere in the declared size, including its very end.
        for _ in 0..4 {
            let off = if rng.chance(1, 2) {
                size.saturating_sub(rng.below(5000))
            } else {
                rng.below(size.max(1))
            };
            let mut small = vec![0u8; 1 + rng.index(70_000)];
            if let Err(e) = snap.read_at(stream, off, &mut small) {
                no_internal(e)?;
            }
        }
        if let Err(e) = snap.extents(stream, 0, u64::MAX) {
            no_internal(e)?;
        }
        if let Err(e) = snap.prefetch(stream, 0, READ_CAP) {
            no_internal(e)?;
        }
    }
    match snap.verify(|_, _| {}) {
        Ok(report) => {
            if let Some(b) = report
                .bad
                .iter()
                .find(|b| b.error.contains("internal error"))
            {
                return Err(format!("verify: a decode job died: {b:?}"));
            }
        }
        Err(e) => no_internal(e)?,
    }
    Ok(outcome)
}

/// How a mutated archive fared (counted to show the mutations reach past `open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Open failed with a clear error.
    Refused,
    /// Opened; some reads failed with errors.
    ReadErrors,
    /// Opened and the whole-stream reads succeeded.
    Clean,
}

/// Runs the mutations of one source on a worker thread; the caller waits at most
/// [`MUTATION_LIMIT`] for each one.
fn fuzz(source: Source, seed: u64) {
    panics();
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some((name, bytes)) = &source.parent {
        std::fs::write(dir.path().join(name), bytes).expect("write parent");
    }
    let path: PathBuf = dir.path().join(source.name);
    let orig = ArchiveBytes {
        bytes: source.bytes.clone(),
    };
    let fields = fields(&orig);
    let progress = Arc::new(AtomicUsize::new(0));
    let source_name = source.name;
    let mutations = source.mutations;
    let (tx, rx) = std::sync::mpsc::channel::<Result<Outcome, String>>();
    let current = Arc::new(Mutex::new(String::new()));
    let worker = {
        let current = Arc::clone(&current);
        let progress = Arc::clone(&progress);
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            for k in 0..source.mutations {
                let (bytes, what) = mutate(&mut rng, &source.bytes, &fields);
                if let Ok(mut c) = current.lock() {
                    *c = format!("{} mutation #{k} (seed {seed}): {what}", source.name);
                }
                std::fs::write(&path, &bytes).expect("write mutation");
                let r = catch_unwind(AssertUnwindSafe(|| {
                    exercise(&path, source.password.as_deref(), &mut rng)
                }));
                let r = match r {
                    Ok(Ok(o)) => Ok(o),
                    Ok(Err(e)) => Err(format!("{}: {e}", what)),
                    Err(_) => Err(format!("{what}: panicked")),
                };
                let failed = r.is_err();
                progress.fetch_add(1, Ordering::Relaxed);
                if tx
                    .send(r.map_err(|e| format!("{} #{k} (seed {seed}): {e}", source.name)))
                    .is_err()
                    || failed
                {
                    return;
                }
            }
        })
    };
    let mut tally = [0usize; 3];
    for _ in 0..mutations {
        match rx.recv_timeout(MUTATION_LIMIT) {
            Ok(Ok(o)) => tally[o as usize] += 1,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => {
                let c = current.lock().map(|c| c.clone()).unwrap_or_default();
                panic!("hang: {c} did not finish within {MUTATION_LIMIT:?}");
            }
        }
    }
    worker.join().expect("fuzz worker");
    let seen = panics().lock().map(|v| v.clone()).unwrap_or_default();
    assert!(seen.is_empty(), "panics: {seen:#?}");
    assert_eq!(progress.load(Ordering::Relaxed), mutations);
    println!(
        "{source_name}: {mutations} mutations: {} refused at open, {} with read errors, {} read cleanly",
        tally[0], tally[1], tally[2]
    );
}

fn fixture_source(name: &'static str, mutations: usize) -> Source {
    Source {
        name,
        bytes: std::fs::read(fixture(name)).expect("fixture"),
        password: None,
        parent: None,
        mutations,
    }
}

#[test]
fn mutated_small_fixtures_never_panic_or_hang() {
    fuzz(fixture_source("hello-lz4.hxz", 800), 1);
    fuzz(fixture_source("zeros-serial-lz4.hxz", 600), 2);
    fuzz(fixture_source("empty-lz4.hxz", 300), 3);
}

#[test]
fn mutated_mixed_fixtures_never_panic_or_hang() {
    fuzz(fixture_source("mixed-lz4.hxz", 150), 4);
    fuzz(fixture_source("mixed-zstd.hxz", 150), 5);
}

#[test]
fn mutated_two_stream_fixture_never_panics_or_hangs() {
    fuzz(fixture_source("vm-dir-lz4.hxz", 250), 6);
}

#[test]
fn mutated_thin_fixture_with_its_parent_never_panics_or_hangs() {
    let mut s = fixture_source("mixed-child-thin-lz4.hxz", 150);
    s.parent = Some((
        "mixed-lz4.hxz",
        std::fs::read(fixture("mixed-lz4.hxz")).expect("fixture"),
    ));
    fuzz(s, 7);
}

/// A small archive of both codecs' worth of edge cases: many tiny blocks on two pages, sparse
/// and dedup entries, an aux stream.
fn packed(codec: Compression, block: u32, len: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = common::write_file(dir.path(), "m", &mixed_data(len, block as usize, 9));
    let aux = common::write_file(dir.path(), "a", &mixed_data(3000, block as usize, 10));
    let out = dir.path().join("o.hxz");
    hexzd::pack::pack(
        &main,
        &out,
        &hexzd::pack::PackOptions {
            compression: Some(codec),
            block_size: Some(block),
            aux: Some(aux),
            workers: 1,
            ..Default::default()
        },
    )
    .expect("pack");
    std::fs::read(&out).expect("read")
}

#[test]
fn mutated_small_packed_archives_never_panic_or_hang() {
    for (k, codec) in [Compression::Lz4, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        fuzz(
            Source {
                name: "small.hxz",
                bytes: packed(codec, 512, 40_000),
                password: None,
                parent: None,
                mutations: 400,
            },
            10 + k as u64,
        );
    }
}

#[test]
fn mutated_multi_page_archive_never_panics_or_hangs() {
    fuzz(
        Source {
            name: "multi.hxz",
            bytes: packed(Compression::Lz4, 512, 4100 * 512),
            password: None,
            parent: None,
            mutations: 40,
        },
        20,
    );
}

/// An encrypted archive written through the format API with the smallest iteration count the
/// reader accepts, so that each mutated open costs as little key derivation as possible.
fn small_encrypted(password: &[u8]) -> Vec<u8> {
    let params = EncryptionParams {
        salt: [9; 16],
        iterations: MIN_ITERATIONS,
    };
    let cipher = BlockCipher::derive(password, &params).expect("derive");
    let mut header = Header::new(Compression::Lz4, 4096);
    header.encryption = Some(params);
    let mut w = ArchiveWriter::new(Cursor::new(Vec::new()), header).expect("writer");
    w.begin_stream(Stream::Main).expect("stream");
    let mut codec = CodecContext::default();
    for chunk in mixed_data(30 * 4096 + 99, 4096, 11).chunks(4096) {
        let len = u32::try_from(chunk.len()).expect("u32");
        if chunk.iter().all(|&x| x == 0) {
            w.push_entry(BlockInfo::sparse(len)).expect("push");
            continue;
        }
        let mut stored = Vec::new();
        codec
            .compress(Compression::Lz4, chunk, &mut stored)
            .expect("compress");
        cipher.encrypt_in_place(w.next_block_index(), &mut stored, 0);
        let offset = w.append_stored(&stored).expect("append");
        w.push_entry(BlockInfo {
            offset,
            length: u32::try_from(stored.len()).expect("u32"),
            logical_len: len,
            checksum: crc32(&stored),
            hash: [0; 32],
        })
        .expect("push");
    }
    w.finish(None).expect("finish").0.into_inner()
}

#[test]
fn mutated_encrypted_archive_never_panics_or_hangs() {
    let pw = b"fuzz-password".to_vec();
    let bytes = small_encrypted(&pw);
    // The unmutated archive reads back (the writer API produced a valid encrypted archive).
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = common::write_file(dir.path(), "enc.hxz", &bytes);
        let snap = Snapshot::open_with(
            &p,
            &common::engine(0, 1),
            &OpenOptions {
                password: Some(pw.clone()),
                index_only: false,
            },
        )
        .expect("open");
        let got = common::read_all(&snap, Stream::Main, 50_000).expect("read");
        assert!(got == mixed_data(30 * 4096 + 99, 4096, 11));
    }
    // Each mutated open derives a key (about half a second in a debug build): a few only.
    fuzz(
        Source {
            name: "enc.hxz",
            bytes,
            password: Some(pw),
            parent: None,
            mutations: 6,
        },
        30,
    );
}
