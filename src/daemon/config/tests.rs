//! Config parsing and validation, one behaviour each.

use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/nonexistent/hexzd.toml"))
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.http.listen, [DEFAULT_HTTP]);
    assert_eq!(c.nbd.listen, [DEFAULT_NBD]);
    assert_eq!(c.http.settings.max_range_bytes, 33_554_432);
    assert!(c.snapshots.is_empty());
    assert_eq!(Config { file: None, ..c }, Config::default());
}

#[test]
fn values_with_units() {
    let c = parse(
        "[http]\nlisten = []\nheader_timeout = \"500ms\"\nidle_timeout = 5\nmax_range_bytes = \"0\"\n[nbd]\nidle_timeout = \"0\"\n[cache]\nmemory = \"1GiB\"\nworkers = 2\n",
    )
    .unwrap();
    assert!(c.http.listen.is_empty());
    assert_eq!(c.http.settings.header_timeout, Duration::from_millis(500));
    assert_eq!(c.http.settings.idle_timeout, Duration::from_secs(5));
    assert_eq!(c.http.settings.max_range_bytes, 0);
    assert_eq!(c.nbd.settings.idle_timeout, None);
    assert_eq!(c.cache.memory, 1 << 30);
    assert_eq!(c.cache.engine().cache_bytes, 1 << 30);
}

#[test]
fn unknown_key_names_the_key() {
    let e = parse("[http]\nlisten_on = []\n").unwrap_err().to_string();
    assert!(e.contains("listen_on"), "{e}");
    assert!(e.starts_with("/nonexistent/hexzd.toml"), "{e}");
    let e = parse("[web]\n").unwrap_err().to_string();
    assert!(e.contains("web"), "{e}");
}

#[test]
fn bad_values_name_key_and_problem() {
    let e = parse("[http]\nheader_timeout = \"10 parsecs\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("http.header_timeout"), "{e}");
    let e = parse("[cache]\nmemory = \"lots\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cache.memory"), "{e}");
    let e = parse("[http]\nmax_connections = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("http.max_connections"), "{e}");
    let e = parse("[nbd]\nhandshake_timeout = 0\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nbd.handshake_timeout") && e.contains("greater than 0"),
        "{e}"
    );
    let e = parse("[http]\nidle_timeout = 99999999999\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("longer than a year"), "{e}");
}

#[test]
fn missing_snapshot_file_is_an_error() {
    let e = parse("[[snapshot]]\nname = \"a\"\npath = \"missing.hxz\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("snapshot[0].path") && e.contains("/nonexistent/missing.hxz"),
        "{e}"
    );
}

#[test]
fn duplicate_and_invalid_names_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.hxz");
    std::fs::write(&f, b"x").unwrap();
    let cfg = dir.path().join("c.toml");
    let text = format!(
        "[[snapshot]]\nname = \"a\"\npath = \"{0}\"\n[[snapshot]]\nname = \"a\"\npath = \"{0}\"\n",
        f.display()
    );
    let e = Config::parse(&text, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("snapshot[1].name") && e.contains("duplicate"),
        "{e}"
    );
    let text = format!(
        "[[snapshot]]\nname = \"disk\"\npath = \"{}\"\n",
        f.display()
    );
    let e = Config::parse(&text, &cfg).unwrap_err().to_string();
    assert!(e.contains("snapshot[0].name"), "{e}");
    // Relative paths are relative to the config file's directory.
    let c = Config::parse("[[snapshot]]\nname = \"a\"\npath = \"a.hxz\"\n", &cfg).unwrap();
    assert_eq!(c.snapshots[0].path, f);
}

#[test]
fn the_shipped_sample_config_is_valid_and_shows_the_defaults() {
    let text = include_str!("../../../etc/hexzd/hexzd.toml");
    let c = Config::parse(text, Path::new("/etc/hexzd/hexzd.toml")).unwrap();
    assert_eq!(Config { file: None, ..c }, Config::default());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration(" 0 "), Ok(Duration::ZERO));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
    for bad in ["", "x", "-1", "30 parsecs", "s", "1.5.2s"] {
        let e = parse_duration(bad).unwrap_err();
        assert!(e.contains(&format!("{bad:?}")) && !e.contains('\n'), "{e}");
    }
    assert!(
        parse_duration("x")
            .unwrap_err()
            .contains("expected e.g. 30")
    );
    for long in ["99999999999999999999", "99999999999999999999h"] {
        assert_eq!(parse_duration(long), Err(format!("{long:?} is too long")));
    }
}

#[test]
fn overrides_replace_the_file_before_validation_and_errors_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[http]\nlisten = [\"127.0.0.1:1\"]\nmax_range_bytes = 5\n[cache]\nworkers = 3\n",
    )
    .unwrap();
    let ov = Overrides {
        http_listen: Some(Vec::new()),
        max_range_bytes: Some(7),
        workers: Some(4),
        ..Overrides::default()
    };
    let c = Config::load(Some(&cfg), &ov).unwrap();
    assert!(c.http.listen.is_empty());
    assert_eq!(c.http.settings.max_range_bytes, 7);
    assert_eq!(c.cache.workers, 4);
    // The file's value would be valid; the flag's is not, and the error says which.
    let ov = Overrides {
        workers: Some(MAX_WORKERS + 1),
        ..Overrides::default()
    };
    let e = Config::load(Some(&cfg), &ov).unwrap_err().to_string();
    assert!(e.starts_with("--workers: "), "{e}");
    let e = Config::load(None, &ov).unwrap_err().to_string();
    assert!(e.starts_with("--workers: "), "{e}");
}

#[test]
fn secrets_are_read_in_the_config_step_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "  s3cret \nsecond line\n").unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let archive = dir.path().join("a.hxz");
    std::fs::write(&archive, b"x").unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[http]\nauth_token_file = \"token\"\n[[snapshot]]\nname = \"a\"\npath = \"a.hxz\"\npassword_file = \"pw\"\n",
    )
    .unwrap();
    let ov = Overrides {
        archives: vec![format!("{}=b", archive.display())],
        password_file: Some(pw.clone()),
        ..Overrides::default()
    };
    let c = Config::load(Some(&cfg), &ov).unwrap();
    assert_eq!(c.http.settings.auth_token.as_deref(), Some("s3cret"));
    assert_eq!(c.snapshots.len(), 2);
    for s in &c.snapshots {
        assert_eq!(
            s.password.as_ref().map(Secret::expose),
            Some(&b"hunter2"[..])
        );
    }
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("hunter2"),
        "{shown}"
    );

    std::fs::write(&token, "\n").unwrap();
    let e = Config::load(Some(&cfg), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("http.auth_token_file") && e.contains("empty"),
        "{e}"
    );
    let ov = Overrides {
        auth_token_file: Some(dir.path().join("missing")),
        ..Overrides::default()
    };
    let e = Config::load(None, &ov).unwrap_err().to_string();
    assert!(
        e.starts_with("--auth-token-file: ") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn fifos_anywhere_in_the_config_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = Config::load(Some(&fifo), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a FIFO, not a config file"), "{e}");
    for text in [
        "[[snapshot]]\nname = \"a\"\npath = \"fifo\"\n",
        "[http]\nauth_token_file = \"fifo\"\n",
    ] {
        let e = Config::parse(text, &dir.path().join("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a FIFO"), "{e}");
    }
    let ov = Overrides {
        archives: vec!["x.hxz".into()],
        password_file: Some(fifo.clone()),
        ..Overrides::default()
    };
    let e = Config::load(None, &ov).unwrap_err().to_string();
    assert!(
        e.starts_with("--password-file: ") && e.contains("is a FIFO"),
        "{e}"
    );
}

#[test]
fn archive_arguments_come_after_the_files_snapshots() {
    let ov = Overrides {
        archives: vec!["/x/one.hxz".into(), "/y/two.hxz=second".into()],
        ..Overrides::default()
    };
    let c = Config::load(None, &ov).unwrap();
    let names: Vec<&str> = c.snapshots.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["one", "second"]);
    let ov = Overrides {
        archives: vec!["disk.hxz".into()],
        ..Overrides::default()
    };
    assert!(matches!(
        Config::load(None, &ov),
        Err(ConfigError::Argument(_))
    ));
}

#[test]
fn remote_sections_are_validated_and_name_the_key() {
    let c = parse(
        "[cache]\ndisk = \"cache\"\ndisk_size = \"1GiB\"\n[remote]\nallow_origins = [\"HTTPS://Mirror.Example:443/\", \"s3://other\"]\nretries = 1\nread_timeout = \"2s\"\n[s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\n[[snapshot]]\nname = \"r\"\npath = \"https://h/x.hxz\"\n",
    )
    .unwrap();
    assert_eq!(
        c.remote.disk,
        Some((Path::new("/nonexistent/cache").to_path_buf(), 1 << 30))
    );
    assert_eq!(
        c.remote.allow_origins,
        ["https://mirror.example", "s3://other"]
    );
    assert_eq!(c.remote.retries, 1);
    assert_eq!(c.remote.read_timeout, Duration::from_secs(2));
    assert_eq!(c.remote.s3.region, "eu-west-1");
    assert!(c.remote.s3.path_style);
    // A URL is not resolved against the config file's directory.
    assert_eq!(c.snapshots[0].path, Path::new("https://h/x.hxz"));
    for (text, key) in [
        (
            "[remote]\nallow_origins = [\"https://h/path\"]\n",
            "remote.allow_origins[0]",
        ),
        ("[remote]\nretries = 99\n", "remote.retries"),
        ("[cache]\ndisk_size = \"1GiB\"\n", "cache.disk_size"),
        (
            "[cache]\ndisk = \"/tmp\"\ndisk_size = 10\n",
            "cache.disk_size",
        ),
        ("[s3]\nendpoint = \"ftp://x\"\n", "s3"),
        ("[s3]\nbucket = \"x\"\n", "bucket"),
        (
            "[[snapshot]]\nname = \"r\"\npath = \"gopher://h/x\"\n",
            "snapshot[0].path",
        ),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn limits_have_defaults_units_and_reach_the_front_ends() {
    let d = parse("").unwrap();
    assert_eq!(d.limits.buffer_memory, 256 << 20);
    assert_eq!(d.limits.send_timeout, Duration::from_secs(30));
    assert_eq!(
        d.limits.max_connections_per_client,
        PerClientCap {
            limit: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            local_exempt: true
        }
    );
    let c = parse(
        "[limits]\nbuffer_memory = \"64MiB\"\nsend_timeout = \"1500ms\"\nmax_connections_per_client = 3\n",
    )
    .unwrap();
    assert_eq!(c.limits.buffer_memory, 64 << 20);
    assert_eq!(c.http.settings.send_timeout, Duration::from_millis(1500));
    assert_eq!(c.nbd.settings.send_timeout, Duration::from_millis(1500));
    assert_eq!(
        c.limits.max_connections_per_client,
        PerClientCap {
            limit: 3,
            local_exempt: false
        }
    );
    for (text, needle) in [
        (
            "[limits]\nbuffer_memory = \"4KiB\"\n",
            "limits.buffer_memory",
        ),
        ("[limits]\nsend_timeout = 0\n", "limits.send_timeout"),
        (
            "[limits]\nmax_connections_per_client = -1\n",
            "max_connections_per_client",
        ),
        ("[limits]\nsend_buffer = 1\n", "send_buffer"),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn tls_users_need_certificates_and_name_the_key_or_flag() {
    let e = parse("[http]\nlisten_tls = [\"127.0.0.1:0\"]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "/nonexistent/hexzd.toml: http.listen_tls: HTTPS listeners need certificates"
        ),
        "{e}"
    );
    let e = parse("[nbd]\ntls = \"require\"\n").unwrap_err().to_string();
    assert!(
        e.contains("nbd.tls: NBD over TLS needs certificates"),
        "{e}"
    );
    let e = parse("[nbd]\ntls = \"maybe\"\n").unwrap_err().to_string();
    assert!(
        e.contains("nbd.tls: \"maybe\" is not a TLS mode (off, on or require)"),
        "{e}"
    );
    let e = parse("[tls]\nverify_peer = true\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tls.verify_peer: checking client certificates needs"),
        "{e}"
    );
    let ov = Overrides {
        https_listen: Some(vec!["127.0.0.1:0".into()]),
        ..Overrides::default()
    };
    let e = Config::load(None, &ov).unwrap_err().to_string();
    assert!(
        e.starts_with("--https: HTTPS listeners need certificates"),
        "{e}"
    );
    // Off and unused: fine, and the defaults.
    let c = parse("[nbd]\ntls = \"off\"\n").unwrap();
    assert_eq!(c.nbd.settings.tls, crate::nbd::TlsMode::Off);
    assert!(c.http.listen_tls.is_empty() && c.tls.is_none());
}

#[test]
fn the_certificate_directory_is_relative_to_the_file_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hexzd.toml");
    std::fs::write(&cfg, "[tls]\ncertificates = \"tls\"\n").unwrap();
    let e = Config::load(Some(&cfg), &Overrides::default())
        .unwrap_err()
        .to_string();
    let want = format!(
        "{}: tls.certificates: {}: cannot open the certificate directory",
        cfg.display(),
        dir.path().join("tls").display()
    );
    assert!(e.starts_with(&want), "{e}");
}
