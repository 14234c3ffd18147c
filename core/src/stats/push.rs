//! One `metrics_service` push (`StreamMetricsMessage`), read in place. Pure.
//!
//! Why not prost's generated types: a 10,000-cluster Envoy push is 60,000 metric families
//! (3.2 MiB). Decoding it into owned `MetricFamily` values took ~25 ms and ~40 MB of small
//! allocations, and dropping them ~12 ms more, per push, before zenvoy looked at a single
//! number; a long-lived controller's RSS grew with the allocator's leftovers. This walk
//! reads the protobuf wire format where it lies, hands each sample's name, labels and
//! value (borrowed) to a [`Collector`], and allocates nothing per sample. It reads only
//! the fields zenvoy needs and skips the rest, as any protobuf reader must; that includes
//! the sender's node id (first message only), so this reader needs no generated types.
//!
//! ```text
//!  StreamMetricsMessage { 1: Identifier { 1: Node { 1: id } }, 2: repeated MetricFamily }
//!  MetricFamily { 1: name, 4: repeated Metric }            (help, type, unit skipped)
//!  Metric { 1: repeated LabelPair {1: name, 2: value}, 2: gauge {1: double},
//!           3: counter {1: double}, 5: untyped {1: double} }   (the rest skipped)
//! ```

use prost::encoding::{decode_key, decode_varint, WireType};

use super::families::Collector;
use crate::model::Protocol;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("malformed protobuf: {0}")]
    Wire(#[from] prost::DecodeError),
    #[error("malformed protobuf: field {tag} claims {len} bytes, {left} left")]
    Overrun { tag: u32, len: u64, left: usize },
    #[error("malformed protobuf: field {tag} ends inside a fixed-size value")]
    Short { tag: u32 },
    #[error("malformed protobuf: field {tag} uses deprecated groups")]
    Group { tag: u32 },
    #[error("{field} is not UTF-8")]
    Utf8 { field: &'static str },
    #[error("more than {} samples in one push", super::families::MAX_SAMPLES)]
    TooManySamples,
}

/// What one push says: the sender's node id (when this message names it) and the samples,
/// fed to `collector`.
pub fn read<'a, P: Fn(&str) -> Option<Protocol>>(
    msg: &'a [u8],
    collector: &mut Collector<'a, P>,
) -> Result<Option<String>, PushError> {
    let mut node = None;
    let mut r = Reader(msg);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1, WireType::LengthDelimited) => node = node_id(r.bytes(tag)?, node.take())?,
            (2, WireType::LengthDelimited) => {
                family(r.bytes(tag)?, collector)?;
                if collector.overflowed() {
                    return Err(PushError::TooManySamples);
                }
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(node)
}

fn family<'a, P: Fn(&str) -> Option<Protocol>>(
    buf: &'a [u8],
    collector: &mut Collector<'a, P>,
) -> Result<(), PushError> {
    // The name may come after the metrics on the wire (fields can be in any order), so
    // find it first; then read the metrics.
    let mut name = None;
    let mut r = Reader(buf);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1, WireType::LengthDelimited) => name = Some(utf8(r.bytes(tag)?, "family name")?),
            _ => r.skip(tag, wire)?,
        }
    }
    let Some(name) = name else {
        return Ok(());
    };
    let mut r = Reader(buf);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (4, WireType::LengthDelimited) => {
                let m = r.bytes(tag)?;
                let value = metric_value(m)?;
                collector.add(name, |l| label(m, l), value);
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(())
}

/// The node id in an `Identifier` (`None` when it names no node). Occurrences merge, as
/// protobuf's do: a later `Node` without an id keeps the earlier id.
fn node_id(identifier: &[u8], mut id: Option<String>) -> Result<Option<String>, PushError> {
    let mut r = Reader(identifier);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1, WireType::LengthDelimited) => {
                let mut node = Reader(r.bytes(tag)?);
                // proto3: a node without the field has the empty id.
                let mut this = id.take().unwrap_or_default();
                while let Some((t, w)) = node.key()? {
                    match (t, w) {
                        (1, WireType::LengthDelimited) => {
                            this = utf8(node.bytes(t)?, "node id")?.to_string();
                        }
                        _ => node.skip(t, w)?,
                    }
                }
                id = Some(this);
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(id)
}

/// The gauge, counter or untyped value of a metric (0 when it has none).
fn metric_value(buf: &[u8]) -> Result<f64, PushError> {
    let mut r = Reader(buf);
    let mut value = None;
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (2 | 3 | 5, WireType::LengthDelimited) => {
                let mut inner = Reader(r.bytes(tag)?);
                while let Some((t, w)) = inner.key()? {
                    match (t, w) {
                        (1, WireType::SixtyFourBit) => value = value.or(Some(inner.f64(t)?)),
                        _ => inner.skip(t, w)?,
                    }
                }
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(value.unwrap_or(0.0))
}

/// The value of label `want` of a metric. Labels are few (Envoy's tagged form has one),
/// so they are looked up by walking, not collected. A malformed label reads as absent;
/// [`metric_value`] has already rejected a metric whose framing is broken.
fn label<'a>(metric: &'a [u8], want: &str) -> Option<&'a str> {
    let mut r = Reader(metric);
    while let Ok(Some((tag, wire))) = r.key() {
        if (tag, wire) != (1, WireType::LengthDelimited) {
            r.skip(tag, wire).ok()?;
            continue;
        }
        let mut pair = Reader(r.bytes(tag).ok()?);
        let (mut name, mut value) = (None, None);
        while let Ok(Some((t, w))) = pair.key() {
            match (t, w) {
                (1, WireType::LengthDelimited) => name = Some(pair.bytes(t).ok()?),
                (2, WireType::LengthDelimited) => value = Some(pair.bytes(t).ok()?),
                _ => pair.skip(t, w).ok()?,
            }
        }
        if name == Some(want.as_bytes()) {
            return std::str::from_utf8(value?).ok();
        }
    }
    None
}

fn utf8<'a>(b: &'a [u8], field: &'static str) -> Result<&'a str, PushError> {
    std::str::from_utf8(b).map_err(|_| PushError::Utf8 { field })
}

/// A cursor over protobuf wire format.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next field's tag and wire type; None at the end.
    fn key(&mut self) -> Result<Option<(u32, WireType)>, PushError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        Ok(Some(decode_key(&mut self.0)?))
    }

    /// A length-delimited field's bytes.
    fn bytes(&mut self, tag: u32) -> Result<&'a [u8], PushError> {
        let len = decode_varint(&mut self.0)?;
        let left = self.0.len();
        let n = usize::try_from(len)
            .ok()
            .filter(|n| *n <= left)
            .ok_or(PushError::Overrun { tag, len, left })?;
        let (field, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(field)
    }

    fn fixed<const N: usize>(&mut self, tag: u32) -> Result<[u8; N], PushError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(PushError::Short { tag })?;
        self.0 = rest;
        Ok(*head)
    }

    fn f64(&mut self, tag: u32) -> Result<f64, PushError> {
        Ok(f64::from_le_bytes(self.fixed::<8>(tag)?))
    }

    fn skip(&mut self, tag: u32, wire: WireType) -> Result<(), PushError> {
        match wire {
            WireType::Varint => {
                decode_varint(&mut self.0)?;
            }
            WireType::SixtyFourBit => {
                self.fixed::<8>(tag)?;
            }
            WireType::ThirtyTwoBit => {
                self.fixed::<4>(tag)?;
            }
            WireType::LengthDelimited => {
                self.bytes(tag)?;
            }
            WireType::StartGroup | WireType::EndGroup => return Err(PushError::Group { tag }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
