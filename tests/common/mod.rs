//! Helpers shared by the integration tests: fixture paths and raw inputs, a small deterministic
//! PRNG, generated test data, running the built `hexzd` binary with a time limit, and editing
//! the header, master index and index pages of real archives through `hexzd::format`.
//!
//! Every test binary includes this module but uses only part of it.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hexzd::format::index::{decode_page, encode_page};
use hexzd::format::{BlockInfo, HEADER_SIZE, Header, MasterIndex, PageEntry, Stream};
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot};

/// Password of `mixed-enc-lz4.hxz`.
pub const FIXTURE_PASSWORD: &str = "correct-horse-battery";

/// Longest any single `hexzd` run may take before the test calls it a hang.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The directory of the Hexz 0.8.2 fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2")
}

/// Path of one fixture file.
pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Contents of one fixture file.
pub fn raw(name: &str) -> Vec<u8> {
    let p = fixture(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", p.display()))
}

/// One archive fixture and the raw inputs of its two streams.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// Archive file name.
    pub archive: &'static str,
    /// Raw input of the main stream.
    pub main: &'static str,
    /// Raw input of the auxiliary stream, if it has one.
    pub aux: Option<&'static str>,
    /// Needs the fixture password.
    pub encrypted: bool,
}

/// Every archive in the fixture directory with the inputs it was made from.
pub const FIXTURES: &[Fixture] = &[
    Fixture {
        archive: "empty-lz4.hxz",
        main: "empty.img",
        aux: None,
        encrypted: false,
    },
    Fixture {
        archive: "hello-lz4.hxz",
        main: "hello.txt",
        aux: None,
        encrypted: false,
    },
    Fixture {
        archive: "mixed-lz4.hxz",
        main: "mixed.img",
        aux: None,
        encrypted: false,
    },
    Fixture {
        archive: "mixed-zstd.hxz",
        main: "mixed.img",
        aux: None,
        encrypted: false,
    },
    Fixture {
        archive: "mixed-serial-lz4.hxz",
        main: "mixed.img",
        aux: None,
        encrypted: false,
    },
    Fixture {
        archive: "zeros-serial-lz4.hxz",
        main: "zeros.img",
        aux: None,
        encrypted: false,
    },
    Fixture {
        archive: "vm-dir-lz4.hxz",
        main: "vm/disk.img",
        aux: Some("vm/memory"),
        encrypted: false,
    },
    Fixture {
        archive: "mixed-child-thin-lz4.hxz",
        main: "mixed-child.img",
        aux: None,
        encrypted: false,
    },
    Fixture {
        archive: "mixed-enc-lz4.hxz",
        main: "mixed.img",
        aux: None,
        encrypted: true,
    },
];

impl Fixture {
    /// Raw bytes of `stream` (empty for a missing auxiliary stream).
    pub fn expected(&self, stream: Stream) -> Vec<u8> {
        match stream {
            Stream::Main => raw(self.main),
            Stream::Aux => self.aux.map(raw).unwrap_or_default(),
        }
    }

    /// Open options carrying the password when the archive needs one.
    pub fn options(&self) -> OpenOptions {
        OpenOptions {
            password: self.encrypted.then(|| FIXTURE_PASSWORD.as_bytes().to_vec()),
            index_only: false,
        }
    }
}

/// splitmix64: small, fast, deterministic, good enough to pick ranges and mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator with a fixed seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// Uniform in `0..n` as a usize.
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("fits usize")
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// One random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` bytes of deterministic "disk-like" data laid out in `unit`-byte units: all-zero units,
/// repeats of earlier units, compressible text, and random bytes. With `unit` equal to the pack
/// block size, the zero units become sparse entries and the repeats become dedup references.
pub fn mixed_data(len: usize, unit: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let n = unit.min(len - pos);
        let kind = rng.below(10);
        let dst = &mut out[pos..pos + n];
        match kind {
            // Zeros (already there).
            0..=2 => {}
            // A repeat of an earlier full unit.
            3..=4 if pos >= unit => {
                let k = rng.index(pos / unit);
                let src = k * unit;
                let copy = out[src..src + n].to_vec();
                out[pos..pos + n].copy_from_slice(&copy);
            }
            // Compressible text with a unique counter.
            5..=7 => {
                let line = format!("line {pos} of the mixed test image; seed {seed}\n");
                for (i, b) in dst.iter_mut().enumerate() {
                    *b = line.as_bytes()[i % line.len()];
                }
            }
            // Random bytes.
            _ => rng.fill(dst),
        }
        pos += n;
    }
    out
}

/// A `hexzd` command with a clean environment for passwords.
pub fn hexzd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hexzd"));
    c.env_remove("HEXZ_PASSWORD");
    c.stdin(Stdio::null());
    c
}

/// Runs `cmd` to completion, failing the test if it takes longer than [`RUN_LIMIT`] (a hang).
/// Standard output and error are collected on their own threads, so large output never blocks.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn hexzd");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(RUN_LIMIT).is_err() {
        // Kill only the child this helper started, by its pid.
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!("hexzd {cmd:?} did not finish within {RUN_LIMIT:?} (hang)");
    }
    let status = waiter.join().expect("waiter").expect("wait");
    Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    }
}

/// Runs `hexzd ARGS…` and returns its output.
pub fn hexzd_run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(hexzd().args(args))
}

/// Runs `hexzd ARGS…`, asserts success and returns standard output.
pub fn hexzd_ok<I, S>(args: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = hexzd();
    cmd.args(args);
    let o = run(&mut cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed with {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Asserts that `o` is a clean failure: exit status 1 (not a panic, signal or usage error) and
/// one error line on stderr. Returns stderr as text.
pub fn assert_clean_failure(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: expected exit status 1, got {:?}; stderr: {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "{what}: hexzd panicked: {err}");
    assert!(err.starts_with("hexzd: "), "{what}: stderr: {err}");
    err
}

/// An engine with the given cache size and worker count.
pub fn engine(cache_bytes: usize, workers: usize) -> Arc<Engine> {
    Engine::new(EngineConfig {
        cache_bytes,
        page_cache_bytes: if cache_bytes == 0 { 0 } else { 16 << 20 },
        workers,
    })
    .expect("start engine")
}

/// Opens `path` on a small private engine.
pub fn open(path: &Path) -> Result<Snapshot, hexzd::store::StoreError> {
    Snapshot::open_with(path, &engine(8 << 20, 2), &OpenOptions::default())
}

/// Reads a whole stream through `read_at` in `chunk`-byte reads.
pub fn read_all(
    snap: &Snapshot,
    stream: Stream,
    chunk: usize,
) -> Result<Vec<u8>, hexzd::store::StoreError> {
    let size = usize::try_from(snap.size(stream)).expect("stream fits memory");
    let mut out = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let end = (pos + chunk).min(size);
        let n = snap.read_at(stream, pos as u64, &mut out[pos..end])?;
        assert_eq!(n, end - pos, "short read at {pos}");
        pos = end;
    }
    Ok(out)
}

/// A block entry of an archive, located in the file.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    /// The stream.
    pub stream: Stream,
    /// Page number within the stream.
    pub page: usize,
    /// Entry number within the page.
    pub entry: usize,
    /// Global block index.
    pub index: u64,
    /// Stream offset of the block.
    pub logical: u64,
    /// File offset of the 52-byte entry.
    pub entry_pos: usize,
    /// The decoded entry.
    pub info: BlockInfo,
}

/// An archive's bytes with its decoded header, master index and pages, for editing.
#[derive(Debug, Clone)]
pub struct ArchiveBytes {
    /// The whole file.
    pub bytes: Vec<u8>,
}

impl ArchiveBytes {
    /// Loads an archive file.
    pub fn load(path: &Path) -> ArchiveBytes {
        ArchiveBytes {
            bytes: std::fs::read(path).expect("read archive"),
        }
    }

    /// Loads a fixture archive.
    pub fn fixture(name: &str) -> ArchiveBytes {
        ArchiveBytes::load(&fixture(name))
    }

    /// Writes the (edited) bytes to `path`.
    pub fn save(&self, path: &Path) {
        std::fs::write(path, &self.bytes).expect("write archive");
    }

    /// The decoded header.
    pub fn header(&self) -> Header {
        Header::decode(&self.bytes[..HEADER_SIZE.min(self.bytes.len())]).expect("header")
    }

    /// Replaces the header (re-encoded and padded to 4096 bytes).
    pub fn set_header(&mut self, h: &Header) {
        let enc = h.encode().expect("encode header");
        self.bytes[..HEADER_SIZE].copy_from_slice(&enc);
    }

    /// File offset of the master index.
    pub fn index_offset(&self) -> usize {
        usize::try_from(self.header().index_offset).expect("offset")
    }

    /// The decoded master index.
    pub fn master(&self) -> MasterIndex {
        MasterIndex::decode(&self.bytes[self.index_offset()..]).expect("master index")
    }

    /// Replaces the master index in place; the encoding must keep its length (the same numbers
    /// of pages).
    pub fn set_master(&mut self, m: &MasterIndex) {
        let off = self.index_offset();
        let enc = m.encode();
        let old = self.master().encode().len();
        assert_eq!(enc.len(), old, "set_master must keep the page counts");
        self.bytes[off..off + enc.len()].copy_from_slice(&enc);
    }

    /// The page directory of a stream.
    pub fn pages(&self, stream: Stream) -> Vec<PageEntry> {
        let m = self.master();
        match stream {
            Stream::Main => m.main_pages,
            Stream::Aux => m.aux_pages,
        }
    }

    /// Every block entry of both streams, in stream order.
    pub fn blocks(&self) -> Vec<Located> {
        let mut out = Vec::new();
        for stream in Stream::ALL {
            for (p, pe) in self.pages(stream).iter().enumerate() {
                let start = usize::try_from(pe.offset).expect("page offset");
                let end = start + pe.length as usize;
                let blocks = decode_page(&self.bytes[start..end]).expect("page");
                let mut logical = pe.start_logical;
                for (i, info) in blocks.into_iter().enumerate() {
                    out.push(Located {
                        stream,
                        page: p,
                        entry: i,
                        index: pe.start_block + i as u64,
                        logical,
                        entry_pos: start + 8 + 52 * i,
                        info,
                    });
                    logical += u64::from(info.logical_len);
                }
            }
        }
        out
    }

    /// Overwrites one 52-byte block entry.
    pub fn set_block(&mut self, entry_pos: usize, info: &BlockInfo) {
        let enc = encode_page(std::slice::from_ref(info));
        self.bytes[entry_pos..entry_pos + 52].copy_from_slice(&enc[8..]);
    }

    /// File range of a data block's stored bytes.
    pub fn stored_range(info: &BlockInfo) -> std::ops::Range<usize> {
        let s = usize::try_from(info.offset).expect("offset");
        s..s + info.length as usize
    }
}

/// A stream or file offset as a `usize` (test data always fits in memory).
pub fn us(v: u64) -> usize {
    usize::try_from(v).expect("offset fits usize")
}

/// Writes `data` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write file");
    p
}

/// Parses `inspect --json` output.
pub fn inspect_json(archive: &Path) -> serde_json::Value {
    let out = hexzd_ok(["inspect".as_ref(), "--json".as_ref(), archive.as_os_str()]);
    serde_json::from_slice(&out).expect("inspect --json is JSON")
}
