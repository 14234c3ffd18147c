//! Metric families (the Prometheus data model that `metrics_service` pushes) -> the
//! observations the activity windows need. Pure.
//!
//! Envoy names a stat `cluster.<name>.upstream_cx_active` (or, with `emit_tags_as_labels`,
//! `cluster.upstream_cx_active` with label `envoy_cluster_name`). The cluster name may itself
//! contain dots, so it is taken as whatever lies between the `cluster.` prefix and a known
//! suffix. The holder pushes `zenvoy_holder_pending{service="..."}`.

use rustc_hash::FxHashMap;

pub use zenvoy_contract::HOLDER_PENDING;
use zenvoy_contract::PENDING_LABEL;

use super::text;
use crate::model::{Observation, Protocol, Stats};

/// The most samples one push or page may carry: 10,000 clusters take 60,000. Past it the
/// input is refused whole (a sender cannot make the controller walk without end).
pub const MAX_SAMPLES: usize = 1_000_000;

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

/// Split `cluster.<name>.<stat>` (push form) into (name, slot) for the stats zenvoy
/// reads. `cluster.<stat>` (the tagged form) has no name: it is a label.
fn envoy_stat(family: &str) -> Option<(Option<&str>, Slot, Protocol)> {
    let rest = family.strip_prefix("cluster.")?;
    STATS.iter().find_map(|(stat, slot, proto)| {
        if rest == *stat {
            return Some((None, *slot, *proto));
        }
        let name = rest.strip_suffix(stat)?.strip_suffix('.')?;
        (!name.is_empty()).then_some((Some(name), *slot, *proto))
    })
}

/// `envoy_cluster_<stat>` (Envoy's Prometheus form; the cluster is a label).
fn prometheus_stat(name: &str) -> Option<(Slot, Protocol)> {
    let rest = name.strip_prefix("envoy_cluster_")?;
    STATS
        .iter()
        .find(|(stat, _, _)| rest == *stat)
        .map(|(_, slot, proto)| (*slot, *proto))
}

/// Folds samples, from a push or a scrape, into per-service observations.
/// `protocol` tells each known service's protocol; services it does not know are skipped
/// (Envoy also reports its own clusters, such as the xDS cluster).
///
/// Names borrow from the input (`'a`): a 10,000-cluster push has 60,000 samples, and
/// nothing is allocated per sample, only once per service in [`Collector::finish`].
pub struct Collector<'a, P> {
    protocol: P,
    /// Samples added so far (see [`MAX_SAMPLES`]).
    samples: usize,
    /// Every cluster name seen in this input -> its slot in `envoy` and its protocol, or
    /// None for a cluster that is not a service. FxHash: the keys that can land here are
    /// this input's cluster names, each looked up once per sample; SipHash's protection
    /// against crafted collisions costs ~3x here, and the input comes from the operator's
    /// own Envoys and holders.
    index: FxHashMap<&'a str, Option<(usize, Protocol)>>,
    envoy: Vec<(&'a str, Stats)>,
    /// The last service looked up and what the index said: Envoy's push writes a
    /// cluster's stats next to each other, so most lookups hit this.
    last: Option<(&'a str, Option<(usize, Protocol)>)>,
    out: Vec<(String, Observation)>,
}

impl<'a, P: Fn(&str) -> Option<Protocol>> Collector<'a, P> {
    pub fn new(protocol: P) -> Self {
        Self::with_capacity(protocol, 0)
    }

    /// As [`Collector::new`], with room for `services` clusters (a push names each
    /// known service once: no growing on the way).
    pub fn with_capacity(protocol: P, services: usize) -> Self {
        Collector {
            protocol,
            samples: 0,
            index: FxHashMap::with_capacity_and_hasher(services, Default::default()),
            envoy: Vec::new(),
            last: None,
            out: Vec::new(),
        }
    }

    /// One sample: metric name, a label lookup, value. Envoy's Prometheus form
    /// (`envoy_cluster_upstream_cx_active{envoy_cluster_name="x"}`) and its push forms
    /// (`cluster.x.upstream_cx_active`, or tagged) are all understood.
    pub fn add(&mut self, name: &'a str, label: impl Fn(&str) -> Option<&'a str>, value: f64) {
        self.samples += 1;
        if name == HOLDER_PENDING {
            if let Some(svc) = label(PENDING_LABEL).filter(|s| (self.protocol)(s).is_some()) {
                self.out
                    .push((svc.to_string(), Observation::HolderPending(value)));
            }
            return;
        }
        let stat = match prometheus_stat(name) {
            Some((slot, proto)) => Some((None, slot, proto)),
            None => envoy_stat(name),
        };
        let Some((cluster, slot, for_protocol)) = stat else {
            return;
        };
        let Some(svc) = cluster.or_else(|| label("envoy_cluster_name")) else {
            return;
        };
        let Some((i, protocol)) = self.slot(svc) else {
            return;
        };
        if protocol.activity() != for_protocol {
            return;
        }
        let s = &mut self.envoy[i].1;
        match slot {
            Slot::Open => s.open += value,
            Slot::Counter(i) => s.counters[i] += value,
        }
    }

    /// More samples than one input may carry were added: the input is refused whole.
    pub fn overflowed(&self) -> bool {
        self.samples > MAX_SAMPLES
    }

    /// The slot of a known service, with its protocol; None for other clusters.
    fn slot(&mut self, svc: &'a str) -> Option<(usize, Protocol)> {
        if let Some((last, known)) = self.last {
            if last == svc {
                return known;
            }
        }
        let known = match self.index.get(svc) {
            Some(known) => *known,
            None => {
                let known = (self.protocol)(svc).map(|protocol| {
                    self.envoy.push((svc, Stats::default()));
                    (self.envoy.len() - 1, protocol)
                });
                self.index.insert(svc, known);
                known
            }
        };
        self.last = Some((svc, known));
        known
    }

    pub fn finish(mut self) -> Vec<(String, Observation)> {
        self.out.extend(
            self.envoy
                .into_iter()
                .map(|(svc, s)| (svc.to_string(), Observation::Envoy(s))),
        );
        self.out
    }
}

/// A Prometheus text page zenvoy cannot read.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse Prometheus text: {0}")]
pub struct TextError(String);

/// Parse Prometheus text, keeping Envoy's `name{} value` lines (see [`scraped`]).
pub fn parse_text(text: &str) -> Result<prometheus_parse::Scrape, TextError> {
    parse_lines(text.lines())
}

/// prometheus-parse over `lines`, each `name{} value` rewritten to `name value` first.
fn parse_lines<'l>(
    lines: impl Iterator<Item = &'l str>,
) -> Result<prometheus_parse::Scrape, TextError> {
    let lines = lines.map(|l| Ok::<_, std::io::Error>(l.replacen("{} ", " ", 1)));
    prometheus_parse::Scrape::parse(lines).map_err(|e| TextError(e.to_string()))
}

/// Whether zenvoy reads samples of this metric. Scraped pages use Prometheus names only
/// (no dots), so the push forms need no check here.
fn wanted(name: &str) -> bool {
    name == HOLDER_PENDING || prometheus_stat(name).is_some()
}

/// Extract per-service observations from a scraped Prometheus text page (Envoy's
/// `/stats/prometheus`, the holder's `/metrics`).
///
/// Lines of metrics zenvoy does not read are skipped; the rest are read in place by
/// [`text::sample`], and the few it declines go to prometheus-parse. prometheus-parse 0.2
/// silently drops unlabelled samples written as `name{} value`, which Envoy emits; such
/// lines are rewritten to `name value` first.
pub fn scraped(
    page: &str,
    protocol: impl Fn(&str) -> Option<Protocol>,
) -> Result<Vec<(String, Observation)>, TextError> {
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for line in page.lines() {
        let line = line.trim();
        if line.starts_with('#') || !wanted(text::metric_name(line)) {
            continue;
        }
        match text::sample(line) {
            Some(s) => fast.push(s),
            None => slow.push(line),
        }
    }
    let scrape = if slow.is_empty() {
        None
    } else {
        Some(parse_lines(slow.into_iter())?)
    };
    let mut c = Collector::new(protocol);
    for s in &fast {
        c.add(s.name, |l| s.label(l), s.value);
    }
    for sample in scrape.iter().flat_map(|s| &s.samples) {
        let v = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        c.add(&sample.metric, |l| sample.labels.get(l), v);
    }
    Ok(c.finish())
}

/// Observations from decoded `metrics_service` families, for tests that compare the
/// in-place readers with the generated prost types.
#[cfg(test)]
pub(crate) mod decoded {
    use envoy_types::pb::io::prometheus::client::{Metric, MetricFamily};

    use super::Collector;
    use crate::model::{Observation, Protocol};

    pub(crate) fn value(m: &Metric) -> f64 {
        m.gauge
            .as_ref()
            .and_then(|g| g.value)
            .or_else(|| m.counter.as_ref().and_then(|c| c.value))
            .or_else(|| m.untyped.as_ref().and_then(|u| u.value))
            .unwrap_or(0.0)
    }

    pub(crate) fn label<'a>(m: &'a Metric, name: &str) -> Option<&'a str> {
        m.label
            .iter()
            .find(|l| l.name.as_deref() == Some(name))
            .and_then(|l| l.value.as_deref())
    }

    pub fn observations(
        families: &[MetricFamily],
        protocol: impl Fn(&str) -> Option<Protocol>,
    ) -> Vec<(String, Observation)> {
        let mut c = Collector::new(protocol);
        for f in families {
            let Some(name) = f.name.as_deref() else {
                continue;
            };
            for m in &f.metric {
                c.add(name, |l| label(m, l), value(m));
            }
        }
        c.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::decoded::observations;
    use super::*;
    use envoy_types::pb::io::prometheus::client::{
        Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType,
    };

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

    /// A real Envoy 1.40 `/stats/prometheus` page (tcp_proxy listener and cluster "echo",
    /// after one 5-byte echo), with 93 `name{} value` lines.
    const ENVOY_PAGE: &str = include_str!("testdata/envoy-1.40-stats-prometheus.txt");

    #[test]
    fn unlabelled_samples_of_a_real_envoy_page_are_kept() {
        let unlabelled: Vec<&str> = ENVOY_PAGE
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once("{} ").map(|(name, _)| name))
            .collect();
        assert_eq!(unlabelled.len(), 93, "the page has the unlabelled form");
        let scrape = parse_text(ENVOY_PAGE).expect("parses");
        let parsed: std::collections::HashSet<&str> =
            scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        let lost: Vec<&&str> = unlabelled
            .iter()
            .filter(|n| !parsed.contains(**n) && !n.ends_with("_bucket"))
            .collect();
        assert!(lost.is_empty(), "dropped: {lost:?}");
        // And without the rewrite prometheus-parse would have lost them.
        let raw = prometheus_parse::Scrape::parse(ENVOY_PAGE.lines().map(|l| Ok(l.to_string())))
            .expect("parses");
        assert!(!raw.samples.iter().any(|s| s.metric == "envoy_server_live"));
        assert!(parsed.contains("envoy_server_live"));
    }

    #[test]
    fn reads_cluster_stats_from_a_real_envoy_page() {
        let obs = scraped(ENVOY_PAGE, |s| (s == "echo").then_some(Protocol::Tcp)).expect("parses");
        assert_eq!(
            obs,
            vec![(
                "echo".to_string(),
                Observation::Envoy(Stats {
                    open: 0.0,
                    counters: [1.0, 0.0, 5.0, 5.0]
                })
            )]
        );
    }

    /// What prometheus-parse alone makes of a page: the reference the in-place reader
    /// must match.
    fn scraped_by_prometheus_parse(page: &str) -> Vec<(String, Observation)> {
        let scrape = parse_text(page).expect("parses");
        let mut c = Collector::new(|s: &str| (s == "echo" || s == "b").then_some(Protocol::Tcp));
        for sample in &scrape.samples {
            if let prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) = sample.value
            {
                c.add(&sample.metric, |l| sample.labels.get(l), v);
            }
        }
        c.finish()
    }

    #[test]
    fn in_place_reading_agrees_with_prometheus_parse() {
        let protocol = |s: &str| (s == "echo" || s == "b").then_some(Protocol::Tcp);
        assert_eq!(
            scraped(ENVOY_PAGE, protocol).expect("parses"),
            scraped_by_prometheus_parse(ENVOY_PAGE)
        );
        // Lines the fast path declines (an escaped quote, a second space) still count.
        let page = concat!(
            "# TYPE envoy_cluster_upstream_cx_total counter\n",
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"b\",note=\"say \\\"hi\\\"\"} 4\n",
            "envoy_cluster_upstream_cx_active{envoy_cluster_name=\"b\"}  2\n",
            "envoy_cluster_upstream_cx_rx_bytes_total{envoy_cluster_name=\"b\"} 9\n",
        );
        let got = scraped(page, protocol).expect("parses");
        assert_eq!(
            got,
            vec![(
                "b".to_string(),
                Observation::Envoy(Stats {
                    open: 2.0,
                    counters: [4.0, 0.0, 9.0, 0.0]
                })
            )]
        );
        assert_eq!(got, scraped_by_prometheus_parse(page));
    }

    #[test]
    fn garbage_text_is_an_error_or_nothing_never_a_panic() {
        for text in [
            "",
            "\0\0\0",
            "envoy_cluster_upstream_cx_total{envoy_cluster_name=\"echo\" 1",
            "x{a=\"b\"} notanumber",
        ] {
            let _ = scraped(text, |_| Some(Protocol::Tcp));
        }
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
