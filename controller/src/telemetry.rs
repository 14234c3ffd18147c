//! The controller's own metrics (prometheus-client), registered in one place.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use zenvoy_core::activity::{Phase, WakeOutcome};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub service: String,
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WakeLabels {
    pub service: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

impl From<&'static str> for TypeLabel {
    fn from(t: &'static str) -> Self {
        TypeLabel { r#type: t }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub service_state: Family<StateLabels, Gauge>,
    pub service_idle_timeout: Family<ServiceLabel, Gauge<f64, AtomicU64>>,
    pub wakes: Family<ServiceLabel, Counter>,
    pub parks: Family<ServiceLabel, Counter>,
    pub parks_cancelled: Family<ServiceLabel, Counter>,
    pub wake_duration: Family<WakeLabels, Histogram>,
    pub wake_outcomes: Family<WakeLabels, Counter>,
    pub scale_errors: Family<ServiceLabel, Counter>,
    pub xds_streams: Gauge,
    pub xds_push_ack: Family<TypeLabel, Histogram>,
    pub xds_nacks: Family<TypeLabel, Counter>,
    pub ingest_samples: Family<SourceLabel, Counter>,
    pub ingest_errors: Family<SourceLabel, Counter>,
    pub ingest_rejected: Counter,
    pub ingest_nodes_expired: Counter,
    pub drift_repairs: Family<ServiceLabel, Counter>,
    pub streams_refused: Family<ReasonLabel, Counter>,
    pub config_reloads: Family<ResultLabel, Counter>,
    /// 1 while this controller may scale (always with the process backend; the Lease
    /// holder with Kubernetes).
    pub leader: Gauge,
    pub kube_api_errors: Family<OpLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            service_state: Family::default(),
            service_idle_timeout: Family::default(),
            wakes: Family::default(),
            parks: Family::default(),
            parks_cancelled: Family::default(),
            wake_duration: Family::new_with_constructor(seconds_histogram),
            wake_outcomes: Family::default(),
            scale_errors: Family::default(),
            xds_streams: Gauge::default(),
            xds_push_ack: Family::new_with_constructor(seconds_histogram),
            xds_nacks: Family::default(),
            ingest_samples: Family::default(),
            ingest_errors: Family::default(),
            ingest_rejected: Counter::default(),
            ingest_nodes_expired: Counter::default(),
            drift_repairs: Family::default(),
            streams_refused: Family::default(),
            config_reloads: Family::default(),
            leader: Gauge::default(),
            kube_api_errors: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("zenvoy");
        r.register(
            "config_reloads",
            "Config file changes seen, by result (applied, rejected: invalid or needing a restart)",
            m.config_reloads.clone(),
        );
        r.register(
            "leader",
            "1 while this controller replica may scale workloads (holds the Lease)",
            m.leader.clone(),
        );
        r.register(
            "kube_api_errors",
            "Kubernetes API calls that failed, by operation (retried with backoff)",
            m.kube_api_errors.clone(),
        );
        r.register(
            "service_state",
            "1 for the state each service is in, 0 otherwise",
            m.service_state.clone(),
        );
        r.register(
            "service_idle_timeout_seconds",
            "Each service's idleTimeout: no activity for this long parks it",
            m.service_idle_timeout.clone(),
        );
        r.register("wakes", "Wakes started", m.wakes.clone());
        r.register("parks", "Parks completed (scaled to zero)", m.parks.clone());
        r.register(
            "parks_cancelled",
            "Parks cancelled by a connection arriving during phase one",
            m.parks_cancelled.clone(),
        );
        r.register(
            "wake_duration_seconds",
            "From demand to ready endpoints, by service and outcome (ready, failed, timed_out)",
            m.wake_duration.clone(),
        );
        r.register(
            "wake_outcomes",
            "Wakes finished, by service and outcome (ready, failed, timed_out)",
            m.wake_outcomes.clone(),
        );
        r.register(
            "scale_errors",
            "Backend scale calls that failed",
            m.scale_errors.clone(),
        );
        r.register(
            "xds_streams",
            "ADS streams connected",
            m.xds_streams.clone(),
        );
        r.register(
            "xds_push_ack_seconds",
            "From a DiscoveryResponse sent to its ACK, by type",
            m.xds_push_ack.clone(),
        );
        r.register(
            "xds_nacks",
            "DiscoveryResponses rejected by a client, by type",
            m.xds_nacks.clone(),
        );
        r.register(
            "ingest_samples",
            "Metric pushes received, by source",
            m.ingest_samples.clone(),
        );
        r.register(
            "ingest_errors",
            "Metric streams that failed, by source",
            m.ingest_errors.clone(),
        );
        r.register(
            "ingest_rejected",
            "Stats refused because their value cannot be a count (negative, NaN, infinite)",
            m.ingest_rejected.clone(),
        );
        r.register(
            "ingest_nodes_expired",
            "Nodes (Envoys, holders, scrape targets) forgotten after sending nothing for the stats expiry",
            m.ingest_nodes_expired.clone(),
        );
        r.register(
            "streams_refused",
            "ADS and metrics streams refused, by reason (max_streams, identity: the certificate does not name the node, names: too many subscribed)",
            m.streams_refused.clone(),
        );
        r.register(
            "drift_repairs",
            "Services whose workload did not match their state (running while parked, stopped while awake), repaired",
            m.drift_repairs.clone(),
        );
        // Counters a rule alerts on exist at 0 from the start: a series' first sample is
        // rate()'s baseline, so an error counted into a new series would go unseen.
        for t in ["lds", "cds", "eds", "rds"] {
            let _ = m.xds_nacks.get_or_create(&t.into());
        }
        for result in ["applied", "rejected"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        for source in ["push", "scrape"] {
            let _ = m.ingest_errors.get_or_create(&SourceLabel { source });
        }
        for reason in ["max_streams", "identity", "names"] {
            let _ = m.streams_refused.get_or_create(&ReasonLabel { reason });
        }
        for op in ["scale_up", "scale_down", "lease"] {
            let _ = m.kube_api_errors.get_or_create(&OpLabel { op });
        }
        m
    }

    /// A wake starts: the service's wake counters exist from now on (at 0), so the first
    /// failure or park is a change a rate() sees. Only services that ever wake pay for the
    /// series (10,000 parked services would otherwise carry 70,000 zeros).
    pub fn wake_started(&self, service: &str) {
        let label = ServiceLabel {
            service: service.to_string(),
        };
        self.wakes.get_or_create(&label).inc();
        for family in [
            &self.parks,
            &self.parks_cancelled,
            &self.scale_errors,
            &self.drift_repairs,
        ] {
            let _ = family.get_or_create(&label);
        }
        for outcome in WakeOutcome::ALL {
            let _ = self.wake_outcomes.get_or_create(&WakeLabels {
                service: service.to_string(),
                outcome: outcome.label(),
            });
        }
    }

    pub fn observe_ack(&self, r#type: &'static str, d: Duration) {
        self.xds_push_ack
            .get_or_create(&r#type.into())
            .observe(d.as_secs_f64());
    }

    /// Drop a removed service's series.
    pub fn forget_service(&self, service: &str) {
        let label = ServiceLabel {
            service: service.to_string(),
        };
        for family in [
            &self.wakes,
            &self.parks,
            &self.parks_cancelled,
            &self.scale_errors,
            &self.drift_repairs,
        ] {
            family.remove(&label);
        }
        self.service_idle_timeout.remove(&label);
        for s in Phase::ALL {
            self.service_state.remove(&StateLabels {
                service: service.to_string(),
                state: s.label(),
            });
        }
        for outcome in WakeOutcome::ALL {
            let labels = WakeLabels {
                service: service.to_string(),
                outcome: outcome.label(),
            };
            self.wake_duration.remove(&labels);
            self.wake_outcomes.remove(&labels);
        }
    }

    pub fn set_state(&self, service: &str, state: Phase) {
        for s in Phase::ALL {
            self.service_state
                .get_or_create(&StateLabels {
                    service: service.to_string(),
                    state: s.label(),
                })
                .set(i64::from(s == state));
        }
    }

    /// A finished wake: its duration and its outcome, per service.
    pub fn wake_finished(&self, service: &str, outcome: WakeOutcome, took: Duration) {
        let labels = WakeLabels {
            service: service.to_string(),
            outcome: outcome.label(),
        };
        self.wake_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.wake_outcomes.get_or_create(&labels).inc();
    }
}
