//! `hexzd serve`: turns the arguments into [`daemon::Options`] and runs the daemon, which owns
//! everything else (config, listeners, signals, reload, drain).

use super::CommandError;
use crate::cli::ServeArgs;
use crate::daemon::{self, Options, Overrides};

/// Runs `hexzd serve` (`--check-config` prints its verdict on stdout).
pub fn run(args: &ServeArgs) -> Result<(), CommandError> {
    if let Some(summary) = daemon::run(options(args))? {
        super::write_stdout(&format!("hexzd: {summary}\n"))?;
    }
    Ok(())
}

/// The daemon's options for `args`. `--http off`, `--https off` and `--nbd off` turn a
/// protocol off; an address given with them still counts.
fn options(args: &ServeArgs) -> Options {
    let listen = |v: &[String]| -> Option<Vec<String>> {
        (!v.is_empty()).then(|| v.iter().filter(|a| a.as_str() != "off").cloned().collect())
    };
    Options {
        config_file: args.config.clone(),
        overrides: Overrides {
            http_listen: listen(&args.http),
            nbd_listen: listen(&args.nbd),
            nbd_unix: (!args.nbd_unix.is_empty()).then(|| args.nbd_unix.clone()),
            auth_token_file: args.auth_token_file.clone(),
            max_range_bytes: args.max_range_bytes,
            cache_memory: args.cache,
            workers: args.workers,
            shutdown_timeout: args.shutdown_timeout,
            archives: args.archives.clone(),
            password_file: args.password.password_file.clone(),
            https_listen: listen(&args.https),
            tls_certificates: args.tls_certificates.clone(),
            tls_verify_peer: args.tls_verify_peer,
            nbd_tls: args.nbd_tls.map(Into::into),
        },
        stdio: args.stdio,
        check_config: args.check_config,
        activated_protocol: args.activated_protocol.map(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Options {
        let cli = crate::cli::Cli::parse_from([&["hexzd", "serve"], args].concat());
        match cli.command {
            crate::cli::Command::Serve(a) => options(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn off_turns_a_protocol_off_and_unset_flags_leave_the_file_alone() {
        let o = parse(&["--http", "off", "--nbd", "off", "--nbd", "[::1]:0", "a.hxz"]);
        assert_eq!(o.overrides.http_listen, Some(vec![]));
        assert_eq!(o.overrides.nbd_listen, Some(vec!["[::1]:0".to_string()]));
        assert_eq!(o.overrides.archives, ["a.hxz"]);
        let o = parse(&["--config", "c.toml"]);
        assert_eq!(o.overrides, Overrides::default());
        assert_eq!(
            o.config_file.as_deref(),
            Some(std::path::Path::new("c.toml"))
        );
    }
}
