//! `hexzd verify`: checks every block of both streams (CRC, decryption, decode to the logical
//! length, BLAKE3 where one is stored, parent references resolvable) on the worker pool,
//! bypassing the block cache.

use std::sync::Arc;

use super::block::decode;
use super::chain::{is_zero_block_hash, resolve};
use super::snapshot::hex;
use super::{BlockFault, Snapshot, StoreError, Stream};
use crate::format::{BlockKind, MAX_BLOCK_LEN};

/// One block that failed verification.
#[derive(Debug, Clone)]
pub struct BadBlock {
    /// Stream of the block.
    pub stream: Stream,
    /// Global block index (`None` when a whole page failed to load).
    pub block: Option<u64>,
    /// Stream offset where the block (or page) begins.
    pub offset: u64,
    /// What is wrong.
    pub error: String,
}

/// Result of [`Snapshot::verify`].
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Block entries examined (both streams, including sparse and parent entries).
    pub blocks: u64,
    /// Data blocks decoded.
    pub decoded: u64,
    /// Parent references resolved.
    pub parent_refs: u64,
    /// Every failure, in stream order.
    pub bad: Vec<BadBlock>,
}

impl VerifyReport {
    /// True when no block failed.
    pub fn ok(&self) -> bool {
        self.bad.is_empty()
    }
}

type Outcome = (Stream, u64, u64, Result<(), BlockFault>);

/// A verify job's answer. If the job dies without answering (a panic in a decoder), `Drop`
/// reports it as a failure of that block, so `verify` neither hangs nor omits the block.
struct Reply {
    tx: Option<crossbeam_channel::Sender<Outcome>>,
    stream: Stream,
    index: u64,
    offset: u64,
}

impl Reply {
    fn send(&mut self, r: Result<(), BlockFault>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.stream, self.index, self.offset, r));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.send(Err(BlockFault::Internal));
    }
}

impl Snapshot {
    /// Verifies every block. `progress` is called with (entries done, entries total).
    pub fn verify(&self, mut progress: impl FnMut(u64, u64)) -> Result<VerifyReport, StoreError> {
        let archive = self.archive();
        let engine = self.engine();
        let total: u64 = Stream::ALL
            .iter()
            .flat_map(|&s| archive.pages(s).iter())
            .map(|p| u64::from(p.length.saturating_sub(8)) / 52)
            .sum();
        let mut report = VerifyReport::default();
        let (tx, rx) = crossbeam_channel::unbounded::<Outcome>();
        let max_in_flight = engine.workers() * 8;
        let mut in_flight = 0usize;
        let collect = |report: &mut VerifyReport, (stream, block, offset, r): Outcome| {
            if let Err(fault) = r {
                report.bad.push(BadBlock {
                    stream,
                    block: Some(block),
                    offset,
                    error: fault.to_string(),
                });
            }
        };
        for stream in Stream::ALL {
            for p in 0..archive.pages(stream).len() {
                let page = match archive.page(engine, stream, p) {
                    Ok(page) => page,
                    Err(e) => {
                        report.bad.push(BadBlock {
                            stream,
                            block: None,
                            offset: archive.pages(stream)[p].start_logical,
                            error: format!("index page {p}: {e}"),
                        });
                        continue;
                    }
                };
                for (i, info) in page.blocks.iter().copied().enumerate() {
                    report.blocks += 1;
                    let index = page.start_block + i as u64;
                    let offset = page.starts[i];
                    match info.kind() {
                        BlockKind::Sparse | BlockKind::Empty => {}
                        BlockKind::Invalid => collect(
                            &mut report,
                            (stream, index, offset, Err(BlockFault::Invalid(info.offset))),
                        ),
                        // As in `read_at`: bound the size before hashing zeros for it.
                        BlockKind::Parent if info.logical_len > MAX_BLOCK_LEN => {
                            report.parent_refs += 1;
                            let fault = BlockFault::TooLarge(info.logical_len);
                            collect(&mut report, (stream, index, offset, Err(fault)));
                        }
                        BlockKind::Parent => {
                            report.parent_refs += 1;
                            let r = match resolve(engine, archive.parents(), &info.hash) {
                                Ok(Some(r)) if r.info.logical_len == info.logical_len => Ok(()),
                                Ok(Some(r)) => Err(BlockFault::ParentSize {
                                    expected: info.logical_len,
                                    actual: r.info.logical_len,
                                }),
                                Ok(None) if is_zero_block_hash(&info.hash, info.logical_len) => {
                                    Ok(())
                                }
                                Ok(None) => Err(BlockFault::ParentMissing(hex(&info.hash))),
                                Err(e) => Err(BlockFault::Io(Arc::new(std::io::Error::other(
                                    e.to_string(),
                                )))),
                            };
                            collect(&mut report, (stream, index, offset, r));
                        }
                        BlockKind::Data => {
                            while in_flight >= max_in_flight {
                                if let Ok(o) = rx.recv() {
                                    collect(&mut report, o);
                                }
                                in_flight -= 1;
                            }
                            report.decoded += 1;
                            in_flight += 1;
                            let archive = Arc::clone(archive);
                            let tx = tx.clone();
                            let mut reply = Reply {
                                tx: Some(tx),
                                stream,
                                index,
                                offset,
                            };
                            engine.pool.submit(Box::new(move |scratch| {
                                let r = decode(&archive, &info, index, scratch).and_then(|plain| {
                                    let check = info.hash != [0; 32] && archive.cipher.is_none();
                                    if check && *blake3::hash(&plain).as_bytes() != info.hash {
                                        Err(BlockFault::HashMismatch)
                                    } else {
                                        Ok(())
                                    }
                                });
                                reply.send(r);
                            }));
                        }
                    }
                    if report.blocks % 1024 == 0 {
                        progress(report.blocks, total);
                    }
                }
            }
        }
        drop(tx);
        for o in rx.iter() {
            collect(&mut report, o);
        }
        progress(report.blocks, total);
        report.bad.sort_by_key(|b| (b.stream, b.offset));
        Ok(report)
    }
}
