//! `hexzd pack`: turns raw images into `.hxz` archives (hexz-format.md §13).
//!
//! One thread reads the input in fixed-size blocks and hands them to a worker pool that hashes,
//! tests for zeros, compresses and (optionally) encrypts; results are written strictly in input
//! order, so the output is identical from run to run. Memory stays bounded: at most
//! `4 × workers` blocks are in flight, and the dedup table is capped.
//!
//! The archive is written to a temporary file beside the output and moved into place only when
//! complete, so a failure (a full disk, say) or a stop signal never leaves a partial archive
//! behind. The output is only ever a regular file: a device node or FIFO at its path is
//! refused, never replaced, and so is an output that is one of the inputs.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read};
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::format::crypto::{BlockCipher, DEFAULT_ITERATIONS};
use crate::format::writer::{ArchiveWriter, WriteError};
use crate::format::{CodecError, Compression, EncryptionParams, Header, MAX_BLOCK_LEN, Stream};
use crate::store::file::{FileError, not_a_file, open_raw_image};
use crate::store::pool::Pool;
use crate::store::{Engine, EngineConfig, OpenOptions, Snapshot, StoreError};

mod progress;
mod run;

use progress::Progress;
use run::Run;

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
    /// Set by a stop signal (the CLI's SIGINT, SIGTERM, SIGHUP): the pack stops before its
    /// next block with [`PackError::Interrupted`] and removes its temporary file.
    pub stop: Option<Arc<AtomicBool>>,
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
    /// The input is not a file or block device (or cannot be opened as one).
    #[error("cannot read input {0}")]
    InputFile(FileError),
    /// Something other than a regular file is at the output path (`/dev/null`, a FIFO).
    #[error("{path} is {kind}; pack writes a regular file and replaces only a regular file", path = path.display())]
    OutputNotAFile { path: PathBuf, kind: &'static str },
    /// The output path names one of the inputs.
    #[error("{path} is {role} itself; write the archive elsewhere", path = path.display())]
    OutputIsInput { path: PathBuf, role: &'static str },
    /// A stop signal arrived.
    #[error("interrupted; nothing was written")]
    Interrupted,
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
    let main_file = open_raw_image(input).map_err(PackError::InputFile)?;
    let aux_file = match &options.aux {
        Some(p) => Some(open_raw_image(p).map_err(PackError::InputFile)?),
        None => None,
    };
    let mut inputs = vec![(main_file.meta.clone(), "the input")];
    if let Some(a) = &aux_file {
        inputs.push((a.meta.clone(), "the --aux input"));
    }
    // A base that cannot be read is reported when it is opened below, as a base archive.
    if let Some(Ok(m)) = options.base.as_ref().map(std::fs::metadata) {
        inputs.push((m, "the --base archive"));
    }
    check_output(output, &inputs)?;
    // A block device's length comes from the open (its `st_size` is 0).
    let total = main_file.len + aux_file.as_ref().map_or(0, |a| a.len);
    let (main_file, aux_file) = (main_file.file, aux_file.map(|a| a.file));
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
        stop: options.stop.clone(),
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
    // Once more just before the rename: the path may have changed while the input was read.
    check_output(output, &inputs)?;
    commit(&tmp_path, output, options.force)?;
    temp.committed = true;
    summary.archive_bytes = ws.file_size;
    summary.blocks = ws.blocks;
    Ok(summary)
}

/// Refuses an output path where something other than a regular file is (a device node or
/// FIFO: renaming over `/dev/null` would replace it), or that is one of the `inputs` (packing
/// an image over itself). A missing output, or a dangling symbolic link, is fine.
fn check_output(
    output: &Path,
    inputs: &[(std::fs::Metadata, &'static str)],
) -> Result<(), PackError> {
    let Ok(meta) = std::fs::metadata(output) else {
        return Ok(());
    };
    if let Some(kind) = not_a_file(&meta) {
        return Err(PackError::OutputNotAFile {
            path: output.to_path_buf(),
            kind,
        });
    }
    match inputs
        .iter()
        .find(|(m, _)| m.dev() == meta.dev() && m.ino() == meta.ino())
    {
        Some((_, role)) => Err(PackError::OutputIsInput {
            path: output.to_path_buf(),
            role,
        }),
        None => Ok(()),
    }
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
}
