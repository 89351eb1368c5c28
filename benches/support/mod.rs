//! Helpers of the store benchmark (`benches/store.rs`): a deterministic PRNG, the mixed-data
//! generator, best/median statistics, thread timing and the machine's load.
//!
//! No dependencies beyond the crate's own: timing is `std::time::Instant`, the PRNG is
//! xorshift64*, percentiles come from sorting.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

pub mod chain;
pub mod enc;
pub mod hot;

/// Errors of the benchmark: anything, with a message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Block unit of the generator: the pack's default block size, so repeated and zero blocks
/// line up with stored blocks (dedup and sparse entries) as they do in real disk images.
pub const BLOCK: usize = 64 * 1024;

/// xorshift64* (Vigna): fast, deterministic, good enough for test data and offsets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `0..n` as a `usize`.
    pub fn below_usize(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// How many blocks of each kind the generator produced.
#[derive(Debug, Default, Clone, Copy)]
pub struct MixCounts {
    pub text: u64,
    pub random: u64,
    pub zero: u64,
    pub repeat: u64,
    pub records: u64,
    pub half: u64,
}

impl MixCounts {
    /// Total blocks.
    pub fn total(&self) -> u64 {
        self.text + self.random + self.zero + self.repeat + self.records + self.half
    }

    /// One line describing the mix.
    pub fn describe(&self) -> String {
        let t = self.total().max(1) as f64;
        let pct = |n: u64| 100.0 * n as f64 / t;
        format!(
            "text {:.0}%, random {:.0}%, zero {:.0}%, repeated {:.0}%, records {:.0}%, half text/half random {:.0}% ({} blocks of 64 KiB)",
            pct(self.text),
            pct(self.random),
            pct(self.zero),
            pct(self.repeat),
            pct(self.records),
            pct(self.half),
            self.total()
        )
    }
}

/// Deterministic "disk image" content, one 64 KiB block at a time: text-like runs (LZ4 about
/// 2:1), random bytes (incompressible), zero blocks (sparse), repeats of recent blocks
/// (deduplicated), fixed-layout binary records (LZ4 about 4:1), and half-and-half blocks.
#[derive(Debug)]
pub struct MixedGen {
    rng: Rng,
    words: Vec<Vec<u8>>,
    history: Vec<Vec<u8>>,
    next_hist: usize,
    record_id: u64,
    /// Blocks generated so far, by kind.
    pub counts: MixCounts,
}

/// Recent blocks kept for repeats.
const HISTORY: usize = 64;
/// Words in the text vocabulary.
const VOCABULARY: u64 = 1024;

impl MixedGen {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> MixedGen {
        let mut rng = Rng::new(seed);
        // Letters by rough English frequency; drawing the minimum of two indices skews the
        // choice towards the front, as in real text.
        let letters = b"etaoinshrdlcumwfgypbvkjxqz";
        let words = (0..VOCABULARY)
            .map(|_| {
                let len = 2 + rng.below_usize(9);
                (0..len)
                    .map(|_| {
                        let i = rng
                            .below_usize(letters.len())
                            .min(rng.below_usize(letters.len()));
                        letters[i]
                    })
                    .collect()
            })
            .collect();
        MixedGen {
            rng,
            words,
            history: Vec::with_capacity(HISTORY),
            next_hist: 0,
            record_id: 0,
            counts: MixCounts::default(),
        }
    }

    /// Fills `out` (one block) with the next block of the image.
    pub fn block(&mut self, out: &mut [u8]) {
        let r = self.rng.below(100);
        match r {
            0..40 => {
                self.counts.text += 1;
                self.text(out);
            }
            40..58 => {
                self.counts.random += 1;
                self.rng.fill(out);
            }
            58..66 => {
                self.counts.zero += 1;
                out.fill(0);
                return;
            }
            66..76 if !self.history.is_empty() => {
                self.counts.repeat += 1;
                let i = self.rng.below_usize(self.history.len());
                out.copy_from_slice(&self.history[i]);
                return;
            }
            66..94 => {
                self.counts.records += 1;
                self.records(out);
            }
            _ => {
                self.counts.half += 1;
                let (a, b) = out.split_at_mut(out.len() / 2);
                self.text(a);
                self.rng.fill(b);
            }
        }
        if self.history.len() < HISTORY {
            self.history.push(out.to_vec());
        } else {
            self.history[self.next_hist].copy_from_slice(out);
            self.next_hist = (self.next_hist + 1) % HISTORY;
        }
    }

    /// Words from a skewed vocabulary, spaces, punctuation and newlines.
    fn text(&mut self, out: &mut [u8]) {
        let mut pos = 0;
        while pos < out.len() {
            // The product of two uniform draws favours small indices (a Zipf-like skew).
            let i = self.rng.below(VOCABULARY) * self.rng.below(VOCABULARY) / VOCABULARY;
            let w = &self.words[usize::try_from(i).unwrap_or(0)];
            let n = w.len().min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&w[..n]);
            pos += n;
            if pos < out.len() {
                out[pos] = match self.rng.below(16) {
                    0 => b'\n',
                    1 => b',',
                    2 => b'.',
                    _ => b' ',
                };
                pos += 1;
            }
        }
    }

    /// 32-byte records: an increasing id, a small value, a flag, a slowly increasing
    /// timestamp and padding, like a table or log file.
    fn records(&mut self, out: &mut [u8]) {
        let mut ts = 1_700_000_000_000u64 + self.record_id * 7;
        for rec in out.chunks_mut(32) {
            let mut r = [0u8; 32];
            r[..8].copy_from_slice(&self.record_id.to_le_bytes());
            let v = u32::try_from(self.rng.below(1000)).unwrap_or(0);
            r[8..12].copy_from_slice(&v.to_le_bytes());
            r[12] = u8::try_from(self.rng.below(4)).unwrap_or(0);
            ts += self.rng.below(16);
            r[16..24].copy_from_slice(&ts.to_le_bytes());
            let n = rec.len();
            rec.copy_from_slice(&r[..n]);
            self.record_id += 1;
        }
    }
}

/// Writes `bytes` of mixed data (seed `seed`) to `path` and returns the mix.
pub fn write_image(path: &Path, bytes: u64, seed: u64) -> io::Result<MixCounts> {
    let mut gen_ = MixedGen::new(seed);
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut block = vec![0u8; BLOCK];
    let mut left = bytes;
    while left > 0 {
        gen_.block(&mut block);
        let n = usize::try_from(left.min(BLOCK as u64)).unwrap_or(BLOCK);
        w.write_all(&block[..n])?;
        left -= n as u64;
    }
    w.into_inner().map_err(io::IntoInnerError::into_error)?;
    Ok(gen_.counts)
}

/// Repeated samples of one measurement.
#[derive(Debug, Default, Clone)]
pub struct Stat {
    samples: Vec<f64>,
}

impl Stat {
    /// Adds a sample.
    pub fn push(&mut self, v: f64) {
        self.samples.push(v);
    }

    /// Largest sample (the best throughput), 0 when empty.
    pub fn max(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }

    /// Smallest sample (the best time), 0 when empty.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().reduce(f64::min).unwrap_or(0.0)
    }

    /// Median (mean of the two middle samples for an even count), 0 when empty.
    pub fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        match s.len() {
            0 => 0.0,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// The first line of `/proc/loadavg`, trimmed.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

/// Online CPUs as the standard library sees them (cgroup quota included).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// Runs `op` in a loop on `threads` threads for about `dur`, each with its own state from
/// `init(thread)`, and returns the total number of operations and the wall time.
pub fn run_threads<S, I, F>(
    threads: usize,
    dur: Duration,
    init: I,
    op: F,
) -> Result<(u64, Duration), BoxError>
where
    I: Fn(usize) -> S + Sync,
    F: Fn(&mut S) -> Result<(), BoxError> + Sync,
{
    let start = Instant::now();
    let ops = std::thread::scope(|s| -> Result<u64, BoxError> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (init, op) = (&init, &op);
                s.spawn(move || -> Result<u64, BoxError> {
                    let mut state = init(t);
                    let t0 = Instant::now();
                    let mut n = 0u64;
                    loop {
                        op(&mut state)?;
                        n += 1;
                        if n % 8 == 0 && t0.elapsed() >= dur {
                            return Ok(n);
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| "benchmark thread panicked")??;
        }
        Ok(total)
    })?;
    Ok((ops, start.elapsed()))
}

/// Formats a table row: a label and the best and median figures with a unit.
pub fn row(label: &str, best: f64, median: f64, unit: &str) -> String {
    let p = if best.abs() < 10.0 { 3 } else { 1 };
    format!("{label:<58} {best:>10.p$} {median:>10.p$}  {unit}")
}

/// Formats a ratio row with its target (`None`: no target).
pub fn ratio_row(label: &str, best: f64, median: f64, target: Option<f64>) -> String {
    let t = match target {
        Some(t) => {
            let verdict = if median >= t {
                "met"
            } else if best >= t {
                "met at best only"
            } else {
                "MISSED"
            };
            format!("  target >= {t:.2}: {verdict}")
        }
        None => String::new(),
    };
    format!("{label:<58} {best:>10.3} {median:>10.3}{t}")
}
