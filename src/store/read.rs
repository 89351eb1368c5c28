//! The miss path of `Snapshot::read_at`. A read that misses one block, or a small read that
//! misses a few, decodes them on its own thread (no job, no wake-up, no channel). The blocks of a read that misses several are
//! shared between pool jobs and the reading thread: whoever takes a block claims it (or joins
//! the load already in flight) and decodes it. The reader, when it holds a helper slot,
//! decodes blocks straight into the caller's buffer; the workers' blocks are copied in as
//! they arrive.
//!
//! What a reader decodes depends on whether the cache keeps the block (its admission, see
//! `cache.rs`): a kept block is decoded whole into a new block buffer; a block that is not
//! kept is decoded straight into the caller's buffer when the read covers it, and otherwise
//! only up to the last byte the read needs, into a reused scratch buffer.
//!
//! The load of one block that a thread owns (decode, cache, wake the waiters) is
//! [`claim::Claim`], in `read/claim.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::Sender;

use super::BlockFault;
use super::block::{decode, decode_into, decode_loaded, decode_prefix};
use super::cache::{Entry, Lookup, Notice, Pending};
use super::engine::{BlockCache, BlockData, StoreMetrics};
use super::pool::Scratch;
use super::snapshot::{Copy, Target};
use super::{Snapshot, StoreError, Stream};

mod claim;

use claim::Claim;

/// Reads of at most this many bytes decode all their missing blocks on the reading thread,
/// one after another (a 4 KiB HTTP range or NBD READ that straddles two blocks).
const SMALL_READ: usize = 64 << 10;

/// The missing blocks of one read, shared by the reading thread and the pool jobs that help
/// it. Whoever takes the next index from `next` looks the block up and, if nobody else is
/// loading it, decodes it: the reader straight into its own buffer, a worker into a block
/// buffer that it sends to the reader (and the cache).
struct Batch {
    stream: Stream,
    misses: Vec<Copy>,
    /// Next index of `misses` nobody has taken yet.
    next: AtomicUsize,
    /// Set when the read ended early (an error): jobs then take no more indices, so no block
    /// is claimed that nobody needs.
    stop: AtomicBool,
    /// The reader's notices: `(index, block)` for every index a worker took or that another
    /// reader was already loading.
    tx: Sender<Notice<BlockData, StoreError>>,
    cache: Arc<BlockCache>,
    metrics: Arc<StoreMetrics>,
}

impl Batch {
    /// Takes the next index, or `None` when every index is taken or the read has ended.
    fn take(&self) -> Option<usize> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.misses.len()).then_some(i)
    }

    /// One pool job: takes one index and loads that block for the reader. A job that finds
    /// every index taken (the reader decoded them itself) does nothing.
    fn work(&self, scratch: &mut Scratch) {
        let Some(i) = self.take() else {
            return;
        };
        let t = &self.misses[i].target;
        match self
            .cache
            .get_or_wait(&t.key(), self.misses[i].span(), &self.tx, i)
        {
            Lookup::Hit(block) => {
                StoreMetrics::add(&self.metrics.cache_hits, 1);
                // The reader may have returned early; then nobody needs the block.
                let _ = self.tx.send((i, Ok(block)));
            }
            // The reader is registered; the loading thread will tell it.
            Lookup::Waiting => StoreMetrics::add(&self.metrics.cache_misses, 1),
            Lookup::Owner(pending) => {
                StoreMetrics::add(&self.metrics.cache_misses, 1);
                Claim::new(self.stream, t, pending, &self.cache, &self.metrics).run(scratch);
            }
        }
    }
}

/// Sets the batch's stop flag when the read returns, however it returns.
struct StopOnDrop<'a>(&'a Batch);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

impl Snapshot {
    /// Fetches the missing blocks of a read. The reading thread and pool jobs take the blocks
    /// one by one from a shared list ([`Batch`]); the reader decodes the blocks it takes
    /// straight into `buf` and copies the others as their notices arrive.
    ///
    /// At most [`Engine::read_window`](super::engine::Engine::read_window) jobs of this read wait in the pool queue at once; a new
    /// one is queued only as a worker's block arrives. A 32 MiB cold read then keeps every
    /// worker busy without putting 512 jobs ahead of other clients' reads in the shared FIFO.
    /// Blocks are claimed only when taken, so returning early on an error never leaves a
    /// claimed block that nobody will decode.
    ///
    /// The reader decodes only while it holds one of the pool's few helper slots (see
    /// [`Pool::start_helping`](super::pool::Pool::start_helping)); otherwise it sleeps until
    /// the workers are done.
    pub(super) fn fill_misses(
        &self,
        stream: Stream,
        buf: &mut [u8],
        mut misses: Vec<Copy>,
    ) -> Result<(), StoreError> {
        if misses.len() == 1 {
            if let Some(m) = misses.pop() {
                return self.fill_single(stream, buf, &m);
            }
        }
        // Remote archives: fetch the stored bytes of all these blocks first, adjacent ones in
        // one GET, and hold them until the read ends (nothing for local files).
        let _pinned = self.pin_remote(stream, &misses)?;
        if buf.len() <= SMALL_READ {
            // A small read that straddles blocks: decoding the few parts it needs here costs
            // less than waking a worker, which would also decode its block whole.
            for m in &misses {
                self.fill_single(stream, buf, m)?;
            }
            return Ok(());
        }
        let total = misses.len();
        let (tx, rx) = crossbeam_channel::unbounded();
        let batch = Arc::new(Batch {
            stream,
            misses,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            tx,
            cache: Arc::clone(&self.engine.blocks),
            metrics: Arc::clone(&self.engine.metrics),
        });
        let _stop = StopOnDrop(&batch);
        let mut helper = HelperScratch {
            pool: &self.engine.pool,
            scratch: self.engine.pool.start_helping(),
        };
        // A helping reader takes at least one block itself: a one-block read then costs no
        // job and no wake-up.
        let own = usize::from(helper.scratch.is_some());
        let mut queued = 0usize;
        for _ in 0..self.engine.read_window().min(total.saturating_sub(own)) {
            self.queue_job(&batch);
            queued += 1;
        }
        let mut done = 0usize;
        // Decode here while indices are left, collecting the workers' blocks in between.
        if let Some(scratch) = helper.scratch.as_mut() {
            while let Some(i) = batch.take() {
                if self.fill_one(&batch, i, buf, scratch)? {
                    done += 1;
                }
                while let Ok(notice) = rx.try_recv() {
                    self.take_notice(&batch, notice, buf, &mut queued)?;
                    done += 1;
                }
            }
        }
        drop(helper);
        while done < total {
            // The batch holds `tx`, and every load completes (drop guards cover panics), so
            // this receive cannot wait forever or disconnect.
            let Ok(notice) = rx.recv() else {
                return Err(self.block_error(&self.archive, stream, 0, 0, BlockFault::Internal));
            };
            self.take_notice(&batch, notice, buf, &mut queued)?;
            done += 1;
        }
        Ok(())
    }

    /// Fetches the stored bytes of the `misses` that live in remote archives, one archive at
    /// a time, and returns the chunks so the caller can hold them (see
    /// [`Source::pin`](super::source::Source::pin)). Entries whose bounds are bad are left
    /// for the block load to report. A failed fetch fails the read, named after the first
    /// block of that archive.
    fn pin_remote(
        &self,
        stream: Stream,
        misses: &[Copy],
    ) -> Result<Vec<super::remote::Chunk>, StoreError> {
        let mut pins = Vec::new();
        if !misses.iter().any(|m| m.target.archive.is_remote()) {
            return Ok(pins);
        }
        let mut seen: Vec<u64> = Vec::new();
        for m in misses {
            let a = &m.target.archive;
            if !a.is_remote() || seen.contains(&a.id) {
                continue;
            }
            seen.push(a.id);
            let ranges: Vec<(u64, u64)> = misses
                .iter()
                .filter(|x| x.target.archive.id == a.id)
                .map(|x| (x.target.info.offset, u64::from(x.target.info.length)))
                .filter(|&(off, len)| {
                    len <= u64::from(crate::format::MAX_STORED_LEN)
                        && off.checked_add(len).is_some_and(|e| e <= a.file_len())
                })
                .collect();
            match a.source.pin(&ranges) {
                Ok(chunks) => pins.extend(chunks),
                Err(e) => {
                    return Err(self.block_error(
                        a,
                        stream,
                        m.target.index,
                        m.target.offset,
                        BlockFault::Remote(Box::new(e)),
                    ));
                }
            }
        }
        Ok(pins)
    }

    /// Queues one job of `batch` on the pool.
    fn queue_job(&self, batch: &Arc<Batch>) {
        let batch = Arc::clone(batch);
        self.engine
            .pool
            .submit(Box::new(move |scratch| batch.work(scratch)));
    }

    /// Copies a block a notice brought, and queues another job while the batch has blocks
    /// no job has been queued for.
    fn take_notice(
        &self,
        batch: &Arc<Batch>,
        (i, result): Notice<BlockData, StoreError>,
        buf: &mut [u8],
        queued: &mut usize,
    ) -> Result<(), StoreError> {
        if *queued < batch.misses.len() && batch.next.load(Ordering::Relaxed) < batch.misses.len() {
            self.queue_job(batch);
            *queued += 1;
        }
        let m = &batch.misses[i];
        let block = result?;
        self.copy_out(
            batch.stream,
            &m.target,
            &block,
            m.skip,
            &mut buf[m.dst..m.dst + m.len],
        )
    }

    /// Loads index `i` on the reading thread. Returns whether it is finished; `false` means
    /// another thread is loading the block and a notice will follow.
    fn fill_one(
        &self,
        batch: &Batch,
        i: usize,
        buf: &mut [u8],
        scratch: &mut Scratch,
    ) -> Result<bool, StoreError> {
        let m = &batch.misses[i];
        let (t, stream) = (&m.target, batch.stream);
        let metrics = &self.engine.metrics;
        let dst = &mut buf[m.dst..m.dst + m.len];
        let pending = match batch.cache.get_or_claim(&t.key(), m.span(), &batch.tx, i) {
            Lookup::Hit(block) => {
                StoreMetrics::add(&metrics.cache_hits, 1);
                self.copy_out(stream, t, &block, m.skip, dst)?;
                return Ok(true);
            }
            Lookup::Waiting => {
                StoreMetrics::add(&metrics.cache_misses, 1);
                return Ok(false);
            }
            Lookup::Owner(pending) => pending,
        };
        StoreMetrics::add(&metrics.cache_misses, 1);
        let mut claim = Claim::new(stream, t, pending, &batch.cache, metrics);
        self.load_owned(&mut claim, t, m.skip, dst, scratch)?;
        Ok(true)
    }

    /// Reads the one block a read misses, on the reading thread: a hit, the load another
    /// reader has in flight, or a load of its own with a scratch state borrowed from the pool.
    fn fill_single(&self, stream: Stream, buf: &mut [u8], m: &Copy) -> Result<(), StoreError> {
        let t = &m.target;
        let metrics = &self.engine.metrics;
        let dst = &mut buf[m.dst..m.dst + m.len];
        let wait = |pending: &Pending<BlockData, StoreError>| {
            let (tx, rx) = crossbeam_channel::bounded(1);
            pending.wait(tx, 0);
            rx
        };
        match self.engine.blocks.entry(&t.key(), m.span(), wait) {
            Entry::Hit(block) => {
                StoreMetrics::add(&metrics.cache_hits, 1);
                self.copy_out(stream, t, &block, m.skip, dst)
            }
            Entry::Loading(rx) => {
                StoreMetrics::add(&metrics.cache_misses, 1);
                // The loading thread completes every load (a drop guard covers panics), and
                // the pending load holds the sender until then.
                let Ok((_, result)) = rx.recv() else {
                    return Err(self.block_error(
                        &t.archive,
                        stream,
                        t.index,
                        t.offset,
                        BlockFault::Internal,
                    ));
                };
                self.copy_out(stream, t, &result?, m.skip, dst)
            }
            Entry::Owner(pending) => {
                StoreMetrics::add(&metrics.cache_misses, 1);
                let mut claim = Claim::new(stream, t, pending, &self.engine.blocks, metrics);
                let mut scratch = self.engine.pool.scratch();
                let result = self.load_owned(&mut claim, t, m.skip, dst, &mut scratch);
                self.engine.pool.recycle(scratch);
                result
            }
        }
    }

    /// Loads a block this thread claimed, fills `dst` with its bytes from `skip` on, and ends
    /// the load (module docs: what is decoded depends on whether the cache keeps the block).
    fn load_owned(
        &self,
        claim: &mut Claim,
        t: &Target,
        skip: usize,
        dst: &mut [u8],
        scratch: &mut Scratch,
    ) -> Result<(), StoreError> {
        let metrics = &self.engine.metrics;
        StoreMetrics::add(&metrics.stored_bytes_read, u64::from(t.info.length));
        let logical = t.info.logical_len as usize;
        let whole = skip == 0 && dst.len() == logical;
        if whole {
            // The read covers the block: decode into the caller's buffer, and copy it into a
            // block buffer only if the cache keeps it or another reader waits for it.
            match decode_into(&t.archive, &t.info, t.index, scratch, dst) {
                Ok(()) => {
                    StoreMetrics::add(&metrics.decompressions, 1);
                    t.mark_length_checked();
                    claim.finish_with(logical, || Ok(Arc::new(dst.to_vec())));
                    Ok(())
                }
                Err(fault) => Err(claim.fail(fault)),
            }
        } else if claim.admitted() {
            match decode(&t.archive, &t.info, t.index, scratch) {
                Ok(block) => {
                    StoreMetrics::add(&metrics.decompressions, 1);
                    t.mark_length_checked();
                    let block = Arc::new(block);
                    let copied = self.copy_out(claim.stream, t, &block, skip, dst);
                    claim.finish(Ok(block));
                    copied
                }
                Err(fault) => Err(claim.fail(fault)),
            }
        } else {
            // Nobody keeps the block: decode only what this read needs (without walking the
            // rest once the block's length has been checked). Should another reader have
            // started waiting meanwhile, it gets the whole block decoded from the stored
            // bytes still in `scratch`.
            let need = skip + dst.len();
            let checked = t.length_checked();
            match decode_prefix(&t.archive, &t.info, t.index, scratch, need, checked) {
                Ok(whole) => {
                    StoreMetrics::add(&metrics.decompressions, 1);
                    if whole {
                        t.mark_length_checked();
                    }
                    dst.copy_from_slice(&scratch.block[skip..skip + dst.len()]);
                    claim.finish_with(logical, || {
                        decode_loaded(&t.archive, &t.info, scratch).map(Arc::new)
                    });
                    Ok(())
                }
                Err(fault) => Err(claim.fail(fault)),
            }
        }
    }

    pub(super) fn copy_out(
        &self,
        stream: Stream,
        t: &Target,
        block: &[u8],
        skip: usize,
        dst: &mut [u8],
    ) -> Result<(), StoreError> {
        if block.len() != t.info.logical_len as usize {
            // Two entries share stored bytes but disagree on their size.
            return Err(self.block_error(
                &t.archive,
                stream,
                t.index,
                t.offset,
                BlockFault::ParentSize {
                    expected: t.info.logical_len,
                    actual: u32::try_from(block.len()).unwrap_or(u32::MAX),
                },
            ));
        }
        dst.copy_from_slice(&block[skip..skip + dst.len()]);
        Ok(())
    }

    /// Queues the decode of a claimed block (prefetch).
    pub(super) fn submit(
        &self,
        stream: Stream,
        t: &Target,
        pending: Arc<Pending<BlockData, StoreError>>,
    ) {
        let claim = Claim::new(
            stream,
            t,
            pending,
            &self.engine.blocks,
            &self.engine.metrics,
        );
        self.engine
            .pool
            .submit(Box::new(move |scratch| claim.run(scratch)));
    }
}

/// A helper slot (and its scratch state) held while a reader helps decode; returned on drop,
/// however the read ends.
struct HelperScratch<'a> {
    pool: &'a super::pool::Pool,
    scratch: Option<Scratch>,
}

impl Drop for HelperScratch<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.scratch.take() {
            self.pool.stop_helping(s);
        }
    }
}
