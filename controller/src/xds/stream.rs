//! One ADS stream's protocol state, apart from the transport: requests in, responses out.
//!
//! Per type it tracks the subscription (wildcard for Listener and Cluster, names for
//! endpoints), what it sent at which version, and the nonces it is waiting on. A request
//! whose `response_nonce` matches an outstanding nonce is an ACK, or a NACK when it carries
//! `error_detail`; a NACK is logged and counted and nothing is re-sent until the resource
//! changes again, so Envoy keeps its last good config.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tracing::{debug, info, warn};

use super::resources::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use super::wire::Encoded;
use super::{Cache, Entry, Flavor, Name, Since};
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
    pub(super) names: BTreeSet<Name>,
    pub(super) wildcard: bool,
    /// Version of each resource last sent.
    pub(super) sent: HashMap<Name, u64>,
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

impl Sub {
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
            self.sent.insert(name.clone(), *v);
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
fn names_hash(names: &[String]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    names.hash(&mut h);
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
        req: DiscoveryRequest,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Vec<Encoded> {
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
        let sub = self.subs.entry(type_url).or_default();

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
                let names: BTreeSet<Name> = cache
                    .intern(type_url, &req.resource_names)
                    .into_iter()
                    .collect();
                sub.sent.retain(|n, _| names.contains(n));
                sub.names = names;
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
            let sent = &sub.sent;
            let unsent = |n: &str, version: u64| sent.get(n) != Some(&version);
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
        req: DiscoveryRequest,
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
