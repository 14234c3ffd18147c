//! The process backend: wake runs the service's command, park stops it, and the service
//! is ready when its upstream port accepts a TCP connection.
//!
//! Each command runs in its own process group so that park stops the whole tree
//! (`sh -c` wrappers included): SIGTERM, then SIGKILL after a grace period. A wake and a
//! park of the same service serialize on one lock, so a new process never races the old
//! one for the port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::{Backend, BackendError, BoxFuture};

/// How often a waking service's port is tried. A connect to a closed loopback port fails
/// at once and costs microseconds, so a short interval is cheap and keeps the wake fast.
/// The probe runs on a blocking thread: tokio's timers have 1 ms granularity, which alone
/// would add up to 2 ms to every wake.
const PROBE_INTERVAL: Duration = Duration::from_micros(100);
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the probe looks at whether the process has exited.
const EXIT_CHECK_EVERY: u32 = 100;
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Slot {
    upstream: SocketAddr,
    command: Vec<String>,
    child: Mutex<Option<Child>>,
}

#[derive(Debug, Default, Clone)]
pub struct ProcessBackend {
    services: Arc<HashMap<String, Arc<Slot>>>,
}

impl ProcessBackend {
    /// `services`: name, upstream address, command.
    pub fn new(services: impl IntoIterator<Item = (String, SocketAddr, Vec<String>)>) -> Self {
        let services = services
            .into_iter()
            .map(|(name, upstream, command)| {
                (
                    name,
                    Arc::new(Slot {
                        upstream,
                        command,
                        child: Mutex::new(None),
                    }),
                )
            })
            .collect();
        ProcessBackend {
            services: Arc::new(services),
        }
    }

    fn slot(&self, service: &str) -> Result<Arc<Slot>, BackendError> {
        self.services
            .get(service)
            .cloned()
            .ok_or_else(|| BackendError::UnknownService(service.to_string()))
    }
}

fn spawn(service: &str, command: &[String]) -> Result<Child, BackendError> {
    let err = |source| BackendError::Spawn {
        service: service.to_string(),
        command: command.join(" "),
        source,
    };
    let (program, args) = command
        .split_first()
        .ok_or_else(|| err(std::io::Error::other("empty command")))?;
    let child = Command::new(program)
        .args(args)
        .process_group(0)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(err)?;
    info!(service, pid = child.id(), command = %command.join(" "), "started");
    Ok(child)
}

/// Try to connect to `upstream` every `PROBE_INTERVAL` until it accepts (true) or
/// `until` passes (false). Blocking: run it on a blocking thread.
fn probe_until(upstream: SocketAddr, until: std::time::Instant) -> bool {
    loop {
        if std::net::TcpStream::connect_timeout(&upstream, PROBE_CONNECT_TIMEOUT).is_ok() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

async fn stop(service: &str, mut child: Child) -> Result<(), BackendError> {
    let Some(pid) = child.id() else {
        return Ok(()); // already reaped
    };
    let pgid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    let err = |e: nix::Error| BackendError::Stop {
        service: service.to_string(),
        source: std::io::Error::from(e),
    };
    match killpg(pgid, Signal::SIGTERM) {
        Ok(()) | Err(nix::Error::ESRCH) => {}
        Err(e) => return Err(err(e)),
    }
    let status = match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            warn!(service, pid, "did not stop within grace period; killing");
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(err(e)),
            }
            child.wait().await
        }
    };
    info!(service, pid, status = ?status.ok(), "stopped");
    Ok(())
}

impl Backend for ProcessBackend {
    /// Always scales: the process backend runs in one controller, which always leads.
    fn wake(
        &self,
        service: &str,
        timeout: Duration,
        _scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>> {
        let slot = self.slot(service);
        let service = service.to_string();
        Box::pin(async move {
            let slot = slot?;
            {
                let mut child = slot.child.lock().await;
                let running = match child.as_mut() {
                    Some(c) => c.try_wait().ok().flatten().is_none(),
                    None => false,
                };
                if !running {
                    *child = Some(spawn(&service, &slot.command)?);
                }
            }
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let upstream = slot.upstream;
                let probe = tokio::task::spawn_blocking(move || {
                    probe_until(
                        upstream,
                        deadline.min(std::time::Instant::now() + PROBE_INTERVAL * EXIT_CHECK_EVERY),
                    )
                });
                if let Ok(true) = probe.await {
                    debug!(service, upstream = %slot.upstream, "ready");
                    return Ok(vec![slot.upstream]);
                }
                if let Some(c) = slot.child.lock().await.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        return Err(BackendError::Exited {
                            service,
                            status: status.to_string(),
                        });
                    }
                }
                if std::time::Instant::now() >= deadline {
                    return Err(BackendError::NotReady {
                        service,
                        upstream: slot.upstream,
                        waited: timeout,
                    });
                }
            }
        })
    }

    fn park(&self, service: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let slot = self.slot(service);
        let service = service.to_string();
        Box::pin(async move {
            let slot = slot?;
            // Holding the lock while stopping makes a racing wake wait for the port.
            let mut child = slot.child.lock().await;
            match child.take() {
                Some(c) => stop(&service, c).await,
                None => Ok(()),
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let services = self.services.clone();
        Box::pin(async move {
            for (name, slot) in services.iter() {
                if let Some(c) = slot.child.lock().await.take() {
                    if let Err(e) = stop(name, c).await {
                        warn!(error = %e, "stopping at shutdown");
                    }
                }
            }
        })
    }
}
