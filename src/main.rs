//! The `hexzd` binary: parses arguments, runs one command, and maps its error to an exit status
//! (1 for failures, 2 for usage errors, which clap reports itself).

use std::process::ExitCode;

use clap::Parser;
use hexzd::cli::{Cli, Command};
use hexzd::commands;

fn main() -> ExitCode {
    // Invoked as `nbd-proxy` (a link): the original's command line and messages.
    if let Some(status) = commands::nbd_proxy::dispatch_argv0() {
        return ExitCode::from(status);
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        hexzd::logging::init(log::LevelFilter::Warn);
    }
    let result = match &cli.command {
        Command::Serve(a) => {
            hexzd::logging::init(log::LevelFilter::Info);
            commands::serve::run(a)
        }
        Command::Pack(a) => commands::pack::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Cat(a) => commands::cat::run(a),
        Command::Verify(a) => commands::verify::run(a),
        Command::NbdProxy(a) => return ExitCode::from(commands::nbd_proxy::run(a)),
        Command::Attach(a) => return ExitCode::from(commands::attach::attach(a)),
        Command::Detach(a) => return ExitCode::from(commands::attach::detach(a)),
    };
    // Lines other threads logged last may still be on their way out (logging.rs).
    log::logger().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `verify` has already listed the bad blocks on stdout.
        Err(e @ commands::CommandError::BadBlocks(_)) => {
            hexzd::logging::to_stderr(&format!("hexzd: verify: {e}\n"));
            ExitCode::FAILURE
        }
        Err(e) => {
            hexzd::logging::fatal(&format!("hexzd: {e}"));
            ExitCode::FAILURE
        }
    }
}
