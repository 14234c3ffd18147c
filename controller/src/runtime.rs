//! The runtime: one task that owns every service's state machine. It turns events
//! (metrics pushes, backend results, ticks) into `activity` inputs, and carries out the
//! actions: backend calls (spawned, they report back as events) and xDS publications.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::activity::{self, Action, Input, State, Timing, WakeOutcome};
use crate::backend::Backend;
use crate::config::{Config, Policy, Protocol};
use crate::directory::Directory;
use crate::ingest::window::{Observation, Windows};
use crate::telemetry::{Metrics, OutcomeLabel, ServiceLabel, StateValue};
use crate::xds::resources::{
    self, Endpoints, HoldPolicy, VirtualHostSpec, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE,
    ROUTE_TYPE,
};
use crate::xds::Cache;

/// How often time-based transitions (idle, timeouts, park ACKs) are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// Bound of the event queue; senders (metrics streams) wait when it is full.
pub const EVENT_QUEUE: usize = 4096;
/// An HTTP route's timeout is the service's wakeTimeout plus this (Envoy's default
/// route timeout), so a request that arrives at zero is not cut off by the wake.
const ROUTE_TIMEOUT_AFTER_WAKE: Duration = Duration::from_secs(15);
/// Upstream connect timeout Envoy uses for each service's cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Event {
    Metrics {
        node: String,
        observations: Vec<(String, Observation)>,
    },
    NodeGone {
        node: String,
    },
    WakeDone {
        service: String,
        /// Which wake of the service this was: a late result of an earlier wake (one
        /// that outlived its timeout) is ignored.
        wake: u64,
        result: Result<Vec<SocketAddr>, String>,
    },
    /// The config file changed these services' timeouts and limits.
    Reload {
        policies: Vec<(String, crate::config::Policy)>,
    },
    /// A service appeared or changed (Kubernetes: an opted-in Service).
    Upsert(ServiceDef),
    /// A service is gone (its Service was deleted or lost the opt-in).
    Remove {
        service: String,
    },
    /// The backend's view of a service's ready endpoints changed (pods came or went
    /// while it is awake).
    Endpoints {
        service: String,
        endpoints: Vec<SocketAddr>,
    },
    /// The backend read the workload's replicas (a replica that just became leader):
    /// running wakes a service this runtime thought parked, zero parks one it thought
    /// awake, so what is published matches what runs.
    Observed {
        service: String,
        running: bool,
    },
}

/// A service as the runtime needs it: how Envoy fronts it and its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    pub name: String,
    pub protocol: Protocol,
    /// Envoy TCP listener, if any.
    pub listen: Option<SocketAddr>,
    /// HTTP virtual host domains (HTTP services).
    pub domains: Vec<String>,
    pub policy: Policy,
}

impl ServiceDef {
    pub fn from_config(s: &crate::config::ServiceConfig) -> Self {
        ServiceDef {
            name: s.name.clone(),
            protocol: s.protocol,
            listen: s.listen,
            domains: s.domains.clone(),
            policy: s.policy,
        }
    }
}

struct Service {
    def: ServiceDef,
    hold_policy: HoldPolicy,
    timing: Timing,
    state: State,
    endpoints: Vec<SocketAddr>,
    /// Version of the holder assignment published when the current park began.
    holder_version: u64,
    pending: f64,
    /// Number of the current wake (from the runtime's counter: unique across services
    /// and their removal and re-adding).
    wakes: u64,
    /// A service added at run time: its front door (listener, or virtual host) waits
    /// until the Envoys have its cluster warm (ACKed this assignment version). Envoy
    /// closes a connection, or answers 503, for a cluster still warming; held is the
    /// promise.
    front_after: Option<u64>,
}

fn hold_policy(p: &Policy) -> HoldPolicy {
    HoldPolicy {
        hold_timeout: p.hold_timeout,
        max_pending: p.max_pending,
    }
}

fn timing(p: &Policy) -> Timing {
    Timing {
        idle_timeout: p.idle_timeout,
        min_warm: p.min_warm,
        wake_timeout: p.wake_timeout,
        park_ack_timeout: p.park_ack_timeout,
    }
}

fn state_value(s: &State) -> StateValue {
    match s {
        State::Parked => StateValue::Parked,
        State::Waking { .. } => StateValue::Waking,
        State::Awake { .. } => StateValue::Awake,
        State::Parking { .. } => StateValue::Parking,
    }
}

pub struct Runtime<B> {
    services: HashMap<String, Service>,
    /// Service names, fixed at start: the tick walks them without re-collecting.
    names: Vec<String>,
    holder: SocketAddr,
    /// The shared HTTP listener, when HTTP services are routed by Host.
    http: Option<SocketAddr>,
    directory: Arc<Directory>,
    /// An HTTP service came, went or changed: the route configuration is rebuilt once
    /// after the event (not per service: at start that would be quadratic).
    routes_dirty: bool,
    /// Wakes started, all services.
    wake_counter: u64,
    windows: Windows,
    cache: Arc<Cache>,
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Event>,
}

impl<B: Backend> Runtime<B> {
    /// Build the runtime and publish every service parked: Envoy starts with the holder as
    /// each service's endpoint, so the first connection is held, not refused.
    pub fn new(
        config: &Config,
        cache: Arc<Cache>,
        backend: Arc<B>,
        metrics: Arc<Metrics>,
        events: mpsc::Sender<Event>,
        directory: Arc<Directory>,
    ) -> Self {
        let mut runtime = Runtime {
            services: HashMap::with_capacity(config.services.len()),
            names: Vec::with_capacity(config.services.len()),
            holder: config.holder.address,
            http: config.http.as_ref().map(|h| h.listen),
            directory,
            routes_dirty: false,
            wake_counter: 0,
            windows: Windows::default(),
            cache,
            backend,
            metrics,
            events,
        };
        for s in &config.services {
            runtime.upsert(ServiceDef::from_config(s), false);
        }
        if let Some(listen) = runtime.http {
            runtime.publish_routes();
            runtime.cache.set(
                LISTENER_TYPE,
                resources::HTTP_LISTENER,
                resources::any(resources::http_listener(listen)),
            );
        }
        runtime
    }

    /// Add a service (published parked: Envoy gets the holder as its endpoint, so the
    /// first connection is held, not refused; one whose workload runs follows as
    /// `Event::Observed`), or update one: a new listener, domains or policy are published.
    fn upsert(&mut self, def: ServiceDef, routes: bool) {
        let name = def.name.clone();
        if let Some(s) = self.services.get_mut(&name) {
            let old = std::mem::replace(&mut s.def, def.clone());
            // A listener still waiting for its cluster is published by the tick, as
            // the new address.
            let warming = s.front_after.is_some();
            if old.listen != def.listen && !warming {
                match def.listen {
                    Some(listen) => self.cache.set(
                        LISTENER_TYPE,
                        &name,
                        resources::any(resources::listener(&name, listen)),
                    ),
                    None => {
                        self.cache.remove(LISTENER_TYPE, &name);
                        0
                    }
                };
            }
            if old.policy != def.policy {
                self.reload(&name, &def.policy);
            }
            if old.protocol != def.protocol {
                self.directory.insert(&name, def.protocol);
            }
            if routes && (old.protocol != def.protocol || old.domains != def.domains) {
                self.routes_dirty = true;
            }
            return;
        }
        let hold = hold_policy(&def.policy);
        self.cache.set(
            CLUSTER_TYPE,
            &name,
            resources::any(resources::cluster(&name, CONNECT_TIMEOUT)),
        );
        let holder_version = self.cache.set(
            ENDPOINT_TYPE,
            &name,
            resources::any(resources::load_assignment(
                &name,
                &Endpoints::Holder(self.holder, hold),
            )),
        );
        // At start, Envoy's own initialisation warms clusters before listeners; so does
        // an Envoy that connects later. Only Envoys connected now can get the listener
        // before the cluster is warm.
        let front_after = (routes && self.cache.cluster_streams() > 0).then_some(holder_version);
        if let Some(listen) = def.listen {
            if front_after.is_none() {
                self.cache.set(
                    LISTENER_TYPE,
                    &name,
                    resources::any(resources::listener(&name, listen)),
                );
            }
        }
        self.metrics.set_state(&name, StateValue::Parked);
        self.directory.insert(&name, def.protocol);
        let http = def.protocol == Protocol::Http;
        self.services.insert(
            name.clone(),
            Service {
                timing: timing(&def.policy),
                def,
                hold_policy: hold,
                state: State::Parked,
                endpoints: Vec::new(),
                holder_version,
                pending: 0.0,
                wakes: 0,
                front_after,
            },
        );
        self.names.push(name.clone());
        if routes && http {
            self.routes_dirty = true;
        }
    }

    /// Forget a service: its Envoy resources go, a held connection for it is refused by
    /// the holder (unknown service) once its hold timeout ends.
    fn remove(&mut self, name: &str) {
        let Some(s) = self.services.remove(name) else {
            return;
        };
        self.names.retain(|n| n != name);
        self.directory.remove(name);
        self.cache.remove(LISTENER_TYPE, name);
        self.cache.remove(CLUSTER_TYPE, name);
        self.cache.remove(ENDPOINT_TYPE, name);
        if s.def.protocol == Protocol::Http {
            self.routes_dirty = true;
        }
        self.metrics.forget_service(name);
        info!(service = name, "service removed");
    }

    /// The HTTP route configuration: one virtual host per HTTP service, by name.
    fn publish_routes(&self) {
        if self.http.is_none() {
            return;
        }
        let mut hosts: Vec<VirtualHostSpec> = self
            .services
            .values()
            .filter(|s| s.def.protocol == Protocol::Http && s.front_after.is_none())
            .map(|s| VirtualHostSpec {
                service: s.def.name.clone(),
                domains: s.def.domains.clone(),
                timeout: s.def.policy.wake_timeout + ROUTE_TIMEOUT_AFTER_WAKE,
            })
            .collect();
        hosts.sort_by(|a, b| a.service.cmp(&b.service));
        self.cache.set(
            ROUTE_TYPE,
            resources::HTTP_LISTENER,
            resources::any(resources::route_configuration(&hosts)),
        );
    }

    /// Run until `shutdown` resolves, then stop every backend process.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                Some(ev) = events.recv() => {
                    self.on_event(ev, Instant::now());
                    if self.routes_dirty {
                        self.routes_dirty = false;
                        self.publish_routes();
                    }
                }
                _ = tick.tick() => self.on_tick(Instant::now()),
                () = &mut shutdown => break,
            }
        }
        info!("runtime stopping; stopping backends");
        self.backend.shutdown().await;
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Metrics { node, observations } => {
                let verdicts = self.windows.observe(&node, observations);
                for (service, pending) in verdicts.pending {
                    self.set_pending(&service, pending, now);
                }
                for (service, active) in verdicts.samples {
                    self.apply(&service, Input::Sample { active }, now);
                }
            }
            Event::NodeGone { node } => {
                for (service, pending) in self.windows.remove_node(&node) {
                    self.set_pending(&service, pending, now);
                }
            }
            Event::Reload { policies } => {
                for (service, policy) in policies {
                    if let Some(s) = self.services.get_mut(&service) {
                        s.def.policy = policy;
                    }
                    self.reload(&service, &policy);
                }
            }
            Event::Upsert(def) => self.upsert(def, true),
            Event::Observed { service, running } => {
                let input = if running {
                    Input::Demand
                } else {
                    Input::ScaledToZero
                };
                self.apply(&service, input, now);
            }
            Event::Remove { service } => self.remove(&service),
            Event::Endpoints { service, endpoints } => {
                let Some(s) = self.services.get_mut(&service) else {
                    return;
                };
                // The latest ready endpoints are kept in any state (a cancelled park
                // publishes them, not the ones from its wake); only an awake service
                // publishes them now. No ready endpoint at all keeps the last ones:
                // Envoy's connect fails either way, and the next wake or sample decides.
                if endpoints.is_empty() || endpoints == s.endpoints {
                    return;
                }
                s.endpoints = endpoints;
                if matches!(s.state, State::Awake { .. }) {
                    let cla = resources::load_assignment(
                        &service,
                        &Endpoints::Upstream(s.endpoints.clone()),
                    );
                    self.cache.set(ENDPOINT_TYPE, &service, resources::any(cla));
                    info!(service, endpoints = s.endpoints.len(), "endpoints changed");
                }
            }
            Event::WakeDone {
                service,
                wake,
                result,
            } => match result {
                _ if self.services.get(&service).is_none_or(|s| s.wakes != wake) => {
                    info!(%service, wake, "result of an earlier wake ignored");
                }
                Ok(endpoints) => {
                    if let Some(s) = self.services.get_mut(&service) {
                        s.endpoints = endpoints;
                    }
                    self.apply(&service, Input::Ready, now);
                }
                Err(error) => {
                    warn!(%service, %error, "wake failed");
                    self.metrics
                        .scale_errors
                        .get_or_create(&ServiceLabel {
                            service: service.clone(),
                        })
                        .inc();
                    self.apply(&service, Input::WakeFailed, now);
                }
            },
        }
    }

    /// New timeouts and limits for `service`: the state machine uses them from its next
    /// step; a holder endpoint published now carries the new hold policy to the holders.
    fn reload(&mut self, service: &str, policy: &Policy) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        s.timing = timing(policy);
        let hold = hold_policy(policy);
        if hold != s.hold_policy {
            s.hold_policy = hold;
            if matches!(
                s.state,
                State::Parked | State::Parking { .. } | State::Waking { .. }
            ) {
                let cla =
                    resources::load_assignment(service, &Endpoints::Holder(self.holder, hold));
                s.holder_version = self.cache.set(ENDPOINT_TYPE, service, resources::any(cla));
            }
        }
        info!(service, ?policy, "policy reloaded");
    }

    fn set_pending(&mut self, service: &str, pending: f64, now: Instant) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        s.pending = pending;
        if pending > 0.0 {
            self.apply(service, Input::Demand, now);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        // Taken out for the walk (apply needs &mut self) and put back: no allocation.
        let names = std::mem::take(&mut self.names);
        for name in &names {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            // Held connections are standing demand: after a failed wake, try again.
            if s.pending > 0.0 {
                self.apply(name, Input::Demand, now);
            }
            if let Some(s) = self.services.get_mut(name) {
                if let Some(version) = s.front_after {
                    if self.cache.warm_everywhere(name, version) {
                        s.front_after = None;
                        if let Some(listen) = s.def.listen {
                            self.cache.set(
                                LISTENER_TYPE,
                                name,
                                resources::any(resources::listener(name, listen)),
                            );
                        }
                        if s.def.protocol == Protocol::Http {
                            self.routes_dirty = true;
                        }
                    }
                }
            }
            if let Some(s) = self.services.get(name) {
                if matches!(s.state, State::Parking { acked_at: None, .. })
                    && self.cache.all_acked(name, s.holder_version)
                {
                    self.apply(name, Input::Acked, now);
                }
            }
            self.apply(name, Input::Tick, now);
        }
        self.names = names;
        if self.routes_dirty {
            self.routes_dirty = false;
            self.publish_routes();
        }
    }

    fn apply(&mut self, service: &str, input: Input, now: Instant) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let before = s.state;
        let (after, step) = activity::step(before, input, now.into_std(), &s.timing);
        s.state = after;
        if std::mem::discriminant(&before) != std::mem::discriminant(&after) {
            info!(service, from = ?state_value(&before), to = ?state_value(&after), ?input, "state");
            self.metrics.set_state(service, state_value(&after));
        }
        if let Some((outcome, took)) = step.wake {
            let outcome = match outcome {
                WakeOutcome::Ready => "ready",
                WakeOutcome::Failed => "failed",
                WakeOutcome::TimedOut => "timed_out",
            };
            info!(
                service,
                outcome,
                took_ms = took.as_secs_f64() * 1e3,
                "wake finished"
            );
            self.metrics
                .wake_duration
                .get_or_create(&OutcomeLabel { outcome })
                .observe(took.as_secs_f64());
        }
        // Built only for an action: most samples change nothing, and this runs per
        // service per push.
        let label = || ServiceLabel {
            service: service.to_string(),
        };
        for action in step.actions {
            match action {
                Action::ScaleUp => {
                    self.metrics.wakes.get_or_create(&label()).inc();
                    self.wake_counter += 1;
                    s.wakes = self.wake_counter;
                    let number = s.wakes;
                    let wake = self.backend.wake(service, s.timing.wake_timeout);
                    let events = self.events.clone();
                    let service = service.to_string();
                    tokio::spawn(async move {
                        let result = wake.await.map_err(|e| e.to_string());
                        let done = Event::WakeDone {
                            service,
                            wake: number,
                            result,
                        };
                        let _ = events.send(done).await;
                    });
                }
                Action::PublishUpstream => {
                    if matches!(before, State::Parking { .. }) {
                        self.metrics.parks_cancelled.get_or_create(&label()).inc();
                        info!(service, "park cancelled: a connection arrived");
                    }
                    let cla = resources::load_assignment(
                        service,
                        &Endpoints::Upstream(s.endpoints.clone()),
                    );
                    self.cache.set(ENDPOINT_TYPE, service, resources::any(cla));
                }
                Action::PublishHolder => {
                    let cla = resources::load_assignment(
                        service,
                        &Endpoints::Holder(self.holder, s.hold_policy),
                    );
                    s.holder_version = self.cache.set(ENDPOINT_TYPE, service, resources::any(cla));
                }
                Action::ScaleDown => {
                    if matches!(before, State::Parking { .. }) {
                        self.metrics.parks.get_or_create(&label()).inc();
                    }
                    let park = self.backend.park(service);
                    let service = service.to_string();
                    let metrics = self.metrics.clone();
                    tokio::spawn(async move {
                        if let Err(e) = park.await {
                            warn!(%service, error = %e, "park failed");
                            metrics
                                .scale_errors
                                .get_or_create(&ServiceLabel { service })
                                .inc();
                        }
                    });
                }
            }
        }
    }
}
