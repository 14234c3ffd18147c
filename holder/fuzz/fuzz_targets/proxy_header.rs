//! `cargo fuzz run proxy_header` (from `holder/`): the PROXY v2 header parser never panics,
//! never claims more bytes than it was given, and what it accepts survives an encode/parse
//! round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenvoy_holder::proxy_header::{self, Command, ProxyHeader, Transport};

fuzz_target!(|data: &[u8]| {
    let Ok((header, consumed)) = proxy_header::parse(data) else {
        return;
    };
    assert!(consumed <= data.len(), "consumed {consumed} of {} bytes", data.len());

    // Only PROXY headers over AF_INET/AF_INET6 carry addresses, and `encode` needs them.
    let (Some(source), Some(destination)) = (header.source, header.destination) else {
        return;
    };
    let tlvs: Vec<(u8, &[u8])> = header.tlvs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    let encoded =
        proxy_header::encode(source, destination, &tlvs).expect("a parsed header re-encodes");
    let (again, used) = proxy_header::parse(&encoded).expect("an encoded header parses");
    assert_eq!(used, encoded.len());
    let expected = ProxyHeader { command: Command::Proxy, transport: Transport::Stream, ..header };
    assert_eq!(again, expected);
});
