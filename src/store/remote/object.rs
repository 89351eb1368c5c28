//! An open remote object: its size and validator fixed by a one-byte probe at open, and reads
//! served from chunks (memory, then disk, then the network). The chunks a read misses are
//! fetched in as few GETs as they allow (a run of adjacent chunks is one GET), and a reader
//! that moves forward through the object gets read-ahead on background threads.

use std::sync::{Arc, Mutex, PoisonError};

use super::chunks::{CHUNK, Chunk, Look};
use super::client::{self, Auth, Target, Validator};
use super::location::{Kind, RemoteUrl};
use super::metrics::RemoteMetrics;
use super::{Remote, RemoteError};

mod streams;

use streams::{FIRST_WINDOW, Seq, advance};

/// Most chunks fetched by one GET (16 MiB).
const MAX_RUN: u64 = 128;
/// An open object.
pub(crate) struct RemoteObject {
    id: u64,
    target: Target,
    validator: Validator,
    /// Disk cache key (object and validator), or `None` when the object has no validator
    /// (cached bytes could not be told from another object's after a restart).
    disk_key: Option<Arc<str>>,
    remote: Arc<Remote>,
    streams: Mutex<(Vec<Seq>, u64)>,
}

impl std::fmt::Debug for RemoteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteObject")
            .field("url", &self.target.display)
            .field("size", &self.validator.size)
            .field("etag", &self.validator.etag)
            .finish_non_exhaustive()
    }
}

/// Chunks claimed by this thread and not yet ended; dropping ends the rest as failed, so a
/// waiter never waits for a load that will not come.
struct Claims<'a> {
    object: &'a RemoteObject,
    pending: Vec<u64>,
}

impl Claims<'_> {
    fn done(&mut self, n: u64, chunk: Chunk) {
        self.pending.retain(|&p| p != n);
        let o = self.object;
        if let (Some(disk), Some(key)) = (&o.remote.disk, &o.disk_key) {
            disk.put(key, n, &chunk);
        }
        o.remote.chunks.finish((o.id, n), Some(chunk));
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        for &n in &self.pending {
            self.object.remote.chunks.finish((self.object.id, n), None);
        }
    }
}

impl RemoteObject {
    /// Opens `url`: a one-byte range GET proves the server does ranges and fixes the
    /// object's size, ETag and Last-Modified.
    pub fn open(remote: &Arc<Remote>, url: &RemoteUrl) -> Result<Arc<RemoteObject>, RemoteError> {
        let display = url.display();
        let target = match &url.kind {
            Kind::Http { url: u, basic } => Target {
                url: u.to_string(),
                display: display.clone(),
                origin: url.origin(),
                auth: basic
                    .as_ref()
                    .map_or(Auth::None, |(user, pw)| Auth::basic(user, pw)),
            },
            Kind::S3 { bucket, key } => Target {
                url: remote.config.s3.object_url(bucket, key),
                display: display.clone(),
                origin: url.origin(),
                auth: Auth::S3,
            },
        };
        let mut probe = [0u8; 1];
        let validator = match client::get_range(remote, &target, 0, &mut [&mut probe[..]], None) {
            Err(RemoteError::Status { status: 416, .. }) => {
                return Err(RemoteError::Object {
                    url: display,
                    detail: "the object is empty (416 Range Not Satisfiable for its first byte)"
                        .into(),
                });
            }
            other => other?,
        };
        let disk_key = if validator.etag.is_none() && validator.last_modified.is_none() {
            log::warn!(
                "{display}: the server sends neither ETag nor Last-Modified: a replaced object is detected only by its size and block checksums, and its bytes are not cached on disk"
            );
            None
        } else {
            let mut h = blake3::Hasher::new();
            for part in [
                target.url.as_str(),
                validator.etag.as_deref().unwrap_or(""),
                validator.last_modified.as_deref().unwrap_or(""),
            ] {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            h.update(&validator.size.to_le_bytes());
            let hex: String = h.finalize().as_bytes()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Some(Arc::from(hex.as_str()))
        };
        let object = Arc::new(RemoteObject {
            id: remote.next_id(),
            target,
            validator,
            disk_key,
            remote: Arc::clone(remote),
            streams: Mutex::new((Vec::new(), 0)),
        });
        // The probe's byte is chunk 0's first: nothing else of it is kept.
        let _ = probe;
        Ok(object)
    }

    /// Object size in bytes.
    pub fn size(&self) -> u64 {
        self.validator.size
    }

    /// Digest of the object's identity (URL, validator, size), for the archive identity and
    /// the engine registry.
    pub fn identity(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for part in [
            self.target.url.as_str(),
            self.validator.etag.as_deref().unwrap_or(""),
            self.validator.last_modified.as_deref().unwrap_or(""),
        ] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update(&self.validator.size.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// `Last-Modified` as sent by the server, if it sent one.
    pub fn last_modified(&self) -> Option<&str> {
        self.validator.last_modified.as_deref()
    }

    fn chunk_len(&self, n: u64) -> usize {
        let start = n * CHUNK;
        // At most CHUNK.
        usize::try_from(self.size().saturating_sub(start).min(CHUNK)).unwrap_or(0)
    }

    fn check_bounds(&self, offset: u64, len: u64) -> Result<(), RemoteError> {
        if offset.checked_add(len).is_none_or(|e| e > self.size()) {
            return Err(RemoteError::Object {
                url: self.target.display.clone(),
                detail: format!(
                    "bytes {offset}..+{len} lie past the end of the {}-byte object",
                    self.size()
                ),
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(self: &Arc<Self>, buf: &mut [u8], offset: u64) -> Result<(), RemoteError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.check_bounds(offset, buf.len() as u64)?;
        let first = offset / CHUNK;
        let last = (offset + buf.len() as u64 - 1) / CHUNK;
        self.note(first, last);
        let wanted: Vec<u64> = (first..=last).collect();
        let chunks = self.get(&wanted)?;
        let mut pos = 0usize;
        for (n, c) in wanted.iter().zip(&chunks) {
            let skip = usize::try_from(offset.saturating_sub(n * CHUNK)).unwrap_or(0);
            let take = (c.len() - skip).min(buf.len() - pos);
            buf[pos..pos + take].copy_from_slice(&c[skip..skip + take]);
            pos += take;
        }
        Ok(())
    }

    /// Fetches every chunk the `(offset, length)` ranges touch (adjacent ones in one GET)
    /// and returns them: while the caller holds them, the memory cache keeps them, so the
    /// blocks of one read are fetched together and then decoded from memory.
    pub fn pin(self: &Arc<Self>, ranges: &[(u64, u64)]) -> Result<Vec<Chunk>, RemoteError> {
        let mut wanted = Vec::new();
        for &(offset, len) in ranges {
            if len == 0 {
                continue;
            }
            self.check_bounds(offset, len)?;
            wanted.extend(offset / CHUNK..=(offset + len - 1) / CHUNK);
        }
        wanted.sort_unstable();
        wanted.dedup();
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
            return Ok(Vec::new());
        };
        self.note(first, last);
        self.get(&wanted)
    }

    /// Forgets the cached bytes of `offset..offset+len` (memory and disk), after they failed
    /// a block check: the next read fetches them again.
    pub fn invalidate(&self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        for n in offset / CHUNK..=(offset + len - 1) / CHUNK {
            self.remote.chunks.remove((self.id, n));
            if let (Some(disk), Some(key)) = (&self.remote.disk, &self.disk_key) {
                disk.remove(key, n);
            }
        }
    }

    /// The chunks `wanted` (sorted, distinct): from memory, from disk, then by GETs of runs.
    fn get(&self, wanted: &[u64]) -> Result<Vec<Chunk>, RemoteError> {
        let cache = &self.remote.chunks;
        let metrics = &self.remote.metrics.remote;
        let mut have: Vec<Option<Chunk>> = vec![None; wanted.len()];
        let mut claims = Claims {
            object: self,
            pending: Vec::new(),
        };
        let mut mine = Vec::new();
        let mut busy = Vec::new();
        for (i, &n) in wanted.iter().enumerate() {
            match cache.look((self.id, n)) {
                Look::Ready(c) => {
                    RemoteMetrics::add(&metrics.memory_hits, 1);
                    have[i] = Some(c);
                }
                Look::Claimed => {
                    claims.pending.push(n);
                    mine.push(i);
                }
                Look::Busy => busy.push(i),
            }
        }
        mine.retain(|&i| {
            let n = wanted[i];
            let Some(c) = self.disk_chunk(n) else {
                return true;
            };
            claims.pending.retain(|&p| p != n);
            cache.finish((self.id, n), Some(Arc::clone(&c)));
            have[i] = Some(c);
            false
        });
        let mut i = 0;
        while i < mine.len() {
            let mut j = i + 1;
            while j < mine.len()
                && wanted[mine[j]] == wanted[mine[j - 1]] + 1
                && ((j - i) as u64) < MAX_RUN
            {
                j += 1;
            }
            let fetched = self.fetch_run(wanted[mine[i]], (j - i) as u64, &mut claims)?;
            for (k, c) in fetched.into_iter().enumerate() {
                have[mine[i + k]] = Some(c);
            }
            i = j;
        }
        drop(claims);
        for i in busy {
            let key = (self.id, wanted[i]);
            // Wait for the other thread's fetch; if it failed (or the chunk went), fetch
            // it here. Bounded: each round either finds the chunk or fetches it.
            let mut c = cache.wait(key);
            for _ in 0..3 {
                if c.is_some() {
                    break;
                }
                c = match cache.look(key) {
                    Look::Ready(c) => Some(c),
                    Look::Busy => cache.wait(key),
                    Look::Claimed => {
                        let mut claims = Claims {
                            object: self,
                            pending: vec![wanted[i]],
                        };
                        self.fetch_run(wanted[i], 1, &mut claims)?.pop()
                    }
                };
            }
            have[i] = c;
        }
        have.into_iter()
            .map(|c| {
                c.ok_or_else(|| RemoteError::Object {
                    url: self.target.display.clone(),
                    detail: "a chunk fetched by another reader was lost".into(),
                })
            })
            .collect()
    }

    /// One GET for chunks `first..first+count`, all claimed by `claims`; ends each claim.
    fn fetch_run(
        &self,
        first: u64,
        count: u64,
        claims: &mut Claims<'_>,
    ) -> Result<Vec<Chunk>, RemoteError> {
        let mut bufs: Vec<Vec<u8>> = (first..first + count)
            .map(|n| self.remote.chunks.buffer(self.chunk_len(n)))
            .collect();
        let mut slices: Vec<&mut [u8]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
        client::get_range(
            &self.remote,
            &self.target,
            first * CHUNK,
            &mut slices,
            Some(&self.validator),
        )?;
        let chunks: Vec<Chunk> = bufs.into_iter().map(Arc::new).collect();
        for (k, c) in chunks.iter().enumerate() {
            claims.done(first + k as u64, Arc::clone(c));
        }
        Ok(chunks)
    }

    /// Notes a read of chunks `first..=last`; a reader moving forward gets the next window
    /// fetched in the background (the window doubling up to `[remote] readahead`).
    fn note(self: &Arc<Self>, first: u64, last: u64) {
        let max_window = self.remote.config.readahead / CHUNK;
        if max_window == 0 {
            return;
        }
        let chunks = self.size().div_ceil(CHUNK);
        let job = {
            let mut g = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
            let (seqs, tick) = &mut *g;
            advance(seqs, tick, first, last, max_window, chunks)
        };
        if let Some((from, to)) = job {
            // In pieces, so both read-ahead threads (and connections) fetch at once.
            let piece = ((to - from).div_ceil(2)).max(FIRST_WINDOW);
            let mut at = from;
            while at < to {
                let end = (at + piece).min(to);
                self.remote.read_ahead((Arc::clone(self), at, end));
                at = end;
            }
        }
    }

    /// Fetches the chunks of `first..end` that nobody has or is fetching (read-ahead, on a
    /// background thread). Failures are left to the reader that needs the bytes.
    pub(crate) fn fetch_ahead(&self, first: u64, end: u64) {
        let cache = &self.remote.chunks;
        let mut n = first;
        while n < end {
            let mut claims = Claims {
                object: self,
                pending: Vec::new(),
            };
            // Claim a run of chunks nobody has; one that is cached or in flight ends it.
            while n < end && (claims.pending.len() as u64) < MAX_RUN {
                if !matches!(cache.look((self.id, n)), Look::Claimed) {
                    n += 1;
                    if claims.pending.is_empty() {
                        continue;
                    }
                    break;
                }
                if let Some(c) = self.disk_chunk(n) {
                    cache.finish((self.id, n), Some(c));
                    n += 1;
                    if claims.pending.is_empty() {
                        continue;
                    }
                    break;
                }
                claims.pending.push(n);
                n += 1;
            }
            let Some(&start) = claims.pending.first() else {
                continue;
            };
            let count = claims.pending.len() as u64;
            match self.fetch_run(start, count, &mut claims) {
                Ok(chunks) => {
                    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                    RemoteMetrics::add(&self.remote.metrics.remote.readahead_bytes, bytes as u64);
                }
                Err(e) => {
                    log::debug!("read-ahead: {e}");
                    return;
                }
            }
        }
    }

    /// Chunk `n` from the disk cache, if it holds a valid copy.
    fn disk_chunk(&self, n: u64) -> Option<Chunk> {
        let (Some(disk), Some(key)) = (&self.remote.disk, &self.disk_key) else {
            return None;
        };
        let metrics = &self.remote.metrics.remote;
        match disk.get(key, n, self.chunk_len(n)) {
            Some(bytes) => {
                RemoteMetrics::add(&metrics.disk_hits, 1);
                Some(Arc::new(bytes))
            }
            None => {
                RemoteMetrics::add(&metrics.disk_misses, 1);
                None
            }
        }
    }
}
