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
//!
//! The registry (`hold`) starts a probe with the service's hold queue (`queue`) as
//! connections arrive and policies change; the probe reads and sets that queue only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::debug;
use zenvoy_base::{Backoff, Knock, PortProbe};

use crate::queue::Queue;

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

/// The holder's probes, all services together: how many threads run, and what they
/// count. The registry owns one and starts each probe with it.
#[derive(Debug, Default)]
pub(crate) struct Probes {
    /// Probe threads running now (at most [`MAX_PROBES`]).
    threads: AtomicUsize,
    /// Of them, those watching a port they saw closed (`zenvoy_holder_probes`).
    pub(crate) watching: Gauge,
    /// The times a probe released a service's held connections
    /// (`zenvoy_holder_self_dials_total`).
    pub(crate) self_dials: Counter,
}

impl Probes {
    /// Register the gauge and the counter (`zenvoy_holder_probes`,
    /// `zenvoy_holder_self_dials_total`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("zenvoy_holder");
        r.register(
            "probes",
            "Services whose upstream port the holder watches itself, seen closed, waiting for it to accept (a tcp-ready service with a fixed address)",
            self.watching.clone(),
        );
        r.register(
            "self_dials",
            "Times the holder saw a waking upstream start accepting and released its held connections before the controller's assignment",
            self.self_dials.clone(),
        );
    }
}

/// Start a probe of `service` if it waits (connections held, no endpoint), its policy
/// names a dial address, and none runs yet.
pub(crate) fn start_if_waiting(probes: &Arc<Probes>, service: &str, queue: &Arc<Queue>) {
    let (dial, hold_timeout) = {
        let s = queue.state.borrow();
        match s.policy.and_then(|p| p.dial.map(|d| (d, p.hold_timeout))) {
            Some(x) if s.endpoints.is_empty() => x,
            _ => return,
        }
    };
    if queue.pending.load(Ordering::Acquire) == 0 || queue.probing.swap(true, Ordering::AcqRel) {
        return;
    }
    if probes.threads.fetch_add(1, Ordering::AcqRel) >= MAX_PROBES {
        done(probes, queue);
        return;
    }
    let (thread_probes, thread_queue, service) =
        (probes.clone(), queue.clone(), service.to_string());
    let spawned = std::thread::Builder::new()
        .name("zenvoy-probe".into())
        .spawn(move || {
            let until = Instant::now() + hold_timeout;
            if watch(
                &service,
                &thread_queue,
                dial,
                until,
                &thread_probes.watching,
            ) {
                thread_probes.self_dials.inc();
            }
            done(&thread_probes, &thread_queue);
        });
    if spawned.is_err() {
        done(probes, queue);
    }
}

/// A probe of `queue` ends (or never started): another may start.
fn done(probes: &Probes, queue: &Queue) {
    queue.probing.store(false, Ordering::Release);
    probes.threads.fetch_sub(1, Ordering::AcqRel);
}

/// Try `dial` until it accepts after refusing (then it is the endpoint: true), or accepts
/// at once, or the service stops waiting, or `until`. Counted in `watching` from the
/// first refusal to the end.
fn watch(service: &str, queue: &Queue, dial: SocketAddr, until: Instant, watching: &Gauge) -> bool {
    let waiting = || {
        let s = queue.state.borrow();
        queue.pending.load(Ordering::Acquire) > 0
            && s.endpoints.is_empty()
            && s.policy.and_then(|p| p.dial) == Some(dial)
    };
    let port = PortProbe::new(dial, CONNECT_TIMEOUT);
    let mut closed = false;
    let started = Instant::now();
    // Every PROBE_INTERVAL for FAST_FOR; after that each pause doubles, up to
    // SLOW_INTERVAL. The first pause counts as the backoff's first step, so the first
    // one after the fast phase is twice PROBE_INTERVAL.
    let mut slowing = Backoff::new(PROBE_INTERVAL, SLOW_INTERVAL);
    let mut pause = slowing.failed();
    let released = loop {
        if !waiting() || Instant::now() >= until {
            break false;
        }
        match port.knock() {
            Knock::Accepted if closed => {
                let set = queue.state.send_if_modified(|s| {
                    let empty = s.endpoints.is_empty();
                    if empty {
                        s.endpoints = vec![dial];
                    }
                    empty
                });
                debug!(service, %dial, set, "upstream started accepting; relaying held connections");
                break set;
            }
            Knock::Accepted => {
                debug!(service, %dial, "upstream accepts already; left to the controller");
                break false;
            }
            Knock::Refused if !closed => {
                closed = true;
                watching.inc();
                queue.seen_closed.store(true, Ordering::Release);
            }
            Knock::Refused | Knock::NoAnswer => {}
        }
        std::thread::sleep(pause);
        if started.elapsed() >= FAST_FOR {
            pause = slowing.failed();
        }
    };
    if closed {
        watching.dec();
    }
    released
}
