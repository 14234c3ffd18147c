//! The services the planner is told of: added, changed, reloaded, removed, and the
//! groups they form. Each change is carried to the front door (as the move from the old
//! [`FrontDoor`] to the new) and to the lifecycle (the hold policy in the holder's
//! assignment, the timing, where an `inCluster` Service's name leads).

use std::time::Instant;

use tracing::info;

use super::front_door::{FrontDoor, Warming};
use super::lifecycle::{steer_for, WAKE_RETRY};
use super::{timing, Acks, Effect, Planner, Record, Service};
use crate::activity::{Phase, State};
use crate::model::{Endpoints, Policy, ServiceDef, Steer};

impl Planner {
    /// Add a service (published parked; one whose workload runs follows as
    /// [`Event::Observed`]), or update one: a new listener, domains or policy are
    /// published. `acks` is given for a service added at run time (not at start): its
    /// front door waits for the connected Envoys to warm its cluster.
    ///
    /// [`Event::Observed`]: crate::model::Event::Observed
    pub(super) fn upsert(&mut self, def: ServiceDef, acks: Option<(&dyn Acks, Instant)>) {
        let name = def.name.clone();
        let Some(s) = self.services.get_mut(&name) else {
            self.insert(def, acks);
            return;
        };
        // A front door still closed is opened by the tick, with the new definition.
        let open = s.warming == Warming::Done;
        let old_door = FrontDoor::of(&s.def, open);
        let old = std::mem::replace(&mut s.def, def);
        let new_door = FrontDoor::of(&s.def, open);
        if old.in_cluster.is_some() != s.def.in_cluster.is_some() {
            // Turned on: the steer its phase calls for; off: the slice goes.
            let steer = match s.def.in_cluster {
                Some(_) => steer_for(s.state.phase()),
                None => Steer::Gone,
            };
            s.steer = s.def.in_cluster.map(|_| steer);
            s.steered_at = None;
            self.out.push(Effect::Steer {
                service: name.clone(),
                steer,
            });
        }
        let (protocol, group, policy, dial) = (
            s.def.protocol,
            s.def.group.clone(),
            s.def.policy,
            s.def.dial,
        );
        if old.group != group {
            self.leave_group(&name, old.group.as_deref());
            self.join_group(&name, group.as_deref());
        }
        if old.protocol != protocol {
            self.out.push(Effect::Track {
                service: name.clone(),
                protocol,
            });
        }
        self.publish_front_door(&name, &old_door, &new_door);
        if old.policy != policy || old.dial != dial {
            self.policy_changed(&name, old.policy);
        }
    }

    /// A new service, published parked: its cluster, the holder as its assignment, then
    /// its doors (at once, unless connected Envoys must warm its cluster first).
    fn insert(&mut self, def: ServiceDef, acks: Option<(&dyn Acks, Instant)>) {
        let name = def.name.clone();
        let hold = def.policy.hold(def.dial);
        let warming = match acks {
            Some((acks, now)) if acks.envoys() > 0 => Warming::Publishing { since: now },
            _ => Warming::Done,
        };
        let door = FrontDoor::of(&def, warming == Warming::Done);
        let mut doors = Vec::new();
        let routed = door.changes(&name, None, &mut self.out, &mut doors);
        self.out.push(Effect::PublishEndpoints {
            service: name.clone(),
            endpoints: Endpoints::Holder(self.settings.holder, hold),
        });
        self.out.append(&mut doors);
        let steer = def.in_cluster.map(|_| Steer::Proxy);
        if let Some(steer) = steer {
            self.out.push(Effect::Steer {
                service: name.clone(),
                steer,
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
        // At start the route configuration is published once, by `started`.
        if acks.is_some() && routed {
            self.routes_dirty = true;
        }
        let group = def.group.clone();
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
                steer,
                steered_at: None,
                retry: WAKE_RETRY,
                retry_at: None,
            },
        );
        self.join_group(&name, group.as_deref());
        self.refresh(&name);
        self.names.push(name);
    }

    /// Forget a service: its Envoy resources go; a connection held for it is refused by
    /// the holder (unknown service) once its hold timeout ends.
    pub(super) fn remove(&mut self, name: &str) {
        let Some(s) = self.services.remove(name) else {
            return;
        };
        self.schedule.remove(name);
        self.names.retain(|n| n != name);
        self.leave_group(name, s.def.group.as_deref());
        self.sampled.remove(name);
        if s.def.in_cluster.is_some() {
            self.out.push(Effect::Steer {
                service: name.to_string(),
                steer: Steer::Gone,
            });
        }
        self.out.push(Effect::Untrack {
            service: name.to_string(),
        });
        // Everything it may have been given, open or not.
        let (removal, routed) = FrontDoor::of(&s.def, true).removal(name);
        self.out.push(removal);
        self.routes_dirty |= routed;
        self.record(Record::Forget {
            service: name.to_string(),
        });
        info!(service = name, "service removed");
    }

    /// A reload: new timeouts and limits for `service`. What Envoy serves follows (its
    /// cluster's and listeners' limits, an HTTP route's timeout), and so does the
    /// lifecycle (see [`Planner::policy_changed`]).
    pub(super) fn set_policy(&mut self, service: &str, policy: Policy) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let open = s.warming == Warming::Done;
        let old_door = FrontDoor::of(&s.def, open);
        let old = std::mem::replace(&mut s.def.policy, policy);
        let new_door = FrontDoor::of(&s.def, open);
        self.publish_front_door(service, &old_door, &new_door);
        self.policy_changed(service, old);
    }

    /// `service`'s policy is new (it was `old`): the state machine uses it from its next
    /// step; a holder assignment published now carries the new hold policy to the
    /// holders; the idle timeout's metric follows.
    fn policy_changed(&mut self, service: &str, old: Policy) {
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        let policy = s.def.policy;
        s.timing = timing(&policy);
        let hold = policy.hold(s.def.dial);
        let republish = hold != s.hold
            && matches!(
                s.state,
                State::Parked | State::Parking { .. } | State::Waking { .. }
            );
        s.hold = hold;
        self.refresh(service);
        if republish {
            self.publish_holder(service);
        }
        if old.idle_timeout != policy.idle_timeout {
            self.record(Record::IdleTimeout {
                service: service.to_string(),
                idle_timeout: policy.idle_timeout,
            });
        }
        info!(service, ?policy, "policy reloaded");
    }

    pub(super) fn join_group(&mut self, name: &str, group: Option<&str>) {
        if let Some(g) = group {
            let members = self.groups.entry(g.to_string()).or_default();
            if !members.iter().any(|m| m == name) {
                members.push(name.to_string());
            }
        }
    }

    pub(super) fn leave_group(&mut self, name: &str, group: Option<&str>) {
        if let Some(g) = group {
            if let Some(members) = self.groups.get_mut(g) {
                members.retain(|m| m != name);
                if members.is_empty() {
                    self.groups.remove(g);
                }
            }
        }
    }
}
