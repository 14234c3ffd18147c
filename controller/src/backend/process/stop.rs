//! Stopping a service's process group: its stop signal (SIGTERM unless it says
//! otherwise), then SIGKILL after its grace period. A child of this controller is waited
//! for; an adopted process (not our child) is watched in /proc until it is gone.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;
use tracing::{info, warn};
use zenvoy_core::config::ProcessOptions;

use super::state::Identity;
use super::Running;
use crate::backend::BackendError;

/// How long an adopted process (not our child: no exit status to wait for) is watched
/// after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);

pub(super) async fn stop(
    service: &str,
    running: Running,
    o: &ProcessOptions,
) -> Result<(), BackendError> {
    let signal = stop_signal(o);
    match running {
        Running::Child(c) => stop_child(service, c, signal, o.stop_grace).await,
        Running::Adopted(id) => stop_adopted(service, id, signal, o.stop_grace).await,
    }
}

fn stop_signal(o: &ProcessOptions) -> Signal {
    // The config's names are the ones nix knows; SIGTERM if that ever differs.
    o.stop_signal.name().parse().unwrap_or(Signal::SIGTERM)
}

/// Stop a process that is not our child: `signal` to its group, then SIGKILL after the
/// grace period; it is gone when /proc no longer shows it (its new parent reaps it).
async fn stop_adopted(
    service: &str,
    id: Identity,
    signal: Signal,
    grace: Duration,
) -> Result<(), BackendError> {
    let pgid = Pid::from_raw(id.pid);
    for (signal, wait) in [(signal, grace), (Signal::SIGKILL, KILL_WAIT)] {
        match killpg(pgid, signal) {
            Ok(()) => {}
            Err(nix::Error::ESRCH) => return Ok(()),
            Err(e) => {
                return Err(BackendError::Stop {
                    service: service.to_string(),
                    source: std::io::Error::from(e),
                })
            }
        }
        let until = tokio::time::Instant::now() + wait;
        while id.alive() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !id.alive() {
            info!(service, pid = id.pid, "stopped (adopted)");
            return Ok(());
        }
    }
    Err(BackendError::Stop {
        service: service.to_string(),
        source: std::io::Error::other(format!("pid {} still alive after SIGKILL", id.pid)),
    })
}

async fn stop_child(
    service: &str,
    mut child: Child,
    signal: Signal,
    grace: Duration,
) -> Result<(), BackendError> {
    let Some(pid) = child.id() else {
        return Ok(()); // already reaped
    };
    let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let err = |e: nix::Error| BackendError::Stop {
        service: service.to_string(),
        source: std::io::Error::from(e),
    };
    match killpg(pgid, signal) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => return Err(err(e)),
    }
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!(
                service,
                pid,
                ?grace,
                "did not stop within its stopGrace; killing"
            );
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(err(e)),
            }
            child.wait().await
        }
    };
    info!(service, pid, %signal, status = ?status.ok(), "stopped");
    Ok(())
}
