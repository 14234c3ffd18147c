use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::io::prometheus::client::{
    Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Untyped,
};
use proptest::prelude::*;
use prost::Message;

use super::super::families::{self, HOLDER_PENDING};
use super::*;
use crate::model::{Observation, Stats};

fn protocol(s: &str) -> Option<Protocol> {
    match s {
        "web" => Some(Protocol::Http),
        s if s.starts_with("svc") || s == "pg.db" => Some(Protocol::Tcp),
        _ => None,
    }
}

fn metric(kind: MetricType, v: f64, labels: &[(&str, &str)]) -> Metric {
    let mut m = Metric {
        label: labels
            .iter()
            .map(|(k, v)| LabelPair {
                name: Some(k.to_string()),
                value: Some(v.to_string()),
            })
            .collect(),
        timestamp_ms: Some(1_700_000_000_000),
        ..Default::default()
    };
    match kind {
        MetricType::Gauge => m.gauge = Some(Gauge { value: Some(v) }),
        MetricType::Untyped => m.untyped = Some(Untyped { value: Some(v) }),
        _ => {
            m.counter = Some(Counter {
                value: Some(v),
                ..Default::default()
            })
        }
    }
    m
}

fn family(name: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_string()),
        help: Some("help text zenvoy skips".to_string()),
        r#type: Some(kind as i32),
        metric: metrics,
        unit: Some("seconds".to_string()),
    }
}

fn message(node: Option<&str>, families: Vec<MetricFamily>) -> StreamMetricsMessage {
    use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
    StreamMetricsMessage {
        identifier: node.map(|id| Identifier {
            node: Some(Node {
                id: id.to_string(),
                ..Default::default()
            }),
        }),
        envoy_metrics: families,
    }
}

/// The node a push names and what it says per service.
type Read = (Option<String>, Vec<(String, Observation)>);

fn read_all(bytes: &[u8]) -> Result<Read, PushError> {
    let mut c = Collector::new(protocol);
    let node = read(bytes, &mut c)?;
    Ok((node, c.finish()))
}

fn sorted(mut v: Vec<(String, Observation)>) -> Vec<(String, Observation)> {
    v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    v
}

#[test]
fn reads_what_the_generated_types_read() {
    let fams = vec![
        family(
            "cluster.pg.db.upstream_cx_active",
            MetricType::Gauge,
            vec![metric(MetricType::Gauge, 2.0, &[])],
        ),
        family(
            "cluster.pg.db.upstream_cx_total",
            MetricType::Counter,
            vec![metric(MetricType::Counter, 7.0, &[])],
        ),
        // The tagged form: one family, the cluster in a label, several metrics.
        family(
            "cluster.upstream_rq_total",
            MetricType::Counter,
            vec![
                metric(MetricType::Counter, 5.0, &[("envoy_cluster_name", "web")]),
                metric(MetricType::Counter, 1.0, &[("envoy_cluster_name", "other")]),
            ],
        ),
        family(
            HOLDER_PENDING,
            MetricType::Gauge,
            vec![metric(MetricType::Gauge, 3.0, &[("service", "svc-1")])],
        ),
        family(
            "cluster.svc-2.upstream_cx_rx_bytes_total",
            MetricType::Untyped,
            vec![metric(MetricType::Untyped, 9.0, &[])],
        ),
        // A histogram zenvoy does not read: skipped whole.
        family(
            "cluster.svc-2.upstream_cx_length_ms",
            MetricType::Histogram,
            vec![Metric {
                histogram: Some(Histogram {
                    sample_count: Some(4),
                    sample_sum: Some(1.5),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        ),
    ];
    let msg = message(Some("envoy-7"), fams.clone());
    let (node, got) = read_all(&msg.encode_to_vec()).expect("reads");
    assert_eq!(node.as_deref(), Some("envoy-7"));
    assert_eq!(
        sorted(got.clone()),
        sorted(families::decoded::observations(&fams, protocol))
    );
    assert!(got.contains(&(
        "pg.db".to_string(),
        Observation::Envoy(Stats {
            open: 2.0,
            counters: [7.0, 0.0, 0.0, 0.0]
        })
    )));
    assert!(got.contains(&("svc-1".to_string(), Observation::HolderPending(3.0))));
}

#[test]
fn a_message_without_identifier_names_no_node() {
    let msg = message(None, Vec::new());
    assert_eq!(
        read_all(&msg.encode_to_vec()).expect("reads"),
        (None, vec![])
    );
}

#[test]
fn fields_in_any_order_and_unknown_fields_are_read() {
    // MetricFamily { 4: metric, 99: unknown varint, 1: name }: the name after the metric.
    let m = metric(MetricType::Gauge, 4.0, &[]).encode_to_vec();
    let name = b"cluster.svc-9.upstream_cx_active";
    let mut fam = vec![0x22, m.len() as u8];
    fam.extend_from_slice(&m);
    fam.extend_from_slice(&[0x98, 0x06, 0x2a]); // field 99, varint 42
    fam.extend_from_slice(&[0x0a, name.len() as u8]);
    fam.extend_from_slice(name);
    let mut msg = vec![0x12, fam.len() as u8];
    msg.extend_from_slice(&fam);
    let (_, got) = read_all(&msg).expect("reads");
    assert_eq!(
        got,
        vec![(
            "svc-9".to_string(),
            Observation::Envoy(Stats {
                open: 4.0,
                counters: [0.0; 4]
            })
        )]
    );
}

#[test]
fn malformed_input_is_an_error_naming_the_problem() {
    let good = message(
        Some("n"),
        vec![family(
            "cluster.svc-1.upstream_cx_total",
            MetricType::Counter,
            vec![metric(MetricType::Counter, 1.0, &[])],
        )],
    )
    .encode_to_vec();
    // Every strict prefix but the one that ends with the identifier cuts a field short:
    // an error, never a panic.
    let identifier_only = message(Some("n"), Vec::new()).encode_to_vec().len();
    for cut in (1..good.len()).filter(|c| *c != identifier_only) {
        assert!(read_all(&good[..cut]).is_err(), "prefix of {cut} bytes");
    }
    let overrun = [0x12, 0x7f, 0x00];
    let e = read_all(&overrun).expect_err("claims 127 bytes");
    assert_eq!(
        e.to_string(),
        "malformed protobuf: field 2 claims 127 bytes, 1 left"
    );
    let group = [0x13];
    assert!(matches!(read_all(&group), Err(PushError::Group { tag: 2 })));
    let bad_name = [0x12, 0x03, 0x0a, 0x01, 0xff];
    assert!(matches!(
        read_all(&bad_name),
        Err(PushError::Utf8 {
            field: "family name"
        })
    ));
}

fn arb_family() -> impl Strategy<Value = MetricFamily> {
    let stat = prop::sample::select(vec![
        "upstream_cx_active",
        "upstream_rq_active",
        "upstream_cx_total",
        "upstream_rq_total",
        "upstream_cx_rx_bytes_total",
        "upstream_cx_tx_bytes_total",
        "upstream_cx_connect_fail",
    ]);
    let svc = prop::sample::select(vec!["svc-1", "svc-2", "web", "pg.db", "xds"]);
    let kind = prop::sample::select(vec![
        MetricType::Gauge,
        MetricType::Counter,
        MetricType::Untyped,
    ]);
    (stat, svc, kind, 0.0..1e9f64, any::<bool>()).prop_map(|(stat, svc, kind, v, tagged)| {
        if tagged {
            family(
                &format!("cluster.{stat}"),
                kind,
                vec![metric(kind, v, &[("envoy_cluster_name", svc)])],
            )
        } else {
            family(
                &format!("cluster.{svc}.{stat}"),
                kind,
                vec![metric(kind, v, &[])],
            )
        }
    })
}

proptest! {
    /// In-place reading agrees with prost's generated types on any push of the shapes
    /// Envoy sends.
    #[test]
    fn agrees_with_the_generated_types(fams in prop::collection::vec(arb_family(), 0..40)) {
        let bytes = message(Some("n"), fams.clone()).encode_to_vec();
        let (_, got) = read_all(&bytes).expect("reads");
        prop_assert_eq!(sorted(got), sorted(families::decoded::observations(&fams, protocol)));
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = read_all(&bytes);
    }
}
