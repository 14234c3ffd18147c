//! The process backend: wake runs the service's command, park stops it, and the service
//! is ready when its upstream port accepts a TCP connection and then its `ready` check
//! passes (an HTTP GET, a command such as `pg_isready` exiting 0, Postgres' answer or its
//! `postmaster.pid`): many servers accept before they can answer (Postgres says "the
//! database system is starting up", Redis "LOADING"), and a client relayed to them then
//! would be refused.
//!
//! Each command runs in its own process group so that park stops the whole tree
//! (`sh -c` wrappers included): the service's stop signal (SIGTERM unless it says
//! otherwise), then SIGKILL after its grace period. Its stdout and stderr are appended
//! to its log file. A wake and a park of the same service serialize on one lock, so a
//! new process never races the old one for the port.
//!
//! What runs is written to a state file (service, pid, the process's start time). A
//! controller that dies without stopping its services (SIGKILL, a crash) leaves them
//! serving, as a Kubernetes controller leaves its workloads; the next one reads the file
//! and adopts each process still alive (same pid and start time: not a recycled pid),
//! so it neither starts a second instance nor mistakes a stranger for its own, and parks
//! it like any other. Processes of services no longer configured are stopped.
//!
//! The parts, by concern: `spawn` starts the command, `ready` waits for the port and runs
//! the `ready` check (`ready/`: one file per kind of check), `state` keeps the state file
//! and adopts, `stop` stops a process group. This file is the [`Backend`] they make.

mod ready;
mod spawn;
mod state;
mod stop;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::Mutex;
use tracing::warn;
use zenvoy_core::config::{ProcessOptions, ServiceConfig};

use super::{Backend, BackendError, BoxFuture};
use state::{Identity, StateFile};

pub use ready::postgres_ready;

/// A wake's checks end this much before its timeout (see `wake`).
const DEADLINE_MARGIN: Duration = Duration::from_millis(300);

/// One configured service's instance: how to start it and where it listens, and, behind
/// the lock its wakes and parks share, the process running now (if any). Holding the
/// lock while starting or stopping is what keeps a new process from racing the old one
/// for the port.
#[derive(Debug)]
struct Instance {
    upstream: SocketAddr,
    command: Vec<String>,
    options: ProcessOptions,
    child: Mutex<Option<Running>>,
}

/// A service's process: started by this controller, or adopted from the one before.
#[derive(Debug)]
enum Running {
    Child(Child),
    /// Not our child (its parent died): no wait(2); its liveness is read from /proc.
    Adopted(Identity),
}

impl Running {
    fn alive(&mut self) -> bool {
        match self {
            Running::Child(c) => c.try_wait().ok().flatten().is_none(),
            Running::Adopted(id) => id.alive(),
        }
    }

    fn identity(&self) -> Option<Identity> {
        match self {
            Running::Child(c) => Identity::of(i32::try_from(c.id()?).ok()?),
            Running::Adopted(id) => Some(*id),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct ProcessBackend {
    services: Arc<HashMap<String, Arc<Instance>>>,
    /// For `http` ready checks: no proxy (the upstream is local), bounded.
    http: reqwest::Client,
    state: Option<Arc<StateFile>>,
    /// Services whose process was adopted at start (see [`Backend::running_at_start`]).
    adopted: Arc<Vec<String>>,
}

impl ProcessBackend {
    /// The services of a process-mode config.
    pub fn new<'a>(services: impl IntoIterator<Item = &'a ServiceConfig>) -> Self {
        let services = services
            .into_iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Arc::new(Instance {
                        upstream: s.upstream,
                        command: s.command.clone(),
                        options: s.process.clone(),
                        child: Mutex::new(None),
                    }),
                )
            })
            .collect();
        ProcessBackend {
            services: Arc::new(services),
            http: ready::http_client(),
            state: None,
            adopted: Arc::default(),
        }
    }

    fn instance(&self, service: &str) -> Result<Arc<Instance>, BackendError> {
        self.services
            .get(service)
            .cloned()
            .ok_or_else(|| BackendError::UnknownService(service.to_string()))
    }
}

/// An error if the service's process has exited (it will not become ready).
async fn exited(service: &str, instance: &Instance) -> Result<(), BackendError> {
    match instance.child.lock().await.as_mut() {
        Some(Running::Child(c)) => match c.try_wait() {
            Ok(Some(status)) => Err(BackendError::Exited {
                service: service.to_string(),
                status: status.to_string(),
            }),
            _ => Ok(()),
        },
        Some(Running::Adopted(id)) if !id.alive() => Err(BackendError::Exited {
            service: service.to_string(),
            status: format!("adopted pid {} is gone", id.pid),
        }),
        _ => Ok(()),
    }
}

impl Backend for ProcessBackend {
    /// Always scales: the process backend runs in one controller, which always leads.
    fn wake(
        &self,
        service: &str,
        timeout: Duration,
        _scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>> {
        let instance = self.instance(service);
        let service = service.to_string();
        let backend = self.clone();
        Box::pin(async move {
            let instance = instance?;
            // When this wake started the process (seconds since the epoch), for checks
            // that tell its files from an earlier one's.
            let spawned = {
                let mut child = instance.child.lock().await;
                let running = child.as_mut().is_some_and(Running::alive);
                if running {
                    None
                } else {
                    let at = spawn::unix_seconds();
                    *child = Some(Running::Child(spawn::spawn(
                        &service,
                        &instance.command,
                        &instance.options,
                    )?));
                    Some(at)
                }
            };
            if spawned.is_some() {
                backend.save().await;
            }
            // The planner gives up on the wake after the same timeout, on its next tick:
            // ending a little earlier makes this error, which says what the check saw,
            // the one that is recorded.
            let deadline = std::time::Instant::now()
                + timeout.saturating_sub(DEADLINE_MARGIN).max(timeout / 2);
            ready::wait_for_port(&service, &instance, deadline, timeout).await?;
            ready::wait_for_check(
                service,
                &instance,
                &backend.http,
                spawned,
                deadline,
                timeout,
            )
            .await
        })
    }

    fn park(&self, service: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let instance = self.instance(service);
        let service = service.to_string();
        let backend = self.clone();
        Box::pin(async move {
            let instance = instance?;
            let stopped = {
                // Holding the lock while stopping makes a racing wake wait for the port.
                let mut child = instance.child.lock().await;
                match child.take() {
                    Some(c) => stop::stop(&service, c, &instance.options).await,
                    None => return Ok(()),
                }
            };
            backend.save().await;
            stopped
        })
    }

    /// Whether the service's process (started or adopted by this controller) is alive.
    fn running(&self, service: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let instance = self.instance(service);
        Box::pin(async move {
            let instance = instance?;
            let mut child = instance.child.lock().await;
            Ok(child.as_mut().is_some_and(Running::alive))
        })
    }

    fn running_at_start(&self) -> Vec<String> {
        self.adopted.to_vec()
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let backend = self.clone();
        Box::pin(async move {
            for (name, instance) in backend.services.iter() {
                if let Some(c) = instance.child.lock().await.take() {
                    if let Err(e) = stop::stop(name, c, &instance.options).await {
                        warn!(error = %e, "stopping at shutdown");
                    }
                }
            }
            backend.save().await;
        })
    }
}
