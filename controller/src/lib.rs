//! zenvoy-controller: Envoy's control plane for scale-to-zero. The decisions are in
//! `zenvoy-core` (the planner and what it builds on); this crate is the adapters that
//! feed it events and carry out its effects.
//!
//! ```text
//!  Envoy / holder --MetricsService push--> ingest --Event--+
//!  Envoy / holder pages --scrape---------> ingest --Event--+
//!  backend (process | kubernetes) results --------Event----+--> runtime --> Planner
//!  config file / ConfigMap, Services -----------------Event-+       |
//!                                                                   v  Effects
//!  Envoy / holder <--ADS (xds::Cache; resources: domain -> Envoy)--+-- backend.wake/park
//! ```
//!
//! Layers, top to bottom: `main` (the wiring of both modes), this file's [`Controller`],
//! [`runtime`] and [`reload`], the stream servers [`ingest`] and [`xds`], then
//! [`backend`] (the process and Kubernetes backends side by side, with the Kubernetes
//! adapters), [`tracked`], [`gate`], [`telemetry`], [`admin`]. No module imports one above
//! it; none of `zenvoy-core` imports any of them.

pub mod admin;
pub mod admission;
pub mod backend;
pub mod gate;
pub mod identity;
pub mod ingest;
pub mod reload;
pub mod runtime;
pub mod telemetry;
pub mod tracked;
pub mod xds;

use std::future::Future;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tracing::info;

use zenvoy_core::config::Config;

use crate::backend::process::ProcessBackend;
use crate::gate::{closed_or_stopped, stopping};
use crate::runtime::{Event, Runtime, EVENT_QUEUE};
use crate::telemetry::Metrics;

/// HTTP/2 streams one connection may have open at once: an Envoy opens two (ADS and
/// its metrics sink), a holder one per connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server: {0}")]
    Admin(#[from] std::io::Error),
    #[error("{field}: cannot read {path}: {source}")]
    TlsFile {
        field: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The gRPC server's TLS: its identity, and the CA every client certificate must chain to
/// (required: a client without one is refused in the handshake).
fn server_tls(
    t: &zenvoy_core::config::TlsConfig,
) -> Result<tonic::transport::ServerTlsConfig, RunError> {
    let read = |field, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| RunError::TlsFile {
            field,
            path: path.to_owned(),
            source,
        })
    };
    let cert = read("controller.tls.cert", &t.cert)?;
    let key = read("controller.tls.key", &t.key)?;
    let ca = read("controller.tls.clientCa", &t.client_ca)?;
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca)))
}

/// Run the controller with the process backend on bound listeners until `shutdown`,
/// reloading the config file's timeouts and limits when `reload` is given, keeping what
/// runs in `state_file` (see `backend::process`) when given.
pub async fn run(
    config: Config,
    reload: Option<reload::Reload>,
    state_file: Option<std::path::PathBuf>,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let mut backend = ProcessBackend::new(&config.services);
    if let Some(path) = state_file {
        backend = backend.with_state_file(path);
    }
    run_with_reload(config, reload, Arc::new(backend), grpc, admin, shutdown).await
}

/// Run the controller with any backend (no config reload).
pub async fn run_with<B: Backend>(
    config: Config,
    backend: Arc<B>,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    run_with_reload(config, None, backend, grpc, admin, shutdown).await
}

/// Run the controller with any backend, reloading when `reload` is given.
pub async fn run_with_reload<B: Backend>(
    config: Config,
    reload: Option<reload::Reload>,
    backend: Arc<B>,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let controller = Controller::new();
    let reloading = reload.map(|r| {
        tokio::spawn(reload::run(
            r,
            config.clone(),
            controller.events.clone(),
            controller.metrics.clone(),
            controller.stopped(),
        ))
    });
    controller
        .serve(
            config,
            backend,
            grpc,
            admin,
            shutdown,
            reloading.into_iter().collect(),
        )
        .await
}

/// What every controller has, made before the backend so a backend (Kubernetes) can
/// feed the runtime and count into the same metrics: the event queue, the metrics,
/// the stop signal.
pub struct Controller {
    registry: Registry,
    pub metrics: Arc<Metrics>,
    pub events: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    stop_tx: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    gate: Option<watch::Receiver<bool>>,
}

impl Default for Controller {
    fn default() -> Self {
        Self::new()
    }
}

/// How long a task the controller was handed may take to end after the stop signal (e.g. a
/// leader giving up its Lease) before it is aborted.
const TASK_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Controller {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        Controller {
            registry,
            metrics,
            events,
            events_rx,
            stop_tx,
            stop_rx,
            gate: None,
        }
    }

    /// Serve ADS and metrics streams only while `gate` reads true (Kubernetes: while this
    /// replica holds the Lease). Closed, new streams are refused with UNAVAILABLE and
    /// open ones end, so clients reconnect, to the leader.
    pub fn with_gate(mut self, gate: watch::Receiver<bool>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Resolves when the controller stops.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        stopping(Some(self.stop_rx.clone()))
    }

    /// Serve until `shutdown`; then stop, give each of `tasks` (which watch
    /// [`Controller::stopped`]) a moment to end, and abort the rest.
    pub async fn serve<B: Backend>(
        self,
        config: Config,
        backend: Arc<B>,
        grpc: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<(), RunError> {
        let Controller {
            registry,
            metrics,
            events: events_tx,
            events_rx,
            stop_tx,
            stop_rx,
            gate,
        } = self;
        let registry = Arc::new(registry);
        if gate.is_none() {
            // One controller, no election: it always leads (Kubernetes: the Lease says).
            metrics.leader.set(1);
        }
        let stopped = {
            let stop_rx = stop_rx.clone();
            move || stopping(Some(stop_rx.clone()))
        };
        let cache = Arc::new(xds::Cache::default());
        let tracked = Arc::new(tracked::Tracked::default());
        // Without a gate (process backend) this controller always scales; with one, only
        // while it reads true.
        let runtime = Runtime::new(
            &config,
            gate.is_none(),
            cache.clone(),
            backend,
            metrics.clone(),
            events_tx.clone(),
            tracked.clone(),
        );
        let reconcile_every = if gate.is_none() {
            runtime::RECONCILE_PROCESSES
        } else {
            runtime::RECONCILE_KUBERNETES
        };
        let status = runtime.status();
        let runtime =
            tokio::spawn(runtime.run(events_rx, gate.clone(), reconcile_every, stopped()));
        let scraping = config.scrape.clone().map(|s| {
            tokio::spawn(ingest::scrape::run(
                s,
                tracked.clone(),
                events_tx.clone(),
                metrics.clone(),
                stopped(),
            ))
        });
        let peer_timeout = config.controller.peer_timeout;
        let limits = config.controller.clone();
        let tls = config.controller.tls.as_ref().map(server_tls).transpose()?;
        // Not kept: at 10,000 services the parsed document is MBs (the reload watcher
        // keeps its own copy of what it needs).
        drop(config);

        // The gRPC server's graceful shutdown waits for open requests, and ADS and metrics
        // streams never end on their own: each one ends itself on the same stop signal,
        // or when the gate closes.
        let streams_end = match gate.clone() {
            Some(gate) => closed_or_stopped(gate, stop_rx.clone()),
            None => stop_rx.clone(),
        };
        let admission = admission::Admission::new(
            tls.is_some(),
            limits.max_streams,
            limits.max_names_per_stream,
            metrics.clone(),
        );
        let ads = xds::AdsService::new(
            xds::AdsServer::new(cache, metrics.clone())
                .with_shutdown(streams_end.clone())
                .with_admission(admission.clone()),
            limits.max_message_bytes,
        );
        let sink = ingest::MetricsServer::new(
            ingest::MetricsSink::new(tracked, events_tx, metrics)
                .with_shutdown(streams_end)
                .with_admission(admission),
            limits.max_message_bytes,
        );
        info!(grpc = ?grpc.local_addr().ok(), admin = ?admin.local_addr().ok(), "controller serving");
        // A peer that vanished without closing (its node lost power, a network dropped
        // its packets) must not keep its stream, its ACK view and its stats: HTTP/2 pings
        // every third of the peer timeout, the connection closed when one goes unanswered
        // for another third; TCP keepalive below that for the kernel's view.
        let ping = peer_timeout / 3;
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(ping))
            .http2_keepalive_timeout(Some(ping))
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        let grpc = server
            .add_service(ads)
            .add_service(sink)
            .serve_with_incoming_shutdown(accepted(grpc, ping), stopped());
        // Healthy while the runtime, the scraper and every task handed in (Kubernetes:
        // watchers, the election) still run; ready while this replica also serves.
        let health = admin::Health {
            vital: std::iter::once(runtime.abort_handle())
                .chain(scraping.iter().map(tokio::task::JoinHandle::abort_handle))
                .chain(tasks.iter().map(tokio::task::JoinHandle::abort_handle))
                .collect(),
            serving: gate.clone(),
            status: Some(status),
        };
        let admin = admin::serve(admin, registry, health, stopped());

        let stopper = async move {
            shutdown.await;
            info!("shutting down");
            let _ = stop_tx.send(true);
        };
        let (grpc, admin, ()) = tokio::join!(grpc, admin, stopper);
        let _ = runtime.await;
        if let Some(s) = scraping {
            let _ = s.await;
        }
        let grace = tokio::time::Instant::now() + TASK_STOP_GRACE;
        for mut t in tasks {
            if tokio::time::timeout_at(grace, &mut t).await.is_err() {
                t.abort();
            }
        }
        grpc?;
        admin?;
        Ok(())
    }
}

pub use backend::Backend;

/// Accepted gRPC connections with Nagle off (an EDS update is a few hundred bytes that
/// must leave at once, not wait for the previous segment's ACK) and TCP keepalive on
/// (probes after `idle` without traffic, every `idle`, three of them).
fn accepted(
    listener: TcpListener,
    idle: std::time::Duration,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle)
        .with_retries(3);
    TcpListenerStream::new(listener).map(move |s| {
        let s = s?;
        s.set_nodelay(true)?;
        socket2::SockRef::from(&s).set_tcp_keepalive(&keepalive)?;
        Ok(s)
    })
}
