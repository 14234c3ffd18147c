//! The holder's own look at a waking upstream. For a service whose readiness is its port
//! accepting, the controller puts the upstream's address on the holder endpoint (`dial`
//! in the hold policy). While connections for it are held and no endpoint is known, a
//! thread tries that address every [`PROBE_INTERVAL`] (for [`FAST_FOR`], then less and
//! less often: a process that starts in milliseconds is caught at once, one that takes
//! longer costs nothing to watch); once a listener appears where the
//! port refused, it gives the service that address as its endpoint, and the held
//! connections are relayed at once instead of after the controller's own probe, its
//! publish and an xDS round trip (~0.3 ms of every wake on a small machine).
//!
//! Only an accept that follows a refusal counts: a port that accepts at the first try
//! belongs to an instance that ran before (a park still stopping it, or one that already
//! runs), and what to do with it is the controller's call, so the probe stops there.
//!
//! A thread, not a task: tokio's timers tick in milliseconds, which alone would cost more
//! than the round trip saved. Bounded: one thread per service at most, [`MAX_PROBES`] in
//! all, each ending with the hold timeout, the last held connection, or any endpoint.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tracing::debug;

use crate::hold::{Hold, Slot};

/// How often a waking upstream's port is tried at first.
pub const PROBE_INTERVAL: Duration = Duration::from_micros(100);
/// How long it is tried that often; after that the pause doubles up to [`SLOW_INTERVAL`].
/// A thread trying a closed port every 100 µs costs a few percent of a core: many of
/// them, for long, would slow everything else on the machine.
pub const FAST_FOR: Duration = Duration::from_millis(10);
pub const SLOW_INTERVAL: Duration = Duration::from_millis(10);
/// Probe threads at once; past it, services wait for the controller as before (a
/// burst of wakes of processes that do not listen yet must not fill the cores with them).
pub const MAX_PROBES: usize = 4;
/// One try's bound (a loopback or LAN connect answers in microseconds).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Start a probe of `service` if it waits (connections held, no endpoint), its policy
/// names a dial address, and none runs yet.
pub(crate) fn start_if_waiting(hold: &Arc<Hold>, service: &str, slot: &Arc<Slot>) {
    let (dial, hold_timeout) = {
        let s = slot.state.borrow();
        match s.policy.and_then(|p| p.dial.map(|d| (d, p.hold_timeout))) {
            Some(x) if s.endpoints.is_empty() => x,
            _ => return,
        }
    };
    if slot.pending.load(Ordering::Acquire) == 0 || slot.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    if hold.probe_threads.fetch_add(1, Ordering::AcqRel) >= MAX_PROBES {
        done(hold, slot);
        return;
    }
    let (thread_hold, thread_slot, service) = (hold.clone(), slot.clone(), service.to_string());
    let spawned = std::thread::Builder::new()
        .name("zenvoy-probe".into())
        .spawn(move || {
            let until = Instant::now() + hold_timeout;
            if watch(&service, &thread_slot, dial, until, &thread_hold.probes) {
                thread_hold.self_dials.inc();
            }
            done(&thread_hold, &thread_slot);
        });
    if spawned.is_err() {
        done(hold, slot);
    }
}

/// A probe of `slot` ends (or never started): another may start.
fn done(hold: &Hold, slot: &Slot) {
    slot.probing.store(false, Ordering::Release);
    hold.probe_threads.fetch_sub(1, Ordering::AcqRel);
}

/// Try `dial` until it accepts after refusing (then it is the endpoint: true), or accepts
/// at once, or the service stops waiting, or `until`. Counted in `watching` from the
/// first refusal to the end.
fn watch(service: &str, slot: &Slot, dial: SocketAddr, until: Instant, watching: &Gauge) -> bool {
    let waiting = || {
        let s = slot.state.borrow();
        slot.pending.load(Ordering::Acquire) > 0
            && s.endpoints.is_empty()
            && s.policy.and_then(|p| p.dial) == Some(dial)
    };
    let mut closed = false;
    let started = Instant::now();
    let mut pause = PROBE_INTERVAL;
    let released = loop {
        if !waiting() || Instant::now() >= until {
            break false;
        }
        match std::net::TcpStream::connect_timeout(&dial, CONNECT_TIMEOUT) {
            Ok(_) if closed => {
                let set = slot.state.send_if_modified(|s| {
                    let empty = s.endpoints.is_empty();
                    if empty {
                        s.endpoints = vec![dial];
                    }
                    empty
                });
                debug!(service, %dial, set, "upstream started accepting; relaying held connections");
                break set;
            }
            Ok(_) => {
                debug!(service, %dial, "upstream accepts already; left to the controller");
                break false;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && !closed => {
                closed = true;
                watching.inc();
                slot.seen_closed.store(true, Ordering::Release);
            }
            Err(_) => {}
        }
        std::thread::sleep(pause);
        if started.elapsed() >= FAST_FOR {
            pause = (pause * 2).min(SLOW_INTERVAL);
        }
    };
    if closed {
        watching.dec();
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::{Limits, ServicePolicy};

    fn policy(dial: SocketAddr) -> ServicePolicy {
        ServicePolicy {
            hold_timeout: Duration::from_secs(30),
            max_pending: 10,
            dial: Some(dial),
        }
    }

    /// A port nothing listens on now.
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    /// Poll `f` every millisecond for at most 10 s.
    fn wait(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_port_that_starts_accepting_becomes_the_endpoint_of_the_held() {
        let h = Hold::new(Limits::default());
        let dial = closed_port();
        let ticket = h.admit("svc").expect("admit");
        let state = ticket.state();
        h.set_state("svc", Vec::new(), Some(policy(dial)));
        wait("the probe to see the port closed", || {
            h.probe_saw_closed("svc")
        });
        let _listener = std::net::TcpListener::bind(dial).expect("the upstream listens");
        wait("the dial address as the endpoint", || {
            state.borrow().endpoints == [dial]
        });
        wait("the probe to end", || !h.probing("svc"));
        assert_eq!(h.self_dials.get(), 1);
        assert_eq!(h.probes.get(), 0, "no longer watching");
    }

    #[test]
    fn a_port_that_accepts_at_once_is_left_to_the_controller() {
        let h = Hold::new(Limits::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dial = listener.local_addr().expect("addr");
        let ticket = h.admit("svc").expect("admit");
        h.set_state("svc", Vec::new(), Some(policy(dial)));
        wait("the probe to end", || !h.probing("svc"));
        assert!(
            ticket.state().borrow().endpoints.is_empty(),
            "an instance that already listened is not taken for a fresh start"
        );
        assert_eq!(h.self_dials.get(), 0);
    }

    #[test]
    fn no_dial_address_or_nothing_held_starts_no_probe() {
        let h = Hold::new(Limits::default());
        let dial = closed_port();
        // A policy before any connection: nothing to probe for.
        h.set_state("idle", Vec::new(), Some(policy(dial)));
        assert!(!h.probing("idle"));
        // Held, without a dial address.
        let _t = h.admit("plain").expect("admit");
        h.set_state(
            "plain",
            Vec::new(),
            Some(ServicePolicy {
                dial: None,
                ..policy(dial)
            }),
        );
        assert!(!h.probing("plain"));
        // Held with one: probing until the connection goes.
        let t = h.admit("svc").expect("admit");
        h.set_state("svc", Vec::new(), Some(policy(dial)));
        assert!(h.probing("svc"));
        drop(t);
        wait("the probe to end with the last held connection", || {
            !h.probing("svc")
        });
    }
}
