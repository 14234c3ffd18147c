//! Which Services zenvoy fronts: a watch of core/v1 Services, filtered by the opt-in
//! annotation, turned into the runtime's `Upsert`/`Remove` events. A service first
//! seen with replicas (a restarted controller, a wake in flight when the last one died)
//! starts by waking, which only waits for its endpoints; one at 0 starts parked.
//!
//! A Service whose annotations are wrong gets a Warning Event naming the annotation and
//! is left as it was (not added, or kept with its last good reading). A config change
//! reapplies every service's policy layers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::backend::replicas;
use super::endpoints::Targets;
use super::events::{reference, Events};
use super::service::{self, service_name, Discovered, Target};
use crate::config::Config;
use crate::runtime::{Event, ServiceDef};

/// Scale reads in flight at once when a replica becomes leader.
const REDERIVE_CONCURRENCY: usize = 32;

struct Known {
    svc: Service,
    def: ServiceDef,
    /// Which watch (namespace) it came from: a re-list ends with the stream's own set.
    stream: usize,
}

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
        let mut known: HashMap<String, Known> = HashMap::new();
        let mut listing: HashMap<usize, HashSet<String>> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *self.leader.borrow_and_update() {
                        if !self.rederive(&known).await {
                            return;
                        }
                        // Still leading after the reads (they take a while).
                        self.serving.send_replace(*self.leader.borrow());
                    } else {
                        self.serving.send_replace(false);
                    }
                }
                changed = self.config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let config = self.config.borrow_and_update().clone();
                    if !self.reapply(&mut known, &config).await {
                        return;
                    }
                }
                ev = merged.next() => {
                    let Some((stream, ev)) = ev else { return };
                    let ok = match ev {
                        Ok(watcher::Event::Init) => {
                            listing.insert(stream, HashSet::new());
                            true
                        }
                        Ok(watcher::Event::InitApply(svc)) => {
                            let key = service_name(&svc.name_any(), &svc.namespace().unwrap_or_default());
                            listing.entry(stream).or_default().insert(key);
                            self.applied(&mut known, svc, stream).await
                        }
                        Ok(watcher::Event::InitDone) => {
                            let seen = listing.remove(&stream).unwrap_or_default();
                            let gone: Vec<String> = known
                                .iter()
                                .filter(|(k, v)| v.stream == stream && !seen.contains(*k))
                                .map(|(k, _)| k.clone())
                                .collect();
                            let mut ok = true;
                            for k in gone {
                                ok &= self.remove(&mut known, &k).await;
                            }
                            ok
                        }
                        Ok(watcher::Event::Apply(svc)) => self.applied(&mut known, svc, stream).await,
                        Ok(watcher::Event::Delete(svc)) => {
                            let key = service_name(&svc.name_any(), &svc.namespace().unwrap_or_default());
                            self.remove(&mut known, &key).await
                        }
                        Err(e) => {
                            warn!(error = %e, "Service watch failed; retrying");
                            true
                        }
                    };
                    if !ok {
                        return; // runtime stopped
                    }
                }
            }
        }
    }

    fn set_target(&self, name: &str, d: &Discovered) {
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), d.target.clone());
    }

    /// False when the runtime is gone.
    async fn applied(
        &self,
        known: &mut HashMap<String, Known>,
        svc: Service,
        stream: usize,
    ) -> bool {
        let ns = svc.namespace().unwrap_or_default();
        let key = service_name(&svc.name_any(), &ns);
        if !service::opted_in(&svc) {
            return self.remove(known, &key).await;
        }
        let config = self.config.borrow().clone();
        let d = match service::read(&svc, &config) {
            Ok(d) => d,
            Err(e) => {
                warn!(service = %key, error = %e, "Service annotations rejected");
                self.events.warning(
                    reference("v1", "Service", &ns, &svc.name_any()),
                    "InvalidAnnotation",
                    format!("zenvoy ignores this change: {e}"),
                );
                return true;
            }
        };
        if let Some(listen) = d.def.listen.filter(|l| l.port() != 0) {
            if let Some((other, _)) = known
                .iter()
                .find(|(k, v)| **k != key && v.def.listen == Some(listen))
            {
                warn!(service = %key, %listen, %other, "listener address already taken");
                self.events.warning(
                    reference("v1", "Service", &ns, &svc.name_any()),
                    "ListenConflict",
                    format!("zenvoy cannot front this Service: {listen} is the listener of {other}; set zenvoy.io/listen"),
                );
                return true;
            }
        }
        let about = || reference("v1", "Service", &ns, &svc.name_any());
        let shared = self
            .targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(k, t)| {
                **k != key
                    && t.namespace == d.target.namespace
                    && t.kind == d.target.kind
                    && t.workload == d.target.workload
            })
            .map(|(k, _)| k.clone());
        if let Some(other) = shared {
            warn!(service = %key, workload = %d.target, %other, "workload already fronted by another Service");
            self.events.warning(
                about(),
                "WorkloadConflict",
                format!(
                    "zenvoy cannot front this Service: {} is already parked and woken for {other}",
                    d.target
                ),
            );
            return true;
        }
        if let Some(old) = super::endpoints::target(&self.targets, &key).filter(|t| *t != d.target)
        {
            if old.kind != d.target.kind || old.workload != d.target.workload {
                warn!(service = %key, from = %old, to = %d.target, "workload change refused");
                self.events.warning(
                    about(),
                    "WorkloadChange",
                    format!("zenvoy keeps scaling {old}: to move this Service to {}, remove {} and add it back", d.target, service::ENABLED),
                );
                return true;
            }
        }
        self.set_target(&key, &d);
        if let Some(k) = known.get_mut(&key) {
            k.svc = svc;
            if k.def == d.def {
                return true;
            }
            k.def = d.def.clone();
            return self.runtime.send(Event::Upsert(d.def)).await.is_ok();
        }
        let running = match super::backend::bounded(replicas(&self.client, &d.target)).await {
            Ok(n) => Some(n > 0),
            Err(e) => {
                warn!(service = %key, workload = %d.target, error = %e, "cannot read the workload's scale; starting parked and reading it again");
                self.events.warning(
                    reference("v1", "Service", &ns, &svc.name_any()),
                    "WorkloadUnreadable",
                    format!("zenvoy cannot read the scale of {}: {e}", d.target),
                );
                None
            }
        };
        info!(service = %key, workload = %d.target, ?running, "service discovered");
        let def = d.def.clone();
        known.insert(
            key.clone(),
            Known {
                svc,
                def: d.def,
                stream,
            },
        );
        // Added parked; a workload that runs (a restarted controller, a wake in flight
        // when the last one died) is then woken, which waits for its endpoints.
        if self.runtime.send(Event::Upsert(def)).await.is_err() {
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

    async fn remove(&self, known: &mut HashMap<String, Known>, key: &str) -> bool {
        if known.remove(key).is_none() {
            return true;
        }
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        info!(service = %key, "service no longer fronted");
        self.runtime
            .send(Event::Remove {
                service: key.to_string(),
            })
            .await
            .is_ok()
    }

    /// Tell the runtime which services' workloads run and which are at zero, so what it
    /// publishes matches the workloads whatever it thought as a follower (it saw no
    /// stats): running ones are woken (and later parked), zero ones get the holder.
    async fn rederive(&self, known: &HashMap<String, Known>) -> bool {
        // Many reads at once: the gate stays closed until they are all done.
        let targets: Vec<(String, Target)> = known
            .keys()
            .filter_map(|key| Some((key.clone(), super::endpoints::target(&self.targets, key)?)))
            .collect();
        let client = self.client.clone();
        let reads = targets.into_iter().map(move |(key, target)| {
            let client = client.clone();
            async move {
                let n = super::backend::bounded(replicas(&client, &target)).await;
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
            services = known.len(),
            "leading: service states read from their workloads"
        );
        true
    }

    /// A new config: every service's policy again.
    async fn reapply(&self, known: &mut HashMap<String, Known>, config: &Config) -> bool {
        for (key, k) in known.iter_mut() {
            match service::read(&k.svc, config) {
                Ok(d) if d.def != k.def => {
                    k.def = d.def.clone();
                    if self.runtime.send(Event::Upsert(d.def)).await.is_err() {
                        return false;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(service = %key, error = %e, "Service annotations rejected under the new config")
                }
            }
        }
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
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut pause = std::time::Duration::from_secs(1);
    while tokio::time::Instant::now() < give_up {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(30));
        let Some(target) = super::endpoints::target(&targets, &service) else {
            return; // removed meanwhile
        };
        if let Ok(n) = super::backend::bounded(replicas(&client, &target)).await {
            let running = n > 0;
            info!(%service, running, "workload's scale read");
            let _ = runtime.send(Event::Observed { service, running }).await;
            return;
        }
    }
    warn!(%service, "gave up reading the workload's scale; it stays parked until a connection wakes it");
}
