//! One ADS stream's protocol state, apart from the transport: requests in, responses out.
//!
//! Per type it tracks the subscription (wildcard for Listener and Cluster, names for
//! endpoints), what it sent at which version, and the nonces it is waiting on. A request
//! whose `response_nonce` matches an outstanding nonce is an ACK, or a NACK when it carries
//! `error_detail`; a NACK is logged and counted and nothing is re-sent until the resource
//! changes again, so Envoy keeps its last good config.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use tracing::{debug, info, warn};

use super::resources::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use super::wire::Encoded;
use super::{Cache, Entry, Flavor, Name, Names, Since};
use crate::telemetry::Metrics;

/// Outstanding responses remembered per type; older ones are dropped (an Envoy that
/// never ACKs cannot grow this without bound).
const MAX_INFLIGHT: usize = 64;

#[derive(Debug)]
pub(super) struct Inflight {
    nonce: String,
    sent_at: Instant,
    /// Resource versions in that response.
    resources: Vec<(Name, u64)>,
}

/// One stream's state for one resource type; shared by the SotW and delta streams.
#[derive(Debug, Default)]
pub(super) struct Sub {
    /// Names subscribed to (endpoints, routes); ignored while `wildcard`.
    /// Change only through [`Sub::set_names`], which keeps `sent` aligned.
    pub(super) names: Names,
    pub(super) wildcard: bool,
    /// Version of each resource last sent.
    sent: Sent,
    /// Type version last sent (SotW wildcard types).
    sent_type_version: Option<u64>,
    /// Hash of the names list of the last request (SotW), in the order sent.
    names_hash: Option<u64>,
    /// The type version up to which changes have been looked at (named types): the next
    /// look starts from there. None: look at every subscribed name (a new subscription).
    pub(super) seen: Option<u64>,
    inflight: VecDeque<Inflight>,
    dropped_inflight: u64,
}

/// The version of each resource last sent to a stream. For a named type (endpoints,
/// routes): aligned with the subscription's sorted names, 0 for not sent (versions start
/// at 1), 8 bytes a name where a map took about 40, at 10,000 names and hundreds of
/// streams. For a wildcard type (listeners, clusters; delta streams only need it): by
/// name, since what is sent is every resource of the type, not a list the stream holds.
#[derive(Debug)]
enum Sent {
    Aligned(Vec<u64>),
    ByName(HashMap<Name, u64>),
}

impl Default for Sent {
    fn default() -> Self {
        Sent::ByName(HashMap::new())
    }
}

impl Sub {
    pub(super) fn for_type(type_url: &str) -> Sub {
        let sent = if wildcard(type_url) {
            Sent::ByName(HashMap::new())
        } else {
            Sent::Aligned(Vec::new())
        };
        Sub {
            sent,
            ..Sub::default()
        }
    }

    /// The version of `name` last sent, if it was.
    pub(super) fn sent(&self, name: &str) -> Option<u64> {
        match &self.sent {
            Sent::Aligned(v) => self
                .names
                .index_of(name)
                .and_then(|i| v.get(i).copied())
                .filter(|v| *v != 0),
            Sent::ByName(m) => m.get(name).copied(),
        }
    }

    /// Remember `version` of `name` as sent (a named type: only a subscribed name).
    pub(super) fn mark_sent(&mut self, name: &Name, version: u64) {
        match &mut self.sent {
            Sent::Aligned(v) => {
                if let Some(slot) = self.names.index_of(name).and_then(|i| v.get_mut(i)) {
                    *slot = version;
                }
            }
            Sent::ByName(m) => {
                m.insert(name.clone(), version);
            }
        }
    }

    /// Forget that `name` was sent (it was removed, or unsubscribed).
    pub(super) fn unmark_sent(&mut self, name: &str) {
        match &mut self.sent {
            Sent::Aligned(v) => {
                if let Some(slot) = self.names.index_of(name).and_then(|i| v.get_mut(i)) {
                    *slot = 0;
                }
            }
            Sent::ByName(m) => {
                m.remove(name);
            }
        }
    }

    /// The names sent and not forgotten since.
    pub(super) fn sent_names(&self) -> Vec<Name> {
        match &self.sent {
            Sent::Aligned(v) => self
                .names
                .iter()
                .zip(v)
                .filter(|(_, v)| **v != 0)
                .map(|(n, _)| n.clone())
                .collect(),
            Sent::ByName(m) => m.keys().cloned().collect(),
        }
    }

    /// Subscribe to `names` from now on; what was sent of the names that stay is kept
    /// (a named type: a name that goes is forgotten).
    pub(super) fn set_names(&mut self, names: Names) {
        if let Sent::Aligned(v) = &mut self.sent {
            let old = std::mem::take(v);
            *v = names
                .iter()
                .map(|n| {
                    self.names
                        .index_of(n)
                        .and_then(|i| old.get(i).copied())
                        .unwrap_or(0)
                })
                .collect();
        }
        self.names = names;
    }

    /// Settle the response with `nonce`: an ACK records its versions (and returns them:
    /// the stream's ACK view in the cache follows), a NACK is logged and counted. Unknown
    /// (stale) nonces are ignored.
    pub(super) fn settle(
        &mut self,
        nonce: &str,
        error: Option<&envoy_types::pb::google::rpc::Status>,
        node: &str,
        label: &'static str,
        metrics: &Metrics,
    ) -> Vec<(Name, u64)> {
        let Some(pos) = self.inflight.iter().position(|f| f.nonce == nonce) else {
            return Vec::new();
        };
        // Responses are ACKed in order; anything older than this nonce is settled too.
        let Some(this) = self.inflight.drain(..=pos).next_back() else {
            return Vec::new();
        };
        match error {
            None => {
                metrics.observe_ack(label, this.sent_at.elapsed());
                debug!(node, r#type = label, nonce, "ACK");
                this.resources
            }
            Some(status) => {
                metrics.xds_nacks.get_or_create(&label.into()).inc();
                warn!(
                    node, r#type = label, nonce, error = %status.message,
                    "Envoy rejected config (NACK); it keeps its last good version"
                );
                Vec::new()
            }
        }
    }

    /// Remember a response sent, to settle it when its ACK comes.
    pub(super) fn record_sent(&mut self, nonce: String, resources: Vec<(Name, u64)>) {
        for (name, v) in &resources {
            self.mark_sent(name, *v);
        }
        self.inflight.push_back(Inflight {
            nonce,
            sent_at: Instant::now(),
            resources,
        });
        if self.inflight.len() > MAX_INFLIGHT {
            self.inflight.pop_front();
            self.dropped_inflight += 1;
        }
    }

    pub(super) fn dropped_inflight(&self) -> u64 {
        self.dropped_inflight
    }
}

#[derive(Debug)]
pub struct AdsStream {
    id: u64,
    node: String,
    nonce: u64,
    subs: HashMap<&'static str, Sub>,
}

/// A hash of a request's resource names, in order (see [`AdsStream::on_request`]).
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

pub(super) fn known_type(type_url: &str) -> Option<&'static str> {
    [LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE]
        .into_iter()
        .find(|t| *t == type_url)
}

/// Listeners and Clusters are subscribed to as a whole (SotW wildcard); endpoints and
/// routes by name.
pub(super) fn wildcard(type_url: &str) -> bool {
    type_url == LISTENER_TYPE || type_url == CLUSTER_TYPE
}

pub(super) fn type_label(type_url: &str) -> &'static str {
    match type_url {
        LISTENER_TYPE => "lds",
        CLUSTER_TYPE => "cds",
        ENDPOINT_TYPE => "eds",
        ROUTE_TYPE => "rds",
        _ => "other",
    }
}

impl AdsStream {
    pub fn new(id: u64) -> Self {
        AdsStream {
            id,
            node: String::new(),
            nonce: 0,
            subs: HashMap::new(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Resource names subscribed to, all types together.
    pub fn subscribed(&self) -> usize {
        self.subs.values().map(|s| s.names.len()).sum()
    }

    pub fn dropped_inflight(&self) -> u64 {
        self.subs.values().map(Sub::dropped_inflight).sum()
    }

    /// Handle one request; returns the responses to send.
    pub fn on_request(
        &mut self,
        req: impl Into<SotwRequest>,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Vec<Encoded> {
        let req = req.into();
        if self.node.is_empty() {
            if let Some(n) = &req.node {
                self.node = n.id.clone();
                info!(node = %self.node, cluster = %n.cluster, "ADS stream opened");
            }
        }
        let Some(type_url) = known_type(&req.type_url) else {
            warn!(node = %self.node, type_url = %req.type_url, "request for a type zenvoy does not serve");
            return Vec::new();
        };
        let label = type_label(type_url);
        let sub = self
            .subs
            .entry(type_url)
            .or_insert_with(|| Sub::for_type(type_url));

        let acked = if req.response_nonce.is_empty() {
            Vec::new()
        } else {
            sub.settle(
                &req.response_nonce,
                req.error_detail.as_ref(),
                &self.node,
                label,
                metrics,
            )
        };

        if type_url == CLUSTER_TYPE {
            cache.note_clusters(self.id);
        }
        if !wildcard(type_url) {
            // Envoy repeats its whole subscription in every request, ACKs included: at
            // 10,000 names a hash of the list, in the order sent, says whether it is the
            // one already held (a different order is a new list, read once).
            let hash = names_hash(&req.resource_names);
            let same = sub.names_hash == Some(hash) && req.resource_names.len() == sub.names.len();
            if !same {
                let Ok(strs) = req
                    .resource_names
                    .iter()
                    .map(|n| std::str::from_utf8(n))
                    .collect::<Result<Vec<&str>, _>>()
                else {
                    warn!(node = %self.node, r#type = label, "request with a resource name that is not UTF-8; ignored");
                    return Vec::new();
                };
                let names = Names::new(cache.intern(type_url, strs));
                sub.set_names(names);
                sub.names_hash = Some(hash);
                sub.seen = None;
            }
            // The ACK view changes with the subscription (rebuilt) or with an ACK (the
            // ACKed resources alone), not otherwise.
            if !same || !cache.has_ack_view(self.id, type_url) {
                cache.record_acks(self.id, type_url, &sub.names);
            }
            if !acked.is_empty() {
                cache.ack(self.id, type_url, &acked);
            }
        }
        self.push(type_url, cache)
    }

    /// The cache changed: send what this stream's subscriptions are missing.
    pub fn on_change(&mut self, cache: &Cache) -> Vec<Encoded> {
        let types: Vec<&'static str> = self.subs.keys().copied().collect();
        // Clusters, endpoints, listeners, routes: the order Envoy warms them in.
        let mut ordered = types;
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

    fn push(&mut self, type_url: &'static str, cache: &Cache) -> Vec<Encoded> {
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Vec::new();
        };
        let (type_version, entries, total) = if wildcard(type_url) {
            // The type's version says whether anything changed; only then is it read.
            let v = cache.version(type_url);
            if sub.sent_type_version == Some(v) || (v == 0 && sub.sent_type_version.is_some()) {
                return Vec::new();
            }
            let (v, entries, total) = cache.read(type_url, None, |_, _| true);
            sub.sent_type_version = Some(v);
            (v, entries, total)
        } else {
            let unsent = |n: &str, version: u64| sub.sent(n) != Some(version);
            let since = sub
                .seen
                .map_or(Since::TooOld, |seen| cache.since(type_url, seen));
            let (v, changed, total) = match since {
                Since::Current => return Vec::new(),
                // What changed since the last look, of what this stream subscribes to.
                Since::Changes { version, set, .. } => {
                    let changed: Vec<(Name, Entry)> = set
                        .into_iter()
                        .filter(|(n, e)| sub.names.contains(n) && unsent(n, e.version))
                        .collect();
                    (version, changed, usize::MAX)
                }
                Since::TooOld => {
                    let names: Vec<Name> = sub.names.iter().cloned().collect();
                    cache.read(type_url, Some(&names), unsent)
                }
            };
            sub.seen = Some(v);
            if changed.is_empty() {
                return Vec::new();
            }
            (v, changed, total)
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
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
        sub.record_sent(nonce.clone(), versions);
        debug!(node = %self.node, r#type = type_label(type_url), count = entries.len(), version = type_version, "push");
        let mut m = Encoded::default();
        m.string(1, type_version.to_string().as_bytes());
        // Every resource of the type (a wildcard type; a stream's first EDS request for
        // all clusters): the bytes every such stream shares. Else this stream's own.
        let whole = (entries.len() == total)
            .then(|| cache.whole(type_url, type_version, Flavor::Sotw))
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

/// Tests read a stream's responses as Envoy does: decoded from the bytes it sends.
#[cfg(test)]
impl AdsStream {
    pub(super) fn on_request_decoded(
        &mut self,
        req: impl Into<SotwRequest>,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Vec<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse> {
        decoded(self.on_request(req, cache, metrics))
    }

    pub(super) fn on_change_decoded(
        &mut self,
        cache: &Cache,
    ) -> Vec<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse> {
        decoded(self.on_change(cache))
    }
}

#[cfg(test)]
pub(super) fn decoded<M: prost::Message + Default>(v: Vec<Encoded>) -> Vec<M> {
    v.iter()
        .map(|e| e.decode().expect("a response decodes"))
        .collect()
}

#[cfg(test)]
mod tests;
