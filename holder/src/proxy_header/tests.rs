use super::*;
use proptest::prelude::*;
use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};

/// 192.168.1.10:40000 -> 10.0.0.2:8080, TCP, service "postgres", written out by hand.
const V4_POSTGRES: &[u8] = &[
    b'\r', b'\n', b'\r', b'\n', 0, b'\r', b'\n', b'Q', b'U', b'I', b'T', b'\n', // signature
    0x21,  // v2, PROXY
    0x11,  // AF_INET, STREAM
    0x00, 0x17, // 23 = 12 address bytes + 3 + 8
    192, 168, 1, 10, // source
    10, 0, 0, 2, // destination
    0x9C, 0x40, // 40000
    0x1F, 0x90, // 8080
    0xE0, 0x00, 0x08, b'p', b'o', b's', b't', b'g', b'r', b'e', b's',
];

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((a, port))
}

/// A header from a prefix (signature included) and a payload, with the length filled in.
fn header(ver_cmd: u8, fam_proto: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("test payloads fit in u16");
    [
        &SIGNATURE[..],
        &[ver_cmd, fam_proto],
        &len.to_be_bytes(),
        payload,
    ]
    .concat()
}

fn prefix_of(buf: &[u8]) -> [u8; PREFIX_LEN] {
    *buf.first_chunk().expect("test buffers hold a prefix")
}

fn err(buf: &[u8]) -> ProxyError {
    parse(buf).expect_err("header should be rejected")
}

#[test]
fn ipv4_with_service() {
    let (h, used) = parse(V4_POSTGRES).expect("valid header");
    assert_eq!(used, V4_POSTGRES.len());
    assert_eq!(h.command, Command::Proxy);
    assert_eq!(h.transport, Transport::Stream);
    assert_eq!(h.source, Some(v4([192, 168, 1, 10], 40000)));
    assert_eq!(h.destination, Some(v4([10, 0, 0, 2], 8080)));
    assert_eq!(h.tlvs, vec![(0xE0, b"postgres".to_vec())]);
    assert_eq!(h.service(), Ok("postgres"));
    assert_eq!(h.tlv(0x01), None);
}

#[test]
fn two_step_read_matches_parse() {
    let prefix = prefix_of(V4_POSTGRES);
    let len = parse_prefix(&prefix).expect("valid prefix");
    assert_eq!(len, 23);
    let payload = V4_POSTGRES.get(PREFIX_LEN..).expect("whole header");
    assert_eq!(
        parse_payload(&prefix, payload),
        parse(V4_POSTGRES).map(|(h, _)| h)
    );
}

#[test]
fn ipv6_with_noop() {
    let mut payload = vec![0x20, 0x01, 0x0d, 0xb8];
    payload.extend([0; 11]);
    payload.push(1); // 2001:db8::1
    payload.extend([0; 15]);
    payload.push(1); // ::1
    payload.extend([0x01, 0xBB, 0x15, 0x38]); // 443, 5432
    payload.extend([0x04, 0x00, 0x02, 0, 0]); // PP2_TYPE_NOOP, 2 bytes
    let (h, _) = parse(&header(0x21, 0x21, &payload)).expect("valid header");
    let ip = |s: &str| s.parse::<Ipv6Addr>().expect("test address");
    assert_eq!(h.source, Some(SocketAddr::from((ip("2001:db8::1"), 443))));
    assert_eq!(h.destination, Some(SocketAddr::from((ip("::1"), 5432))));
    assert_eq!(h.tlvs, vec![(0x04, vec![0, 0])]);
    assert_eq!(h.service(), Err(ProxyError::MissingService));
}

#[test]
fn local_ignores_addresses_but_keeps_tlvs() {
    let empty = header(0x20, 0x00, &[]);
    let (h, used) = parse(&empty).expect("valid LOCAL");
    assert_eq!(
        (h.command, h.transport, h.source, h.destination),
        (Command::Local, Transport::Unspec, None, None)
    );
    assert!(h.tlvs.is_empty());
    assert_eq!(used, PREFIX_LEN);

    let payload = [
        &V4_POSTGRES[PREFIX_LEN..PREFIX_LEN + 12],
        &[0xE0, 0, 1, b'x'],
    ]
    .concat();
    let (h, _) = parse(&header(0x20, 0x11, &payload)).expect("valid LOCAL with addresses");
    assert_eq!((h.source, h.destination), (None, None));
    assert_eq!(h.service(), Ok("x"));
}

#[test]
fn unix_and_unspec_have_no_addresses() {
    let (h, _) = parse(&header(0x21, 0x31, &[b'/'; 216])).expect("valid AF_UNIX");
    assert_eq!((h.source, h.destination, h.tlvs.len()), (None, None, 0));
    let (h, _) = parse(&header(0x21, 0x02, &[0xE0, 0, 1, b'a'])).expect("valid AF_UNSPEC");
    assert_eq!(
        (h.transport, h.source, h.service()),
        (Transport::Datagram, None, Ok("a"))
    );
}

#[test]
fn client_bytes_after_the_header_are_left_alone() {
    let buf = [V4_POSTGRES, b"SELECT 1;"].concat();
    let (_, used) = parse(&buf).expect("valid header");
    assert_eq!(used, V4_POSTGRES.len());
    assert_eq!(buf.get(used..), Some(&b"SELECT 1;"[..]));
}

#[test]
fn every_truncation_is_truncated() {
    for len in 0..V4_POSTGRES.len() {
        let e = err(&V4_POSTGRES[..len]);
        assert!(
            matches!(e, ProxyError::Truncated { got, .. } if got == len),
            "len {len}: {e}"
        );
        assert_eq!(e.reason(), "truncated");
    }
    let prefix = prefix_of(V4_POSTGRES);
    let e = parse_payload(&prefix, &V4_POSTGRES[PREFIX_LEN..30]).expect_err("short payload");
    assert_eq!(e.to_string(), "header needs 39 bytes, got 30");
}

#[test]
fn prefix_errors() {
    let mut bad = prefix_of(V4_POSTGRES);
    bad[11] = b'X';
    let cases = [
        (
            bad,
            "bad_signature",
            "bad signature \"\\r\\n\\r\\n\\x00\\r\\nQUITX\", not a PROXY v2 header",
        ),
        (
            prefix_of(&header(0x31, 0x11, &[])),
            "bad_version",
            "version nibble 0x3, expected 0x2",
        ),
        (
            prefix_of(&header(0x22, 0x11, &[])),
            "bad_command",
            "command nibble 0x2, expected 0x0 (LOCAL) or 0x1 (PROXY)",
        ),
        (
            prefix_of(&header(0x21, 0x41, &[])),
            "bad_family",
            "family/protocol byte 0x41 is not AF_UNSPEC/INET/INET6/UNIX over UNSPEC/STREAM/DGRAM",
        ),
        (
            prefix_of(&header(0x21, 0x13, &[])),
            "bad_family",
            "family/protocol byte 0x13 is not AF_UNSPEC/INET/INET6/UNIX over UNSPEC/STREAM/DGRAM",
        ),
    ];
    for (prefix, reason, message) in cases {
        let e = parse_prefix(&prefix).expect_err("bad prefix");
        assert_eq!((e.reason(), e.to_string().as_str()), (reason, message));
        // parse_payload re-checks the prefix rather than trusting its caller.
        assert_eq!(parse_payload(&prefix, &[]), Err(e));
    }
}

#[test]
fn oversized_is_rejected_from_the_prefix_alone() {
    let mut prefix = prefix_of(V4_POSTGRES);
    prefix[14..].copy_from_slice(&(MAX_PAYLOAD_LEN as u16 + 1).to_be_bytes());
    let e = parse_prefix(&prefix).expect_err("oversized");
    assert_eq!(
        (e.reason(), e.to_string().as_str()),
        ("oversized", "payload length 1025 exceeds 1024")
    );
    prefix[14..].copy_from_slice(&(MAX_PAYLOAD_LEN as u16).to_be_bytes());
    assert_eq!(parse_prefix(&prefix), Ok(MAX_PAYLOAD_LEN));
}

#[test]
fn payload_errors() {
    let cases = [
        (
            header(0x21, 0x11, &[0; 7]),
            "short_address",
            "address block for AF_INET needs 12 bytes, payload has 7",
        ),
        (
            header(0x20, 0x21, &[0; 35]),
            "short_address",
            "address block for AF_INET6 needs 36 bytes, payload has 35",
        ),
        (
            header(0x21, 0x11, &[[0; 12].as_slice(), &[0xE0, 0]].concat()),
            "bad_tlv",
            "TLV header at offset 12 needs 3 bytes, 2 remain",
        ),
        (
            header(
                0x21,
                0x11,
                &[[0; 12].as_slice(), &[0xE0, 0, 40, 1, 2, 3]].concat(),
            ),
            "bad_tlv",
            "TLV 0xE0 at offset 12 claims 40 bytes, 3 remain",
        ),
        (
            header(0x21, 0x00, &[0x04, 0, 1, 0, 0xE1, 0, 2, 0]),
            "bad_tlv",
            "TLV 0xE1 at offset 4 claims 2 bytes, 1 remain",
        ),
    ];
    for (buf, reason, message) in cases {
        let e = err(&buf);
        assert_eq!((e.reason(), e.to_string().as_str()), (reason, message));
    }
}

#[test]
fn service_validation() {
    let with = |tlvs: Vec<(u8, Vec<u8>)>| ProxyHeader {
        command: Command::Proxy,
        transport: Transport::Stream,
        source: None,
        destination: None,
        tlvs,
    };
    let service = |name: &[u8]| {
        with(vec![(0xE0, name.to_vec())])
            .service()
            .map(str::to_owned)
    };
    assert_eq!(service(b"my-db_1.prod"), Ok("my-db_1.prod".to_owned()));
    assert_eq!(service(&[b'a'; 253]), Ok("a".repeat(253)));
    let e = with(vec![(0xE1, b"x".to_vec())])
        .service()
        .expect_err("missing");
    assert_eq!(
        (e.reason(), e.to_string().as_str()),
        ("missing_service", "no service TLV 0xE0")
    );
    for (name, message) in [
        (&b""[..], "service name \"\" is empty"),
        (&[b'a'; 254][..], "is longer than 253 bytes"),
        (&[b'a', 0xFF][..], "service name \"a\u{FFFD}\" is not UTF-8"),
        (
            &b"a/b"[..],
            "service name \"a/b\" has characters outside [A-Za-z0-9._-]",
        ),
        (
            &b"caf\xC3\xA9"[..],
            "service name \"caf\u{e9}\" has characters outside [A-Za-z0-9._-]",
        ),
    ] {
        let e = service(name).expect_err("bad name");
        assert_eq!(e.reason(), "bad_service");
        assert!(e.to_string().ends_with(message), "{e}");
    }
}

#[test]
fn encode_errors() {
    let (a, b) = (
        v4([127, 0, 0, 1], 1),
        SocketAddr::from((Ipv6Addr::LOCALHOST, 2)),
    );
    let e = encode(a, b, &[]).expect_err("mixed");
    assert_eq!(e.reason(), "mixed_families");
    assert_eq!(
        e.to_string(),
        "source 127.0.0.1:1 and destination [::1]:2 are of different address families"
    );
    // 12 address bytes + 3 + 1010 = 1025.
    let e = encode(a, a, &[(0xE0, &[0; 1010])]).expect_err("too big");
    assert_eq!(e, ProxyError::Oversized(1025));
    let encoded = encode(a, a, &[(0xE0, &[0; 1009])]).expect("exactly the maximum");
    assert_eq!(
        parse(&encoded).map(|(_, n)| n),
        Ok(PREFIX_LEN + MAX_PAYLOAD_LEN)
    );
}

#[test]
fn encode_writes_the_hand_written_bytes() {
    let encoded = encode(
        v4([192, 168, 1, 10], 40000),
        v4([10, 0, 0, 2], 8080),
        &[(0xE0, b"postgres")],
    );
    assert_eq!(encoded.as_deref(), Ok(V4_POSTGRES));
}

fn addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let v4 = any::<([u8; 4], u16)>()
        .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(ip.into(), port)));
    let v6 = any::<([u8; 16], u16)>()
        .prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(ip.into(), port, 0, 0)));
    prop_oneof![(v4.clone(), v4), (v6.clone(), v6)]
}

proptest! {
    #[test]
    fn encode_parse_roundtrip(
        (source, destination) in addr_pair(),
        tlvs in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 0..8),
        client in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let borrowed: Vec<(u8, &[u8])> = tlvs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let encoded = encode(source, destination, &borrowed).expect("small headers encode");
        let (h, used) = parse(&[encoded.as_slice(), &client].concat()).expect("encoded headers parse");
        prop_assert_eq!(used, encoded.len());
        prop_assert_eq!(h, ProxyHeader {
            command: Command::Proxy,
            transport: Transport::Stream,
            source: Some(source),
            destination: Some(destination),
            tlvs,
        });
    }

    #[test]
    fn parse_never_panics(buf in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((_, used)) = parse(&buf) {
            prop_assert!(used <= buf.len());
        }
    }

    #[test]
    fn parse_never_panics_after_a_signature(
        ver_cmd in prop_oneof![Just(0x20u8), Just(0x21), any::<u8>()],
        fam_proto in prop_oneof![Just(0x00u8), Just(0x11), Just(0x21), Just(0x31), any::<u8>()],
        len in prop_oneof![0..300u16, any::<u16>()],
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let buf = [&SIGNATURE[..], &[ver_cmd, fam_proto], &len.to_be_bytes(), &body].concat();
        match parse(&buf) {
            Ok((_, used)) => prop_assert_eq!(used, PREFIX_LEN + usize::from(len)),
            Err(e) => prop_assert!(!matches!(e, ProxyError::BadSignature(_))),
        }
    }
}
