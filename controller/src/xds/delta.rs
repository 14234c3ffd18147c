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
        for (name, version) in req.initial_resource_versions {
            if let Ok(v) = version.parse::<u64>() {
                sub.sent.insert(name.clone(), v);
                sub.acked.insert(name, v);
            }
        }
        if !wildcard(type_url) {
            let subscribed: Vec<String> = sub.names.iter().cloned().collect();
            cache.record_acks(self.id, &subscribed, &sub.acked);
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
        let (type_version, entries) = if sub.wildcard {
            cache.read(type_url, None)
        } else {
            cache.read(type_url, Some(&names))
        };
        let present: std::collections::HashSet<&str> =
            entries.iter().map(|(n, _)| n.as_str()).collect();
        let removed: Vec<String> = sub
            .sent
            .keys()
            .filter(|n| !present.contains(n.as_str()))
            .cloned()
            .collect();
        let changed: Vec<_> = entries
            .into_iter()
            .filter(|(n, e)| sub.sent.get(n) != Some(&e.version))
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
mod tests {
    use super::*;
    use crate::xds::resources::{self, Endpoints, CLUSTER_TYPE, ENDPOINT_TYPE};
    use prometheus_client::registry::Registry;

    fn cache() -> Cache {
        let cache = Cache::default();
        for s in ["a", "b"] {
            cache.set(
                CLUSTER_TYPE,
                s,
                resources::any(resources::cluster(s, std::time::Duration::from_secs(1))),
            );
            let up = Endpoints::Upstream(vec!["127.0.0.1:1".parse().expect("addr")]);
            cache.set(
                ENDPOINT_TYPE,
                s,
                resources::any(resources::load_assignment(s, &up)),
            );
        }
        cache
    }

    fn req(type_url: &str, sub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn wildcard_then_one_resource_per_change() {
        let (c, m) = (cache(), Metrics::register(&mut Registry::default()));
        let mut s = DeltaStream::new(1);
        let r = s.on_request(req(CLUSTER_TYPE, &[], ""), &c, &m);
        assert_eq!(r[0].resources.len(), 2, "wildcard: every cluster");
        assert!(s
            .on_request(req(CLUSTER_TYPE, &[], &r[0].nonce), &c, &m)
            .is_empty());
        let r = s.on_request(req(ENDPOINT_TYPE, &["b"], ""), &c, &m);
        assert_eq!(r[0].resources.len(), 1);
        assert_eq!(r[0].resources[0].name, "b");
        s.on_request(req(ENDPOINT_TYPE, &[], &r[0].nonce), &c, &m);

        let up = Endpoints::Upstream(vec!["127.0.0.1:2".parse().expect("addr")]);
        let v = c.set(
            ENDPOINT_TYPE,
            "b",
            resources::any(resources::load_assignment("b", &up)),
        );
        let r = s.on_change(&c);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].resources.len(), 1, "one CLA per wake");
        assert_eq!(r[0].resources[0].version, v.to_string());
        assert!(!c.all_acked("b", v));
        s.on_request(req(ENDPOINT_TYPE, &[], &r[0].nonce), &c, &m);
        assert!(c.all_acked("b", v));
    }

    #[test]
    fn initial_versions_are_not_resent_and_unsubscribe_stops_updates() {
        let (c, m) = (cache(), Metrics::register(&mut Registry::default()));
        let (_, entries) = c.read(ENDPOINT_TYPE, Some(&["a".to_string()]));
        let current = entries[0].1.version;
        let mut s = DeltaStream::new(1);
        let mut r = req(ENDPOINT_TYPE, &["a", "b"], "");
        r.initial_resource_versions = HashMap::from([("a".to_string(), current.to_string())]);
        let out = s.on_request(r, &c, &m);
        let names: Vec<&str> = out[0].resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b"], "a is current on the client");

        let mut unsub = req(ENDPOINT_TYPE, &[], &out[0].nonce);
        unsub.resource_names_unsubscribe = vec!["b".into()];
        s.on_request(unsub, &c, &m);
        let up = Endpoints::Upstream(vec!["127.0.0.1:3".parse().expect("addr")]);
        c.set(
            ENDPOINT_TYPE,
            "b",
            resources::any(resources::load_assignment("b", &up)),
        );
        assert!(s.on_change(&c).is_empty());
    }
}
