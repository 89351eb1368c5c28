//! Logging to stderr: journald priority prefixes (`<3>`, `<6>`, ...) when stderr is the
//! journal's stream (systemd.md §6), plain `LEVEL message` lines otherwise. No timestamps:
//! journald adds its own. The level comes from `HEXZD_LOG` (or `RUST_LOG`), e.g. `debug`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

/// Installs the logger. `default` applies when neither `HEXZD_LOG` nor `RUST_LOG` is set.
pub fn init(default: log::LevelFilter) {
    let journal = under_journald();
    let filter = std::env::var("HEXZD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.as_str().to_ascii_lowercase());
    let mut b = env_logger::Builder::new();
    // The HTTP client of remote archives logs requests at debug level (URLs with presigned
    // queries, headers): keep it at warn unless a filter names it (`ureq=debug`).
    for module in ["ureq", "ureq_proto", "rustls"] {
        b.filter_module(module, log::LevelFilter::Warn);
    }
    b.parse_filters(&filter);
    b.format(move |out, record| {
        if journal {
            writeln!(out, "<{}>{}", priority(record.level()), record.args())
        } else {
            writeln!(out, "{:<5} {}", record.level(), record.args())
        }
    });
    b.target(env_logger::Target::Stderr);
    let _ = b.try_init();
}

/// Prints a fatal error line (what `main` reports before exiting 1) on stderr, with the `err`
/// priority prefix when stderr is the journal.
pub fn fatal(line: &str) {
    if under_journald() {
        eprintln!("<3>{line}");
    } else {
        eprintln!("{line}");
    }
}

/// syslog priority of a log level.
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// True when `$JOURNAL_STREAM` names the device and inode of our stderr.
fn under_journald() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
