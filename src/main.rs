//! The `hexzd` binary: parses arguments, runs one command, and maps its error to an exit status
//! (1 for failures, 2 for usage errors, which clap reports itself).

use std::process::ExitCode;

use clap::Parser;
use hexzd::cli::{Cli, Command};
use hexzd::commands;

fn main() -> ExitCode {
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `verify` has already listed the bad blocks on stdout.
        Err(e @ commands::CommandError::BadBlocks(_)) => {
            eprintln!("hexzd: verify: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            hexzd::logging::fatal(&format!("hexzd: {e}"));
            ExitCode::FAILURE
        }
    }
}
