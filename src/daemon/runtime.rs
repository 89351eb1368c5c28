//! The lifecycle of `hexzd serve`, in one place: [`Runtime::start`] opens the snapshots and
//! builds the front ends from the validated config; [`Runtime::run`] starts the signal thread,
//! the reload worker and one accept loop per listener, prints the readiness lines, then runs
//! the **run loop**: a single thread waiting on [`Event`]s (stop, reload requested, reload
//! finished, an accept loop answering the watchdog) and on its timers (watchdog checks,
//! status refresh) until a stop, then stops accepting and drains (`drain`).
//!
//! Threads and what they may block on: `signals` only on the next signal; the run loop (the
//! main thread) only on the event channel; `reload` on files (never on a FIFO: store::file);
//! `*-accept` on poll of its listener, the shutdown pipe and its watchdog probe. So a stop is
//! handled at once whatever a reload is doing.
//!
//! What the service manager hears (`notify`, systemd.md §2), from the private methods below:
//! `on_ready` (`READY=1`), `on_reload_requested` (`RELOADING=1` + `MONOTONIC_USEC`),
//! `on_reloaded` (`READY=1`, the outcome in `STATUS=`), `on_stopping` (`STOPPING=1`);
//! `EXTEND_TIMEOUT_USEC` while a slow snapshot set opens; `WATCHDOG=1` from `watchdog`.
//! `[[attach]]` entries (`attach`) start in `run` after the listeners, before `READY=1` (a
//! failure stops the start-up), follow the config on reload (on the reload worker), and stop
//! before the drain; one that ends by itself is reaped here on [`Event::AttachEnded`] and
//! shown in `STATUS=`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::DaemonError;
use super::accept::{self, AcceptLoop, Service};
use super::attach::Attachments;
use super::clients::ClientCounts;
use super::config::{Config, Overrides, SnapshotConfig};
use super::drain::{OpenConns, drain};
use super::listener::{Listener, Protocol};
use super::notify::{self, Notifier};
use super::reload::{ReloadOutcome, ReloadWorker, Reloader};
use super::shutdown::Shutdown;
use super::signals;
use super::snapshots::{describe, open_catalog_with};
use super::watchdog::{Probe, Watchdog};
use crate::http::HttpService;
use crate::nbd::NbdService;
use crate::serving::{CatalogHandle, Draining, Metrics, get};
use crate::store::Engine;
use crate::tls::TlsContext;

/// How often `STATUS=` is refreshed (when it changed) while nothing else happens.
const STATUS_REFRESH: Duration = Duration::from_secs(5);
/// What each `EXTEND_TIMEOUT_USEC` asks for while a slow snapshot set opens.
const EXTEND_STEP: Duration = Duration::from_secs(30);
/// A start-up that has run this long is slow: each further snapshot extends the timeout.
const SLOW_START: Duration = Duration::from_secs(1);
/// An archive this large is slow to open (its index is read and checked).
const LARGE_ARCHIVE: u64 = 1 << 30;

/// What the run loop reacts to. Sent by the signal thread, the reload worker and the accept
/// loops; never blocks the sender (unbounded channel).
#[derive(Debug)]
pub enum Event {
    /// SIGINT or SIGTERM: stop accepting, drain, exit.
    Stop {
        /// The signal number.
        signal: i32,
    },
    /// SIGHUP: re-read the config file.
    Reload,
    /// The reload worker finished one reload.
    Reloaded(ReloadOutcome),
    /// Accept loop `probe` answered watchdog check `seq`.
    Alive {
        /// The loop's index (its probe's).
        probe: usize,
        /// The check it answered.
        seq: u64,
    },
    /// An `[[attach]]` attachment ended (on request or by itself): reap the ones that ended
    /// by themselves.
    AttachEnded,
}

/// The running daemon: the validated config, the store engine, the catalog handle the reload
/// worker swaps, the counters, both front ends, the shutdown state, and the link to the
/// service manager.
#[derive(Debug)]
pub struct Runtime {
    config: Config,
    engine: Arc<Engine>,
    catalog: Arc<CatalogHandle>,
    metrics: Arc<Metrics>,
    http: Arc<HttpService>,
    nbd: Arc<NbdService>,
    /// The certificates in effect, when `[tls]` is set.
    tls: Option<Arc<TlsContext>>,
    shutdown: Arc<Shutdown>,
    draining: Arc<Draining>,
    open: Arc<OpenConns>,
    notifier: Arc<Notifier>,
    events: (Sender<Event>, Receiver<Event>),
    /// The running `[[attach]]` entries (shared with the reload worker).
    attachments: Arc<Attachments>,
    /// The last reload's outcome, for `STATUS=`.
    last_reload: String,
    /// Reloads requested and not yet finished (RELOADING=1 … READY=1 brackets them all).
    reloads_pending: u32,
}

/// The accept loop threads and their watchdog probes.
type Accepting = (Vec<JoinHandle<()>>, Vec<Arc<Probe>>);

/// True when opening `s` is likely slow enough to need more start-up time: start-up has
/// already been running for [`SLOW_START`], or the archive is encrypted (key derivation) or
/// large.
fn slow_open(elapsed: Duration, s: &SnapshotConfig) -> bool {
    elapsed >= SLOW_START
        || s.password.is_some()
        || std::fs::metadata(&s.path).is_ok_and(|m| m.len() >= LARGE_ARCHIVE)
}

impl Runtime {
    /// Creates the store engine, opens every snapshot, and builds the front ends with the
    /// settings of `config`, exactly as validated. While a slow set opens, `notifier` asks
    /// systemd for more start-up time.
    pub fn start(config: Config, notifier: Arc<Notifier>) -> Result<Runtime, DaemonError> {
        let engine = Engine::with_remote(config.cache.engine(), config.remote.clone())
            .map_err(DaemonError::Start)?;
        let started = Instant::now();
        let total = config.snapshots.len();
        let catalog = open_catalog_with(&config.snapshots, &engine, |i, s| {
            if notifier.enabled() && slow_open(started.elapsed(), s) {
                notifier.send(&notify::extend_timeout(
                    EXTEND_STEP,
                    &format!("opening snapshot {} of {total}: {}", i + 1, s.name),
                ));
            }
        })?;
        let catalog = Arc::new(CatalogHandle::new(catalog));
        let tls = match &config.tls {
            Some(t) => {
                let ctx = TlsContext::load(t).map_err(DaemonError::Tls)?;
                log::info!("{}", ctx.summary());
                Some(Arc::new(ctx))
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::with_budget(
            Arc::clone(&engine.metrics),
            config.limits.buffer_memory,
        ));
        let draining = Arc::new(Draining::new());
        let http = Arc::new(
            HttpService::new(
                config.http.settings.clone(),
                Arc::clone(&catalog),
                Arc::clone(&metrics),
            )
            .with_draining(Arc::clone(&draining)),
        );
        let mut nbd = NbdService::new(
            config.nbd.settings.clone(),
            Arc::clone(&catalog),
            Arc::clone(&metrics),
        )
        .with_draining(Arc::clone(&draining));
        if let Some(t) = &tls {
            nbd = nbd.with_tls(Arc::clone(t));
        }
        let nbd = Arc::new(nbd);
        let events = crossbeam_channel::unbounded();
        let attachments = Arc::new(Attachments::new(events.0.clone(), notifier.enabled()));
        Ok(Runtime {
            config,
            engine,
            catalog,
            metrics,
            http,
            nbd,
            tls,
            shutdown: Arc::new(Shutdown::new().map_err(DaemonError::Start)?),
            draining,
            open: Arc::new(OpenConns::new()),
            notifier,
            events,
            attachments,
            last_reload: "none".into(),
            reloads_pending: 0,
        })
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The running front end of `protocol`. HTTPS without certificates cannot be asked for:
    /// validation refuses HTTPS listeners without `[tls]`, and passed `https` sockets are
    /// refused here.
    pub fn service(&self, protocol: Protocol) -> Result<Service, DaemonError> {
        Ok(match protocol {
            Protocol::Http => Service::Http(Arc::clone(&self.http)),
            Protocol::Nbd => Service::Nbd(Arc::clone(&self.nbd)),
            Protocol::Https => match &self.tls {
                Some(t) => Service::Https(Arc::clone(&self.http), Arc::clone(t)),
                None => {
                    return Err(DaemonError::Listen(super::ListenError::Activation(
                        "an https socket was passed, but no certificates are configured \
                         ([tls] certificates or --tls-certificates)"
                            .into(),
                    )));
                }
            },
        })
    }

    /// One NBD session on stdin/stdout (`serve --stdio`), no listeners, no signals, no
    /// `[[attach]]` (a session is not the daemon that owns the devices).
    pub fn serve_stdio(&self) -> Result<(), DaemonError> {
        if !self.config.attach.is_empty() {
            log::warn!("--stdio: the [[attach]] entries of the config are not attached");
        }
        self.nbd.serve_stdio().map_err(DaemonError::Stdio)
    }

    /// Serves `listeners` until SIGINT or SIGTERM, reloading on SIGHUP and pinging the
    /// watchdog every `watchdog` (when systemd asked for it); then stops accepting and drains
    /// open connections within `[daemon] shutdown_timeout`. `file` and `overrides` are what a
    /// reload re-reads and re-applies.
    pub fn run(
        mut self,
        listeners: Vec<(Protocol, Listener)>,
        file: Option<std::path::PathBuf>,
        overrides: Overrides,
        watchdog: Option<Duration>,
    ) -> Result<(), DaemonError> {
        let signals = signals::spawn(self.events.0.clone()).map_err(DaemonError::Start)?;
        let reload = ReloadWorker::spawn(
            Reloader {
                file,
                overrides,
                running: self.config.clone(),
                engine: Arc::clone(&self.engine),
                catalog: Arc::clone(&self.catalog),
                tls: self.tls.clone(),
                attachments: Arc::clone(&self.attachments),
            },
            self.events.0.clone(),
        )
        .map_err(DaemonError::Start)?;

        crate::logging::to_stderr(&format!("hexzd: {}\n", describe(&self.catalog.load())));
        let (accepting, probes) = self.start_accepting(listeners)?;
        // Once the listeners are up, before readiness: READY=1 means every device has its
        // capacity. A failure detaches what was attached and stops the start-up.
        let attached = self.attachments.start_all(
            &self.config.attach,
            &self.config.snapshots,
            &self.catalog.load(),
        );
        if let Err(e) = attached {
            self.shutdown.trigger();
            for t in accepting {
                let _ = t.join();
            }
            return Err(e);
        }
        self.on_ready();

        let mut watchdog = watchdog.map(|interval| Watchdog::new(interval, probes));
        let mut status_due = Instant::now() + STATUS_REFRESH;
        let mut status_sent = self.status();
        loop {
            let mut wake = watchdog.as_ref().map(Watchdog::next_wakeup);
            if self.notifier.enabled() {
                wake = Some(wake.map_or(status_due, |w| w.min(status_due)));
            }
            let event = match wake {
                Some(at) => match self.events.1.recv_deadline(at) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => None,
                    // The runtime holds a sender itself, so the channel never disconnects.
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.events.1.recv() {
                    Ok(e) => Some(e),
                    Err(_) => break,
                },
            };
            match event {
                None => {
                    let now = Instant::now();
                    if let Some(w) = &mut watchdog {
                        w.on_timer(now, &self.notifier);
                    }
                    if now >= status_due {
                        status_due = now + STATUS_REFRESH;
                        let status = self.status();
                        if status != status_sent {
                            self.notifier.send(&notify::status(&status));
                            status_sent = status;
                        }
                    }
                }
                Some(Event::Stop { signal }) => {
                    log::debug!("signal {signal}: stopping");
                    break;
                }
                Some(Event::Reload) => {
                    if reload.request() {
                        self.on_reload_requested();
                    } else {
                        log::debug!("SIGHUP: a reload is already pending");
                    }
                }
                Some(Event::Reloaded(outcome)) => self.on_reloaded(&outcome),
                Some(Event::Alive { probe, seq }) => {
                    if let Some(w) = &mut watchdog {
                        w.on_alive(probe, seq, &self.notifier);
                    }
                }
                Some(Event::AttachEnded) => {
                    if self.attachments.reap() {
                        status_sent = self.status();
                        self.notifier.send(&notify::status(&status_sent));
                    }
                }
            }
        }

        self.on_stopping();
        self.shutdown.trigger();
        log::info!("shutting down");
        for t in accepting {
            let _ = t.join();
        }
        // Devices first: a detach waits for the kernel's requests in flight, which the
        // attachments' own threads serve, not the connections the drain waits for.
        self.attachments.stop_all();
        drain(
            &self.metrics,
            &self.open,
            &self.draining,
            self.config.daemon.shutdown_timeout,
        );
        // The reload worker is not joined: a reload still reading files must not hold the
        // exit; dropping its handle ends it when idle.
        drop(reload);
        drop(signals);
        Ok(())
    }

    /// Starts one accept loop per listener and prints its readiness line; returns the loops
    /// and their watchdog probes.
    fn start_accepting(
        &self,
        listeners: Vec<(Protocol, Listener)>,
    ) -> Result<Accepting, DaemonError> {
        let seq = Arc::new(AtomicU64::new(0));
        let cap = self.config.limits.max_connections_per_client;
        let (http_clients, nbd_clients) = (ClientCounts::new(cap), ClientCounts::new(cap));
        let mut threads = Vec::with_capacity(listeners.len());
        let mut probes = Vec::with_capacity(listeners.len());
        for (i, (protocol, l)) in listeners.into_iter().enumerate() {
            let where_ = l.describe();
            let probe = Arc::new(
                Probe::new(i, protocol, self.events.0.clone()).map_err(DaemonError::Start)?,
            );
            let cfg = AcceptLoop {
                service: self.service(protocol)?,
                metrics: Arc::clone(&self.metrics),
                seq: Arc::clone(&seq),
                clients: Arc::clone(match protocol {
                    Protocol::Http | Protocol::Https => &http_clients,
                    Protocol::Nbd => &nbd_clients,
                }),
                shutdown: Arc::clone(&self.shutdown),
                open: Arc::clone(&self.open),
                probe: Arc::clone(&probe),
            };
            threads.push(accept::spawn(l, cfg).map_err(DaemonError::Start)?);
            probes.push(probe);
            crate::logging::to_stderr(&format!(
                "hexzd: {} listening on {where_}\n",
                protocol.name()
            ));
        }
        Ok((threads, probes))
    }

    /// One line for `STATUS=`: what is served, the open connections, the last reload.
    fn status(&self) -> String {
        let status = format!(
            "{}; connections: HTTP {}, NBD {}; last reload: {}",
            describe(&self.catalog.load()),
            get(&self.metrics.http.connections_active),
            get(&self.metrics.nbd.connections_active),
            self.last_reload
        );
        match self.attachments.describe() {
            Some(a) => format!("{status}; {a}"),
            None => status,
        }
    }

    /// Every listener is accepting and every snapshot is open: `READY=1`.
    fn on_ready(&self) {
        log::debug!("ready");
        self.notifier.send(&notify::ready(&self.status()));
    }

    /// A SIGHUP started a reload (or queued one behind the running one): `RELOADING=1` with
    /// `MONOTONIC_USEC`, once per spell of reloading.
    fn on_reload_requested(&mut self) {
        log::debug!("reload requested");
        if self.reloads_pending == 0 {
            self.notifier
                .send(&notify::reloading(notify::monotonic_usec()));
        }
        self.reloads_pending += 1;
    }

    /// A reload finished (the worker has logged how): once none is pending, `READY=1` with
    /// the outcome in `STATUS=`, a failure included.
    fn on_reloaded(&mut self, outcome: &ReloadOutcome) {
        log::debug!("reload finished: {outcome:?}");
        self.last_reload = match outcome {
            ReloadOutcome::Reloaded(_) => "ok".into(),
            ReloadOutcome::AttachFailed { failures, .. } => {
                format!("snapshots ok, [[attach]] FAILED: {}", failures.join("; "))
            }
            ReloadOutcome::NoConfigFile => "nothing to re-read (no config file)".into(),
            ReloadOutcome::Failed(e) => format!("FAILED, old snapshots kept: {e}"),
        };
        self.reloads_pending = self.reloads_pending.saturating_sub(1);
        if self.reloads_pending == 0 {
            self.notifier.send(&notify::ready(&self.status()));
        }
    }

    /// Shutdown is starting: `STOPPING=1`.
    fn on_stopping(&self) {
        log::debug!("stopping");
        let open =
            get(&self.metrics.http.connections_active) + get(&self.metrics.nbd.connections_active);
        self.notifier.send(&notify::stopping(&format!(
            "stopping: {open} connection(s) open, draining for at most {:?}",
            self.config.daemon.shutdown_timeout
        )));
    }
}
