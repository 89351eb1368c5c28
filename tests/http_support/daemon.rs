//! `hexzd serve` as a child process, for the tests against the real binary.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hexzd::http::HttpSettings;

use super::{Archive, Target, wait_until};

/// `hexzd serve` as a child process, configured through a config file in a temporary
/// directory, HTTP on 127.0.0.1:0 and NBD off. Ready once it prints its HTTP listening line
/// on stderr (no sleeps). SIGTERM and wait on drop.
pub struct Daemon {
    child: std::process::Child,
    pub addr: SocketAddr,
    /// Every stderr line so far (the reader thread keeps draining it).
    pub stderr: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// The config file text for `settings` and `archives` (passwords go to files in `dir`).
    pub fn config(settings: &HttpSettings, archives: &[Archive], dir: &Path) -> String {
        let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let mut c = format!(
            "[http]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = {}\nheader_timeout = {}\n\
             idle_timeout = {}\nmax_range_bytes = {}\n",
            settings.max_connections,
            ms(settings.header_timeout),
            ms(settings.idle_timeout),
            settings.max_range_bytes,
        );
        if let Some(t) = &settings.auth_token {
            let f = dir.join("token");
            std::fs::write(&f, format!("{t}\n")).unwrap();
            c.push_str(&format!(
                "auth_token_file = {:?}\n",
                f.display().to_string()
            ));
        }
        c.push_str("[nbd]\nlisten = []\n[cache]\nmemory = \"128MiB\"\nworkers = 2\n");
        for (i, a) in archives.iter().enumerate() {
            c.push_str(&format!(
                "[[snapshot]]\nname = {:?}\npath = {:?}\n",
                a.name,
                a.path.display().to_string()
            ));
            if let Some(p) = &a.password {
                let f = dir.join(format!("pw{i}"));
                std::fs::write(&f, p).unwrap();
                c.push_str(&format!("password_file = {:?}\n", f.display().to_string()));
            }
        }
        c
    }

    /// Starts the daemon and waits for its readiness line.
    pub fn start(settings: &HttpSettings, archives: &[Archive]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("hexzd.toml");
        std::fs::write(&config, Daemon::config(settings, archives, dir.path())).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hexzd"));
        cmd.arg("serve").arg("--config").arg(&config);
        Daemon::spawn(cmd, dir)
    }

    /// Spawns `cmd` (a `hexzd serve` command line) and waits for its readiness line.
    pub fn spawn(mut cmd: std::process::Command, dir: tempfile::TempDir) -> Daemon {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if std::env::var_os("HEXZD_LOG").is_none() {
            cmd.env("HEXZD_LOG", "info");
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("HTTP listening on ").nth(1) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(rest.trim().to_string());
                        }
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hexzd serve did not get ready:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        Daemon {
            child,
            addr,
            stderr: lines,
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for a stderr line containing all of `needles`.
    pub fn wait_log(&self, needles: &[&str]) -> Option<String> {
        let mut found = None;
        wait_until(Duration::from_secs(10), || {
            found = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            found.is_some()
        });
        found
    }
}

impl Target for Daemon {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn conn_threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.starts_with("http-conn"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }
    fn proc_counts(&self) -> (usize, usize) {
        let count = |p: String| std::fs::read_dir(p).unwrap().count();
        (
            count(format!("/proc/{}/task", self.pid())),
            count(format!("/proc/{}/fd", self.pid())),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let done = wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
