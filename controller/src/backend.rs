//! Backends scale a service and report its ready endpoints. The runtime only sees this
//! trait; `process` (local commands) is the embedded default.

pub mod process;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("service {0:?} is not known to the backend")]
    UnknownService(String),
    #[error("cannot start {command:?} for service {service:?}: {source}")]
    Spawn {
        service: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("service {service:?} exited before it was ready ({status})")]
    Exited { service: String, status: String },
    #[error("service {service:?} not ready at {upstream} after {waited:?}")]
    NotReady {
        service: String,
        upstream: SocketAddr,
        waited: Duration,
    },
    #[error("service {service:?}: {message}")]
    Kubernetes { service: String, message: String },
    #[error("stopping service {service:?}: {source}")]
    Stop {
        service: String,
        #[source]
        source: std::io::Error,
    },
}

pub trait Backend: Send + Sync + 'static {
    /// Bring `service` up (to its remembered replica count) and resolve once it has ready
    /// endpoints, or fail after `timeout`.
    fn wake(
        &self,
        service: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>>;
    /// Take `service` to zero.
    fn park(&self, service: &str) -> BoxFuture<'static, Result<(), BackendError>>;
    /// Stop everything this backend started (controller shutdown).
    fn shutdown(&self) -> BoxFuture<'static, ()>;
}
