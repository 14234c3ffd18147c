//! The ADS server, state-of-the-world ([`AdsStream`]) and delta ([`DeltaStream`]).
//! Resources live in a [`Cache`]; each connected stream keeps, per type, what it
//! subscribed to, what it was sent and what it ACKed.
//!
//! ```text
//!  runtime --set()--> Cache --generation watch--> every stream: diff -> DiscoveryResponse
//!                       ^                                         |
//!                       +---- EDS ACK registry <-- requests ------+
//! ```
//!
//! SotW: Listeners and Clusters are sent whole (the protocol requires it for those types);
//! endpoints and routes per resource. Delta: every type per resource. Either way a wake or
//! park changes one ClusterLoadAssignment and only that CLA goes on the wire.

mod delta;
pub mod resources;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use crate::admission::Admission;
use crate::telemetry::Metrics;
pub use delta::DeltaStream;
pub use stream::AdsStream;
use tokio::sync::OwnedSemaphorePermit;

/// One resource at the version it last changed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: u64,
    pub any: Any,
}

#[derive(Debug, Default)]
struct TypeState {
    /// Generation of the last change of any resource of this type.
    version: u64,
    resources: BTreeMap<String, Entry>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    types: HashMap<&'static str, TypeState>,
}

/// What every stream has ACKed, for the two-phase park: stream id -> CLA name -> version.
/// ClusterLoadAssignments only: a stream's requests of other types (routes above all,
/// which Envoy asks for on the same stream) must not replace its endpoint subscription,
/// or a park would stop waiting for that stream's ACK.
type AckRegistry = HashMap<u64, HashMap<String, u64>>;

/// The resources zenvoy serves, shared by the runtime (writer) and every ADS stream.
#[derive(Debug)]
pub struct Cache {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    acks: Mutex<AckRegistry>,
    /// Streams that subscribe to Clusters: Envoys (a holder asks for endpoints only).
    cluster_streams: Mutex<std::collections::HashSet<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-written in a way that
    // matters more than stopping would; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for Cache {
    fn default() -> Self {
        // Versions start at this process's start time in microseconds, so a version a
        // client got from another controller (an earlier run, the previous leader) does
        // not coincide with one of ours: a delta client's initial_resource_versions
        // then never make us skip a resource, or count it as ACKed, by accident.
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 1));
        Cache {
            inner: Mutex::new(Inner {
                generation: epoch,
                types: HashMap::new(),
            }),
            changed: watch::Sender::new(0),
            acks: Mutex::default(),
            cluster_streams: Mutex::default(),
        }
    }
}

impl Cache {
    /// Set a resource. Returns its version; an identical resource keeps its version and
    /// wakes no stream.
    pub fn set(&self, type_url: &'static str, name: &str, any: Any) -> u64 {
        let mut inner = lock(&self.inner);
        let generation = inner.generation + 1;
        let ty = inner.types.entry(type_url).or_default();
        if let Some(e) = ty.resources.get(name) {
            if e.any == any {
                return e.version;
            }
        }
        ty.version = generation;
        ty.resources.insert(
            name.to_string(),
            Entry {
                version: generation,
                any,
            },
        );
        inner.generation = generation;
        drop(inner);
        self.changed.send_replace(generation);
        generation
    }

    /// Remove a resource (a service that is gone). Streams see the type change: SotW
    /// sends the type whole without it, delta lists it as removed.
    pub fn remove(&self, type_url: &'static str, name: &str) {
        let mut inner = lock(&self.inner);
        let generation = inner.generation + 1;
        let Some(ty) = inner.types.get_mut(type_url) else {
            return;
        };
        if ty.resources.remove(name).is_none() {
            return;
        }
        ty.version = generation;
        inner.generation = generation;
        drop(inner);
        self.changed.send_replace(generation);
    }

    /// The version of a type and, for each requested name (all when `names` is None),
    /// its entry, when `wanted(name, version)`. Only wanted entries are cloned: a wake
    /// changes one resource, and a stream subscribed to 10,000 must not copy them all
    /// to find it.
    fn read(
        &self,
        type_url: &str,
        names: Option<&[String]>,
        wanted: impl Fn(&str, u64) -> bool,
    ) -> (u64, Vec<(String, Entry)>) {
        let inner = lock(&self.inner);
        let Some(ty) = inner.types.get(type_url) else {
            return (0, Vec::new());
        };
        let entries = match names {
            None => ty
                .resources
                .iter()
                .filter(|(n, e)| wanted(n, e.version))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| ty.resources.get(n).map(|e| (n, e)))
                .filter(|(n, e)| wanted(n, e.version))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
        };
        (ty.version, entries)
    }

    /// Of `names`, those the cache has no resource of this type for.
    fn missing<'n>(&self, type_url: &str, names: impl Iterator<Item = &'n String>) -> Vec<String> {
        let inner = lock(&self.inner);
        let ty = inner.types.get(type_url);
        names
            .filter(|n| !ty.is_some_and(|t| t.resources.contains_key(n.as_str())))
            .cloned()
            .collect()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// True when every stream subscribed to ClusterLoadAssignment `name` has ACKed
    /// `version` or later. Streams not subscribed to it do not count.
    pub fn all_acked(&self, name: &str, version: u64) -> bool {
        lock(&self.acks)
            .values()
            .filter_map(|names| names.get(name))
            .all(|acked| *acked >= version)
    }

    /// True when some connected stream subscribes to ClusterLoadAssignment `name` (it
    /// has asked for it, ACKed or not). Lets a caller publish an update only once a
    /// client will receive it as an update, e.g. to time EDS update -> effect.
    pub fn subscribed(&self, name: &str) -> bool {
        lock(&self.acks)
            .values()
            .any(|names| names.contains_key(name))
    }

    /// Number of connected streams that subscribe to Clusters (Envoys).
    pub fn cluster_streams(&self) -> usize {
        lock(&self.cluster_streams).len()
    }

    /// True when every stream that subscribes to Clusters (every Envoy) has ACKed
    /// ClusterLoadAssignment `name` at `version` or later: the cluster is warm in every
    /// Envoy. An Envoy that has not asked for it yet counts as not warm.
    pub fn warm_everywhere(&self, name: &str, version: u64) -> bool {
        let envoys = lock(&self.cluster_streams).clone();
        let acks = lock(&self.acks);
        envoys.iter().all(|id| {
            acks.get(id)
                .and_then(|names| names.get(name))
                .is_some_and(|acked| *acked >= version)
        })
    }

    fn note_clusters(&self, stream: u64) {
        lock(&self.cluster_streams).insert(stream);
    }

    /// Number of connected ADS streams that have sent an endpoint (EDS) request.
    pub fn streams(&self) -> usize {
        lock(&self.acks).len()
    }

    /// Record what `stream` subscribes to of `type_url` and the version of each it ACKed.
    /// Only ClusterLoadAssignments are kept (see [`AckRegistry`]); other types are
    /// ignored, so a route request leaves the stream's endpoint view as it was.
    fn record_acks<'a>(
        &self,
        stream: u64,
        type_url: &str,
        subscribed: impl IntoIterator<Item = &'a String>,
        acked: &HashMap<String, u64>,
    ) {
        if type_url != resources::ENDPOINT_TYPE {
            return;
        }
        let view = subscribed
            .into_iter()
            .map(|n| (n.clone(), acked.get(n).copied().unwrap_or(0)))
            .collect();
        lock(&self.acks).insert(stream, view);
    }

    fn forget(&self, stream: u64) {
        lock(&self.cluster_streams).remove(&stream);
        lock(&self.acks).remove(&stream);
    }
}

/// The planner asks the cache what the connected streams have ACKed.
impl zenvoy_core::planner::Acks for Cache {
    fn envoys(&self) -> usize {
        self.cluster_streams()
    }

    fn warm_everywhere(&self, service: &str, version: u64) -> bool {
        Cache::warm_everywhere(self, service, version)
    }

    fn all_acked(&self, service: &str, version: u64) -> bool {
        Cache::all_acked(self, service, version)
    }
}

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

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Responses queued per stream before the stream task waits for Envoy to read.
const STREAM_QUEUE: usize = 16;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.open()?;
        self.spawn_stream("ads", AdsStream::new, request)
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.open()?;
        self.spawn_stream("delta_ads", DeltaStream::new, request)
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

    /// Serve one ADS stream of either protocol on its own task; the response stream
    /// is what tonic sends back.
    fn spawn_stream<P: Protocol>(
        &self,
        span_name: &'static str,
        state: fn(u64) -> P,
        request: Request<Streaming<P::Req>>,
    ) -> Result<Response<ResponseStream<P::Resp>>, Status> {
        let permit = self.admission.stream()?;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let identity = self.admission.peer(&request);
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let span = tracing::info_span!("ads", kind = span_name, stream = id, peer = ?peer);
        tokio::spawn(
            serve_stream(
                id,
                state(id),
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
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What the serve loop needs of a stream's protocol state (SotW or delta).
trait Protocol: Send + 'static {
    type Req: Send + 'static;
    type Resp: Send + 'static;
    fn on_request(&mut self, req: Self::Req, cache: &Cache, metrics: &Metrics) -> Vec<Self::Resp>;
    fn on_change(&mut self, cache: &Cache) -> Vec<Self::Resp>;
    fn node(&self) -> &str;
    fn dropped_inflight(&self) -> u64;
    fn subscribed(&self) -> usize;
}

impl Protocol for AdsStream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;
    fn on_request(&mut self, req: Self::Req, cache: &Cache, metrics: &Metrics) -> Vec<Self::Resp> {
        AdsStream::on_request(self, req, cache, metrics)
    }
    fn on_change(&mut self, cache: &Cache) -> Vec<Self::Resp> {
        AdsStream::on_change(self, cache)
    }
    fn node(&self) -> &str {
        AdsStream::node(self)
    }
    fn dropped_inflight(&self) -> u64 {
        AdsStream::dropped_inflight(self)
    }
    fn subscribed(&self) -> usize {
        AdsStream::subscribed(self)
    }
}

impl Protocol for DeltaStream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;
    fn on_request(&mut self, req: Self::Req, cache: &Cache, metrics: &Metrics) -> Vec<Self::Resp> {
        DeltaStream::on_request(self, req, cache, metrics)
    }
    fn on_change(&mut self, cache: &Cache) -> Vec<Self::Resp> {
        DeltaStream::on_change(self, cache)
    }
    fn node(&self) -> &str {
        DeltaStream::node(self)
    }
    fn dropped_inflight(&self) -> u64 {
        DeltaStream::dropped_inflight(self)
    }
    fn subscribed(&self) -> usize {
        DeltaStream::subscribed(self)
    }
}

/// Where a stream's responses go (tonic sends them on).
type Responses<T> = mpsc::Sender<Result<T, Status>>;

/// What every stream of the server shares.
struct Shared {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    shutdown: Option<watch::Receiver<bool>>,
    admission: Admission,
}

async fn serve_stream<P: Protocol>(
    id: u64,
    mut stream: P,
    Shared {
        cache,
        metrics,
        shutdown,
        admission,
    }: Shared,
    mut inbound: Streaming<P::Req>,
    tx: Responses<P::Resp>,
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
                        if let Err(status) = admission.check(&peer, stream.node()) {
                            let _ = tx.send(Err(status)).await;
                            break;
                        }
                    }
                    if stream.subscribed() > admission.max_names {
                        admission.refuse("names");
                        warn!(node = %stream.node(), names = stream.subscribed(), "stream ended: more names than controller.maxNamesPerStream");
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
                info!(node = %stream.node(), "controller shutting down; ending ADS stream");
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
                    info!(node = %stream.node(), "controller shutting down; ending ADS stream");
                    break 'serve;
                }
            }
        }
    }
    // Dropping `tx` (on return) ends the response stream: tonic then closes the call with
    // status OK, and the client reconnects as it would after any stream end.
    cache.forget(id);
    metrics.xds_streams.dec();
    info!(node = %stream.node(), "ADS stream closed");
    let dropped = stream.dropped_inflight();
    if dropped > 0 {
        warn!(node = %stream.node(), dropped, "responses left un-ACKed beyond those remembered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribed_while_a_connected_stream_asks_for_the_name() {
        let cache = Cache::default();
        assert!(!cache.subscribed("a"), "no stream yet");
        let eds = resources::ENDPOINT_TYPE;
        cache.record_acks(1, eds, &["a".to_string()], &HashMap::new());
        assert!(cache.subscribed("a"), "subscribed, nothing ACKed yet");
        assert!(!cache.subscribed("b"));
        cache.record_acks(
            2,
            eds,
            &["b".to_string()],
            &HashMap::from([("b".to_string(), 3)]),
        );
        assert!(cache.subscribed("b"));
        // Another type's names leave the endpoint view alone.
        cache.record_acks(1, resources::ROUTE_TYPE, &[], &HashMap::new());
        assert!(cache.subscribed("a"));
        // Stream 1 narrows its subscription, then stream 2 disconnects.
        cache.record_acks(1, eds, &[], &HashMap::new());
        assert!(!cache.subscribed("a"));
        cache.forget(2);
        assert!(!cache.subscribed("b"));
    }
}
