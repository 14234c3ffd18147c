//! One state-of-the-world ADS stream's protocol state, apart from the transport: requests
//! in, responses out. Every request repeats the stream's whole subscription of its type;
//! every response carries the whole type (Listeners and Clusters, which the protocol
//! sends whole) or the changed resources of those named (endpoints, routes). The
//! bookkeeping of what is subscribed, sent and ACKed is [`super::subscriptions`].

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use tracing::{debug, warn};

use super::cache::Cache;
use super::names::Names;
use super::resources::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};
use super::subscriptions::{type_label, wildcard, Settled, Subscriptions};
use super::variant::VariantStream;
use super::wire::Encoded;
use super::Variant;
use crate::telemetry::Metrics;

#[derive(Debug)]
pub(super) struct SotwStream {
    subs: Subscriptions<SotwSub>,
}

/// What a SotW stream keeps of a type beyond the shared bookkeeping.
#[derive(Debug, Default)]
pub(super) struct SotwSub {
    /// Hash of the names list of the last request, in the order sent (named types).
    names_hash: Option<u64>,
    /// Type version last sent (wildcard types).
    sent_type_version: Option<u64>,
}

/// A SotW request as the server reads it: envoy's `DiscoveryRequest` (same tags), but
/// its resource names stay slices of the received buffer (`bytes` has the wire type of
/// `string`, and tonic's buffer hands out slices without copying). Envoy repeats its
/// whole subscription in every request, ACKs included: at 10,000 names, decoding each
/// into a String was most of the controller's CPU in a fan-out to 100 Envoys. The names
/// are checked as UTF-8 and interned only when the list changed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SotwRequest {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, optional, tag = "2")]
    pub node: Option<Node>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub resource_names: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub response_nonce: String,
    #[prost(message, optional, tag = "6")]
    pub error_detail: Option<Status>,
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(r: DiscoveryRequest) -> Self {
        SotwRequest {
            version_info: r.version_info,
            node: r.node,
            resource_names: r.resource_names.into_iter().map(Bytes::from).collect(),
            type_url: r.type_url,
            response_nonce: r.response_nonce,
            error_detail: r.error_detail,
        }
    }
}

/// A hash of a names list, in order. Not for an adversary (a collision only makes the
/// stream keep its last list, and the names come over an authenticated stream): fast.
fn names_hash(names: &[Bytes]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    for n in names {
        h.write_usize(n.len());
        h.write(n);
    }
    h.finish()
}

impl VariantStream for SotwStream {
    const VARIANT: Variant = Variant::Sotw;
    type Req = SotwRequest;
    type Own = SotwSub;
    #[cfg(test)]
    type Response = envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

    fn new(id: u64) -> Self {
        SotwStream {
            subs: Subscriptions::new(Variant::Sotw, id),
        }
    }

    fn subscriptions(&self) -> &Subscriptions<SotwSub> {
        &self.subs
    }

    /// Handle one request; returns the responses to send.
    fn on_request(&mut self, req: SotwRequest, cache: &Cache, metrics: &Metrics) -> Vec<Encoded> {
        let Some(Settled { at, acked, .. }) = self.subs.request(
            req.node.as_ref(),
            &req.type_url,
            &req.response_nonce,
            req.error_detail.as_ref(),
            cache,
            metrics,
        ) else {
            return Vec::new();
        };
        let type_url = at.type_url;
        let mut resubscribed = false;
        if !wildcard(type_url) {
            // Envoy repeats its whole subscription in every request, ACKs included: at
            // 10,000 names a hash of the list, in the order sent, says whether it is the
            // one already held (a different order is a new list, read once).
            let hash = names_hash(&req.resource_names);
            let sub = &mut *at.sub;
            let same =
                sub.own.names_hash == Some(hash) && req.resource_names.len() == sub.names.len();
            if !same {
                let Ok(strs) = req
                    .resource_names
                    .iter()
                    .map(|n| std::str::from_utf8(n))
                    .collect::<Result<Vec<&str>, _>>()
                else {
                    warn!(node = %at.node, r#type = type_label(type_url), "request with a resource name that is not UTF-8; ignored");
                    return Vec::new();
                };
                let names = Names::new(cache.intern(type_url, strs));
                sub.set_names(names);
                sub.own.names_hash = Some(hash);
                sub.seen = None;
            }
            resubscribed = !same;
        }
        // The ACK view changes with the subscription (rebuilt) or with an ACK (the ACKed
        // resources alone), not otherwise.
        at.update_acks(cache, resubscribed, &acked);
        self.push(type_url, cache)
    }

    /// The cache changed: send what this stream's subscriptions are missing.
    fn on_change(&mut self, cache: &Cache) -> Vec<Encoded> {
        // Clusters, endpoints, listeners, routes: the order Envoy warms them in.
        let mut ordered = self.subs.types();
        ordered.sort_by_key(|t| match *t {
            CLUSTER_TYPE => 0,
            ENDPOINT_TYPE => 1,
            LISTENER_TYPE => 2,
            _ => 3,
        });
        ordered
            .into_iter()
            .flat_map(|t| self.push(t, cache))
            .collect()
    }
}

impl SotwStream {
    fn push(&mut self, type_url: &'static str, cache: &Cache) -> Vec<Encoded> {
        let Some(mut at) = self.subs.at(type_url) else {
            return Vec::new();
        };
        let (type_version, entries, total) = if wildcard(type_url) {
            // The type's version says whether anything changed; only then is it read.
            let sent = &mut at.sub.own.sent_type_version;
            let v = cache.version(type_url);
            if *sent == Some(v) || (v == 0 && sent.is_some()) {
                return Vec::new();
            }
            let (v, entries, total) = cache.read(type_url, None, |_, _| true);
            *sent = Some(v);
            (v, entries, total)
        } else {
            // What changed of the names subscribed to: SotW never says what is gone.
            let Some(changes) = at.changes(cache, false) else {
                return Vec::new();
            };
            (changes.version, changes.set, changes.total)
        };
        // Per-resource versions matter for named types (what changed since; what the
        // two-phase park waits to see ACKed). A wildcard type is sent whole at a type
        // version: remembering 10,000 names per stream for it would buy nothing.
        let named = !wildcard(type_url);
        let versions = if named {
            entries
                .iter()
                .map(|(n, e)| (n.clone(), e.version))
                .collect()
        } else {
            Vec::new()
        };
        let nonce = at.record_sent(versions);
        debug!(node = %at.node, r#type = at.label(), count = entries.len(), version = type_version, "push");
        let mut m = Encoded::default();
        m.string(1, type_version.to_string().as_bytes());
        // Every resource of the type (a wildcard type; a stream's first EDS request for
        // all clusters): the bytes every such stream shares. Else this stream's own.
        let whole = (entries.len() == total)
            .then(|| cache.whole(type_url, type_version, Variant::Sotw))
            .flatten();
        match whole {
            Some(run) => m.raw(run.bytes()),
            None => {
                for (_, e) in &entries {
                    m.message(2, &e.any);
                }
            }
        }
        m.string(4, type_url.as_bytes());
        m.string(5, nonce.as_bytes());
        vec![m]
    }
}

#[cfg(test)]
mod tests;
