//! The daemon's `[[attach]]` entries (design.md §4): snapshots of the catalog attached to
//! kernel NBD devices for as long as the daemon runs, through
//! [`crate::proxy::attach::Attachment`], the code of `hexzd attach`.
//!
//! Who drives what:
//! - start-up (`runtime`, after the listeners, before `READY=1`): [`Attachments::start_all`];
//!   the first failure is a start-up error, and the devices already attached are detached
//!   again.
//! - reload (`reload`, on the reload worker's thread, after the new catalog is swapped in):
//!   [`Attachments::apply`]; [`plan`] keeps the entries whose [`Key`] did not change,
//!   detaches removed and changed ones, attaches new ones. A failure to attach is logged at
//!   err and returned (for `STATUS=`); the other entries are not touched.
//! - an attachment that ends by itself (`hexzd detach`, the kernel dropped it): a watcher
//!   thread sends [`Event::AttachEnded`] and the run loop calls [`Attachments::reap`], which
//!   logs it and keeps a note for `STATUS=`. It is **not** restarted; the next reload
//!   attaches it again, as it does any wanted entry that is not running.
//! - stop (`runtime`, before the drain): [`Attachments::stop_all`].
//!
//! Locking: one mutex over the set, held for bookkeeping only, never while a device is
//! attached or detached (that waits for the kernel), so the run loop never waits on it for
//! long. An entry the reload worker attaches after `stop_all` closed the set is detached by
//! that worker at once; if the process exits first, the kernel clears the device when the
//! process's descriptors close.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::Sender;

use super::DaemonError;
use super::config::{AttachConfig, SnapshotConfig};
use super::runtime::Event;
use crate::format::Stream;
use crate::kernel::{Errno, KernelError};
use crate::proxy::Reporter;
use crate::proxy::attach::{AttachError, AttachOptions, Attachment};
use crate::proxy::session::End;
use crate::serving::{Catalog, ProtoMetrics};

/// What identifies a running entry across reloads: an entry whose key is unchanged keeps
/// running (and serving the snapshot it was attached with); any difference detaches it and
/// attaches the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The device node.
    pub device: PathBuf,
    /// The snapshot's name.
    pub snapshot: String,
    /// The snapshot's archive path.
    pub path: PathBuf,
    /// The stream.
    pub stream: Stream,
    /// The kernel's per-request timeout (set once, when the device is configured).
    pub timeout: u32,
}

impl Key {
    /// The key of `entry`, whose snapshot is one of `snapshots` (validation checked it).
    pub fn of(entry: &AttachConfig, snapshots: &[SnapshotConfig]) -> Key {
        let path = snapshots
            .iter()
            .find(|s| s.name == entry.snapshot)
            .map(|s| s.path.clone())
            .unwrap_or_default();
        Key {
            device: entry.device.clone(),
            snapshot: entry.snapshot.clone(),
            path,
            stream: entry.stream,
            timeout: entry.timeout,
        }
    }

    /// `/dev/nbd0 (snapshot a)`, with the stream when it is not the main one.
    fn describe(&self) -> String {
        match self.stream {
            Stream::Main => format!("{} (snapshot {})", self.device.display(), self.snapshot),
            Stream::Aux => format!(
                "{} (snapshot {}, aux stream)",
                self.device.display(),
                self.snapshot
            ),
        }
    }
}

/// What a reload does to the running entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Unchanged: left running.
    pub keep: Vec<Key>,
    /// Removed or changed: detached first.
    pub stop: Vec<Key>,
    /// New or changed: attached after the stops (a changed entry's device is free by then).
    pub start: Vec<Key>,
}

/// Compares the running entries with the wanted ones.
pub fn plan(running: &[Key], wanted: &[Key]) -> Plan {
    let mut p = Plan::default();
    for r in running {
        if wanted.contains(r) {
            p.keep.push(r.clone());
        } else {
            p.stop.push(r.clone());
        }
    }
    p.start = wanted
        .iter()
        .filter(|w| !running.contains(w))
        .cloned()
        .collect();
    p
}

/// The entries as one line for `--check-config`: `a on /dev/nbd0, b (aux) on /dev/nbd1`.
pub fn describe_entries(entries: &[AttachConfig]) -> Option<String> {
    if entries.is_empty() {
        return None;
    }
    let each: Vec<String> = entries
        .iter()
        .map(|e| match e.stream {
            Stream::Main => format!("{} on {}", e.snapshot, e.device.display()),
            Stream::Aux => format!("{} (aux) on {}", e.snapshot, e.device.display()),
        })
        .collect();
    Some(format!("attaching {}", each.join(", ")))
}

struct Running {
    key: Key,
    attachment: Attachment,
}

#[derive(Default)]
struct State {
    running: Vec<Running>,
    /// Entries that ended by themselves since the last reload, for `STATUS=`.
    ended: Vec<String>,
    /// Set by `stop_all`: nothing is attached any more.
    closed: bool,
}

/// The running `[[attach]]` entries. Shared by the run loop (start-up, reaping, stop) and
/// the reload worker.
pub struct Attachments {
    state: Mutex<State>,
    /// The counters every attachment's transmission adds to (kernel requests; not part of
    /// the HTTP and NBD front ends' figures).
    metrics: Arc<ProtoMetrics>,
    /// Where watcher threads report an end.
    events: Sender<Event>,
    /// Running under a service manager: permission errors point at the unit's drop-in.
    under_systemd: bool,
}

impl std::fmt::Debug for Attachments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachments")
            .field("running", &self.lock().running.len())
            .finish_non_exhaustive()
    }
}

impl Attachments {
    /// An empty set; ends are reported on `events`.
    pub fn new(events: Sender<Event>, under_systemd: bool) -> Attachments {
        Attachments {
            state: Mutex::new(State::default()),
            metrics: Arc::new(ProtoMetrics::default()),
            events,
            under_systemd,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches every entry, in order, and prints one readiness line for each once its
    /// device has its capacity. The first failure detaches what was attached and is the
    /// error.
    pub fn start_all(
        &self,
        entries: &[AttachConfig],
        snapshots: &[SnapshotConfig],
        catalog: &Catalog,
    ) -> Result<(), DaemonError> {
        for entry in entries {
            let key = Key::of(entry, snapshots);
            match self.start_one(&key, catalog) {
                Ok((a, line)) => {
                    crate::logging::to_stderr(&format!("hexzd: {line}\n"));
                    self.insert(key, a);
                }
                Err(reason) => {
                    self.stop_all();
                    return Err(DaemonError::Attach(failure(&key, &reason)));
                }
            }
        }
        Ok(())
    }

    /// Brings the running entries in line with `entries` (a reload): unchanged ones keep
    /// running, removed and changed ones are detached, new ones attached. Returns the
    /// failures, each logged at err.
    pub fn apply(
        &self,
        entries: &[AttachConfig],
        snapshots: &[SnapshotConfig],
        catalog: &Catalog,
    ) -> Vec<String> {
        self.reap();
        let wanted: Vec<Key> = entries.iter().map(|e| Key::of(e, snapshots)).collect();
        let (stopping, starting) = {
            let mut st = self.lock();
            if st.closed {
                return Vec::new();
            }
            // Every entry is decided afresh: re-attached, or gone from the config.
            st.ended.clear();
            let keys: Vec<Key> = st.running.iter().map(|r| r.key.clone()).collect();
            let p = plan(&keys, &wanted);
            let (stopping, kept): (Vec<Running>, Vec<Running>) = std::mem::take(&mut st.running)
                .into_iter()
                .partition(|r| p.stop.contains(&r.key));
            st.running = kept;
            (stopping, p.start)
        };
        for r in stopping {
            let why = if wanted.iter().any(|w| w.device == r.key.device) {
                "its [[attach]] entry changed"
            } else {
                "no longer in the config"
            };
            let what = r.key.describe();
            r.attachment.stop();
            log::info!("detached {what}: {why}");
        }
        let mut failures = Vec::new();
        for key in starting {
            match self.start_one(&key, catalog) {
                Ok((a, line)) => {
                    log::info!("{line}");
                    self.insert(key, a);
                }
                Err(reason) => {
                    let msg = failure(&key, &reason);
                    log::error!("reload: {msg}");
                    failures.push(msg);
                }
            }
        }
        failures
    }

    /// Takes the entries that ended by themselves out of the set, logs each, and keeps a
    /// note for `STATUS=`. True when there was one.
    pub fn reap(&self) -> bool {
        let ended: Vec<Running> = {
            let mut st = self.lock();
            let (ended, running): (Vec<Running>, Vec<Running>) = std::mem::take(&mut st.running)
                .into_iter()
                .partition(|r| r.attachment.is_finished());
            st.running = running;
            ended
        };
        let any = !ended.is_empty();
        for r in ended {
            let what = r.key.describe();
            // A detach from outside sends the server NBD_CMD_DISC before NBD_DO_IT returns,
            // so it ends as either.
            let why = match r.attachment.join() {
                End::Detached | End::Eof => {
                    "the kernel ended the session (a detach from outside such as hexzd detach, or a kernel error)"
                }
                End::RelayError => "serving the device failed",
                _ => "the session ended",
            };
            log::warn!(
                "{what} is detached: {why}; it is not re-attached until the next reload (SIGHUP)"
            );
            self.lock().ended.push(format!("{what} ended: {why}"));
        }
        any
    }

    /// Detaches every entry (shutdown); later attachments are refused.
    pub fn stop_all(&self) {
        let all = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.running)
        };
        for r in all {
            let what = r.key.describe();
            r.attachment.stop();
            log::info!("detached {what}");
        }
    }

    /// For `STATUS=`: the attached devices and the ones that ended by themselves; `None`
    /// when there are neither.
    pub fn describe(&self) -> Option<String> {
        let st = self.lock();
        let mut parts = Vec::new();
        if !st.running.is_empty() {
            let devices: Vec<String> = st.running.iter().map(|r| r.key.describe()).collect();
            parts.push(format!("attached: {}", devices.join(", ")));
        }
        if !st.ended.is_empty() {
            parts.push(format!("DETACHED: {}", st.ended.join(", ")));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Adds a started attachment, or detaches it if the set was closed meanwhile.
    fn insert(&self, key: Key, attachment: Attachment) {
        let mut st = self.lock();
        if st.closed {
            drop(st);
            attachment.stop();
            return;
        }
        self.watch(&key, &attachment);
        st.running.push(Running { key, attachment });
    }

    /// Attaches one entry; returns it with its readiness line, or the reason it failed.
    fn start_one(&self, key: &Key, catalog: &Catalog) -> Result<(Attachment, String), String> {
        let snapshot = catalog
            .get(&key.snapshot)
            .ok_or_else(|| format!("snapshot {:?} is not being served", key.snapshot))?
            .clone();
        let size = snapshot.snapshot.size(key.stream);
        let prefix = format!("attach {}", key.device.display());
        let sink = ReportSink::default();
        let report = Reporter::new(prefix.clone(), Box::new(sink.clone()));
        let options = AttachOptions {
            timeout: key.timeout,
            hook: None,
        };
        let metrics = Arc::clone(&self.metrics);
        match Attachment::start(&key.device, snapshot, key.stream, options, metrics, report) {
            Ok(a) => {
                sink.go_live();
                let line = format!(
                    "attached {}: {} stream, {size} bytes, read-only",
                    key.describe(),
                    key.stream
                );
                Ok((a, line))
            }
            Err(e) => {
                let said: Vec<String> = sink
                    .captured()
                    .iter()
                    .map(|l| {
                        l.strip_prefix(&format!("{prefix}: "))
                            .unwrap_or(l)
                            .to_string()
                    })
                    .collect();
                Err(reason(&e, &said, self.under_systemd))
            }
        }
    }

    /// Reports the end of `attachment` as [`Event::AttachEnded`], whoever ended it (an end
    /// hexzd asked for finds nothing left to reap).
    fn watch(&self, key: &Key, attachment: &Attachment) {
        let ended = attachment.ended();
        let events = self.events.clone();
        let r = std::thread::Builder::new()
            .name("attach-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = ended.recv();
                let _ = events.send(Event::AttachEnded);
            });
        if let Err(e) = r {
            log::warn!(
                "{}: cannot watch the attachment ({e}); if it ends, that shows at the next reload",
                key.describe()
            );
        }
    }
}

/// The one line of a failed attachment.
fn failure(key: &Key, reason: &str) -> String {
    format!(
        "cannot attach snapshot {:?} to {}: {reason}",
        key.snapshot,
        key.device.display()
    )
}

/// Why an attachment failed, in one line, with what to do about a missing device node or
/// missing rights.
fn reason(e: &AttachError, said: &[String], under_systemd: bool) -> String {
    let what = match e {
        AttachError::Ended(_) if !said.is_empty() => said.join("; "),
        AttachError::Ended(_) => "the session ended before the device had its capacity".into(),
        other => other.to_string(),
    };
    format!("{what}{}", hint(e, under_systemd))
}

/// The README section on the drop-in, named in hints.
const DROP_IN: &str =
    "install the [[attach]] drop-in for hexzd.service (README: \"[[attach]] under systemd\")";

fn hint(e: &AttachError, under_systemd: bool) -> String {
    let no_node = matches!(
        e,
        AttachError::Device(KernelError::Open {
            errno: Errno::ENOENT,
            ..
        })
    );
    let no_rights = match e {
        AttachError::Device(KernelError::Open { errno, .. }) => {
            matches!(errno, Errno::EACCES | Errno::EPERM)
        }
        AttachError::Device(KernelError::Ioctl { errno, .. }) => *errno == Errno::EPERM,
        AttachError::Uevents(io) => matches!(
            io.raw_os_error().map(Errno::from_raw),
            Some(Errno::EAFNOSUPPORT | Errno::EPERM | Errno::EACCES)
        ),
        _ => false,
    };
    match (no_node, no_rights, under_systemd) {
        (true, _, false) => "; is the nbd module loaded (modprobe nbd)?".into(),
        (true, _, true) => format!(
            "; is the nbd module loaded? Under systemd, PrivateDevices=yes also hides /dev/nbd*: {DROP_IN}"
        ),
        (false, true, true) => format!("; {DROP_IN}"),
        _ => String::new(),
    }
}

/// Where an attachment's [`Reporter`] writes: while it starts, its lines are kept (they are
/// the reason if it fails); once it runs, each line is logged at err (the session reports
/// only failures).
#[derive(Clone, Default)]
struct ReportSink(Arc<Mutex<SinkState>>);

#[derive(Default)]
struct SinkState {
    partial: Vec<u8>,
    lines: Vec<String>,
    live: bool,
}

impl ReportSink {
    fn state(&self) -> MutexGuard<'_, SinkState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn captured(&self) -> Vec<String> {
        self.state().lines.clone()
    }

    /// From now on lines are logged; any kept so far are logged now.
    fn go_live(&self) {
        let mut st = self.state();
        st.live = true;
        for l in st.lines.drain(..) {
            log::error!("{l}");
        }
    }
}

impl Write for ReportSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.state();
        st.partial.extend_from_slice(buf);
        while let Some(end) = st.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = st.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            if st.live {
                log::error!("{text}");
            } else {
                st.lines.push(text);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
