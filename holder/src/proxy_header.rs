//! PROXY protocol v2 (haproxy `proxy-protocol.txt`, section 2.2): how Envoy tells the holder who
//! the client is and, in the custom TLV [`TLV_SERVICE`], which service the connection is for.
//!
//! Pure byte parsing, no I/O. The header is read in two steps so that **the caller never reads past
//! the header**: read exactly [`PREFIX_LEN`] bytes, ask [`parse_prefix`] how long the rest is, read
//! exactly that many and hand them to [`parse_payload`]. Whatever follows belongs to the client and
//! stays in the kernel until the connection is relayed to the woken backend.
//!
//! Every length in the header is checked before it is used: no input makes these functions panic,
//! and a payload above [`MAX_PAYLOAD_LEN`] is rejected before it is read.
//!
//! Named for the header, not for "the proxies" (the Envoy pods that send it).

use std::net::{IpAddr, SocketAddr};

/// 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part: signature + ver/cmd + fam/proto + 2-byte length.
pub const PREFIX_LEN: usize = 16;
/// Our bound on the variable part (addresses + TLVs). Envoy's headers are far smaller; anything
/// above this is rejected as Oversized before reading it.
pub const MAX_PAYLOAD_LEN: usize = 1024;
/// Custom TLV type carrying the zenvoy service name (PP2_TYPE_MIN_CUSTOM = 0xE0).
pub const TLV_SERVICE: u8 = zenvoy_contract::TLV_SERVICE;

/// Longest accepted service name (a DNS name's bound).
const MAX_SERVICE_LEN: usize = zenvoy_contract::MAX_SERVICE_NAME_LEN;
const VERSION: u8 = 0x2;

/// A parsed v2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub command: Command,
    pub transport: Transport,
    /// `None` for LOCAL, AF_UNSPEC, or AF_UNIX.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// In wire order, PP2_TYPE_NOOP included.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Sent by the proxy itself (health checks): the addresses mean nothing.
    Local,
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unspec,
    Stream,
    Datagram,
}

/// Why a header was rejected. TLV offsets count from the start of the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("bad signature \"{}\", not a PROXY v2 header", .0.escape_ascii())]
    BadSignature([u8; 12]),
    #[error("version nibble {0:#x}, expected {VERSION:#x}")]
    BadVersion(u8),
    #[error("command nibble {0:#x}, expected 0x0 (LOCAL) or 0x1 (PROXY)")]
    BadCommand(u8),
    #[error(
        "family/protocol byte {0:#04x} is not AF_UNSPEC/INET/INET6/UNIX over UNSPEC/STREAM/DGRAM"
    )]
    BadFamily(u8),
    #[error("payload length {0} exceeds {MAX_PAYLOAD_LEN}")]
    Oversized(usize),
    #[error("header needs {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    #[error("address block for {family} needs {needed} bytes, payload has {got}")]
    ShortAddress {
        family: &'static str,
        needed: usize,
        got: usize,
    },
    #[error("TLV header at offset {offset} needs 3 bytes, {remaining} remain")]
    TlvTruncated { offset: usize, remaining: usize },
    #[error("TLV {kind:#04X} at offset {offset} claims {claimed} bytes, {remaining} remain")]
    TlvOverrun {
        kind: u8,
        offset: usize,
        claimed: usize,
        remaining: usize,
    },
    #[error("no service TLV {TLV_SERVICE:#04X}")]
    MissingService,
    #[error("service name {name:?} {problem}")]
    BadService { name: String, problem: &'static str },
    // Not `source`: thiserror would take that field for the error's cause.
    #[error("source {src} and destination {dst} are of different address families")]
    MixedFamilies { src: SocketAddr, dst: SocketAddr },
}

impl ProxyError {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadSignature(_) => "bad_signature",
            Self::BadVersion(_) => "bad_version",
            Self::BadCommand(_) => "bad_command",
            Self::BadFamily(_) => "bad_family",
            Self::Oversized(_) => "oversized",
            Self::Truncated { .. } => "truncated",
            Self::ShortAddress { .. } => "short_address",
            Self::TlvTruncated { .. } | Self::TlvOverrun { .. } => "bad_tlv",
            Self::MissingService => "missing_service",
            Self::BadService { .. } => "bad_service",
            Self::MixedFamilies { .. } => "mixed_families",
        }
    }
}

impl ProxyHeader {
    /// The value of the first TLV of this type.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    /// The service name from TLV 0xE0: must be present, non-empty, <= 253 bytes, valid UTF-8, and
    /// only `[A-Za-z0-9._-]` characters.
    pub fn service(&self) -> Result<&str, ProxyError> {
        let raw = self.tlv(TLV_SERVICE).ok_or(ProxyError::MissingService)?;
        let bad = |problem| ProxyError::BadService {
            name: String::from_utf8_lossy(raw).into_owned(),
            problem,
        };
        let name = std::str::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
        check_service_name(name).map_err(bad)?;
        Ok(name)
    }
}

/// The rule every service name follows, however it reaches the holder (a TLV, a flag):
/// non-empty, <= 253 bytes, only `[A-Za-z0-9._-]`. Returns what is wrong.
pub fn check_service_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_SERVICE_LEN {
        return Err("is longer than 253 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("has characters outside [A-Za-z0-9._-]");
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl Family {
    fn address_len(self) -> usize {
        match self {
            Self::Unspec => 0,
            Self::Inet => 12,
            Self::Inet6 => 36,
            Self::Unix => 216,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unspec => "AF_UNSPEC",
            Self::Inet => "AF_INET",
            Self::Inet6 => "AF_INET6",
            Self::Unix => "AF_UNIX",
        }
    }
}

struct Prefix {
    command: Command,
    family: Family,
    transport: Transport,
    payload_len: usize,
}

fn decode_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<Prefix, ProxyError> {
    let [signature @ .., ver_cmd, fam_proto, len_hi, len_lo] = *prefix;
    if signature != SIGNATURE {
        return Err(ProxyError::BadSignature(signature));
    }
    if ver_cmd >> 4 != VERSION {
        return Err(ProxyError::BadVersion(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0xF {
        0 => Command::Local,
        1 => Command::Proxy,
        other => return Err(ProxyError::BadCommand(other)),
    };
    let family = match fam_proto >> 4 {
        0 => Family::Unspec,
        1 => Family::Inet,
        2 => Family::Inet6,
        3 => Family::Unix,
        _ => return Err(ProxyError::BadFamily(fam_proto)),
    };
    let transport = match fam_proto & 0xF {
        0 => Transport::Unspec,
        1 => Transport::Stream,
        2 => Transport::Datagram,
        _ => return Err(ProxyError::BadFamily(fam_proto)),
    };
    let payload_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(ProxyError::Oversized(payload_len));
    }
    Ok(Prefix {
        command,
        family,
        transport,
        payload_len,
    })
}

/// Parse the 16-byte prefix and return how many more bytes the header has (the payload length).
/// The caller then reads exactly that many bytes, never more: bytes after the header belong to the
/// client and must stay in the kernel.
pub fn parse_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<usize, ProxyError> {
    decode_prefix(prefix).map(|p| p.payload_len)
}

/// Parse the payload (addresses + TLVs) that follows `prefix`. Only the payload length announced
/// by the prefix is read; a shorter `payload` is [`ProxyError::Truncated`].
pub fn parse_payload(prefix: &[u8; PREFIX_LEN], payload: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let Prefix {
        command,
        family,
        transport,
        payload_len,
    } = decode_prefix(prefix)?;
    let payload = payload.get(..payload_len).ok_or(ProxyError::Truncated {
        needed: PREFIX_LEN + payload_len,
        got: PREFIX_LEN + payload.len(),
    })?;
    // LOCAL and AF_UNSPEC may still carry an address block; it is skipped, never interpreted.
    let needed = family.address_len();
    let (block, tlvs) = payload
        .split_at_checked(needed)
        .ok_or(ProxyError::ShortAddress {
            family: family.name(),
            needed,
            got: payload.len(),
        })?;
    let addresses = match (command, family) {
        (Command::Proxy, Family::Inet) => addresses::<4>(block),
        (Command::Proxy, Family::Inet6) => addresses::<16>(block),
        _ => None,
    };
    Ok(ProxyHeader {
        command,
        transport,
        source: addresses.map(|(s, _)| s),
        destination: addresses.map(|(_, d)| d),
        tlvs: parse_tlvs(tlvs, needed)?,
    })
}

/// Convenience: parse a whole header from one slice; returns the header and the number of bytes it
/// used (the rest of the slice is client data).
pub fn parse(buf: &[u8]) -> Result<(ProxyHeader, usize), ProxyError> {
    let (prefix, rest) = buf
        .split_first_chunk::<PREFIX_LEN>()
        .ok_or(ProxyError::Truncated {
            needed: PREFIX_LEN,
            got: buf.len(),
        })?;
    let payload_len = parse_prefix(prefix)?;
    Ok((parse_payload(prefix, rest)?, PREFIX_LEN + payload_len))
}

/// Source and destination from an address block: source IP, destination IP (N bytes each), then
/// source and destination ports, big-endian.
fn addresses<const N: usize>(block: &[u8]) -> Option<(SocketAddr, SocketAddr)>
where
    IpAddr: From<[u8; N]>,
{
    let (src, rest) = block.split_first_chunk::<N>()?;
    let (dst, rest) = rest.split_first_chunk::<N>()?;
    let (src_port, rest) = rest.split_first_chunk::<2>()?;
    let (dst_port, _) = rest.split_first_chunk::<2>()?;
    Some((
        SocketAddr::new(IpAddr::from(*src), u16::from_be_bytes(*src_port)),
        SocketAddr::new(IpAddr::from(*dst), u16::from_be_bytes(*dst_port)),
    ))
}

/// TLVs fill the payload after the address block, which starts at `offset`.
fn parse_tlvs(mut rest: &[u8], mut offset: usize) -> Result<Vec<(u8, Vec<u8>)>, ProxyError> {
    let mut tlvs = Vec::new();
    while !rest.is_empty() {
        let Some((&[kind, len_hi, len_lo], after)) = rest.split_first_chunk::<3>() else {
            return Err(ProxyError::TlvTruncated {
                offset,
                remaining: rest.len(),
            });
        };
        let claimed = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        let (value, after) = after
            .split_at_checked(claimed)
            .ok_or(ProxyError::TlvOverrun {
                kind,
                offset,
                claimed,
                remaining: after.len(),
            })?;
        tlvs.push((kind, value.to_vec()));
        offset += 3 + claimed;
        rest = after;
    }
    Ok(tlvs)
}

/// Encode a v2 PROXY header (command PROXY, TCP over IPv4 or IPv6 depending on the addresses)
/// with the given TLVs. Rejects mixed families and payloads that [`parse`] would call Oversized.
pub fn encode(
    source: SocketAddr,
    destination: SocketAddr,
    tlvs: &[(u8, &[u8])],
) -> Result<Vec<u8>, ProxyError> {
    let mut block = Vec::with_capacity(Family::Inet6.address_len());
    let fam_proto = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            block.extend(s.octets().into_iter().chain(d.octets()));
            0x11 // AF_INET, STREAM
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            block.extend(s.octets().into_iter().chain(d.octets()));
            0x21 // AF_INET6, STREAM
        }
        _ => {
            return Err(ProxyError::MixedFamilies {
                src: source,
                dst: destination,
            })
        }
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());

    // Saturating: `tlvs` may repeat one huge slice, and the sum must not overflow.
    let payload_len = tlvs.iter().fold(block.len(), |n, (_, v)| {
        n.saturating_add(3).saturating_add(v.len())
    });
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(ProxyError::Oversized(payload_len));
    }
    // From here on every length is at most MAX_PAYLOAD_LEN, so the `as u16` casts are lossless.
    let mut out = Vec::with_capacity(PREFIX_LEN + payload_len);
    out.extend_from_slice(&SIGNATURE);
    out.extend_from_slice(&[VERSION << 4 | 0x1, fam_proto]); // PROXY
    out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    out.extend_from_slice(&block);
    for &(kind, value) in tlvs {
        out.push(kind);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
