//! Ingest: stats pushed over Envoy's `metrics_service` protocol by every Envoy and holder,
//! or scraped ([`scrape`]). The gRPC adapter lives here; what the families mean is in [`families`], and the
//! per-service windows they feed are in [`window`] (both pure).

pub mod families;
pub mod scrape;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsService;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, Instrument};

use crate::config::Protocol;
use crate::runtime::Event;
use crate::telemetry::{Metrics, SourceLabel};

#[derive(Debug, Clone)]
pub struct MetricsSink {
    next_stream: Arc<std::sync::atomic::AtomicU64>,
    services: Arc<HashMap<String, Protocol>>,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
}

impl MetricsSink {
    pub fn new(
        services: Arc<HashMap<String, Protocol>>,
        events: mpsc::Sender<Event>,
        metrics: Arc<Metrics>,
    ) -> Self {
        MetricsSink {
            next_stream: Arc::default(),
            services,
            events,
            metrics,
        }
    }
}

const SOURCE: SourceLabel = SourceLabel { source: "push" };

#[tonic::async_trait]
impl MetricsService for MetricsSink {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let span = tracing::info_span!("metrics_stream", peer = ?peer);
        async {
            // Windows are kept per stream, not per node id: a restarted Envoy or holder
            // reconnects under the same id, and the old stream's end must not erase what
            // the new stream already reported.
            let stream = self
                .next_stream
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The node is named in the first message only; until then the peer stands in.
            let mut node = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            let mut named = false;
            let result = loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status),
                };
                if !named {
                    if let Some(n) = msg.identifier.as_ref().and_then(|i| i.node.as_ref()) {
                        node = n.id.clone();
                        named = true;
                        info!(%node, "metrics stream opened");
                    }
                }
                self.metrics.ingest_samples.get_or_create(&SOURCE).inc();
                let observations =
                    families::observations(&msg.envoy_metrics, |s| self.services.get(s).copied());
                debug!(%node, families = msg.envoy_metrics.len(), services = observations.len(), "metrics");
                if self
                    .events
                    .send(Event::Metrics {
                        node: format!("{node}#{stream}"),
                        observations,
                    })
                    .await
                    .is_err()
                {
                    break Ok(()); // runtime stopped
                }
            };
            if result.is_err() {
                self.metrics.ingest_errors.get_or_create(&SOURCE).inc();
            }
            info!(%node, ok = result.is_ok(), "metrics stream closed");
            let _ = self
                .events
                .send(Event::NodeGone {
                    node: format!("{node}#{stream}"),
                })
                .await;
            result.map(|()| Response::new(StreamMetricsResponse {}))
        }
        .instrument(span)
        .await
    }
}
