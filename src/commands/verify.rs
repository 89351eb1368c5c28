//! `hexzd verify ARCHIVE`: every block checked; bad blocks listed with their stream offsets on
//! stdout; exit status 1 when any is bad.

use std::io::IsTerminal;

use super::{CommandError, open_uncached, write_stdout};
use crate::cli::VerifyArgs;

/// Verifies the archive and prints the result.
pub fn run(args: &VerifyArgs) -> Result<(), CommandError> {
    let snap = open_uncached(&args.archive, &args.password)?;
    let tty = std::io::stderr().is_terminal();
    let report = snap.verify(|done, total| {
        if tty {
            crate::logging::to_stderr(&format!("\rverifying: {done} of {total} blocks"));
        }
    })?;
    if tty {
        crate::logging::to_stderr("\n");
    }
    let mut out = String::new();
    for b in &report.bad {
        match b.block {
            Some(n) => out.push_str(&format!(
                "BAD {} stream block {n} at stream offset {}: {}\n",
                b.stream, b.offset, b.error
            )),
            None => out.push_str(&format!(
                "BAD {} stream at stream offset {}: {}\n",
                b.stream, b.offset, b.error
            )),
        }
    }
    out.push_str(&format!(
        "{}: {} blocks checked ({} decoded, {} parent references): {}\n",
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
    ));
    write_stdout(&out)?;
    if report.ok() {
        Ok(())
    } else {
        Err(CommandError::BadBlocks(report.bad.len()))
    }
}
