//! One delta (incremental) ADS stream's protocol state. The client says what it
//! subscribes to and unsubscribes from; the server sends only resources that changed
//! (and the names of removed ones). A wake or park is one resource on the wire.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tracing::{debug, info, warn};

use super::stream::{known_type, type_label, wildcard, Sub};
use super::Cache;
use crate::telemetry::Metrics;

#[derive(Debug)]
pub struct DeltaStream {
    id: u64,
    node: String,
    nonce: u64,
    subs: HashMap<&'static str, Sub>,
}

impl DeltaStream {
    pub fn new(id: u64) -> Self {
        DeltaStream {
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

    pub fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Vec<DeltaDiscoveryResponse> {
        if self.node.is_empty() {
            if let Some(n) = &req.node {
                self.node = n.id.clone();
                info!(node = %self.node, cluster = %n.cluster, "delta ADS stream opened");
            }
        }
        let Some(type_url) = known_type(&req.type_url) else {
            warn!(node = %self.node, type_url = %req.type_url, "request for a type zenvoy does not serve");
            return Vec::new();
        };
        let label = type_label(type_url);
        let first = !self.subs.contains_key(type_url);
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
        // Listeners and clusters: a first request naming nothing, or "*", is a wildcard
        // subscription.
        if first && wildcard(type_url) && req.resource_names_subscribe.is_empty() {
            sub.wildcard = true;
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                sub.names.insert(name);
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
                sub.sent.remove(name);
                sub.acked.remove(name);
            }
        }
        // A reconnecting client says what it has; what is current need not be sent again.
        // Not counted as ACKed: the versions may be another controller's (a previous
        // leader's), and only an ACK of ours may let a park go on.
        for (name, version) in req.initial_resource_versions {
            if let Ok(v) = version.parse::<u64>() {
                sub.sent.insert(name, v);
            }
        }
        if type_url == crate::xds::resources::CLUSTER_TYPE {
            cache.note_clusters(self.id);
        }
        if !wildcard(type_url) {
            cache.record_acks(self.id, type_url, &sub.names, &sub.acked);
        }
        self.push(type_url, cache)
    }

    pub fn on_change(&mut self, cache: &Cache) -> Vec<DeltaDiscoveryResponse> {
        let types: Vec<&'static str> = self.subs.keys().copied().collect();
        types
            .into_iter()
            .flat_map(|t| self.push(t, cache))
            .collect()
    }

    fn push(&mut self, type_url: &'static str, cache: &Cache) -> Vec<DeltaDiscoveryResponse> {
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Vec::new();
        };
        let names: Vec<String> = sub.names.iter().cloned().collect();
        let sent = &sub.sent;
        let unsent = |n: &str, version: u64| sent.get(n) != Some(&version);
        let (type_version, changed) = if sub.wildcard {
            cache.read(type_url, None, unsent)
        } else {
            cache.read(type_url, Some(&names), unsent)
        };
        // Sent before, gone now: removed from the cache, or (named) unsubscribed.
        let gone = cache.missing(type_url, sub.sent.keys());
        let removed: Vec<String> = sub
            .sent
            .keys()
            .filter(|n| gone.contains(n) || (!sub.wildcard && !sub.names.contains(*n)))
            .cloned()
            .collect();
        if changed.is_empty() && removed.is_empty() {
            return Vec::new();
        }
        for n in &removed {
            sub.sent.remove(n);
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let versions = changed
            .iter()
            .map(|(n, e)| (n.clone(), e.version))
            .collect();
        let resources = changed
            .into_iter()
            .map(|(name, e)| Resource {
                name,
                version: e.version.to_string(),
                resource: Some(e.any),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        sub.record_sent(nonce.clone(), versions);
        debug!(node = %self.node, r#type = type_label(type_url), count = resources.len(), removed = removed.len(), "delta push");
        vec![DeltaDiscoveryResponse {
            system_version_info: type_version.to_string(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        }]
    }
}

#[cfg(test)]
mod tests;
