//! Activity windows: turn stats pushed by many nodes into one verdict per service.
//! Pure; the gRPC and scrape adapters feed it, with the time of each push.
//!
//! Per node and service it remembers the last gauges and counters, when they came and
//! whether they showed nothing going on. A push from node N yields, per service it
//! mentions, `active = Σ_nodes open > 0 || N's counters moved`. A counter that went down
//! is a reset (the Envoy restarted): it becomes the new baseline and is not activity.
//!
//! Numbers that cannot be counts (negative, NaN, infinite) are refused and counted, not
//! stored: a sender cannot make open connections cancel out or vanish. A node that sends
//! nothing for a while is forgotten ([`Windows::expire`]), as one whose stream ended is.

// FxHash: every key is a node the streams admitted or a tracked service (the
// collector drops the rest), so no input can choose keys to collide, and a push looks up
// 10,000 of them.
use rustc_hash::FxHashMap as HashMap;
use std::time::{Duration, Instant};

use crate::model::{Observation, Stats};

/// Per-service verdicts from one push.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdicts {
    /// Services with Envoy stats in this push, and whether they show activity.
    pub samples: Vec<(String, bool)>,
    /// Services whose pending count (summed over holders) changed, with the new sum.
    pub pending: Vec<(String, f64)>,
    /// Observations refused: a value that cannot be a count.
    pub rejected: usize,
}

#[derive(Debug, Default)]
pub struct Windows {
    nodes: HashMap<String, Node>,
}

/// One node's last Envoy sample of one service.
#[derive(Debug, Clone, Copy)]
struct Sample {
    stats: Stats,
    at: Instant,
    /// Nothing open on this node and no counter moved since its previous sample.
    idle: bool,
}

#[derive(Debug)]
struct Node {
    envoy: HashMap<String, Sample>,
    pending: HashMap<String, f64>,
    last_seen: Instant,
}

fn is_count(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn plausible(o: &Observation) -> bool {
    match o {
        Observation::Envoy(s) => is_count(s.open) && s.counters.iter().all(|c| is_count(*c)),
        Observation::HolderPending(v) => is_count(*v),
    }
}

impl Windows {
    /// Record one push from `node` at `now` and return what it says per service.
    pub fn observe(
        &mut self,
        node: &str,
        observations: impl IntoIterator<Item = (String, Observation)>,
        now: Instant,
    ) -> Verdicts {
        let mut out = Verdicts::default();
        let mut moved: Vec<(String, bool)> = Vec::new();
        let mut pending_changed = Vec::new();
        {
            let n = match self.nodes.get_mut(node) {
                Some(n) => n,
                None => self.nodes.entry(node.to_string()).or_insert(Node {
                    envoy: HashMap::default(),
                    pending: HashMap::default(),
                    last_seen: now,
                }),
            };
            n.last_seen = now;
            for (service, obs) in observations {
                if !plausible(&obs) {
                    out.rejected += 1;
                    continue;
                }
                match obs {
                    Observation::Envoy(stats) => {
                        let sample = Sample {
                            stats,
                            at: now,
                            idle: false,
                        };
                        // Insert a key only for a service new to this node: the key
                        // clone is the costly part when a push names 10,000 services.
                        let (prev, slot) = match n.envoy.get_mut(&service) {
                            Some(slot) => (Some(std::mem::replace(slot, sample)), slot),
                            None => (None, n.envoy.entry(service.clone()).or_insert(sample)),
                        };
                        // The first sample from a node is a baseline, not movement.
                        let counters_moved = prev.is_some_and(|p| {
                            stats
                                .counters
                                .iter()
                                .zip(p.stats.counters.iter())
                                .any(|(c, p)| c > p)
                        });
                        slot.idle = !counters_moved && stats.open == 0.0;
                        moved.push((service, counters_moved));
                    }
                    Observation::HolderPending(v) => {
                        let prev = match n.pending.get_mut(&service) {
                            Some(slot) => Some(std::mem::replace(slot, v)),
                            None => n.pending.insert(service.clone(), v),
                        };
                        if prev != Some(v) {
                            pending_changed.push(service);
                        }
                    }
                }
            }
        }
        for (service, counters_moved) in moved {
            let active = counters_moved || self.open(&service) > 0.0;
            out.samples.push((service, active));
        }
        for service in pending_changed {
            let sum = self.pending(&service);
            out.pending.push((service, sum));
        }
        out
    }

    /// Forget a node whose stream ended: its open connections no longer count. Returns the
    /// services whose pending sum changed.
    pub fn remove_node(&mut self, node: &str) -> Vec<(String, f64)> {
        let Some(n) = self.nodes.remove(node) else {
            return Vec::new();
        };
        n.pending
            .into_iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(s, _)| {
                let sum = self.pending(&s);
                (s, sum)
            })
            .collect()
    }

    /// Forget every node that has sent nothing for `max_age` (a peer gone silent without
    /// closing its stream): its numbers no longer count. Returns the nodes forgotten and
    /// the services whose pending sum changed.
    pub fn expire(&mut self, now: Instant, max_age: Duration) -> (Vec<String>, Vec<(String, f64)>) {
        let silent: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| now.saturating_duration_since(n.last_seen) >= max_age)
            .map(|(name, _)| name.clone())
            .collect();
        let mut pending = Vec::new();
        for node in &silent {
            pending.extend(self.remove_node(node));
        }
        (silent, pending)
    }

    /// Every node that reports Envoy stats for `service` has sent a sample after `after`,
    /// and each of those shows nothing open and no counter moved: nothing is going on at
    /// any Envoy since then. (At least one node must have reported it.)
    pub fn settled(&self, service: &str, after: Instant) -> bool {
        let mut any = false;
        for n in self.nodes.values() {
            if let Some(s) = n.envoy.get(service) {
                if s.at <= after || !s.idle {
                    return false;
                }
                any = true;
            }
        }
        any
    }

    fn open(&self, service: &str) -> f64 {
        self.nodes
            .values()
            .filter_map(|n| n.envoy.get(service))
            .map(|s| s.stats.open)
            .sum()
    }

    fn pending(&self, service: &str) -> f64 {
        self.nodes
            .values()
            .filter_map(|n| n.pending.get(service))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envoy(open: f64, c: f64) -> Observation {
        Observation::Envoy(Stats {
            open,
            counters: [c, 0.0, 0.0, 0.0],
        })
    }

    fn one(w: &mut Windows, node: &str, svc: &str, o: Observation) -> Verdicts {
        w.observe(node, [(svc.to_string(), o)], crate::test_clock::origin())
    }

    #[test]
    fn first_sample_is_a_baseline_then_movement_is_activity() {
        let mut w = Windows::default();
        assert_eq!(
            one(&mut w, "a", "s", envoy(0.0, 10.0)).samples,
            [("s".into(), false)]
        );
        assert_eq!(
            one(&mut w, "a", "s", envoy(0.0, 10.0)).samples,
            [("s".into(), false)]
        );
        assert_eq!(
            one(&mut w, "a", "s", envoy(0.0, 11.0)).samples,
            [("s".into(), true)]
        );
    }

    #[test]
    fn counter_reset_is_not_activity() {
        let mut w = Windows::default();
        one(&mut w, "a", "s", envoy(0.0, 500.0));
        assert_eq!(
            one(&mut w, "a", "s", envoy(0.0, 3.0)).samples,
            [("s".into(), false)]
        );
        assert_eq!(
            one(&mut w, "a", "s", envoy(0.0, 4.0)).samples,
            [("s".into(), true)]
        );
    }

    #[test]
    fn open_connections_are_summed_over_nodes() {
        let mut w = Windows::default();
        one(&mut w, "a", "s", envoy(1.0, 1.0));
        // Node b is idle, but a still holds a connection open: the service is active.
        assert_eq!(
            one(&mut w, "b", "s", envoy(0.0, 1.0)).samples,
            [("s".into(), true)]
        );
        // Once a's stream ends its open connection no longer counts.
        w.remove_node("a");
        assert_eq!(
            one(&mut w, "b", "s", envoy(0.0, 1.0)).samples,
            [("s".into(), false)]
        );
    }

    #[test]
    fn pending_reports_only_changes_summed_over_holders() {
        let mut w = Windows::default();
        let p = |v| Observation::HolderPending(v);
        assert_eq!(one(&mut w, "h1", "s", p(2.0)).pending, [("s".into(), 2.0)]);
        assert_eq!(one(&mut w, "h1", "s", p(2.0)).pending, []);
        assert_eq!(one(&mut w, "h2", "s", p(1.0)).pending, [("s".into(), 3.0)]);
        assert_eq!(w.remove_node("h1"), [("s".into(), 1.0)]);
    }

    fn at(w: &mut Windows, node: &str, svc: &str, o: Observation, t: Instant) -> Verdicts {
        w.observe(node, [(svc.to_string(), o)], t)
    }

    #[test]
    fn values_that_cannot_be_counts_are_refused_and_change_nothing() {
        let mut w = Windows::default();
        let t = crate::test_clock::origin();
        at(&mut w, "a", "s", envoy(1.0, 1.0), t);
        for bad in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            // An open count of -1 from node b would cancel a's open connection.
            let v = at(&mut w, "b", "s", envoy(bad, 1.0), t);
            assert_eq!((v.rejected, v.samples.len()), (1, 0), "{bad}");
            let v = at(&mut w, "h", "s", Observation::HolderPending(bad), t);
            assert_eq!((v.rejected, v.pending.len()), (1, 0), "{bad}");
            let v = at(&mut w, "b", "s", envoy(0.0, bad), t);
            assert_eq!(v.rejected, 1, "counter {bad}");
        }
        assert_eq!(
            at(&mut w, "c", "s", envoy(0.0, 1.0), t).samples,
            [("s".into(), true)],
            "a's connection still counts"
        );
    }

    #[test]
    fn a_silent_node_expires_and_its_numbers_stop_counting() {
        let mut w = Windows::default();
        let t0 = crate::test_clock::origin();
        at(&mut w, "a", "s", envoy(1.0, 1.0), t0);
        at(&mut w, "h", "s", Observation::HolderPending(2.0), t0);
        at(
            &mut w,
            "b",
            "s",
            envoy(0.0, 1.0),
            t0 + Duration::from_secs(20),
        );
        let (gone, pending) = w.expire(t0 + Duration::from_secs(29), Duration::from_secs(30));
        assert!(gone.is_empty() && pending.is_empty());
        let (mut gone, pending) = w.expire(t0 + Duration::from_secs(30), Duration::from_secs(30));
        gone.sort();
        assert_eq!(gone, ["a", "h"]);
        assert_eq!(pending, [("s".into(), 0.0)]);
        assert_eq!(
            at(
                &mut w,
                "b",
                "s",
                envoy(0.0, 1.0),
                t0 + Duration::from_secs(31)
            )
            .samples,
            [("s".into(), false)],
            "a's open connection no longer counts"
        );
    }

    #[test]
    fn settled_needs_an_idle_sample_from_every_node_after_the_instant() {
        let mut w = Windows::default();
        let t0 = crate::test_clock::origin();
        let s = |x: u64| t0 + Duration::from_secs(x);
        assert!(!w.settled("s", t0), "nobody reported it");
        at(&mut w, "a", "s", envoy(0.0, 5.0), s(1));
        at(&mut w, "b", "s", envoy(0.0, 7.0), s(1));
        let ack = s(2);
        at(&mut w, "a", "s", envoy(0.0, 5.0), s(3));
        assert!(!w.settled("s", ack), "b's last sample predates the ACK");
        // b's sample after the ACK shows a connection opened just before it.
        at(&mut w, "b", "s", envoy(1.0, 8.0), s(3));
        assert!(!w.settled("s", ack));
        at(&mut w, "b", "s", envoy(0.0, 8.0), s(4));
        assert!(w.settled("s", ack), "both idle since the ACK");
        // A counter that moves is not idle, even with nothing open now.
        at(&mut w, "a", "s", envoy(0.0, 6.0), s(5));
        assert!(!w.settled("s", ack));
    }
}
