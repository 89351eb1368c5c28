//! The reload worker: re-reads the config file (with the same command-line overrides), opens
//! the new snapshot set and swaps it in, on a thread of its own (`reload`), so neither the
//! signal thread nor the run loop ever waits for a file. SIGHUP design (design.md §4):
//! snapshots are opened and validated first, then swapped in atomically; open connections keep
//! the set they started with; a bad new config is logged and the old set keeps serving.
//! Listener and cache changes need a restart (listeners are never rebound on reload).
//!
//! TLS certificates are re-read on every reload (also without a config file, when they came
//! from `--tls-certificates`): the new ones are checked with the rest of the config and
//! swapped in with the snapshots, for new connections; open connections keep the ones they
//! were handshaken with; a bad certificate fails the reload like a bad config.
//!
//! `[[attach]]` entries follow the new config once its snapshots are in (daemon::attach):
//! unchanged ones keep running, and an entry that cannot be attached fails alone.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::attach::Attachments;
use super::config::{Config, Overrides};
use super::runtime::Event;
use super::snapshots::{describe, open_catalog};
use crate::serving::CatalogHandle;
use crate::store::Engine;
use crate::tls::TlsContext;

/// What one reload did, reported to the run loop (hook for sd_notify's `READY=1` and
/// `STATUS=` after `RELOADING=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new snapshot set is in effect; the summary line says what is served.
    Reloaded(String),
    /// The new snapshot set is in effect, but these `[[attach]]` entries could not be
    /// attached (each failure is one line naming the device and the reason).
    AttachFailed {
        /// What is served.
        summary: String,
        /// The entries that failed.
        failures: Vec<String>,
    },
    /// There is no config file to re-read; nothing changed.
    NoConfigFile,
    /// The new config or a snapshot in it failed; the old set keeps serving.
    Failed(String),
}

/// Everything a reload reads and the state it replaces. Owned by the reload worker's thread.
#[derive(Debug)]
pub struct Reloader {
    /// The config file, re-read on every reload.
    pub file: Option<PathBuf>,
    /// The command line's overrides, applied again on every reload.
    pub overrides: Overrides,
    /// The configuration in effect (listeners and cache as at start-up, snapshots as of the
    /// last successful reload).
    pub running: Config,
    /// The store engine the new snapshots open in.
    pub engine: Arc<Engine>,
    /// Where the new catalog is swapped in.
    pub catalog: Arc<CatalogHandle>,
    /// Where new certificates are swapped in (when TLS was configured at start).
    pub tls: Option<Arc<TlsContext>>,
    /// The running `[[attach]]` entries, brought in line with the new config.
    pub attachments: Arc<Attachments>,
}

impl Reloader {
    /// One reload, start to end, logged as before (`reloaded FILE: serving …`, or `reload
    /// failed, keeping the current snapshots: …`).
    pub fn reload(&mut self) -> ReloadOutcome {
        let Some(file) = self.file.clone() else {
            return self.reload_certificates_only();
        };
        let new = match Config::load(Some(&file), &self.overrides) {
            Ok(c) => c,
            Err(e) => return failed(&e),
        };
        if new.http != self.running.http
            || new.nbd != self.running.nbd
            || new.cache != self.running.cache
            || new.daemon != self.running.daemon
            || new.remote != self.running.remote
        {
            log::warn!(
                "reload: [http], [nbd], [cache], [daemon], [s3] and [remote] changes take effect at the next restart"
            );
        }
        if new.tls.is_some() != self.tls.is_some() {
            log::warn!("reload: turning TLS on or off takes effect at the next restart");
        }
        let catalog = match open_catalog(&new.snapshots, &self.engine) {
            Ok(c) => c,
            Err(e) => return failed(&e),
        };
        let tls = match (&self.tls, &new.tls) {
            (Some(ctx), Some(settings)) => match ctx.prepare(settings) {
                Ok(loaded) => Some((ctx, settings.clone(), loaded)),
                Err(e) => return failed(&e),
            },
            _ => None,
        };
        // Swap first: the log lines tell watchers the new set is in effect.
        let summary = describe(&catalog);
        self.catalog.store(catalog);
        if let Some((ctx, settings, loaded)) = tls {
            log::info!("reload: {}", ctx.commit(loaded));
            self.running.tls = Some(settings);
        }
        log::info!("reloaded {}: {summary}", file.display());
        let failures = self
            .attachments
            .apply(&new.attach, &new.snapshots, &self.catalog.load());
        self.running.snapshots = new.snapshots;
        self.running.attach = new.attach;
        if failures.is_empty() {
            ReloadOutcome::Reloaded(summary)
        } else {
            ReloadOutcome::AttachFailed { summary, failures }
        }
    }

    /// A reload without a config file: only certificates given on the command line are
    /// re-read.
    fn reload_certificates_only(&mut self) -> ReloadOutcome {
        let (Some(ctx), Some(settings)) = (&self.tls, &self.running.tls) else {
            log::info!("SIGHUP: no config file to re-read; snapshots unchanged");
            return ReloadOutcome::NoConfigFile;
        };
        match ctx.reload(settings) {
            Ok(summary) => {
                log::info!("reload: no config file; {summary}");
                ReloadOutcome::Reloaded(summary)
            }
            Err(e) => failed(&e),
        }
    }
}

fn failed(e: &dyn std::fmt::Display) -> ReloadOutcome {
    log::error!("reload failed, keeping the current snapshots and certificates: {e}");
    ReloadOutcome::Failed(e.to_string())
}

/// The handle on the reload worker thread.
#[derive(Debug)]
pub struct ReloadWorker {
    /// At most one request waits while a reload runs: it re-reads the newest file, so more
    /// SIGHUPs in the meantime add nothing.
    requests: Sender<()>,
}

impl ReloadWorker {
    /// Starts the worker; each finished reload is reported on `events` as
    /// [`Event::Reloaded`].
    pub fn spawn(mut reloader: Reloader, events: Sender<Event>) -> io::Result<ReloadWorker> {
        let (requests, rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                // Ends when the handle is dropped (shutdown).
                for () in rx {
                    let outcome = reloader.reload();
                    if events.send(Event::Reloaded(outcome)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(ReloadWorker { requests })
    }

    /// Asks for a reload without waiting. False when one is already pending, which covers
    /// this request too.
    pub fn request(&self) -> bool {
        match self.requests.try_send(()) {
            Ok(()) => true,
            Err(TrySendError::Full(())) => false,
            Err(TrySendError::Disconnected(())) => {
                log::error!("reload worker is gone; SIGHUP ignored");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::Catalog;
    use crate::store::EngineConfig;

    fn reloader(file: Option<PathBuf>) -> Reloader {
        let running = match &file {
            Some(f) => Config::load(Some(f), &Overrides::default()).unwrap(),
            None => Config::default(),
        };
        let engine = Engine::new(EngineConfig::default()).unwrap();
        let catalog = Arc::new(CatalogHandle::new(
            open_catalog(&running.snapshots, &engine).unwrap(),
        ));
        let attachments = Arc::new(Attachments::new(crossbeam_channel::unbounded().0, false));
        Reloader {
            file,
            overrides: Overrides::default(),
            running,
            engine,
            catalog,
            tls: None,
            attachments,
        }
    }

    fn snapshot(name: &str, path: &std::path::Path) -> String {
        format!(
            "[[snapshot]]\nname = {name:?}\npath = {:?}\n",
            path.display().to_string()
        )
    }

    #[test]
    fn without_a_config_file_nothing_changes() {
        let mut r = reloader(None);
        assert_eq!(r.reload(), ReloadOutcome::NoConfigFile);
    }

    #[test]
    fn a_good_reload_swaps_and_a_failed_one_keeps_the_old_set() {
        let dir = tempfile::tempdir().unwrap();
        let hello = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/hexz-0.8.2/hello-lz4.hxz");
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, snapshot("a", &hello)).unwrap();
        let mut r = reloader(Some(cfg.clone()));
        let names =
            |c: &Catalog| -> Vec<String> { c.entries().iter().map(|e| e.name.clone()).collect() };
        assert_eq!(names(&r.catalog.load()), ["a"]);

        std::fs::write(&cfg, snapshot("a", &hello) + &snapshot("b", &hello)).unwrap();
        assert!(matches!(r.reload(), ReloadOutcome::Reloaded(s) if s.contains("a (default), b")));
        assert_eq!(names(&r.catalog.load()), ["a", "b"]);
        assert_eq!(r.running.snapshots.len(), 2);

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(&cfg, snapshot("c", &fifo)).unwrap();
        let ReloadOutcome::Failed(e) = r.reload() else {
            panic!("a FIFO must fail the reload");
        };
        assert!(e.contains("is a FIFO"), "{e}");
        assert_eq!(names(&r.catalog.load()), ["a", "b"]);
        assert_eq!(r.running.snapshots.len(), 2);
    }

    #[test]
    fn an_attach_entry_that_fails_fails_alone_and_the_snapshots_are_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let hello = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/hexz-0.8.2/hello-lz4.hxz");
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, snapshot("a", &hello)).unwrap();
        let mut r = reloader(Some(cfg.clone()));
        let attach = "[[attach]]\nsnapshot = \"b\"\ndevice = \"/dev/hexzd-test-no-such-nbd\"\n";
        std::fs::write(
            &cfg,
            snapshot("a", &hello) + &snapshot("b", &hello) + attach,
        )
        .unwrap();
        let ReloadOutcome::AttachFailed { summary, failures } = r.reload() else {
            panic!("the entry cannot be attached");
        };
        assert!(summary.contains("a (default), b"), "{summary}");
        assert_eq!(failures.len(), 1);
        assert!(
            failures[0].starts_with(
                "cannot attach snapshot \"b\" to /dev/hexzd-test-no-such-nbd: can't open nbd device"
            ),
            "{failures:?}"
        );
        assert_eq!(r.catalog.load().entries().len(), 2);
        assert_eq!(r.running.attach.len(), 1);
        // The entry is still wanted and not running: the next reload tries again.
        assert!(matches!(r.reload(), ReloadOutcome::AttachFailed { .. }));
    }
}
