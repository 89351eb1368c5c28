//! The lifecycle of `hexzd serve`, in one place: [`Runtime::start`] opens the snapshots and
//! builds the front ends from the validated config; [`Runtime::run`] starts the signal thread,
//! the reload worker and one accept loop per listener, prints the readiness lines, then runs
//! the **run loop**: a single thread waiting on [`Event`]s (stop, reload requested, reload
//! finished) until a stop, then stops accepting and drains.
//!
//! Threads and what they may block on: `signals` only on the next signal; the run loop (the
//! main thread) only on the event channel; `reload` on files (never on a FIFO: store::file);
//! `*-accept` on poll of its listener and the shutdown pipe. So a stop is handled at once
//! whatever a reload is doing.
//!
//! Hook points for what comes next (each a private method below, called at the right
//! moment): `on_ready`, `on_reload_requested`, `on_reloaded` and `on_stopping` for sd_notify
//! (`READY=1`, `RELOADING=1`, `STATUS=`, `STOPPING=1`); a watchdog tick is one more [`Event`]
//! (or a `recv_timeout` in the run loop); socket activation is a listener source in
//! `listener::obtain`; `[[attach]]` entries start in `run` after the listeners and stop before
//! the drain.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::DaemonError;
use super::accept::{self, AcceptLoop, Service};
use super::config::{Config, Overrides};
use super::listener::{Listener, Protocol};
use super::reload::{ReloadOutcome, ReloadWorker, Reloader};
use super::shutdown::Shutdown;
use super::signals;
use super::snapshots::{describe, open_catalog};
use crate::http::HttpService;
use crate::nbd::NbdService;
use crate::serving::{CatalogHandle, Metrics, get};
use crate::store::Engine;

/// How long shutdown waits for open connections to finish.
/// Hook: `[daemon] shutdown_timeout` replaces this.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the drain looks at the connection gauges.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// What the run loop reacts to. Sent by the signal thread and the reload worker (and, later,
/// a watchdog timer); never blocks the sender (unbounded channel).
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
}

/// The running daemon: the validated config, the store engine, the catalog handle the reload
/// worker swaps, the counters, both front ends, and the shutdown state.
#[derive(Debug)]
pub struct Runtime {
    config: Config,
    engine: Arc<Engine>,
    catalog: Arc<CatalogHandle>,
    metrics: Arc<Metrics>,
    http: Arc<HttpService>,
    nbd: Arc<NbdService>,
    shutdown: Arc<Shutdown>,
    events: (Sender<Event>, Receiver<Event>),
}

impl Runtime {
    /// Creates the store engine, opens every snapshot, and builds the front ends with the
    /// settings of `config`, exactly as validated.
    pub fn start(config: Config) -> Result<Runtime, DaemonError> {
        let engine = Engine::with_remote(config.cache.engine(), config.remote.clone())
            .map_err(DaemonError::Start)?;
        let catalog = Arc::new(CatalogHandle::new(open_catalog(
            &config.snapshots,
            &engine,
        )?));
        let metrics = Arc::new(Metrics::new(Arc::clone(&engine.metrics)));
        let http = Arc::new(HttpService::new(
            config.http.settings.clone(),
            Arc::clone(&catalog),
            Arc::clone(&metrics),
        ));
        let nbd = Arc::new(NbdService::new(
            config.nbd.settings.clone(),
            Arc::clone(&catalog),
            Arc::clone(&metrics),
        ));
        Ok(Runtime {
            config,
            engine,
            catalog,
            metrics,
            http,
            nbd,
            shutdown: Arc::new(Shutdown::new().map_err(DaemonError::Start)?),
            events: crossbeam_channel::unbounded(),
        })
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The running front end of `protocol`.
    pub fn service(&self, protocol: Protocol) -> Service {
        match protocol {
            Protocol::Http => Service::Http(Arc::clone(&self.http)),
            Protocol::Nbd => Service::Nbd(Arc::clone(&self.nbd)),
        }
    }

    /// One NBD session on stdin/stdout (`serve --stdio`), no listeners, no signals.
    pub fn serve_stdio(&self) -> Result<(), DaemonError> {
        self.nbd.serve_stdio().map_err(DaemonError::Stdio)
    }

    /// Serves `listeners` until SIGINT or SIGTERM, reloading on SIGHUP; then stops accepting
    /// and waits (bounded) for open connections. `file` and `overrides` are what a reload
    /// re-reads and re-applies.
    pub fn run(
        self,
        listeners: Vec<(Protocol, Listener)>,
        file: Option<std::path::PathBuf>,
        overrides: Overrides,
    ) -> Result<(), DaemonError> {
        let signals = signals::spawn(self.events.0.clone()).map_err(DaemonError::Start)?;
        let reload = ReloadWorker::spawn(
            Reloader {
                file,
                overrides,
                running: self.config.clone(),
                engine: Arc::clone(&self.engine),
                catalog: Arc::clone(&self.catalog),
            },
            self.events.0.clone(),
        )
        .map_err(DaemonError::Start)?;

        eprintln!("hexzd: {}", describe(&self.catalog.load()));
        if listeners.is_empty() {
            eprintln!("hexzd: no listeners (HTTP and NBD are both off)");
        }
        let accepting = self.start_accepting(listeners)?;
        // Hook: `[[attach]]` entries start here, once the catalog is open and the listeners
        // are up, before readiness is announced.
        self.on_ready();

        // The runtime holds a sender itself, so the channel never disconnects.
        while let Ok(event) = self.events.1.recv() {
            match event {
                Event::Stop { signal } => {
                    log::debug!("signal {signal}: stopping");
                    break;
                }
                Event::Reload => {
                    self.on_reload_requested();
                    if !reload.request() {
                        log::debug!("SIGHUP: a reload is already pending");
                    }
                }
                Event::Reloaded(outcome) => self.on_reloaded(&outcome),
            }
        }

        self.on_stopping();
        self.shutdown.trigger();
        log::info!("shutting down");
        for t in accepting {
            let _ = t.join();
        }
        // Hook: `[[attach]]` entries stop here, before the drain.
        self.drain();
        // The reload worker is not joined: a reload still reading files must not hold the
        // exit; dropping its handle ends it when idle.
        drop(reload);
        drop(signals);
        Ok(())
    }

    /// Starts one accept loop per listener and prints its readiness line.
    fn start_accepting(
        &self,
        listeners: Vec<(Protocol, Listener)>,
    ) -> Result<Vec<JoinHandle<()>>, DaemonError> {
        let seq = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::with_capacity(listeners.len());
        for (protocol, l) in listeners {
            let where_ = l.describe();
            let cfg = AcceptLoop {
                service: self.service(protocol),
                metrics: Arc::clone(&self.metrics),
                seq: Arc::clone(&seq),
                shutdown: Arc::clone(&self.shutdown),
            };
            threads.push(accept::spawn(l, cfg).map_err(DaemonError::Start)?);
            eprintln!("hexzd: {} listening on {where_}", protocol.name());
        }
        Ok(threads)
    }

    /// Waits until no connection is open, or [`DRAIN_TIMEOUT`].
    fn drain(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let open = get(&self.metrics.http.connections_active)
                + get(&self.metrics.nbd.connections_active);
            if open == 0 || Instant::now() >= deadline {
                if open > 0 {
                    log::info!("exiting with {open} connection(s) still open");
                }
                break;
            }
            std::thread::sleep(DRAIN_POLL);
        }
    }

    /// Every listener is accepting and every snapshot is open.
    /// Hook: sd_notify `READY=1` and `STATUS=`.
    fn on_ready(&self) {
        log::debug!("ready");
    }

    /// A SIGHUP arrived; the reload worker has been asked.
    /// Hook: sd_notify `RELOADING=1` with `MONOTONIC_USEC`.
    fn on_reload_requested(&self) {
        log::debug!("reload requested");
    }

    /// A reload finished (the worker has logged how).
    /// Hook: sd_notify `READY=1` with the outcome in `STATUS=`.
    fn on_reloaded(&self, outcome: &ReloadOutcome) {
        log::debug!("reload finished: {outcome:?}");
    }

    /// Shutdown is starting.
    /// Hook: sd_notify `STOPPING=1`.
    fn on_stopping(&self) {
        log::debug!("stopping");
    }
}
