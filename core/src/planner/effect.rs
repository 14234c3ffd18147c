//! The planner's side of its contract with the runtime: the [`Effect`]s it returns, and
//! what the runtime owes it back.
//!
//! The runtime carries out each call's effects in the order given (publications go to
//! the xDS cache in that order: a cluster before its assignment, the assignment before
//! the listeners that lead to it). Some effects are questions whose answers the
//! planner waits for; the runtime reports each one back, or a decision waits forever:
//!
//! | effect | the runtime reports back |
//! |---|---|
//! | [`Effect::PublishEndpoints`] | [`Planner::published`](super::Planner::published) with the version the cache gave it, at once (a park waits for every stream to ACK that version, a new service's front door for every Envoy to have it warm) |
//! | [`Effect::Wake`] | [`Event::WakeDone`](crate::model::Event::WakeDone) with the wake's number, once the backend answered or the timeout passed |
//! | [`Effect::Park`] | [`Event::ParkFailed`](crate::model::Event::ParkFailed) if the backend could not go to zero (nothing on success) |
//! | [`Effect::Check`] | [`Event::Checked`](crate::model::Event::Checked) with the wake number it was asked with |
//! | [`Effect::Steer`] | [`Event::Steered`](crate::model::Event::Steered) once the steer is written (a park's scale to zero waits for it) |
//!
//! Every other effect is carried out and forgotten.

use std::net::SocketAddr;
use std::time::Duration;

use crate::activity::{Phase, WakeOutcome};
#[cfg(doc)]
use crate::model::Event;
use crate::model::{Endpoints, EnvoyLimits, Protocol, Steer, VirtualHost};

/// Something to carry out. Publications go to the xDS cache in order; wakes and parks go
/// to the backend; records to the metrics; notices to the operator (Kubernetes Events).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The service's EDS cluster (with the holder's PROXY v2 transport-socket match and
    /// its circuit breakers).
    PublishCluster {
        service: String,
        /// `Http2`: the cluster speaks HTTP/2 to its upstream (and to the holder).
        protocol: Protocol,
        limits: EnvoyLimits,
    },
    /// The service's assignment. Once published, tell the planner its version with
    /// [`Planner::published`](super::Planner::published).
    PublishEndpoints {
        service: String,
        endpoints: Endpoints,
    },
    /// The service's own TCP listener (with its idle timeout).
    PublishListener {
        service: String,
        listen: SocketAddr,
        limits: EnvoyLimits,
    },
    RemoveListener {
        service: String,
    },
    /// `inCluster`: the proxies' listener for the Service's own name, routed to the
    /// service's cluster like its front door.
    PublishInClusterListener {
        service: String,
        listen: SocketAddr,
        protocol: Protocol,
        limits: EnvoyLimits,
        /// HTTP and gRPC: the route's timeout (as the shared listener's, see
        /// [`route_timeout`](super::route_timeout)).
        route_timeout: Duration,
    },
    /// The service's `inCluster` listener on `listen` goes (the listener's name carries
    /// its port: a move to another port removes the old one first).
    RemoveInClusterListener {
        service: String,
        listen: SocketAddr,
    },
    /// `inCluster`: where the Service's own name is to lead. The backend writes it (the
    /// controller's EndpointSlice) and reports [`Event::Steered`] once it is in the API.
    Steer {
        service: String,
        steer: Steer,
    },
    /// The service's listener, cluster and assignment, and its `inCluster` listener on
    /// `in_cluster` when it has one.
    RemoveService {
        service: String,
        in_cluster: Option<SocketAddr>,
    },
    /// The shared HTTP listener's route configuration, one virtual host per HTTP service
    /// whose cluster is warm, sorted by service.
    PublishRoutes(Vec<VirtualHost>),
    /// The shared HTTP listener itself.
    PublishHttpListener(SocketAddr),
    /// The stats readers should read this service's stats (with its protocol's rules).
    Track {
        service: String,
        protocol: Protocol,
    },
    /// ... and no longer.
    Untrack {
        service: String,
    },
    /// Ask the backend for ready endpoints within `timeout`; report as
    /// [`Event::WakeDone`] with `wake`. `scale`: bring replicas up; false (a follower)
    /// only waits for endpoints that someone else brings up.
    Wake {
        service: String,
        wake: u64,
        timeout: Duration,
        scale: bool,
    },
    /// Ask the backend to go to zero; a failure comes back as [`Event::ParkFailed`].
    Park {
        service: String,
    },
    /// Ask the backend whether the service runs; the answer comes back as
    /// [`Event::Checked`] with `wake`, the service's wake number when asked.
    Check {
        service: String,
        wake: u64,
    },
    Record(Record),
    Notify(Notice),
}

/// A metric to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The service is now in this phase.
    State {
        service: String,
        phase: Phase,
    },
    WakeStarted {
        service: String,
    },
    WakeFinished {
        service: String,
        outcome: WakeOutcome,
        took: Duration,
    },
    /// A park completed its two phases (scaled to zero).
    Parked {
        service: String,
    },
    /// A connection arrived during a park's first phase.
    ParkCancelled {
        service: String,
    },
    /// A backend call failed (wake or park).
    ScaleError {
        service: String,
    },
    /// Observations refused from one push: values that cannot be counts.
    Rejected {
        count: usize,
    },
    /// A node that sent nothing for the expiry was forgotten.
    NodeExpired,
    /// What runs did not match the service's state and was repaired.
    Drift {
        service: String,
    },
    /// The service's idle timeout (when it is added, and when its policy changes).
    IdleTimeout {
        service: String,
        idle_timeout: Duration,
    },
    /// The service is gone: drop its series.
    Forget {
        service: String,
    },
}

/// Something an operator should see about a service, besides the logs (Kubernetes: an
/// Event on the Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub service: String,
    pub warning: bool,
    /// CamelCase, as Kubernetes Event reasons are.
    pub reason: &'static str,
    pub note: String,
}
