//! What the controller, the holder and the core share that is no agreement between them
//! (the agreement is `zenvoy-contract`): small pieces each of them needs once.
//!
//! - [`Backoff`]: the pause before a failed thing is tried again, pure (the caller keeps
//!   the time), so the core's wake retries and every adapter's reconnect loop use one type.
//! - [`PortProbe`]: one knock on a TCP port, told as accepted, refused or neither; the
//!   process backend's wait for a port and the holder's own probe both knock with it.
//! - [`write_atomically`]: a file replaced whole or not at all.
//! - [`lock`]: a mutex guard that outlives a panicked holder of the lock.
//! - `shutdown_signal` (feature `signal`): SIGTERM or Ctrl-C, for the binaries.
//!
//! Standard library only (tokio with `signal`): `zenvoy-core` builds on it and stays free
//! of any runtime.

mod backoff;
mod fs;
mod probe;

pub use backoff::Backoff;
pub use fs::write_atomically;
pub use probe::{Knock, PortProbe};

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, also after a thread panicked while holding it: every value zenvoy keeps
/// behind a mutex is whole between statements, so a panic elsewhere leaves nothing half
/// written that the next holder could trip on.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT); never, where SIGTERM cannot be watched (the
/// process then stops as signals stop it by default).
#[cfg(feature = "signal")]
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
