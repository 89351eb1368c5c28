//! Round trips through `hexzd pack` then `hexzd cat`: empty, 1 byte, block size −1/0/+1, and
//! multi-page inputs, with and without `--aux`, LZ4 and Zstd; output byte-identical across two
//! runs; sparse and dedup counts as the input dictates (`inspect --json`, the index itself and
//! pack's summary line agree); `pack --encrypt --password-file` and `pack --base` for both
//! codecs.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::{ArchiveBytes, hexzd_ok, hexzd_run, inspect_json, mixed_data, write_file};
use hexzd::format::{BlockKind, Stream};

/// Runs `hexzd pack INPUT OUTPUT ARGS…` and returns the summary line from stderr.
fn pack(input: &Path, output: &Path, args: &[&str]) -> String {
    let mut all: Vec<&std::ffi::OsStr> =
        vec!["pack".as_ref(), input.as_os_str(), output.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    let o = hexzd_run(&all);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "pack {args:?} failed: {err}");
    err
}

fn cat(archive: &Path, stream: Stream, extra: &[&str]) -> Vec<u8> {
    let mut all: Vec<&std::ffi::OsStr> = vec![
        "cat".as_ref(),
        archive.as_os_str(),
        "--stream".as_ref(),
        stream.name().as_ref(),
    ];
    all.extend(extra.iter().map(std::ffi::OsStr::new));
    hexzd_ok(&all)
}

/// The counts `pack` should report for `streams` cut into `bs`-byte blocks: (blocks, sparse,
/// deduplicated). Dedup spans both streams.
fn expected_counts(streams: &[&[u8]], bs: usize, dedup: bool) -> (u64, u64, u64) {
    let (mut blocks, mut sparse, mut dup) = (0, 0, 0);
    let mut seen = HashSet::new();
    for s in streams {
        for b in s.chunks(bs) {
            blocks += 1;
            if b.iter().all(|&x| x == 0) {
                sparse += 1;
            } else if !seen.insert(blake3::hash(b)) && dedup {
                dup += 1;
            }
        }
    }
    (blocks, sparse, dup)
}

/// Parses "…: B blocks, S sparse, D deduplicated, P parent references, …".
fn summary_counts(line: &str) -> (u64, u64, u64, u64) {
    let num = |word: &str| -> u64 {
        let i = line
            .find(&format!(" {word}"))
            .unwrap_or_else(|| panic!("no {word:?} in {line}"));
        let head = &line[..i];
        let start = head.rfind(' ').map_or(0, |p| p + 1);
        head[start..].parse().expect("count")
    };
    (
        num("blocks,"),
        num("sparse"),
        num("deduplicated"),
        num("parent references"),
    )
}

/// Data entries that point at stored bytes an earlier entry already points at.
fn dedup_entries(a: &ArchiveBytes) -> u64 {
    let mut seen = HashSet::new();
    a.blocks()
        .iter()
        .filter(|b| b.info.kind() == BlockKind::Data && !seen.insert(b.info.offset))
        .count() as u64
}

struct Case {
    main: Vec<u8>,
    aux: Option<Vec<u8>>,
    bs: usize,
}

/// Packs `case` with `codec`, checks cat of both streams, the counts and (optionally) that a
/// second pack is byte-identical.
fn round_trip(dir: &Path, name: &str, case: &Case, codec: &str, twice: bool) -> PathBuf {
    let input = write_file(dir, &format!("{name}.img"), &case.main);
    let out = dir.join(format!("{name}-{codec}.hxz"));
    let bs = case.bs.to_string();
    let mut args = vec!["--compression", codec, "--block-size", &bs];
    let aux_path;
    if let Some(aux) = &case.aux {
        aux_path = write_file(dir, &format!("{name}.aux"), aux);
        args.push("--aux");
        args.push(aux_path.to_str().expect("utf-8 path"));
    }
    let line = pack(&input, &out, &args);

    assert!(
        cat(&out, Stream::Main, &[]) == case.main,
        "{name} {codec}: main differs"
    );
    let aux = case.aux.clone().unwrap_or_default();
    assert!(
        cat(&out, Stream::Aux, &[]) == aux,
        "{name} {codec}: aux differs"
    );

    let (blocks, sparse, dup) = expected_counts(&[&case.main, &aux], case.bs, true);
    assert_eq!(
        summary_counts(&line),
        (blocks, sparse, dup, 0),
        "{name} {codec}: pack summary {line}"
    );
    let j = inspect_json(&out);
    assert_eq!(j["compression"], codec);
    assert_eq!(j["block_size"].as_u64(), Some(case.bs as u64));
    assert!(j["cdc"].is_null());
    let inspected =
        |k: &str| j["main"][k].as_u64().unwrap_or(0) + j["aux"][k].as_u64().unwrap_or(0);
    assert_eq!(
        inspected("blocks"),
        blocks,
        "{name} {codec}: inspect blocks"
    );
    assert_eq!(inspected("sparse_blocks"), sparse, "{name} {codec}: sparse");
    assert_eq!(inspected("data_blocks"), blocks - sparse, "{name} {codec}");
    assert_eq!(inspected("parent_blocks"), 0);
    let bpp = hexzd::format::ENTRIES_PER_PAGE as u64;
    let pages = |len: usize| (len.div_ceil(case.bs) as u64).div_ceil(bpp);
    assert_eq!(j["main"]["pages"].as_u64(), Some(pages(case.main.len())));
    assert_eq!(j["aux"]["pages"].as_u64(), Some(pages(aux.len())));

    let a = ArchiveBytes::load(&out);
    assert_eq!(
        dedup_entries(&a),
        dup,
        "{name} {codec}: dedup entries in the index"
    );
    let h = a.header();
    assert_eq!(h.features.has_main, !case.main.is_empty());
    assert_eq!(h.features.has_auxiliary, !aux.is_empty());
    assert!(!h.features.variable_blocks);
    assert_eq!(a.master().main_size, case.main.len() as u64);
    assert_eq!(a.master().aux_size, aux.len() as u64);

    if twice {
        let again = dir.join(format!("{name}-{codec}-again.hxz"));
        pack(&input, &again, &args);
        assert!(
            std::fs::read(&out).expect("read") == std::fs::read(&again).expect("read"),
            "{name} {codec}: pack output differs between two runs"
        );
    }
    out
}

fn boundary_cases() -> Vec<(&'static str, Case)> {
    let bs = 4096;
    let data = |len: usize, seed: u64| mixed_data(len, 1000, seed);
    vec![
        (
            "empty",
            Case {
                main: vec![],
                aux: None,
                bs,
            },
        ),
        (
            "one-byte",
            Case {
                main: vec![0x42],
                aux: None,
                bs,
            },
        ),
        (
            "one-zero-byte",
            Case {
                main: vec![0],
                aux: None,
                bs,
            },
        ),
        (
            "block-minus-one",
            Case {
                main: data(bs - 1, 1),
                aux: None,
                bs,
            },
        ),
        (
            "block",
            Case {
                main: data(bs, 2),
                aux: None,
                bs,
            },
        ),
        (
            "block-plus-one",
            Case {
                main: data(bs + 1, 3),
                aux: None,
                bs,
            },
        ),
        (
            "empty-main-with-aux",
            Case {
                main: vec![],
                aux: Some(data(bs + 1, 4)),
                bs,
            },
        ),
        (
            "with-one-byte-aux",
            Case {
                main: data(3 * bs - 1, 5),
                aux: Some(vec![7]),
                bs,
            },
        ),
        (
            "with-aux-boundaries",
            Case {
                main: data(2 * bs, 6),
                aux: Some(data(bs - 1, 7)),
                bs,
            },
        ),
    ]
}

#[test]
fn small_and_block_boundary_inputs_round_trip_lz4() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, case) in boundary_cases() {
        round_trip(dir.path(), name, &case, "lz4", false);
    }
}

#[test]
fn small_and_block_boundary_inputs_round_trip_zstd() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, case) in boundary_cases() {
        round_trip(dir.path(), name, &case, "zstd", false);
    }
}

/// More than 4096 blocks per stream, with zero runs and repeated blocks, packed twice.
fn multi_page(codec: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = 512;
    let main = mixed_data(4096 * bs + 2 * bs + 1, bs, 21);
    let aux = mixed_data(4096 * bs + 5, bs, 22);
    let case = Case {
        main: main.clone(),
        aux: Some(aux),
        bs,
    };
    let out = round_trip(dir.path(), "multi", &case, codec, true);
    let (_, sparse, dup) = expected_counts(&[&case.main], bs, true);
    assert!(
        sparse > 100 && dup > 100,
        "the data must exercise sparse and dedup"
    );
    // Slices across the page boundary, through the CLI.
    let edge = 4096 * bs;
    let got = cat(
        &out,
        Stream::Main,
        &["--offset", &(edge - 1000).to_string(), "--length", "2000"],
    );
    assert!(got == main[edge - 1000..edge + 1000]);
    // Without --aux, the same main stream.
    let plain = Case {
        main,
        aux: None,
        bs,
    };
    round_trip(dir.path(), "multi-noaux", &plain, codec, true);
}

#[test]
fn multi_page_input_round_trips_and_is_stable_lz4() {
    multi_page("lz4");
}

#[test]
fn multi_page_input_round_trips_and_is_stable_zstd() {
    multi_page("zstd");
}

#[test]
fn default_block_size_round_trips_a_fixture_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = common::raw("mixed.img");
    let input = write_file(dir.path(), "mixed.img", &raw);
    let out = dir.path().join("mixed.hxz");
    let line = pack(&input, &out, &[]);
    assert!(cat(&out, Stream::Main, &[]) == raw);
    let (blocks, sparse, dup) = expected_counts(&[&raw], 65536, true);
    assert_eq!(summary_counts(&line), (blocks, sparse, dup, 0), "{line}");
}

/// `pack --encrypt --password-file F`: reads back with the password; zero blocks are sparse,
/// nothing is deduplicated and no hash is stored.
fn encrypted_round_trip(codec: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = 4096;
    let main = mixed_data(60 * bs + 17, bs, 31);
    let input = write_file(dir.path(), "in.img", &main);
    let pw = write_file(dir.path(), "pw", b"s3cret pass\n");
    let out = dir.path().join("enc.hxz");
    let pw_arg = pw.to_str().expect("utf-8");
    let line = pack(
        &input,
        &out,
        &[
            "--compression",
            codec,
            "--block-size",
            "4096",
            "--encrypt",
            "--password-file",
            pw_arg,
        ],
    );
    let (blocks, sparse, _) = expected_counts(&[&main], bs, false);
    assert_eq!(summary_counts(&line), (blocks, sparse, 0, 0), "{line}");
    assert!(cat(&out, Stream::Main, &["--password-file", pw_arg]) == main);
    let a = ArchiveBytes::load(&out);
    let enc = a
        .header()
        .encryption
        .expect("encryption parameters in the header");
    assert_eq!(enc.iterations, 600_000);
    assert_eq!(dedup_entries(&a), 0, "encrypted archives never deduplicate");
    assert!(a.blocks().iter().all(|b| b.info.hash == [0; 32]));
    let j = inspect_json(&out);
    assert_eq!(j["main"]["sparse_blocks"].as_u64(), Some(sparse));
    assert!(!j["encryption"].is_null());
}

#[test]
fn pack_encrypt_with_password_file_round_trips_lz4() {
    encrypted_round_trip("lz4");
}

#[test]
fn pack_encrypt_with_password_file_round_trips_zstd() {
    encrypted_round_trip("zstd");
}

/// `pack --base PARENT`: blocks the parent holds become parent references, the rest is stored;
/// cat equals the input, inspect shows the parent, and the stored path is relative.
fn thin_round_trip(parent_codec: &str, child_codec: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bs = 4096;
    let base = mixed_data(80 * bs, bs, 41);
    // The child: the base with every fifth block replaced and a new tail.
    let mut child = base.clone();
    let mut rng = common::Rng::new(42);
    for b in (0..80).step_by(5) {
        rng.fill(&mut child[b * bs..b * bs + 100]);
    }
    child.extend(mixed_data(10 * bs + 3, bs, 43));
    let base_in = write_file(dir.path(), "base.img", &base);
    let child_in = write_file(dir.path(), "child.img", &child);
    let sub = dir.path().join("snaps");
    std::fs::create_dir(&sub).expect("mkdir");
    let base_out = dir.path().join("base.hxz");
    let child_out = sub.join("child.hxz");
    pack(
        &base_in,
        &base_out,
        &["--compression", parent_codec, "--block-size", "4096"],
    );
    let line = pack(
        &child_in,
        &child_out,
        &[
            "--compression",
            child_codec,
            "--block-size",
            "4096",
            "--base",
            base_out.to_str().expect("utf-8"),
        ],
    );
    // Expected parent references: non-zero child blocks whose bytes the base stores.
    let base_hashes: HashSet<_> = base
        .chunks(bs)
        .filter(|b| b.iter().any(|&x| x != 0))
        .map(blake3::hash)
        .collect();
    let refs = child
        .chunks(bs)
        .filter(|b| b.iter().any(|&x| x != 0) && base_hashes.contains(&blake3::hash(b)))
        .count() as u64;
    assert!(refs > 30, "the child must share blocks with the base");
    assert_eq!(summary_counts(&line).3, refs, "{line}");
    assert!(cat(&child_out, Stream::Main, &[]) == child);

    let a = ArchiveBytes::load(&child_out);
    assert_eq!(a.header().parent_paths, vec!["../base.hxz".to_string()]);
    let j = inspect_json(&child_out);
    assert_eq!(j["main"]["parent_blocks"].as_u64(), Some(refs));
    assert_eq!(j["parents"][0]["path"], "../base.hxz");
    assert!(j["parents"][0]["resolved"].is_string(), "{}", j["parents"]);
    // The pair moves together.
    let moved = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(moved.path().join("snaps")).expect("mkdir");
    std::fs::rename(&base_out, moved.path().join("base.hxz")).expect("mv");
    std::fs::rename(&child_out, moved.path().join("snaps/child.hxz")).expect("mv");
    assert!(cat(&moved.path().join("snaps/child.hxz"), Stream::Main, &[]) == child);
}

#[test]
fn pack_base_round_trips_lz4() {
    thin_round_trip("lz4", "lz4");
}

#[test]
fn pack_base_round_trips_zstd() {
    thin_round_trip("zstd", "zstd");
}

#[test]
fn pack_base_with_a_parent_of_the_other_codec_round_trips() {
    thin_round_trip("zstd", "lz4");
}
