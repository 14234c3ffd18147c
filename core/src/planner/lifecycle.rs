//! The lifecycle: each service's way through `Parked -> Waking -> Awake -> Parking` and
//! what it asks of the backend. [`activity::step`] decides one service's step; here the
//! steps are carried into effects: the assignment (the holder or the upstreams), wakes
//! (numbered, retried after a [`Backoff`] when they fail), parks (the two phases, the
//! group's last port), leadership, drift found by a check, and where an `inCluster`
//! Service's own name leads. It builds nothing Envoy serves besides the assignment (that
//! is the front door's).
//!
//! - **Wake numbers.** Each wake gets a number unique across services; a result carrying
//!   an older number (a wake that outlived its timeout) is ignored.
//! - **Two-phase park.** The holder assignment is published and its version remembered;
//!   phase two waits for every subscribed stream to ACK it ([`Acks::all_acked`]), then
//!   for every Envoy's sample taken after that ACK to be idle.
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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use zenvoy_base::Backoff;

#[cfg(doc)]
use super::Acks;
use super::{Effect, Notice, Planner, Record};
use crate::activity::{self, Action, Input, Phase, State, WakeOutcome};
#[cfg(doc)]
use crate::model::ServiceDef;
use crate::model::{Endpoints, Steer};

/// `inCluster`: where a Service's own name leads in each phase: to the pods once it is
/// awake, to the proxies otherwise (a connection is then held, and wakes it).
pub fn steer_for(phase: Phase) -> Steer {
    match phase {
        Phase::Awake => Steer::Direct,
        Phase::Parked | Phase::Waking | Phase::Parking => Steer::Proxy,
    }
}

/// After a wake fails or times out, held connections ask for the next one no sooner
/// than this, doubled for each failure in a row up to [`WAKE_RETRY_MAX`]; a wake that
/// succeeds starts over. A service that cannot start (its command missing, a check that
/// cannot pass, an instance that exits at once) is then not restarted every tick for as
/// long as clients wait; the first retry is as soon as before (one tick).
pub const WAKE_RETRY_FIRST: Duration = Duration::from_millis(100);
pub const WAKE_RETRY_MAX: Duration = Duration::from_secs(5);
/// The wake retry's backoff, with no failure yet.
pub const WAKE_RETRY: Backoff = Backoff::new(WAKE_RETRY_FIRST, WAKE_RETRY_MAX);

/// How long after its `failures`-th failed wake in a row a service may be woken again.
pub fn wake_retry_delay(failures: u32) -> Duration {
    WAKE_RETRY.after(failures)
}

impl Planner {
    /// One step of `service`'s state machine, and of its siblings' for activity: the
    /// ports of one workload live and sleep together. A connection to any of them is
    /// activity for all (it wakes the parked ones, cancels their parks, keeps them
    /// awake), so they go idle at the same time, and the workload goes to zero only once
    /// every one is parked (see `step_one`).
    /// Returns `service`'s state after the step (None: an unknown service).
    pub(super) fn apply(&mut self, service: &str, input: Input, now: Instant) -> Option<State> {
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
            self.entered(service, before.phase(), after.phase(), input, now);
        }
        if let Some((outcome, took)) = step.wake {
            self.wake_finished(service, outcome, took, now);
        }
        for action in step.actions {
            match action {
                Action::ScaleUp => {
                    self.record(Record::WakeStarted {
                        service: service.to_string(),
                    });
                    self.wake(service, self.settings.leading);
                }
                Action::PublishUpstream => {
                    if matches!(before, State::Parking { .. }) {
                        info!(service, "park cancelled: a connection arrived");
                        self.record(Record::ParkCancelled {
                            service: service.to_string(),
                        });
                    }
                    self.publish_upstream(service);
                }
                Action::PublishHolder => self.publish_holder(service),
                Action::ScaleDown => {
                    if matches!(before, State::Parking { .. }) {
                        self.record(Record::Parked {
                            service: service.to_string(),
                        });
                    }
                    if let Some(sibling) = &keeps_running {
                        info!(service, %sibling, "parked; its workload goes to zero with its last port");
                    } else if self.settings.leading {
                        self.park(service);
                    } else {
                        debug!(service, "not leading: the leader scales down");
                    }
                }
            }
        }
        Some(after)
    }

    /// `service` moved from phase `from` to `to`: its time in phase starts, the metric
    /// follows, and an `inCluster` Service's name leads where the new phase wants it.
    fn entered(&mut self, service: &str, from: Phase, to: Phase, input: Input, now: Instant) {
        if let Some(s) = self.services.get_mut(service) {
            s.phase_since = Some(now);
            if s.def.in_cluster.is_some() {
                self.set_steer(service, steer_for(to));
            }
        }
        info!(service, ?from, ?to, ?input, "state");
        self.record(Record::State {
            service: service.to_string(),
            phase: to,
        });
    }

    /// A wake ended (`outcome`, after `took`): told, and the retry delay follows it.
    fn wake_finished(&mut self, service: &str, outcome: WakeOutcome, took: Duration, now: Instant) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        s.last_wake = Some((outcome, took));
        if outcome == WakeOutcome::Ready {
            s.retry.succeeded();
            s.retry_at = None;
        } else {
            s.retry_at = now.checked_add(s.retry.failed());
        }
        let wake_timeout = s.timing.wake_timeout;
        info!(
            service,
            outcome = outcome.label(),
            took_ms = took.as_secs_f64() * 1e3,
            "wake finished"
        );
        self.record(Record::WakeFinished {
            service: service.to_string(),
            outcome,
            took,
        });
        if outcome == WakeOutcome::TimedOut {
            self.out.push(Effect::Notify(Notice {
                service: service.to_string(),
                warning: true,
                reason: "WakeTimedOut",
                note: format!(
                    "no ready endpoint within wakeTimeout {wake_timeout:?}; connections held for it wait until their holdTimeout"
                ),
            }));
        }
    }

    /// The one place a wake is asked for: the next wake number, and the backend asked
    /// for ready endpoints (`scale`: by bringing replicas up; a follower only watches,
    /// and a new leader asks again, to scale, for what it only watched).
    fn wake(&mut self, service: &str, scale: bool) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        self.wakes += 1;
        s.wake = self.wakes;
        s.wake_watch_only = !scale;
        let (wake, timeout) = (s.wake, s.timing.wake_timeout);
        self.out.push(Effect::Wake {
            service: service.to_string(),
            wake,
            timeout,
            scale,
        });
    }

    /// The one place a park asks the backend to go to zero.
    fn park(&mut self, service: &str) {
        self.out.push(Effect::Park {
            service: service.to_string(),
        });
    }

    pub(super) fn publish_holder(&mut self, service: &str) {
        if let Some(s) = self.services.get(service) {
            self.out.push(Effect::PublishEndpoints {
                service: service.to_string(),
                endpoints: Endpoints::Holder(self.settings.holder, s.hold),
            });
        }
    }

    fn publish_upstream(&mut self, service: &str) {
        if let Some(s) = self.services.get(service) {
            self.out.push(Effect::PublishEndpoints {
                service: service.to_string(),
                endpoints: Endpoints::Upstream(s.endpoints.clone()),
            });
        }
    }

    /// `inCluster`: where the Service's own name is to lead from now; told to the backend
    /// when it changes, and not yet written (a park waits for the write).
    pub(super) fn set_steer(&mut self, service: &str, steer: Steer) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        if s.steer != Some(steer) {
            s.steer = Some(steer);
            s.steered_at = None;
            self.out.push(Effect::Steer {
                service: service.to_string(),
                steer,
            });
        }
    }

    /// Whether `service`'s workload may go to zero now: always, unless it keeps its name
    /// (`inCluster`), in which case its steer to the proxies must have been written for
    /// the settle time.
    pub(super) fn may_scale_down(&self, service: &str, now: Instant) -> bool {
        self.services.get(service).is_none_or(|s| {
            s.def.in_cluster.is_none()
                || s.steered_at.is_some_and(|t| {
                    now.saturating_duration_since(t) >= self.settings.in_cluster_settle
                })
        })
    }

    /// A parking service whose holder every Envoy has ACKed: once every Envoy's sample
    /// taken after that ACK is idle, it may scale down.
    pub(super) fn settle(&mut self, service: &str, now: Instant) {
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

    pub(super) fn set_pending(&mut self, service: &str, pending: f64, now: Instant) {
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

    pub(super) fn endpoints(&mut self, service: &str, endpoints: Vec<SocketAddr>) {
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
            self.publish_upstream(service);
        }
    }

    pub(super) fn wake_done(
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

    pub(super) fn leading(&mut self, leading: bool) {
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
        let watched: Vec<String> = self
            .names
            .iter()
            .filter(|n| {
                self.services
                    .get(*n)
                    .is_some_and(|s| matches!(s.state, State::Waking { .. }) && s.wake_watch_only)
            })
            .cloned()
            .collect();
        for name in &watched {
            self.wake(name, true);
        }
    }

    /// Ask what runs, for every service whose state says it is settled (parked with
    /// nothing held, or awake): the answers ([`Event::Checked`]) repair drift. A follower
    /// asks nothing (the leader repairs).
    ///
    /// [`Event::Checked`]: crate::model::Event::Checked
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
    pub(super) fn checked(&mut self, service: &str, wake: u64, running: bool, now: Instant) {
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
                self.park(service);
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

    /// The other services of `name`'s group.
    pub(super) fn siblings(&self, name: &str) -> Vec<String> {
        self.services
            .get(name)
            .and_then(|s| s.def.group.as_ref())
            .and_then(|g| self.groups.get(g))
            .map(|m| m.iter().filter(|m| *m != name).cloned().collect())
            .unwrap_or_default()
    }

    /// A sibling of `name` that is not parked (its workload must keep running for it).
    pub(super) fn unparked_sibling(&self, name: &str) -> Option<String> {
        self.siblings(name).into_iter().find(|m| {
            self.services
                .get(m)
                .is_some_and(|s| s.state.phase() != Phase::Parked)
        })
    }
}
