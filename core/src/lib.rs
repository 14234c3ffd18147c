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
//! ```
//!
//! Its `Cargo.toml` pulls in no async runtime, gRPC server, HTTP or Kubernetes client;
//! `tests/tests/layers.rs` checks that with `cargo tree`. What the controller and the
//! holder agree on lives in `zenvoy-contract`, which both build on.

pub mod activity;
pub mod config;
pub mod model;
pub mod pgwire;
pub mod planner;
pub mod postmaster;
pub mod stats;
