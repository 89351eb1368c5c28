//! The fixed pool of decompression workers, fed by a bounded crossbeam channel.
//!
//! Each worker owns its scratch state (codec contexts and reusable buffers for stored and
//! decoded bytes), so the hot path allocates only the blocks the cache keeps. Reading threads
//! that decode a block themselves borrow an idle scratch state from the pool
//! ([`Pool::scratch`]). A job that panics is caught: the worker survives and the job's own
//! drop guard reports the failure to its readers.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::format::codec::CodecContext;

/// State a worker keeps between jobs.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Zstd contexts.
    pub codec: CodecContext,
    /// Buffer for the stored bytes of one block, reused across jobs.
    pub stored: Vec<u8>,
    /// Length of the plaintext at the start of `stored` after the last load.
    pub plain_len: usize,
    /// Buffer for decoded bytes that nobody keeps (a prefix of a block a read needs part of),
    /// reused across jobs so a miss neither allocates nor faults in fresh pages.
    pub block: Vec<u8>,
}

/// A unit of work run on a worker thread.
pub type Job = Box<dyn FnOnce(&mut Scratch) + Send + 'static>;

/// Jobs queued per worker before submitters block. Large enough that one 32 MiB read of 64 KiB
/// blocks (512 jobs) rarely waits on the queue; small enough to bound memory.
const QUEUE_PER_WORKER: usize = 256;

/// Idle scratch states kept for reading threads ([`Pool::scratch`]); more readers decoding at
/// once allocate their own, freed after use. Each holds up to two blocks' worth of buffers.
const IDLE_SCRATCH: usize = 16;

/// Threads that may help the workers at once: half the workers, at least one.
fn helper_slots(workers: usize) -> usize {
    (workers / 2).max(1)
}

/// A fixed set of worker threads. Dropping the pool lets the workers finish the queue and exit.
#[derive(Debug)]
pub struct Pool {
    tx: Option<Sender<Job>>,
    /// The queue's receiving end, kept to count the jobs waiting ([`Pool::queued`]).
    rx: Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
    /// Scratch states lent to helping threads, so helping allocates no codec contexts. Its
    /// length bounds how many threads help at once (see [`Pool::start_helping`]).
    spare: std::sync::Mutex<Vec<Scratch>>,
    /// Scratch states lent to reading threads that decode one block themselves.
    idle: std::sync::Mutex<Vec<Scratch>>,
}

impl Pool {
    /// Starts `n` workers (at least one), named `hexzd-worker-N`.
    pub fn new(n: usize) -> std::io::Result<Pool> {
        let n = n.max(1);
        let (tx, rx) = bounded::<Job>(n * QUEUE_PER_WORKER);
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let rx: Receiver<Job> = rx.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("hexzd-worker-{i}"))
                    .spawn(move || {
                        let mut scratch = Scratch::default();
                        for job in rx {
                            // A panicking job must not take the worker (and the daemon's
                            // decompression capacity) with it.
                            if catch_unwind(AssertUnwindSafe(|| job(&mut scratch))).is_err() {
                                log::error!("a decompression job panicked; worker continues");
                                scratch = Scratch::default();
                            }
                        }
                    })?,
            );
        }
        Ok(Pool {
            tx: Some(tx),
            rx,
            workers,
            spare: std::sync::Mutex::new(
                (0..helper_slots(n)).map(|_| Scratch::default()).collect(),
            ),
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Lends a scratch state to a reading thread that decodes a block itself (a read that
    /// misses one block decodes it on its own thread: no job, no wake-up). Unlike
    /// [`start_helping`](Self::start_helping) this never refuses; give it back with
    /// [`recycle`](Self::recycle) so its buffers and codec contexts are reused.
    pub fn scratch(&self) -> Scratch {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_default()
    }

    /// Takes back a scratch state lent by [`scratch`](Self::scratch); beyond a few idle ones
    /// it is freed.
    pub fn recycle(&self, scratch: Scratch) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < IDLE_SCRATCH {
            idle.push(scratch);
        }
    }

    /// Jobs waiting in the queue now (not counting the ones running).
    pub fn queued(&self) -> usize {
        self.rx.len()
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.workers.len()
    }

    /// Takes one of the few helper slots: `Some(scratch)` lets a reader decode blocks of its
    /// own read on its thread, beside the workers; `None` means enough threads already help and
    /// the reader should leave its blocks to the workers and sleep. Helping pays when one
    /// reader streams alone (its thread decodes straight into its buffer instead of waking once
    /// per block); with many readers every helper would compete with the workers for the same
    /// cores, so only `max(1, workers / 2)` threads help at a time. Give the slot back with
    /// [`Pool::stop_helping`].
    pub fn start_helping(&self) -> Option<Scratch> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    /// Returns a helper slot taken with [`Pool::start_helping`].
    pub fn stop_helping(&self, scratch: Scratch) {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(scratch);
    }

    /// Queues a job, blocking while the queue is full. Runs it on the calling thread if the
    /// pool is shutting down, so no caller ever waits for a job that will not run.
    pub fn submit(&self, job: Job) {
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    (e.into_inner())(&mut Scratch::default());
                }
            }
            None => job(&mut Scratch::default()),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx.take();
        for w in self.workers.drain(..) {
            // Joining from a worker thread itself would deadlock; workers never own the pool.
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_job_and_survives_panics() {
        let pool = Pool::new(3).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = crossbeam_channel::unbounded();
        for i in 0..100 {
            let count = Arc::clone(&count);
            let tx = tx.clone();
            pool.submit(Box::new(move |_s| {
                if i == 50 {
                    panic!("boom");
                }
                count.fetch_add(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            }));
        }
        for _ in 0..99 {
            rx.recv().unwrap();
        }
        assert_eq!(count.load(Ordering::SeqCst), 99);
        assert_eq!(pool.size(), 3);
    }
}
