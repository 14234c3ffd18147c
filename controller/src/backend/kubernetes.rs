//! Kubernetes mode: services are opted-in Services, workloads are scaled through their
//! `/scale` subresource, readiness comes from EndpointSlices, the config from a
//! ConfigMap, and only the holder of a Lease scales.
//!
//! ```text
//!  Services ----watch--> discovery (index) --Upsert/Remove--> runtime --wake/park--> backend
//!  EndpointSlices --reflector--> endpoints --Endpoints--^          |  (leader only)
//!  ConfigMap --watch--> configmap --new config--> discovery        v
//!  Lease <--get/replace-- leader --is leader--> backend      Deployment/StatefulSet
//!                                                             /scale + annotation
//! ```
//!
//! State lives in the API, not in the controller: the parked replica count is an
//! annotation on the workload, and a (re)started controller reads each workload's
//! replicas to know whether a service is parked or (being) woken.
//!
//! Followers (replicas without the Lease) are hot standbys: they watch the same objects
//! and keep the same services, but make no writes and refuse ADS and metrics streams
//! (UNAVAILABLE), so every Envoy and holder pushes its stats to, and takes its xDS from,
//! the leader, the one replica whose state the stats drive. A leader that loses the
//! Lease ends its streams; clients reconnect (list every replica, or use the
//! controller's Service) and land on the new leader within the lease duration.
//!
//! These are adapters, below the controller's `Controller`: the binary (`zenvoy-controller
//! --kubernetes`, `main.rs`) starts them and serves with [`backend::KubeBackend`], as the
//! process mode serves with the process backend.

pub mod annotations;
pub mod api;
pub mod backend;
pub mod configmap;
pub mod discovery;
pub mod endpoints;
pub mod events;
pub mod index;
pub mod leader;
pub mod port_store;
pub mod ports;
pub mod service;
pub mod slices;

pub use api::ApiError;
