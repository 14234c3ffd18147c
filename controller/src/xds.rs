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
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::{Request, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use crate::admission::Admission;
use crate::telemetry::Metrics;
pub use delta::DeltaStream;
pub use stream::AdsStream;
use tokio::sync::OwnedSemaphorePermit;
use wire::{Encoded, Run};

/// One resource at the version it last changed: its `Any`, encoded once and shared by
/// every response that carries it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub version: u64,
    pub any: Bytes,
}

#[derive(Debug, Default)]
struct TypeState {
    /// Generation of the last change of any resource of this type.
    version: u64,
    resources: BTreeMap<Name, Entry>,
    /// Every resource at `version`, encoded as a response's `resources` (SotW) and as
    /// delta `Resource`s: built by the first stream that sends the whole type at this
    /// version, shared by the rest, dropped at the next change.
    whole: Option<Wholes>,
    /// The name of the resource set at each version (every set has a version of its own):
    /// what changed since a stream last looked is a range, not a walk of every resource.
    by_version: BTreeMap<u64, Name>,
    /// Names removed, by the version of the removal; the oldest go beyond
    /// [`MAX_TOMBSTONES`], and a stream that last looked before `forgotten_before` walks
    /// everything instead.
    removed: BTreeMap<u64, Name>,
    forgotten_before: u64,
}

/// Removals remembered per type for [`Cache::since`].
const MAX_TOMBSTONES: usize = 10_000;

/// What changed in a type since a version a stream has seen.
#[derive(Debug)]
pub(crate) enum Since {
    /// Nothing: the type is still at that version.
    Current,
    Changes {
        /// The type's version now.
        version: u64,
        /// Resources set since, at their current version.
        set: Vec<(Name, Entry)>,
        /// Names removed since (and not set again).
        removed: Vec<Name>,
    },
    /// Too long ago (removals forgotten): read everything.
    TooOld,
}

#[derive(Debug, Default)]
struct Wholes {
    sotw: Option<Run>,
    delta: Option<Run>,
}

/// Which encoding of a whole type (see [`Cache::whole`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Sotw,
    Delta,
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
type AckRegistry = HashMap<u64, AckView>;

/// One stream's ACKed version of each name it subscribes to (0: none yet), aligned with
/// its sorted names, which it shares with the stream's subscription: at 10,000 names
/// this is 80 KB of versions per stream where a map of its own cost 400 KB.
#[derive(Debug)]
struct AckView {
    names: Names,
    acked: Vec<u64>,
}

impl AckView {
    fn get(&self, name: &str) -> Option<u64> {
        self.names.index_of(name).map(|i| self.acked[i])
    }
}

/// A stream's subscription to a named type: its names, sorted and without repeats,
/// shared with its ACK view. A sorted slice: 16 bytes a name, where a `BTreeSet` took
/// about 40; looked up by binary search.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names(Arc<[Name]>);

impl Names {
    pub(crate) fn new(names: impl IntoIterator<Item = Name>) -> Self {
        let mut v: Vec<Name> = names.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        Names(v.into())
    }

    /// These names with `add` added and `remove` removed.
    pub(crate) fn changed(&self, add: Vec<Name>, remove: &[&str]) -> Self {
        let remove: std::collections::HashSet<&str> = remove.iter().copied().collect();
        let kept = self.0.iter().filter(|n| !remove.contains(&***n)).cloned();
        Names::new(kept.chain(add))
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.0.binary_search_by(|n| (**n).cmp(name)).ok()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.index_of(name).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Name> {
        self.0.iter()
    }
}

/// A resource name, shared: the cache, and every stream's subscription, sent and ACK
/// records hold the same allocation (at 10,000 names and hundreds of streams, a copy
/// of each name per stream per record was most of a stream's memory).
pub type Name = Arc<str>;

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
        let any = Bytes::from(prost::Message::encode_to_vec(&any));
        let mut inner = lock(&self.inner);
        let generation = inner.generation + 1;
        let ty = inner.types.entry(type_url).or_default();
        if let Some(e) = ty.resources.get(name) {
            if e.any == any {
                return e.version;
            }
        }
        ty.version = generation;
        ty.whole = None;
        let entry = Entry {
            version: generation,
            any,
        };
        let key: Name = match ty.resources.get_key_value(name) {
            Some((key, old)) => {
                let key = key.clone();
                ty.by_version.remove(&old.version);
                key
            }
            None => Name::from(name),
        };
        ty.resources.insert(key.clone(), entry);
        ty.by_version.insert(generation, key);
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
        let Some((key, old)) = ty.resources.remove_entry(name) else {
            return;
        };
        ty.by_version.remove(&old.version);
        ty.removed.insert(generation, key);
        while ty.removed.len() > MAX_TOMBSTONES {
            if let Some((v, _)) = ty.removed.pop_first() {
                ty.forgotten_before = v + 1;
            }
        }
        ty.version = generation;
        ty.whole = None;
        inner.generation = generation;
        drop(inner);
        self.changed.send_replace(generation);
    }

    /// The version of a type, for each requested name (all when `names` is None) its
    /// entry when `wanted(name, version)`, and how many resources the type has. Only
    /// wanted entries are cloned (a name and a reference to shared bytes): a wake changes
    /// one resource, and a stream subscribed to 10,000 must not copy them all to find it.
    fn read(
        &self,
        type_url: &str,
        names: Option<&[Name]>,
        wanted: impl Fn(&str, u64) -> bool,
    ) -> (u64, Vec<(Name, Entry)>, usize) {
        let inner = lock(&self.inner);
        let Some(ty) = inner.types.get(type_url) else {
            return (0, Vec::new(), 0);
        };
        let total = ty.resources.len();
        let entries = match names {
            None => ty
                .resources
                .iter()
                .filter(|(n, e)| wanted(n, e.version))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| ty.resources.get(&**n).map(|e| (n, e)))
                .filter(|(n, e)| wanted(n, e.version))
                .map(|(n, e)| (n.clone(), e.clone()))
                .collect(),
        };
        (ty.version, entries, total)
    }

    /// `names` as the cache's own [`Name`]s where it has them (new ones otherwise).
    fn intern<'n>(&self, type_url: &str, names: impl IntoIterator<Item = &'n str>) -> Vec<Name> {
        let inner = lock(&self.inner);
        let ty = inner.types.get(type_url);
        names
            .into_iter()
            .map(|n| {
                ty.and_then(|t| t.resources.get_key_value(n))
                    .map_or_else(|| Name::from(n), |(k, _)| k.clone())
            })
            .collect()
    }

    /// The version of a type (0: none yet).
    fn version(&self, type_url: &str) -> u64 {
        lock(&self.inner)
            .types
            .get(type_url)
            .map_or(0, |t| t.version)
    }

    /// What changed in `type_url` after version `seen`: a range of the version index, so
    /// a wake (one resource) costs every stream one lookup, not a walk of 10,000.
    fn since(&self, type_url: &str, seen: u64) -> Since {
        let inner = lock(&self.inner);
        let Some(ty) = inner.types.get(type_url) else {
            return if seen == 0 {
                Since::Current
            } else {
                Since::TooOld
            };
        };
        if ty.version == seen {
            return Since::Current;
        }
        if seen < ty.forgotten_before || seen > ty.version {
            return Since::TooOld;
        }
        let after = seen.saturating_add(1);
        let set = ty
            .by_version
            .range(after..)
            .filter_map(|(_, n)| ty.resources.get(n).map(|e| (n.clone(), e.clone())))
            .collect();
        let removed = ty
            .removed
            .range(after..)
            .map(|(_, n)| n)
            .filter(|n| !ty.resources.contains_key(&***n))
            .cloned()
            .collect();
        Since::Changes {
            version: ty.version,
            set,
            removed,
        }
    }

    /// Every resource of `type_url` encoded as `flavor`'s repeated `resources`, when the
    /// type is still at `version`: built once per version, shared by every stream.
    pub(crate) fn whole(&self, type_url: &str, version: u64, flavor: Flavor) -> Option<Run> {
        let mut inner = lock(&self.inner);
        let ty = inner.types.get_mut(type_url)?;
        if ty.version != version {
            return None;
        }
        let wholes = ty.whole.get_or_insert_with(Wholes::default);
        let slot = match flavor {
            Flavor::Sotw => &mut wholes.sotw,
            Flavor::Delta => &mut wholes.delta,
        };
        if let Some(run) = slot {
            return Some(run.clone());
        }
        let run = match flavor {
            Flavor::Sotw => Run::new(2, ty.resources.values().map(|e| &e.any)),
            Flavor::Delta => {
                let each: Vec<Bytes> = ty
                    .resources
                    .iter()
                    .map(|(n, e)| wire::delta_resource(n, &e.version.to_string(), &e.any))
                    .collect();
                Run::new(2, each.iter())
            }
        };
        *slot = Some(run.clone());
        Some(run)
    }

    /// Of `names`, those the cache has no resource of this type for.
    fn missing<'n>(&self, type_url: &str, names: impl Iterator<Item = &'n Name>) -> Vec<Name> {
        let inner = lock(&self.inner);
        let ty = inner.types.get(type_url);
        names
            .filter(|n| !ty.is_some_and(|t| t.resources.contains_key(&***n)))
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
            .filter_map(|view| view.get(name))
            .all(|acked| acked >= version)
    }

    /// True when some connected stream subscribes to ClusterLoadAssignment `name` (it
    /// has asked for it, ACKed or not). Lets a caller publish an update only once a
    /// client will receive it as an update, e.g. to time EDS update -> effect.
    pub fn subscribed(&self, name: &str) -> bool {
        lock(&self.acks)
            .values()
            .any(|view| view.names.contains(name))
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
                .and_then(|view| view.get(name))
                .is_some_and(|acked| acked >= version)
        })
    }

    fn note_clusters(&self, stream: u64) {
        lock(&self.cluster_streams).insert(stream);
    }

    /// Number of connected ADS streams that have sent an endpoint (EDS) request.
    pub fn streams(&self) -> usize {
        lock(&self.acks).len()
    }

    /// Record what `stream` subscribes to of `type_url`, keeping the versions it ACKed of
    /// the names it still subscribes to (0 for new ones). Only ClusterLoadAssignments are
    /// kept (see [`AckRegistry`]); other types are ignored, so a route request leaves the
    /// stream's endpoint view as it was. This view is the stream's only record of its
    /// ACKs: at 10,000 names a second copy per stream would cost megabytes per Envoy.
    fn record_acks(&self, stream: u64, type_url: &str, subscribed: &Names) {
        if type_url != resources::ENDPOINT_TYPE {
            return;
        }
        let mut acks = lock(&self.acks);
        let old = acks.remove(&stream);
        let acked = subscribed
            .iter()
            .map(|n| old.as_ref().and_then(|o| o.get(n)).unwrap_or(0))
            .collect();
        acks.insert(
            stream,
            AckView {
                names: subscribed.clone(),
                acked,
            },
        );
    }

    /// Whether `stream` has an ACK view of `type_url` (only endpoints have one).
    fn has_ack_view(&self, stream: u64, type_url: &str) -> bool {
        type_url != resources::ENDPOINT_TYPE || lock(&self.acks).contains_key(&stream)
    }

    /// `stream` ACKed these versions of resources it subscribes to (names it does not
    /// subscribe to are left out: an ACK cannot subscribe).
    fn ack(&self, stream: u64, type_url: &str, acked: &[(Name, u64)]) {
        if type_url != resources::ENDPOINT_TYPE {
            return;
        }
        let mut acks = lock(&self.acks);
        let Some(view) = acks.get_mut(&stream) else {
            return;
        };
        for (name, version) in acked {
            if let Some(i) = view.names.index_of(name) {
                view.acked[i] = view.acked[i].max(*version);
            }
        }
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
                SOTW_METHOD => server.serve::<AdsStream>("ads", AdsStream::new, req, max),
                DELTA_METHOD => {
                    server.serve::<DeltaStream>("delta_ads", DeltaStream::new, req, max)
                }
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

    /// Serve one ADS stream of either protocol on its own task; the response body is fed
    /// by it.
    fn serve<P: Protocol>(
        &self,
        span_name: &'static str,
        state: fn(u64) -> P,
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
            tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<(), P::Req>::default()),
            body,
            None,
            Some(max_message_bytes),
        );
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let mut response = http::Response::new(tonic::body::Body::new(wire::GrpcBody::new(rx)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(response)
    }
}

/// What the serve loop needs of a stream's protocol state (SotW or delta).
trait Protocol: Send + 'static {
    type Req: prost::Message + Default + Send + 'static;
    fn on_request(&mut self, req: Self::Req, cache: &Cache, metrics: &Metrics) -> Vec<Encoded>;
    fn on_change(&mut self, cache: &Cache) -> Vec<Encoded>;
    fn node(&self) -> &str;
    fn dropped_inflight(&self) -> u64;
    fn subscribed(&self) -> usize;
}

impl Protocol for AdsStream {
    type Req = stream::SotwRequest;
    fn on_request(&mut self, req: Self::Req, cache: &Cache, metrics: &Metrics) -> Vec<Encoded> {
        AdsStream::on_request(self, req, cache, metrics)
    }
    fn on_change(&mut self, cache: &Cache) -> Vec<Encoded> {
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
    fn on_request(&mut self, req: Self::Req, cache: &Cache, metrics: &Metrics) -> Vec<Encoded> {
        DeltaStream::on_request(self, req, cache, metrics)
    }
    fn on_change(&mut self, cache: &Cache) -> Vec<Encoded> {
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

/// Where a stream's responses go (its response body sends them on).
type Responses = mpsc::Sender<wire::Outgoing>;

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
        cache.record_acks(1, eds, &Names::new([Name::from("a")]));
        assert!(cache.subscribed("a"), "subscribed, nothing ACKed yet");
        assert!(!cache.subscribed("b"));
        cache.record_acks(2, eds, &Names::new([Name::from("b")]));
        cache.ack(2, eds, &[(Name::from("b"), 3)]);
        assert!(cache.subscribed("b"));
        assert!(cache.all_acked("b", 3));
        // A new subscription keeps what was ACKed of the names that stay.
        cache.record_acks(2, eds, &Names::new([Name::from("b"), Name::from("c")]));
        assert!(cache.all_acked("b", 3));
        assert!(!cache.all_acked("c", 1));
        // Another type's names leave the endpoint view alone.
        cache.record_acks(1, resources::ROUTE_TYPE, &Names::default());
        assert!(cache.subscribed("a"));
        // Stream 1 narrows its subscription, then stream 2 disconnects.
        cache.record_acks(1, eds, &Names::default());
        assert!(!cache.subscribed("a"));
        cache.forget(2);
        assert!(!cache.subscribed("b"));
    }

    #[test]
    fn names_are_sorted_without_repeats_and_change_by_adding_and_removing() {
        let n = |s: &str| Name::from(s);
        let names = Names::new([n("c"), n("a"), n("b"), n("a")]);
        assert_eq!(
            names.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(names.index_of("b"), Some(1));
        assert!(!names.contains("d"));
        let next = names.changed(vec![n("d"), n("a")], &["b", "x"]);
        assert_eq!(
            next.iter().map(|n| &**n).collect::<Vec<_>>(),
            ["a", "c", "d"]
        );
        assert_eq!(names.len(), 3, "the old list is unchanged");
        // An ACK of a name its stream does not subscribe to counts nowhere; the versions
        // stay with their names as the list around them changes.
        let cache = Cache::default();
        let eds = resources::ENDPOINT_TYPE;
        cache.record_acks(1, eds, &names);
        cache.ack(1, eds, &[(n("c"), 4), (n("z"), 9)]);
        cache.record_acks(1, eds, &next);
        assert!(cache.all_acked("c", 4));
        assert!(!cache.all_acked("a", 1));
        assert!(
            cache.all_acked("z", 9),
            "no stream subscribes to z: nothing to wait for"
        );
    }

    fn any(v: u8) -> Any {
        Any {
            type_url: "t".into(),
            value: vec![v],
        }
    }

    #[test]
    fn since_gives_what_changed_after_a_version_and_what_was_removed() {
        let cache = Cache::default();
        let eds = resources::ENDPOINT_TYPE;
        let va = cache.set(eds, "a", any(1));
        let vb = cache.set(eds, "b", any(1));
        let names = |s: Since| match s {
            Since::Changes { set, removed, .. } => (
                set.into_iter()
                    .map(|(n, _)| n.to_string())
                    .collect::<Vec<_>>(),
                removed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ),
            other => panic!("expected changes, got {other:?}"),
        };
        assert_eq!(
            names(cache.since(eds, va)),
            (vec!["b".to_string()], Vec::<String>::new())
        );
        assert!(matches!(cache.since(eds, vb), Since::Current));
        // Set again: one entry, at its new version; an identical set changes nothing.
        let va2 = cache.set(eds, "a", any(2));
        assert_eq!(cache.set(eds, "a", any(2)), va2);
        assert_eq!(
            names(cache.since(eds, vb)),
            (vec!["a".to_string()], Vec::<String>::new())
        );
        cache.remove(eds, "b");
        assert_eq!(
            names(cache.since(eds, va2)),
            (Vec::<String>::new(), vec!["b".to_string()])
        );
        // Removed and set again: a change, not a removal.
        let before = cache.version(eds);
        cache.remove(eds, "a");
        cache.set(eds, "a", any(3));
        assert_eq!(
            names(cache.since(eds, before)),
            (vec!["a".to_string()], Vec::<String>::new())
        );
        assert!(matches!(
            cache.since(resources::ROUTE_TYPE, 0),
            Since::Current
        ));
    }

    #[test]
    fn since_before_the_oldest_remembered_removal_reads_everything() {
        let cache = Cache::default();
        let eds = resources::ENDPOINT_TYPE;
        let start = cache.set(eds, "keep", any(0));
        for i in 0..=MAX_TOMBSTONES {
            let name = format!("n{i}");
            cache.set(eds, &name, any(1));
            cache.remove(eds, &name);
        }
        assert!(matches!(cache.since(eds, start), Since::TooOld));
        let now = cache.version(eds);
        assert!(matches!(cache.since(eds, now), Since::Current));
    }
}
