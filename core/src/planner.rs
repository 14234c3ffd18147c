//! The planner: every decision the controller makes, synchronously. Given an [`Event`],
//! the time and what the connected Envoys have acknowledged ([`Acks`]), it updates each
//! service's state and returns the [`Effect`]s to carry out. It never reads a clock, does
//! no I/O and spawns nothing, so each decision is a plain `#[test]` with made-up instants
//! (`planner/tests.rs`); the async runtime around it only receives events and executes
//! effects.
//!
//! ```text
//!  stats pushes, scrapes ---Metrics/NodeGone--+
//!  backend results -------WakeDone/ParkFailed-+--> Planner::handle(event, now, acks)
//!  config, discovery --Reload/Upsert/Remove---+         |   (activity::step per service,
//!  leader election -------------Leading-------+         |    stats windows, warm-up gates,
//!  the clock -----------------------------Planner::tick-+    wake numbers, leadership)
//!                                                       v
//!                 Effects: publish/remove Envoy resources, wake, park, record, notify
//!                                                       |
//!            runtime executes them; for each published assignment it reports the
//!            version back (Planner::published), which later ACKs are compared with
//! ```
//!
//! Decisions that live here:
//! - **Warm-up gate.** A service added while Envoys are connected gets its cluster and
//!   holder assignment at once, but its listener (or virtual host) only after every
//!   connected Envoy has ACKed that assignment: Envoy closes a connection, or answers 503,
//!   for a cluster still warming, and a held connection is the promise.
//! - **Wake numbers.** Each wake gets a number unique across services; a result carrying
//!   an older number (a wake that outlived its timeout) is ignored.
//! - **Two-phase park.** The holder assignment is published and its version remembered;
//!   phase two waits for every subscribed stream to ACK it ([`Acks::all_acked`]).
//! - **Reloads.** A new hold policy republishes the holder assignment of a service that
//!   is parked, parking or waking, so holders get it with the assignment.
//! - **Leadership.** A follower plans no scale-up (its wakes only watch for endpoints)
//!   and no scale-down; on becoming leader, wakes it only watched are asked for again,
//!   now to scale.
//! - **Endpoint changes.** The latest ready endpoints are kept in every state and
//!   republished while awake.
//! - **Groups.** Services that share a workload ([`ServiceDef::group`]: the ports of one
//!   Kubernetes Service) share their activity: a connection to one wakes the parked
//!   others, cancels their parks and keeps them awake. The workload goes to zero only
//!   when the last of them parks, and one found running while another is not parked is
//!   no drift.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::activity::{self, Action, Input, Phase, State, Timing, WakeOutcome};
use crate::model::{
    Endpoints, EnvoyLimits, Event, HoldPolicy, Policy, Protocol, Route, ServiceDef, VirtualHost,
};
use crate::stats::window::Windows;

/// `inCluster`: where a Service's own name leads in each phase: to the pods once it is
/// awake, to the proxies otherwise (a connection is then held, and wakes it).
pub fn route_for(phase: Phase) -> Route {
    match phase {
        Phase::Awake => Route::Direct,
        Phase::Parked | Phase::Waking | Phase::Parking => Route::Proxy,
    }
}

/// An HTTP route's timeout: the service's wake timeout plus [`ROUTE_TIMEOUT_AFTER_WAKE`],
/// so a request that arrives at zero is not cut off by the wake; none (zero) for gRPC,
/// whose calls may stream for hours (a held one is still bounded by the holder's
/// holdTimeout).
pub fn route_timeout(protocol: Protocol, wake_timeout: Duration) -> Duration {
    match protocol {
        Protocol::Http2 => Duration::ZERO,
        Protocol::Tcp | Protocol::Http => wake_timeout.saturating_add(ROUTE_TIMEOUT_AFTER_WAKE),
    }
}

/// An HTTP route's timeout is the service's wakeTimeout plus this (Envoy's default
/// route timeout), so a request that arrives at zero is not cut off by the wake.
pub const ROUTE_TIMEOUT_AFTER_WAKE: Duration = Duration::from_secs(15);

/// What the planner needs to know of the Envoys (and holders) connected over ADS. The
/// xDS cache answers it; tests answer it with a table.
pub trait Acks {
    /// Envoys connected now: streams that subscribe to Clusters (a holder asks for
    /// endpoints only).
    fn envoys(&self) -> usize;
    /// Every connected Envoy has ACKed `version` or later of `service`'s assignment: its
    /// cluster is warm there. An Envoy that has not asked for it yet is not warm.
    fn warm_everywhere(&self, service: &str, version: u64) -> bool;
    /// Every stream subscribed to `service`'s assignment has ACKed `version` or later.
    /// Streams not subscribed to it do not count.
    fn all_acked(&self, service: &str, version: u64) -> bool;
}

/// Something to carry out. Publications go to the xDS cache in order; wakes and parks go
/// to the backend; records to the metrics; notices to the operator (Kubernetes Events).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The service's EDS cluster (with the holder's PROXY v2 transport-socket match and
    /// its circuit breakers).
    PublishCluster {
        service: String,
        /// `Http2`: the cluster speaks HTTP/2 to its upstream (and to the holder).
        protocol: Protocol,
        limits: EnvoyLimits,
    },
    /// The service's assignment. Once published, tell the planner its version with
    /// [`Planner::published`].
    PublishEndpoints {
        service: String,
        endpoints: Endpoints,
    },
    /// The service's own TCP listener (with its idle timeout).
    PublishListener {
        service: String,
        listen: SocketAddr,
        limits: EnvoyLimits,
    },
    RemoveListener {
        service: String,
    },
    /// `inCluster`: the proxies' listener for the Service's own name, routed to the
    /// service's cluster like its front door.
    PublishInClusterListener {
        service: String,
        listen: SocketAddr,
        protocol: Protocol,
        limits: EnvoyLimits,
        /// HTTP and gRPC: the route's timeout (as the shared listener's, see
        /// [`route_timeout`]).
        route_timeout: Duration,
    },
    /// The service's `inCluster` listener on `listen` goes (the listener's name carries
    /// its port: a move to another port removes the old one first).
    RemoveInClusterListener {
        service: String,
        listen: SocketAddr,
    },
    /// `inCluster`: where the Service's own name is to lead. The backend writes it (the
    /// controller's EndpointSlice) and reports [`Event::Routed`] once it is in the API.
    Route {
        service: String,
        route: Route,
    },
    /// The service's listener, cluster and assignment, and its `inCluster` listener on
    /// `in_cluster` when it has one.
    RemoveService {
        service: String,
        in_cluster: Option<SocketAddr>,
    },
    /// The shared HTTP listener's route configuration, one virtual host per HTTP service
    /// whose cluster is warm, sorted by service.
    PublishRoutes(Vec<VirtualHost>),
    /// The shared HTTP listener itself.
    PublishHttpListener(SocketAddr),
    /// The stats readers should read this service's stats (with its protocol's rules).
    Track {
        service: String,
        protocol: Protocol,
    },
    /// ... and no longer.
    Untrack {
        service: String,
    },
    /// Ask the backend for ready endpoints within `timeout`; report as
    /// [`Event::WakeDone`] with `wake`. `scale`: bring replicas up; false (a follower)
    /// only waits for endpoints that someone else brings up.
    Wake {
        service: String,
        wake: u64,
        timeout: Duration,
        scale: bool,
    },
    /// Ask the backend to go to zero; a failure comes back as [`Event::ParkFailed`].
    Park {
        service: String,
    },
    /// Ask the backend whether the service runs; the answer comes back as
    /// [`Event::Checked`] with `wake`, the service's wake number when asked.
    Check {
        service: String,
        wake: u64,
    },
    Record(Record),
    Notify(Notice),
}

/// A metric to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The service is now in this phase.
    State {
        service: String,
        phase: Phase,
    },
    WakeStarted {
        service: String,
    },
    WakeFinished {
        service: String,
        outcome: WakeOutcome,
        took: Duration,
    },
    /// A park completed its two phases (scaled to zero).
    Parked {
        service: String,
    },
    /// A connection arrived during a park's first phase.
    ParkCancelled {
        service: String,
    },
    /// A backend call failed (wake or park).
    ScaleError {
        service: String,
    },
    /// Observations refused from one push: values that cannot be counts.
    Rejected {
        count: usize,
    },
    /// A node that sent nothing for the expiry was forgotten.
    NodeExpired,
    /// What runs did not match the service's state and was repaired.
    Drift {
        service: String,
    },
    /// The service's idle timeout (when it is added, and when its policy changes).
    IdleTimeout {
        service: String,
        idle_timeout: Duration,
    },
    /// The service is gone: drop its series.
    Forget {
        service: String,
    },
}

/// Something an operator should see about a service, besides the logs (Kubernetes: an
/// Event on the Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub service: String,
    pub warning: bool,
    /// CamelCase, as Kubernetes Event reasons are.
    pub reason: &'static str,
    pub note: String,
}

/// What the planner is built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Where Envoy sends held connections (the holder endpoint of every parked service).
    pub holder: SocketAddr,
    /// The shared HTTP listener, when HTTP services are routed by Host.
    pub http: Option<SocketAddr>,
    /// May this controller scale from the start (process backend: yes; Kubernetes: only
    /// once [`Event::Leading`] says so).
    pub leading: bool,
    /// A node (Envoy, holder, scrape target) that sends nothing for this long is
    /// forgotten: its open connections and pending counts stop counting.
    pub stats_expiry: Duration,
    /// A new service's front door waits at most this long for every Envoy to warm its
    /// cluster (an Envoy that never ACKs must not keep it closed).
    pub warm_timeout: Duration,
    /// `inCluster`: how long after the backend wrote a parking Service's route to the
    /// proxies its workload may go to zero (kube-proxy on every node follows in that
    /// time; it cannot be asked).
    pub in_cluster_settle: Duration,
}

/// [`Settings::stats_expiry`] when nothing else is said: three of the holder's
/// heartbeats, thirty of Envoy's 1 s stats flushes.
pub const DEFAULT_STATS_EXPIRY: Duration = Duration::from_secs(30);
/// [`Settings::warm_timeout`] when nothing else is said.
pub const DEFAULT_WARM_TIMEOUT: Duration = Duration::from_secs(15);
/// After a wake fails or times out, held connections ask for the next one no sooner
/// than this, doubled for each failure in a row up to [`WAKE_RETRY_MAX`]; a wake that
/// succeeds starts over. A service that cannot start (its command missing, a check that
/// cannot pass, an instance that exits at once) is then not restarted every tick for as
/// long as clients wait; the first retry is as soon as before (one tick).
pub const WAKE_RETRY_FIRST: Duration = Duration::from_millis(100);
pub const WAKE_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long after its `failures`-th failed wake in a row a service may be woken again.
pub fn wake_retry_delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => WAKE_RETRY_FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(WAKE_RETRY_MAX),
    }
}

/// Where a service added at run time stands with its front door (listener or virtual
/// host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Warming {
    /// Published, or needs no wait.
    Done,
    /// Since `since`, waits for its first holder assignment's version ...
    Publishing { since: Instant },
    /// ... then for every connected Envoy to ACK this version of its assignment.
    Until { version: u64, since: Instant },
}

#[derive(Debug)]
struct Service {
    def: ServiceDef,
    timing: Timing,
    hold: HoldPolicy,
    state: State,
    /// The latest ready endpoints (kept in every state).
    endpoints: Vec<SocketAddr>,
    /// Version of the holder assignment last published: what a park waits for every
    /// stream to ACK.
    holder_version: u64,
    /// Connections held for it, summed over holders.
    pending: f64,
    /// Number of the current wake (unique across services, and across a removal and
    /// re-adding).
    wake: u64,
    /// The current wake was asked for without scaling (this controller did not lead).
    wake_watch_only: bool,
    warming: Warming,
    /// When it entered its phase (None: in it since it was added).
    phase_since: Option<Instant>,
    /// How the last wake ended, and how long it took.
    last_wake: Option<(WakeOutcome, Duration)>,
    /// `inCluster`: where the Service's own name is to lead, and since when the backend
    /// has written that (None: not yet).
    route: Option<Route>,
    routed_at: Option<Instant>,
    /// Wakes that failed or timed out in a row, and when the next may start (see
    /// [`wake_retry_delay`]).
    failed_wakes: u32,
    retry_at: Option<Instant>,
}

/// One service at a glance (the admin API's `/status`, `zenvoy status`).
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub name: String,
    pub phase: Phase,
    /// How long it has been in its phase; None: since it was added.
    pub since: Option<Duration>,
    /// Connections held for it, summed over holders.
    pub pending: u64,
    /// How the last wake ended and how long it took; None: not woken yet.
    pub last_wake: Option<(WakeOutcome, Duration)>,
    /// Awake: how long since it was last active (it parks at its idle timeout).
    pub idle: Option<Duration>,
    pub idle_timeout: Duration,
}

fn timing(p: &Policy) -> Timing {
    Timing {
        idle_timeout: p.idle_timeout,
        min_warm: p.min_warm,
        wake_timeout: p.wake_timeout,
        park_ack_timeout: p.park_ack_timeout,
    }
}

/// Which services a tick looks at: those whose deadline has come (a wake's timeout, an
/// idle timeout, a park's ACK bound) and those that need a look at every tick
/// (connections held, a front door warming, a park waiting for ACKs and samples). The
/// rest cost the tick nothing: at 10,000 mostly idle services, a tick that walked them
/// all was 5 % of a core.
#[derive(Debug, Default)]
struct Schedule {
    deadlines: BTreeSet<(Instant, String)>,
    due: FxHashMap<String, Instant>,
    watched: BTreeSet<String>,
}

impl Schedule {
    fn set(&mut self, name: &str, due: Option<Instant>, watched: bool) {
        let old = self.due.get(name).copied();
        if old != due {
            if let Some(old) = old {
                self.deadlines.remove(&(old, name.to_string()));
                self.due.remove(name);
            }
            if let Some(due) = due {
                self.deadlines.insert((due, name.to_string()));
                self.due.insert(name.to_string(), due);
            }
        }
        if watched {
            if !self.watched.contains(name) {
                self.watched.insert(name.to_string());
            }
        } else {
            self.watched.remove(name);
        }
    }

    fn remove(&mut self, name: &str) {
        self.set(name, None, false);
    }

    /// The services to look at `now`, each once, by name.
    fn visit(&self, now: Instant) -> Vec<String> {
        let mut out: Vec<String> = self.watched.iter().cloned().collect();
        out.extend(
            self.deadlines
                .iter()
                .take_while(|(due, _)| *due <= now)
                .map(|(_, name)| name.clone()),
        );
        out.sort();
        out.dedup();
        out
    }
}

pub struct Planner {
    /// By name (FxHash: names come from the config or the API, and every stats sample
    /// looks one up).
    services: FxHashMap<String, Service>,
    schedule: Schedule,
    /// Service names in the order they came: the tick walks them without collecting.
    names: Vec<String>,
    settings: Settings,
    /// Wakes started, all services.
    wakes: u64,
    windows: Windows,
    /// An HTTP service came, went or changed: the route configuration is rebuilt once
    /// per event (not per service: at start that would be quadratic).
    routes_dirty: bool,
    /// Members of each [`ServiceDef::group`] (the ports of one workload), by group.
    groups: FxHashMap<String, Vec<String>>,
    /// The services a sample can move now (awake or parking, see
    /// [`activity::sample_moves`]), with their phase: a push's samples of the others
    /// cost no lookup in `services`.
    sampled: FxHashMap<String, Phase>,
    out: Vec<Effect>,
}

impl Planner {
    /// A planner with no service yet; the ones known at start follow with
    /// [`Planner::add`], then [`Planner::started`].
    pub fn new(settings: Settings, capacity: usize) -> Self {
        Planner {
            services: FxHashMap::with_capacity_and_hasher(capacity, Default::default()),
            schedule: Schedule::default(),
            names: Vec::with_capacity(capacity),
            settings,
            wakes: 0,
            windows: Windows::default(),
            routes_dirty: false,
            groups: FxHashMap::default(),
            sampled: FxHashMap::default(),
            out: Vec::new(),
        }
    }

    /// A service known at start, published parked: Envoy starts with the holder as its
    /// endpoint, so the first connection is held, not refused. (An Envoy connecting now
    /// warms clusters before listeners on its own, so nothing waits here.) One service's
    /// effects at a time: all of 10,000 at once would be a transient peak of memory that
    /// the allocator keeps.
    pub fn add(&mut self, def: ServiceDef) -> Vec<Effect> {
        self.upsert(def, None);
        self.take()
    }

    /// Every service known at start is added: the shared HTTP listener and its routes.
    pub fn started(&mut self) -> Vec<Effect> {
        if let Some(listen) = self.settings.http {
            self.publish_routes();
            self.out.push(Effect::PublishHttpListener(listen));
        }
        self.take()
    }

    /// React to one event.
    pub fn handle(&mut self, event: Event, now: Instant, acks: &dyn Acks) -> Vec<Effect> {
        match event {
            Event::Metrics { node, observations } => {
                let verdicts = self.windows.observe(&node, observations, now);
                if verdicts.rejected > 0 {
                    warn!(%node, rejected = verdicts.rejected, "stats that cannot be counts refused (negative, NaN or infinite)");
                    self.record(Record::Rejected {
                        count: verdicts.rejected,
                    });
                }
                for (service, pending) in verdicts.pending {
                    self.set_pending(&service, pending, now);
                }
                for (service, active) in verdicts.samples {
                    // Most samples are of parked services: no lookup of those.
                    match self.sampled.get(&service) {
                        Some(&phase) if activity::sample_moves(phase, active) => {}
                        _ => continue,
                    }
                    // Only a park waits on samples to settle.
                    if let Some(State::Parking { .. }) =
                        self.apply(&service, Input::Sample { active }, now)
                    {
                        self.settle(&service, now);
                    }
                }
            }
            Event::NodeGone { node } => {
                for (service, pending) in self.windows.remove_node(&node) {
                    self.set_pending(&service, pending, now);
                }
            }
            Event::Reload { policies } => {
                for (service, policy) in policies {
                    self.set_policy(&service, policy);
                }
            }
            Event::Upsert(def) => self.upsert(*def, Some((acks, now))),
            Event::Remove { service } => self.remove(&service),
            Event::Observed { service, running } => {
                let input = if running {
                    Input::Demand
                } else {
                    Input::ScaledToZero
                };
                self.apply(&service, input, now);
            }
            Event::Endpoints { service, endpoints } => self.endpoints(&service, endpoints),
            Event::WakeDone {
                service,
                wake,
                result,
            } => self.wake_done(&service, wake, result, now),
            Event::ParkFailed { service, error } => {
                warn!(%service, %error, "park failed");
                self.record(Record::ScaleError { service });
            }
            Event::Leading(leading) => self.leading(leading),
            Event::Checked {
                service,
                wake,
                running,
            } => self.checked(&service, wake, running, now),
            Event::Routed { service, route } => {
                // Only the route still wanted counts, from the first report of it.
                if let Some(s) = self.services.get_mut(&service) {
                    if s.route == Some(route) && s.routed_at.is_none() {
                        s.routed_at = Some(now);
                    }
                }
            }
        }
        self.flush_routes();
        self.take()
    }

    /// Time passed: timeouts, standing demand, warm-up gates and park ACKs are checked.
    pub fn tick(&mut self, now: Instant, acks: &dyn Acks) -> Vec<Effect> {
        let (silent, pending) = self.windows.expire(now, self.settings.stats_expiry);
        for node in silent {
            warn!(%node, expiry = ?self.settings.stats_expiry, "no stats from this node for the expiry; its numbers no longer count");
            self.record(Record::NodeExpired);
        }
        for (service, pending) in pending {
            self.set_pending(&service, pending, now);
        }
        for name in &self.schedule.visit(now) {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            // Held connections are standing demand: after a failed wake, try again.
            if s.pending > 0.0 {
                self.apply(name, Input::Demand, now);
            }
            self.warm(name, now, acks);
            if let Some(s) = self.services.get(name) {
                if matches!(s.state, State::Parking { acked_at: None, .. })
                    && acks.all_acked(name, s.holder_version)
                {
                    self.apply(name, Input::Acked, now);
                }
            }
            // A node forgotten since the last sample can settle a park too.
            self.settle(name, now);
            // A park's time bound ends it only once the Service's own name leads to the
            // proxies (`inCluster`): going to zero earlier would refuse its clients.
            let parking = self
                .services
                .get(name)
                .is_some_and(|s| matches!(s.state, State::Parking { .. }));
            if !parking || self.may_scale_down(name, now) {
                self.apply(name, Input::Tick, now);
            }
            self.refresh(name);
        }
        self.flush_routes();
        self.take()
    }

    /// The runtime published `endpoints` for `service` (as an [`Effect::PublishEndpoints`]
    /// said) and the cache gave it `version`: ACKs are compared with it.
    pub fn published(&mut self, service: &str, endpoints: &Endpoints, version: u64) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        if let Endpoints::Holder(..) = endpoints {
            s.holder_version = version;
            if let Warming::Publishing { since } = s.warming {
                s.warming = Warming::Until { version, since };
            }
        }
    }

    /// The phase each service is in, by name (for status pages and tests).
    pub fn phases(&self) -> impl Iterator<Item = (&str, Phase)> {
        self.names.iter().filter_map(|n| {
            let s = self.services.get(n)?;
            Some((n.as_str(), s.state.phase()))
        })
    }

    /// Whether `service`'s workload may go to zero now: always, unless it keeps its name
    /// (`inCluster`), in which case its route to the proxies must have been written for
    /// the settle time.
    fn may_scale_down(&self, service: &str, now: Instant) -> bool {
        self.services.get(service).is_none_or(|s| {
            s.def.in_cluster.is_none()
                || s.routed_at.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.settings.in_cluster_settle
                })
        })
    }

    /// Put `name` where the tick will look for it (see [`Schedule`]), from what it is now.
    /// Called wherever its state, pending count, warming or timing changes.
    fn refresh(&mut self, name: &str) {
        match self.services.get(name) {
            Some(s) => {
                let watched = s.pending > 0.0
                    || s.warming != Warming::Done
                    || matches!(s.state, State::Parking { .. });
                self.schedule
                    .set(name, activity::due(s.state, &s.timing), watched);
            }
            None => self.schedule.remove(name),
        }
    }

    /// Every service at `now`, in the order they came.
    pub fn status(&self, now: Instant) -> Vec<Status> {
        self.names
            .iter()
            .filter_map(|n| {
                let s = self.services.get(n)?;
                let idle = match s.state {
                    State::Awake { last_active, .. } => {
                        Some(now.saturating_duration_since(last_active))
                    }
                    _ => None,
                };
                Some(Status {
                    name: n.clone(),
                    phase: s.state.phase(),
                    since: s.phase_since.map(|t| now.saturating_duration_since(t)),
                    // Sums of non-negative counts; rounding keeps a float sum's dust out.
                    pending: s.pending.round().clamp(0.0, u64::MAX as f64) as u64,
                    last_wake: s.last_wake,
                    idle,
                    idle_timeout: s.def.policy.idle_timeout,
                })
            })
            .collect()
    }

    fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    fn record(&mut self, r: Record) {
        self.out.push(Effect::Record(r));
    }

    /// Add a service (published parked; one whose workload runs follows as
    /// [`Event::Observed`]), or update one: a new listener, domains or policy are
    /// published. `acks` is given for a service added at run time (not at start): its
    /// front door waits for the connected Envoys to warm its cluster.
    fn upsert(&mut self, def: ServiceDef, acks: Option<(&dyn Acks, Instant)>) {
        let name = def.name.clone();
        if let Some(s) = self.services.get_mut(&name) {
            let old = std::mem::replace(&mut s.def, def.clone());
            if old.group != def.group {
                self.leave_group(&name, old.group.as_deref());
                self.join_group(&name, def.group.as_deref());
            }
            let Some(s) = self.services.get_mut(&name) else {
                return;
            };
            // A front door still waiting for its cluster is published by the tick, with
            // the new address.
            if old.listen != def.listen && s.warming == Warming::Done {
                self.out.push(match def.listen {
                    Some(listen) => Effect::PublishListener {
                        service: name.clone(),
                        listen,
                        limits: def.policy.envoy(),
                    },
                    None => Effect::RemoveListener {
                        service: name.clone(),
                    },
                });
            }
            if old.protocol != def.protocol {
                self.out.push(Effect::Track {
                    service: name.clone(),
                    protocol: def.protocol,
                });
                self.out.push(Effect::PublishCluster {
                    service: name.clone(),
                    protocol: def.protocol,
                    limits: def.policy.envoy(),
                });
            }
            if old.protocol != def.protocol || old.domains != def.domains {
                self.routes_dirty = true;
            }
            if (old.in_cluster != def.in_cluster || old.protocol != def.protocol)
                && s.warming == Warming::Done
            {
                if let Some(listen) = old.in_cluster.filter(|l| def.in_cluster != Some(*l)) {
                    self.out.push(Effect::RemoveInClusterListener {
                        service: name.clone(),
                        listen,
                    });
                }
                if let Some(listen) = def.in_cluster {
                    self.out.push(Effect::PublishInClusterListener {
                        service: name.clone(),
                        listen,
                        protocol: def.protocol,
                        limits: def.policy.envoy(),
                        route_timeout: route_timeout(def.protocol, def.policy.wake_timeout),
                    });
                }
            }
            if old.in_cluster.is_some() != def.in_cluster.is_some() {
                // Turned on: the route its phase calls for; off: the slice goes.
                let route = match def.in_cluster {
                    Some(_) => route_for(s.state.phase()),
                    None => Route::Gone,
                };
                s.route = def.in_cluster.map(|_| route);
                s.routed_at = None;
                self.out.push(Effect::Route {
                    service: name.clone(),
                    route,
                });
            }
            if old.policy != def.policy || old.dial != def.dial {
                self.set_policy(&name, def.policy);
            }
            return;
        }
        let hold = def.policy.hold(def.dial);
        let warming = match acks {
            Some((acks, now)) if acks.envoys() > 0 => Warming::Publishing { since: now },
            _ => Warming::Done,
        };
        self.out.push(Effect::PublishCluster {
            service: name.clone(),
            protocol: def.protocol,
            limits: def.policy.envoy(),
        });
        self.out.push(Effect::PublishEndpoints {
            service: name.clone(),
            endpoints: Endpoints::Holder(self.settings.holder, hold),
        });
        if let (Some(listen), Warming::Done) = (def.listen, warming) {
            self.out.push(Effect::PublishListener {
                service: name.clone(),
                listen,
                limits: def.policy.envoy(),
            });
        }
        if let (Some(listen), Warming::Done) = (def.in_cluster, warming) {
            self.out.push(Effect::PublishInClusterListener {
                service: name.clone(),
                listen,
                protocol: def.protocol,
                limits: def.policy.envoy(),
                route_timeout: route_timeout(def.protocol, def.policy.wake_timeout),
            });
        }
        let route = def.in_cluster.map(|_| Route::Proxy);
        if let Some(route) = route {
            self.out.push(Effect::Route {
                service: name.clone(),
                route,
            });
        }
        self.record(Record::State {
            service: name.clone(),
            phase: Phase::Parked,
        });
        self.record(Record::IdleTimeout {
            service: name.clone(),
            idle_timeout: def.policy.idle_timeout,
        });
        self.out.push(Effect::Track {
            service: name.clone(),
            protocol: def.protocol,
        });
        if acks.is_some() && def.protocol.routed() {
            self.routes_dirty = true;
        }
        let def_group = def.group.clone();
        self.services.insert(
            name.clone(),
            Service {
                timing: timing(&def.policy),
                def,
                hold,
                state: State::Parked,
                endpoints: Vec::new(),
                holder_version: 0,
                pending: 0.0,
                wake: 0,
                wake_watch_only: false,
                warming,
                phase_since: None,
                last_wake: None,
                route,
                routed_at: None,
                failed_wakes: 0,
                retry_at: None,
            },
        );
        self.join_group(&name, def_group.as_deref());
        self.refresh(&name);
        self.names.push(name);
    }

    fn join_group(&mut self, name: &str, group: Option<&str>) {
        if let Some(g) = group {
            let members = self.groups.entry(g.to_string()).or_default();
            if !members.iter().any(|m| m == name) {
                members.push(name.to_string());
            }
        }
    }

    fn leave_group(&mut self, name: &str, group: Option<&str>) {
        if let Some(g) = group {
            if let Some(members) = self.groups.get_mut(g) {
                members.retain(|m| m != name);
                if members.is_empty() {
                    self.groups.remove(g);
                }
            }
        }
    }

    /// The other services of `name`'s group.
    fn siblings(&self, name: &str) -> Vec<String> {
        self.services
            .get(name)
            .and_then(|s| s.def.group.as_ref())
            .and_then(|g| self.groups.get(g))
            .map(|m| m.iter().filter(|m| *m != name).cloned().collect())
            .unwrap_or_default()
    }

    /// A sibling of `name` that is not parked (its workload must keep running for it).
    fn unparked_sibling(&self, name: &str) -> Option<String> {
        self.siblings(name).into_iter().find(|m| {
            self.services
                .get(m)
                .is_some_and(|s| s.state.phase() != Phase::Parked)
        })
    }

    /// Forget a service: its Envoy resources go; a connection held for it is refused by
    /// the holder (unknown service) once its hold timeout ends.
    fn remove(&mut self, name: &str) {
        let Some(s) = self.services.remove(name) else {
            return;
        };
        self.schedule.remove(name);
        self.names.retain(|n| n != name);
        self.leave_group(name, s.def.group.as_deref());
        self.sampled.remove(name);
        if s.def.in_cluster.is_some() {
            self.out.push(Effect::Route {
                service: name.to_string(),
                route: Route::Gone,
            });
        }
        self.out.push(Effect::Untrack {
            service: name.to_string(),
        });
        self.out.push(Effect::RemoveService {
            service: name.to_string(),
            in_cluster: s.def.in_cluster,
        });
        if s.def.protocol.routed() {
            self.routes_dirty = true;
        }
        self.record(Record::Forget {
            service: name.to_string(),
        });
        info!(service = name, "service removed");
    }

    /// New timeouts and limits for `service`: the state machine uses them from its next
    /// step; a holder assignment published now carries the new hold policy to the
    /// holders; an HTTP route's timeout follows the wake timeout.
    fn set_policy(&mut self, service: &str, policy: Policy) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let old = std::mem::replace(&mut s.def.policy, policy);
        s.timing = timing(&policy);
        self.refresh(service);
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let hold = policy.hold(s.def.dial);
        if hold != s.hold {
            s.hold = hold;
            if matches!(
                s.state,
                State::Parked | State::Parking { .. } | State::Waking { .. }
            ) {
                self.out.push(Effect::PublishEndpoints {
                    service: service.to_string(),
                    endpoints: Endpoints::Holder(self.settings.holder, hold),
                });
            }
        }
        if s.def.protocol.routed() && old.wake_timeout != policy.wake_timeout {
            self.routes_dirty = true;
        }
        // The in-cluster listener of an HTTP service carries its own route (timeout).
        let route_moved = s.def.protocol.routed() && old.wake_timeout != policy.wake_timeout;
        if old.envoy() != policy.envoy() {
            self.out.push(Effect::PublishCluster {
                service: service.to_string(),
                protocol: s.def.protocol,
                limits: policy.envoy(),
            });
            if let (Some(listen), Warming::Done) = (s.def.listen, s.warming) {
                self.out.push(Effect::PublishListener {
                    service: service.to_string(),
                    listen,
                    limits: policy.envoy(),
                });
            }
        }
        if old.envoy() != policy.envoy() || route_moved {
            if let (Some(listen), Warming::Done) = (s.def.in_cluster, s.warming) {
                self.out.push(Effect::PublishInClusterListener {
                    service: service.to_string(),
                    listen,
                    protocol: s.def.protocol,
                    limits: policy.envoy(),
                    route_timeout: route_timeout(s.def.protocol, policy.wake_timeout),
                });
            }
        }
        if old.idle_timeout != policy.idle_timeout {
            self.out.push(Effect::Record(Record::IdleTimeout {
                service: service.to_string(),
                idle_timeout: policy.idle_timeout,
            }));
        }
        info!(service, ?policy, "policy reloaded");
    }

    fn endpoints(&mut self, service: &str, endpoints: Vec<SocketAddr>) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        // The latest ready endpoints are kept in any state (a cancelled park publishes
        // them, not the ones from its wake); only an awake service publishes them now.
        // No ready endpoint at all keeps the last ones: Envoy's connect fails either
        // way, and the next wake or sample decides.
        if endpoints.is_empty() || endpoints == s.endpoints {
            return;
        }
        s.endpoints = endpoints;
        if matches!(s.state, State::Awake { .. }) {
            info!(service, endpoints = s.endpoints.len(), "endpoints changed");
            self.out.push(Effect::PublishEndpoints {
                service: service.to_string(),
                endpoints: Endpoints::Upstream(s.endpoints.clone()),
            });
        }
    }

    fn wake_done(
        &mut self,
        service: &str,
        wake: u64,
        result: Result<Vec<SocketAddr>, String>,
        now: Instant,
    ) {
        let Some(s) = self.services.get_mut(service).filter(|s| s.wake == wake) else {
            info!(service, wake, "result of an earlier wake ignored");
            return;
        };
        match result {
            Ok(endpoints) => {
                s.endpoints = endpoints;
                self.apply(service, Input::Ready, now);
            }
            Err(error) => {
                warn!(service, %error, "wake failed");
                self.record(Record::ScaleError {
                    service: service.to_string(),
                });
                self.apply(service, Input::WakeFailed, now);
            }
        }
    }

    fn leading(&mut self, leading: bool) {
        if leading == self.settings.leading {
            return;
        }
        self.settings.leading = leading;
        info!(leading, "leadership changed");
        if !leading {
            return;
        }
        // Wakes asked for while following only watched for endpoints: ask again, to
        // scale. The watch's result, when it comes, carries the old number.
        for name in &self.names {
            let Some(s) = self.services.get_mut(name) else {
                continue;
            };
            if matches!(s.state, State::Waking { .. }) && s.wake_watch_only {
                self.wakes += 1;
                s.wake = self.wakes;
                s.wake_watch_only = false;
                self.out.push(Effect::Wake {
                    service: name.clone(),
                    wake: s.wake,
                    timeout: s.timing.wake_timeout,
                    scale: true,
                });
            }
        }
    }

    /// A service added at run time opens its front door once every connected Envoy has
    /// its cluster warm, or after the warm-up bound (an Envoy that never ACKs must not
    /// keep it closed; that Envoy may refuse the service's first connections).
    fn warm(&mut self, name: &str, now: Instant, acks: &dyn Acks) {
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        let (warm, since) = match s.warming {
            Warming::Done => return,
            Warming::Publishing { since } => (false, since),
            Warming::Until { version, since } => (acks.warm_everywhere(name, version), since),
        };
        let late = now.saturating_duration_since(since) >= self.settings.warm_timeout;
        if !warm && !late {
            return;
        }
        s.warming = Warming::Done;
        self.refresh(name);
        let Some(s) = self.services.get_mut(name) else {
            return;
        };
        if late && !warm {
            warn!(service = name, bound = ?self.settings.warm_timeout, "not every Envoy ACKed the new service's cluster in time; opening its front door anyway");
            self.out.push(Effect::Notify(Notice {
                service: name.to_string(),
                warning: true,
                reason: "ClusterNotWarm",
                note: format!(
                    "not every connected Envoy ACKed this service's cluster within {:?}; its listener is published anyway, and an Envoy that has not may refuse its first connections",
                    self.settings.warm_timeout
                ),
            }));
        }
        if let Some(listen) = s.def.listen {
            self.out.push(Effect::PublishListener {
                service: name.to_string(),
                listen,
                limits: s.def.policy.envoy(),
            });
        }
        if let Some(listen) = s.def.in_cluster {
            self.out.push(Effect::PublishInClusterListener {
                service: name.to_string(),
                listen,
                protocol: s.def.protocol,
                limits: s.def.policy.envoy(),
                route_timeout: route_timeout(s.def.protocol, s.def.policy.wake_timeout),
            });
        }
        if s.def.protocol.routed() {
            self.routes_dirty = true;
        }
    }

    /// A parking service whose holder every Envoy has ACKed: once every Envoy's sample
    /// taken after that ACK is idle, it may scale down.
    fn settle(&mut self, service: &str, now: Instant) {
        let Some(s) = self.services.get(service) else {
            return;
        };
        if let State::Parking {
            acked_at: Some(acked),
            ..
        } = s.state
        {
            if self.windows.settled(service, acked) && self.may_scale_down(service, now) {
                self.apply(service, Input::Settled, now);
            }
        }
    }

    /// Ask what runs, for every service whose state says it is settled (parked with
    /// nothing held, or awake): the answers ([`Event::Checked`]) repair drift. A follower
    /// asks nothing (the leader repairs).
    pub fn reconcile(&mut self) -> Vec<Effect> {
        if !self.settings.leading {
            return Vec::new();
        }
        for name in &self.names {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            let settled = match s.state {
                State::Parked => s.pending == 0.0,
                State::Awake { .. } => true,
                State::Waking { .. } | State::Parking { .. } => false,
            };
            if settled {
                self.out.push(Effect::Check {
                    service: name.clone(),
                    wake: s.wake,
                });
            }
        }
        self.take()
    }

    /// What the backend found running, asked when the service's wake number was `wake`:
    /// a parked service found running is scaled down again (a park that failed, or
    /// someone else's scale-up); an awake one found stopped gets the holder again.
    fn checked(&mut self, service: &str, wake: u64, running: bool, now: Instant) {
        let Some(s) = self.services.get(service) else {
            return;
        };
        // A wake started since the question was asked: the answer may be its doing.
        if s.wake != wake {
            return;
        }
        let note = match (s.state, running) {
            // A sibling not parked keeps the workload running: that is no drift.
            (State::Parked, true)
                if s.pending == 0.0
                    && self.settings.leading
                    && self.unparked_sibling(service).is_none() =>
            {
                self.out.push(Effect::Park {
                    service: service.to_string(),
                });
                "found running while parked (a park that failed, or a scale-up by someone else): scaling it to zero again"
            }
            (State::Awake { .. }, false) => {
                self.apply(service, Input::ScaledToZero, now);
                "found stopped while awake: the holder is its endpoint again, and the next connection wakes it"
            }
            _ => return,
        };
        warn!(service, note, "drift repaired");
        self.record(Record::Drift {
            service: service.to_string(),
        });
        self.out.push(Effect::Notify(Notice {
            service: service.to_string(),
            warning: true,
            reason: "Drift",
            note: note.to_string(),
        }));
    }

    fn set_pending(&mut self, service: &str, pending: f64, now: Instant) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        s.pending = pending;
        debug!(service, pending, "pending");
        self.refresh(service);
        if pending > 0.0 {
            self.apply(service, Input::Demand, now);
        }
    }

    fn publish_routes(&mut self) {
        if self.settings.http.is_none() {
            return;
        }
        let mut hosts: Vec<VirtualHost> = self
            .services
            .values()
            .filter(|s| s.def.protocol.routed() && s.warming == Warming::Done)
            .map(|s| VirtualHost {
                service: s.def.name.clone(),
                domains: s.def.domains.clone(),
                timeout: route_timeout(s.def.protocol, s.def.policy.wake_timeout),
            })
            .collect();
        hosts.sort_by(|a, b| a.service.cmp(&b.service));
        // A domain on two virtual hosts makes Envoy reject the whole route configuration
        // (and every later change to it). Config validation and Kubernetes discovery
        // refuse such services already; this keeps it true whatever reaches here: the
        // first service (by name) keeps the domain.
        let mut seen = std::collections::HashSet::new();
        for h in &mut hosts {
            h.domains.retain(|d| {
                let first = seen.insert(d.clone());
                if !first {
                    warn!(service = %h.service, domain = %d, "domain already routed to another service; left out");
                }
                first
            });
        }
        hosts.retain(|h| !h.domains.is_empty());
        self.out.push(Effect::PublishRoutes(hosts));
    }

    fn flush_routes(&mut self) {
        if std::mem::take(&mut self.routes_dirty) {
            self.publish_routes();
        }
    }

    /// One step of `service`'s state machine, and of its siblings' for activity: the
    /// ports of one workload live and sleep together. A connection to any of them is
    /// activity for all (it wakes the parked ones, cancels their parks, keeps them
    /// awake), so they go idle at the same time, and the workload goes to zero only once
    /// every one is parked (see `step_one`).
    /// Returns `service`'s state after the step (None: an unknown service).
    fn apply(&mut self, service: &str, input: Input, now: Instant) -> Option<State> {
        let after = self.step_one(service, input, now);
        if matches!(input, Input::Demand | Input::Sample { active: true }) {
            for sibling in self.siblings(service) {
                self.step_one(&sibling, input, now);
            }
        }
        after
    }

    /// One step of `service`'s state machine, and the effects of its actions; the state
    /// after it.
    fn step_one(&mut self, service: &str, input: Input, now: Instant) -> Option<State> {
        let s = self.services.get_mut(service)?;
        let before = s.state;
        // Demand does not start a wake before the retry delay after a failed one.
        if matches!((input, before), (Input::Demand, State::Parked))
            && s.retry_at.is_some_and(|t| now < t)
        {
            return Some(before);
        }
        let (after, step) = activity::step(before, input, now, &s.timing);
        // Nothing moved (most samples: a parked service's, or an idle one's within its
        // timeout): one lookup, and done. At 10,000 services a push is 10,000 of these.
        if after == before && step.actions.is_empty() && step.wake.is_none() {
            return Some(after);
        }
        s.state = after;
        if after != before {
            self.refresh(service);
        }
        // The workload keeps running while another port of it is not parked.
        let keeps_running = step
            .actions
            .contains(&Action::ScaleDown)
            .then(|| self.unparked_sibling(service))
            .flatten();
        if before.phase() != after.phase() {
            if activity::sample_moves(after.phase(), true) {
                self.sampled.insert(service.to_string(), after.phase());
            } else {
                self.sampled.remove(service);
            }
        }
        let s = self.services.get_mut(service)?;
        if before.phase() != after.phase() {
            s.phase_since = Some(now);
            if s.def.in_cluster.is_some() {
                let route = route_for(after.phase());
                if s.route != Some(route) {
                    s.route = Some(route);
                    s.routed_at = None;
                    self.out.push(Effect::Route {
                        service: service.to_string(),
                        route,
                    });
                }
            }
            info!(service, from = ?before.phase(), to = ?after.phase(), ?input, "state");
            self.out.push(Effect::Record(Record::State {
                service: service.to_string(),
                phase: after.phase(),
            }));
        }
        if let Some((outcome, took)) = step.wake {
            s.last_wake = Some((outcome, took));
            if outcome == WakeOutcome::Ready {
                s.failed_wakes = 0;
                s.retry_at = None;
            } else {
                s.failed_wakes = s.failed_wakes.saturating_add(1);
                s.retry_at = now.checked_add(wake_retry_delay(s.failed_wakes));
            }
            info!(
                service,
                outcome = outcome.label(),
                took_ms = took.as_secs_f64() * 1e3,
                "wake finished"
            );
            self.out.push(Effect::Record(Record::WakeFinished {
                service: service.to_string(),
                outcome,
                took,
            }));
            if outcome == WakeOutcome::TimedOut {
                self.out.push(Effect::Notify(Notice {
                    service: service.to_string(),
                    warning: true,
                    reason: "WakeTimedOut",
                    note: format!(
                        "no ready endpoint within wakeTimeout {:?}; connections held for it wait until their holdTimeout",
                        s.timing.wake_timeout
                    ),
                }));
            }
        }
        for action in step.actions {
            match action {
                Action::ScaleUp => {
                    self.wakes += 1;
                    s.wake = self.wakes;
                    s.wake_watch_only = !self.settings.leading;
                    self.out.push(Effect::Record(Record::WakeStarted {
                        service: service.to_string(),
                    }));
                    self.out.push(Effect::Wake {
                        service: service.to_string(),
                        wake: s.wake,
                        timeout: s.timing.wake_timeout,
                        scale: self.settings.leading,
                    });
                }
                Action::PublishUpstream => {
                    if matches!(before, State::Parking { .. }) {
                        info!(service, "park cancelled: a connection arrived");
                        self.out.push(Effect::Record(Record::ParkCancelled {
                            service: service.to_string(),
                        }));
                    }
                    self.out.push(Effect::PublishEndpoints {
                        service: service.to_string(),
                        endpoints: Endpoints::Upstream(s.endpoints.clone()),
                    });
                }
                Action::PublishHolder => self.out.push(Effect::PublishEndpoints {
                    service: service.to_string(),
                    endpoints: Endpoints::Holder(self.settings.holder, s.hold),
                }),
                Action::ScaleDown => {
                    if matches!(before, State::Parking { .. }) {
                        self.out.push(Effect::Record(Record::Parked {
                            service: service.to_string(),
                        }));
                    }
                    if let Some(sibling) = &keeps_running {
                        info!(service, %sibling, "parked; its workload goes to zero with its last port");
                    } else if self.settings.leading {
                        self.out.push(Effect::Park {
                            service: service.to_string(),
                        });
                    } else {
                        debug!(service, "not leading: the leader scales down");
                    }
                }
            }
        }
        Some(after)
    }
}

#[cfg(test)]
mod tests;
