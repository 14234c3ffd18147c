//! The tracked services: those the controller knows right now, by name, with their
//! protocol; what the metrics readers (push and scrape) use to tell a stat of ours from
//! anything else. The planner's `Effect::Track` and `Effect::Untrack` keep it.
//!
//! Fixed after start with the process backend; the Kubernetes backend adds and removes
//! services as annotated Services come and go. Written by the runtime only, read per
//! sample by the readers: an uncontended read lock costs tens of nanoseconds.

use std::sync::{PoisonError, RwLock};

// FxHash: its keys are the services the config or the API named; a push looks up each of
// its 10,000 clusters, and a lookup of a made-up name (a push may carry anything) costs
// one probe whatever its hash.
use rustc_hash::FxHashMap as HashMap;

use zenvoy_core::model::Protocol;

#[derive(Debug, Default)]
pub struct Tracked {
    services: RwLock<HashMap<String, Protocol>>,
}

impl Tracked {
    pub fn new(services: impl IntoIterator<Item = (String, Protocol)>) -> Self {
        Tracked {
            services: RwLock::new(services.into_iter().collect()),
        }
    }

    pub fn get(&self, name: &str) -> Option<Protocol> {
        self.read(|m| m.get(name).copied())
    }

    /// Read the whole map under one lock (one push or page is read under one lock).
    pub fn read<T>(&self, f: impl FnOnce(&HashMap<String, Protocol>) -> T) -> T {
        f(&self.services.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn insert(&self, name: &str, protocol: Protocol) {
        self.services
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), protocol);
    }

    pub fn remove(&self, name: &str) {
        self.services
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }
}
