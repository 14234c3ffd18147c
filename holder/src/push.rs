//! Pushes pending counts to the controller over `MetricsService/StreamMetrics`, the
//! protocol Envoy's metrics_service sink uses, at once on every change: detection of a
//! held connection costs one message, not a scrape interval.
//!
//! Each message carries only the services whose count changed since the last one sent
//! (all of them on a new stream), as gauge family `zenvoy_holder_pending{service}`; every
//! 10 s without a change, the non-zero counts again (a heartbeat: the controller forgets
//! a node it has not heard from for its stats expiry).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{stream_metrics_message, StreamMetricsMessage};
use envoy_types::pb::io::prometheus::client::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use crate::controllers::Controllers;
use crate::hold::Hold;
use crate::telemetry::Metrics;

pub const PENDING_FAMILY: &str = zenvoy_contract::HOLDER_PENDING;
/// Between changes, the held counts are pushed again this often: a third of the
/// controller's default stats expiry (30 s).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The gauge family of one push: each service whose count changed, with its count.
pub fn family(changes: &[(String, usize)]) -> MetricFamily {
    MetricFamily {
        name: Some(PENDING_FAMILY.to_string()),
        help: Some("Connections held per service".to_string()),
        r#type: Some(MetricType::Gauge as i32),
        metric: changes
            .iter()
            .map(|(service, n)| Metric {
                label: vec![LabelPair {
                    name: Some(zenvoy_contract::PENDING_LABEL.to_string()),
                    value: Some(service.clone()),
                }],
                // Counts are far below 2^53; f64 is exact here.
                gauge: Some(Gauge {
                    value: Some(*n as f64),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The counts to push: each service whose count differs from the one last sent, and 0
/// for each service last sent non-zero that the holder no longer lists (its queue was
/// freed once nothing was held: without this its last count would stand for ever).
fn changes(now: Vec<(String, usize)>, sent: &HashMap<String, usize>) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = now
        .iter()
        .filter(|(s, n)| sent.get(s).copied().unwrap_or(0) != *n)
        .cloned()
        .collect();
    out.extend(
        sent.keys()
            .filter(|s| !now.iter().any(|(n, _)| n == *s))
            .map(|s| (s.clone(), 0)),
    );
    out
}

/// Keep one metrics stream to a controller open, reconnecting with backoff to the next
/// of `controllers` each time (see `Controllers::keep_open`).
pub async fn run(
    controllers: Arc<Controllers>,
    node: Node,
    hold: Arc<Hold>,
    metrics: Arc<Metrics>,
) {
    let (controllers, node, hold, metrics) = (&*controllers, &node, &*hold, &*metrics);
    controllers
        .keep_open("metrics", move |controller| async move {
            stream_once(controllers, controller, node, hold, metrics).await
        })
        .await;
}

async fn stream_once(
    controllers: &Controllers,
    controller: &str,
    node: &Node,
    hold: &Hold,
    metrics: &Metrics,
) -> Result<(), tonic::Status> {
    let channel = controllers.connect(controller).await?;
    let mut client = MetricsServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let mut changed = hold.watch_pending();
    changed.mark_unchanged();
    let mut sent: HashMap<String, usize> = HashMap::new();
    let mut first = true;
    let sender = async {
        loop {
            let changes = changes(hold.pending(), &sent);
            if first || !changes.is_empty() {
                let msg = StreamMetricsMessage {
                    identifier: first.then(|| stream_metrics_message::Identifier {
                        node: Some(node.clone()),
                    }),
                    envoy_metrics: vec![family(&changes)],
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                metrics.pushes.inc();
                sent.extend(changes);
                // A service back at zero needs no entry: its queue may be gone already.
                sent.retain(|_, n| *n > 0);
                first = false;
            }
            // A heartbeat between changes: the controller forgets a node that sends
            // nothing for its stats expiry (a holder gone silent without closing), so a
            // count that stands still is said again.
            tokio::select! {
                c = changed.changed() => if c.is_err() {
                    return;
                },
                () = tokio::time::sleep(HEARTBEAT) => {
                    let held: Vec<(String, usize)> = hold
                        .pending()
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .collect();
                    let msg = StreamMetricsMessage {
                        identifier: None,
                        envoy_metrics: vec![family(&held)],
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                    metrics.pushes.inc();
                }
            }
        }
    };
    info!(%controller, "metrics stream open");
    let call = client.stream_metrics(ReceiverStream::new(rx));
    tokio::select! {
        r = call => r.map(|_| ()),
        () = sender => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_service_is_pushed_as_zero_and_unchanged_counts_are_not_pushed() {
        let sent = HashMap::from([("gone".to_string(), 2), ("same".to_string(), 1)]);
        let mut c = changes(
            vec![
                ("same".to_string(), 1),
                ("new".to_string(), 3),
                ("idle".to_string(), 0),
            ],
            &sent,
        );
        c.sort();
        assert_eq!(c, [("gone".to_string(), 0), ("new".to_string(), 3)]);
    }
}
