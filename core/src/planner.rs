//! The planner: every decision the controller makes, synchronously. Given an [`Event`],
//! the time and what the connected Envoys have acknowledged ([`Acks`]), it updates each
//! service's state and returns the [`Effect`]s to carry out. It never reads a clock, does
//! no I/O and spawns nothing, so each decision is a plain `#[test]` with made-up instants
//! (`planner/tests/`); the async runtime around it only receives events and executes
//! effects, and reports back what [`effect`] says it owes.
//!
//! ```text
//!  stats pushes, scrapes ---Metrics/NodeGone--+
//!  backend results -------WakeDone/ParkFailed-+--> Planner::handle(event, now, acks)
//!  config, discovery --Reload/Upsert/Remove---+         |
//!  leader election -------------Leading-------+         |
//!  the clock -----------------------------Planner::tick-+
//!                                                       v
//!     definitions.rs: services added, changed, removed; groups
//!        |                          |
//!        v                          v
//!     front_door.rs                lifecycle.rs
//!     cluster, listeners,          activity::step per service: the assignment
//!     virtual hosts, the           (holder or upstreams), wakes and their retry,
//!     warm-up gate                 two-phase parks, leadership, drift, inCluster routes
//!        |                          |
//!        +------------+-------------+
//!                     v
//!     Effects (effect.rs): publish/remove, wake, park, check, steer, record, notify
//!                     |
//!     runtime executes them; for each published assignment it reports the version
//!     back (Planner::published), which later ACKs are compared with
//! ```
//!
//! The parts: [`front_door`] decides what Envoy serves for a service besides its
//! assignment, and never wakes or parks; [`lifecycle`] decides wakes, parks and the
//! assignment, and builds nothing else Envoy serves; `definitions` carries a service's
//! changes to both; `schedule` keeps the tick to the services with something due. The
//! stats windows ([`crate::stats::window`]) turn samples into activity.

mod definitions;
pub mod effect;
pub mod front_door;
pub mod lifecycle;
mod schedule;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use tracing::warn;
use zenvoy_base::Backoff;

pub use effect::{Effect, Notice, Record};
pub use front_door::{route_timeout, ROUTE_TIMEOUT_AFTER_WAKE};
pub use lifecycle::{steer_for, wake_retry_delay, WAKE_RETRY_FIRST, WAKE_RETRY_MAX};

use crate::activity::{self, Input, Phase, State, Timing, WakeOutcome};
use crate::model::{Endpoints, Event, HoldPolicy, Policy, ServiceDef, Steer};
use crate::stats::window::Windows;
use front_door::Warming;
use schedule::Schedule;

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
    /// `inCluster`: how long after the backend wrote a parking Service's steer to the
    /// proxies its workload may go to zero (kube-proxy on every node follows in that
    /// time; it cannot be asked).
    pub in_cluster_settle: Duration,
}

/// [`Settings::stats_expiry`] when nothing else is said: three of the holder's
/// heartbeats, thirty of Envoy's 1 s stats flushes.
pub const DEFAULT_STATS_EXPIRY: Duration = Duration::from_secs(30);
/// [`Settings::warm_timeout`] when nothing else is said.
pub const DEFAULT_WARM_TIMEOUT: Duration = Duration::from_secs(15);

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
    steer: Option<Steer>,
    steered_at: Option<Instant>,
    /// Wakes that failed or timed out in a row, and when the next may start (see
    /// [`wake_retry_delay`]).
    retry: Backoff,
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
            Event::Steered { service, steer } => {
                // Only the steer still wanted counts, from the first report of it.
                if let Some(s) = self.services.get_mut(&service) {
                    if s.steer == Some(steer) && s.steered_at.is_none() {
                        s.steered_at = Some(now);
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
}

#[cfg(test)]
mod tests;
