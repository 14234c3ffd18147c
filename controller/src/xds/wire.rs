//! ADS responses as they go on the wire: encoded by hand from bytes encoded once, so a
//! resource's bytes (and a whole type's, for the responses that carry all of it) are
//! shared by every stream instead of copied into each.
//!
//! Why not tonic's codec: tonic encodes each message into a per-stream buffer that keeps
//! the capacity of the largest message it ever held. A 10,000-cluster CDS response is
//! 3.2 MB, so every connected Envoy kept megabytes for the life of its stream (16.8 MB of
//! 61 MB live for two streams). Here a response is a list of [`Bytes`] handed to HTTP/2
//! as they are: the big ones are the cache's own, reference-counted, and a stream's
//! small ones are freed once written.
//!
//! ```text
//!  DiscoveryResponse = version_info(1) resources(2)* type_url(4) nonce(5)
//!                      `--- per stream ---'  `--- shared ---' `--- per stream ----'
//! ```
//!
//! Protobuf lets fields come in any order and repeats of a repeated field anywhere, so
//! the shared run of `resources` can sit between per-stream fields unchanged.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tokio::sync::mpsc;
use tonic::Status;

/// A small run of fields is gathered into chunks of this size before it is handed on; a
/// shared run at least this big goes as it is.
const CHUNK: usize = 16 * 1024;

/// One protobuf message, in pieces.
#[derive(Debug, Default, Clone)]
pub struct Encoded {
    chunks: Vec<Bytes>,
    len: usize,
    /// Small fields waiting to become a chunk.
    open: BytesMut,
}

impl Encoded {
    fn flush(&mut self) {
        if !self.open.is_empty() {
            let chunk = std::mem::take(&mut self.open).freeze();
            self.chunks.push(chunk);
        }
    }

    fn open(&mut self, need: usize) -> &mut BytesMut {
        if self.open.capacity() - self.open.len() < need && !self.open.is_empty() {
            self.flush();
        }
        if self.open.capacity() == 0 {
            self.open = BytesMut::with_capacity(CHUNK.max(need));
        }
        &mut self.open
    }

    /// A string (or bytes) field.
    pub fn string(&mut self, tag: u32, value: &[u8]) {
        let need = 10 + value.len();
        let buf = self.open(need);
        let before = buf.len();
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value);
        self.len += buf.len() - before;
    }

    /// A message field whose encoding is `message`, copied in when small, shared when
    /// big.
    pub fn message(&mut self, tag: u32, message: &Bytes) {
        let buf = self.open(10);
        let before = buf.len();
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(message.len() as u64, buf);
        self.len += buf.len() - before;
        self.raw(message);
    }

    /// Bytes that are already fields (a [`Run`]).
    pub fn raw(&mut self, bytes: &Bytes) {
        if bytes.len() >= CHUNK {
            self.flush();
            self.chunks.push(bytes.clone());
        } else {
            self.open(bytes.len()).put_slice(bytes);
        }
        self.len += bytes.len();
    }

    /// The message's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message's pieces, in order.
    pub fn into_chunks(mut self) -> Vec<Bytes> {
        self.flush();
        self.chunks
    }

    /// The whole message in one buffer (tests, and decoding it back).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len);
        for c in &self.chunks {
            out.put_slice(c);
        }
        out.put_slice(&self.open);
        out.freeze()
    }

    /// Decode it as `M` (tests read responses this way: what they see is what Envoy
    /// gets).
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, prost::DecodeError> {
        M::decode(self.to_bytes())
    }
}

/// Repeated message fields encoded once (a type's every resource, in name order), to be
/// put whole into any number of responses with [`Encoded::raw`].
#[derive(Debug, Clone, Default)]
pub struct Run(Bytes);

impl Run {
    /// `messages` (each one's encoding) as repeats of field `tag`.
    pub fn new<'a>(tag: u32, messages: impl Iterator<Item = &'a Bytes> + Clone) -> Run {
        let len: usize = messages.clone().map(|m| field_len(tag, m.len())).sum();
        let mut out = BytesMut::with_capacity(len);
        for m in messages {
            encode_key(tag, WireType::LengthDelimited, &mut out);
            encode_varint(m.len() as u64, &mut out);
            out.put_slice(m);
        }
        Run(out.freeze())
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// Encoded length of a length-delimited field `tag` holding `len` bytes.
pub fn field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A delta `Resource` message: name(3), version(1), resource(2) = the Any's encoding.
pub fn delta_resource(name: &str, version: &str, any: &Bytes) -> Bytes {
    let len = field_len(3, name.len()) + field_len(1, version.len()) + field_len(2, any.len());
    let mut out = BytesMut::with_capacity(len);
    for (tag, value) in [(3, name.as_bytes()), (1, version.as_bytes())] {
        encode_key(tag, WireType::LengthDelimited, &mut out);
        encode_varint(value.len() as u64, &mut out);
        out.put_slice(value);
    }
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(any.len() as u64, &mut out);
    out.put_slice(any);
    out.freeze()
}

/// What a stream's task sends to its response body.
pub type Outgoing = Result<Encoded, Status>;

/// A gRPC response body fed by a stream's task: each message as its 5-byte gRPC header
/// and its pieces, then the trailers (`grpc-status` 0 when the task ends, or the status
/// it sent).
pub struct GrpcBody {
    rx: mpsc::Receiver<Outgoing>,
    pending: VecDeque<Bytes>,
    done: bool,
}

impl GrpcBody {
    pub fn new(rx: mpsc::Receiver<Outgoing>) -> Self {
        GrpcBody {
            rx,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn trailers(status: &Status) -> Frame<Bytes> {
        let mut map = http::HeaderMap::new();
        if status.add_header(&mut map).is_err() {
            // A message that cannot be a header value: say the code alone.
            let plain = Status::new(status.code(), "");
            let _ = plain.add_header(&mut map);
        }
        Frame::trailers(map)
    }
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
                let mut header = BytesMut::with_capacity(5);
                header.put_u8(0); // not compressed
                header.put_u32(len);
                self.pending.extend(message.into_chunks());
                Poll::Ready(Some(Ok(Frame::data(header.freeze()))))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Ok(Self::trailers(&status))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Ok(Self::trailers(&Status::ok("")))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse,
    };
    use envoy_types::pb::google::protobuf::Any;
    use http_body_util::BodyExt;
    use prost::Message;

    fn any(i: usize, size: usize) -> Any {
        Any {
            type_url: "type.googleapis.com/test".into(),
            value: vec![u8::try_from(i % 251).unwrap_or(0); size],
        }
    }

    #[test]
    fn a_response_with_a_shared_run_decodes_as_prost_encodes_it() {
        // Small and big resources: copied and shared pieces both.
        let anys: Vec<Any> = (0..50)
            .map(|i| any(i, if i % 7 == 0 { 40_000 } else { 90 }))
            .collect();
        let encoded: Vec<Bytes> = anys
            .iter()
            .map(|a| Bytes::from(a.encode_to_vec()))
            .collect();
        let run = Run::new(2, encoded[10..].iter());
        let mut m = Encoded::default();
        m.string(1, b"42");
        for e in &encoded[..10] {
            m.message(2, e);
        }
        m.raw(run.bytes());
        m.string(4, b"type.googleapis.com/test");
        m.string(5, b"7");
        let want = DiscoveryResponse {
            version_info: "42".into(),
            resources: anys,
            type_url: "type.googleapis.com/test".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        assert_eq!(m.len(), want.encoded_len());
        assert_eq!(m.decode::<DiscoveryResponse>().expect("decodes"), want);
        assert!(
            m.clone()
                .into_chunks()
                .iter()
                .any(|c| c.as_ptr() == run.bytes().as_ptr()),
            "the run is shared, not copied"
        );
    }

    #[test]
    fn delta_resources_decode_with_their_name_and_version() {
        let a = any(1, 30);
        let bytes = Bytes::from(a.encode_to_vec());
        let mut m = Encoded::default();
        m.string(1, b"9");
        m.message(2, &delta_resource("pg.db", "9", &bytes));
        m.string(4, b"t");
        m.string(6, b"gone");
        m.string(5, b"1");
        let d = m.decode::<DeltaDiscoveryResponse>().expect("decodes");
        assert_eq!(d.resources.len(), 1);
        assert_eq!(d.resources[0].name, "pg.db");
        assert_eq!(d.resources[0].version, "9");
        assert_eq!(d.resources[0].resource.as_ref(), Some(&a));
        assert_eq!(d.removed_resources, ["gone"]);
        assert_eq!(d.nonce, "1");
    }

    #[tokio::test]
    async fn the_body_frames_each_message_and_ends_with_the_status() {
        let (tx, rx) = mpsc::channel(4);
        let mut m = Encoded::default();
        m.string(5, b"n");
        let len = m.len();
        tx.send(Ok(m)).await.expect("send");
        tx.send(Err(Status::resource_exhausted("too many names")))
            .await
            .expect("send");
        drop(tx);
        let collected = GrpcBody::new(rx).collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        let data = collected.to_bytes();
        assert_eq!(data[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize,
            len
        );
        assert_eq!(data.len(), 5 + len);
        assert_eq!(trailers["grpc-status"], "8");
        assert_eq!(trailers["grpc-message"], "too%20many%20names");
    }
}
