//! Logging to stderr: journald priority prefixes (`<3>`, `<6>`, ...) when stderr is the
//! journal's stream (systemd.md §6), plain `LEVEL message` lines otherwise. No timestamps:
//! journald adds its own. The level comes from `HEXZD_LOG` (or `RUST_LOG`), e.g. `debug`.
//!
//! Lines from many threads are combined into few writes: a thread that logs while another
//! is writing appends its line to a shared buffer and goes on, and the writing thread writes
//! everything that gathered meanwhile in one call before it stops. With one line per HTTP
//! request (the access log), writing each line under one stderr lock made every connection
//! thread queue behind one write at a time: 8 keep-alive clients of 4 KiB ranges got a third
//! of the requests per second they get with the log off (issue 11). Lines keep their order,
//! a line is never split, and a stderr that stops draining blocks the threads that log (with
//! at most `MAX_PENDING` bytes held), as a plain write would.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Bytes of lines held while another thread writes; a logging thread that finds more waits.
const MAX_PENDING: usize = 1 << 20;
/// Longest wait of [`log::Log::flush`] for lines other threads are writing (a stderr that
/// does not drain must not keep the process from exiting).
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Installs the logger. `default` applies when neither `HEXZD_LOG` nor `RUST_LOG` is set.
pub fn init(default: log::LevelFilter) {
    let filter = std::env::var("HEXZD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.as_str().to_ascii_lowercase());
    let mut b = env_logger::Builder::new();
    // The HTTP client of remote archives logs requests at debug level (URLs with presigned
    // queries, headers): keep it at warn unless a filter names it (`ureq=debug`).
    for module in ["ureq", "ureq_proto"] {
        b.filter_module(module, log::LevelFilter::Warn);
    }
    // rustls logs every alert it sends at warn level ("Sending warning alert
    // NoRenegotiation"): that is one line per misbehaving TLS client, which hexzd counts and
    // logs at debug itself (issue 13). Errors only, unless a filter names it.
    b.filter_module("rustls", log::LevelFilter::Error);
    let filter = b.parse_filters(&filter).build();
    let max = filter.filter();
    let logger = Stderr {
        filter,
        journal: under_journald(),
        out: Combined::new(std::io::stderr()),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

/// The logger: env_logger's filter, this module's line format, combined writes to stderr.
struct Stderr {
    filter: env_logger::Logger,
    journal: bool,
    out: Combined<std::io::Stderr>,
}

/// Lines from many threads written to `sink` in as few writes as they allow (module docs).
struct Combined<W> {
    pending: Mutex<Pending>,
    /// Signalled when a writer takes the pending lines or stops writing.
    changed: Condvar,
    /// Only the thread that set `Pending::writing` writes, so this lock is never contended.
    sink: Mutex<W>,
}

/// Lines waiting for the thread that is writing.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// A thread is writing; it writes `lines` before it stops.
    writing: bool,
    /// Threads waiting on `changed` (so a writer signals only when someone waits).
    waiters: usize,
}

impl<W: Write> Combined<W> {
    fn new(sink: W) -> Combined<W> {
        Combined {
            pending: Mutex::new(Pending::default()),
            changed: Condvar::new(),
            sink: Mutex::new(sink),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, p: MutexGuard<'a, Pending>, timeout: Duration) -> MutexGuard<'a, Pending> {
        let mut p = p;
        p.waiters += 1;
        let (mut p, _) = self
            .changed
            .wait_timeout(p, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        p.waiters -= 1;
        p
    }

    /// Writes `line`, or leaves it to the thread that is writing.
    fn emit(&self, line: &[u8]) {
        let mut p = self.lock();
        while p.writing && p.lines.len() >= MAX_PENDING {
            p = self.wait(p, Duration::from_secs(1));
        }
        p.lines.extend_from_slice(line);
        if p.writing {
            return;
        }
        p.writing = true;
        let mut batch = Vec::new();
        loop {
            std::mem::swap(&mut batch, &mut p.lines);
            if p.waiters > 0 {
                self.changed.notify_all();
            }
            drop(p);
            {
                let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
                // As env_logger did: a failed write to stderr is not reported anywhere.
                let _ = sink.write_all(&batch);
            }
            batch.clear();
            p = self.lock();
            if p.lines.is_empty() {
                p.writing = false;
                if p.waiters > 0 {
                    self.changed.notify_all();
                }
                return;
            }
        }
    }

    /// Waits (up to [`FLUSH_WAIT`]) until the lines other threads are writing are out.
    fn flush(&self) {
        let mut p = self.lock();
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        while p.writing || !p.lines.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            p = self.wait(p, left);
        }
    }
}

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        let mut line = String::with_capacity(160);
        let _ = if self.journal {
            writeln!(line, "<{}>{}", priority(record.level()), record.args())
        } else {
            writeln!(line, "{:<5} {}", record.level(), record.args())
        };
        self.out.emit(line.as_bytes());
    }

    fn flush(&self) {
        self.out.flush();
    }
}

/// Writes `text` to stderr as it is, ignoring failure. For the lines a command or the daemon
/// prints itself (start-up, summaries, progress): `eprint!` panics when stderr is gone (a
/// closed pipe, a full disk, a hung-up terminal), and a status line must never cost a
/// daemon that is otherwise starting fine, or a command whose work is done, its exit status.
pub fn to_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Prints a fatal error line (what `main` reports before exiting 1) on stderr, with the `err`
/// priority prefix when stderr is the journal.
pub fn fatal(line: &str) {
    // Lines logged before it come first.
    log::logger().flush();
    if under_journald() {
        to_stderr(&format!("<3>{line}\n"));
    } else {
        to_stderr(&format!("{line}\n"));
    }
}

/// syslog priority of a log level.
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// True when `$JOURNAL_STREAM` names the device and inode of our stderr.
fn under_journald() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink that records each write and takes a while over it, as a busy journal would.
    #[derive(Default)]
    struct Slow {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_micros(200));
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_stay_whole_and_in_order_in_fewer_writes() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let out = Combined::new(Slow {
            writes: Arc::clone(&writes),
        });
        const THREADS: usize = 8;
        const LINES: usize = 200;
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let out = &out;
                s.spawn(move || {
                    for i in 0..LINES {
                        out.emit(format!("thread {t} line {i}\n").as_bytes());
                    }
                });
            }
        });
        out.flush();
        let writes = writes.lock().unwrap();
        let text = String::from_utf8(writes.concat()).unwrap();
        let mut next = [0usize; THREADS];
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (t, i): (usize, usize) = (f[1].parse().unwrap(), f[3].parse().unwrap());
            assert_eq!(
                i, next[t],
                "thread {t}: lines out of order or torn: {line:?}"
            );
            next[t] += 1;
        }
        assert_eq!(next, [LINES; THREADS]);
        // Every write ends at the end of a line, and contending threads shared writes.
        assert!(writes.iter().all(|w| w.ends_with(b"\n")));
        assert!(writes.len() < THREADS * LINES, "{} writes", writes.len());
    }

    #[test]
    fn flush_returns_at_once_when_nothing_is_pending() {
        let out = Combined::new(Vec::new());
        out.emit(b"one\n");
        out.flush();
        assert_eq!(out.sink.lock().unwrap().as_slice(), b"one\n");
    }
}
