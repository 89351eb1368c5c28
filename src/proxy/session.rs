//! One session on an NBD device (nbd-proxy.md §7–§10, nbd.md §6.6): a backend learns the export
//! (relay: the client handshake on stdin/stdout; attach: the snapshot's size), the device is
//! configured in nbd-client's order with one end of a socketpair, `NBD_DO_IT` runs on a thread
//! with every signal blocked, and the backend serves the other end. The controller, [`run`],
//! waits for events and ends the session as the contract says:
//!
//! | event | message | exit |
//! |---|---|---|
//! | stop request (SIGTERM/SIGINT/SIGHUP, `Attachment::stop`) | — | 0 |
//! | handshake or ioctl failure | the error, then `nbd client stopped (rc: 1); exiting` | 0 |
//! | `NBD_DO_IT` returned (server EOF or garbage, timeout, `hexzd detach`) | `nbd client stopped (rc: 0); exiting` | 0 |
//! | start hook failed | `state hook failed (rc\|sig: N); exiting` | 0 |
//! | EOF or hang-up on either side | — | 0 |
//! | relay I/O error | `read failure: …` / `write failure: …` / `splice: …` | 1 |
//! | the start hook could not be forked | `can't fork to execute hook …` | 1 |
//! | a socketpair or thread could not be created (before anything else; no hooks) | what failed | 1 |
//!
//! The start hook runs once, on the first `change` uevent of the device once its capacity is
//! non-zero (§10). At the end the stop hook runs while the backend is still serving (so a hook
//! that unmounts does not hang on an unserved device, §11), then hexzd's end of the socketpair
//! is shut down (the server sees EOF, no DISC), the device is cleared and `NBD_DO_IT` joined.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use nix::errno::Errno;
use nix::sys::signal::SigSet;

use super::Reporter;
use super::hook::{HookStatus, StateHook};
use super::relay::RelayEnd;
use crate::kernel::{Device, Setup, UeventSocket, configure, teardown};

/// What the device is told about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Export {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Mark the block device read-only.
    pub read_only: bool,
}

/// Something that serves hexzd's end of the socketpair.
pub trait Backend: Send + 'static {
    /// Learns the export; may block (the relay's client handshake). The error is a message
    /// saying what failed.
    fn connect(&mut self) -> Result<Export, String>;
    /// Serves `sock` until it closes, sending [`Event::BackendEnded`] when a direction ends.
    fn serve(self: Box<Self>, sock: UnixStream, events: Sender<Event>);
}

/// What the controller waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// End the session (a signal, or a programmatic stop).
    Stop,
    /// The backend knows the export.
    Connected(Export),
    /// The backend could not learn it.
    ConnectFailed(String),
    /// A `change` uevent for the device (or lost uevents): re-check the capacity.
    Change,
    /// The start hook ended.
    HookExited(HookStatus),
    /// The backend stopped serving (one direction of the relay, or the local server).
    BackendEnded(RelayEnd),
    /// `NBD_DO_IT` returned.
    DoItReturned(Result<(), Errno>),
}

/// Moments a caller may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The device has its capacity (the start hook is being started): `READY=1`.
    Ready,
    /// The session is ending (before the stop hook): `STOPPING=1`.
    Stopping,
}

/// Which program's wording to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wording {
    /// nbd-proxy's: a kernel-side end is "nbd client stopped (rc: N); exiting".
    NbdProxy,
    /// `hexzd attach`: a detach is a normal end and says nothing.
    Attach,
}

/// The fixed parts of a session.
#[derive(Debug)]
pub struct Spec<D> {
    /// The device, opened and checked.
    pub device: Arc<D>,
    /// Per-request timeout in seconds (0: none).
    pub timeout: u32,
    /// The state hook, if any.
    pub hook: Option<StateHook>,
    /// Messages.
    pub wording: Wording,
}

/// Why the session ended, and the process's exit status for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A stop request.
    Stopped,
    /// The export could not be attached (handshake or ioctl failure).
    SetupFailed,
    /// `NBD_DO_IT` returned on its own.
    Detached,
    /// The start hook failed.
    HookFailed,
    /// EOF on the stream.
    Eof,
    /// A relay I/O error.
    RelayError,
    /// The start hook could not be forked.
    ForkFailed,
    /// The session could not be set up (the original's set-up phase: no hooks).
    Aborted,
}

impl End {
    /// The exit status (nbd-proxy.md §8).
    pub fn status(self) -> u8 {
        match self {
            End::RelayError | End::ForkFailed | End::Aborted => 1,
            _ => 0,
        }
    }
}

/// Stops the uevent thread when dropped.
struct Monitor {
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards the device's `change` uevents (and lost-event notices) as [`Event::Change`] until
/// the returned handle is dropped.
fn monitor(
    sock: UeventSocket,
    devnum: crate::kernel::DevNum,
    tx: Sender<Event>,
) -> Option<Monitor> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let (stop_tx, stop_rx) = UnixStream::pair().ok()?;
    let thread = std::thread::Builder::new()
        .name("uevents".into())
        .spawn(move || {
            loop {
                let mut fds = [
                    PollFd::new(sock.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop_rx.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(Errno::EINTR) => continue,
                    Err(_) => return,
                    Ok(_) => {}
                }
                if fds[1].any().unwrap_or(true) {
                    return;
                }
                let event = match sock.recv() {
                    Ok(Some(e)) if e.is_change_of(devnum) => Event::Change,
                    Ok(_) => continue,
                    // Events were dropped: whatever happened, the capacity tells.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Event::Change,
                    Err(_) => return,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .ok()?;
    Some(Monitor {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Runs a session to its end; returns why it ended. `events` must be the receiving side of
/// `tx`; signal handlers and [`super::attach::Attachment`] send [`Event::Stop`] on `tx`.
/// `uevents` is the socket opened before anything could emit the event (None in tests, which
/// send [`Event::Change`] themselves).
pub fn run<D: Device + 'static>(
    spec: &Spec<D>,
    mut backend: Box<dyn Backend>,
    uevents: Option<UeventSocket>,
    tx: &Sender<Event>,
    events: &Receiver<Event>,
    report: &Reporter,
    notice: &mut dyn FnMut(Notice),
) -> End {
    let dev = &spec.device;
    let mut monitor = match uevents {
        Some(u) => match monitor(u, dev.devnum(), tx.clone()) {
            Some(m) => Some(m),
            None => {
                report.say("can't start udev monitor");
                return End::Aborted;
            }
        },
        None => None,
    };
    let (kernel_end, our_end) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            report.say(&format!("can't create socket: {}", desc(&e)));
            return End::Aborted;
        }
    };
    let control = our_end.try_clone().ok();
    let btx = tx.clone();
    let backend_thread = std::thread::Builder::new()
        .name("nbd-backend".into())
        .spawn(move || match backend.connect() {
            Ok(export) => {
                if btx.send(Event::Connected(export)).is_ok() {
                    backend.serve(our_end, btx);
                }
            }
            Err(msg) => {
                let _ = btx.send(Event::ConnectFailed(msg));
            }
        });
    if let Err(e) = backend_thread {
        report.say(&format!("can't create client process: {e}"));
        return End::Aborted;
    }

    let mut do_it: Option<JoinHandle<()>> = None;
    let mut configured = false;
    let mut started = false;
    let end = loop {
        let Ok(event) = events.recv() else {
            break End::Stopped;
        };
        match event {
            Event::Stop => break End::Stopped,
            Event::Connected(export) => {
                let setup = Setup {
                    size: export.size,
                    flags: export.flags,
                    read_only: export.read_only,
                    timeout: spec.timeout,
                };
                // On failure `configure` has cleared what it set.
                if let Err(e) = configure(dev.as_ref(), &setup, kernel_end.as_fd()) {
                    report.say(&e.to_string());
                    break client_failed(report, spec);
                }
                configured = true;
                match spawn_do_it(Arc::clone(dev), tx.clone()) {
                    Ok(t) => do_it = Some(t),
                    Err(e) => {
                        teardown(dev.as_ref());
                        report.say(&format!("can't start the NBD_DO_IT thread: {e}"));
                        break client_failed(report, spec);
                    }
                }
            }
            Event::ConnectFailed(msg) => {
                report.say(&format!("nbd device {}: {msg}", dev.path().display()));
                break client_failed(report, spec);
            }
            Event::Change if !started && do_it.is_some() => {
                if !dev.capacity_sectors().is_ok_and(|s| s > 0) {
                    continue;
                }
                started = true;
                // The original closes its monitor here: one start per session.
                monitor = None;
                notice(Notice::Ready);
                if let Some(hook) = &spec.hook {
                    let htx = tx.clone();
                    let on_exit = move |s| {
                        let _ = htx.send(Event::HookExited(s));
                    };
                    if let Err(e) = hook.start(on_exit) {
                        report.say(&e.to_string());
                        break End::ForkFailed;
                    }
                }
            }
            Event::Change => {}
            Event::HookExited(s) if s.success() => {}
            Event::HookExited(s) => {
                report.say(&format!("state hook failed {s}; exiting"));
                break End::HookFailed;
            }
            Event::BackendEnded(RelayEnd::Eof) => break End::Eof,
            Event::BackendEnded(RelayEnd::Error(msg)) => {
                report.say(&msg);
                break End::RelayError;
            }
            Event::DoItReturned(r) => {
                match spec.wording {
                    Wording::NbdProxy => report.say("nbd client stopped (rc: 0); exiting"),
                    Wording::Attach => log::info!(
                        "{}: the kernel ended the session ({})",
                        dev.path().display(),
                        r.map_or_else(|e| e.desc().to_string(), |()| "detached".into())
                    ),
                }
                do_it.take().map(JoinHandle::join);
                break End::Detached;
            }
        }
    };
    drop(monitor);
    notice(Notice::Stopping);
    if let Some(hook) = &spec.hook {
        match hook.stop() {
            Ok(Some(s)) if !s.success() => {
                report.say(&format!("hook {} failed", hook.path().display()));
            }
            Ok(_) => {}
            Err(e) => report.say(&e.to_string()),
        }
    }
    // Teardown without DISC: the server sees EOF, queued I/O fails, the capacity drops to 0.
    if let Some(c) = control {
        let _ = c.shutdown(std::net::Shutdown::Both);
    }
    if let Some(t) = do_it {
        let _ = dev.clear_sock();
        let _ = t.join();
    }
    // A device this session never touched may belong to someone else: leave it alone.
    if configured {
        teardown(dev.as_ref());
    }
    end
}

/// The original's report of nbd-client failing (exit status 1) after the specific error.
fn client_failed<D>(report: &Reporter, spec: &Spec<D>) -> End {
    if spec.wording == Wording::NbdProxy {
        report.say("nbd client stopped (rc: 1); exiting");
    }
    End::SetupFailed
}

fn desc(e: &std::io::Error) -> &'static str {
    Errno::from_raw(e.raw_os_error().unwrap_or(0)).desc()
}

/// Runs `NBD_DO_IT` on a thread of its own with every catchable signal blocked: a signal
/// delivered to the thread inside the ioctl would tear the device down (nbd.md §6.6 step 6).
fn spawn_do_it<D: Device + 'static>(
    dev: Arc<D>,
    tx: Sender<Event>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nbd-do-it".into())
        .spawn(move || {
            let _ = SigSet::all().thread_block();
            let r = dev.do_it();
            let _ = tx.send(Event::DoItReturned(r));
        })
}

#[cfg(test)]
mod tests;
