//! Archives assembled by hand through `hexzd::format` to reach the corners of the format that
//! neither the fixtures nor `hexzd pack` produce (hexz-format.md §6, §7, §8, §14): zero-length
//! entries anywhere in a page, a declared stream size larger than its blocks (zero-filled tail),
//! gaps between pages, empty pages, Zstd frames with a content size and a checksum, literal-only
//! LZ4 blocks, an LZ4 size prefix that disagrees with `logical_len`. Every read must equal the
//! model, in every store configuration.

mod common;

use std::path::Path;

use common::{Rng, engine};
use hexzd::format::codec::{CodecContext, crc32};
use hexzd::format::index::encode_page;
use hexzd::format::{BlockInfo, Compression, HEADER_SIZE, Header, MasterIndex, PageEntry, Stream};
use hexzd::store::{ExtentKind, OpenOptions, Snapshot};

/// One entry of a hand-built page.
enum Entry {
    /// Plain data, compressed with the archive's codec.
    Data(Vec<u8>),
    /// Stored bytes given as they are, decoding to `plain`.
    Stored { stored: Vec<u8>, plain: Vec<u8> },
    /// Zeros.
    Sparse(u32),
    /// `logical_len` 0: covers nothing.
    Empty,
}

struct PageSpec {
    start_logical: u64,
    entries: Vec<Entry>,
}

/// Lays out an archive: header, then each page's stored blocks followed by the page, then the
/// master index. Returns the bytes and the model of both streams.
fn build(codec: Compression, streams: [(Vec<PageSpec>, u64); 2]) -> (Vec<u8>, [Vec<u8>; 2]) {
    let mut out = vec![0u8; HEADER_SIZE];
    let mut ctx = CodecContext::default();
    let mut index = MasterIndex::default();
    let mut models = [Vec::new(), Vec::new()];
    let mut next_block = 0u64;
    for (s, (pages, size)) in streams.into_iter().enumerate() {
        let mut model = vec![0u8; usize::try_from(size).expect("usize")];
        let mut dir = Vec::new();
        for page in pages {
            let mut infos = Vec::new();
            let mut pos = page.start_logical;
            for e in page.entries {
                let (info, plain) = match e {
                    Entry::Empty => (BlockInfo::sparse(0), Vec::new()),
                    Entry::Sparse(n) => (BlockInfo::sparse(n), vec![0; n as usize]),
                    Entry::Data(plain) => {
                        let mut stored = Vec::new();
                        ctx.compress(codec, &plain, &mut stored).expect("compress");
                        (stored_at(&mut out, &stored, &plain), plain)
                    }
                    Entry::Stored { stored, plain } => {
                        (stored_at(&mut out, &stored, &plain), plain)
                    }
                };
                for (i, b) in plain.iter().enumerate() {
                    if let Some(m) = model.get_mut(common::us(pos) + i) {
                        *m = *b;
                    }
                }
                pos += u64::from(info.logical_len);
                infos.push(info);
            }
            let bytes = encode_page(&infos);
            dir.push(PageEntry {
                offset: out.len() as u64,
                length: u32::try_from(bytes.len()).expect("u32"),
                start_block: next_block,
                start_logical: page.start_logical,
            });
            next_block += infos.len() as u64;
            out.extend_from_slice(&bytes);
        }
        match s {
            0 => {
                index.main_pages = dir;
                index.main_size = size;
            }
            _ => {
                index.aux_pages = dir;
                index.aux_size = size;
            }
        }
        models[s] = model;
    }
    let mut header = Header::new(codec, 4096);
    header.index_offset = out.len() as u64;
    out.extend_from_slice(&index.encode());
    out[..HEADER_SIZE].copy_from_slice(&header.encode().expect("header"));
    (out, models)
}

fn stored_at(out: &mut Vec<u8>, stored: &[u8], plain: &[u8]) -> BlockInfo {
    let info = BlockInfo {
        offset: out.len() as u64,
        length: u32::try_from(stored.len()).expect("u32"),
        logical_len: u32::try_from(plain.len()).expect("u32"),
        checksum: crc32(stored),
        hash: *blake3::hash(plain).as_bytes(),
    };
    out.extend_from_slice(stored);
    info
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    // Half compressible.
    for (i, b) in v.iter_mut().enumerate().take(len / 2) {
        *b = u8::try_from(i % 7).expect("u8");
    }
    v
}

/// Every read of every stream equals the model, in four configurations, and extents agree.
fn check(path: &Path, models: &[Vec<u8>; 2]) {
    for (cache, workers) in [(0, 1), (0, 3), (8 << 20, 1), (8 << 20, 3)] {
        let snap = Snapshot::open_with(path, &engine(cache, workers), &OpenOptions::default())
            .expect("open");
        let mut rng = Rng::new(7);
        for (stream, model) in Stream::ALL.into_iter().zip(models) {
            assert_eq!(snap.size(stream), model.len() as u64);
            let got = common::read_all(&snap, stream, 1000).expect("read");
            assert!(got == *model, "{stream} whole");
            for _ in 0..300 {
                let off = rng.below(model.len() as u64 + 10);
                let mut buf = vec![0xA5; rng.index(3000)];
                let n = snap.read_at(stream, off, &mut buf).expect("read");
                let s = common::us(off.min(model.len() as u64));
                let e = (s + buf.len()).min(model.len());
                assert_eq!(n, e - s);
                assert!(buf[..n] == model[s..e], "{stream} {off}+{}", buf.len());
            }
            let ext = snap.extents(stream, 0, u64::MAX).expect("extents");
            let mut pos = 0;
            for x in &ext {
                assert_eq!(x.offset, pos);
                if x.kind == ExtentKind::Zero {
                    let r = common::us(x.offset)..common::us(x.offset + x.length);
                    assert!(model[r].iter().all(|&b| b == 0), "{x:?}");
                }
                pos += x.length;
            }
            assert_eq!(pos, model.len() as u64);
        }
        let report = snap.verify(|_, _| {}).expect("verify");
        assert!(report.ok(), "{:?}", report.bad);
    }
}

fn save(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    common::write_file(dir, "built.hxz", bytes)
}

#[test]
fn zero_length_entries_anywhere_are_tolerated() {
    for codec in [Compression::Lz4, Compression::Zstd] {
        let dir = tempfile::tempdir().expect("tempdir");
        let page = |seed| PageSpec {
            start_logical: 0,
            entries: vec![
                Entry::Empty,
                Entry::Data(random(5000, seed)),
                Entry::Empty,
                Entry::Empty,
                Entry::Sparse(3000),
                Entry::Empty,
                Entry::Data(random(1, seed + 1)),
                Entry::Data(random(4096, seed + 2)),
                Entry::Empty,
            ],
        };
        let (bytes, models) = build(codec, [(vec![page(1)], 12_097), (vec![page(5)], 12_097)]);
        check(&save(dir.path(), &bytes), &models);
    }
}

#[test]
fn declared_size_beyond_the_blocks_reads_as_zeros() {
    // hexz-format.md §7: `convert tar` declares more than its blocks cover.
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = vec![PageSpec {
        start_logical: 0,
        entries: vec![Entry::Data(random(10_000, 3)), Entry::Data(random(777, 4))],
    }];
    let (bytes, models) = build(Compression::Lz4, [(pages, 50_000), (vec![], 4321)]);
    check(&save(dir.path(), &bytes), &models);
}

#[test]
fn gaps_between_pages_and_empty_pages_read_as_zeros() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pages = vec![
        PageSpec {
            start_logical: 0,
            entries: vec![Entry::Data(random(3000, 5))],
        },
        // Nothing covers 3000..10000.
        PageSpec {
            start_logical: 10_000,
            entries: vec![],
        },
        PageSpec {
            start_logical: 10_000,
            entries: vec![Entry::Sparse(100), Entry::Data(random(2000, 6))],
        },
        PageSpec {
            start_logical: 20_000,
            entries: vec![Entry::Data(random(64, 7))],
        },
    ];
    let (bytes, models) = build(Compression::Zstd, [(pages, 20_100), (vec![], 0)]);
    check(&save(dir.path(), &bytes), &models);
}

#[test]
fn zstd_frames_with_content_size_and_checksum_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = random(30_000, 8);
    let mut c = zstd::bulk::Compressor::new(19).expect("zstd");
    c.include_checksum(true).expect("checksum flag");
    c.include_contentsize(true).expect("content size flag");
    let stored = c.compress(&plain).expect("compress");
    let pages = vec![PageSpec {
        start_logical: 0,
        entries: vec![
            Entry::Stored {
                stored,
                plain: plain.clone(),
            },
            Entry::Data(random(100, 9)),
        ],
    }];
    let (bytes, models) = build(Compression::Zstd, [(pages, 30_100), (vec![], 0)]);
    check(&save(dir.path(), &bytes), &models);
}

#[test]
fn literal_only_lz4_blocks_and_a_disagreeing_size_prefix_are_accepted() {
    // hexz-format.md §8: a literal-only LZ4 block is valid; the reader decodes into
    // `logical_len` bytes and does not trust the prefix.
    let dir = tempfile::tempdir().expect("tempdir");
    let literal = |text: &[u8], prefix: u32| {
        let mut s = prefix.to_le_bytes().to_vec();
        // Token: literal count in the high nibble (15 = extended by the following bytes).
        let n = text.len();
        if n < 15 {
            s.push(u8::try_from(n << 4).expect("u8"));
        } else {
            s.push(0xF0);
            let mut rest = n - 15;
            while rest >= 255 {
                s.push(255);
                rest -= 255;
            }
            s.push(u8::try_from(rest).expect("u8"));
        }
        s.extend_from_slice(text);
        s
    };
    let hello = b"hello".to_vec();
    let long = random(700, 10);
    let pages = vec![PageSpec {
        start_logical: 0,
        entries: vec![
            Entry::Stored {
                stored: literal(&hello, 5),
                plain: hello.clone(),
            },
            Entry::Stored {
                stored: literal(&long, 700),
                plain: long.clone(),
            },
            Entry::Stored {
                stored: literal(&hello, 999_999),
                plain: hello.clone(),
            },
        ],
    }];
    let (bytes, models) = build(Compression::Lz4, [(pages, 710), (vec![], 0)]);
    check(&save(dir.path(), &bytes), &models);
}

/// A Zstd dictionary named by the header (hexz-format.md §8) is used for every block. The 0.8.2
/// CLI never writes one, so this archive is built by hand; the dictionary is parsed once at open.
#[test]
fn zstd_dictionary_archives_read_byte_exact() {
    use common::{open, read_all};
    use hexzd::format::writer::ArchiveWriter;

    let dict: Vec<u8> = (0..200)
        .flat_map(|i| {
            format!("record {i:04}: status=ok owner=hexzd flags=rw size=4096\n").into_bytes()
        })
        .collect();
    let plain: Vec<Vec<u8>> = (0..6)
        .map(|b| {
            (0..900)
                .flat_map(|i| {
                    format!(
                        "record {:04}: status=ok owner=hexzd flags=rw size=4096\n",
                        (i * 7 + b) % 200
                    )
                    .into_bytes()
                })
                .take(40_000 + b * 1000)
                .collect()
        })
        .collect();
    let build = |with_dict: bool| -> Vec<u8> {
        let mut h = Header::new(Compression::Zstd, 65536);
        if with_dict {
            h.dictionary_offset = Some(HEADER_SIZE as u64);
            h.dictionary_length = Some(u32::try_from(dict.len()).expect("u32"));
        }
        let mut w = ArchiveWriter::new(std::io::Cursor::new(Vec::new()), h).expect("writer");
        assert_eq!(w.append_stored(&dict).expect("dict"), HEADER_SIZE as u64);
        w.begin_stream(Stream::Main).expect("stream");
        let mut c = zstd::bulk::Compressor::with_dictionary(3, &dict).expect("compressor");
        for p in &plain {
            let stored = c.compress(p).expect("compress");
            let offset = w.append_stored(&stored).expect("append");
            w.push_entry(BlockInfo {
                offset,
                length: u32::try_from(stored.len()).expect("u32"),
                logical_len: u32::try_from(p.len()).expect("u32"),
                checksum: crc32(&stored),
                hash: *blake3::hash(p).as_bytes(),
            })
            .expect("entry");
        }
        let (out, _) = w.finish(None).expect("finish");
        out.into_inner()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let want: Vec<u8> = plain.concat();

    let path = dir.path().join("dict.hxz");
    std::fs::write(&path, build(true)).expect("write");
    let snap = open(&path).expect("open");
    assert!(read_all(&snap, Stream::Main, 10_000).expect("read") == want);

    // The same blocks without the dictionary do not decode: it really is used.
    let path = dir.path().join("nodict.hxz");
    std::fs::write(&path, build(false)).expect("write");
    let snap = open(&path).expect("open");
    assert!(read_all(&snap, Stream::Main, 10_000).is_err());
}
