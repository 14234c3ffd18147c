//! One ADS stream's protocol state, apart from the transport: requests in, responses out.
//!
//! Per type it tracks the subscription (wildcard for Listener and Cluster, names for
//! endpoints), what it sent at which version, and the nonces it is waiting on. A request
//! whose `response_nonce` matches an outstanding nonce is an ACK, or a NACK when it carries
//! `error_detail`; a NACK is logged and counted and nothing is re-sent until the resource
//! changes again, so Envoy keeps its last good config.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::{debug, info, warn};

use super::resources::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use super::Cache;
use crate::telemetry::Metrics;

/// Outstanding responses remembered per type; older ones are dropped (an Envoy that
/// never ACKs cannot grow this without bound).
const MAX_INFLIGHT: usize = 64;

#[derive(Debug)]
pub(super) struct Inflight {
    nonce: String,
    sent_at: Instant,
    /// Resource versions in that response.
    resources: Vec<(String, u64)>,
}

/// One stream's state for one resource type; shared by the SotW and delta streams.
#[derive(Debug, Default)]
pub(super) struct Sub {
    /// Names subscribed to (endpoints, routes); ignored while `wildcard`.
    pub(super) names: BTreeSet<String>,
    pub(super) wildcard: bool,
    /// Version of each resource last sent.
    pub(super) sent: HashMap<String, u64>,
    /// Type version last sent (SotW wildcard types).
    sent_type_version: Option<u64>,
    inflight: VecDeque<Inflight>,
    /// Version of each resource the client ACKed.
    pub(super) acked: HashMap<String, u64>,
    dropped_inflight: u64,
}

impl Sub {
    /// Settle the response with `nonce`: an ACK records its versions, a NACK is logged and
    /// counted. Unknown (stale) nonces are ignored.
    pub(super) fn settle(
        &mut self,
        nonce: &str,
        error: Option<&envoy_types::pb::google::rpc::Status>,
        node: &str,
        label: &'static str,
        metrics: &Metrics,
    ) {
        let Some(pos) = self.inflight.iter().position(|f| f.nonce == nonce) else {
            return;
        };
        // Responses are ACKed in order; anything older than this nonce is settled too.
        let Some(this) = self.inflight.drain(..=pos).next_back() else {
            return;
        };
        match error {
            None => {
                metrics.observe_ack(label, this.sent_at.elapsed());
                for (name, v) in this.resources {
                    let a = self.acked.entry(name).or_default();
                    *a = (*a).max(v);
                }
                debug!(node, r#type = label, nonce, "ACK");
            }
            Some(status) => {
                metrics.xds_nacks.get_or_create(&label.into()).inc();
                warn!(
                    node, r#type = label, nonce, error = %status.message,
                    "Envoy rejected config (NACK); it keeps its last good version"
                );
            }
        }
    }

    /// Remember a response sent, to settle it when its ACK comes.
    pub(super) fn record_sent(&mut self, nonce: String, resources: Vec<(String, u64)>) {
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
    ) -> Vec<DiscoveryResponse> {
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

        if !req.response_nonce.is_empty() {
            sub.settle(
                &req.response_nonce,
                req.error_detail.as_ref(),
                &self.node,
                label,
                metrics,
            );
        }

        if type_url == CLUSTER_TYPE {
            cache.note_clusters(self.id);
        }
        if !wildcard(type_url) {
            let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
            if names != sub.names {
                sub.sent.retain(|n, _| names.contains(n));
                sub.acked.retain(|n, _| names.contains(n));
                sub.names = names;
            }
            cache.record_acks(self.id, type_url, &sub.names, &sub.acked);
        }
        self.push(type_url, cache)
    }

    /// The cache changed: send what this stream's subscriptions are missing.
    pub fn on_change(&mut self, cache: &Cache) -> Vec<DiscoveryResponse> {
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

    fn push(&mut self, type_url: &'static str, cache: &Cache) -> Vec<DiscoveryResponse> {
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Vec::new();
        };
        let (type_version, entries) = if wildcard(type_url) {
            let (v, entries) = cache.read(type_url, None, |_, _| true);
            if sub.sent_type_version == Some(v) || (v == 0 && sub.sent_type_version.is_some()) {
                return Vec::new();
            }
            sub.sent_type_version = Some(v);
            (v, entries)
        } else {
            let names: Vec<String> = sub.names.iter().cloned().collect();
            let sent = &sub.sent;
            let (v, changed) = cache.read(type_url, Some(&names), |n, version| {
                sent.get(n) != Some(&version)
            });
            if changed.is_empty() {
                return Vec::new();
            }
            (v, changed)
        };
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        // Per-resource versions matter for named types (what changed since; what the
        // two-phase park waits to see ACKed). A wildcard type is sent whole at a type
        // version: remembering 10,000 names per stream for it would buy nothing.
        let named = !wildcard(type_url);
        let mut resources = Vec::with_capacity(entries.len());
        let mut versions = Vec::with_capacity(if named { entries.len() } else { 0 });
        for (name, e) in entries {
            if named {
                versions.push((name, e.version));
            }
            resources.push(e.any);
        }
        sub.record_sent(nonce.clone(), versions);
        debug!(node = %self.node, r#type = type_label(type_url), count = resources.len(), version = type_version, "push");
        vec![DiscoveryResponse {
            version_info: type_version.to_string(),
            resources,
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        }]
    }
}

#[cfg(test)]
mod tests;
