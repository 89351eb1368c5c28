//! `hexzd cat ARCHIVE [--stream main|aux] [--offset N] [--length N]`: raw bytes to stdout.

use std::io::{self, Write};

use super::{CommandError, open_uncached, quiet_pipe};
use crate::cli::CatArgs;
use crate::format::Stream;

/// Read size: large enough that one read spans many blocks and keeps every worker busy.
const CHUNK: usize = 8 << 20;

/// Copies the requested range to stdout. A closed pipe (`| head`) ends the copy quietly.
pub fn run(args: &CatArgs) -> Result<(), CommandError> {
    let snap = open_uncached(&args.archive, &args.password)?;
    let stream: Stream = args.stream.into();
    let size = snap.size(stream);
    if args.offset > size {
        return Err(CommandError::Invalid(format!(
            "offset {} is past the end of the {stream} stream ({size} bytes)",
            args.offset
        )));
    }
    // Past the end is an error whether the offset or the length gets there: never a
    // quietly short output.
    let end = match args.length {
        Some(l) => match args.offset.checked_add(l) {
            Some(end) if end <= size => end,
            _ => {
                return Err(CommandError::Invalid(format!(
                    "offset {} + length {l} is past the end of the {stream} stream ({size} bytes)",
                    args.offset
                )));
            }
        },
        None => size,
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = args.offset;
    while pos < end {
        let want = usize::try_from((end - pos).min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = snap.read_at(stream, pos, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            return quiet_pipe(e);
        }
        pos += n as u64;
    }
    out.flush().or_else(quiet_pipe)
}
