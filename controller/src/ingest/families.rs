//! Metric families (the Prometheus data model that `metrics_service` pushes) -> the
//! observations the activity windows need. Pure.
//!
//! Envoy names a stat `cluster.<name>.upstream_cx_active` (or, with `emit_tags_as_labels`,
//! `cluster.upstream_cx_active` with label `envoy_cluster_name`). The cluster name may itself
//! contain dots, so it is taken as whatever lies between the `cluster.` prefix and a known
//! suffix. The holder pushes `zenvoy_holder_pending{service="..."}`.

use std::collections::HashMap;

use envoy_types::pb::io::prometheus::client::{Metric, MetricFamily};

use super::window::{Observation, Stats};
use crate::config::Protocol;

/// The holder's pending gauge, pushed on every change.
pub const HOLDER_PENDING: &str = "zenvoy_holder_pending";

/// Envoy cluster stats read, where each lands in `Stats`, and for which protocol. An HTTP
/// service counts requests only: Envoy keeps idle keep-alive connections to it open, so
/// open connections would keep it awake forever.
const STATS: [(&str, Slot, Protocol); 6] = [
    ("upstream_cx_active", Slot::Open, Protocol::Tcp),
    ("upstream_rq_active", Slot::Open, Protocol::Http),
    ("upstream_cx_total", Slot::Counter(0), Protocol::Tcp),
    ("upstream_rq_total", Slot::Counter(1), Protocol::Http),
    (
        "upstream_cx_rx_bytes_total",
        Slot::Counter(2),
        Protocol::Tcp,
    ),
    (
        "upstream_cx_tx_bytes_total",
        Slot::Counter(3),
        Protocol::Tcp,
    ),
];

#[derive(Debug, Clone, Copy)]
enum Slot {
    Open,
    Counter(usize),
}

fn value(m: &Metric) -> f64 {
    m.gauge
        .as_ref()
        .and_then(|g| g.value)
        .or_else(|| m.counter.as_ref().and_then(|c| c.value))
        .or_else(|| m.untyped.as_ref().and_then(|u| u.value))
        .unwrap_or(0.0)
}

fn label<'a>(m: &'a Metric, name: &str) -> Option<&'a str> {
    m.label
        .iter()
        .find(|l| l.name.as_deref() == Some(name))
        .and_then(|l| l.value.as_deref())
}

/// Split `cluster.<name>.<stat>` into (name, slot) for the stats zenvoy reads.
fn envoy_stat(family: &str) -> Option<(Option<&str>, Slot, Protocol)> {
    let rest = family.strip_prefix("cluster.")?;
    STATS.iter().find_map(|(stat, slot, proto)| {
        if rest == *stat {
            return Some((None, *slot, *proto)); // tagged form: the name is a label
        }
        let name = rest.strip_suffix(stat)?.strip_suffix('.')?;
        (!name.is_empty()).then_some((Some(name), *slot, *proto))
    })
}

/// Extract per-service observations from one push. `protocol` tells each known service's
/// protocol; services it does not know are skipped (Envoy also reports its own clusters,
/// such as the xDS cluster).
pub fn observations(
    families: &[MetricFamily],
    protocol: impl Fn(&str) -> Option<Protocol>,
) -> Vec<(String, Observation)> {
    let known = |s: &str| protocol(s).is_some();
    let mut envoy: HashMap<&str, Stats> = HashMap::new();
    let mut out = Vec::new();
    for f in families {
        let Some(name) = f.name.as_deref() else {
            continue;
        };
        if name == HOLDER_PENDING {
            for m in &f.metric {
                if let Some(svc) = label(m, "service").filter(|s| known(s)) {
                    out.push((svc.to_string(), Observation::HolderPending(value(m))));
                }
            }
            continue;
        }
        let Some((cluster, slot, for_protocol)) = envoy_stat(name) else {
            continue;
        };
        for m in &f.metric {
            let Some(svc) = cluster.or_else(|| label(m, "envoy_cluster_name")) else {
                continue;
            };
            if protocol(svc) != Some(for_protocol) {
                continue;
            }
            let s = envoy.entry(svc).or_default();
            match slot {
                Slot::Open => s.open += value(m),
                Slot::Counter(i) => s.counters[i] += value(m),
            }
        }
    }
    out.extend(
        envoy
            .into_iter()
            .map(|(svc, s)| (svc.to_string(), Observation::Envoy(s))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::io::prometheus::client::{Counter, Gauge, LabelPair, MetricType};

    fn family(name: &str, kind: MetricType, v: f64, labels: &[(&str, &str)]) -> MetricFamily {
        let mut m = Metric {
            label: labels
                .iter()
                .map(|(k, v)| LabelPair {
                    name: Some(k.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
            ..Default::default()
        };
        match kind {
            MetricType::Gauge => m.gauge = Some(Gauge { value: Some(v) }),
            _ => {
                m.counter = Some(Counter {
                    value: Some(v),
                    ..Default::default()
                })
            }
        }
        MetricFamily {
            name: Some(name.to_string()),
            r#type: Some(kind as i32),
            metric: vec![m],
            ..Default::default()
        }
    }

    #[test]
    fn reads_envoy_cluster_stats_with_dotted_names() {
        let fams = vec![
            family(
                "cluster.pg.db.upstream_cx_active",
                MetricType::Gauge,
                2.0,
                &[],
            ),
            family(
                "cluster.pg.db.upstream_cx_total",
                MetricType::Counter,
                7.0,
                &[],
            ),
            family(
                "cluster.pg.db.upstream_cx_tx_bytes_total",
                MetricType::Counter,
                9.0,
                &[],
            ),
            family(
                "cluster.zenvoy_xds.upstream_cx_total",
                MetricType::Counter,
                1.0,
                &[],
            ),
            family(
                "cluster.pg.db.upstream_cx_connect_fail",
                MetricType::Counter,
                5.0,
                &[],
            ),
        ];
        let obs = observations(&fams, |s| (s == "pg.db").then_some(Protocol::Tcp));
        assert_eq!(
            obs,
            vec![(
                "pg.db".to_string(),
                Observation::Envoy(Stats {
                    open: 2.0,
                    counters: [7.0, 0.0, 0.0, 9.0]
                })
            )]
        );
    }

    #[test]
    fn http_services_ignore_open_connections() {
        let fams = vec![
            family(
                "cluster.web.upstream_cx_active",
                MetricType::Gauge,
                3.0,
                &[],
            ),
            family(
                "cluster.web.upstream_cx_total",
                MetricType::Counter,
                9.0,
                &[],
            ),
            family(
                "cluster.web.upstream_rq_total",
                MetricType::Counter,
                5.0,
                &[],
            ),
        ];
        let obs = observations(&fams, |s| (s == "web").then_some(Protocol::Http));
        assert_eq!(
            obs,
            vec![(
                "web".to_string(),
                Observation::Envoy(Stats {
                    open: 0.0,
                    counters: [0.0, 5.0, 0.0, 0.0]
                })
            )]
        );
    }

    #[test]
    fn reads_tagged_form_and_holder_pending() {
        let fams = vec![
            family(
                "cluster.upstream_rq_active",
                MetricType::Gauge,
                3.0,
                &[("envoy_cluster_name", "web")],
            ),
            family(
                HOLDER_PENDING,
                MetricType::Gauge,
                4.0,
                &[("service", "web")],
            ),
            family(
                HOLDER_PENDING,
                MetricType::Gauge,
                1.0,
                &[("service", "unknown")],
            ),
        ];
        let mut obs = observations(&fams, |s| (s == "web").then_some(Protocol::Http));
        obs.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(
            obs,
            vec![
                (
                    "web".to_string(),
                    Observation::Envoy(Stats {
                        open: 3.0,
                        counters: [0.0; 4]
                    })
                ),
                ("web".to_string(), Observation::HolderPending(4.0)),
            ]
        );
    }
}
