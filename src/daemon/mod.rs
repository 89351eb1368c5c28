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
//! - `listener`: listening sockets and where they come from ([`listener::obtain`]: bind today,
//!   socket activation next).
//! - `accept`: one accept loop per listener, the connection caps, and [`accept::Service`], the
//!   closed set of front ends a connection is handed to; `clients` counts connections per
//!   client for the per-client cap.
//! - `signals`: the signal thread, which only forwards signals to the run loop as events.
//! - `reload`: the reload worker thread (SIGHUP), which re-reads the config and swaps the
//!   catalog.
//! - `shutdown`: the shutdown flag and wake-up pipe the accept loops poll.

pub mod accept;
pub mod clients;
pub mod config;
pub mod listener;
pub mod reload;
pub mod runtime;
pub mod shutdown;
pub mod signals;
pub mod snapshots;

use std::path::PathBuf;

pub use config::{Config, ConfigError, Overrides};
pub use listener::{ListenError, Protocol};
pub use runtime::{Event, Runtime};
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
    /// A thread or pipe could not be created.
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    /// The `--stdio` NBD session failed.
    #[error("cannot write output: {0}")]
    Stdio(std::io::Error),
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
}

/// Runs `hexzd serve`: validates the configuration, opens the snapshots, obtains the
/// listeners, and serves until SIGINT or SIGTERM.
pub fn run(options: Options) -> Result<(), DaemonError> {
    let config = Config::load(options.config_file.as_deref(), &options.overrides)?;
    let runtime = Runtime::start(config)?;
    if options.stdio {
        return runtime.serve_stdio();
    }
    let listeners = listener::obtain(runtime.config())?;
    runtime.run(listeners, options.config_file, options.overrides)
}
