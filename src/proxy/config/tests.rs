//! The config.json contract (nbd-proxy.md §4–§6, §13), row by row.

use super::*;

fn parse(text: &str) -> Result<ProxyConfig, Option<ConfigError>> {
    ProxyConfig::parse(text)
}

fn err(text: &str) -> ConfigError {
    parse(text)
        .unwrap_err()
        .expect("a config error, not an unreadable file")
}

const SAMPLE: &str = r#"{
    "timeout": 30,
    "configurations": {
        "0": {
            "nbd-device": "/dev/nbd0",
            "metadata": {
                "description": "Virtual media device"
            }
        },
        "1": {
            "nbd-device": "/dev/nbd1",
            "metadata": {
                "description": "Dump Offload"
            }
        }
    }
}"#;

#[test]
fn the_sample_configuration_and_its_metadata_line() {
    let c = parse(SAMPLE).unwrap();
    assert_eq!(c.timeout, 30);
    assert_eq!(c.configurations.len(), 2);
    assert_eq!(c.default, None);
    assert_eq!(
        c.metadata_json(),
        r#"{ "0": { "description": "Virtual media device" }, "1": { "description": "Dump Offload" } }"#
    );
}

#[test]
fn metadata_that_is_not_an_object_is_null() {
    let c = parse(
        r#"{"configurations":{"a":{"nbd-device":"/dev/nbd0","metadata":[1]},
            "b":{"nbd-device":"/dev/nbd1"},"c":{"nbd-device":"/dev/nbd2","metadata":{}}}}"#,
    )
    .unwrap();
    assert_eq!(c.metadata_json(), r#"{ "a": null, "b": null, "c": { } }"#);
    assert_eq!(
        parse(r#"{"configurations":{}}"#).unwrap().metadata_json(),
        "{ }"
    );
}

#[test]
fn metadata_keeps_slashes_escaped_utf8_raw_and_doubles_as_written() {
    let c = parse(
        r#"{"configurations":{"x/y":{"nbd-device":"/dev/nbd0",
            "metadata":{"path":"/a/b","name":"caf\u00e9","size":12.50,"big":1e3,"one":1.0,
            "n":-0,"list":[],"obj":{"k":[1,"\n"]}}}}}"#,
    )
    .unwrap();
    assert_eq!(
        c.metadata_json(),
        "{ \"x\\/y\": { \"path\": \"\\/a\\/b\", \"name\": \"café\", \"size\": 12.50, \"big\": 1e3, \
         \"one\": 1.0, \"n\": 0, \"list\": [ ], \"obj\": { \"k\": [ 1, \"\\n\" ] } } }"
    );
}

#[test]
fn duplicate_configurations_last_wins_at_the_first_position() {
    let c = parse(
        r#"{"configurations":{"a":{"nbd-device":"/dev/nbd0"},"b":{"nbd-device":"/dev/nbd1"},
            "a":{"nbd-device":"/dev/nbd2","metadata":{"v":2}}}}"#,
    )
    .unwrap();
    let names: Vec<_> = c.configurations.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.configurations[0].nbd_device, "/dev/nbd2");
    assert_eq!(c.metadata_json(), r#"{ "a": { "v": 2 }, "b": null }"#);
}

#[test]
fn timeout_default_and_coercions() {
    let t = |v: &str| {
        parse(&format!(r#"{{"timeout":{v},"configurations":{{}}}}"#))
            .unwrap()
            .timeout
    };
    assert_eq!(parse(r#"{"configurations":{}}"#).unwrap().timeout, 30);
    assert_eq!(t("45"), 45);
    assert_eq!(t("-5"), -5);
    assert_eq!(t("12.7"), 12);
    assert_eq!(t(r#""45x""#), 45);
    assert_eq!(t(r#""  7""#), 7);
    for zero in [r#""abc""#, r#""""#, "null", "{}", "[]", "false"] {
        assert_eq!(t(zero), 0, "{zero}");
    }
    assert_eq!(t("true"), 1);
    assert_eq!(t("99999999999"), 2147483647);
    assert_eq!(t("1e30"), 2147483647);
    assert_eq!(t("-1e30"), -2147483648);
}

#[test]
fn negative_timeouts_become_none_with_a_warning() {
    let c = parse(r#"{"timeout":-5,"configurations":{}}"#).unwrap();
    let (t, warning) = c.kernel_timeout();
    assert_eq!(t, 0);
    assert_eq!(
        warning.as_deref(),
        Some("timeout -5 is negative; running without a timeout")
    );
    assert_eq!(parse(SAMPLE).unwrap().kernel_timeout(), (30, None));
}

#[test]
fn default_truthiness() {
    let flagged = |v: &str| {
        let c = parse(&format!(
            r#"{{"configurations":{{"a":{{"nbd-device":"/dev/nbd0","default":{v}}},
                "b":{{"nbd-device":"/dev/nbd1"}}}}}}"#
        ))
        .unwrap();
        c.default == Some(0)
    };
    for yes in ["true", "1", "0.5", r#""false""#, r#""0""#] {
        assert!(flagged(yes), "{yes}");
    }
    for no in ["false", "0", "0.0", r#""""#, "{}", "[]", "null"] {
        assert!(!flagged(no), "{no}");
    }
}

#[test]
fn a_single_configuration_is_the_default_whatever_its_flag() {
    let c =
        parse(r#"{"configurations":{"only":{"nbd-device":"/dev/nbd0","default":false}}}"#).unwrap();
    assert_eq!(c.default, Some(0));
}

#[test]
fn unreadable_documents() {
    for bad in [
        "",
        "null",
        "{",
        "\u{feff}{}",
        "{\"configurations\":{},}",
        "// c\n{}",
    ] {
        assert_eq!(parse(bad).unwrap_err(), None, "{bad:?}");
    }
    let e = ConfigError::Unreadable("/etc/nbd-proxy/config.json".into());
    // The message carries its own newline, so the original prints an empty line after it,
    // and no "failed to load" line.
    assert_eq!(
        e.lines(Path::new("/etc/nbd-proxy/config.json")),
        ["can't read configuration from /etc/nbd-proxy/config.json\n"]
    );
}

#[test]
fn error_rows_in_file_order() {
    let p = Path::new("/c.json");
    let lines = |text: &str| err(text).lines(p);
    let failed = "failed to load config from /c.json";
    assert_eq!(lines("[]"), ["no configurations specified", failed]);
    assert_eq!(lines("5\n"), ["no configurations specified", failed]);
    assert_eq!(lines("\"x\""), ["no configurations specified", failed]);
    // A bare literal ending the file is unreadable to json-c.
    for bare in ["5", "true", "1.5", "-1"] {
        assert_eq!(parse(bare).unwrap_err(), None, "{bare}");
    }
    assert_eq!(
        lines(r#"{"timeout":1}"#),
        ["no configurations specified", failed]
    );
    assert_eq!(
        lines(r#"{"configurations":[]}"#),
        ["invalid configurations format", failed]
    );
    assert_eq!(
        lines(r#"{"configurations":{"a":{}}}"#),
        ["config a doesn't specify a nbd-device", failed]
    );
    assert_eq!(
        lines(r#"{"configurations":{"a":"x"}}"#),
        ["config a doesn't specify a nbd-device", failed]
    );
    assert_eq!(
        lines(r#"{"configurations":{"a":{"nbd-device":0}}}"#),
        ["config a has invalid nbd-device", failed]
    );
    assert_eq!(
        lines(
            r#"{"configurations":{"a":{"nbd-device":"/d","default":1},
                "b":{"nbd-device":"/d","default":true}}}"#
        ),
        ["multiple configs flagged as default: Success", failed]
    );
    // The first bad entry wins.
    assert_eq!(
        lines(r#"{"configurations":{"a":{"nbd-device":null},"b":{}}}"#),
        ["config a has invalid nbd-device", failed]
    );
}

#[test]
fn hexzd_snapshot_keys() {
    let c = parse(
        r#"{"configurations":{"a":{"nbd-device":"/dev/nbd0","snapshot":"/s/a.hxz",
            "stream":"aux","password-file":"/s/pw"},"b":{"nbd-device":"/dev/nbd1",
            "snapshot":"b.hxz"}}}"#,
    )
    .unwrap();
    assert_eq!(
        c.configurations[0].local,
        Some(LocalSource {
            snapshot: "/s/a.hxz".into(),
            stream: Stream::Aux,
            password_file: Some("/s/pw".into()),
        })
    );
    assert_eq!(
        c.configurations[1].local.as_ref().unwrap().stream,
        Stream::Main
    );
    let e = err(r#"{"configurations":{"a":{"nbd-device":"/d","snapshot":5}}}"#);
    assert_eq!(e.to_string(), "config a has invalid snapshot (a path)");
    let e = err(r#"{"configurations":{"a":{"nbd-device":"/d","snapshot":"x","stream":"disk"}}}"#);
    assert_eq!(
        e.to_string(),
        "config a has invalid stream (\"main\" or \"aux\")"
    );
    let e = err(r#"{"configurations":{"a":{"nbd-device":"/d","stream":"main"}}}"#);
    assert!(
        e.to_string().starts_with("config a has invalid snapshot"),
        "{e}"
    );
}

fn two(dev_a: &str) -> ProxyConfig {
    parse(&format!(
        r#"{{"configurations":{{"a":{{"nbd-device":"{dev_a}"}},
            "b":{{"nbd-device":"/dev/null","default":true}}}}}}"#
    ))
    .unwrap()
}

#[test]
fn selection_messages() {
    let c = parse(SAMPLE).unwrap();
    assert_eq!(
        c.select(None).unwrap_err().to_string(),
        "no config specified, and no default"
    );
    assert_eq!(
        c.select(Some("A")).unwrap_err().to_string(),
        "no such configuration 'A'"
    );
    let c = two("/nonexistent/nbd0");
    assert_eq!(
        c.select(Some("a")).unwrap_err().to_string(),
        "can't stat nbd device /nonexistent/nbd0: No such file or directory"
    );
    // The default is chosen without a name; /dev/null is a character device.
    assert_eq!(
        c.select(None).unwrap_err().to_string(),
        "specified nbd path /dev/null isn't a block device: Success"
    );
}

#[test]
fn any_block_device_passes_the_device_check() {
    let Some(loop0) = ["/dev/loop0", "/dev/loop-control"].into_iter().find(|p| {
        std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        })
    }) else {
        eprintln!("SKIP: no block device node to check against");
        return;
    };
    let c = two(loop0);
    let (conf, devnum) = c.select(Some("a")).unwrap();
    assert_eq!(conf.name, "a");
    assert_eq!(devnum.major, 7);
}

#[test]
fn load_refuses_missing_files_directories_and_fifos() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    assert_eq!(
        ProxyConfig::load(&missing).unwrap_err(),
        ConfigError::Unreadable(missing.clone())
    );
    assert!(matches!(
        ProxyConfig::load(dir.path()),
        Err(ConfigError::Unreadable(_))
    ));
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(matches!(
        ProxyConfig::load(&fifo),
        Err(ConfigError::Unreadable(_))
    ));
    let good = dir.path().join("c.json");
    std::fs::write(&good, SAMPLE).unwrap();
    assert_eq!(ProxyConfig::load(&good).unwrap().configurations.len(), 2);
}
