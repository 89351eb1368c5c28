//! The queue between a connection's reader and its handler threads: bounded, first in first
//! out, closed by the reader when the connection ends (handlers finish what is queued, then
//! stop).
//!
//! Why not a channel: a waiting receiver of `crossbeam-channel` spins and calls
//! `sched_yield` before it sleeps, and with up to 16 handlers per connection on a small
//! machine that spinning took the CPU the busy handlers needed. Measured under fio's 4 KiB
//! random reads at queue depth 32: 2.9 `sched_yield` and 4.8 futex calls per request. Here
//! an idle handler sleeps on a condition variable at once, and a job is signalled only when
//! a handler is idle.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What [`Queue::pop`] found.
#[derive(Debug)]
pub(super) enum Popped<T> {
    /// The oldest job.
    Job(T),
    /// Nothing arrived within the timeout.
    Timeout,
    /// The queue is closed and empty.
    Closed,
}

/// A bounded FIFO of jobs for a connection's handlers.
#[derive(Debug)]
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    /// Signalled when a job arrives or the queue closes (only while a handler is idle).
    ready: Condvar,
    /// Signalled when a full queue gets room (only while the reader waits for it).
    room: Condvar,
    cap: usize,
}

#[derive(Debug)]
struct State<T> {
    jobs: VecDeque<T>,
    /// Handlers waiting on `ready`.
    idle: usize,
    /// The reader waits on `room`.
    full: bool,
    closed: bool,
}

impl<T> Queue<T> {
    /// A queue that holds at most `cap` jobs (at least one).
    pub(super) fn new(cap: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(cap.max(1)),
                idle: 0,
                full: false,
                closed: false,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a job, waiting while the queue is full (the reader then reads no new request).
    pub(super) fn push(&self, job: T) {
        let mut st = self.lock();
        while st.jobs.len() >= self.cap {
            st.full = true;
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.jobs.push_back(job);
        let wake = st.idle > 0;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Takes the oldest job, waiting up to `timeout` for one.
    pub(super) fn pop(&self, timeout: Duration) -> Popped<T> {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                if st.full {
                    st.full = false;
                    drop(st);
                    self.room.notify_one();
                }
                return Popped::Job(job);
            }
            if st.closed {
                return Popped::Closed;
            }
            let left = deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Popped::Timeout;
            }
            st.idle += 1;
            st = self
                .ready
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.idle -= 1;
        }
    }

    /// Closes the queue: handlers take what is left, then get [`Popped::Closed`].
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn jobs_come_out_in_order_then_closed_after_the_last() {
        let q = Queue::new(4);
        for i in 0..3 {
            q.push(i);
        }
        q.close();
        let got: Vec<_> = (0..4).map(|_| q.pop(T)).collect();
        assert!(matches!(
            got.as_slice(),
            [
                Popped::Job(0),
                Popped::Job(1),
                Popped::Job(2),
                Popped::Closed
            ]
        ));
    }

    #[test]
    fn an_empty_queue_times_out() {
        let q: Queue<u8> = Queue::new(1);
        assert!(matches!(q.pop(Duration::from_millis(5)), Popped::Timeout));
    }

    #[test]
    fn many_handlers_take_every_job_once_and_a_full_queue_holds_the_reader() {
        let q = Queue::new(2);
        let taken = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    while let Popped::Job(j) = q.pop(T) {
                        taken.lock().unwrap().push(j);
                    }
                });
            }
            for j in 0..1000 {
                q.push(j);
            }
            q.close();
        });
        let mut taken = taken.into_inner().unwrap();
        taken.sort_unstable();
        assert_eq!(taken, (0..1000).collect::<Vec<_>>());
    }
}
