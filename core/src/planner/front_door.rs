//! The front door: what Envoy serves for one service besides its assignment. Its cluster,
//! its own listener, its `inCluster` listener and its virtual host on the shared HTTP
//! listener follow from its definition and from whether its door is open yet (the
//! warm-up gate); [`FrontDoor::of`] computes them, and [`FrontDoor::changes`] turns the
//! move from one such view to the next into the effects that make Envoy serve it.
//! Nothing here wakes or parks, or chooses between the holder and the upstreams (that is
//! the lifecycle's).
//!
//! The warm-up gate: a service added while Envoys are connected gets its cluster and
//! holder assignment at once, but its doors (listeners, virtual host) only after every
//! connected Envoy has ACKed that assignment, or after [`Settings::warm_timeout`]: Envoy
//! closes a connection, or answers 503, for a cluster still warming, and a held
//! connection is the promise.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::warn;

#[cfg(doc)]
use super::Settings;
use super::{Acks, Effect, Notice, Planner};
use crate::model::{EnvoyLimits, Protocol, ServiceDef, VirtualHost};

/// An HTTP route's timeout is the service's wakeTimeout plus this (Envoy's default
/// route timeout), so a request that arrives at zero is not cut off by the wake.
pub const ROUTE_TIMEOUT_AFTER_WAKE: Duration = Duration::from_secs(15);

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

/// Where a service added at run time stands with its doors (listeners, virtual host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Warming {
    /// Open: published, or needed no wait.
    Done,
    /// Since `since`, waits for its first holder assignment's version ...
    Publishing { since: Instant },
    /// ... then for every connected Envoy to ACK this version of its assignment.
    Until { version: u64, since: Instant },
}

/// What Envoy serves for one service, its assignment aside.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FrontDoor {
    /// The EDS cluster: how it speaks to its upstream, its circuit breakers.
    cluster: (Protocol, EnvoyLimits),
    /// Its own TCP listener, once its door is open.
    listener: Option<(SocketAddr, EnvoyLimits)>,
    /// `inCluster`: the proxies' listener for the Service's own name, once open.
    in_cluster: Option<InCluster>,
    /// Routed by Host on the shared HTTP listener (HTTP and gRPC), open or not: a routed
    /// service that comes or goes rebuilds the route configuration.
    routed: bool,
    /// Its virtual host there, once its door is open.
    virtual_host: Option<VirtualHost>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct InCluster {
    listen: SocketAddr,
    protocol: Protocol,
    limits: EnvoyLimits,
    route_timeout: Duration,
}

impl InCluster {
    /// Serves the same as `other`: a TCP listener has no route, so its timeout is no
    /// part of what it serves.
    fn same(&self, other: &InCluster) -> bool {
        self.listen == other.listen
            && self.protocol == other.protocol
            && self.limits == other.limits
            && (self.route_timeout == other.route_timeout || !self.protocol.routed())
    }
}

impl FrontDoor {
    /// What Envoy should serve for `def`; `open`: its doors are (see [`Warming`]).
    pub(super) fn of(def: &ServiceDef, open: bool) -> FrontDoor {
        let limits = def.policy.envoy();
        let timeout = route_timeout(def.protocol, def.policy.wake_timeout);
        let routed = def.protocol.routed();
        FrontDoor {
            cluster: (def.protocol, limits),
            listener: def.listen.filter(|_| open).map(|l| (l, limits)),
            in_cluster: def.in_cluster.filter(|_| open).map(|listen| InCluster {
                listen,
                protocol: def.protocol,
                limits,
                route_timeout: timeout,
            }),
            routed,
            virtual_host: (routed && open).then(|| VirtualHost {
                service: def.name.clone(),
                domains: def.domains.clone(),
                timeout,
            }),
        }
    }

    /// The effects that take Envoy from `old` (None: nothing yet) to `self` for
    /// `service`, cluster first, into `cluster` and `doors`: the caller publishes an
    /// assignment between the two, so that a listener never leads to a cluster Envoy has
    /// no endpoints for. Returns whether the route configuration must be rebuilt.
    pub(super) fn changes(
        &self,
        service: &str,
        old: Option<&FrontDoor>,
        cluster: &mut Vec<Effect>,
        doors: &mut Vec<Effect>,
    ) -> bool {
        if old.is_none_or(|o| o.cluster != self.cluster) {
            cluster.push(Effect::PublishCluster {
                service: service.to_string(),
                protocol: self.cluster.0,
                limits: self.cluster.1,
            });
        }
        let old_listener = old.and_then(|o| o.listener);
        if old_listener != self.listener {
            doors.push(match self.listener {
                Some((listen, limits)) => Effect::PublishListener {
                    service: service.to_string(),
                    listen,
                    limits,
                },
                None => Effect::RemoveListener {
                    service: service.to_string(),
                },
            });
        }
        let old_in = old.and_then(|o| o.in_cluster);
        let unchanged = match (old_in, self.in_cluster) {
            (Some(a), Some(b)) => a.same(&b),
            (a, b) => a.is_none() && b.is_none(),
        };
        if !unchanged {
            // Its name carries its port: a listener that moves goes from the old port first.
            if let Some(gone) =
                old_in.filter(|o| self.in_cluster.is_none_or(|n| n.listen != o.listen))
            {
                doors.push(Effect::RemoveInClusterListener {
                    service: service.to_string(),
                    listen: gone.listen,
                });
            }
            if let Some(n) = self.in_cluster {
                doors.push(Effect::PublishInClusterListener {
                    service: service.to_string(),
                    listen: n.listen,
                    protocol: n.protocol,
                    limits: n.limits,
                    route_timeout: n.route_timeout,
                });
            }
        }
        old.map_or(self.routed, |o| {
            o.routed != self.routed || o.virtual_host != self.virtual_host
        })
    }

    /// The effect that takes all of it away (listener, cluster, assignment, `inCluster`
    /// listener); and whether the route configuration must be rebuilt.
    pub(super) fn removal(&self, service: &str) -> (Effect, bool) {
        let effect = Effect::RemoveService {
            service: service.to_string(),
            in_cluster: self.in_cluster.map(|i| i.listen),
        };
        (effect, self.routed)
    }

    /// Its virtual host, when its door is open.
    pub(super) fn virtual_host(self) -> Option<VirtualHost> {
        self.virtual_host
    }
}

/// The shared HTTP listener's route configuration from the open services' virtual
/// hosts: sorted by service, and a domain on two of them kept by the first (by name)
/// only. A domain on two virtual hosts makes Envoy reject the whole route configuration
/// (and every later change to it). Config validation and Kubernetes discovery refuse
/// such services already; this keeps it true whatever reaches here.
pub(super) fn route_configuration(mut hosts: Vec<VirtualHost>) -> Vec<VirtualHost> {
    hosts.sort_by(|a, b| a.service.cmp(&b.service));
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
    hosts
}

impl Planner {
    /// Publish the move of `service`'s front door from `old` to `new` with no
    /// assignment between (see [`FrontDoor::changes`]).
    pub(super) fn publish_front_door(&mut self, service: &str, old: &FrontDoor, new: &FrontDoor) {
        let mut doors = Vec::new();
        self.routes_dirty |= new.changes(service, Some(old), &mut self.out, &mut doors);
        self.out.append(&mut doors);
    }

    /// A service added at run time opens its front door once every connected Envoy has
    /// its cluster warm, or after the warm-up bound (an Envoy that never ACKs must not
    /// keep it closed; that Envoy may refuse the service's first connections).
    pub(super) fn warm(&mut self, name: &str, now: Instant, acks: &dyn Acks) {
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
        let closed = FrontDoor::of(&s.def, false);
        let open = FrontDoor::of(&s.def, true);
        self.refresh(name);
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
        self.publish_front_door(name, &closed, &open);
    }

    /// The shared HTTP listener's route configuration, from every open routed service.
    pub(super) fn publish_routes(&mut self) {
        if self.settings.http.is_none() {
            return;
        }
        let hosts = self
            .services
            .values()
            .filter(|s| s.warming == Warming::Done)
            .filter_map(|s| FrontDoor::of(&s.def, true).virtual_host())
            .collect();
        self.out
            .push(Effect::PublishRoutes(route_configuration(hosts)));
    }

    /// An HTTP service came, went or changed during this call: the route configuration
    /// is published once, not once per service.
    pub(super) fn flush_routes(&mut self) {
        if std::mem::take(&mut self.routes_dirty) {
            self.publish_routes();
        }
    }
}
