//! The daemon: the top of the `serve` stack (design.md §2). It owns the lifecycle and builds
//! everything below it; nothing below calls back up.
//!
//! Files by role, in the order a start-up walks through them:
//! - `config` (with `config/raw`, `config/overrides`, `config/validate`): the config file with
//!   the command-line overrides applied before validation, secrets read; one immutable
//!   [`config::Config`].
//! - `snapshots`: opens the configured snapshots into a `serving::Catalog`.
//! - `runtime`: [`runtime::Runtime`], the lifecycle: start, the run loop over
//!   [`runtime::Event`]s, stop and drain, and the hook points for sd_notify, the watchdog and
//!   `[[attach]]`.
//! - `listener`: listening sockets and where they come from ([`listener::obtain`]: the
//!   sockets systemd passed, `activation`, else bind).
//! - `accept`: one accept loop per listener, the connection caps, and [`accept::Service`], the
//!   closed set of front ends a connection is handed to; `clients` counts connections per
//!   client for the per-client cap.
//! - `signals`: the signal thread, which only forwards signals to the run loop as events.
//! - `reload`: the reload worker thread (SIGHUP), which re-reads the config and swaps the
//!   catalog.
//! - `attach`: the `[[attach]]` entries, snapshots attached to kernel NBD devices at start,
//!   brought in line with the config on reload, detached on stop.
//! - `shutdown`: the shutdown flag and wake-up pipe the accept loops poll; `drain`: the
//!   graceful stop of open connections within `[daemon] shutdown_timeout`.
//! - systemd (systemd.md): `sd_env` reads the service manager's variables once, first thing; `notify` speaks sd_notify; `watchdog` pings only while every
//!   accept loop answers; `activation` adopts passed sockets; `limits` raises `RLIMIT_NOFILE`
//!   and fits the connection caps to the limits.

pub mod accept;
pub mod activation;
pub mod attach;
pub mod clients;
pub mod config;
pub mod drain;
pub mod limits;
pub mod listener;
pub mod notify;
pub mod reload;
pub mod runtime;
pub mod sd_env;
pub mod shutdown;
pub mod signals;
pub mod snapshots;
pub mod watchdog;

use std::path::PathBuf;
use std::sync::Arc;

pub use config::{Config, ConfigError, Overrides};
pub use listener::{ListenError, Protocol};
pub use runtime::{Event, Runtime};
pub use sd_env::SystemdEnv;
pub use shutdown::Shutdown;

use crate::serving::CatalogError;
use crate::store::StoreError;

/// A failure of `serve`, before or while starting: printed by `main` as one line, exit 1.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration (file or flags) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A snapshot could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot set is invalid (duplicate names across the file and the command line).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A listener could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The TLS certificates could not be loaded.
    #[error(transparent)]
    Tls(crate::tls::TlsError),
    /// A thread or pipe could not be created.
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    /// The `--stdio` NBD session failed.
    #[error("cannot write output: {0}")]
    Stdio(std::io::Error),
    /// An `[[attach]]` entry could not be attached (the line names the device and the reason).
    #[error("{0}")]
    Attach(String),
}

/// What `hexzd serve` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file (`--config`), re-read on SIGHUP.
    pub config_file: Option<PathBuf>,
    /// The command line's values, applied over the file's before validation (and again on
    /// every reload).
    pub overrides: Overrides,
    /// Serve one NBD session on stdin/stdout instead of listening.
    pub stdio: bool,
    /// `--check-config`: validate the config and open every snapshot, then exit.
    pub check_config: bool,
    /// `--activated-protocol`: what passed sockets without a known name serve.
    pub activated_protocol: Option<Protocol>,
}

/// Runs `hexzd serve`: reads systemd's variables ([`SystemdEnv::read`]), validates the
/// configuration, opens the snapshots, obtains the listeners, and serves until SIGINT or
/// SIGTERM. With `check_config`, stops after opening the snapshots and returns the summary.
pub fn run(options: Options) -> Result<Option<String>, DaemonError> {
    let env = SystemdEnv::read();
    if options.check_config {
        return check_config(&options).map(Some);
    }
    let notifier = Arc::new(notify::Notifier::new(env.notify_socket.as_deref()));
    let result = serve(options, &env, &notifier);
    if let Err(e) = &result {
        notifier.send(&notify::status(&format!("failed to start: {e}")));
    }
    result.map(|()| None)
}

fn serve(
    options: Options,
    env: &SystemdEnv,
    notifier: &Arc<notify::Notifier>,
) -> Result<(), DaemonError> {
    let nofile = limits::raise_nofile();
    let mut config = Config::load(options.config_file.as_deref(), &options.overrides)?;
    if let Some(notice) = limits::fit(&mut config, nofile, limits::task_limit()) {
        log::warn!("{notice}");
    }
    let passed = if options.stdio {
        Vec::new()
    } else {
        activation::plan(env, std::process::id(), options.activated_protocol)?
    };
    // Adopt the passed sockets before anything can open a descriptor that a failed start
    // would leave behind; they are checked here, so a wrong fd fails start-up at once.
    let passed = activation::adopt(&passed)?;
    let runtime = Runtime::start(config, Arc::clone(notifier))?;
    if options.stdio {
        return runtime.serve_stdio();
    }
    let listeners = listener::obtain(runtime.config(), passed)?;
    let watchdog = watchdog::interval(
        env.watchdog_usec.as_deref(),
        env.watchdog_pid.as_deref(),
        std::process::id(),
    );
    runtime.run(listeners, options.config_file, options.overrides, watchdog)
}

/// `serve --check-config`: the config as `serve` would run it, and every snapshot opened
/// (with one worker and no cache); returns the summary line.
fn check_config(options: &Options) -> Result<String, DaemonError> {
    let config = Config::load(options.config_file.as_deref(), &options.overrides)?;
    let engine = crate::store::Engine::new(crate::store::EngineConfig {
        cache_bytes: 0,
        workers: 1,
        ..crate::store::EngineConfig::default()
    })
    .map_err(DaemonError::Start)?;
    let catalog = snapshots::open_catalog(&config.snapshots, &engine)?;
    let what = config
        .file
        .as_ref()
        .map_or_else(|| "command line".to_string(), |f| f.display().to_string());
    let mut summary = format!(
        "{what}: configuration OK; {}",
        snapshots::describe(&catalog)
    );
    if let Some(t) = &config.tls {
        let tls = crate::tls::TlsContext::check(t).map_err(DaemonError::Tls)?;
        summary.push_str("; ");
        summary.push_str(&tls);
    }
    if let Some(a) = attach::describe_entries(&config.attach) {
        summary = format!("{summary}; {a}");
    }
    // `serve` refuses to start with nothing to listen on, unless systemd passes it sockets,
    // which a check (`systemctl reload` runs one) cannot know about.
    let (h, n) = (&config.http, &config.nbd);
    let none = [&h.listen, &h.listen_tls, &n.listen]
        .iter()
        .all(|l| l.is_empty());
    if none && n.unix.is_empty() && config.attach.is_empty() {
        summary.push_str(
            "; no listen address: serve needs sockets passed by systemd (socket activation) \
             and refuses to start without them",
        );
    }
    Ok(summary)
}
