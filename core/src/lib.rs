//! zenvoy-core: the controller's decisions, with no I/O. Everything here is synchronous
//! and takes the time as an argument; the controller crate's adapters (gRPC, HTTP,
//! Kubernetes, processes) feed it events and carry out what it returns.
//!
//! ```text
//!                 model (ServiceDef, Policy, Protocol, Event, Endpoints)
//!                   ^            ^              ^              ^
//!   config (raw -> validate -> Config; reload)  |              |
//!                        activity (per-service state machine)  |
//!                                 stats (push and text readers, windows)
//!                                                 ^
//!        planner: Event + now + Acks --> state changes + Effects (publish, wake, park, ...)
//!                  (front door: what Envoy serves; lifecycle: wakes, parks, assignment)
//!
//!   ready (the readers of the Postgres checks: pgwire, postmaster.pid), used by the
//!         process backend's ready checks
//! ```
//!
//! The core reads no clock: `clippy.toml` forbids `Instant::now`, `SystemTime::now` and
//! friends here, and CI's clippy run enforces it.
//!
//! Its `Cargo.toml` pulls in no async runtime, gRPC server, HTTP or Kubernetes client;
//! `e2e/tests/layers.rs` checks that with `cargo tree`. What the controller and the
//! holder agree on lives in `zenvoy-contract`, which both build on.

pub mod activity;
pub mod config;
pub mod model;
pub mod planner;
pub mod ready;
pub mod stats;

/// The one place the core's tests read the clock: the origin their made-up instants are
/// counted from (an `Instant` cannot be made any other way). `clippy.toml` forbids clock
/// reads everywhere else in the crate.
#[cfg(test)]
pub(crate) mod test_clock {
    use std::time::Instant;

    #[allow(clippy::disallowed_methods)]
    pub fn origin() -> Instant {
        Instant::now()
    }
}
