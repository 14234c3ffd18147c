//! The hold registry: per service, how many connections wait and which upstream
//! endpoints are known. Connection tasks take a [`Ticket`] while they wait; the xDS client
//! fills in endpoints; the metrics pusher watches the pending counts.
//!
//! Bounds: pending connections per service and in total, and the number of distinct
//! services (names come from PROXY headers, so a flood of made-up names must not grow
//! memory without bound).
//!
//! A service whose policy carries a dial address (its readiness is its port accepting)
//! is also watched by the holder itself while connections wait: see [`crate::probe`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

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

/// A service's policy as the controller's config sets it (from the holder endpoint's
/// metadata); until it arrives the holder's own flags apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePolicy {
    pub hold_timeout: Duration,
    pub max_pending: usize,
    /// The upstream the holder may dial on its own once it accepts (see `probe`).
    pub dial: Option<SocketAddr>,
}

/// What a waiting connection watches: the service's endpoints (empty while parked) and
/// its policy once known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    pub endpoints: Vec<SocketAddr>,
    pub policy: Option<ServicePolicy>,
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) pending: AtomicUsize,
    pub(crate) state: watch::Sender<SlotState>,
    /// A probe thread watches the dial address now (see `probe`).
    pub(crate) probing: AtomicBool,
    /// The probe saw the dial address refuse a connection (for tests).
    pub(crate) seen_closed: AtomicBool,
}

#[derive(Debug)]
pub struct Hold {
    limits: Limits,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    total: AtomicUsize,
    /// Bumped on every pending change: the pusher sends at once.
    pending_changed: watch::Sender<u64>,
    /// Bumped when a service gets its first held connection or loses its last: the xDS
    /// client changes its subscription.
    names_changed: watch::Sender<u64>,
    /// Probe threads running now (bounded by `probe::MAX_PROBES`); of them, those
    /// watching a port they saw closed (`zenvoy_holder_probes`); and the times a probe
    /// released a service's held connections (`zenvoy_holder_self_dials_total`).
    pub(crate) probe_threads: AtomicUsize,
    pub(crate) probes: Gauge,
    pub(crate) self_dials: Counter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A held connection's place in its service's queue. Dropping it (relay started, client
/// gone, timeout) releases the place and tells the controller.
#[derive(Debug)]
pub struct Ticket {
    hold: Arc<Hold>,
    slot: Arc<Slot>,
}

impl Ticket {
    /// The service's endpoints (empty while parked) and policy.
    pub fn state(&self) -> watch::Receiver<SlotState> {
        self.slot.state.subscribe()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let slots = lock(&self.hold.slots);
        let was = self.slot.pending.fetch_sub(1, Ordering::AcqRel);
        if was == 1 {
            // The last held connection of this service is gone: the xDS client may drop
            // the subscription (see `forget_endpoints`).
            self.hold.names_changed.send_modify(|g| *g += 1);
        }
        drop(slots);
        self.hold.total.fetch_sub(1, Ordering::AcqRel);
        self.hold.pending_changed.send_modify(|g| *g += 1);
    }
}

impl Hold {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Hold {
            limits,
            slots: Mutex::default(),
            total: AtomicUsize::new(0),
            pending_changed: watch::Sender::new(0),
            names_changed: watch::Sender::new(0),
            probe_threads: AtomicUsize::new(0),
            probes: Gauge::default(),
            self_dials: Counter::default(),
        })
    }

    /// Take a place in `service`'s queue, or say why not.
    pub fn admit(self: &Arc<Self>, service: &str) -> Result<Ticket, Refused> {
        let mut slots = lock(&self.slots);
        let slot = match slots.get(service) {
            Some(s) => s.clone(),
            None => {
                if slots.len() >= self.limits.max_services {
                    return Err(Refused::TooManyServices(slots.len()));
                }
                let s = Arc::new(Slot::default());
                slots.insert(service.to_string(), s.clone());
                s
            }
        };
        // Reserve, then check: concurrent admits can never overshoot a limit.
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.limits.max_pending_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::HolderFull(total));
        }
        let max = slot
            .state
            .borrow()
            .policy
            .map_or(self.limits.max_pending_per_service, |p| p.max_pending);
        let pending = slot.pending.fetch_add(1, Ordering::AcqRel);
        if pending >= max {
            slot.pending.fetch_sub(1, Ordering::AcqRel);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::ServiceFull(pending));
        }
        if pending == 0 {
            // First held connection: the xDS client subscribes to the service.
            self.names_changed.send_modify(|g| *g += 1);
        }
        drop(slots);
        self.pending_changed.send_modify(|g| *g += 1);
        crate::probe::start_if_waiting(self, service, &slot);
        Ok(Ticket {
            hold: self.clone(),
            slot,
        })
    }

    /// Endpoints for `service` from the controller (empty: parked), and its policy when
    /// the assignment carries one (a policy once known is kept).
    pub fn set_state(
        self: &Arc<Self>,
        service: &str,
        endpoints: Vec<SocketAddr>,
        policy: Option<ServicePolicy>,
    ) {
        let slot = lock(&self.slots).get(service).cloned();
        if let Some(slot) = slot {
            slot.state.send_if_modified(|s| {
                let next = SlotState {
                    endpoints,
                    policy: policy.or(s.policy),
                };
                let changed = *s != next;
                *s = next;
                changed
            });
            crate::probe::start_if_waiting(self, service, &slot);
        }
    }

    /// Register the probes' gauge and counter (`zenvoy_holder_probes`,
    /// `zenvoy_holder_self_dials_total`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("zenvoy_holder");
        r.register(
            "probes",
            "Services whose upstream port the holder watches itself, seen closed, waiting for it to accept (a tcp-ready service with a fixed address)",
            self.probes.clone(),
        );
        r.register(
            "self_dials",
            "Times the holder saw a waking upstream start accepting and released its held connections before the controller's assignment",
            self.self_dials.clone(),
        );
    }

    /// Whether the probe of `service` has seen its dial address refuse (for tests).
    #[cfg(test)]
    pub(crate) fn probe_saw_closed(&self, service: &str) -> bool {
        lock(&self.slots)
            .get(service)
            .is_some_and(|s| s.seen_closed.load(Ordering::Acquire))
    }

    /// Whether a probe of `service` runs now (for tests).
    #[cfg(test)]
    pub(crate) fn probing(&self, service: &str) -> bool {
        lock(&self.slots)
            .get(service)
            .is_some_and(|s| s.probing.load(Ordering::Acquire))
    }

    /// The xDS client no longer subscribes to `services`, so their endpoints will not be
    /// kept current: forget each one that holds no connection (one held for meanwhile is
    /// back in the next subscription, and its endpoints are as fresh as a moment ago).
    /// Its slot goes too, freeing its place among `max_services`: a holder that sees
    /// services come and go must not refuse new ones once it has seen `max_services`
    /// names. The next connection for it waits for a fresh assignment instead of dialing
    /// a service that may have been parked since; until that assignment brings the
    /// service's policy (milliseconds), the holder's flags apply to it.
    pub fn forget_endpoints(&self, services: &[String]) {
        let mut slots = lock(&self.slots);
        for name in services {
            if slots
                .get(name)
                .is_some_and(|s| s.pending.load(Ordering::Acquire) == 0)
            {
                slots.remove(name);
            }
        }
    }

    /// Forget the endpoints of every service without held connections (a new xDS stream
    /// will not subscribe to them).
    pub fn forget_unheld_endpoints(&self) {
        let names: Vec<String> = lock(&self.slots).keys().cloned().collect();
        self.forget_endpoints(&names);
    }

    /// The services with held connections now (the xDS subscription), sorted. Only these:
    /// a holder that has seen thousands of services must not make every request and
    /// every ACK carry all their names.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.slots)
            .iter()
            .filter(|(_, s)| s.pending.load(Ordering::Acquire) > 0)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// Pending count per service.
    pub fn pending(&self) -> Vec<(String, usize)> {
        lock(&self.slots)
            .iter()
            .map(|(n, s)| (n.clone(), s.pending.load(Ordering::Acquire)))
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
mod tests {
    use super::*;

    fn hold(per: usize, total: usize, services: usize) -> Arc<Hold> {
        Hold::new(Limits {
            max_pending_per_service: per,
            max_pending_total: total,
            max_services: services,
        })
    }

    #[test]
    fn limits_refuse_and_tickets_release() {
        let h = hold(2, 3, 2);
        let a1 = h.admit("a").expect("first");
        let _a2 = h.admit("a").expect("second");
        assert_eq!(h.admit("a").err(), Some(Refused::ServiceFull(2)));
        let _b1 = h.admit("b").expect("b");
        assert_eq!(h.admit("b").err(), Some(Refused::HolderFull(3)));
        assert_eq!(h.admit("c").err(), Some(Refused::TooManyServices(2)));
        drop(a1);
        assert_eq!(h.total_pending(), 2);
        let _a3 = h.admit("a").expect("a place was freed");
    }

    #[test]
    fn the_subscription_is_the_services_with_held_connections() {
        let h = hold(10, 10, 10);
        let mut pending = h.watch_pending();
        let mut names = h.watch_names();
        let t1 = h.admit("svc").expect("admit");
        assert!(pending.has_changed().expect("open"));
        assert!(
            names.has_changed().expect("open"),
            "first connection: subscribe"
        );
        assert_eq!(h.names(), vec!["svc".to_string()]);
        pending.mark_unchanged();
        names.mark_unchanged();
        let t2 = h.admit("svc").expect("admit");
        assert!(pending.has_changed().expect("open"));
        assert!(!names.has_changed().expect("open"), "second: no change");
        drop(t1);
        assert!(!names.has_changed().expect("open"), "one still held");
        pending.mark_unchanged();
        drop(t2);
        assert!(pending.has_changed().expect("open"));
        assert!(
            names.has_changed().expect("open"),
            "last one gone: unsubscribe"
        );
        assert!(h.names().is_empty());
        assert_eq!(h.pending(), vec![("svc".to_string(), 0)]);
    }

    #[test]
    fn endpoints_are_forgotten_when_the_subscription_drops() {
        let h = hold(10, 10, 10);
        let ep: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let policy = ServicePolicy {
            hold_timeout: Duration::from_secs(1),
            max_pending: 5,
            dial: None,
        };
        let t = h.admit("svc").expect("admit");
        h.set_state("svc", vec![ep], Some(policy));
        drop(t);
        // Still subscribed (the xDS client has not sent the change yet): still current.
        let t = h.admit("svc").expect("admit");
        assert_eq!(t.state().borrow().endpoints, vec![ep]);
        // Forgetting a service that holds a connection again does nothing.
        h.forget_endpoints(&["svc".to_string()]);
        assert_eq!(t.state().borrow().endpoints, vec![ep]);
        drop(t);
        // Unsubscribed: these endpoints will not be kept current, so a new connection
        // must wait for a fresh assignment (which brings the policy again).
        h.forget_endpoints(&["svc".to_string()]);
        let t = h.admit("svc").expect("admit");
        let state = t.state().borrow().clone();
        assert_eq!(state, SlotState::default());
        let _ = policy;
    }

    #[test]
    fn a_forgotten_service_frees_its_place_among_max_services() {
        let h = hold(10, 10, 2);
        for name in ["a", "b", "c", "d"] {
            let t = h.admit(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            drop(t);
            // The xDS client drops the subscription of a service with nothing held.
            h.forget_endpoints(&[name.to_string()]);
        }
        // Two held at once still fill the holder's two places.
        let _a = h.admit("a").expect("a");
        let _b = h.admit("b").expect("b");
        assert_eq!(h.admit("c").err(), Some(Refused::TooManyServices(2)));
    }

    #[test]
    fn a_new_xds_stream_forgets_endpoints_of_services_without_connections() {
        let h = hold(10, 10, 10);
        let ep: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let held = h.admit("held").expect("admit");
        let gone = h.admit("gone").expect("admit");
        h.set_state("held", vec![ep], None);
        h.set_state("gone", vec![ep], None);
        drop(gone);
        h.forget_unheld_endpoints();
        assert_eq!(held.state().borrow().endpoints, vec![ep]);
        let again = h.admit("gone").expect("admit");
        assert!(again.state().borrow().endpoints.is_empty());
    }

    #[test]
    fn endpoints_reach_waiting_tickets() {
        let h = hold(10, 10, 10);
        let t = h.admit("svc").expect("admit");
        let rx = t.state();
        assert!(rx.borrow().endpoints.is_empty());
        let ep: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        h.set_state("svc", vec![ep], None);
        assert_eq!(rx.borrow().endpoints, vec![ep]);
    }

    #[test]
    fn the_controllers_policy_replaces_the_flag_default() {
        let h = hold(10, 100, 10);
        let _t = h.admit("svc").expect("admit");
        let policy = ServicePolicy {
            hold_timeout: Duration::from_secs(1),
            max_pending: 2,
            dial: None,
        };
        h.set_state("svc", Vec::new(), Some(policy));
        let _t2 = h.admit("svc").expect("second of two");
        assert_eq!(h.admit("svc").err(), Some(Refused::ServiceFull(2)));
        // A later assignment without a policy (awake) keeps the known one.
        h.set_state("svc", Vec::new(), None);
        assert_eq!(h.admit("svc").err(), Some(Refused::ServiceFull(2)));
    }
}
