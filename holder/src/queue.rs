//! One service's hold queue: how many of its connections wait, what they wait for (the
//! service's endpoints and policy), and whether the holder's own probe watches it. The
//! registry (`hold`) keeps one per service and hands it to the probe (`probe`); neither
//! of those is imported here, so both can import this.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use tokio::sync::watch;

/// A service's policy as the controller's config sets it (from the holder endpoint's
/// metadata); until it arrives the holder's own flags apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePolicy {
    pub hold_timeout: Duration,
    pub max_pending: usize,
    /// The upstream the holder may dial on its own once it accepts (see `probe`).
    pub dial: Option<SocketAddr>,
}

/// What a waiting connection watches: the service's endpoints (empty while parked) and
/// its policy once known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueState {
    pub endpoints: Vec<SocketAddr>,
    pub policy: Option<ServicePolicy>,
}

/// One service's hold queue.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Connections held for the service now.
    pub(crate) pending: AtomicUsize,
    pub(crate) state: watch::Sender<QueueState>,
    /// A probe thread watches the dial address now (see `probe`).
    pub(crate) probing: AtomicBool,
    /// The probe saw the dial address refuse a connection (for tests).
    pub(crate) seen_closed: AtomicBool,
}
