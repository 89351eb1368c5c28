//! Handshake clauses, one test each, over scripted client bytes.

use std::io::Cursor;
use std::path::Path;

use super::*;
use crate::store::Snapshot;

fn catalog() -> Catalog {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hexz-0.8.2");
    let open = |f: &str| Snapshot::open(dir.join(f)).expect("fixture opens");
    Catalog::new(
        vec![
            NamedSnapshot {
                name: "vm".into(),
                snapshot: open("vm-dir-lz4.hxz"),
            },
            NamedSnapshot {
                name: "hello".into(),
                snapshot: open("hello-lz4.hxz"),
            },
        ],
        None,
    )
    .expect("catalog")
}

/// Client bytes: flags, then options.
struct Script(Vec<u8>);

impl Script {
    fn new(flags: u32) -> Script {
        Script(flags.to_be_bytes().to_vec())
    }

    fn opt(mut self, option: u32, data: &[u8]) -> Script {
        let h = OptionHeader {
            option,
            length: wire_len(data.len()),
        };
        self.0.extend_from_slice(&h.encode());
        self.0.extend_from_slice(data);
        self
    }
}

const FLAGS: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

/// The handshake's result, its option replies, and the bytes after them.
type Run = (
    Result<Outcome, HandshakeError>,
    Vec<(OptionReplyHeader, Vec<u8>)>,
    Vec<u8>,
);

/// Runs the handshake and splits the server's bytes into option replies.
fn run(script: Script) -> Run {
    let cat = catalog();
    let mut out = Vec::new();
    let result = negotiate(&mut Cursor::new(script.0), &mut out, &cat);
    assert_eq!(out[..GREETING_LEN], greeting(0x0003));
    let mut replies = Vec::new();
    let mut pos = GREETING_LEN;
    while out.len() >= pos + OPTION_REPLY_HEADER_LEN
        && out[pos..pos + 8] == NBD_OPTS_REPLY_MAGIC.to_be_bytes()
    {
        let h = OptionReplyHeader::decode(out[pos..pos + 20].try_into().expect("20 bytes"))
            .expect("reply header");
        pos += OPTION_REPLY_HEADER_LEN;
        let end = pos + h.length as usize;
        replies.push((h, out[pos..end].to_vec()));
        pos = end;
    }
    let rest = out[pos..].to_vec();
    (result, replies, rest)
}

fn types(replies: &[(OptionReplyHeader, Vec<u8>)]) -> Vec<u32> {
    replies.iter().map(|(h, _)| h.reply_type).collect()
}

#[test]
fn unknown_client_flags_close_the_connection() {
    let (r, replies, _) = run(Script::new(0xff));
    assert!(matches!(r, Err(HandshakeError::ClientFlags(0xff))));
    assert!(replies.is_empty());
}

#[test]
fn client_without_fixed_newstyle_is_refused() {
    let (r, _, _) = run(Script::new(NBD_FLAG_C_NO_ZEROES));
    assert!(matches!(r, Err(HandshakeError::ClientFlags(_))));
}

#[test]
fn opt_go_without_info_requests_still_reports_size() {
    // nbd-client 3.24 without -N: GO(""), no information requests.
    let (r, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_GO, &encode_info_request("", &[])));
    let Ok(Outcome::Transmission(s)) = r else {
        panic!("expected transmission, got {r:?}");
    };
    assert_eq!(types(&replies), vec![NBD_REP_INFO, NBD_REP_ACK]);
    let info = &replies[0].1;
    assert_eq!(info.len(), 12);
    assert_eq!(info[..2], NBD_INFO_EXPORT.to_be_bytes());
    assert_eq!(info[2..10], 1_048_576u64.to_be_bytes());
    assert_eq!(u16::from_be_bytes([info[10], info[11]]), 0x0507);
    assert_eq!(s.size, 1_048_576);
    assert_eq!(s.snapshot.name, "vm");
    assert!(!s.structured);
}

#[test]
fn opt_info_sends_name_description_and_block_size_when_asked() {
    let data = encode_info_request(
        "memory",
        &[NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, NBD_INFO_DESCRIPTION, 99],
    );
    let (r, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_INFO, &data));
    // INFO does not end the handshake; the script then runs out.
    assert!(r.is_err_and(|e| e.is_disconnect()));
    assert_eq!(
        types(&replies),
        vec![
            NBD_REP_INFO,
            NBD_REP_INFO,
            NBD_REP_INFO,
            NBD_REP_INFO,
            NBD_REP_ACK
        ]
    );
    assert_eq!(replies[0].1[2..10], 307_277u64.to_be_bytes());
    assert_eq!(replies[1].1, info_block_size(1, 4096, 32 << 20));
    assert_eq!(replies[2].1, info_text(NBD_INFO_NAME, "vm/memory"));
    assert_eq!(replies[3].1[..2], NBD_INFO_DESCRIPTION.to_be_bytes());
    assert!(replies.iter().all(|(h, _)| h.option == NBD_OPT_INFO));
}

#[test]
fn opt_go_for_unknown_export_is_err_unknown_with_a_message() {
    let (_, replies, _) =
        run(Script::new(FLAGS).opt(NBD_OPT_GO, &encode_info_request("nope", &[])));
    assert_eq!(types(&replies), vec![NBD_REP_ERR_UNKNOWN]);
    assert!(String::from_utf8_lossy(&replies[0].1).contains("nope"));
}

#[test]
fn opt_info_with_bad_lengths_is_err_invalid() {
    let mut data = encode_info_request("", &[1]);
    data.push(0);
    let (_, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_INFO, &data));
    assert_eq!(types(&replies), vec![NBD_REP_ERR_INVALID]);
}

#[test]
fn opt_abort_is_acknowledged() {
    let (r, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_ABORT, &[]));
    assert!(matches!(r, Ok(Outcome::Aborted)));
    assert_eq!(types(&replies), vec![NBD_REP_ACK]);
    assert_eq!(replies[0].0.option, NBD_OPT_ABORT);
}

#[test]
fn opt_list_lists_every_export_with_a_description() {
    let (_, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_LIST, &[]));
    let names: Vec<String> = replies
        .iter()
        .filter(|(h, _)| h.reply_type == NBD_REP_SERVER)
        .map(|(_, p)| {
            let n = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
            assert!(p.len() > 4 + n, "description present");
            String::from_utf8(p[4..4 + n].to_vec()).expect("utf-8")
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "",
            "disk",
            "memory",
            "vm",
            "vm/disk",
            "vm/memory",
            "hello",
            "hello/disk",
            "hello/memory"
        ]
    );
    assert_eq!(replies.last().map(|(h, _)| h.reply_type), Some(NBD_REP_ACK));
}

#[test]
fn opt_list_with_data_is_err_invalid() {
    let (_, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_LIST, b"x"));
    assert_eq!(types(&replies), vec![NBD_REP_ERR_INVALID]);
}

#[test]
fn unknown_options_get_err_unsup_and_the_handshake_goes_on() {
    let (r, replies, _) = run(Script::new(FLAGS)
        .opt(0x7654321, &[1, 2, 3, 4])
        .opt(NBD_OPT_PEEK_EXPORT, &[])
        .opt(NBD_OPT_EXTENDED_HEADERS, &[])
        .opt(NBD_OPT_GO, &encode_info_request("hello", &[])));
    assert!(matches!(r, Ok(Outcome::Transmission(_))));
    assert_eq!(
        types(&replies),
        vec![
            NBD_REP_ERR_UNSUP,
            NBD_REP_ERR_UNSUP,
            NBD_REP_ERR_UNSUP,
            NBD_REP_INFO,
            NBD_REP_ACK
        ]
    );
    assert_eq!(replies[0].0.option, 0x7654321);
}

#[test]
fn starttls_is_err_policy() {
    let (_, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_STARTTLS, &[]));
    assert_eq!(types(&replies), vec![NBD_REP_ERR_POLICY]);
}

/// As [`run`], with STARTTLS handled per `mode`.
fn run_tls(script: Script, mode: TlsMode) -> Run {
    let cat = catalog();
    let mut out = Vec::new();
    let result = negotiate_tls(&mut Cursor::new(script.0), &mut out, &cat, mode);
    let mut replies = Vec::new();
    let mut pos = GREETING_LEN;
    while out.len() >= pos + OPTION_REPLY_HEADER_LEN {
        let h = OptionReplyHeader::decode(out[pos..pos + 20].try_into().expect("20 bytes"))
            .expect("reply header");
        pos += OPTION_REPLY_HEADER_LEN;
        let end = pos + h.length as usize;
        replies.push((h, out[pos..end].to_vec()));
        pos = end;
    }
    (result, replies, out[pos..].to_vec())
}

#[test]
fn starttls_with_tls_on_is_acked_and_ends_the_plaintext_handshake() {
    let (r, replies, rest) = run_tls(
        Script::new(FLAGS)
            .opt(NBD_OPT_STRUCTURED_REPLY, &[])
            .opt(NBD_OPT_STARTTLS, &[])
            .opt(NBD_OPT_LIST, &[]),
        TlsMode::On,
    );
    assert_eq!(types(&replies), vec![NBD_REP_ACK, NBD_REP_ACK]);
    assert_eq!(replies[1].0.option, NBD_OPT_STARTTLS);
    assert!(
        rest.is_empty(),
        "nothing after the ACK: the TLS handshake follows"
    );
    let Ok(Outcome::StartTls(up)) = r else {
        panic!("expected StartTls, got {r:?}");
    };
    assert!(up.no_zeroes);
    assert_eq!(up.options, 2);
}

#[test]
fn starttls_with_data_is_err_invalid() {
    let (r, replies, _) = run_tls(Script::new(FLAGS).opt(NBD_OPT_STARTTLS, b"x"), TlsMode::On);
    assert_eq!(types(&replies), vec![NBD_REP_ERR_INVALID]);
    assert!(r.is_err(), "the script ends: EOF");
}

#[test]
fn tls_on_still_serves_plaintext_clients() {
    let (r, replies, _) = run_tls(
        Script::new(FLAGS).opt(NBD_OPT_GO, &encode_info_request("hello", &[])),
        TlsMode::On,
    );
    assert!(matches!(r, Ok(Outcome::Transmission(_))));
    assert_eq!(types(&replies), vec![NBD_REP_INFO, NBD_REP_ACK]);
}

#[test]
fn tls_require_refuses_every_option_but_starttls_and_abort_with_tls_reqd() {
    let mut info = 0u32.to_be_bytes().to_vec();
    info.extend_from_slice(&0u16.to_be_bytes());
    let (r, replies, _) = run_tls(
        Script::new(FLAGS)
            .opt(NBD_OPT_LIST, &[])
            .opt(NBD_OPT_INFO, &info)
            .opt(NBD_OPT_GO, &info)
            .opt(NBD_OPT_STRUCTURED_REPLY, &[])
            .opt(NBD_OPT_LIST_META_CONTEXT, &[])
            .opt(0x7654321, &[1, 2, 3, 4])
            .opt(NBD_OPT_ABORT, &[]),
        TlsMode::Require,
    );
    assert!(matches!(r, Ok(Outcome::Aborted)));
    assert_eq!(
        types(&replies),
        vec![
            NBD_REP_ERR_TLS_REQD,
            NBD_REP_ERR_TLS_REQD,
            NBD_REP_ERR_TLS_REQD,
            NBD_REP_ERR_TLS_REQD,
            NBD_REP_ERR_TLS_REQD,
            NBD_REP_ERR_TLS_REQD,
            NBD_REP_ACK
        ],
        "LIST and INFO reveal nothing before TLS"
    );
}

#[test]
fn tls_require_ends_the_session_on_export_name_in_plaintext() {
    let (r, replies, _) = run_tls(
        Script::new(FLAGS).opt(NBD_OPT_EXPORT_NAME, b"hello"),
        TlsMode::Require,
    );
    assert!(matches!(r, Err(HandshakeError::TlsRequired)));
    assert!(replies.is_empty());
}

#[test]
fn after_tls_options_start_afresh_and_a_second_starttls_is_err_invalid() {
    let cat = catalog();
    let upgrade = Upgrade {
        no_zeroes: true,
        options: 3,
    };
    let script = Script(Vec::new())
        .opt(NBD_OPT_STARTTLS, &[])
        .opt(NBD_OPT_GO, &encode_info_request("hello", &[]));
    let mut out = Vec::new();
    let r = resume_after_tls(&mut Cursor::new(script.0), &mut out, &cat, upgrade);
    let Ok(Outcome::Transmission(s)) = r else {
        panic!("expected a session, got {r:?}");
    };
    assert!(
        !s.structured,
        "the state starts afresh: no structured replies"
    );
    let h = OptionReplyHeader::decode(out[..20].try_into().expect("20 bytes")).expect("header");
    assert_eq!(
        (h.option, h.reply_type),
        (NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID)
    );
}

#[test]
fn option_data_over_the_cap_disconnects_without_reading_it() {
    let mut s = Script::new(FLAGS);
    s.0.extend_from_slice(
        &OptionHeader {
            option: NBD_OPT_GO,
            length: u32::MAX,
        }
        .encode(),
    );
    let (r, replies, _) = run(s);
    assert!(matches!(
        r,
        Err(HandshakeError::OptionTooLong {
            length: u32::MAX,
            ..
        })
    ));
    assert!(replies.is_empty());
}

#[test]
fn bad_option_magic_disconnects() {
    let mut s = Script::new(FLAGS);
    s.0.extend_from_slice(&[0u8; 16]);
    let (r, _, _) = run(s);
    assert!(matches!(r, Err(HandshakeError::Proto(_))));
}

#[test]
fn too_many_options_disconnect() {
    let mut s = Script::new(FLAGS);
    for _ in 0..=MAX_OPTIONS {
        s = s.opt(999, &[]);
    }
    let (r, replies, _) = run(s);
    assert!(matches!(r, Err(HandshakeError::TooManyOptions)));
    assert_eq!(replies.len(), MAX_OPTIONS);
}

#[test]
fn structured_reply_then_set_meta_context_selects_base_allocation() {
    let (r, replies, _) = run(Script::new(FLAGS)
        .opt(NBD_OPT_STRUCTURED_REPLY, &[])
        .opt(
            NBD_OPT_SET_META_CONTEXT,
            &encode_meta_context_request("vm", &[BASE_ALLOCATION, "qemu:x", "base:"]),
        )
        .opt(NBD_OPT_GO, &encode_info_request("vm/disk", &[])));
    let Ok(Outcome::Transmission(s)) = r else {
        panic!("{r:?}");
    };
    assert_eq!(
        types(&replies),
        vec![
            NBD_REP_ACK,
            NBD_REP_META_CONTEXT,
            NBD_REP_ACK,
            NBD_REP_INFO,
            NBD_REP_ACK
        ]
    );
    assert_eq!(
        replies[1].1,
        rep_meta_context(BASE_ALLOCATION_ID, BASE_ALLOCATION)
    );
    assert!(s.structured);
    assert_eq!(s.base_allocation, Some(BASE_ALLOCATION_ID));
    assert_eq!(s.flags & NBD_FLAG_SEND_DF, NBD_FLAG_SEND_DF);
}

#[test]
fn meta_context_for_another_export_is_not_active() {
    let (r, _, _) = run(Script::new(FLAGS)
        .opt(NBD_OPT_STRUCTURED_REPLY, &[])
        .opt(
            NBD_OPT_SET_META_CONTEXT,
            &encode_meta_context_request("hello", &[BASE_ALLOCATION]),
        )
        .opt(NBD_OPT_GO, &encode_info_request("vm", &[])));
    let Ok(Outcome::Transmission(s)) = r else {
        panic!("{r:?}");
    };
    assert_eq!(s.base_allocation, None);
}

#[test]
fn set_meta_context_without_structured_replies_is_err_invalid() {
    let (_, replies, _) = run(Script::new(FLAGS).opt(
        NBD_OPT_SET_META_CONTEXT,
        &encode_meta_context_request("", &[BASE_ALLOCATION]),
    ));
    assert_eq!(types(&replies), vec![NBD_REP_ERR_INVALID]);
}

#[test]
fn list_meta_context_without_queries_lists_base_allocation() {
    let (_, replies, _) = run(Script::new(FLAGS).opt(
        NBD_OPT_LIST_META_CONTEXT,
        &encode_meta_context_request("", &[]),
    ));
    assert_eq!(types(&replies), vec![NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    assert_eq!(replies[0].1, rep_meta_context(0, BASE_ALLOCATION));
}

#[test]
fn export_name_sends_size_flags_and_zeroes_without_no_zeroes() {
    let (r, replies, rest) =
        run(Script::new(NBD_FLAG_C_FIXED_NEWSTYLE).opt(NBD_OPT_EXPORT_NAME, b"hello"));
    assert!(matches!(r, Ok(Outcome::Transmission(_))));
    assert!(replies.is_empty());
    assert_eq!(rest, export_name_reply(1080, 0x0507, false));
}

#[test]
fn export_name_for_unknown_export_closes() {
    let (r, _, rest) = run(Script::new(FLAGS).opt(NBD_OPT_EXPORT_NAME, b"nope"));
    assert!(matches!(r, Err(HandshakeError::UnknownExport(_))));
    assert!(rest.is_empty());
}

#[test]
fn structured_reply_with_data_is_err_invalid() {
    let (_, replies, _) = run(Script::new(FLAGS).opt(NBD_OPT_STRUCTURED_REPLY, b"x"));
    assert_eq!(types(&replies), vec![NBD_REP_ERR_INVALID]);
}
