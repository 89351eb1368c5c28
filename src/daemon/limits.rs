//! Process limits (systemd.md §7): the soft `RLIMIT_NOFILE` is raised to the hard limit at
//! start, and the connection caps are kept below what the file-descriptor and task limits
//! allow, so that hexzd refuses connections at its own cap (HTTP 503) instead of failing to
//! accept or to start a thread. A config that asks for more is lowered, with one line at
//! start-up saying so.
//!
//! What a connection costs: one thread (an NBD connection two: its reader and at least one
//! request handler), and in descriptors its socket plus the drain's second handle (`drain`),
//! plus the NBD reader's own handle.

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

use super::config::Config;

/// Descriptors kept for everything that is not a connection: listeners, archives and their
/// parents, the cache's pipes, the journal.
const FD_RESERVE: u64 = 256;
/// Threads that are not connections, besides the decompression workers: main, signals,
/// reload, accept loops.
const THREAD_RESERVE: u64 = 32;
/// Descriptors per connection.
const HTTP_FDS: u64 = 2;
const NBD_FDS: u64 = 3;
/// Threads per connection (counted minimally: more NBD handlers start only when they can).
const HTTP_TASKS: u64 = 1;
const NBD_TASKS: u64 = 2;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in effect.
pub fn raise_nofile() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => return Some(hard),
            Err(e) => log::debug!("cannot raise RLIMIT_NOFILE from {soft} to {hard}: {e}"),
        }
    }
    Some(soft)
}

/// The task limit: the cgroup's `pids.max` (`TasksMax=`) and `RLIMIT_NPROC`, whichever is
/// lower; `None` when neither limits anything.
pub fn task_limit() -> Option<u64> {
    let nproc = getrlimit(Resource::RLIMIT_NPROC)
        .ok()
        .map(|(soft, _)| soft)
        .filter(|&s| s != RLIM_INFINITY);
    [cgroup_pids_max(), nproc].into_iter().flatten().min()
}

/// `pids.max` of this process's cgroup (v2), if it is a number.
fn cgroup_pids_max() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/pids.max")).ok()?;
    max.trim().parse().ok()
}

/// The caps that fit: `(http, nbd)` lowered proportionally (each at least 1) until their
/// descriptors fit `nofile` and their threads fit `tasks` beside `workers`.
pub fn fit_caps(
    http: usize,
    nbd: usize,
    nofile: Option<u64>,
    tasks: Option<u64>,
    workers: u64,
) -> (usize, usize) {
    let (h, n) = (http as u64, nbd as u64);
    let mut scale = 1.0f64;
    let mut limit = |budget: Option<u64>, reserve: u64, per_h: u64, per_n: u64| {
        if let Some(b) = budget {
            let need = h * per_h + n * per_n;
            let avail = b.saturating_sub(reserve);
            if need > avail {
                #[allow(clippy::cast_precision_loss)]
                let s = avail as f64 / need as f64;
                scale = scale.min(s);
            }
        }
    };
    limit(nofile, FD_RESERVE, HTTP_FDS, NBD_FDS);
    limit(tasks, THREAD_RESERVE + workers, HTTP_TASKS, NBD_TASKS);
    if scale >= 1.0 {
        return (http, nbd);
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let lower = |c: usize| ((c as f64 * scale).floor() as usize).clamp(1, c);
    (lower(http), lower(nbd))
}

/// Lowers the connection caps of `config` to what the limits allow; returns the one-line
/// notice to print when it did.
pub fn fit(config: &mut Config, nofile: Option<u64>, tasks: Option<u64>) -> Option<String> {
    let workers = match config.cache.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
        w => w as u64,
    };
    let (h, n) = (
        config.http.settings.max_connections,
        config.nbd.settings.max_connections,
    );
    let (h2, n2) = fit_caps(h, n, nofile, tasks, workers);
    if (h2, n2) == (h, n) {
        return None;
    }
    config.http.settings.max_connections = h2;
    config.nbd.settings.max_connections = n2;
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
    Some(format!(
        "connection caps lowered to fit the process limits: HTTP {h} -> {h2}, NBD {n} -> {n2} \
         (open files {}, tasks {}; raise LimitNOFILE= / TasksMax= to allow more)",
        show(nofile),
        show(tasks)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        assert_eq!(fit_caps(1024, 256, Some(65536), Some(4096), 2), (1024, 256));
        assert_eq!(fit_caps(1024, 256, None, None, 2), (1024, 256));
    }

    #[test]
    fn caps_are_lowered_to_the_tighter_limit() {
        // 1024 descriptors: 768 after the reserve, for 2048 + 768 = 2816 needed.
        let (h, n) = fit_caps(1024, 256, Some(1024), Some(100_000), 2);
        assert!(h * 2 + n * 3 <= 768, "{h} {n}");
        assert!(h >= 270 && n >= 65, "{h} {n}");
        // 500 tasks: 466 after the reserve and 2 workers.
        let (h, n) = fit_caps(1024, 256, None, Some(500), 2);
        assert!(h + 2 * n <= 466, "{h} {n}");
        // Never below one.
        assert_eq!(fit_caps(10, 10, Some(10), None, 2), (1, 1));
    }

    #[test]
    fn fit_says_so_in_one_line() {
        let mut c = Config::default();
        let msg = fit(&mut c, Some(1024), None).unwrap_or_default();
        assert!(
            msg.contains("HTTP 1024 -> ") && !msg.contains('\n'),
            "{msg}"
        );
        assert!(c.http.settings.max_connections < 1024);
        let mut c = Config::default();
        assert_eq!(fit(&mut c, Some(65536), Some(4096)), None);
    }

    #[test]
    fn raising_nofile_reaches_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
        assert_eq!(raise_nofile(), Some(hard));
    }
}
