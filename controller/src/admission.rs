//! What a stream must pass before it is served: the bound on streams open at once (all
//! peers together: many idle streams must not exhaust the controller) and, with mTLS,
//! the peer's certificate naming the node the stream speaks for (see [`identity`]).
//! Shared by the ADS server and the metrics sink.
//!
//! [`identity`]: crate::identity

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Status};
use tracing::warn;

use crate::identity::Peer;
use crate::telemetry::{Metrics, ReasonLabel};

#[derive(Debug, Clone)]
pub struct Admission {
    tls: bool,
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// Resource names one ADS stream may subscribe to.
    pub max_names: usize,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub fn new(tls: bool, max_streams: usize, max_names: usize, metrics: Arc<Metrics>) -> Self {
        Admission {
            tls,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            max_names,
            metrics,
        }
    }

    /// No TLS and (practically) no bounds: for tests and tools that build a server alone.
    pub fn open(metrics: Arc<Metrics>) -> Self {
        Admission::new(false, Semaphore::MAX_PERMITS, usize::MAX, metrics)
    }

    /// A place for one more stream, held for as long as the stream lives.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` when `controller.maxStreams` are open.
    pub fn stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            self.refuse("max_streams");
            warn!(
                max = self.max_streams,
                "stream refused: controller.maxStreams streams are open"
            );
            Status::resource_exhausted(format!(
                "this controller serves {} streams at most (controller.maxStreams)",
                self.max_streams
            ))
        })
    }

    /// The peer of `request`, for [`Admission::check`] once it names its node.
    pub fn peer<T>(&self, request: &Request<T>) -> Peer {
        Peer::new(self.tls, request.peer_certs())
    }

    /// May `peer` speak as `node`?
    ///
    /// # Errors
    /// `PERMISSION_DENIED`, saying why.
    pub fn check(&self, peer: &Peer, node: &str) -> Result<(), Status> {
        peer.check(node).map_err(|e| {
            self.refuse("identity");
            warn!(%node, error = %e, "stream refused: its certificate does not name its node");
            Status::permission_denied(format!("node {node:?}: {e}"))
        })
    }

    /// Count a refusal.
    pub fn refuse(&self, reason: &'static str) {
        self.metrics
            .streams_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
}
