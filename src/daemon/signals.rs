//! The signal thread: turns SIGINT, SIGTERM and SIGHUP into [`Event`]s for the run loop and
//! does nothing else. Sending on the unbounded event channel never blocks, so however long a
//! reload takes (it runs on the reload worker), the next SIGTERM reaches the run loop at once.

use std::io;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use super::runtime::Event;

/// The running signal thread; dropping it stops and joins the thread (the signals stay
/// handled, so a late SIGTERM during the drain does not kill the process mid-exit).
#[derive(Debug)]
pub struct SignalThread {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// The event a signal stands for.
fn event(signal: i32) -> Event {
    match signal {
        SIGHUP => Event::Reload,
        signal => Event::Stop { signal },
    }
}

/// Starts forwarding SIGINT and SIGTERM (stop) and SIGHUP (reload) to `events`.
pub fn spawn(events: Sender<Event>) -> io::Result<SignalThread> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let handle = signals.handle();
    let thread = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                // Only fails once the run loop is gone, when nobody is left to tell.
                let _ = events.send(event(signal));
            }
        })?;
    Ok(SignalThread {
        handle,
        thread: Some(thread),
    })
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hup_reloads_and_int_and_term_stop() {
        assert!(matches!(event(SIGHUP), Event::Reload));
        assert!(matches!(event(SIGTERM), Event::Stop { signal: SIGTERM }));
        assert!(matches!(event(SIGINT), Event::Stop { signal: SIGINT }));
    }
}
