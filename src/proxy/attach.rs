//! Local attach: a `.hxz` snapshot served to `/dev/nbdX` by hexzd's own NBD transmission code
//! over the kernel's socketpair, with no handshake (the kernel is configured directly from the
//! snapshot's size), read-only. Used by `hexzd attach`, by config.json configurations that name
//! a `snapshot`, and, through [`Attachment`], by any caller that attaches and detaches
//! programmatically (the daemon's `[[attach]]` entries).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::Reporter;
use super::hook::StateHook;
use super::relay::RelayEnd;
use super::session::{self, Backend, End, Event, Export, Notice, Spec, Wording};
use crate::format::Stream;
use crate::kernel::{Device, KernelError, NbdDevice, UeventSocket};
use crate::nbd::handshake::{Session, transmission_flags};
use crate::nbd::transmission::{self, Shared};
use crate::serving::budget::{Budget, DEFAULT_BUFFER_MEMORY, DEFAULT_SEND_TIMEOUT};
use crate::serving::{Conn, Draining, NamedSnapshot, ProtoMetrics};

/// How long [`Attachment::start`] waits for the kernel's `change` uevent before reading the
/// capacity itself (uevents do not reach every network namespace).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one snapshot stream on hexzd's end of the socketpair.
#[derive(Debug)]
pub struct LocalBackend {
    snapshot: NamedSnapshot,
    stream: Stream,
    metrics: Arc<ProtoMetrics>,
    /// The READ buffers in flight for this device. The kernel is the only client, and its
    /// requests are at most `max_sectors_kb` each, so the daemon's default bound applies as is.
    budget: Budget,
    /// Never set: an attachment ends by the device's teardown, not by a drain.
    draining: Draining,
}

impl LocalBackend {
    /// Serves `stream` of `snapshot`, counting into `metrics`.
    pub fn new(snapshot: NamedSnapshot, stream: Stream, metrics: Arc<ProtoMetrics>) -> Self {
        LocalBackend {
            snapshot,
            stream,
            metrics,
            budget: Budget::new(DEFAULT_BUFFER_MEMORY),
            draining: Draining::new(),
        }
    }

    fn session(&self) -> Session {
        // What the handshake would have negotiated with the kernel: simple replies only.
        Session {
            export_name: String::new(),
            snapshot: self.snapshot.clone(),
            stream: self.stream,
            size: self.snapshot.snapshot.size(self.stream),
            flags: transmission_flags(false),
            structured: false,
            base_allocation: None,
        }
    }
}

impl Backend for LocalBackend {
    fn connect(&mut self) -> Result<Export, String> {
        let s = self.session();
        Ok(Export {
            size: s.size,
            flags: s.flags,
            read_only: true,
        })
    }

    fn serve(self: Box<Self>, sock: UnixStream, events: Sender<Event>) {
        let session = self.session();
        let end = match sock.try_clone() {
            Ok(reader) => {
                let peer = format!("kernel ({})", self.snapshot.name);
                let r = transmission::serve(
                    Conn::Unix(reader),
                    Conn::Unix(sock),
                    &session,
                    Shared {
                        metrics: &self.metrics,
                        budget: &self.budget,
                        send_timeout: DEFAULT_SEND_TIMEOUT,
                        draining: &self.draining,
                    },
                    &peer,
                );
                match r {
                    Ok(_) => RelayEnd::Eof,
                    Err(e) if e.is_disconnect() => RelayEnd::Eof,
                    Err(e) => RelayEnd::Error(format!("serving the device: {e}")),
                }
            }
            Err(e) => RelayEnd::Error(format!("can't create socket: {e}")),
        };
        let _ = events.send(Event::BackendEnded(end));
    }
}

/// Why an attachment could not be started.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The device cannot be used.
    #[error(transparent)]
    Device(#[from] KernelError),
    /// The uevent socket could not be opened.
    #[error("can't create udev monitor: {0}")]
    Uevents(std::io::Error),
    /// A thread could not be started.
    #[error("cannot start: {0}")]
    Thread(std::io::Error),
    /// The session ended before the device had its capacity (the reason was reported).
    #[error("{} was not attached", .0.display())]
    Ended(PathBuf),
}

/// Settings of an [`Attachment`].
#[derive(Debug, Clone, Default)]
pub struct AttachOptions {
    /// Per-request kernel timeout in seconds (0: none; the server is in this process).
    pub timeout: u32,
    /// A state hook run with `start`/`stop` like nbd-proxy's.
    pub hook: Option<StateHook>,
}

/// Asks a running [`Attachment`] to end (from a signal handler thread, for instance).
#[derive(Debug, Clone)]
pub struct Stopper(Sender<Event>);

impl Stopper {
    /// Requests the end; the attachment's thread runs the stop hook and clears the device.
    pub fn stop(&self) {
        let _ = self.0.send(Event::Stop);
    }
}

/// A snapshot attached to a kernel device, served by threads of this process until
/// [`Attachment::stop`]. A detach from outside (`hexzd detach`) ends it early; the caller can
/// see that with [`Attachment::is_finished`] or wait for it with [`Attachment::join`].
///
/// For the daemon's `[[attach]]` entries: `start` at start-up (and for entries added by a
/// reload), `stop` on shutdown (and for entries removed by a reload); dropping an attachment
/// stops it too.
#[derive(Debug)]
pub struct Attachment {
    device: PathBuf,
    tx: Sender<Event>,
    thread: Option<JoinHandle<End>>,
    /// Never receives: disconnects once the session has ended (its sender lives on the
    /// session's thread), so a watcher can block on it.
    ended: Receiver<()>,
}

impl Attachment {
    /// Attaches `stream` of `snapshot` to `device` and returns once the device has its
    /// capacity (the start hook, if any, has been started). Messages go to `report`.
    pub fn start(
        device: &Path,
        snapshot: NamedSnapshot,
        stream: Stream,
        options: AttachOptions,
        metrics: Arc<ProtoMetrics>,
        report: Reporter,
    ) -> Result<Attachment, AttachError> {
        let dev = Arc::new(NbdDevice::open(device)?);
        let uevents = UeventSocket::open().map_err(AttachError::Uevents)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let backend = Box::new(LocalBackend::new(snapshot, stream, metrics));
        let spec = Spec {
            device: Arc::clone(&dev),
            timeout: options.timeout,
            hook: options.hook,
            wording: Wording::Attach,
        };
        let stx = tx.clone();
        let (ended_tx, ended) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("nbd-attach".into())
            .spawn(move || {
                // Dropped when the session has ended and the device is cleared.
                let _ended = ended_tx;
                let mut notice = |n| {
                    if n == Notice::Ready {
                        let _ = ready_tx.try_send(());
                    }
                };
                session::run(
                    &spec,
                    backend,
                    Some(uevents),
                    &stx,
                    &rx,
                    &report,
                    &mut notice,
                )
            })
            .map_err(AttachError::Thread)?;
        let mut a = Attachment {
            device: device.to_path_buf(),
            tx,
            thread: Some(thread),
            ended,
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => Ok(a),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
                if dev.capacity_sectors().is_ok_and(|s| s > 0) =>
            {
                log::warn!(
                    "{}: no uevent arrived; the capacity is set, carrying on",
                    device.display()
                );
                Ok(a)
            }
            Err(_) => {
                a.finish();
                Err(AttachError::Ended(device.to_path_buf()))
            }
        }
    }

    /// The device.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// True once the session has ended (detached from outside, or an error) and the device
    /// is cleared; [`Attachment::join`] then returns at once.
    pub fn is_finished(&self) -> bool {
        self.thread.is_none()
            || self.ended.try_recv() == Err(crossbeam_channel::TryRecvError::Disconnected)
    }

    /// A receiver that never receives and disconnects when the session ends (whatever ends
    /// it): a watcher thread blocks on `recv()` to learn of an end it did not ask for.
    pub fn ended(&self) -> Receiver<()> {
        self.ended.clone()
    }

    /// A handle that requests the end from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Waits until the session ends (a [`Stopper`], or a detach from outside).
    pub fn join(mut self) -> End {
        self.wait()
    }

    fn wait(&mut self) -> End {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(end)) => end,
            _ => End::Stopped,
        }
    }

    fn finish(&mut self) -> End {
        let _ = self.tx.send(Event::Stop);
        self.wait()
    }

    /// Detaches: runs the stop hook, shuts the socket down, clears the device, joins every
    /// thread. Returns how the session ended.
    pub fn stop(mut self) -> End {
        self.finish()
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish();
        }
    }
}
