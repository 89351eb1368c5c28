//! `hexzd attach ARCHIVE /dev/nbdX` and `hexzd detach /dev/nbdX`: local snapshots on kernel NBD
//! devices, through `proxy::program`.

use super::cli_password;
use crate::cli::{AttachArgs, DetachArgs};
use crate::proxy::Reporter;
use crate::proxy::program;

/// Runs `hexzd attach`; returns the exit status.
pub fn attach(args: &AttachArgs) -> u8 {
    let report = Reporter::stderr("hexzd");
    let password = match cli_password(&args.password) {
        Ok(p) => p,
        Err(e) => {
            report.say(&e.to_string());
            return 1;
        }
    };
    program::attach(
        program::AttachArgs {
            archive: args.archive.clone(),
            device: args.device.clone(),
            stream: args.stream.into(),
            password,
            timeout: args.timeout,
        },
        &report,
    )
}

/// Runs `hexzd detach`; returns the exit status.
pub fn detach(args: &DetachArgs) -> u8 {
    program::detach(&args.device, &Reporter::stderr("hexzd"))
}
