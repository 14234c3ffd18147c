//! Ingest: stats pushed over Envoy's `metrics_service` protocol by every Envoy and holder,
//! or scraped ([`scrape`]). The gRPC adapter lives here: it hands each message's bytes to
//! `zenvoy_core::stats::push`, which reads them in place; what the samples mean, and the
//! per-service windows they feed, are in `zenvoy_core::stats` too.

pub mod scrape;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsResponse;
use prost::bytes::{Buf, Bytes};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, StdError};
use tonic::server::{ClientStreamingService, Grpc, NamedService};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use zenvoy_core::model::Event;
use zenvoy_core::stats::{families, push};

use crate::admission::Admission;
use crate::telemetry::{Metrics, SourceLabel};
use crate::tracked::Tracked;

/// The `envoy.service.metrics.v3.MetricsService` gRPC server, written out instead of
/// envoy-types' generated one for a single reason: the generated server decodes every
/// message into owned prost types, and [`push`] explains why zenvoy reads the bytes in
/// place instead. Same service name, method and wire format; Envoy cannot tell.
#[derive(Debug, Clone)]
pub struct MetricsServer {
    sink: Arc<MetricsSink>,
    max_message: usize,
}

impl MetricsServer {
    /// `max_message`: the largest push accepted (bytes, before decompression).
    pub fn new(sink: MetricsSink, max_message: usize) -> Self {
        MetricsServer {
            sink: Arc::new(sink),
            max_message,
        }
    }
}

impl NamedService for MetricsServer {
    const NAME: &'static str = "envoy.service.metrics.v3.MetricsService";
}

const STREAM_METRICS: &str = "/envoy.service.metrics.v3.MetricsService/StreamMetrics";

impl<B> tonic::codegen::Service<http::Request<B>> for MetricsServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != STREAM_METRICS {
            let path = req.uri().path().to_string();
            return Box::pin(async move {
                Ok(Status::unimplemented(format!("no method {path}")).into_http())
            });
        }
        let sink = self.sink.clone();
        let max = self.max_message;
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.client_streaming(Stream(sink), req).await)
        })
    }
}

struct Stream(Arc<MetricsSink>);

impl ClientStreamingService<Bytes> for Stream {
    type Response = StreamMetricsResponse;
    type Future = BoxFuture<Response<StreamMetricsResponse>, Status>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let sink = self.0.clone();
        Box::pin(async move { sink.stream_metrics(request).await })
    }
}

/// Requests arrive as their raw bytes (a zero-copy slice of tonic's receive buffer);
/// the one response is prost-encoded.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = StreamMetricsResponse;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = StreamMetricsResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding StreamMetricsResponse: {e}")))
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[derive(Debug)]
pub struct MetricsSink {
    next_stream: std::sync::atomic::AtomicU64,
    tracked: Arc<Tracked>,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    shutdown: Option<watch::Receiver<bool>>,
    admission: Admission,
}

impl MetricsSink {
    pub fn new(tracked: Arc<Tracked>, events: mpsc::Sender<Event>, metrics: Arc<Metrics>) -> Self {
        MetricsSink {
            next_stream: Default::default(),
            tracked,
            events,
            admission: Admission::open(metrics.clone()),
            metrics,
            shutdown: None,
        }
    }

    /// Bound the streams, and check each peer's identity (see [`Admission`]).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// End every stream, answering it, once `stop` reads true (or its sender is
    /// dropped). A push stream lasts as long as its Envoy or holder, and a gRPC server's
    /// graceful shutdown waits for it.
    pub fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(stop);
        self
    }

    async fn stream_metrics(
        &self,
        request: Request<Streaming<Bytes>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        if self.shutdown.as_ref().is_some_and(|end| *end.borrow()) {
            return Err(Status::unavailable(crate::gate::NOT_SERVING));
        }
        // Held until the stream ends: its place among controller.maxStreams.
        let _permit = self.admission.stream()?;
        let identity = self.admission.peer(&request);
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
            let shutdown = crate::gate::stopping(self.shutdown.clone());
            tokio::pin!(shutdown);
            let result = loop {
                let msg = tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    },
                    () = &mut shutdown => {
                        info!(%node, "controller shutting down; ending the metrics stream");
                        break Ok(());
                    }
                };
                // One read lock for the whole message, released before any await.
                let read = self.tracked.read(|known| {
                    // Room for the clusters it can name: Envoy's six stats per cluster
                    // take ~300 bytes, so a holder's small push reserves little.
                    let mut collector = families::Collector::with_capacity(
                        |s| known.get(s).copied(),
                        known.len().min(msg.len() / 256),
                    );
                    push::read(&msg, &mut collector).map(|id| (id, collector.finish()))
                });
                let observations = match read {
                    Ok((Some(id), observations)) if !named => {
                        // Its certificate must name the node it speaks for (mTLS).
                        if let Err(status) = self.admission.check(&identity, &id) {
                            break Err(status);
                        }
                        node = id;
                        named = true;
                        info!(%node, "metrics stream opened");
                        observations
                    }
                    Ok((None, _)) if !named => {
                        // The first message names the node; without it (and with mTLS)
                        // there is no one to check the certificate against.
                        if let Err(status) = self.admission.check(&identity, "") {
                            break Err(status);
                        }
                        named = true;
                        Vec::new()
                    }
                    Ok((_, observations)) => observations,
                    Err(e) => {
                        // A stream that sends garbage is ended: its windows are dropped
                        // (NodeGone below) rather than fed half a message.
                        warn!(%node, error = %e, bytes = msg.len(), "unreadable metrics push; closing the stream");
                        break Err(Status::invalid_argument(format!(
                            "StreamMetricsMessage: {e}"
                        )));
                    }
                };
                self.metrics.ingest_samples.get_or_create(&SOURCE).inc();
                debug!(%node, bytes = msg.len(), services = observations.len(), "metrics");
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

const SOURCE: SourceLabel = SourceLabel { source: "push" };
