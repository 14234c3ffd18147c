//! Kubernetes mode: services are opted-in Services, workloads are scaled through their
//! `/scale` subresource, readiness comes from EndpointSlices, the config from a
//! ConfigMap, and only the holder of a Lease scales.
//!
//! ```text
//!  Services ----watch--> discovery (index) --Upsert/Remove--> runtime --wake/park--> backend
//!  EndpointSlices --reflector--> endpoints --Endpoints--^          |  (leader only)
//!  ConfigMap --watch--> configmap --new config--> discovery        v
//!  Lease <--get/replace-- leader --is leader--> backend      Deployment/StatefulSet
//!                                                             /scale + annotation
//! ```
//!
//! State lives in the API, not in the controller: the parked replica count is an
//! annotation on the workload, and a (re)started controller reads each workload's
//! replicas to know whether a service is parked or (being) woken.
//!
//! Followers (replicas without the Lease) are hot standbys: they watch the same objects
//! and keep the same services, but make no writes and refuse ADS and metrics streams
//! (UNAVAILABLE), so every Envoy and holder pushes its stats to, and takes its xDS from,
//! the leader, the one replica whose state the stats drive. A leader that loses the
//! Lease ends its streams; clients reconnect (list every replica, or use the
//! controller's Service) and land on the new leader within the lease duration.

pub mod annotations;
pub mod api;
pub mod backend;
pub mod configmap;
pub mod discovery;
pub mod endpoints;
pub mod events;
pub mod index;
pub mod leader;
pub mod port_store;
pub mod ports;
pub mod service;
pub mod slices;

use std::future::Future;
use std::sync::Arc;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;

use zenvoy_core::config::Config;

pub use api::ApiError;

use crate::{Core, RunError};

#[derive(Debug, Clone)]
pub struct Options {
    pub config_map: configmap::Source,
    /// Namespaces whose Services may opt in; all when empty.
    pub namespaces: Vec<String>,
    pub lease: leader::LeaseConfig,
}

/// Run the controller in Kubernetes mode with the config `text` read from the ConfigMap
/// (see [`configmap::load`]) until `shutdown`.
pub async fn run(
    client: Client,
    options: Options,
    text: String,
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let (leader_tx, leader_rx) = watch::channel(false);
    // Only the leader serves streams: its state is the one driven by the stats, so
    // every Envoy and holder must push to it (followers refuse; clients retry). The
    // gate opens once a new leader's runtime knows what runs (discovery opens it).
    let (serving_tx, serving_rx) = watch::channel(false);
    let core = Core::new().with_gate(serving_rx.clone());
    let targets = endpoints::Targets::default();
    let (events, events_task) =
        events::Events::start(client.clone(), &options.lease.identity, leader_rx.clone());
    let (endpoints, mut tasks) = endpoints::start(
        &client,
        &options.namespaces,
        targets.clone(),
        core.events.clone(),
        || core.stopped(),
    );
    tasks.push(tokio::spawn(leader::run(
        client.clone(),
        options.lease.clone(),
        leader_tx,
        core.metrics.clone(),
        core.stopped(),
    )));
    let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
    tasks.push(tokio::spawn(configmap::watch(
        client.clone(),
        options.config_map.clone(),
        text,
        config_tx,
        events.clone(),
        core.metrics.clone(),
        core.stopped(),
    )));
    // inCluster: every Service port keeps the proxy port it had (read back from the
    // zenvoy-ports ConfigMap, or from the slices an older controller kept) before any is
    // allocated; the ConfigMap and the slices are written by the leader.
    let in_cluster = match &config.in_cluster {
        Some(ic) => {
            let mut ports = ports::Ports::new(ic.ports);
            let stored = port_store::load(&client, &options.config_map.namespace).await;
            let known: std::collections::HashSet<String> =
                stored.iter().map(|(s, _)| s.clone()).collect();
            let mut loaded = stored;
            let older = slices::load(&client, &options.namespaces).await;
            loaded.extend(older.into_iter().filter(|(s, _)| !known.contains(s)));
            for service in ports.load(loaded) {
                tracing::warn!(%service, "inCluster: its stored port is outside inCluster.ports or taken; it gets a new one");
            }
            let (store, store_task) = port_store::PortStore::start(
                client.clone(),
                options.config_map.namespace.clone(),
                ports.all(),
                serving_rx.clone(),
                core.stopped(),
            );
            tasks.push(store_task);
            let (slices, slice_tasks) = slices::Slices::start(
                client.clone(),
                (ic.proxy_namespace.clone(), ic.proxy_service.clone()),
                targets.clone(),
                core.events.clone(),
                serving_rx.clone(),
                || core.stopped(),
            );
            tasks.extend(slice_tasks);
            Some((ports, store, slices))
        }
        None => None,
    };
    let (ports, port_store, slices) = match in_cluster {
        Some((p, st, s)) => (Some(p), Some(st), Some(s)),
        None => (None, None, None),
    };
    let discovery = discovery::Discovery {
        client: client.clone(),
        namespaces: options.namespaces.clone(),
        targets: targets.clone(),
        runtime: core.events.clone(),
        events: events.clone(),
        config: config_rx,
        leader: leader_rx.clone(),
        serving: serving_tx,
        ports,
        port_store,
    };
    tasks.push(tokio::spawn(discovery.run(core.stopped())));
    tasks.push(events_task);
    // The backend scales only while serving, not merely leading: a replica just promoted
    // must first learn what runs (a park its follower runtime decided must not go out).
    let mut backend = backend::KubeBackend::new(
        client,
        targets,
        endpoints,
        serving_rx,
        events,
        core.metrics.clone(),
    );
    if let Some(slices) = slices {
        backend = backend.with_slices(slices);
    }
    let backend = Arc::new(backend);
    core.serve(config, backend, grpc, admin, shutdown, tasks)
        .await
}
