//! What the connected streams have ACKed, across streams: the planner's two-phase park
//! waits for every stream subscribed to an assignment to ACK its new version, and a new
//! service's front door for every Envoy to have its assignment warm. Each stream keeps
//! its own view here (fed by [`super::subscriptions`]); the planner reads them all
//! through [`zenvoy_core::planner::Acks`], which the [`Cache`] implements.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use zenvoy_base::lock;

use super::names::Names;
use super::resources;
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
