//! Which Services zenvoy fronts: a watch of core/v1 Services fed to the [`Index`], whose
//! changes this carries out: runtime events, Warning Events, and for a service new to
//! this controller a read of its workload's replicas. A service first seen with replicas
//! (a restarted controller, a wake in flight when the last one died) starts by waking,
//! which only waits for its endpoints; one at 0 starts parked. A config change reapplies
//! every service's policy layers.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use zenvoy_base::Backoff;
use zenvoy_core::config::Config;
use zenvoy_core::model::{Event, ServiceDef};

use super::api::bounded;
use super::backend::replicas;
use super::endpoints::Targets;
use super::events::{reference, Events};
use super::index::{Change, Index};
use super::port_store::PortStore;
use super::ports::Ports;

/// Scale reads in flight at once when a replica becomes leader.
const REDERIVE_CONCURRENCY: usize = 32;
/// The pauses of [`observe_later`]: 1 s before its first read, doubling up to 30 s.
const OBSERVE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const OBSERVE_BACKOFF_MAX: Duration = Duration::from_secs(30);

pub struct Discovery {
    pub client: Client,
    pub namespaces: Vec<String>,
    pub targets: Targets,
    pub runtime: mpsc::Sender<Event>,
    pub events: Events,
    pub config: watch::Receiver<Arc<Config>>,
    /// True while this replica leads: on becoming leader, every service's state is read
    /// again from its workload (a follower's runtime saw no stats and may have parked
    /// what the old leader kept awake).
    pub leader: watch::Receiver<bool>,
    /// Opened (true) once a new leader's runtime has been told what runs, closed when it
    /// stops leading: the gate for ADS and metrics streams.
    pub serving: watch::Sender<bool>,
    /// `inCluster`: the proxy ports, as read back from the API.
    pub ports: Option<Ports>,
    /// `inCluster`: where allocations and releases are stored.
    pub port_store: Option<PortStore>,
}

impl Discovery {
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let apis: Vec<Api<Service>> = if self.namespaces.is_empty() {
            vec![Api::all(self.client.clone())]
        } else {
            self.namespaces
                .iter()
                .map(|n| Api::namespaced(self.client.clone(), n))
                .collect()
        };
        let streams = apis.into_iter().enumerate().map(|(i, api)| {
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |e| (i, e))
                .boxed()
        });
        let mut merged = futures::stream::select_all(streams);
        let mut index = Index::new(self.targets.clone());
        if let Some(ports) = self.ports.take() {
            index = index.with_ports(ports);
        }
        tokio::pin!(shutdown);
        loop {
            let changes = tokio::select! {
                () = &mut shutdown => return,
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *self.leader.borrow_and_update() {
                        if !self.rederive(&index).await {
                            return;
                        }
                        // Still leading after the reads (they take a while).
                        self.serving.send_replace(*self.leader.borrow());
                    } else {
                        self.serving.send_replace(false);
                    }
                    continue;
                }
                changed = self.config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let config = self.config.borrow_and_update().clone();
                    index.reapply(&config)
                }
                ev = merged.next() => {
                    let Some((stream, ev)) = ev else { return };
                    let config = self.config.borrow().clone();
                    match ev {
                        Ok(watcher::Event::Init) => {
                            index.relist_started(stream);
                            Vec::new()
                        }
                        Ok(watcher::Event::InitApply(svc)) => index.relisted(svc, stream, &config),
                        Ok(watcher::Event::InitDone) => index.relist_done(stream),
                        Ok(watcher::Event::Apply(svc)) => index.apply(svc, stream, &config),
                        Ok(watcher::Event::Delete(svc)) => index.delete(&svc),
                        Err(e) => {
                            warn!(error = %e, "Service watch failed; retrying");
                            Vec::new()
                        }
                    }
                }
            };
            for change in changes {
                if !self.carry(change).await {
                    return; // runtime stopped
                }
            }
        }
    }

    /// Carry out one change of the index. False when the runtime is gone.
    async fn carry(&self, change: Change) -> bool {
        match change {
            Change::Runtime(event) => self.runtime.send(event).await.is_ok(),
            Change::Warn {
                namespace,
                name,
                reason,
                note,
            } => {
                self.events
                    .warning(reference("v1", "Service", &namespace, &name), reason, note);
                true
            }
            Change::Added(def) => self.added(def).await,
            Change::Port { service, port } => {
                if let Some(store) = &self.port_store {
                    store.record(&service, port);
                }
                true
            }
        }
    }

    /// A service new to this controller: added parked, then told whether its workload
    /// runs (a running one is woken, which waits for its endpoints). False when the
    /// runtime is gone.
    async fn added(&self, def: ServiceDef) -> bool {
        let key = def.name.clone();
        let Some(target) = super::endpoints::target(&self.targets, &key) else {
            return true; // removed meanwhile
        };
        let running = match bounded(replicas(&self.client, &target)).await {
            Ok(n) => Some(n > 0),
            Err(e) => {
                warn!(service = %key, workload = %target, error = %e, "cannot read the workload's scale; starting parked and reading it again");
                self.events.warning(
                    reference("v1", "Service", &target.namespace, &target.service),
                    "WorkloadUnreadable",
                    format!("zenvoy cannot read the scale of {target}: {e}"),
                );
                None
            }
        };
        info!(service = %key, workload = %target, ?running, "service added");
        if self
            .runtime
            .send(Event::Upsert(Box::new(def)))
            .await
            .is_err()
        {
            return false;
        }
        if let Some(running) = running {
            let observed = Event::Observed {
                service: key,
                running,
            };
            return self.runtime.send(observed).await.is_ok();
        }
        // Parked until known (spawned after the Upsert, so the runtime has the service):
        // a running workload found later is woken, then parked when idle, rather than
        // left running unwatched.
        tokio::spawn(observe_later(
            self.client.clone(),
            self.targets.clone(),
            key,
            self.runtime.clone(),
        ));
        true
    }

    /// Tell the runtime which services' workloads run and which are at zero, so what it
    /// publishes matches the workloads whatever it thought as a follower (it saw no
    /// stats): running ones are woken (and later parked), zero ones get the holder.
    async fn rederive(&self, index: &Index) -> bool {
        // Many reads at once: the gate stays closed until they are all done.
        let targets = index.services();
        let client = self.client.clone();
        let reads = targets.into_iter().map(move |(key, target)| {
            let client = client.clone();
            async move {
                let n = bounded(replicas(&client, &target)).await;
                (key, n)
            }
        });
        let mut results = futures::stream::iter(reads).buffer_unordered(REDERIVE_CONCURRENCY);
        while let Some((key, n)) = results.next().await {
            match n {
                Ok(n) => {
                    let observed = Event::Observed {
                        service: key,
                        running: n > 0,
                    };
                    if self.runtime.send(observed).await.is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    warn!(service = %key, error = %e, "cannot read the workload's scale; reading it again");
                    tokio::spawn(observe_later(
                        self.client.clone(),
                        self.targets.clone(),
                        key,
                        self.runtime.clone(),
                    ));
                }
            }
        }
        info!(
            services = index.len(),
            "leading: service states read from their workloads"
        );
        true
    }
}

/// Read a service's workload replicas until it works (backoff 1 s doubling to 30 s, for
/// at most ten minutes, while the service is still known), then tell the runtime.
async fn observe_later(
    client: Client,
    targets: Targets,
    service: String,
    runtime: mpsc::Sender<Event>,
) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(600);
    // The read that brought us here failed: each pass pauses before it reads.
    let mut backoff = Backoff::new(OBSERVE_BACKOFF_FIRST, OBSERVE_BACKOFF_MAX);
    while tokio::time::Instant::now() < give_up {
        tokio::time::sleep(backoff.failed()).await;
        let Some(target) = super::endpoints::target(&targets, &service) else {
            return; // removed meanwhile
        };
        if let Ok(n) = bounded(replicas(&client, &target)).await {
            let running = n > 0;
            info!(%service, running, "workload's scale read");
            let _ = runtime.send(Event::Observed { service, running }).await;
            return;
        }
    }
    warn!(%service, "gave up reading the workload's scale; it stays parked until a connection wakes it");
}
