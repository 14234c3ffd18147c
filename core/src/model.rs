//! The controller's vocabulary: a service as Envoy fronts it, its policy, what its
//! endpoints are, and the events the controller reacts to. Plain data; every other module
//! of the core speaks in these terms.

use std::net::SocketAddr;
use std::time::Duration;

pub use zenvoy_contract::HoldPolicy;

/// No activity for this long parks a service.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A held connection waits at most this long for the upstream: the wake timeout and 15 s
/// more (an HTTP route's timeout too), so a held client outlasts any wake that succeeds.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(75);
/// After a wake, a service stays awake at least this long.
pub const DEFAULT_MIN_WARM: Duration = Duration::ZERO;
/// A wake that is not ready by then fails.
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Park phase 1 waits at most this long for Envoy to ACK the holder endpoint.
pub const DEFAULT_PARK_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Held connections per service in the holder.
pub const DEFAULT_MAX_PENDING: u32 = 1000;
/// Envoy closes a TCP connection idle for this long (`tcp_proxy` idle timeout; Envoy's own
/// default is 1 h, which cuts a database pool's idle sessions). Zero: never.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Connections (and requests, pending requests) Envoy opens to a service at once, holder
/// included: Envoy's default circuit breaker is 1,024, which cut a burst of clients at a
/// parked service.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 100_000;

/// How Envoy fronts a service, and which stats tell it is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Protocol {
    /// A TCP listener per service (`tcp_proxy`); activity from connections and bytes.
    #[default]
    Tcp,
    /// A virtual host on the shared HTTP listener; activity from requests (pooled
    /// keep-alive connections stay open while idle, so connections do not count).
    Http,
    /// As `Http`, with an HTTP/2 upstream (gRPC, h2c): config `grpc` or `http2`.
    Http2,
}

impl Protocol {
    /// Routed on the shared HTTP listener by Host (`:authority`).
    pub fn routed(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2)
    }

    /// Whose stats tell activity: connections and bytes (`Tcp`) or requests (`Http`).
    pub fn activity(self) -> Protocol {
        match self {
            Protocol::Tcp => Protocol::Tcp,
            Protocol::Http | Protocol::Http2 => Protocol::Http,
        }
    }

    /// What [`Protocol::parse`] takes, for errors.
    pub const EXPECTED: &'static str = "must be \"tcp\", \"http\", \"grpc\" or \"http2\"";

    /// The config's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "grpc",
        }
    }

    /// Read from the config's `protocol` (and the `zenvoy.io/protocol` annotation).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "http" => Some(Protocol::Http),
            "grpc" | "http2" => Some(Protocol::Http2),
            _ => None,
        }
    }
}

/// Timeouts and limits of one service. Every duration except `min_warm` is > 0, and
/// `max_pending` >= 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub idle_timeout: Duration,
    pub hold_timeout: Duration,
    pub min_warm: Duration,
    pub wake_timeout: Duration,
    pub park_ack_timeout: Duration,
    pub max_pending: u32,
    /// Envoy's idle timeout for the service's TCP connections (zero: none).
    pub tcp_idle_timeout: Duration,
    /// Envoy's circuit breakers for the service's cluster.
    pub max_connections: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            min_warm: DEFAULT_MIN_WARM,
            wake_timeout: DEFAULT_WAKE_TIMEOUT,
            park_ack_timeout: DEFAULT_PARK_ACK_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Policy {
    /// What Envoy's resources for the service carry of it.
    pub fn envoy(&self) -> EnvoyLimits {
        EnvoyLimits {
            tcp_idle_timeout: self.tcp_idle_timeout,
            max_connections: self.max_connections,
        }
    }

    /// What the holder needs of it, carried on the holder endpoint, with the service's
    /// [`ServiceDef::dial`].
    pub fn hold(&self, dial: Option<SocketAddr>) -> HoldPolicy {
        HoldPolicy {
            dial,
            hold_timeout: self.hold_timeout,
            max_pending: self.max_pending,
        }
    }
}

/// The limits Envoy applies to a service's connections: its listener's `tcp_proxy` idle
/// timeout and its cluster's circuit breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvoyLimits {
    pub tcp_idle_timeout: Duration,
    pub max_connections: u32,
}

/// A service as the controller fronts it: how Envoy reaches it and its policy. Where its
/// replicas come from is the backend's business.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    /// An Envoy cluster name, a metric label and (Kubernetes) `<name>.<namespace>`.
    pub name: String,
    pub protocol: Protocol,
    /// Envoy TCP listener, if any.
    pub listen: Option<SocketAddr>,
    /// HTTP virtual host domains (HTTP services).
    pub domains: Vec<String>,
    pub policy: Policy,
    /// Kubernetes `inCluster`: the proxies' listener for the Service's own name (the
    /// address its EndpointSlice points kube-proxy at while it is not awake).
    pub in_cluster: Option<SocketAddr>,
    /// Services that share one workload (Kubernetes: the ports of one Service, each a
    /// service of its own with its own listener, cluster and slice): they wake together,
    /// traffic on any keeps all awake, and the workload goes to zero only once every one
    /// of them is parked. None: the service has its workload to itself.
    pub group: Option<String>,
    /// The upstream the holder may dial on its own as soon as it accepts: set when the
    /// service's readiness is its port accepting at a fixed address (the process
    /// backend with a `tcp` check), so a held connection is relayed without waiting for
    /// the controller's probe and an xDS round trip. None: the holder waits for the
    /// controller's assignment.
    pub dial: Option<SocketAddr>,
}

/// Where a Service's own name (its virtual IP) is steered, for `inCluster`. (A "route"
/// is always an HTTP route on Envoy's shared listener; this is not one.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// To the proxies (the controller's EndpointSlice lists them): parked, waking,
    /// parking. A connection is held and wakes it.
    Proxy,
    /// To the pods alone (the controller's slice lists no endpoint): awake.
    Direct,
    /// The Service is no longer fronted: the controller's slice goes.
    Gone,
}

/// What a service's ClusterLoadAssignment points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoints {
    /// Parked: connections go to the holder, with the PROXY v2 header naming the service.
    Holder(SocketAddr, HoldPolicy),
    /// Awake: connections go straight to these upstreams.
    Upstream(Vec<SocketAddr>),
}

/// One virtual host of the shared HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualHost {
    pub service: String,
    pub domains: Vec<String>,
    /// Route timeout: long enough for a cold start plus the request itself; zero (none)
    /// for gRPC, whose calls may stream for as long as they like.
    pub timeout: Duration,
}

/// One node's view of one service's Envoy cluster in one push or scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Open connections plus open requests (`upstream_cx_active` + `upstream_rq_active`).
    pub open: f64,
    /// Monotonic counters whose movement is activity: cx_total, rq_total, rx bytes, tx bytes.
    pub counters: [f64; 4],
}

/// What a node said about a service: Envoy's cluster stats, or a holder's pending count.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Envoy(Stats),
    HolderPending(f64),
}

/// What the controller reacts to. The adapters (stats streams, scrapers, the backend, the
/// config watchers, Kubernetes discovery) send these; the planner decides what follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One stats push or scrape from a node, read into per-service observations.
    Metrics {
        node: String,
        observations: Vec<(String, Observation)>,
    },
    /// A node's stats stream ended (or its scrape failed): its numbers no longer count.
    NodeGone { node: String },
    /// A wake the backend was asked for ended.
    WakeDone {
        service: String,
        /// Which wake of the service this was: a late result of an earlier wake (one
        /// that outlived its timeout) is ignored.
        wake: u64,
        /// The ready endpoints, or why there are none.
        result: Result<Vec<SocketAddr>, String>,
    },
    /// A park the backend was asked for failed (after its own retries).
    ParkFailed { service: String, error: String },
    /// The config changed these services' timeouts and limits.
    Reload { policies: Vec<(String, Policy)> },
    /// A service appeared or changed (Kubernetes: an opted-in Service). Boxed: a
    /// definition is several times the size of every other event.
    Upsert(Box<ServiceDef>),
    /// A service is gone (its Service was deleted or lost the opt-in).
    Remove { service: String },
    /// The backend's view of a service's ready endpoints changed (pods came or went
    /// while it is awake).
    Endpoints {
        service: String,
        endpoints: Vec<SocketAddr>,
    },
    /// The backend read the workload's replicas (a replica that just became leader):
    /// running wakes a service this controller thought parked, zero parks one it thought
    /// awake, so what is published matches what runs.
    Observed { service: String, running: bool },
    /// Whether this controller may scale (Kubernetes: holds the Lease and has read what
    /// runs). A follower plans no scale-up and no scale-down.
    Leading(bool),
    /// The answer to a reconciliation check: whether the service's workload runs, asked
    /// when its wake number was `wake`.
    Checked {
        service: String,
        wake: u64,
        running: bool,
    },
    /// The backend has written `steer` for the service (its EndpointSlice is in the API).
    Steered { service: String, steer: Steer },
}
