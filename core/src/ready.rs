//! The pure halves of the process backend's ready checks that read what a server says:
//! the controller's adapter (`backend/process/ready/`) does the I/O (a connection, a file
//! read) and hands the bytes here.
//!
//! - [`pgwire`]: the `postgres` check's StartupMessage and the reading of the server's
//!   first answer, as `PQping` reads it.
//! - [`postmaster`]: the `postgres` check with `dataDir`, the status line of
//!   `<dataDir>/postmaster.pid`.
//!
//! Which check a service has is its config (`config::ReadyCheck`); each reader here has a
//! cargo-fuzz target in `core/fuzz`.

pub mod pgwire;
pub mod postmaster;
