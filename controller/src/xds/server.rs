//! The ADS gRPC service: each call (SotW or delta) is one stream on its own task, which
//! reads requests, wakes on every cache change, and writes responses from shared bytes.
//! Streams are admitted (bounded, their peer's identity checked) and end on shutdown.
//!
//! ```text
//!  call --AdsService--> AdsServer::serve::<S> --spawn--> serve_stream: loop select {
//!                                                          request  -> S::on_request
//!                                                          change   -> S::on_change
//!                                                          shutdown -> end }
//!                                                        responses -> wire::GrpcBody
//! ```

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio_stream::StreamExt;
use tonic::{Request, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use super::cache::Cache;
use super::delta::DeltaStream;
use super::sotw::SotwStream;
use super::variant::VariantStream;
use super::wire;
use super::Variant;
use crate::admission::Admission;
use crate::telemetry::Metrics;

/// The tonic service.
#[derive(Debug, Clone)]
pub struct AdsServer {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    shutdown: Option<watch::Receiver<bool>>,
    admission: Admission,
}

impl AdsServer {
    pub fn new(cache: Arc<Cache>, metrics: Arc<Metrics>) -> Self {
        AdsServer {
            cache,
            admission: Admission::open(metrics.clone()),
            metrics,
            next_id: Arc::default(),
            shutdown: None,
        }
    }

    /// Bound the streams, and check each peer's identity (see [`Admission`]).
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// End every stream once `stop` reads true (or its sender is dropped). An ADS stream
    /// never ends on its own, and a gRPC server's graceful shutdown waits for it; ended,
    /// Envoy reconnects (to another replica, in HA). Without this, streams end only when
    /// their client goes.
    pub fn with_shutdown(mut self, stop: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(stop);
        self
    }
}

/// Responses queued per stream before the stream task waits for Envoy to read.
const STREAM_QUEUE: usize = 16;

/// The gRPC service name ADS is served under.
const ADS_SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_METHOD: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service. Served by hand rather than through envoy-types' generated
/// server: requests are decoded by tonic as usual, responses are written from shared
/// bytes (see [`wire`]).
#[derive(Debug, Clone)]
pub struct AdsService {
    server: AdsServer,
    max_message_bytes: usize,
}

impl AdsService {
    /// `max_message_bytes`: the largest request accepted.
    pub fn new(server: AdsServer, max_message_bytes: usize) -> Self {
        AdsService {
            server,
            max_message_bytes,
        }
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = ADS_SERVICE;
}

type Call = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<tonic::body::Body>, std::convert::Infallible>,
            > + Send,
    >,
>;

impl tower_service::Service<http::Request<tonic::body::Body>> for AdsService {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Call;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.server.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            let response = match req.uri().path() {
                SOTW_METHOD => server.serve::<SotwStream>(req, max),
                DELTA_METHOD => server.serve::<DeltaStream>(req, max),
                other => Err(Status::unimplemented(format!("no method {other}"))),
            };
            Ok(response.unwrap_or_else(|status| status.into_http()))
        })
    }
}

impl AdsServer {
    /// Refuse a stream while the end signal reads true (stopping, or not the leader).
    fn open(&self) -> Result<(), Status> {
        match &self.shutdown {
            Some(end) if *end.borrow() => Err(Status::unavailable(crate::gate::NOT_SERVING)),
            _ => Ok(()),
        }
    }

    /// Serve one ADS stream of either variant on its own task; the response body is fed
    /// by it.
    fn serve<S: VariantStream>(
        &self,
        req: http::Request<tonic::body::Body>,
        max_message_bytes: usize,
    ) -> Result<http::Response<tonic::body::Body>, Status> {
        self.open()?;
        let permit = self.admission.stream()?;
        let (parts, body) = req.into_parts();
        // The request's metadata and connection info (peer address, certificates), for
        // admission and logs.
        let meta = Request::from_http(http::Request::from_parts(parts, ()));
        let identity = self.admission.peer(&meta);
        let peer = meta.remote_addr();
        let inbound = Streaming::new_request(
            tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<(), S::Req>::default()),
            body,
            None,
            Some(max_message_bytes),
        );
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let kind = match S::VARIANT {
            Variant::Sotw => "ads",
            Variant::Delta => "delta_ads",
        };
        let span = tracing::info_span!("ads", kind, stream = id, peer = ?peer);
        tokio::spawn(
            serve_stream(
                id,
                S::new(id),
                Shared {
                    cache: self.cache.clone(),
                    metrics: self.metrics.clone(),
                    shutdown: self.shutdown.clone(),
                    admission: self.admission.clone(),
                },
                inbound,
                tx,
                (identity, permit),
            )
            .instrument(span),
        );
        let mut response = http::Response::new(tonic::body::Body::new(wire::GrpcBody::new(rx)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(response)
    }
}

/// Where a stream's responses go (its response body sends them on).
type Responses = mpsc::Sender<wire::Outgoing>;

/// What every stream of the server shares.
struct Shared {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    shutdown: Option<watch::Receiver<bool>>,
    admission: Admission,
}

async fn serve_stream<S: VariantStream>(
    id: u64,
    mut stream: S,
    Shared {
        cache,
        metrics,
        shutdown,
        admission,
    }: Shared,
    mut inbound: Streaming<S::Req>,
    tx: Responses,
    // The stream's place among controller.maxStreams is held until it ends.
    (peer, _permit): (crate::identity::Peer, OwnedSemaphorePermit),
) {
    let mut changed = cache.subscribe();
    let mut identified = false;
    let shutdown = crate::gate::stopping(shutdown);
    tokio::pin!(shutdown);
    metrics.xds_streams.inc();
    'serve: loop {
        let responses = tokio::select! {
            req = inbound.next() => match req {
                Some(Ok(req)) => {
                    let responses = stream.on_request(req, &cache, &metrics);
                    // The first request names the node: its certificate must name it
                    // too (with mTLS; without, any name goes).
                    if !identified {
                        identified = true;
                        if let Err(status) = admission.check(&peer, stream.subscriptions().node()) {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                    if stream.subscriptions().subscribed() > admission.max_names {
                        admission.refuse("names");
                        warn!(node = %stream.subscriptions().node(), names = stream.subscriptions().subscribed(), "stream ended: more names than controller.maxNamesPerStream");
                        let _ = tx.send(Err(Status::resource_exhausted(format!(
                            "more than {} resource names subscribed (controller.maxNamesPerStream)",
                            admission.max_names
                        )))).await;
                        break;
                    }
                    responses
                }
                Some(Err(status)) => {
                    debug!(%status, "stream ended with error");
                    break;
                }
                None => break,
            },
            res = changed.changed() => {
                if res.is_err() {
                    break;
                }
                stream.on_change(&cache)
            }
            () = tx.closed() => break,
            () = &mut shutdown => {
                info!(node = %stream.subscriptions().node(), "controller shutting down; ending ADS stream");
                break;
            }
        };
        for r in responses {
            // A client that stopped reading must not hold the shutdown either.
            tokio::select! {
                sent = tx.send(Ok(r)) => if sent.is_err() {
                    break 'serve;
                },
                () = &mut shutdown => {
                    info!(node = %stream.subscriptions().node(), "controller shutting down; ending ADS stream");
                    break 'serve;
                }
            }
        }
    }
    // Dropping `tx` (on return) ends the response stream: tonic then closes the call with
    // status OK, and the client reconnects as it would after any stream end.
    cache.acks.forget(id);
    metrics.xds_streams.dec();
    info!(node = %stream.subscriptions().node(), "ADS stream closed");
    let dropped = stream.subscriptions().dropped_inflight();
    if dropped > 0 {
        warn!(node = %stream.subscriptions().node(), dropped, "responses left un-ACKed beyond those remembered");
    }
}
