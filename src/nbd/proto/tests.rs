//! Codec vectors and round trips.
use super::*;

#[test]
fn greeting_matches_the_test_vector() {
    assert_eq!(
        greeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES),
        [
            0x4E, 0x42, 0x44, 0x4D, 0x41, 0x47, 0x49, 0x43, 0x49, 0x48, 0x41, 0x56, 0x45, 0x4F,
            0x50, 0x54, 0x00, 0x03
        ]
    );
}

#[test]
fn option_reply_magic_wire_bytes() {
    let r = option_reply(NBD_OPT_LIST, NBD_REP_ACK, &[]);
    assert_eq!(&r[..8], &[0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
    assert_eq!(&r[8..], &[0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0]);
    let h = OptionReplyHeader::decode(r[..20].try_into().unwrap()).unwrap();
    assert_eq!(h.option, NBD_OPT_LIST);
    assert_eq!(h.reply_type, NBD_REP_ACK);
    assert_eq!(h.length, 0);
}

#[test]
fn option_header_round_trip_and_bad_magic() {
    let h = OptionHeader {
        option: NBD_OPT_GO,
        length: 0xffff_ffff,
    };
    assert_eq!(OptionHeader::decode(&h.encode()), Ok(h));
    let mut b = h.encode();
    b[0] = 0;
    assert!(matches!(
        OptionHeader::decode(&b),
        Err(ProtoError::BadMagic { .. })
    ));
}

#[test]
fn info_request_parses_and_rejects_bad_lengths() {
    let d = encode_info_request("vm/disk", &[NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME]);
    let r = parse_info_request(&d).unwrap();
    assert_eq!(r.name, "vm/disk");
    assert_eq!(r.infos, vec![NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME]);
    // Empty name, zero requests (nbd-client 3.24 without -N).
    assert_eq!(
        parse_info_request(&[0, 0, 0, 0, 0, 0]).unwrap(),
        InfoRequest {
            name: "",
            infos: vec![]
        }
    );
    // Count says 2, only one present.
    let mut bad = encode_info_request("x", &[1]);
    bad[5] = 2;
    assert!(parse_info_request(&bad).is_err());
    // Name length past the data.
    assert!(parse_info_request(&[0, 0, 0, 9, b'a', 0, 0]).is_err());
    // Trailing byte.
    let mut t = encode_info_request("x", &[]);
    t.push(0);
    assert!(parse_info_request(&t).is_err());
    assert!(parse_info_request(&[]).is_err());
    assert_eq!(
        parse_info_request(&[0, 0, 0, 1, 0xff, 0, 0]),
        Err(ProtoError::NotUtf8)
    );
}

#[test]
fn meta_context_request_parses_and_rejects_bad_lengths() {
    let d = encode_meta_context_request("", &[BASE_ALLOCATION, "qemu:dirty-bitmap:x"]);
    let r = parse_meta_context_request(&d).unwrap();
    assert_eq!(r.name, "");
    assert_eq!(r.queries, vec![BASE_ALLOCATION, "qemu:dirty-bitmap:x"]);
    let mut bad = d.clone();
    bad.pop();
    assert!(parse_meta_context_request(&bad).is_err());
    // A huge count with no data must not allocate.
    assert!(parse_meta_context_request(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).is_err());
    let mut trailing = d;
    trailing.push(1);
    assert!(parse_meta_context_request(&trailing).is_err());
}

#[test]
fn request_round_trip_and_bad_magic() {
    let r = Request {
        flags: NBD_CMD_FLAG_DF,
        command: NBD_CMD_READ,
        cookie: 0x0102_0304_0506_0708,
        offset: 4096,
        length: 512,
    };
    let b = r.encode();
    assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
    assert_eq!(Request::decode(&b), Ok(r));
    let mut bad = b;
    bad[3] = 0x14; // 0x25609514, the trace-log magic
    assert!(Request::decode(&bad).is_err());
}

#[test]
fn export_name_reply_has_zeroes_unless_no_zeroes() {
    let r = export_name_reply(1 << 20, 0x0103, false);
    assert_eq!(r.len(), 134);
    assert_eq!(&r[..10], &[0, 0, 0, 0, 0, 0x10, 0, 0, 0x01, 0x03]);
    assert!(r[10..].iter().all(|&b| b == 0));
    assert_eq!(export_name_reply(1, 3, true).len(), 10);
}

#[test]
fn info_payloads_have_their_fixed_lengths() {
    let e = info_export(5, 0x0103);
    assert_eq!(e, [0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x01, 0x03]);
    let b = info_block_size(1, 4096, 32 << 20);
    assert_eq!(b[..2], [0, 3]);
    assert_eq!(b[2..6], [0, 0, 0, 1]);
    assert_eq!(b[6..10], [0, 0, 0x10, 0]);
    assert_eq!(b[10..14], [0x02, 0, 0, 0]);
}

#[test]
fn replies_stay_under_4_kib() {
    let long = "é".repeat(5000);
    assert!(option_error(1, NBD_REP_ERR_UNKNOWN, &long).len() - 20 < 4096);
    assert!(rep_server("n", &long).unwrap().len() < 4096);
    assert!(rep_server(&"n".repeat(4092), "").is_none());
    assert!(info_text(NBD_INFO_DESCRIPTION, &long).len() < 4096);
    assert!(error_chunk(1, NBD_EIO, &long).len() - 20 < 4096);
}

#[test]
fn structured_chunks_encode_as_specified() {
    let h = offset_data_header(NBD_REPLY_FLAG_DONE, 7, 4096, 100);
    assert_eq!(&h[0..4], &[0x66, 0x8e, 0x33, 0xef]);
    assert_eq!(&h[4..8], &[0, 1, 0, 1]);
    assert_eq!(&h[16..20], &108u32.to_be_bytes());
    assert_eq!(&h[20..28], &4096u64.to_be_bytes());
    let hole = offset_hole_chunk(0, 7, 0, 512);
    assert_eq!(&hole[6..8], &[0, 2]);
    assert_eq!(&hole[16..20], &12u32.to_be_bytes());
    let bs = block_status_chunk(
        9,
        1,
        &[WireExtent {
            length: 65536,
            flags: NBD_STATE_HOLE | NBD_STATE_ZERO,
        }],
    );
    assert_eq!(&bs[6..8], &[0, 5]);
    assert_eq!(&bs[16..20], &12u32.to_be_bytes());
    assert_eq!(&bs[20..], &[0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 3]);
    let e = error_chunk(9, NBD_EIO, "x");
    assert_eq!(&e[6..8], &[0x80, 0x01]);
    assert_eq!(&e[20..], &[0, 0, 0, 5, 0, 1, b'x']);
    match ReplyHeader::decode(&e).unwrap() {
        ReplyHeader::Chunk {
            flags,
            chunk_type,
            cookie,
            length,
        } => {
            assert_eq!(
                (flags, chunk_type, cookie, length),
                (1, NBD_REPLY_TYPE_ERROR, 9, 7)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ReplyHeader::decode(&simple_reply(NBD_EPERM, 3)).unwrap(),
        ReplyHeader::Simple {
            error: NBD_EPERM,
            cookie: 3
        }
    );
}
