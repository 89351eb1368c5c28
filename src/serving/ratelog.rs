//! Rate limiting for log lines about events that clients can cause in bulk (a refused
//! connection, a send timeout, an exhausted budget): each event class logs at most once per
//! [`INTERVAL`], and the next line says how many were not logged. The counters in `/metrics`
//! count every event; the log only says that it is happening.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two lines of one event class.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One event class's log state.
#[derive(Debug, Default)]
pub struct RateLog {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    /// Records one event. `Some(n)` when a line may be logged now, `n` being the events not
    /// logged since the last line; `None` when this one is only counted.
    pub fn ready(&self) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.last.is_some_and(|t| t.elapsed() < INTERVAL) {
            s.suppressed += 1;
            return None;
        }
        s.last = Some(Instant::now());
        Some(std::mem::take(&mut s.suppressed))
    }

    /// `" (N more not logged)"`, or nothing for 0.
    pub fn suffix(suppressed: u64) -> String {
        if suppressed == 0 {
            String::new()
        } else {
            format!(" ({suppressed} more since the last message)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let r = RateLog::default();
        assert_eq!(r.ready(), Some(0));
        assert_eq!(r.ready(), None);
        assert_eq!(r.ready(), None);
        r.state.lock().unwrap().last = Instant::now().checked_sub(INTERVAL);
        assert_eq!(r.ready(), Some(2));
        assert_eq!(RateLog::suffix(2), " (2 more since the last message)");
        assert_eq!(RateLog::suffix(0), "");
    }
}
