//! The per-stream pipeline of `pack`: read fixed blocks, hand them to the pool (hash, zero
//! test, compress, encrypt, CRC), and write the results strictly in input order, deduplicating
//! and referring to a base archive's blocks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use crate::format::codec::{CodecContext, crc32};
use crate::format::crypto::BlockCipher;
use crate::format::writer::{ArchiveWriter, WriteError};
use crate::format::{BlockInfo, CodecError, Compression, Stream};
use crate::store::pool::Pool;
use crate::store::{Engine, Snapshot};

use super::progress::Progress;
use super::{PackError, PackSummary};

/// Result of one block's work on a pool thread.
pub(super) struct Prepared {
    pub(super) len: u32,
    pub(super) zero: bool,
    pub(super) hash: [u8; 32],
    pub(super) stored: Vec<u8>,
    pub(super) crc: u32,
}

/// A compression job's answer. If the job dies without answering (a panic), `Drop` reports
/// it, so the writer never waits for a block that will not come.
pub(super) struct Reply {
    pub(super) tx: Option<crossbeam_channel::Sender<(u64, Result<Prepared, PackError>)>>,
    pub(super) seq: u64,
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

/// Errors inside a stream, before the input path is attached.
pub(super) enum StreamError {
    Read(io::Error),
    Other(PackError),
}

impl StreamError {
    pub(super) fn with_input(self, path: &Path) -> PackError {
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

pub(super) struct Run<'a, W: Write + io::Seek> {
    pub(super) output: &'a Path,
    pub(super) pool: &'a Pool,
    pub(super) writer: &'a mut ArchiveWriter<W>,
    pub(super) compression: Compression,
    pub(super) block_size: u32,
    pub(super) cipher: Option<Arc<BlockCipher>>,
    pub(super) base: Option<&'a Snapshot>,
    pub(super) engine: &'a Arc<Engine>,
    pub(super) dedup: lru::LruCache<[u8; 32], (u64, u32, u32)>,
    pub(super) summary: PackSummary,
    pub(super) progress: Progress,
    pub(super) in_flight_max: usize,
    /// Set by a stop signal ([`PackOptions::stop`](super::PackOptions::stop)).
    pub(super) stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl<W: Write + io::Seek> Run<'_, W> {
    /// Packs one input stream; returns its length.
    pub(super) fn stream(&mut self, stream: Stream, mut file: File) -> Result<u64, StreamError> {
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
                if self
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
                {
                    return Err(StreamError::Other(PackError::Interrupted));
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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
