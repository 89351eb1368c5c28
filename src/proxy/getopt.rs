//! The command line of the binary invoked as `nbd-proxy` (nbd-proxy.md §3): the original's
//! `getopt_long(argc, argv, "h", {help, metadata})` as glibc implements it, byte for byte.
//!
//! Why not clap: scripts and bmcweb see getopt's behaviour and diagnostics (`nbd-proxy:
//! unrecognized option '--x'`, `argv[0]` exactly as invoked, unambiguous prefixes such as
//! `--meta`, options after operands, `--`, `POSIXLY_CORRECT` stopping at the first operand),
//! which clap does not reproduce. This is a small pure function instead.
//!
//! hexzd adds `--config FILE` and `--state-hook FILE`. They are matched by their full name only,
//! never as abbreviations, so every command line without them parses exactly as the
//! original's (`--c` stays an unrecognized option, and the ambiguity list of `--=` is the same).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// What a command line asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// `--metadata`.
    pub metadata: bool,
    /// The first operand: the configuration name.
    pub name: Option<OsString>,
    /// `--config FILE` (hexzd).
    pub config: Option<PathBuf>,
    /// `--state-hook FILE` (hexzd).
    pub state_hook: Option<PathBuf>,
}

/// The outcome of parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Run with these settings.
    Run(Invocation),
    /// `-h`/`--help`: usage on stderr, exit 0.
    Help,
    /// A getopt error (diagnostic already produced): usage on stderr, exit 1.
    Error,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Opt {
    Help,
    Metadata,
    Config,
    StateHook,
}

/// Long options: name, takes an argument, may be abbreviated.
const LONG: [(&str, Opt, bool, bool); 4] = [
    ("help", Opt::Help, false, true),
    ("metadata", Opt::Metadata, false, true),
    ("config", Opt::Config, true, false),
    ("state-hook", Opt::StateHook, true, false),
];

/// The usage text, three lines, with `argv[0]` as invoked.
pub fn usage(argv0: &OsStr) -> Vec<u8> {
    let a = argv0.as_bytes();
    let mut v = b"usage:\n\t".to_vec();
    v.extend_from_slice(a);
    v.extend_from_slice(b" [configuration]\n\t");
    v.extend_from_slice(a);
    v.extend_from_slice(b" --metadata\n");
    v
}

/// Parses `argv` (with `argv[0]`); appends getopt's diagnostics to `diag`. `posixly_correct`:
/// whether `POSIXLY_CORRECT` is in the environment.
pub fn parse(argv: &[OsString], posixly_correct: bool, diag: &mut Vec<u8>) -> Parsed {
    let argv0 = argv.first().map_or(&b""[..], |a| a.as_bytes());
    let mut say = |parts: &[&[u8]]| {
        diag.extend_from_slice(argv0);
        diag.extend_from_slice(b": ");
        for p in parts {
            diag.extend_from_slice(p);
        }
        diag.push(b'\n');
    };
    let mut inv = Invocation::default();
    let mut operands: Vec<&OsString> = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].as_bytes();
        i += 1;
        if arg == b"--" {
            operands.extend(&argv[i..]);
            break;
        }
        if arg.len() < 2 || arg[0] != b'-' {
            operands.push(&argv[i - 1]);
            if posixly_correct {
                // REQUIRE_ORDER: the first operand ends option processing.
                break;
            }
            continue;
        }
        let Some(next) = arg.strip_prefix(b"--") else {
            // A cluster of short options; only `h` exists and takes no argument, so the first
            // character decides.
            if arg[1] == b'h' {
                return Parsed::Help;
            }
            say(&[b"invalid option -- '", &arg[1..2], b"'"]);
            return Parsed::Error;
        };
        let (name, value) = match next.iter().position(|&b| b == b'=') {
            Some(eq) => (&next[..eq], Some(&next[eq + 1..])),
            None => (next, None),
        };
        let exact = LONG.iter().find(|o| o.0.as_bytes() == name);
        let found = match exact {
            Some(o) => o,
            None => {
                let matches: Vec<_> = LONG
                    .iter()
                    .filter(|o| o.3 && o.0.as_bytes().starts_with(name))
                    .collect();
                match matches[..] {
                    [] => {
                        say(&[b"unrecognized option '--", next, b"'"]);
                        return Parsed::Error;
                    }
                    [one] => one,
                    _ => {
                        let mut parts: Vec<&[u8]> =
                            vec![b"option '--", next, b"' is ambiguous; possibilities:"];
                        for m in &matches {
                            parts.extend([&b" '--"[..], m.0.as_bytes(), b"'"]);
                        }
                        say(&parts);
                        return Parsed::Error;
                    }
                }
            }
        };
        let (long, opt, takes_arg, _) = *found;
        let arg_value = if takes_arg {
            match value {
                Some(v) => Some(OsStr::from_bytes(v).to_os_string()),
                None if i < argv.len() => {
                    i += 1;
                    Some(argv[i - 1].clone())
                }
                None => {
                    say(&[b"option '--", long.as_bytes(), b"' requires an argument"]);
                    return Parsed::Error;
                }
            }
        } else if value.is_some() {
            say(&[
                b"option '--",
                long.as_bytes(),
                b"' doesn't allow an argument",
            ]);
            return Parsed::Error;
        } else {
            None
        };
        match opt {
            Opt::Help => return Parsed::Help,
            Opt::Metadata => inv.metadata = true,
            Opt::Config => inv.config = arg_value.map(PathBuf::from),
            Opt::StateHook => inv.state_hook = arg_value.map(PathBuf::from),
        }
    }
    inv.name = operands.first().map(|s| (*s).clone());
    Parsed::Run(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], posix: bool) -> (Parsed, String) {
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        let mut diag = Vec::new();
        let p = parse(&argv, posix, &mut diag);
        (p, String::from_utf8(diag).unwrap())
    }

    fn ok(args: &[&str]) -> Invocation {
        match run(args, false) {
            (Parsed::Run(i), d) if d.is_empty() => i,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn name(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn usage_has_three_lines_with_argv0_as_invoked() {
        assert_eq!(
            usage(OsStr::new("/usr/bin/nbd-proxy")),
            b"usage:\n\t/usr/bin/nbd-proxy [configuration]\n\t/usr/bin/nbd-proxy --metadata\n"
        );
    }

    #[test]
    fn operands_options_after_operands_and_prefixes() {
        assert_eq!(ok(&["nbd-proxy"]), Invocation::default());
        assert_eq!(ok(&["nbd-proxy", "0", "1"]).name, name("0"));
        let i = ok(&["nbd-proxy", "0", "--meta"]);
        assert!(i.metadata);
        assert_eq!(i.name, name("0"));
        assert!(ok(&["nbd-proxy", "--m"]).metadata);
        assert_eq!(
            ok(&["nbd-proxy", "--", "--metadata"]).name,
            name("--metadata")
        );
        assert_eq!(ok(&["nbd-proxy", "a", "--", "b"]).name, name("a"));
        assert_eq!(ok(&["nbd-proxy", "-"]).name, name("-"));
        assert_eq!(run(&["nbd-proxy", "--h"], false).0, Parsed::Help);
        assert_eq!(run(&["nbd-proxy", "-h"], false).0, Parsed::Help);
        assert_eq!(run(&["nbd-proxy", "-hx"], false).0, Parsed::Help);
        assert_eq!(run(&["nbd-proxy", "x", "--help"], false).0, Parsed::Help);
    }

    #[test]
    fn posixly_correct_stops_at_the_first_operand() {
        let (p, d) = run(&["nbd-proxy", "0", "--metadata", "--bogus"], true);
        assert_eq!(d, "");
        assert_eq!(
            p,
            Parsed::Run(Invocation {
                name: name("0"),
                ..Invocation::default()
            })
        );
        let (p, _) = run(&["nbd-proxy", "--metadata", "0"], true);
        assert!(matches!(p, Parsed::Run(Invocation { metadata: true, .. })));
    }

    #[test]
    fn glibc_diagnostics_use_argv0_as_invoked() {
        let err = |args: &[&str]| {
            let (p, d) = run(args, false);
            assert_eq!(p, Parsed::Error, "{args:?}");
            d
        };
        assert_eq!(
            err(&["/usr/bin/nbd-proxy", "--x"]),
            "/usr/bin/nbd-proxy: unrecognized option '--x'\n"
        );
        assert_eq!(
            err(&["nbd-proxy", "--x=1"]),
            "nbd-proxy: unrecognized option '--x=1'\n"
        );
        assert_eq!(
            err(&["nbd-proxy", "-m"]),
            "nbd-proxy: invalid option -- 'm'\n"
        );
        assert_eq!(
            err(&["nbd-proxy", "--metadata=x"]),
            "nbd-proxy: option '--metadata' doesn't allow an argument\n"
        );
        assert_eq!(
            err(&["nbd-proxy", "--he=1"]),
            "nbd-proxy: option '--help' doesn't allow an argument\n"
        );
        assert_eq!(
            err(&["nbd-proxy", "--=x"]),
            "nbd-proxy: option '--=x' is ambiguous; possibilities: '--help' '--metadata'\n"
        );
        // The first bad option ends parsing; a later --help is not seen.
        assert_eq!(
            err(&["nbd-proxy", "--metadata", "--x", "--help"]),
            "nbd-proxy: unrecognized option '--x'\n"
        );
    }

    #[test]
    fn hexzd_options_need_their_full_name() {
        let i = ok(&[
            "nbd-proxy",
            "--config",
            "/c.json",
            "--state-hook=/hook",
            "n",
        ]);
        assert_eq!(i.config, Some(PathBuf::from("/c.json")));
        assert_eq!(i.state_hook, Some(PathBuf::from("/hook")));
        assert_eq!(i.name, name("n"));
        let (p, d) = run(&["nbd-proxy", "--conf", "x"], false);
        assert_eq!(p, Parsed::Error);
        assert_eq!(d, "nbd-proxy: unrecognized option '--conf'\n");
        let (p, d) = run(&["nbd-proxy", "--config"], false);
        assert_eq!(p, Parsed::Error);
        assert_eq!(d, "nbd-proxy: option '--config' requires an argument\n");
    }
}
