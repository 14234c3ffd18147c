//! One delta (incremental) ADS stream's protocol state. The client says what it
//! subscribes to and unsubscribes from; the server sends only resources that changed
//! (and the names of removed ones). A wake or park is one resource on the wire.

use std::collections::HashMap;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tracing::{debug, info, warn};

use super::stream::{known_type, type_label, wildcard, Sub};
use super::wire::{self, Encoded};
use super::{Cache, Entry, Flavor, Name, Since};
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
    ) -> Vec<Encoded> {
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
        let names_before = sub.names.len();
        let changes_subscription =
            !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty();
        // Listeners and clusters: a first request naming nothing, or "*", is a wildcard
        // subscription.
        if first && wildcard(type_url) && req.resource_names_subscribe.is_empty() {
            sub.wildcard = true;
        }
        let subscribe = req
            .resource_names_subscribe
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "*");
        let add = cache.intern(type_url, subscribe);
        if req.resource_names_subscribe.iter().any(|n| n == "*") {
            sub.wildcard = true;
        }
        let mut remove: Vec<&str> = Vec::new();
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                remove.push(name);
                sub.unmark_sent(name);
            }
        }
        if !add.is_empty() || !remove.is_empty() {
            let names = sub.names.changed(add, &remove);
            sub.set_names(names);
        }
        // A reconnecting client says what it has; what is current need not be sent again.
        // Not counted as ACKed: the versions may be another controller's (a previous
        // leader's), and only an ACK of ours may let a park go on.
        let initial: Vec<(&String, u64)> = req
            .initial_resource_versions
            .iter()
            .filter_map(|(n, v)| Some((n, v.parse::<u64>().ok()?)))
            .collect();
        let names = cache.intern(type_url, initial.iter().map(|(n, _)| n.as_str()));
        for (name, (_, v)) in names.into_iter().zip(initial) {
            sub.mark_sent(&name, v);
        }
        // A new subscription is compared with everything once; after that, only with
        // what changed.
        if first || changes_subscription {
            sub.seen = None;
        }
        if type_url == crate::xds::resources::CLUSTER_TYPE {
            cache.note_clusters(self.id);
        }
        if !wildcard(type_url) {
            // Rebuilt when the subscription changes; else only the ACKed resources move.
            if changes_subscription
                || names_before != sub.names.len()
                || !cache.has_ack_view(self.id, type_url)
            {
                cache.record_acks(self.id, type_url, &sub.names);
            }
            if !acked.is_empty() {
                cache.ack(self.id, type_url, &acked);
            }
        }
        self.push(type_url, cache)
    }

    pub fn on_change(&mut self, cache: &Cache) -> Vec<Encoded> {
        let types: Vec<&'static str> = self.subs.keys().copied().collect();
        types
            .into_iter()
            .flat_map(|t| self.push(t, cache))
            .collect()
    }

    fn push(&mut self, type_url: &'static str, cache: &Cache) -> Vec<Encoded> {
        let Some(sub) = self.subs.get_mut(type_url) else {
            return Vec::new();
        };
        let unsent = |n: &str, version: u64| sub.sent(n) != Some(version);
        let since = sub
            .seen
            .map_or(Since::TooOld, |seen| cache.since(type_url, seen));
        let (type_version, changed, total, removed) = match since {
            Since::Current => return Vec::new(),
            // What changed since the last look, of what this stream subscribes to; what it
            // was sent and is removed now.
            Since::Changes {
                version,
                set,
                removed,
            } => {
                let changed: Vec<(Name, Entry)> = set
                    .into_iter()
                    .filter(|(n, e)| {
                        (sub.wildcard || sub.names.contains(n)) && unsent(n, e.version)
                    })
                    .collect();
                let removed: Vec<Name> = removed
                    .into_iter()
                    .filter(|n| sub.sent(n).is_some())
                    .collect();
                (version, changed, usize::MAX, removed)
            }
            // Everything this stream subscribes to, against what it was sent.
            Since::TooOld => {
                let (v, changed, total) = if sub.wildcard {
                    cache.read(type_url, None, unsent)
                } else {
                    let names: Vec<Name> = sub.names.iter().cloned().collect();
                    cache.read(type_url, Some(&names), unsent)
                };
                // Sent before, gone now: removed from the cache, or (named) unsubscribed.
                let sent = sub.sent_names();
                let gone = cache.missing(type_url, sent.iter());
                let removed: Vec<Name> = sent
                    .into_iter()
                    .filter(|n| gone.contains(n) || (!sub.wildcard && !sub.names.contains(n)))
                    .collect();
                (v, changed, total, removed)
            }
        };
        sub.seen = Some(type_version);
        if changed.is_empty() && removed.is_empty() {
            return Vec::new();
        }
        for n in &removed {
            sub.unmark_sent(n);
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let versions = changed
            .iter()
            .map(|(n, e)| (n.clone(), e.version))
            .collect();
        sub.record_sent(nonce.clone(), versions);
        debug!(node = %self.node, r#type = type_label(type_url), count = changed.len(), removed = removed.len(), "delta push");
        let mut m = Encoded::default();
        m.string(1, type_version.to_string().as_bytes());
        // Every resource of the type (a first wildcard or all-names subscription): the
        // encoding every such stream shares. Else this stream's own.
        let whole = (changed.len() == total && total > 0)
            .then(|| cache.whole(type_url, type_version, Flavor::Delta))
            .flatten();
        match whole {
            Some(run) => m.raw(run.bytes()),
            None => {
                for (name, e) in &changed {
                    let r = wire::delta_resource(name, &e.version.to_string(), &e.any);
                    m.message(2, &r);
                }
            }
        }
        m.string(4, type_url.as_bytes());
        for name in &removed {
            m.string(6, name.as_bytes());
        }
        m.string(5, nonce.as_bytes());
        vec![m]
    }
}

/// Tests read a stream's responses as Envoy does: decoded from the bytes it sends.
#[cfg(test)]
impl DeltaStream {
    pub(super) fn on_request_decoded(
        &mut self,
        req: DeltaDiscoveryRequest,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Vec<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse> {
        super::stream::decoded(self.on_request(req, cache, metrics))
    }

    pub(super) fn on_change_decoded(
        &mut self,
        cache: &Cache,
    ) -> Vec<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse> {
        super::stream::decoded(self.on_change(cache))
    }
}

#[cfg(test)]
mod tests;
