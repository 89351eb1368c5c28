//! `hexzd verify ARCHIVE`: every block checked; bad blocks listed with their stream offsets on
//! stdout; exit status 1 when any is bad.

use std::io::IsTerminal;

use super::{CommandError, open_uncached};
use crate::cli::VerifyArgs;

/// Verifies the archive and prints the result.
pub fn run(args: &VerifyArgs) -> Result<(), CommandError> {
    let snap = open_uncached(&args.archive, &args.password)?;
    let tty = std::io::stderr().is_terminal();
    let report = snap.verify(|done, total| {
        if tty {
            eprint!("\rverifying: {done} of {total} blocks");
        }
    })?;
    if tty {
        eprintln!();
    }
    for b in &report.bad {
        match b.block {
            Some(n) => println!(
                "BAD {} stream block {n} at stream offset {}: {}",
                b.stream, b.offset, b.error
            ),
            None => println!(
                "BAD {} stream at stream offset {}: {}",
                b.stream, b.offset, b.error
            ),
        }
    }
    println!(
        "{}: {} blocks checked ({} decoded, {} parent references): {}",
        // The path, or the URL without credentials.
        snap.path().display(),
        report.blocks,
        report.decoded,
        report.parent_refs,
        if report.ok() {
            "OK".to_string()
        } else {
            format!("{} BAD", report.bad.len())
        }
    );
    if report.ok() {
        Ok(())
    } else {
        Err(CommandError::BadBlocks(report.bad.len()))
    }
}
