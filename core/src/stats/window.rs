//! Activity windows: turn stats pushed by many nodes into one verdict per service.
//! Pure; the gRPC and scrape adapters feed it.
//!
//! Per node and service it remembers the last gauges and counters. A push from node N
//! yields, per service it mentions, `active = Σ_nodes open > 0 || N's counters moved`.
//! A counter that went down is a reset (the Envoy restarted): it becomes the new baseline
//! and is not activity.

use std::collections::HashMap;

use crate::model::{Observation, Stats};

/// Per-service verdicts from one push.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verdicts {
    /// Services with Envoy stats in this push, and whether they show activity.
    pub samples: Vec<(String, bool)>,
    /// Services whose pending count (summed over holders) changed, with the new sum.
    pub pending: Vec<(String, f64)>,
}

#[derive(Debug, Default)]
pub struct Windows {
    nodes: HashMap<String, Node>,
}

#[derive(Debug, Default)]
struct Node {
    envoy: HashMap<String, Stats>,
    pending: HashMap<String, f64>,
}

impl Windows {
    /// Record one push from `node` and return what it says per service.
    pub fn observe(
        &mut self,
        node: &str,
        observations: impl IntoIterator<Item = (String, Observation)>,
    ) -> Verdicts {
        let mut out = Verdicts::default();
        let mut moved: Vec<(String, bool)> = Vec::new();
        let mut pending_changed = Vec::new();
        {
            let n = self.nodes.entry(node.to_string()).or_default();
            for (service, obs) in observations {
                match obs {
                    Observation::Envoy(now) => {
                        // Insert a key only for a service new to this node: the key
                        // clone is the costly part when a push names 10,000 services.
                        let prev = match n.envoy.get_mut(&service) {
                            Some(slot) => Some(std::mem::replace(slot, now)),
                            None => n.envoy.insert(service.clone(), now),
                        };
                        // The first sample from a node is a baseline, not movement.
                        let counters_moved = prev.is_some_and(|p| {
                            now.counters
                                .iter()
                                .zip(p.counters.iter())
                                .any(|(c, p)| c > p)
                        });
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

    fn open(&self, service: &str) -> f64 {
        self.nodes
            .values()
            .filter_map(|n| n.envoy.get(service))
            .map(|s| s.open)
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
        w.observe(node, [(svc.to_string(), o)])
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
}
