//! The runtime: one task that hands every event to the planner (`zenvoy_core::planner`)
//! and carries out what it returns. It decides nothing: publications go to the xDS cache
//! (and each published assignment's version back to the planner), wakes and parks to the
//! backend on tasks of their own that report back as events, records to the metrics,
//! tracked services to the stats readers (`tracked`), notices to the backend.
//!
//! ```text
//!  events (mpsc) --+
//!  tick (100 ms) --+--> Planner --> Effects --> Cache.set/remove --version--> Planner
//!  leader gate ----+                        \-> backend.wake/park (spawned) --events-->
//!                                            \-> metrics, tracked, backend.notify
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info};
use zenvoy_core::config::Config;
use zenvoy_core::planner::{Effect, Planner, Record, Settings, Status};

use crate::backend::Backend;
use crate::telemetry::{Metrics, ServiceLabel};
use crate::tracked::Tracked;
use crate::xds::resources::{
    self, CLUSTER_TYPE, ENDPOINT_TYPE, HTTP_LISTENER, LISTENER_TYPE, ROUTE_TYPE,
};
use crate::xds::Cache;

pub use zenvoy_core::model::{Event, ServiceDef};

/// How often time-based transitions (idle, timeouts, park ACKs) are checked.
pub const TICK: Duration = Duration::from_millis(100);
/// How often what runs is compared with each service's state, with local processes
/// (cheap: a look at each child).
pub const RECONCILE_PROCESSES: Duration = Duration::from_secs(30);
/// ... and with Kubernetes workloads (a read of each workload's scale: 10,000 services
/// make 33 reads a second at this pace).
pub const RECONCILE_KUBERNETES: Duration = Duration::from_secs(300);
/// Bound of the event queue; senders (metrics streams) wait when it is full.
pub const EVENT_QUEUE: usize = 4096;
/// Status queries waiting at once (the admin API's `/status`); more get 503.
const STATUS_QUEUE: usize = 16;

/// A question for the runtime: every service's [`Status`], answered on the channel.
pub type StatusQuery = tokio::sync::oneshot::Sender<Vec<Status>>;
/// Upstream connect timeout Envoy uses for each service's cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Runtime<B> {
    planner: Planner,
    cache: Arc<Cache>,
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Event>,
    tracked: Arc<Tracked>,
    status_tx: mpsc::Sender<StatusQuery>,
    status_rx: Option<mpsc::Receiver<StatusQuery>>,
}

impl<B: Backend> Runtime<B> {
    /// Build the runtime and publish every service of `config` parked: Envoy starts with
    /// the holder as each service's endpoint, so the first connection is held, not
    /// refused. `leading`: may scale from the start (see [`Runtime::run`]'s gate).
    pub fn new(
        config: &Config,
        leading: bool,
        cache: Arc<Cache>,
        backend: Arc<B>,
        metrics: Arc<Metrics>,
        events: mpsc::Sender<Event>,
        tracked: Arc<Tracked>,
    ) -> Self {
        let settings = Settings {
            holder: config.holder.address,
            http: config.http.as_ref().map(|h| h.listen),
            leading,
            stats_expiry: config.stats_expiry(),
            warm_timeout: zenvoy_core::planner::DEFAULT_WARM_TIMEOUT,
            in_cluster_settle: config
                .in_cluster
                .as_ref()
                .map_or(Duration::ZERO, |c| c.settle),
        };
        let (status_tx, status_rx) = mpsc::channel(STATUS_QUEUE);
        let mut runtime = Runtime {
            planner: Planner::new(settings, config.services.len()),
            cache,
            backend,
            metrics,
            events,
            tracked,
            status_tx,
            status_rx: Some(status_rx),
        };
        for s in &config.services {
            let effects = runtime.planner.add(s.def());
            runtime.execute(effects);
        }
        let effects = runtime.planner.started();
        runtime.execute(effects);
        // Processes a previous controller left running: woken (the wake finds them ready)
        // and parked when idle, like any other.
        for service in runtime.backend.running_at_start() {
            let observed = Event::Observed {
                service,
                running: true,
            };
            let effects = runtime.planner.handle(observed, now(), &*runtime.cache);
            runtime.execute(effects);
        }
        runtime
    }

    /// Where to ask for every service's status while the runtime runs.
    pub fn status(&self) -> mpsc::Sender<StatusQuery> {
        self.status_tx.clone()
    }

    /// Run until `shutdown` resolves, then stop every backend process. `leading`, when
    /// given, says whether this controller may scale (Kubernetes: leads and has read what
    /// runs); without it, it always may.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut leading: Option<watch::Receiver<bool>>,
        reconcile_every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile =
            tokio::time::interval_at(Instant::now() + reconcile_every, reconcile_every);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        let mut queries = self.status_rx.take();
        loop {
            let effects = tokio::select! {
                Some(ev) = events.recv() => self.planner.handle(ev, now(), &*self.cache),
                Some(query) = next_query(&mut queries) => {
                    let _ = query.send(self.planner.status(now()));
                    continue;
                }
                _ = tick.tick() => self.planner.tick(now(), &*self.cache),
                _ = reconcile.tick() => self.planner.reconcile(),
                Some(leads) = changed(&mut leading) => {
                    self.planner.handle(Event::Leading(leads), now(), &*self.cache)
                }
                () = &mut shutdown => break,
            };
            self.execute(effects);
        }
        info!("runtime stopping; stopping backends");
        self.backend.shutdown().await;
    }

    /// Carry out the planner's effects, in order, and owe it what its contract says
    /// (`zenvoy_core::planner::effect`): each published assignment's version at once
    /// (`Planner::published`, below); a wake's, a park's failure, a check's and a steer's
    /// answers as events, from the tasks and the backend they are handed to.
    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::PublishCluster {
                    service,
                    protocol,
                    limits,
                } => {
                    let cluster = resources::cluster(&service, CONNECT_TIMEOUT, &limits, protocol);
                    self.cache
                        .set(CLUSTER_TYPE, &service, resources::any(cluster));
                }
                Effect::PublishEndpoints { service, endpoints } => {
                    let cla = resources::load_assignment(&service, &endpoints);
                    let version = self.cache.set(ENDPOINT_TYPE, &service, resources::any(cla));
                    // Owed at once: a park's second phase and a new front door wait on it.
                    self.planner.published(&service, &endpoints, version);
                }
                Effect::PublishListener {
                    service,
                    listen,
                    limits,
                } => {
                    let listener = resources::listener(&service, listen, &limits);
                    self.cache
                        .set(LISTENER_TYPE, &service, resources::any(listener));
                }
                Effect::RemoveListener { service } => self.cache.remove(LISTENER_TYPE, &service),
                Effect::PublishInClusterListener {
                    service,
                    listen,
                    protocol,
                    limits,
                    route_timeout,
                } => {
                    let listener = resources::in_cluster_listener(
                        &service,
                        listen,
                        protocol,
                        &limits,
                        route_timeout,
                    );
                    let name = resources::in_cluster_listener_name(&service, listen);
                    self.cache
                        .set(LISTENER_TYPE, &name, resources::any(listener));
                }
                Effect::RemoveInClusterListener { service, listen } => {
                    let name = resources::in_cluster_listener_name(&service, listen);
                    self.cache.remove(LISTENER_TYPE, &name);
                }
                Effect::Steer { service, steer } => self.backend.steer(&service, steer),
                Effect::RemoveService {
                    service,
                    in_cluster,
                } => {
                    for type_url in [LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE] {
                        self.cache.remove(type_url, &service);
                    }
                    if let Some(listen) = in_cluster {
                        let name = resources::in_cluster_listener_name(&service, listen);
                        self.cache.remove(LISTENER_TYPE, &name);
                    }
                }
                Effect::PublishRoutes(hosts) => {
                    let routes = resources::route_configuration(&hosts);
                    self.cache
                        .set(ROUTE_TYPE, HTTP_LISTENER, resources::any(routes));
                }
                Effect::PublishHttpListener(listen) => {
                    let listener = resources::http_listener(listen);
                    self.cache
                        .set(LISTENER_TYPE, HTTP_LISTENER, resources::any(listener));
                }
                Effect::Track { service, protocol } => self.tracked.insert(&service, protocol),
                Effect::Untrack { service } => self.tracked.remove(&service),
                Effect::Wake {
                    service,
                    wake,
                    timeout,
                    scale,
                } => self.wake(service, wake, timeout, scale),
                Effect::Park { service } => self.park(service),
                Effect::Check { service, wake } => self.check(service, wake),
                Effect::Record(record) => self.record(record),
                Effect::Notify(notice) => self.backend.notify(&notice),
            }
        }
    }

    fn wake(&self, service: String, wake: u64, timeout: Duration, scale: bool) {
        let waking = self.backend.wake(&service, timeout, scale);
        let events = self.events.clone();
        tokio::spawn(async move {
            let result: Result<Vec<SocketAddr>, String> = waking.await.map_err(|e| e.to_string());
            let done = Event::WakeDone {
                service,
                wake,
                result,
            };
            let _ = events.send(done).await;
        });
    }

    fn park(&self, service: String) {
        let parking = self.backend.park(&service);
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Err(e) = parking.await {
                let failed = Event::ParkFailed {
                    service,
                    error: e.to_string(),
                };
                let _ = events.send(failed).await;
            }
        });
    }

    /// Ask the backend whether `service` runs; an error is logged and the service is
    /// asked again at the next reconciliation.
    fn check(&self, service: String, wake: u64) {
        let checking = self.backend.running(&service);
        let events = self.events.clone();
        tokio::spawn(async move {
            match checking.await {
                Ok(running) => {
                    let checked = Event::Checked {
                        service,
                        wake,
                        running,
                    };
                    let _ = events.send(checked).await;
                }
                Err(e) => {
                    debug!(%service, error = %e, "cannot tell whether it runs; asking again later")
                }
            }
        });
    }

    fn record(&self, record: Record) {
        let m = &self.metrics;
        match record {
            Record::State { service, phase } => m.set_state(&service, phase),
            Record::WakeStarted { service } => m.wake_started(&service),
            Record::WakeFinished {
                service,
                outcome,
                took,
            } => m.wake_finished(&service, outcome, took),
            Record::Parked { service } => {
                m.parks.get_or_create(&ServiceLabel { service }).inc();
            }
            Record::ParkCancelled { service } => {
                m.parks_cancelled
                    .get_or_create(&ServiceLabel { service })
                    .inc();
            }
            Record::ScaleError { service } => {
                m.scale_errors
                    .get_or_create(&ServiceLabel { service })
                    .inc();
            }
            Record::IdleTimeout {
                service,
                idle_timeout,
            } => {
                m.service_idle_timeout
                    .get_or_create(&ServiceLabel { service })
                    .set(idle_timeout.as_secs_f64());
            }
            Record::Forget { service } => m.forget_service(&service),
            Record::Rejected { count } => {
                m.ingest_rejected.inc_by(count as u64);
            }
            Record::NodeExpired => {
                m.ingest_nodes_expired.inc();
            }
            Record::Drift { service } => {
                m.drift_repairs
                    .get_or_create(&ServiceLabel { service })
                    .inc();
            }
        }
    }
}

/// The time the planner is told: tokio's clock, so tests with paused time drive it.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The gate's next value; never resolves without a gate, or once its sender is gone.
async fn changed(gate: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    match gate {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => {
                *gate = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// The next status query; never, without a receiver.
async fn next_query(queries: &mut Option<mpsc::Receiver<StatusQuery>>) -> Option<StatusQuery> {
    match queries {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
