//! `hexzd pack INPUT OUTPUT`: argument mapping and the closing summary line.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;

use super::{CommandError, cli_password};
use crate::cli::PackArgs;
use crate::pack::{PackOptions, pack};

/// A flag that SIGINT, SIGTERM and SIGHUP set while `pack` runs, so that it stops at the next
/// block and removes its temporary file instead of leaving it behind. A second signal ends
/// the process at once, as the first would have without this. `None` (the signals keep
/// their default action) if the handlers cannot be installed.
fn stop_flag() -> Option<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // The conditional exit is registered first, so it sees the flag before this signal
        // sets it: only a second signal exits.
        flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flag)).ok()?;
        flag::register(sig, Arc::clone(&flag)).ok()?;
    }
    Some(flag)
}

/// Runs `pack` and prints a one-line summary on stderr.
pub fn run(args: &PackArgs) -> Result<(), CommandError> {
    let password = cli_password(&args.password)?;
    if args.encrypt && password.is_none() {
        return Err(CommandError::NoPassword);
    }
    let options = PackOptions {
        compression: Some(args.compression.into()),
        block_size: Some(args.block_size),
        aux: args.aux.clone(),
        base: args.base.clone(),
        // An encrypted base needs the password even when the output is not encrypted.
        base_password: password.clone(),
        password: if args.encrypt { password } else { None },
        force: args.force,
        workers: args.workers,
        progress: true,
        stop: stop_flag(),
    };
    let start = std::time::Instant::now();
    let s = pack(&args.input, &args.output, &options)?;
    let secs = start.elapsed().as_secs_f64().max(1e-6);
    let input = s.main_bytes + s.aux_bytes;
    crate::logging::to_stderr(&format!(
        "packed {} bytes into {} ({} bytes, ratio {:.2}): {} blocks, {} sparse, {} deduplicated, {} parent references, {:.1} MiB/s\n",
        input,
        args.output.display(),
        s.archive_bytes,
        input as f64 / s.archive_bytes.max(1) as f64,
        s.blocks,
        s.sparse,
        s.deduplicated,
        s.parent_refs,
        input as f64 / secs / (1024.0 * 1024.0),
    ));
    Ok(())
}
