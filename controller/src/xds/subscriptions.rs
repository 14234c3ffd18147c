//! One ADS stream's subscriptions: the bookkeeping the SotW and the delta stream share.
//!
//! Per resource type a stream subscribes to names (endpoints, routes) or to everything
//! (wildcard: Listeners and Clusters), was sent each resource at some version, and waits
//! on the nonces of the responses it has not settled. A request whose `response_nonce`
//! matches an outstanding nonce is an ACK, or a NACK when it carries `error_detail`; a
//! NACK is logged and counted and nothing is re-sent until the resource changes again,
//! so Envoy keeps its last good config. An endpoint ACK also moves the stream's view in
//! the cache's ACK registry, which the two-phase park waits on.
//!
//! ```text
//!  request -> Subscriptions::request: node, type, settle the nonce (ACK / NACK) -> Settled
//!             variant: its names list (SotW) or (un)subscribe + initial versions (delta)
//!          -> At::update_acks: the stream's endpoint ACK view in the cache
//!  push    -> At::changes: what changed since the last look, of what is subscribed and
//!             not sent yet (delta: and what was sent and is gone)
//!             variant: encodes the response
//!          -> At::record_sent: numbers it, remembers it to settle its ACK
//! ```
//!
//! A variant keeps its own per-type state next to the shared one ([`Sub::own`]).

use std::collections::{hash_map, HashMap, VecDeque};
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status;
use tracing::{debug, info, warn};

use super::cache::{Cache, Entry, Since};
use super::names::Names;
use super::resources::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use super::{Name, Variant};
use crate::telemetry::Metrics;

/// Outstanding responses remembered per type; older ones are dropped (an Envoy that
/// never ACKs cannot grow this without bound).
const MAX_INFLIGHT: usize = 64;

/// The types zenvoy serves, as the one `'static` string of each.
fn known_type(type_url: &str) -> Option<&'static str> {
    [LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE]
        .into_iter()
        .find(|t| *t == type_url)
}

/// Listeners and Clusters are subscribed to as a whole (SotW wildcard); endpoints and
/// routes by name.
pub(super) fn wildcard(type_url: &str) -> bool {
    type_url == LISTENER_TYPE || type_url == CLUSTER_TYPE
}

/// A type's label in logs and metrics.
pub(super) fn type_label(type_url: &str) -> &'static str {
    match type_url {
        LISTENER_TYPE => "lds",
        CLUSTER_TYPE => "cds",
        ENDPOINT_TYPE => "eds",
        ROUTE_TYPE => "rds",
        _ => "other",
    }
}

/// A response sent and not settled yet.
#[derive(Debug)]
struct Inflight {
    nonce: String,
    sent_at: Instant,
    /// Resource versions in that response.
    resources: Vec<(Name, u64)>,
}

/// One stream's state for one resource type, with `V`, the variant's own state of it.
#[derive(Debug, Default)]
pub(super) struct Sub<V> {
    /// Names subscribed to (endpoints, routes); ignored while `wildcard`.
    /// Change only through [`Sub::set_names`], which keeps `sent` aligned.
    pub(super) names: Names,
    /// Subscribed to every resource of the type (delta; SotW's wildcard is the type's).
    pub(super) wildcard: bool,
    /// Version of each resource last sent.
    sent: Sent,
    /// The type version up to which changes have been looked at (named types): the next
    /// look starts from there. None: look at every subscribed name (a new subscription).
    pub(super) seen: Option<u64>,
    inflight: VecDeque<Inflight>,
    dropped_inflight: u64,
    /// What only this stream's variant keeps of the type.
    pub(super) own: V,
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

impl<V: Default> Sub<V> {
    pub(super) fn for_type(type_url: &str) -> Self {
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
}

impl<V> Sub<V> {
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
    fn settle(
        &mut self,
        nonce: &str,
        error: Option<&Status>,
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
    fn record_sent(&mut self, nonce: String, resources: Vec<(Name, u64)>) {
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
}

/// Every type a stream subscribes to, and what its responses share: the stream's id
/// (its ACK view in the cache), the node it serves, the last nonce it gave.
#[derive(Debug)]
pub(super) struct Subscriptions<V> {
    variant: Variant,
    id: u64,
    node: String,
    nonce: u64,
    by_type: HashMap<&'static str, Sub<V>>,
}

/// A request whose response nonce has been settled.
pub(super) struct Settled<'s, V> {
    pub(super) at: At<'s, V>,
    /// The stream had not asked for this type before.
    pub(super) first: bool,
    /// Resource versions this request ACKs.
    pub(super) acked: Vec<(Name, u64)>,
}

/// One type of a stream's subscriptions, with what its responses need of the stream.
pub(super) struct At<'s, V> {
    pub(super) type_url: &'static str,
    pub(super) sub: &'s mut Sub<V>,
    /// The node the stream serves, for logs.
    pub(super) node: &'s str,
    id: u64,
    nonce: &'s mut u64,
}

/// What changed of a type a stream subscribes to, and is not sent yet.
pub(super) struct Changes {
    /// The type's version now.
    pub(super) version: u64,
    pub(super) set: Vec<(Name, Entry)>,
    /// How many resources the type has, when `set` was read from all of them (else
    /// `usize::MAX`): `set.len() == total` says it is every resource of the type.
    pub(super) total: usize,
    /// Sent before, gone now (only when asked for).
    pub(super) removed: Vec<Name>,
}

impl<V> Subscriptions<V> {
    pub(super) fn new(variant: Variant, id: u64) -> Self {
        Subscriptions {
            variant,
            id,
            node: String::new(),
            nonce: 0,
            by_type: HashMap::new(),
        }
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// Resource names subscribed to, all types together.
    pub(super) fn subscribed(&self) -> usize {
        self.by_type.values().map(|s| s.names.len()).sum()
    }

    pub(super) fn dropped_inflight(&self) -> u64 {
        self.by_type.values().map(|s| s.dropped_inflight).sum()
    }

    /// The types subscribed to.
    pub(super) fn types(&self) -> Vec<&'static str> {
        self.by_type.keys().copied().collect()
    }

    /// One type's subscription, to push to.
    pub(super) fn at(&mut self, type_url: &'static str) -> Option<At<'_, V>> {
        let sub = self.by_type.get_mut(type_url)?;
        Some(At {
            type_url,
            sub,
            node: &self.node,
            id: self.id,
            nonce: &mut self.nonce,
        })
    }
}

impl<V: Default> Subscriptions<V> {
    /// What every request does first, either variant: the first one names the node; the
    /// type must be one zenvoy serves (else None); the response it answers is settled;
    /// a stream that asks for Clusters is an Envoy.
    pub(super) fn request(
        &mut self,
        node: Option<&Node>,
        type_url: &str,
        response_nonce: &str,
        error: Option<&Status>,
        cache: &Cache,
        metrics: &Metrics,
    ) -> Option<Settled<'_, V>> {
        if self.node.is_empty() {
            if let Some(n) = node {
                self.node = n.id.clone();
                match self.variant {
                    Variant::Sotw => {
                        info!(node = %self.node, cluster = %n.cluster, "ADS stream opened");
                    }
                    Variant::Delta => {
                        info!(node = %self.node, cluster = %n.cluster, "delta ADS stream opened");
                    }
                }
            }
        }
        let Some(type_url) = known_type(type_url) else {
            warn!(node = %self.node, type_url = %type_url, "request for a type zenvoy does not serve");
            return None;
        };
        let label = type_label(type_url);
        let (first, sub) = match self.by_type.entry(type_url) {
            hash_map::Entry::Occupied(e) => (false, e.into_mut()),
            hash_map::Entry::Vacant(e) => (true, e.insert(Sub::for_type(type_url))),
        };
        let acked = if response_nonce.is_empty() {
            Vec::new()
        } else {
            sub.settle(response_nonce, error, &self.node, label, metrics)
        };
        if type_url == CLUSTER_TYPE {
            cache.acks.note_clusters(self.id);
        }
        Some(Settled {
            at: At {
                type_url,
                sub,
                node: &self.node,
                id: self.id,
                nonce: &mut self.nonce,
            },
            first,
            acked,
        })
    }
}

impl<V> At<'_, V> {
    /// The type's label in logs and metrics.
    pub(super) fn label(&self) -> &'static str {
        type_label(self.type_url)
    }

    /// Bring the stream's ACK view in the cache (endpoints only) up to this request:
    /// rebuilt when `resubscribed` (or when there is none yet), else only the resources
    /// `acked` move.
    pub(super) fn update_acks(&self, cache: &Cache, resubscribed: bool, acked: &[(Name, u64)]) {
        if wildcard(self.type_url) {
            return;
        }
        if resubscribed || !cache.acks.has_view(self.id, self.type_url) {
            cache.acks.record(self.id, self.type_url, &self.sub.names);
        }
        if !acked.is_empty() {
            cache.acks.ack(self.id, self.type_url, acked);
        }
    }

    /// What changed since the last look (everything, on a new subscription) of what the
    /// stream subscribes to and was not sent at that version; with `removals`, also what
    /// it was sent and is gone now (removed from the cache, or a name unsubscribed),
    /// which is then forgotten as sent. None when there is nothing to send.
    pub(super) fn changes(&mut self, cache: &Cache, removals: bool) -> Option<Changes> {
        let type_url = self.type_url;
        let sub = &mut *self.sub;
        let unsent = |n: &str, version: u64| sub.sent(n) != Some(version);
        let since = sub
            .seen
            .map_or(Since::TooOld, |seen| cache.since(type_url, seen));
        let (version, set, total, removed) = match since {
            Since::Current => return None,
            // What changed since the last look, of what this stream subscribes to; what it
            // was sent and is removed now.
            Since::Changes {
                version,
                set,
                removed,
            } => {
                let set: Vec<(Name, Entry)> = set
                    .into_iter()
                    .filter(|(n, e)| {
                        (sub.wildcard || sub.names.contains(n)) && unsent(n, e.version)
                    })
                    .collect();
                let removed: Vec<Name> = if removals {
                    removed
                        .into_iter()
                        .filter(|n| sub.sent(n).is_some())
                        .collect()
                } else {
                    Vec::new()
                };
                (version, set, usize::MAX, removed)
            }
            // Everything this stream subscribes to, against what it was sent.
            Since::TooOld => {
                let (v, set, total) = if sub.wildcard {
                    cache.read(type_url, None, unsent)
                } else {
                    let names: Vec<Name> = sub.names.iter().cloned().collect();
                    cache.read(type_url, Some(&names), unsent)
                };
                let removed: Vec<Name> = if removals {
                    // Sent before, gone now: removed from the cache, or (named)
                    // unsubscribed.
                    let sent = sub.sent_names();
                    let gone = cache.missing(type_url, sent.iter());
                    sent.into_iter()
                        .filter(|n| gone.contains(n) || (!sub.wildcard && !sub.names.contains(n)))
                        .collect()
                } else {
                    Vec::new()
                };
                (v, set, total, removed)
            }
        };
        sub.seen = Some(version);
        if set.is_empty() && removed.is_empty() {
            return None;
        }
        for n in &removed {
            sub.unmark_sent(n);
        }
        Some(Changes {
            version,
            set,
            total,
            removed,
        })
    }

    /// Number a response that sends `versions` and remember it, to settle it when its
    /// ACK comes. Returns its nonce.
    pub(super) fn record_sent(&mut self, versions: Vec<(Name, u64)>) -> String {
        *self.nonce += 1;
        let nonce = self.nonce.to_string();
        self.sub.record_sent(nonce.clone(), versions);
        nonce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named type's sent versions follow their names as the subscription changes.
    #[test]
    fn sent_versions_stay_with_their_names() {
        let n = |s: &str| Name::from(s);
        let mut sub = Sub::<()>::for_type(ENDPOINT_TYPE);
        sub.set_names(Names::new([n("b"), n("d")]));
        sub.mark_sent(&n("b"), 3);
        sub.mark_sent(&n("z"), 9);
        assert_eq!(sub.sent("z"), None, "not subscribed: not remembered");
        sub.set_names(Names::new([n("a"), n("b"), n("c")]));
        assert_eq!(sub.sent("b"), Some(3));
        assert_eq!(sub.sent("a"), None);
        assert_eq!(sub.sent_names(), [n("b")]);
        sub.unmark_sent("b");
        assert_eq!(sub.sent("b"), None);
        sub.set_names(Names::new([n("c")]));
        sub.set_names(Names::new([n("b"), n("c")]));
        assert_eq!(
            sub.sent("b"),
            None,
            "a name that went and came back was forgotten"
        );
    }
}
