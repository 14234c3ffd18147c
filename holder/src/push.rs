//! Pushes pending counts to the controller over `MetricsService/StreamMetrics`, the
//! protocol Envoy's metrics_service sink uses, at once on every change: detection of a
//! held connection costs one message, not a scrape interval.
//!
//! Each message carries only the services whose count changed since the last one sent
//! (all of them on a new stream), as gauge family `zenvoy_holder_pending{service}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{stream_metrics_message, StreamMetricsMessage};
use envoy_types::pb::io::prometheus::client::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::hold::Hold;
use crate::telemetry::Metrics;

pub const PENDING_FAMILY: &str = zenvoy_contract::HOLDER_PENDING;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

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

/// Keep one metrics stream to a controller open, reconnecting with backoff to the next
/// of `controllers` each time.
pub async fn run(controllers: Vec<String>, node: Node, hold: Arc<Hold>, metrics: Arc<Metrics>) {
    let mut backoff = RETRY_MIN;
    for controller in controllers.iter().cycle() {
        match stream_once(controller, &node, &hold, &metrics).await {
            Ok(()) => backoff = RETRY_MIN,
            Err(e) => {
                warn!(%controller, error = %e, retry_in = ?backoff, "metrics stream to controller failed")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

async fn stream_once(
    controller: &str,
    node: &Node,
    hold: &Hold,
    metrics: &Metrics,
) -> Result<(), tonic::Status> {
    let channel = Endpoint::from_shared(controller.to_string())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = MetricsServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let mut changed = hold.watch_pending();
    changed.mark_unchanged();
    let mut sent: HashMap<String, usize> = HashMap::new();
    let mut first = true;
    let sender = async {
        loop {
            let changes: Vec<(String, usize)> = hold
                .pending()
                .into_iter()
                .filter(|(s, n)| sent.get(s) != Some(n))
                .collect();
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
                first = false;
            }
            if changed.changed().await.is_err() {
                return;
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
