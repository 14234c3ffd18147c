//! The holder's metrics (prometheus-client), registered in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// How a held connection ended.
pub mod outcome {
    pub const RELAYED: &str = "relayed";
    pub const TIMEOUT: &str = "timeout";
    pub const REJECTED: &str = "rejected";
    pub const CLIENT_CLOSED: &str = "client_closed";
    pub const DIAL_FAILED: &str = "dial_failed";
}

#[derive(Debug)]
pub struct Metrics {
    pub pending: Family<ServiceLabel, Gauge>,
    pub held_seconds: Family<OutcomeLabel, Histogram>,
    pub relayed: Family<ServiceLabel, Counter>,
    pub relay_bytes: Family<DirectionLabel, Counter>,
    pub refused: Family<ReasonLabel, Counter>,
    pub pushes: Counter,
    pub fd_waits: Counter,
    pub redials: Counter,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            pending: Family::default(),
            held_seconds: Family::new_with_constructor(seconds_histogram),
            relayed: Family::default(),
            relay_bytes: Family::default(),
            refused: Family::default(),
            pushes: Counter::default(),
            fd_waits: Counter::default(),
            redials: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("zenvoy_holder");
        r.register(
            "pending",
            "Connections held per service, waiting for an upstream",
            m.pending.clone(),
        );
        r.register(
            "held_seconds",
            "Time a connection was held, by outcome (relayed, timeout, rejected, client_closed, dial_failed)",
            m.held_seconds.clone(),
        );
        r.register(
            "relayed",
            "Connections relayed to an upstream, per service",
            m.relayed.clone(),
        );
        r.register(
            "relay_bytes",
            "Bytes relayed, by direction (client_to_upstream, upstream_to_client)",
            m.relay_bytes.clone(),
        );
        r.register(
            "refused",
            "Connections refused at once, by reason (a PROXY header error, or a limit)",
            m.refused.clone(),
        );
        r.register(
            "metric_pushes",
            "Pending-count pushes sent to the controller",
            m.pushes.clone(),
        );
        r.register(
            "fd_waits",
            "Times a connection waited for a file descriptor (to dial, or for relay pipes) instead of failing",
            m.fd_waits.clone(),
        );
        r.register(
            "redials",
            "Dials of a held connection that failed at every endpoint and were tried again before its hold ended",
            m.redials.clone(),
        );
        // The limits' refusals exist at 0 from the start, so the first refusal is a change
        // a rate() (and an alert) sees.
        for reason in ["max_pending", "max_pending_total", "max_services"] {
            let _ = m.refused.get_or_create(&ReasonLabel { reason });
        }
        m
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn held(&self, outcome: &'static str, seconds: f64) {
        self.held_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(seconds);
    }
}
