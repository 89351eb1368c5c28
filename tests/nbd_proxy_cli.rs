//! nbd-proxy mode through the real binary, without privileges (nbd-proxy.md §3–§6, §8): the
//! binary run as a link named `nbd-proxy` (argv[0] dispatch, getopt diagnostics with argv[0] as
//! invoked, `nbd-proxy:` messages, exit statuses), `hexzd nbd-proxy`, and the errors of
//! `hexzd attach` and `hexzd detach` that need no kernel device. Everything that needs
//! /dev/nbdX is in tests/kernel_proxy.sh (the VM).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SAMPLE: &str = r#"{
    "timeout": 30,
    "configurations": {
        "0": { "nbd-device": "/dev/nbd0", "metadata": { "description": "Virtual media device" } },
        "1": { "nbd-device": "/dev/nbd1", "metadata": { "description": "Dump Offload" } }
    }
}"#;

const SAMPLE_METADATA: &str = "{ \"0\": { \"description\": \"Virtual media device\" }, \
                               \"1\": { \"description\": \"Dump Offload\" } }\n";

/// A directory with a link named `nbd-proxy` to the built binary, and a config file.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(config: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_hexzd"), dir.path().join("nbd-proxy"))
            .unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        Setup { dir }
    }

    fn link(&self) -> PathBuf {
        self.dir.path().join("nbd-proxy")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.json")
    }

    /// `nbd-proxy --config CONFIG ARGS...`, invoked by its full path.
    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new(self.link());
        c.arg("--config").arg(self.config()).args(args);
        output(c)
    }
}

fn output(mut c: Command) -> Output {
    c.stdin(Stdio::null()).env_remove("POSIXLY_CORRECT");
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn usage(argv0: &str) -> String {
    format!("usage:\n\t{argv0} [configuration]\n\t{argv0} --metadata\n")
}

#[test]
fn help_prints_the_usage_with_argv0_as_invoked() {
    let s = Setup::new(SAMPLE);
    let o = s.run(&["--help"]);
    let argv0 = s.link().display().to_string();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stdout), "");
    assert_eq!(text(&o.stderr), usage(&argv0));
}

#[test]
fn getopt_diagnostics_use_argv0_as_invoked_full_path_or_through_path() {
    let s = Setup::new(SAMPLE);
    let argv0 = s.link().display().to_string();
    let o = s.run(&["--x"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!("{argv0}: unrecognized option '--x'\n{}", usage(&argv0))
    );
    // Found through PATH, argv[0] is the bare name.
    let mut c = Command::new("nbd-proxy");
    c.env("PATH", s.dir.path()).args(["-m"]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!("nbd-proxy: invalid option -- 'm'\n{}", usage("nbd-proxy"))
    );
}

#[test]
fn metadata_line_byte_for_byte_and_options_after_operands() {
    let s = Setup::new(SAMPLE);
    for args in [&["--metadata"][..], &["--meta"], &["zz", "--metadata"]] {
        let o = s.run(args);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert_eq!(text(&o.stdout), SAMPLE_METADATA, "{args:?}");
        assert_eq!(text(&o.stderr), "", "{args:?}");
    }
}

#[test]
fn posixly_correct_stops_at_the_first_operand() {
    let s = Setup::new(SAMPLE);
    let mut c = Command::new(s.link());
    c.arg("--config").arg(s.config()).args(["zz", "--metadata"]);
    c.stdin(Stdio::null()).env("POSIXLY_CORRECT", "1");
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    assert_eq!(text(&o.stderr), "nbd-proxy: no such configuration 'zz'\n");
}

#[test]
fn metadata_with_stdout_closed_exits_0_silently() {
    let s = Setup::new(SAMPLE);
    let mut c = Command::new(s.link());
    c.arg("--config").arg(s.config()).arg("--metadata");
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stderr), "");
}

#[test]
fn config_errors_are_fatal_even_for_metadata() {
    let s = Setup::new("{");
    let path = s.config().display().to_string();
    let o = s.run(&["--metadata"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "");
    // The message carries its own newline: an empty line follows.
    assert_eq!(
        text(&o.stderr),
        format!("nbd-proxy: can't read configuration from {path}\n\n")
    );
    std::fs::write(s.config(), r#"{"configurations":[]}"#).unwrap();
    let o = s.run(&["--metadata"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!(
            "nbd-proxy: invalid configurations format\n\
             nbd-proxy: failed to load config from {path}\n"
        )
    );
}

#[test]
fn selection_and_device_check_messages() {
    let s = Setup::new(SAMPLE);
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "nbd-proxy: no config specified, and no default\n"
    );
    let o = s.run(&["2"]);
    assert_eq!(text(&o.stderr), "nbd-proxy: no such configuration '2'\n");
    std::fs::write(
        s.config(),
        r#"{"configurations":{"a":{"nbd-device":"/nonexistent/nbd0"},
            "b":{"nbd-device":"/dev/null","default":true}}}"#,
    )
    .unwrap();
    let o = s.run(&["a"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "nbd-proxy: can't stat nbd device /nonexistent/nbd0: No such file or directory\n"
    );
    let o = s.run(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "nbd-proxy: specified nbd path /dev/null isn't a block device: Success\n"
    );
}

/// A hook that records every call, to show that refused devices run no hook.
fn recording_hook(dir: &Path) -> (PathBuf, PathBuf) {
    let log = dir.join("hook.log");
    let hook = dir.join("state");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$0 $1 $2\" >> {}\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    (hook, log)
}

#[test]
fn a_block_device_that_is_not_nbd_is_refused_before_any_hook() {
    let Some(blk) = ["/dev/loop0", "/dev/loop1", "/dev/sda", "/dev/vda"]
        .into_iter()
        .find(|p| {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
        })
    else {
        eprintln!("SKIP: no non-NBD block device node on this machine");
        return;
    };
    let s = Setup::new(&format!(
        r#"{{"configurations":{{"a":{{"nbd-device":"{blk}"}}}}}}"#
    ));
    let (hook, log) = recording_hook(s.dir.path());
    let o = s.run(&["--state-hook", hook.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "nbd-proxy: {blk} is not an NBD device (block device "
        )),
        "{err}"
    );
    assert!(!log.exists(), "a hook ran");
}

#[test]
fn hexzd_nbd_proxy_is_the_same_mode_with_hexzd_messages() {
    let s = Setup::new(SAMPLE);
    let run = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hexzd"));
        c.arg("nbd-proxy")
            .arg("--config")
            .arg(s.config())
            .args(args);
        output(c)
    };
    let o = run(&["--metadata"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stdout), SAMPLE_METADATA);
    let o = run(&["9"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stderr), "hexzd: no such configuration '9'\n");
    // clap's own usage errors exit 2.
    let o = run(&["--bogus"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_fifo_as_config_is_refused_without_blocking() {
    let s = Setup::new(SAMPLE);
    let fifo = s.dir.path().join("fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut c = Command::new(s.link());
    c.arg("--config").arg(&fifo).arg("--metadata");
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!(
            "nbd-proxy: can't read configuration from {}\n\n",
            fifo.display()
        )
    );
}

#[test]
fn attach_and_detach_errors_name_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let hexzd = || Command::new(env!("CARGO_BIN_EXE_hexzd"));
    let missing = dir.path().join("missing.hxz");
    let mut c = hexzd();
    c.arg("attach").arg(&missing).arg("/dev/nbd0");
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("hexzd: ") && err.contains("missing.hxz"),
        "{err}"
    );
    // A real archive, a device that is not one.
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2");
    let any = std::fs::read_dir(&archive)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "hxz") && !p.to_string_lossy().contains("enc"))
        .unwrap();
    let mut c = hexzd();
    c.arg("attach").arg(&any).arg("/dev/null");
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "hexzd: /dev/null is not an NBD device (not a block device)\n"
    );
    let mut c = hexzd();
    c.args(["detach", "/nonexistent/nbd3"]);
    let o = output(c);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "hexzd: can't open nbd device /nonexistent/nbd3: No such file or directory\n"
    );
    // The readiness line is the only thing attach prints on stdout; nothing was printed here.
    assert_eq!(text(&o.stdout), "");
    let _ = std::io::stdout().flush();
}
