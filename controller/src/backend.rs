//! Backends scale a service and report its ready endpoints. The runtime only sees this
//! trait; [`process`] (local commands) is the embedded default, [`kubernetes`] scales
//! workloads through the API server.

pub mod kubernetes;
pub mod process;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use zenvoy_core::model::Steer;
use zenvoy_core::planner::Notice;

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
    #[error("service {service:?}: {what}: {source}")]
    Kubernetes {
        service: String,
        /// What was being done: "scale up", "scale to zero".
        what: &'static str,
        #[source]
        source: ApiError,
    },
    #[error("service {service:?}: not ready after {waited:?}: {detail}")]
    NotReadyInTime {
        service: String,
        waited: Duration,
        /// What was seen meanwhile (the last API error, or that no endpoint came).
        detail: String,
    },
    #[error("service {service:?}: its port accepts but its ready check cannot pass: {detail}")]
    CannotBeReady { service: String, detail: String },
    #[error("service {service:?}: the controller is stopping")]
    Stopping { service: String },
    #[error("stopping service {service:?}: {source}")]
    Stop {
        service: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a call to an orchestrator's API did not succeed (the Kubernetes backend's calls;
/// see `kubernetes::api::bounded`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer from the API server within {0:?}")]
    Timeout(Duration),
}

pub trait Backend: Send + Sync + 'static {
    /// Bring `service` up (to its remembered replica count) when `scale`, and resolve
    /// once it has ready endpoints, or fail after `timeout`. Without `scale` (a follower
    /// controller) only wait for endpoints that someone else brings up.
    fn wake(
        &self,
        service: &str,
        timeout: Duration,
        scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>>;
    /// Take `service` to zero.
    fn park(&self, service: &str) -> BoxFuture<'static, Result<(), BackendError>>;
    /// Whether `service` runs now (reconciliation compares it with its state).
    fn running(&self, service: &str) -> BoxFuture<'static, Result<bool, BackendError>>;
    /// Stop everything this backend started (controller shutdown).
    fn shutdown(&self) -> BoxFuture<'static, ()>;
    /// Services found running when the controller started (a previous controller's
    /// processes, adopted): they are woken, which finds them ready, and parked later.
    fn running_at_start(&self) -> Vec<String> {
        Vec::new()
    }
    /// Tell the operator (Kubernetes: an Event on the Service). The log already has it;
    /// by default nothing more.
    fn notify(&self, _notice: &Notice) {}
    /// `inCluster`: steer the Service's own name where `steer` says (Kubernetes: the
    /// controller's EndpointSlice for it), and report [`zenvoy_core::model::Event::Steered`] once it does.
    /// Only backends that front Services by name have it; by default nothing.
    fn steer(&self, _service: &str, _steer: Steer) {}
}
