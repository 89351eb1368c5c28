//! The systemd watchdog (systemd.md §2): `WATCHDOG=1` every `WATCHDOG_USEC/2`, but only after
//! every accept loop has proved it is alive, so a wedged accept loop stops the pings and
//! systemd restarts hexzd.
//!
//! **The liveness check.** Each accept loop owns a [`Probe`]: a non-blocking pipe that the loop
//! polls beside its listener and the shutdown pipe. At each tick the run loop writes a byte
//! into every probe with a new sequence number; a loop that wakes on it drains the pipe,
//! confirms its listener is still a listening socket (`SO_ACCEPTCONN`, one `getsockopt`) and
//! answers with [`Event::Alive`] on the run loop's event channel. When every loop has
//! answered the current sequence number within [`answer_bound`], the run loop sends
//! `WATCHDOG=1`. This proves what a wedge would break (the loop thread is back in `poll`, its
//! listener is intact, the run loop turns events around) at the cost of two syscalls per loop
//! per tick, without a connection: no access log line, no connection slot, no false alarm
//! when the listen backlog is full under load (a self-connect would have all three).
//!
//! Test hook (debug builds only): `HEXZD_TEST_WEDGE_ACCEPT=http:N` (or `nbd:N`) makes that
//! protocol's accept loop stop, as if wedged, after answering N checks.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::listener::Protocol;
use super::notify::{self, Notifier};
use super::runtime::Event;
use super::sd_env::parse_pid;

/// Longest time an accept loop gets to answer a check. A healthy loop answers in
/// microseconds; this only has to stay below the ping interval.
const MAX_ANSWER_TIME: Duration = Duration::from_secs(5);

/// The ping interval systemd asks for: `WATCHDOG_USEC/2`, when `WATCHDOG_USEC` is set, valid
/// and non-zero, and `WATCHDOG_PID` is unset or names this process.
pub fn interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if pid.is_some() && parse_pid(pid) != Some(own_pid) {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// How long the loops have to answer one check: half the interval, at most
/// `MAX_ANSWER_TIME`.
pub fn answer_bound(interval: Duration) -> Duration {
    (interval / 2).min(MAX_ANSWER_TIME)
}

/// One accept loop's end of the liveness check.
#[derive(Debug)]
pub struct Probe {
    index: usize,
    protocol: Protocol,
    asked: AtomicU64,
    answered: AtomicU64,
    read: OwnedFd,
    write: OwnedFd,
    events: Sender<Event>,
    /// Test hook: stop answering after this many answers.
    wedge_after: Option<u64>,
}

impl Probe {
    /// The probe of accept loop number `index`, answering on `events`.
    pub fn new(index: usize, protocol: Protocol, events: Sender<Event>) -> io::Result<Probe> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        Ok(Probe {
            index,
            protocol,
            asked: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            read,
            write,
            events,
            wedge_after: wedge_after(protocol),
        })
    }

    /// The fd the accept loop polls.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Asks the loop to answer check `seq` (run loop side).
    fn ask(&self, seq: u64) {
        self.asked.store(seq, Ordering::SeqCst);
        // A full pipe (EAGAIN) already holds a wake-up, which is all a byte means.
        let _ = nix::unistd::write(&self.write, &[1u8]);
    }

    /// Answers the pending check (accept loop side), after confirming `listener` still
    /// listens. Returns false when the test hook says this loop must now wedge.
    pub fn answer(&self, listener: BorrowedFd<'_>) -> bool {
        let mut scratch = [0u8; 64];
        while matches!(nix::unistd::read(&self.read, &mut scratch), Ok(n) if n > 0) {}
        let listening =
            nix::sys::socket::getsockopt(&listener, nix::sys::socket::sockopt::AcceptConn)
                .unwrap_or(false);
        if !listening {
            log::error!(
                "{} accept loop: its socket is no longer listening",
                self.protocol.name()
            );
            return true;
        }
        let n = self.answered.fetch_add(1, Ordering::SeqCst) + 1;
        if self.wedge_after.is_some_and(|w| n > w) {
            log::warn!(
                "{} accept loop: wedged on purpose (HEXZD_TEST_WEDGE_ACCEPT)",
                self.protocol.name()
            );
            return false;
        }
        let _ = self.events.send(Event::Alive {
            probe: self.index,
            seq: self.asked.load(Ordering::SeqCst),
        });
        true
    }
}

#[cfg(debug_assertions)]
fn wedge_after(protocol: Protocol) -> Option<u64> {
    let v = std::env::var("HEXZD_TEST_WEDGE_ACCEPT").ok()?;
    let (name, n) = v.split_once(':')?;
    (name.eq_ignore_ascii_case(protocol.name())).then(|| n.parse().ok())?
}

#[cfg(not(debug_assertions))]
fn wedge_after(_: Protocol) -> Option<u64> {
    None
}

/// The run loop's side: when to check, which loops answered, and when to ping.
#[derive(Debug)]
pub struct Watchdog {
    interval: Duration,
    probes: Vec<std::sync::Arc<Probe>>,
    next_tick: Instant,
    seq: u64,
    /// The check in progress: its deadline and who answered.
    pending: Option<(Instant, Vec<bool>)>,
    /// True while checks fail (logged once per failing spell).
    failing: bool,
}

impl Watchdog {
    /// A watchdog pinging every `interval` over `probes`; the first check is due at once.
    pub fn new(interval: Duration, probes: Vec<std::sync::Arc<Probe>>) -> Watchdog {
        Watchdog {
            interval,
            probes,
            next_tick: Instant::now(),
            seq: 0,
            pending: None,
            failing: false,
        }
    }

    /// When the run loop must call [`on_timer`](Self::on_timer) next.
    pub fn next_wakeup(&self) -> Instant {
        match &self.pending {
            Some((deadline, _)) => self.next_tick.min(*deadline),
            None => self.next_tick,
        }
    }

    /// Closes an overdue check and starts the next one when it is due.
    pub fn on_timer(&mut self, now: Instant, notifier: &Notifier) {
        if let Some((deadline, answered)) = &self.pending {
            if now >= *deadline {
                let silent: Vec<&str> = self
                    .probes
                    .iter()
                    .zip(answered)
                    .filter(|(_, a)| !**a)
                    .map(|(p, _)| p.protocol.name())
                    .collect();
                if self.failing {
                    log::debug!(
                        "watchdog: check {} failed too: no answer from {}",
                        self.seq,
                        silent.join(", ")
                    );
                } else {
                    log::error!(
                        "watchdog: accept loop(s) {} did not answer within {:?}; \
                         withholding WATCHDOG=1 so that systemd restarts hexzd",
                        silent.join(", "),
                        answer_bound(self.interval)
                    );
                }
                self.failing = true;
                self.pending = None;
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + self.interval;
            self.seq += 1;
            if self.probes.is_empty() {
                notifier.send(&notify::watchdog());
                return;
            }
            self.pending = Some((
                now + answer_bound(self.interval),
                vec![false; self.probes.len()],
            ));
            for p in &self.probes {
                p.ask(self.seq);
            }
        }
    }

    /// Records an answer; pings when it completes the current check.
    pub fn on_alive(&mut self, probe: usize, seq: u64, notifier: &Notifier) {
        if seq != self.seq {
            return;
        }
        let Some((_, answered)) = &mut self.pending else {
            return;
        };
        if let Some(a) = answered.get_mut(probe) {
            *a = true;
        }
        if answered.iter().all(|a| *a) {
            self.pending = None;
            if self.failing {
                log::warn!("watchdog: every accept loop answers again");
                self.failing = false;
            }
            notifier.send(&notify::watchdog());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_half_of_watchdog_usec_and_only_for_this_pid() {
        assert_eq!(
            interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            interval(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(100))
        );
        assert_eq!(interval(Some("200000"), Some("8"), 7), None);
        assert_eq!(interval(Some("0"), None, 7), None);
        assert_eq!(interval(Some("x"), None, 7), None);
        assert_eq!(interval(None, Some("7"), 7), None);
        assert_eq!(answer_bound(Duration::from_secs(15)), MAX_ANSWER_TIME);
        assert_eq!(
            answer_bound(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }
}
