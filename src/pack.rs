//! `hexzd pack`: turns raw images into `.hxz` archives (hexz-format.md §13).
//!
//! One thread reads the input in fixed-size blocks and hands them to a worker pool that hashes,
//! tests for zeros, compresses and (optionally) encrypts; results are written strictly in input
//! order, so the output is identical from run to run. Memory stays bounded: at most
//! `4 × workers` blocks are in flight, and the dedup table is capped.
//!
//! The archive is written to a temporary file beside the output and moved into place only when
//! complete, so a failure (a full disk, say) never leaves a partial archive behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::format::codec::{CodecContext, crc32};
use crate::format::crypto::{BlockCipher, DEFAULT_ITERATIONS};
use crate::format::writer::{ArchiveWriter, WriteError};
use crate::format::{
    BlockInfo, CodecError, Compression, EncryptionParams, Header, MAX_BLOCK_LEN, Stream,
};
use crate::store::pool::Pool;
use crate::store::{Engine, EngineConfig, OpenOptions, Snapshot, StoreError};

/// Default block size: 64 KiB, as Hexz.
pub const DEFAULT_BLOCK_SIZE: u32 = 65536;
/// Smallest block size `pack` accepts.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Most distinct block hashes remembered for deduplication (about 80 MiB of table). Inputs with
/// more unique blocks still pack; repeats of blocks evicted from the table are stored again.
const DEDUP_ENTRIES: usize = 1 << 20;

/// What to pack and how.
#[derive(Clone, Default)]
pub struct PackOptions {
    /// Block codec.
    pub compression: Option<Compression>,
    /// Fixed block size in bytes (default 64 KiB).
    pub block_size: Option<u32>,
    /// File for the auxiliary ("memory") stream.
    pub aux: Option<PathBuf>,
    /// Parent archive: blocks it (or its chain) already holds become parent references.
    pub base: Option<PathBuf>,
    /// Encrypt with a key derived from this password (also used for an encrypted base).
    pub password: Option<Vec<u8>>,
    /// Password of an encrypted base when the output itself is not encrypted.
    pub base_password: Option<Vec<u8>>,
    /// Replace an existing output.
    pub force: bool,
    /// Worker threads (0 = one per CPU).
    pub workers: usize,
    /// Show a progress line on stderr (only when it is a terminal).
    pub progress: bool,
}

impl std::fmt::Debug for PackOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackOptions")
            .field("compression", &self.compression)
            .field("block_size", &self.block_size)
            .field("aux", &self.aux)
            .field("base", &self.base)
            .field("encrypt", &self.password.is_some())
            .field("force", &self.force)
            .field("workers", &self.workers)
            .finish()
    }
}

/// What `pack` wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackSummary {
    /// Bytes of the main input.
    pub main_bytes: u64,
    /// Bytes of the auxiliary input.
    pub aux_bytes: u64,
    /// Size of the archive.
    pub archive_bytes: u64,
    /// Block entries written.
    pub blocks: u64,
    /// Entries stored as sparse (all zeros).
    pub sparse: u64,
    /// Entries that reuse an earlier stored block.
    pub deduplicated: u64,
    /// Entries that reference a parent archive.
    pub parent_refs: u64,
}

/// A `pack` failure. The partial output has been removed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The input could not be opened or read.
    #[error("cannot read input {path}: {source}", path = path.display())]
    Input {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The output exists and `--force` was not given.
    #[error("{path} already exists (use --force to replace it)", path = path.display())]
    OutputExists { path: PathBuf },
    /// The output's directory is missing or not writable.
    #[error("cannot create output {path}: {source}", path = path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing the archive failed (a full disk, usually).
    #[error("cannot write {path}: {source}", path = path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: WriteError,
    },
    /// The block size is out of range.
    #[error("block size {0} is out of range ({MIN_BLOCK_SIZE} to {MAX_BLOCK_LEN} bytes)")]
    BlockSize(u32),
    /// The base archive could not be opened or read.
    #[error("base archive: {0}")]
    Base(#[from] StoreError),
    /// Compression failed.
    #[error("compression failed: {0}")]
    Codec(#[from] CodecError),
    /// A compression job stopped without a result (a bug).
    #[error("internal error: the compression job of block {0} stopped without a result")]
    Internal(u64),
    /// The worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Threads(io::Error),
}

/// Result of one block's work on a pool thread.
struct Prepared {
    len: u32,
    zero: bool,
    hash: [u8; 32],
    stored: Vec<u8>,
    crc: u32,
}

/// A compression job's answer. If the job dies without answering (a panic), `Drop` reports
/// it, so the writer never waits for a block that will not come.
struct Reply {
    tx: Option<crossbeam_channel::Sender<(u64, Result<Prepared, PackError>)>>,
    seq: u64,
}

impl Reply {
    fn send(&mut self, r: Result<Prepared, PackError>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.seq, r));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.send(Err(PackError::Internal(self.seq)));
    }
}

/// Removes the temporary output unless the archive was committed.
struct TempOutput {
    path: PathBuf,
    committed: bool,
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Packs `input` (and `options.aux`) into a new archive at `output`.
pub fn pack(input: &Path, output: &Path, options: &PackOptions) -> Result<PackSummary, PackError> {
    let compression = options.compression.unwrap_or(Compression::Lz4);
    let block_size = options.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_LEN).contains(&block_size) {
        return Err(PackError::BlockSize(block_size));
    }
    let input_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Input { path, source }
    };
    let main_file = File::open(input).map_err(input_err(input))?;
    let aux_file = match &options.aux {
        Some(p) => Some(File::open(p).map_err(input_err(p))?),
        None => None,
    };
    if !options.force && output.exists() {
        return Err(PackError::OutputExists {
            path: output.to_path_buf(),
        });
    }

    let workers = match options.workers {
        0 => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        n => n,
    };
    let engine = Engine::new(EngineConfig {
        cache_bytes: 0,
        workers: 1,
        ..EngineConfig::default()
    })
    .map_err(PackError::Threads)?;
    let base = match &options.base {
        Some(b) => Some(Snapshot::open_with(
            b,
            &engine,
            &OpenOptions {
                password: options
                    .base_password
                    .clone()
                    .or_else(|| options.password.clone()),
                index_only: false,
            },
        )?),
        None => None,
    };

    let mut header = Header::new(compression, block_size);
    let cipher = match &options.password {
        Some(pw) => {
            let params = EncryptionParams {
                salt: random_salt().map_err(|source| PackError::Output {
                    path: output.to_path_buf(),
                    source,
                })?,
                iterations: DEFAULT_ITERATIONS,
            };
            header.encryption = Some(params);
            // A failure here is impossible: DEFAULT_ITERATIONS is in range.
            Some(Arc::new(BlockCipher::derive(pw, &params).map_err(|e| {
                PackError::Output {
                    path: output.to_path_buf(),
                    source: io::Error::other(e),
                }
            })?))
        }
        None => None,
    };
    if let Some(b) = &options.base {
        header.parent_paths = vec![parent_path_for(output, b)];
    }

    let tmp_path = temp_path(output);
    let out_err = |source| PackError::Output {
        path: output.to_path_buf(),
        source,
    };
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(out_err)?;
    let mut temp = TempOutput {
        path: tmp_path.clone(),
        committed: false,
    };
    let write_err = |source| PackError::Write {
        path: output.to_path_buf(),
        source,
    };
    let mut writer =
        ArchiveWriter::new(BufWriter::with_capacity(1 << 20, file), header).map_err(write_err)?;

    let pool = Pool::new(workers).map_err(PackError::Threads)?;
    let total = main_file.metadata().map_or(0, |m| m.len())
        + aux_file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    let mut run = Run {
        output,
        pool: &pool,
        writer: &mut writer,
        compression,
        block_size,
        cipher,
        base: base.as_ref(),
        engine: &engine,
        dedup: lru::LruCache::new(NonZeroUsize::new(DEDUP_ENTRIES).unwrap_or(NonZeroUsize::MIN)),
        summary: PackSummary::default(),
        progress: Progress::new(options.progress && io::stderr().is_terminal(), total),
        in_flight_max: workers * 4,
    };
    let main_bytes = run
        .stream(Stream::Main, main_file)
        .map_err(|e| e.with_input(input))?;
    let aux_bytes = match (aux_file, &options.aux) {
        (Some(f), Some(p)) => run.stream(Stream::Aux, f).map_err(|e| e.with_input(p))?,
        _ => 0,
    };
    let mut summary = run.summary;
    run.progress.finish();
    summary.main_bytes = main_bytes;
    summary.aux_bytes = aux_bytes;
    drop(pool);

    let (buf, ws) = writer.finish(None).map_err(write_err)?;
    let file = buf.into_inner().map_err(|e| {
        write_err(WriteError::Io {
            offset: ws.file_size,
            source: e.into_error(),
        })
    })?;
    file.sync_all().map_err(|e| {
        write_err(WriteError::Io {
            offset: ws.file_size,
            source: e,
        })
    })?;
    drop(file);
    commit(&tmp_path, output, options.force)?;
    temp.committed = true;
    summary.archive_bytes = ws.file_size;
    summary.blocks = ws.blocks;
    Ok(summary)
}

/// Moves the finished temporary file to `output`. Without `force`, a hard link makes the
/// "does not exist yet" check and the creation one atomic step.
fn commit(tmp: &Path, output: &Path, force: bool) -> Result<(), PackError> {
    let out_err = |source| PackError::Output {
        path: output.to_path_buf(),
        source,
    };
    if force {
        return std::fs::rename(tmp, output).map_err(out_err);
    }
    match std::fs::hard_link(tmp, output) {
        Ok(()) => {
            let _ = std::fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(PackError::OutputExists {
            path: output.to_path_buf(),
        }),
        // File systems without hard links: fall back to a checked rename.
        Err(_) if !output.exists() => std::fs::rename(tmp, output).map_err(out_err),
        Err(e) => Err(out_err(e)),
    }
}

fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map_or_else(|| "archive".into(), |n| n.to_string_lossy().into_owned());
    output.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// The parent path to store in a thin archive: relative to the output's directory when both
/// can be resolved (so the pair can be moved together), else as given.
pub fn parent_path_for(output: &Path, base: &Path) -> String {
    let out_dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match (std::fs::canonicalize(&out_dir), std::fs::canonicalize(base)) {
        (Ok(dir), Ok(base_abs)) => relative_to(&dir, &base_abs).to_string_lossy().into_owned(),
        _ => base.to_string_lossy().into_owned(),
    }
}

/// `target` expressed relative to directory `dir` (both absolute and normalised).
fn relative_to(dir: &Path, target: &Path) -> PathBuf {
    let d: Vec<Component<'_>> = dir.components().collect();
    let t: Vec<Component<'_>> = target.components().collect();
    let common = d.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..d.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn random_salt() -> io::Result<[u8; 16]> {
    let mut salt = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// Errors inside a stream, before the input path is attached.
enum StreamError {
    Read(io::Error),
    Other(PackError),
}

impl StreamError {
    fn with_input(self, path: &Path) -> PackError {
        match self {
            StreamError::Read(source) => PackError::Input {
                path: path.to_path_buf(),
                source,
            },
            StreamError::Other(e) => e,
        }
    }
}

impl From<PackError> for StreamError {
    fn from(e: PackError) -> Self {
        StreamError::Other(e)
    }
}

struct Run<'a, W: Write + io::Seek> {
    output: &'a Path,
    pool: &'a Pool,
    writer: &'a mut ArchiveWriter<W>,
    compression: Compression,
    block_size: u32,
    cipher: Option<Arc<BlockCipher>>,
    base: Option<&'a Snapshot>,
    engine: &'a Arc<Engine>,
    dedup: lru::LruCache<[u8; 32], (u64, u32, u32)>,
    summary: PackSummary,
    progress: Progress,
    in_flight_max: usize,
}

impl<W: Write + io::Seek> Run<'_, W> {
    /// Packs one input stream; returns its length.
    fn stream(&mut self, stream: Stream, mut file: File) -> Result<u64, StreamError> {
        self.writer
            .begin_stream(stream)
            .map_err(|source| PackError::Write {
                path: self.output.to_path_buf(),
                source,
            })?;
        let (tx, rx) = crossbeam_channel::unbounded::<(u64, Result<Prepared, PackError>)>();
        let mut next_read = 0u64;
        let mut next_write = 0u64;
        let mut ready: BTreeMap<u64, Prepared> = BTreeMap::new();
        let mut eof = false;
        let mut total = 0u64;
        let first_index = self.writer.next_block_index();
        loop {
            while !eof && next_read - next_write < self.in_flight_max as u64 {
                let mut buf = vec![0u8; self.block_size as usize];
                let n = read_full(&mut file, &mut buf).map_err(StreamError::Read)?;
                if n == 0 {
                    eof = true;
                    break;
                }
                buf.truncate(n);
                total += n as u64;
                if n < self.block_size as usize {
                    eof = true;
                }
                let seq = next_read;
                next_read += 1;
                let tx = tx.clone();
                let compression = self.compression;
                let cipher = self.cipher.clone();
                let index = first_index + seq;
                let mut reply = Reply { tx: Some(tx), seq };
                self.pool.submit(Box::new(move |scratch| {
                    let r = prepare(
                        &mut scratch.codec,
                        compression,
                        cipher.as_deref(),
                        index,
                        &buf,
                    );
                    reply.send(r.map_err(PackError::Codec));
                }));
            }
            if next_write == next_read {
                break;
            }
            let Ok((seq, r)) = rx.recv() else {
                break;
            };
            ready.insert(seq, r?);
            while let Some(p) = ready.remove(&next_write) {
                self.write_block(p)?;
                next_write += 1;
            }
        }
        Ok(total)
    }

    fn write_block(&mut self, p: Prepared) -> Result<(), PackError> {
        let output = self.output;
        let werr = |source| PackError::Write {
            path: output.to_path_buf(),
            source,
        };
        self.progress.add(u64::from(p.len));
        let encrypted = self.cipher.is_some();
        let entry = if p.zero {
            self.summary.sparse += 1;
            BlockInfo::sparse(p.len)
        } else if let Some(parent) = self.parent_ref(&p)? {
            self.summary.parent_refs += 1;
            parent
        } else if let Some(&(offset, length, checksum)) = if encrypted {
            None
        } else {
            self.dedup.get(&p.hash)
        } {
            self.summary.deduplicated += 1;
            BlockInfo {
                offset,
                length,
                logical_len: p.len,
                checksum,
                hash: p.hash,
            }
        } else {
            let offset = self.writer.append_stored(&p.stored).map_err(werr)?;
            let length = u32::try_from(p.stored.len()).map_err(|_| werr(WriteError::Overflow))?;
            if !encrypted {
                self.dedup.put(p.hash, (offset, length, p.crc));
            }
            BlockInfo {
                offset,
                length,
                logical_len: p.len,
                checksum: p.crc,
                hash: if encrypted { [0; 32] } else { p.hash },
            }
        };
        self.writer.push_entry(entry).map_err(werr)
    }

    /// A parent reference for this block, if the base chain holds its hash.
    fn parent_ref(&self, p: &Prepared) -> Result<Option<BlockInfo>, PackError> {
        let Some(base) = self.base else {
            return Ok(None);
        };
        let chain = std::slice::from_ref(base.archive());
        Ok(
            match crate::store::resolve_in_chain(self.engine, chain, &p.hash)? {
                Some(len) if len == p.len => Some(BlockInfo::parent(p.len, p.hash)),
                _ => None,
            },
        )
    }
}

/// The per-block work: hash, zero test, compress, encrypt, CRC.
fn prepare(
    codec: &mut CodecContext,
    compression: Compression,
    cipher: Option<&BlockCipher>,
    index: u64,
    data: &[u8],
) -> Result<Prepared, CodecError> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let zero = is_zero(data);
    let hash = *blake3::hash(data).as_bytes();
    let mut stored = Vec::new();
    if !zero {
        codec.compress(compression, data, &mut stored)?;
        if let Some(c) = cipher {
            c.encrypt_in_place(index, &mut stored, 0);
        }
    }
    let crc = crc32(&stored);
    Ok(Prepared {
        len,
        zero,
        hash,
        stored,
        crc,
    })
}

fn is_zero(data: &[u8]) -> bool {
    // OR-folding fixed chunks vectorises; `iter().all` with its early exit does not.
    let mut chunks = data.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &b| a | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The progress line: shown only on a terminal, redrawn at most five times a second.
struct Progress {
    enabled: bool,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
}

impl Progress {
    fn new(enabled: bool, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            total,
            done: 0,
            start: now,
            last: now,
        }
    }

    fn add(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let pct = if self.total > 0 {
            format!(" ({:.0}%)", 100.0 * self.done as f64 / self.total as f64)
        } else {
            String::new()
        };
        eprint!(
            "\rpacking: {:.1} of {:.1} MiB{pct}, {:.0} MiB/s   ",
            mib(self.done),
            mib(self.total),
            mib(self.done) / secs
        );
    }

    fn finish(&self) {
        if self.enabled {
            self.draw();
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_to(Path::new("/a/b"), Path::new("/a/b/c.hxz")),
            PathBuf::from("c.hxz")
        );
        assert_eq!(
            relative_to(Path::new("/a/b"), Path::new("/a/d/c.hxz")),
            PathBuf::from("../d/c.hxz")
        );
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 100]));
        let mut v = vec![0; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
