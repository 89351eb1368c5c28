//! The nbd-proxy program (nbd-proxy.md §3, §7, §8) in both its forms, the binary invoked as
//! `nbd-proxy` ([`main_argv0`], getopt command line) and `hexzd nbd-proxy` ([`run`] with clap's
//! parse), and `hexzd attach`/`hexzd detach`. Each returns the process's exit status.
//!
//! Phases and their statuses: configuration, selection and device errors exit 1 before
//! anything is touched, and so do set-up failures (signals, the uevent socket) and a stop
//! signal received before the session starts; the session's own ends are in
//! [`super::session`]. hexzd checks more than the original before the session (the device is
//! an NBD device, not in use, and may be configured by this process), so that a refused device
//! never runs the stop hook, which would tear down whatever another session configured.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::Reporter;
use super::attach::{AttachOptions, Attachment, LocalBackend};
use super::config::{self, LocalSource, ProxyConfig};
use super::getopt::{self, Parsed};
use super::hook::StateHook;
use super::notify::notify;
use super::relay::StdioBackend;
use super::session::{self, Backend, End, Event, Notice, Spec, Wording};
use crate::format::Stream;
use crate::kernel::{Device, NbdDevice, UeventSocket};
use crate::serving::{NamedSnapshot, ProtoMetrics};
use crate::store::{Engine, EngineConfig, OpenOptions, Snapshot};

/// What to do, from either command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--metadata`.
    pub metadata: bool,
    /// The configuration name.
    pub name: Option<String>,
    /// The configuration file.
    pub config: PathBuf,
    /// The state hook.
    pub state_hook: PathBuf,
}

/// The file name of `argv[0]`, the prefix of every message (`warnx` uses it).
pub fn program_name(argv0: &std::ffi::OsStr) -> String {
    Path::new(argv0)
        .file_name()
        .unwrap_or(argv0)
        .to_string_lossy()
        .into_owned()
}

/// The binary invoked as `nbd-proxy`: the original's command line, messages and statuses.
pub fn main_argv0(argv: &[OsString]) -> u8 {
    let argv0 = argv.first().cloned().unwrap_or_else(|| "nbd-proxy".into());
    let report = Reporter::stderr(program_name(&argv0));
    let posixly_correct = std::env::var_os("POSIXLY_CORRECT").is_some();
    let mut diag = Vec::new();
    match getopt::parse(argv, posixly_correct, &mut diag) {
        Parsed::Help => {
            report.raw(&getopt::usage(&argv0));
            0
        }
        Parsed::Error => {
            report.raw(&diag);
            report.raw(&getopt::usage(&argv0));
            1
        }
        Parsed::Run(inv) => run(
            &Options {
                metadata: inv.metadata,
                name: inv.name.map(|n| n.to_string_lossy().into_owned()),
                config: inv.config.unwrap_or_else(|| config::DEFAULT_CONFIG.into()),
                state_hook: inv
                    .state_hook
                    .unwrap_or_else(|| config::DEFAULT_STATE_HOOK.into()),
            },
            &report,
        ),
    }
}

/// Runs nbd-proxy with parsed options.
pub fn run(opts: &Options, report: &Reporter) -> u8 {
    let config = match ProxyConfig::load(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines(&opts.config) {
                report.say(&line);
            }
            return 1;
        }
    };
    if opts.metadata {
        // A closed or full stdout is not an error (nbd-proxy.md §13).
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", config.metadata_json());
        let _ = out.flush();
        return 0;
    }
    let (conf, _devnum) = match config.select(opts.name.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            report.say(&e.to_string());
            return 1;
        }
    };
    let device = match NbdDevice::open(Path::new(&conf.nbd_device)) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            report.say(&e.to_string());
            return 1;
        }
    };
    let backend: Box<dyn Backend> = match &conf.local {
        Some(local) => match open_local(&conf.name, local) {
            Ok(b) => Box::new(b),
            Err(msg) => {
                report.say(&msg);
                return 1;
            }
        },
        None => match StdioBackend::stdio() {
            Ok(b) => Box::new(b),
            Err(e) => {
                report.say(&format!("can't use stdin and stdout: {e}"));
                return 1;
            }
        },
    };
    let (timeout, warning) = config.kernel_timeout();
    if let Some(w) = warning {
        report.say(&w);
    }
    let spec = Spec {
        device,
        timeout,
        hook: Some(StateHook::new(&opts.state_hook, &conf.name)),
        wording: Wording::NbdProxy,
    };
    session_main(&spec, backend, report, &mut |n| match n {
        Notice::Ready => notify("READY=1"),
        Notice::Stopping => notify("STOPPING=1"),
    })
    .map_or(1, End::status)
}

/// Opens a configuration's local snapshot.
fn open_local(name: &str, local: &LocalSource) -> Result<LocalBackend, String> {
    let password = match &local.password_file {
        Some(f) => Some(read_password_file(f)?),
        None => None,
    };
    let snapshot = open_snapshot(&local.snapshot, password)?;
    Ok(LocalBackend::new(
        NamedSnapshot {
            name: name.to_string(),
            snapshot,
        },
        local.stream,
        Arc::new(ProtoMetrics::default()),
    ))
}

/// A password file: its bytes minus one trailing newline, not empty (as `hexzd serve` reads
/// `password_file`).
fn read_password_file(path: &Path) -> Result<Vec<u8>, String> {
    let fail = |why: String| format!("password file {}: {why}", path.display());
    let mut pw = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    if pw.last() == Some(&b'\n') {
        pw.pop();
        if pw.last() == Some(&b'\r') {
            pw.pop();
        }
    }
    if pw.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    Ok(pw)
}

fn open_snapshot(path: &Path, password: Option<Vec<u8>>) -> Result<Snapshot, String> {
    // A URL archive (http://, https://, s3://) reads the AWS variables as `cat` does.
    let remote = crate::store::RemoteConfig::from_env().map_err(|e| e.to_string())?;
    let engine = Engine::with_remote(EngineConfig::default(), remote)
        .map_err(|e| format!("cannot start the decompression workers: {e}"))?;
    Snapshot::open_with(
        path,
        &engine,
        &OpenOptions {
            password,
            index_only: false,
        },
    )
    .map_err(|e| e.to_string())
}

/// Installs the stop signals (SIGTERM, SIGINT, SIGHUP) as [`Event::Stop`] on `tx`. SIGPIPE is
/// ignored by every Rust program already: a closed pipe is an `EPIPE`, an end of stream.
fn stop_signals(tx: Sender<Event>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if tx.send(Event::Stop).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// Set-up shared by nbd-proxy and attach (signals, the uevent socket), then the session.
/// `None` when the set-up failed or a stop signal came first (exit 1, no hooks).
fn session_main<D: Device + 'static>(
    spec: &Spec<D>,
    backend: Box<dyn Backend>,
    report: &Reporter,
    notice: &mut dyn FnMut(Notice),
) -> Option<End> {
    let (tx, rx): (Sender<Event>, Receiver<Event>) = crossbeam_channel::unbounded();
    if let Err(e) = stop_signals(tx.clone()) {
        report.say(&format!("can't setup signal pipe: {e}"));
        return None;
    }
    let uevents = match UeventSocket::open() {
        Ok(u) => u,
        Err(e) => {
            report.say(&format!("can't create udev monitor: {}", errno_desc(&e)));
            return None;
        }
    };
    // A stop before the session starts ends the process without hooks, status 1 (§8).
    if rx.try_recv() == Ok(Event::Stop) {
        return None;
    }
    Some(session::run(
        spec,
        backend,
        Some(uevents),
        &tx,
        &rx,
        report,
        notice,
    ))
}

fn errno_desc(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// `hexzd attach` settings.
#[derive(Debug, Clone)]
pub struct AttachArgs {
    /// The archive.
    pub archive: PathBuf,
    /// The device.
    pub device: PathBuf,
    /// Which stream.
    pub stream: Stream,
    /// The password of an encrypted archive.
    pub password: Option<Vec<u8>>,
    /// Kernel timeout in seconds (0: none).
    pub timeout: u32,
}

/// `hexzd attach`: serves the snapshot to the device in the foreground until SIGTERM, SIGINT,
/// SIGHUP or `hexzd detach`. Prints one line on stdout once the device has its capacity. Runs
/// through [`Attachment`], the form the daemon uses.
pub fn attach(args: AttachArgs, report: &Reporter) -> u8 {
    let snapshot = match open_snapshot(&args.archive, args.password) {
        Ok(s) => s,
        Err(msg) => {
            report.say(&msg);
            return 1;
        }
    };
    let size = snapshot.size(args.stream);
    // Signals first, so that one arriving while the device is being set up still ends the
    // session cleanly; they are forwarded once the attachment exists.
    let (sig_tx, sig_rx) = crossbeam_channel::unbounded();
    if let Err(e) = stop_signals(sig_tx) {
        report.say(&format!("can't setup signal pipe: {e}"));
        return 1;
    }
    let name = program_name(args.archive.file_stem().unwrap_or_default());
    let attachment = match Attachment::start(
        &args.device,
        NamedSnapshot { name, snapshot },
        args.stream,
        AttachOptions {
            timeout: args.timeout,
            hook: None,
        },
        Arc::new(ProtoMetrics::default()),
        report.clone(),
    ) {
        Ok(a) => a,
        Err(e) => {
            report.say(&e.to_string());
            return 1;
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}: attached {} ({} stream, {size} bytes, read-only)",
            args.device.display(),
            args.archive.display(),
            args.stream
        );
        let _ = out.flush();
    }
    notify("READY=1");
    let stopper = attachment.stopper();
    let forward = std::thread::Builder::new()
        .name("signals-fwd".into())
        .spawn(move || {
            if sig_rx.recv().is_ok() {
                notify("STOPPING=1");
                stopper.stop();
            }
        });
    if let Err(e) = forward {
        report.say(&format!("cannot start: {e}"));
        attachment.stop();
        return 1;
    }
    match attachment.join() {
        End::Stopped | End::Detached | End::Eof | End::HookFailed => 0,
        _ => 1,
    }
}

/// `hexzd detach DEVICE`: `NBD_DISCONNECT` then `NBD_CLEAR_SOCK`, as `nbd-client -d`.
pub fn detach(device: &Path, report: &Reporter) -> u8 {
    match crate::kernel::device::detach(device) {
        Ok(()) => 0,
        Err(e) => {
            report.say(&e.to_string());
            1
        }
    }
}
