//! One delta (incremental) ADS stream's protocol state. The client says what it
//! subscribes to and unsubscribes from; the server sends only resources that changed
//! (and the names of removed ones). A wake or park is one resource on the wire. The
//! bookkeeping of what is subscribed, sent and ACKed is [`super::subscriptions`].

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tracing::debug;

use super::cache::Cache;
use super::subscriptions::{wildcard, Changes, Settled, Subscriptions};
use super::variant::VariantStream;
use super::wire::{self, Encoded};
use super::Variant;
use crate::telemetry::Metrics;

#[derive(Debug)]
pub(super) struct DeltaStream {
    /// A delta stream keeps nothing of a type beyond the shared bookkeeping.
    subs: Subscriptions<()>,
}

impl VariantStream for DeltaStream {
    const VARIANT: Variant = Variant::Delta;
    type Req = DeltaDiscoveryRequest;
    type Own = ();
    #[cfg(test)]
    type Response = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;

    fn new(id: u64) -> Self {
        DeltaStream {
            subs: Subscriptions::new(Variant::Delta, id),
        }
    }

    fn subscriptions(&self) -> &Subscriptions<()> {
        &self.subs
    }

    fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Vec<Encoded> {
        let Some(Settled { at, first, acked }) = self.subs.request(
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
        let sub = &mut *at.sub;
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
        // Rebuilt when the subscription changes; else only the ACKed resources move.
        let resubscribed = changes_subscription || names_before != sub.names.len();
        at.update_acks(cache, resubscribed, &acked);
        self.push(type_url, cache)
    }

    fn on_change(&mut self, cache: &Cache) -> Vec<Encoded> {
        self.subs
            .types()
            .into_iter()
            .flat_map(|t| self.push(t, cache))
            .collect()
    }
}

impl DeltaStream {
    fn push(&mut self, type_url: &'static str, cache: &Cache) -> Vec<Encoded> {
        let Some(mut at) = self.subs.at(type_url) else {
            return Vec::new();
        };
        // What changed of what this stream subscribes to; what it was sent and is gone.
        let Some(Changes {
            version: type_version,
            set: changed,
            total,
            removed,
        }) = at.changes(cache, true)
        else {
            return Vec::new();
        };
        let versions = changed
            .iter()
            .map(|(n, e)| (n.clone(), e.version))
            .collect();
        let nonce = at.record_sent(versions);
        debug!(node = %at.node, r#type = at.label(), count = changed.len(), removed = removed.len(), "delta push");
        let mut m = Encoded::default();
        m.string(1, type_version.to_string().as_bytes());
        // Every resource of the type (a first wildcard or all-names subscription): the
        // encoding every such stream shares. Else this stream's own.
        let whole = (changed.len() == total && total > 0)
            .then(|| cache.whole(type_url, type_version, Variant::Delta))
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

#[cfg(test)]
mod tests;
