//! `hexzd serve`: opens the snapshots, binds the listeners, starts an accept loop per listener,
//! and serves until SIGINT or SIGTERM. SIGHUP re-reads the config file and swaps in the new
//! snapshot set (connections already open keep theirs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::{CommandError, read_password_file};
use crate::cli::ServeArgs;
use crate::daemon::Shutdown;
use crate::daemon::config::{Config, ConfigError};
use crate::daemon::listener::{self, AcceptLoop, Handler, Listener, Proto};
use crate::http::{HttpService, HttpSettings};
use crate::nbd::{NbdService, NbdSettings};
use crate::serving::{Catalog, CatalogHandle, Metrics, NamedSnapshot, valid_name};
use crate::store::{Engine, EngineConfig, OpenOptions, Snapshot};

/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A serve failure at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    /// An archive argument is malformed.
    #[error("{0}")]
    Argument(String),
    /// A thread or pipe could not be created.
    #[error("cannot start: {0}")]
    Start(std::io::Error),
}

/// One archive given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveArg {
    /// Archive path.
    pub path: PathBuf,
    /// Snapshot name.
    pub name: String,
}

/// Parses `PATH` or `PATH=NAME`; the name defaults to the file stem.
pub fn parse_archive_arg(s: &str) -> Result<ArchiveArg, String> {
    if let Some((path, name)) = s.rsplit_once('=') {
        if valid_name(name) && !path.is_empty() {
            return Ok(ArchiveArg {
                path: PathBuf::from(path),
                name: name.to_string(),
            });
        }
    }
    let path = PathBuf::from(s);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !valid_name(&stem) {
        return Err(format!(
            "cannot name the snapshot for {s:?} after its file name; give PATH=NAME (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(ArchiveArg { path, name: stem })
}

/// Everything a catalog is built from: config snapshots, then command-line archives.
struct Sources {
    config: Config,
    archives: Vec<ArchiveArg>,
    cli_password: Option<PathBuf>,
}

impl Sources {
    fn open_catalog(&self, engine: &Arc<Engine>) -> Result<Catalog, CommandError> {
        let mut entries = Vec::new();
        let mut default = None;
        let open = |path: &Path, pw: &Option<PathBuf>| -> Result<Snapshot, CommandError> {
            let password = match pw {
                Some(f) => Some(read_password_file(f)?),
                None => None,
            };
            Ok(Snapshot::open_with(
                path,
                engine,
                &OpenOptions {
                    password,
                    index_only: false,
                },
            )?)
        };
        for s in &self.config.snapshots {
            if s.default {
                default = Some(s.name.clone());
            }
            entries.push(NamedSnapshot {
                name: s.name.clone(),
                snapshot: open(&s.path, &s.password_file)?,
            });
        }
        for a in &self.archives {
            entries.push(NamedSnapshot {
                name: a.name.clone(),
                snapshot: open(&a.path, &self.cli_password)?,
            });
        }
        Catalog::new(entries, default.as_deref()).map_err(|e| CommandError::Invalid(e.to_string()))
    }
}

fn describe(catalog: &Catalog) -> String {
    if catalog.is_empty() {
        return "no snapshots: serving nothing (give ARCHIVE arguments or --config)".into();
    }
    let default = catalog.default_snapshot().map(|d| d.name.clone());
    let names: Vec<String> = catalog
        .entries()
        .iter()
        .map(|e| {
            if Some(&e.name) == default.as_ref() {
                format!("{} (default)", e.name)
            } else {
                e.name.clone()
            }
        })
        .collect();
    format!("serving {} snapshot(s): {}", names.len(), names.join(", "))
}

/// Applies the command-line overrides to the config.
fn apply_overrides(config: &mut Config, args: &ServeArgs) {
    let addrs = |v: &[String]| -> Vec<String> {
        v.iter().filter(|a| a.as_str() != "off").cloned().collect()
    };
    if !args.http.is_empty() {
        config.http.listen = addrs(&args.http);
    }
    if !args.nbd.is_empty() {
        config.nbd.listen = addrs(&args.nbd);
    }
    if !args.nbd_unix.is_empty() {
        config.nbd.unix.clone_from(&args.nbd_unix);
    }
    if let Some(m) = args.max_range_bytes {
        config.http.max_range_bytes = m;
    }
    if let Some(c) = args.cache {
        config.cache.memory = c;
    }
    if let Some(w) = args.workers {
        config.cache.workers = w;
    }
    if let Some(f) = &args.auth_token_file {
        config.http.auth_token_file = Some(f.clone());
    }
}

fn read_token(path: &Path) -> Result<String, CommandError> {
    let text = crate::store::file::read_small(path, "a token file", 64 * 1024)
        .map_err(CommandError::PasswordFile)?;
    let token = String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(CommandError::PasswordFile(
            crate::store::file::FileError::Empty {
                path: path.to_path_buf(),
            },
        ));
    }
    Ok(token)
}

/// Runs `hexzd serve`.
pub fn run(args: &ServeArgs) -> Result<(), CommandError> {
    let mut config = match &args.config {
        Some(f) => Config::load(f).map_err(ServeError::from)?,
        None => Config::default(),
    };
    apply_overrides(&mut config, args);
    let archives = args
        .archives
        .iter()
        .map(|a| parse_archive_arg(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServeError::Argument)?;
    let engine = Engine::new(EngineConfig {
        cache_bytes: usize::try_from(config.cache.memory).unwrap_or(usize::MAX),
        workers: config.cache.workers,
        ..EngineConfig::default()
    })
    .map_err(ServeError::Start)?;
    let sources = Sources {
        config: config.clone(),
        archives,
        cli_password: args.password.password_file.clone(),
    };
    let catalog = Arc::new(CatalogHandle::new(sources.open_catalog(&engine)?));
    let metrics = Arc::new(Metrics::new(Arc::clone(&engine.metrics)));
    let nbd_settings = NbdSettings {
        max_connections: config.nbd.max_connections,
        handshake_timeout: config.nbd.handshake_timeout,
        idle_timeout: config.nbd.idle_timeout,
    };
    if args.stdio {
        let nbd = NbdService::new(nbd_settings, Arc::clone(&catalog), Arc::clone(&metrics));
        return nbd.serve_stdio().map_err(CommandError::Output);
    }

    let auth_token = match &config.http.auth_token_file {
        Some(f) => Some(read_token(f)?),
        None => None,
    };
    // Bind everything before serving anything: a bad address fails start-up cleanly.
    let mut listeners = Vec::new();
    for a in &config.http.listen {
        for l in Listener::bind_tcp(a).map_err(ServeError::from)? {
            listeners.push((Proto::Http, l));
        }
    }
    for a in &config.nbd.listen {
        for l in Listener::bind_tcp(a).map_err(ServeError::from)? {
            listeners.push((Proto::Nbd, l));
        }
    }
    for p in &config.nbd.unix {
        listeners.push((
            Proto::Nbd,
            Listener::bind_unix(p).map_err(ServeError::from)?,
        ));
    }

    let http = Arc::new(HttpService::new(
        HttpSettings {
            max_connections: config.http.max_connections,
            header_timeout: config.http.header_timeout,
            idle_timeout: config.http.idle_timeout,
            max_range_bytes: config.http.max_range_bytes,
            auth_token,
        },
        Arc::clone(&catalog),
        Arc::clone(&metrics),
    ));
    let nbd = Arc::new(NbdService::new(
        nbd_settings,
        Arc::clone(&catalog),
        Arc::clone(&metrics),
    ));
    let http_handler = {
        let (serve, reject) = (Arc::clone(&http), Arc::clone(&http));
        Arc::new(Handler {
            serve: Box::new(move |c| serve.serve_connection(c)),
            reject: Box::new(move |c| reject.reject_busy(c)),
        })
    };
    let nbd_handler = {
        let serve = Arc::clone(&nbd);
        Arc::new(Handler {
            serve: Box::new(move |c| serve.serve_connection(c)),
            // NBD has no way to say "busy" before the handshake: close.
            reject: Box::new(drop),
        })
    };

    let shutdown = Arc::new(Shutdown::new().map_err(ServeError::Start)?);
    let signals = start_signal_thread(
        Arc::clone(&shutdown),
        sources,
        Arc::clone(&engine),
        Arc::clone(&catalog),
    )?;

    eprintln!("hexzd: {}", describe(&catalog.load()));
    if listeners.is_empty() {
        eprintln!("hexzd: no listeners (HTTP and NBD are both off)");
    }
    let seq = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for (proto, l) in listeners {
        let where_ = l.describe();
        let (handler, max) = match proto {
            Proto::Http => (Arc::clone(&http_handler), config.http.max_connections),
            Proto::Nbd => (Arc::clone(&nbd_handler), config.nbd.max_connections),
        };
        let cfg = AcceptLoop {
            proto,
            max_connections: max,
            metrics: Arc::clone(&metrics),
            handler,
            seq: Arc::clone(&seq),
        };
        threads.push(listener::spawn(l, cfg, Arc::clone(&shutdown)).map_err(ServeError::Start)?);
        eprintln!("hexzd: {} listening on {where_}", proto.name());
    }

    shutdown.wait();
    log::info!("shutting down");
    for t in threads {
        let _ = t.join();
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let open = crate::serving::get(&metrics.http.connections_active)
            + crate::serving::get(&metrics.nbd.connections_active);
        if open == 0 || Instant::now() >= deadline {
            if open > 0 {
                log::info!("exiting with {open} connection(s) still open");
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(signals);
    Ok(())
}

/// Handles SIGINT/SIGTERM (shutdown) and SIGHUP (reload) on one thread.
fn start_signal_thread(
    shutdown: Arc<Shutdown>,
    sources: Sources,
    engine: Arc<Engine>,
    catalog: Arc<CatalogHandle>,
) -> Result<signal_hook::iterator::Handle, CommandError> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(ServeError::Start)?;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sources = sources;
            for sig in signals.forever() {
                match sig {
                    SIGHUP => reload(&mut sources, &engine, &catalog),
                    _ => {
                        shutdown.trigger();
                        break;
                    }
                }
            }
        })
        .map_err(ServeError::Start)?;
    Ok(handle)
}

/// Re-reads the config file and swaps in the new snapshot set. On any error the old set keeps
/// serving. Listener and cache changes need a restart.
fn reload(sources: &mut Sources, engine: &Arc<Engine>, catalog: &CatalogHandle) {
    let Some(file) = sources.config.file.clone() else {
        log::info!("SIGHUP: no config file to re-read; snapshots unchanged");
        return;
    };
    let new = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            log::error!("reload failed, keeping the current snapshots: {e}");
            return;
        }
    };
    if new.http != sources.config.http
        || new.nbd != sources.config.nbd
        || new.cache != sources.config.cache
    {
        log::warn!("reload: [http], [nbd] and [cache] changes take effect at the next restart");
    }
    let old = std::mem::replace(&mut sources.config.snapshots, new.snapshots);
    match sources.open_catalog(engine) {
        Ok(c) => {
            // Swap first: the log line tells watchers the new set is in effect.
            let summary = describe(&c);
            catalog.store(c);
            log::info!("reloaded {}: {summary}", file.display());
        }
        Err(e) => {
            sources.config.snapshots = old;
            log::error!("reload failed, keeping the current snapshots: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_arguments() {
        assert_eq!(
            parse_archive_arg("/srv/a/vm1.hxz").unwrap(),
            ArchiveArg {
                path: "/srv/a/vm1.hxz".into(),
                name: "vm1".into()
            }
        );
        assert_eq!(
            parse_archive_arg("x/y.hxz=prod").unwrap(),
            ArchiveArg {
                path: "x/y.hxz".into(),
                name: "prod".into()
            }
        );
        assert!(parse_archive_arg("disk.hxz").is_err());
        assert_eq!(parse_archive_arg("disk.hxz=d1").unwrap().name, "d1");
        assert!(parse_archive_arg("my file.hxz").is_err());
    }
}
