//! What the connected streams have ACKed, across streams: the planner's two-phase park
//! waits for every stream subscribed to an assignment to ACK its new version, and a new
//! service's front door for every Envoy to have its assignment warm. Each stream keeps
//! its own view here (fed by [`super::subscriptions`]); the planner reads them all
//! through [`zenvoy_core::planner::Acks`], which the [`Cache`] implements.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use zenvoy_base::lock;

use super::cache::Cache;
use super::resources;
use super::subscriptions::Names;
use super::Name;

/// What every stream has ACKed, for the two-phase park (stream id -> CLA name ->
/// version), and which streams are Envoys. ClusterLoadAssignments only: a stream's
/// requests of other types (routes above all, which Envoy asks for on the same stream)
/// must not replace its endpoint subscription, or a park would stop waiting for that
/// stream's ACK.
#[derive(Debug, Default)]
pub(super) struct AckRegistry {
    views: Mutex<HashMap<u64, AckView>>,
    /// Streams that subscribe to Clusters: Envoys (a holder asks for endpoints only).
    cluster_streams: Mutex<HashSet<u64>>,
}

/// One stream's ACKed version of each name it subscribes to (0: none yet), aligned with
/// its sorted names, which it shares with the stream's subscription: at 10,000 names
/// this is 80 KB of versions per stream where a map of its own cost 400 KB.
#[derive(Debug)]
struct AckView {
    names: Names,
    acked: Vec<u64>,
}

impl AckView {
    fn get(&self, name: &str) -> Option<u64> {
        self.names.index_of(name).map(|i| self.acked[i])
    }
}

impl AckRegistry {
    /// True when every stream subscribed to ClusterLoadAssignment `name` has ACKed
    /// `version` or later. Streams not subscribed to it do not count.
    pub(super) fn all_acked(&self, name: &str, version: u64) -> bool {
        lock(&self.views)
            .values()
            .filter_map(|view| view.get(name))
            .all(|acked| acked >= version)
    }

    /// True when some connected stream subscribes to ClusterLoadAssignment `name` (it
    /// has asked for it, ACKed or not).
    pub(super) fn subscribed(&self, name: &str) -> bool {
        lock(&self.views)
            .values()
            .any(|view| view.names.contains(name))
    }

    /// Number of connected streams that subscribe to Clusters (Envoys).
    pub(super) fn cluster_streams(&self) -> usize {
        lock(&self.cluster_streams).len()
    }

    /// True when every stream that subscribes to Clusters (every Envoy) has ACKed
    /// ClusterLoadAssignment `name` at `version` or later. An Envoy that has not asked
    /// for it yet counts as not warm.
    pub(super) fn warm_everywhere(&self, name: &str, version: u64) -> bool {
        let envoys = lock(&self.cluster_streams).clone();
        let views = lock(&self.views);
        envoys.iter().all(|id| {
            views
                .get(id)
                .and_then(|view| view.get(name))
                .is_some_and(|acked| acked >= version)
        })
    }

    /// `stream` subscribes to Clusters: it is an Envoy.
    pub(super) fn note_clusters(&self, stream: u64) {
        lock(&self.cluster_streams).insert(stream);
    }

    /// Number of connected ADS streams that have sent an endpoint (EDS) request.
    pub(super) fn streams(&self) -> usize {
        lock(&self.views).len()
    }

    /// Record what `stream` subscribes to of `type_url`, keeping the versions it ACKed of
    /// the names it still subscribes to (0 for new ones). Only ClusterLoadAssignments are
    /// kept (see [`AckRegistry`]); other types are ignored, so a route request leaves the
    /// stream's endpoint view as it was. This view is the stream's only record of its
    /// ACKs: at 10,000 names a second copy per stream would cost megabytes per Envoy.
    pub(super) fn record(&self, stream: u64, type_url: &str, subscribed: &Names) {
        if type_url != resources::ENDPOINT_TYPE {
            return;
        }
        let mut views = lock(&self.views);
        let old = views.remove(&stream);
        let acked = subscribed
            .iter()
            .map(|n| old.as_ref().and_then(|o| o.get(n)).unwrap_or(0))
            .collect();
        views.insert(
            stream,
            AckView {
                names: subscribed.clone(),
                acked,
            },
        );
    }

    /// Whether `stream` has an ACK view of `type_url` (only endpoints have one).
    pub(super) fn has_view(&self, stream: u64, type_url: &str) -> bool {
        type_url != resources::ENDPOINT_TYPE || lock(&self.views).contains_key(&stream)
    }

    /// `stream` ACKed these versions of resources it subscribes to (names it does not
    /// subscribe to are left out: an ACK cannot subscribe).
    pub(super) fn ack(&self, stream: u64, type_url: &str, acked: &[(Name, u64)]) {
        if type_url != resources::ENDPOINT_TYPE {
            return;
        }
        let mut views = lock(&self.views);
        let Some(view) = views.get_mut(&stream) else {
            return;
        };
        for (name, version) in acked {
            if let Some(i) = view.names.index_of(name) {
                view.acked[i] = view.acked[i].max(*version);
            }
        }
    }

    /// `stream` ended: it holds nothing up any more.
    pub(super) fn forget(&self, stream: u64) {
        lock(&self.cluster_streams).remove(&stream);
        lock(&self.views).remove(&stream);
    }
}

/// What the runtime and the benchmarks ask of the connected streams.
impl Cache {
    /// True when every stream subscribed to ClusterLoadAssignment `name` has ACKed
    /// `version` or later. Streams not subscribed to it do not count.
    pub fn all_acked(&self, name: &str, version: u64) -> bool {
        self.acks.all_acked(name, version)
    }

    /// True when some connected stream subscribes to ClusterLoadAssignment `name` (it
    /// has asked for it, ACKed or not). Lets a caller publish an update only once a
    /// client will receive it as an update, e.g. to time EDS update -> effect.
    pub fn subscribed(&self, name: &str) -> bool {
        self.acks.subscribed(name)
    }

    /// Number of connected streams that subscribe to Clusters (Envoys).
    pub fn cluster_streams(&self) -> usize {
        self.acks.cluster_streams()
    }

    /// True when every stream that subscribes to Clusters (every Envoy) has ACKed
    /// ClusterLoadAssignment `name` at `version` or later: the cluster is warm in every
    /// Envoy. An Envoy that has not asked for it yet counts as not warm.
    pub fn warm_everywhere(&self, name: &str, version: u64) -> bool {
        self.acks.warm_everywhere(name, version)
    }

    /// Number of connected ADS streams that have sent an endpoint (EDS) request.
    pub fn streams(&self) -> usize {
        self.acks.streams()
    }
}

/// The planner asks the cache what the connected streams have ACKed.
impl zenvoy_core::planner::Acks for Cache {
    fn envoys(&self) -> usize {
        self.acks.cluster_streams()
    }

    fn warm_everywhere(&self, service: &str, version: u64) -> bool {
        self.acks.warm_everywhere(service, version)
    }

    fn all_acked(&self, service: &str, version: u64) -> bool {
        self.acks.all_acked(service, version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribed_while_a_connected_stream_asks_for_the_name() {
        let cache = Cache::default();
        assert!(!cache.subscribed("a"), "no stream yet");
        let eds = resources::ENDPOINT_TYPE;
        cache.acks.record(1, eds, &Names::new([Name::from("a")]));
        assert!(cache.subscribed("a"), "subscribed, nothing ACKed yet");
        assert!(!cache.subscribed("b"));
        cache.acks.record(2, eds, &Names::new([Name::from("b")]));
        cache.acks.ack(2, eds, &[(Name::from("b"), 3)]);
        assert!(cache.subscribed("b"));
        assert!(cache.all_acked("b", 3));
        // A new subscription keeps what was ACKed of the names that stay.
        cache
            .acks
            .record(2, eds, &Names::new([Name::from("b"), Name::from("c")]));
        assert!(cache.all_acked("b", 3));
        assert!(!cache.all_acked("c", 1));
        // Another type's names leave the endpoint view alone.
        cache
            .acks
            .record(1, resources::ROUTE_TYPE, &Names::default());
        assert!(cache.subscribed("a"));
        // Stream 1 narrows its subscription, then stream 2 disconnects.
        cache.acks.record(1, eds, &Names::default());
        assert!(!cache.subscribed("a"));
        cache.acks.forget(2);
        assert!(!cache.subscribed("b"));
    }

    #[test]
    fn names_are_sorted_without_repeats_and_change_by_adding_and_removing() {
        let n = |s: &str| Name::from(s);
        let names = Names::new([n("c"), n("a"), n("b"), n("a")]);
        assert_eq!(
            names.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(names.index_of("b"), Some(1));
        assert!(!names.contains("d"));
        let next = names.changed(vec![n("d"), n("a")], &["b", "x"]);
        assert_eq!(
            next.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        assert_eq!(names.len(), 3, "the old list is unchanged");
        // An ACK of a name its stream does not subscribe to counts nowhere; the versions
        // stay with their names as the list around them changes.
        let cache = Cache::default();
        let eds = resources::ENDPOINT_TYPE;
        cache.acks.record(1, eds, &names);
        cache.acks.ack(1, eds, &[(n("c"), 4), (n("z"), 9)]);
        cache.acks.record(1, eds, &next);
        assert!(cache.all_acked("c", 4));
        assert!(!cache.all_acked("a", 1));
        assert!(
            cache.all_acked("z", 9),
            "no stream subscribes to z: nothing to wait for"
        );
    }
}
