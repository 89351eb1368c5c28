//! A minimal NBD-only server around `hexzd::nbd::NbdService`, for the kernel test and for trying
//! the NBD front end before `hexzd serve` is wired up. It accepts the subset of `hexzd serve`'s
//! arguments the tests use, and prints the same readiness lines:
//!
//! ```text
//! nbd_serve [serve] [--http off] [--nbd ADDR|off]... [--nbd-unix PATH]... [--stdio]
//!           [--password-file FILE] ARCHIVE[=NAME]...
//! ```
//!
//! stderr: `hexzd: NBD listening on 127.0.0.1:PORT` / `hexzd: NBD listening on unix PATH`.

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use hexzd::daemon::{Catalog, CatalogHandle, Conn, Metrics, NamedSnapshot};
use hexzd::nbd::{NbdService, NbdSettings};
use hexzd::store::{Engine, EngineConfig, OpenOptions, Snapshot};

#[derive(Default)]
struct Args {
    tcp: Vec<String>,
    unix: Vec<PathBuf>,
    stdio: bool,
    password: Option<Vec<u8>>,
    archives: Vec<(PathBuf, String)>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "serve" => {}
            "--http" => {
                value()?;
            }
            "--nbd" => {
                let v = value()?;
                if v != "off" {
                    a.tcp.push(v);
                }
            }
            "--nbd-unix" => a.unix.push(value()?.into()),
            "--stdio" => a.stdio = true,
            "--password-file" => {
                let f = value()?;
                let mut pw = std::fs::read(&f).map_err(|e| format!("{f}: {e}"))?;
                if pw.last() == Some(&b'\n') {
                    pw.pop();
                }
                a.password = Some(pw);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            s => {
                let (path, name) = match s.rsplit_once('=') {
                    Some((p, n)) => (PathBuf::from(p), n.to_string()),
                    None => {
                        let p = PathBuf::from(s);
                        let stem = p
                            .file_stem()
                            .map(|x| x.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        (p, stem)
                    }
                };
                a.archives.push((path, name));
            }
        }
    }
    if a.tcp.is_empty() && a.unix.is_empty() && !a.stdio {
        a.tcp.push("127.0.0.1:10809".into());
    }
    Ok(a)
}

fn run() -> Result<(), String> {
    let args = parse()?;
    hexzd::logging::init(log::LevelFilter::Info);
    let engine = Engine::new(EngineConfig::default()).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    for (path, name) in &args.archives {
        let snapshot = Snapshot::open_with(
            path,
            &engine,
            &OpenOptions {
                password: args.password.clone(),
                index_only: false,
            },
        )
        .map_err(|e| e.to_string())?;
        entries.push(NamedSnapshot {
            name: name.clone(),
            snapshot,
        });
    }
    let catalog = Catalog::new(entries, None).map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::new(Arc::clone(&engine.metrics)));
    let service = Arc::new(NbdService::new(
        NbdSettings::default(),
        Arc::new(CatalogHandle::new(catalog)),
        metrics,
    ));
    if args.stdio {
        return service.serve_stdio().map_err(|e| e.to_string());
    }
    let mut threads = Vec::new();
    for addr in &args.tcp {
        let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        let local = l.local_addr().map_err(|e| e.to_string())?;
        let svc = Arc::clone(&service);
        threads.push(std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(s) = s else { continue };
                let svc = Arc::clone(&svc);
                let _ = std::thread::Builder::new()
                    .name(format!("nbd-conn-{n}"))
                    .spawn(move || svc.serve_connection(Conn::Tcp(s)));
            }
        }));
        eprintln!("hexzd: NBD listening on {local}");
    }
    for path in &args.unix {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
        let svc = Arc::clone(&service);
        threads.push(std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(s) = s else { continue };
                let svc = Arc::clone(&svc);
                let _ = std::thread::Builder::new()
                    .name(format!("nbd-unix-{n}"))
                    .spawn(move || svc.serve_connection(Conn::Unix(s)));
            }
        }));
        eprintln!("hexzd: NBD listening on unix {}", path.display());
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbd_serve: {e}");
            ExitCode::FAILURE
        }
    }
}
