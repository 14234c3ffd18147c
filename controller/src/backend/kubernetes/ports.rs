//! `inCluster` proxy ports: one per fronted Service port, from `inCluster.ports`. Pure.
//!
//! A Service keeps its ports for its whole life and across controller restarts: each
//! allocation and release is journaled ([`Ports::take_changes`]) and written to the
//! `zenvoy-ports` ConfigMap (see `port_store`), and a starting controller reads it back
//! before it allocates anything ([`Ports::load`]).
//! A new Service gets the lowest free port, so allocation depends on nothing but what is
//! taken.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "every port of inCluster.ports {first}-{last} is taken ({taken} Services): widen the range"
)]
pub struct Exhausted {
    pub first: u16,
    pub last: u16,
    pub taken: usize,
}

#[derive(Debug, Clone)]
pub struct Ports {
    first: u16,
    last: u16,
    by_service: BTreeMap<String, u16>,
    taken: BTreeSet<u16>,
    /// Allocations (Some) and releases (None) since the last [`Ports::take_changes`].
    changes: Vec<(String, Option<u16>)>,
}

impl Ports {
    pub fn new((first, last): (u16, u16)) -> Self {
        Ports {
            first,
            last,
            by_service: BTreeMap::new(),
            taken: BTreeSet::new(),
            changes: Vec::new(),
        }
    }

    /// Ports read back from the API (service -> port). One outside the range, or one
    /// already held by another service, is dropped: that service gets a new one.
    pub fn load(&mut self, existing: impl IntoIterator<Item = (String, u16)>) -> Vec<String> {
        let mut dropped = Vec::new();
        for (service, port) in existing {
            let fits = (self.first..=self.last).contains(&port);
            if !fits || self.taken.contains(&port) || self.by_service.contains_key(&service) {
                dropped.push(service);
                continue;
            }
            self.taken.insert(port);
            self.by_service.insert(service, port);
        }
        dropped
    }

    /// `service`'s port: the one it has, else the lowest free one.
    ///
    /// # Errors
    /// [`Exhausted`] when every port of the range is taken.
    pub fn get_or_allocate(&mut self, service: &str) -> Result<u16, Exhausted> {
        if let Some(p) = self.by_service.get(service) {
            return Ok(*p);
        }
        let free = (self.first..=self.last).find(|p| !self.taken.contains(p));
        let Some(port) = free else {
            return Err(Exhausted {
                first: self.first,
                last: self.last,
                taken: self.taken.len(),
            });
        };
        self.taken.insert(port);
        self.by_service.insert(service.to_string(), port);
        self.changes.push((service.to_string(), Some(port)));
        Ok(port)
    }

    /// `service` is gone: its port is free again.
    pub fn release(&mut self, service: &str) {
        if let Some(p) = self.by_service.remove(service) {
            self.taken.remove(&p);
            self.changes.push((service.to_string(), None));
        }
    }

    pub fn get(&self, service: &str) -> Option<u16> {
        self.by_service.get(service).copied()
    }

    /// Every allocation, by service.
    pub fn all(&self) -> &BTreeMap<String, u16> {
        &self.by_service
    }

    /// What was allocated (Some) and released (None) since the last call, in order;
    /// what [`Ports::load`] read is not repeated.
    pub fn take_changes(&mut self) -> Vec<(String, Option<u16>)> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_port_kept_for_life_and_freed_on_release() {
        let mut p = Ports::new((20000, 20002));
        assert_eq!(p.get_or_allocate("a.x"), Ok(20000));
        assert_eq!(p.get_or_allocate("b.x"), Ok(20001));
        assert_eq!(p.get_or_allocate("a.x"), Ok(20000), "kept");
        p.release("a.x");
        assert_eq!(p.get_or_allocate("c.x"), Ok(20000), "reused");
        assert_eq!(p.get_or_allocate("d.x"), Ok(20002));
        assert_eq!(
            p.take_changes(),
            [
                ("a.x".to_string(), Some(20000)),
                ("b.x".to_string(), Some(20001)),
                ("a.x".to_string(), None),
                ("c.x".to_string(), Some(20000)),
                ("d.x".to_string(), Some(20002)),
            ],
            "each allocation and release once, in order"
        );
        assert_eq!(p.take_changes(), []);
        assert_eq!(
            p.get_or_allocate("e.x"),
            Err(Exhausted {
                first: 20000,
                last: 20002,
                taken: 3
            })
        );
    }

    #[test]
    fn ports_read_back_survive_a_restart_and_bad_ones_are_dropped() {
        let mut p = Ports::new((20000, 20009));
        let dropped = p.load([
            ("a.x".to_string(), 20005),
            ("b.x".to_string(), 20005), // taken by a.x
            ("c.x".to_string(), 19999), // outside the range
            ("d.x".to_string(), 20001),
        ]);
        assert_eq!(dropped, ["b.x", "c.x"]);
        assert_eq!(p.take_changes(), [], "what was read is not written back");
        assert_eq!(p.get("a.x"), Some(20005));
        assert_eq!(p.get_or_allocate("d.x"), Ok(20001), "as it was");
        assert_eq!(p.get_or_allocate("b.x"), Ok(20000), "a new one, not a.x's");
        assert_eq!(p.get_or_allocate("c.x"), Ok(20002));
    }
}
