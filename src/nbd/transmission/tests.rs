//! `validate`, one clause per test.
use super::*;

fn req(command: u16, flags: u16, offset: u64, length: u32) -> Request {
    Request {
        flags,
        command,
        cookie: 1,
        offset,
        length,
    }
}

const SIMPLE: Limits = Limits {
    size: 1 << 20,
    structured: false,
    base_allocation: None,
};
const STRUCTURED: Limits = Limits {
    size: 1 << 20,
    structured: true,
    base_allocation: Some(1),
};

fn errno(r: Result<Command, Refusal>) -> u32 {
    r.err().map_or(0, |r| r.error)
}

#[test]
fn read_in_range_is_valid_and_past_the_end_is_einval() {
    assert_eq!(
        validate(&req(NBD_CMD_READ, 0, 0, 4096), &SIMPLE),
        Ok(Command::Read {
            offset: 0,
            length: 4096,
            df: false
        })
    );
    assert!(validate(&req(NBD_CMD_READ, 0, (1 << 20) - 1, 1), &SIMPLE).is_ok());
    assert!(validate(&req(NBD_CMD_READ, 0, 1 << 20, 0), &SIMPLE).is_ok());
    assert_eq!(
        errno(validate(&req(NBD_CMD_READ, 0, 1 << 20, 1), &SIMPLE)),
        NBD_EINVAL
    );
    assert_eq!(
        errno(validate(&req(NBD_CMD_READ, 0, (1 << 20) - 1, 2), &SIMPLE)),
        NBD_EINVAL
    );
    assert_eq!(
        errno(validate(&req(NBD_CMD_READ, 0, u64::MAX, 2), &SIMPLE)),
        NBD_EINVAL
    );
}

#[test]
fn read_over_32_mib_is_einval() {
    let big = Limits {
        size: 1 << 40,
        ..SIMPLE
    };
    assert!(validate(&req(NBD_CMD_READ, 0, 0, 32 << 20), &big).is_ok());
    assert_eq!(
        errno(validate(&req(NBD_CMD_READ, 0, 0, (32 << 20) + 1), &big)),
        NBD_EINVAL
    );
}

#[test]
fn df_only_with_structured_replies() {
    assert_eq!(
        errno(validate(&req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1), &SIMPLE)),
        NBD_EINVAL
    );
    assert_eq!(
        validate(&req(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1), &STRUCTURED),
        Ok(Command::Read {
            offset: 0,
            length: 1,
            df: true
        })
    );
    assert_eq!(
        errno(validate(
            &req(NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 1),
            &STRUCTURED
        )),
        NBD_EINVAL
    );
}

#[test]
fn writes_are_eperm_and_bad_flags_einval() {
    assert_eq!(
        errno(validate(&req(NBD_CMD_WRITE, 0, 0, 512), &SIMPLE)),
        NBD_EPERM
    );
    assert_eq!(
        errno(validate(&req(NBD_CMD_TRIM, 0, 0, 512), &SIMPLE)),
        NBD_EPERM
    );
    assert_eq!(
        errno(validate(
            &req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 0, 512),
            &SIMPLE
        )),
        NBD_EPERM
    );
    assert_eq!(
        errno(validate(
            &req(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 512),
            &SIMPLE
        )),
        NBD_EINVAL
    );
    assert_eq!(
        errno(validate(
            &req(NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 512),
            &SIMPLE
        )),
        NBD_EINVAL
    );
}

#[test]
fn flush_is_a_no_op_only_without_offset_and_length() {
    assert_eq!(
        validate(&req(NBD_CMD_FLUSH, 0, 0, 0), &SIMPLE),
        Ok(Command::Flush)
    );
    assert_eq!(
        errno(validate(&req(NBD_CMD_FLUSH, 0, 1, 0), &SIMPLE)),
        NBD_EINVAL
    );
    assert_eq!(
        errno(validate(&req(NBD_CMD_FLUSH, 0, 0, 1), &SIMPLE)),
        NBD_EINVAL
    );
}

#[test]
fn cache_in_range_only() {
    assert!(validate(&req(NBD_CMD_CACHE, 0, 0, 1 << 20), &SIMPLE).is_ok());
    assert_eq!(
        errno(validate(&req(NBD_CMD_CACHE, 0, 1, 1 << 20), &SIMPLE)),
        NBD_EINVAL
    );
}

#[test]
fn block_status_needs_a_negotiated_context() {
    assert_eq!(
        errno(validate(&req(NBD_CMD_BLOCK_STATUS, 0, 0, 512), &SIMPLE)),
        NBD_EINVAL
    );
    assert_eq!(
        validate(
            &req(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 512),
            &STRUCTURED
        ),
        Ok(Command::BlockStatus {
            offset: 0,
            length: 512,
            req_one: true,
            context: 1
        })
    );
    assert_eq!(
        errno(validate(&req(NBD_CMD_BLOCK_STATUS, 0, 0, 0), &STRUCTURED)),
        NBD_EINVAL
    );
    assert_eq!(
        errno(validate(
            &req(NBD_CMD_BLOCK_STATUS, 0, 1 << 20, 1),
            &STRUCTURED
        )),
        NBD_EINVAL
    );
}

#[test]
fn unknown_commands_are_einval_and_disc_is_accepted() {
    assert_eq!(
        errno(validate(&req(NBD_CMD_RESIZE, 0, 0, 0), &SIMPLE)),
        NBD_EINVAL
    );
    assert_eq!(errno(validate(&req(77, 0, 0, 0), &SIMPLE)), NBD_EINVAL);
    assert_eq!(
        validate(&req(NBD_CMD_DISC, 0, 0, 0), &SIMPLE),
        Ok(Command::Disc)
    );
}
