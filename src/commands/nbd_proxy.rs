//! `hexzd nbd-proxy`, and the binary invoked as `nbd-proxy` (design.md §3): both hand over to
//! `proxy::program`, which returns the exit status.

use std::ffi::OsString;

use crate::cli::NbdProxyArgs;
use crate::proxy::program::{self, Options};
use crate::proxy::{Reporter, config};

/// The name the original is installed under.
const NBD_PROXY: &str = "nbd-proxy";

/// When `argv[0]`'s file name is `nbd-proxy`, runs as the original and returns the exit status.
pub fn dispatch_argv0() -> Option<u8> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let argv0 = argv.first()?;
    if program::program_name(argv0) != NBD_PROXY {
        return None;
    }
    crate::logging::init(log::LevelFilter::Warn);
    Some(program::main_argv0(&argv))
}

/// `hexzd nbd-proxy [--config FILE] [--state-hook FILE] [--metadata] [NAME]`.
pub fn run(args: &NbdProxyArgs) -> u8 {
    let argv0 = std::env::args_os().next().unwrap_or_else(|| "hexzd".into());
    let report = Reporter::stderr(program::program_name(&argv0));
    let opts = Options {
        metadata: args.metadata,
        name: args.configuration.clone(),
        config: args.config.clone(),
        state_hook: args.state_hook.clone(),
    };
    debug_assert_eq!(config::DEFAULT_CONFIG, "/etc/nbd-proxy/config.json");
    program::run(&opts, &report)
}
