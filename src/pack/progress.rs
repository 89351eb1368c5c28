//! The progress line of `pack`.

use std::time::{Duration, Instant};

/// The progress line: shown only on a terminal, redrawn at most five times a second.
pub(super) struct Progress {
    enabled: bool,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
}

impl Progress {
    pub(super) fn new(enabled: bool, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            enabled,
            total,
            done: 0,
            start: now,
            last: now,
        }
    }

    pub(super) fn add(&mut self, n: u64) {
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
        crate::logging::to_stderr(&format!(
            "\rpacking: {:.1} of {:.1} MiB{pct}, {:.0} MiB/s   ",
            mib(self.done),
            mib(self.total),
            mib(self.done) / secs
        ));
    }

    pub(super) fn finish(&self) {
        if self.enabled {
            self.draw();
            crate::logging::to_stderr("\n");
        }
    }
}
