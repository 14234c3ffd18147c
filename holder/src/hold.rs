//! The hold registry: each service's hold queue (how many of its connections wait, and
//! which upstream endpoints are known; see `queue`). Connection tasks take a [`Ticket`]
//! while they wait; the xDS client fills in endpoints; the metrics pusher watches the
//! pending counts.
//!
//! Bounds: pending connections per service and in total, and the number of distinct
//! services (names come from PROXY headers, so a flood of made-up names must not grow
//! memory without bound).
//!
//! A service whose policy carries a dial address (its readiness is its port accepting)
//! is also watched by the holder itself while connections wait: the registry starts
//! those probes (see [`crate::probe`]) as connections arrive and policies change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use zenvoy_base::lock;

use crate::probe::{self, Probes};
use crate::queue::Queue;
pub use crate::queue::{QueueState, ServicePolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_pending_per_service: usize,
    pub max_pending_total: usize,
    pub max_services: usize,
}

/// The `zenvoy-holder` flags' defaults (`--max-pending`, `--max-pending-total`,
/// `--max-services`).
impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending_per_service: 1000,
            max_pending_total: 10_000,
            max_services: 10_000,
        }
    }
}

/// Why a connection was refused at once instead of held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("service has {0} connections pending, the most allowed")]
    ServiceFull(usize),
    #[error("holder has {0} connections pending in total, the most allowed")]
    HolderFull(usize),
    #[error("holder already tracks {0} services, the most allowed")]
    TooManyServices(usize),
}

impl Refused {
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::ServiceFull(_) => "max_pending",
            Refused::HolderFull(_) => "max_pending_total",
            Refused::TooManyServices(_) => "max_services",
        }
    }
}

#[derive(Debug)]
pub struct Hold {
    limits: Limits,
    /// Each service's hold queue, by name.
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    total: AtomicUsize,
    /// Bumped on every pending change: the pusher sends at once.
    pending_changed: watch::Sender<u64>,
    /// Bumped when a service gets its first held connection or loses its last: the xDS
    /// client changes its subscription.
    names_changed: watch::Sender<u64>,
    /// The probes of waiting services' dial addresses, started as connections arrive and
    /// policies change (see [`crate::probe`]).
    pub(crate) probes: Arc<Probes>,
}

/// A held connection's place in its service's queue. Dropping it (relay started, client
/// gone, timeout) releases the place and tells the controller.
#[derive(Debug)]
pub struct Ticket {
    hold: Arc<Hold>,
    queue: Arc<Queue>,
}

impl Ticket {
    /// The service's endpoints (empty while parked) and policy.
    pub fn state(&self) -> watch::Receiver<QueueState> {
        self.queue.state.subscribe()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let queues = lock(&self.hold.queues);
        let was = self.queue.pending.fetch_sub(1, Ordering::AcqRel);
        if was == 1 {
            // The last held connection of this service is gone: the xDS client may drop
            // the subscription (see `forget_endpoints`).
            self.hold.names_changed.send_modify(|g| *g += 1);
        }
        drop(queues);
        self.hold.total.fetch_sub(1, Ordering::AcqRel);
        self.hold.pending_changed.send_modify(|g| *g += 1);
    }
}

impl Hold {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Hold {
            limits,
            queues: Mutex::default(),
            total: AtomicUsize::new(0),
            pending_changed: watch::Sender::new(0),
            names_changed: watch::Sender::new(0),
            probes: Arc::default(),
        })
    }

    /// Take a place in `service`'s queue, or say why not.
    pub fn admit(self: &Arc<Self>, service: &str) -> Result<Ticket, Refused> {
        let mut queues = lock(&self.queues);
        let queue = match queues.get(service) {
            Some(q) => q.clone(),
            None => {
                if queues.len() >= self.limits.max_services {
                    return Err(Refused::TooManyServices(queues.len()));
                }
                let q = Arc::new(Queue::default());
                queues.insert(service.to_string(), q.clone());
                q
            }
        };
        // Reserve, then check: concurrent admits can never overshoot a limit.
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.limits.max_pending_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::HolderFull(total));
        }
        let max = queue
            .state
            .borrow()
            .policy
            .map_or(self.limits.max_pending_per_service, |p| p.max_pending);
        let pending = queue.pending.fetch_add(1, Ordering::AcqRel);
        if pending >= max {
            queue.pending.fetch_sub(1, Ordering::AcqRel);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::ServiceFull(pending));
        }
        if pending == 0 {
            // First held connection: the xDS client subscribes to the service.
            self.names_changed.send_modify(|g| *g += 1);
        }
        drop(queues);
        self.pending_changed.send_modify(|g| *g += 1);
        probe::start_if_waiting(&self.probes, service, &queue);
        Ok(Ticket {
            hold: self.clone(),
            queue,
        })
    }

    /// Endpoints for `service` from the controller (empty: parked), and its policy when
    /// the assignment carries one (a policy once known is kept).
    pub fn set_state(
        &self,
        service: &str,
        endpoints: Vec<SocketAddr>,
        policy: Option<ServicePolicy>,
    ) {
        let queue = lock(&self.queues).get(service).cloned();
        if let Some(queue) = queue {
            queue.state.send_if_modified(|s| {
                let next = QueueState {
                    endpoints,
                    policy: policy.or(s.policy),
                };
                let changed = *s != next;
                *s = next;
                changed
            });
            probe::start_if_waiting(&self.probes, service, &queue);
        }
    }

    /// Register the probes' gauge and counter (`zenvoy_holder_probes`,
    /// `zenvoy_holder_self_dials_total`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.probes.register(registry);
    }

    /// Whether the probe of `service` has seen its dial address refuse (for tests).
    #[cfg(test)]
    pub(crate) fn probe_saw_closed(&self, service: &str) -> bool {
        lock(&self.queues)
            .get(service)
            .is_some_and(|q| q.seen_closed.load(Ordering::Acquire))
    }

    /// Whether a probe of `service` runs now (for tests).
    #[cfg(test)]
    pub(crate) fn probing(&self, service: &str) -> bool {
        lock(&self.queues)
            .get(service)
            .is_some_and(|q| q.probing.load(Ordering::Acquire))
    }

    /// The xDS client no longer subscribes to `services`, so their endpoints will not be
    /// kept current: forget each one that holds no connection (one held for meanwhile is
    /// back in the next subscription, and its endpoints are as fresh as a moment ago).
    /// Its queue goes too, freeing its place among `max_services`: a holder that sees
    /// services come and go must not refuse new ones once it has seen `max_services`
    /// names. The next connection for it waits for a fresh assignment instead of dialing
    /// a service that may have been parked since; until that assignment brings the
    /// service's policy (milliseconds), the holder's flags apply to it.
    pub fn forget_endpoints(&self, services: &[String]) {
        let mut queues = lock(&self.queues);
        for name in services {
            if queues
                .get(name)
                .is_some_and(|q| q.pending.load(Ordering::Acquire) == 0)
            {
                queues.remove(name);
            }
        }
    }

    /// Forget the endpoints of every service without held connections (a new xDS stream
    /// will not subscribe to them).
    pub fn forget_unheld_endpoints(&self) {
        let names: Vec<String> = lock(&self.queues).keys().cloned().collect();
        self.forget_endpoints(&names);
    }

    /// The services with held connections now (the xDS subscription), sorted. Only these:
    /// a holder that has seen thousands of services must not make every request and
    /// every ACK carry all their names.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.queues)
            .iter()
            .filter(|(_, q)| q.pending.load(Ordering::Acquire) > 0)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Pending count per service.
    pub fn pending(&self) -> Vec<(String, usize)> {
        lock(&self.queues)
            .iter()
            .map(|(n, q)| (n.clone(), q.pending.load(Ordering::Acquire)))
            .collect()
    }

    pub fn total_pending(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    pub fn watch_pending(&self) -> watch::Receiver<u64> {
        self.pending_changed.subscribe()
    }

    pub fn watch_names(&self) -> watch::Receiver<u64> {
        self.names_changed.subscribe()
    }
}

#[cfg(test)]
mod tests;
