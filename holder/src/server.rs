//! The listeners: learn each connection's service (PROXY v2 header, the port, or the
//! original destination; see [`crate::ingress`]), hold it in its service's queue, relay it
//! once the service has endpoints.
//!
//! Invariant: the holder never reads a held client's bytes before the relay. A PROXY
//! header is read with exact-length reads (16 bytes, then the announced payload); the
//! other two ways read nothing at all. Whatever the client sent stays in the kernel and
//! reaches the upstream first, in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};
use zenvoy_base::Backoff;

use crate::hold::{Hold, QueueState};
use crate::ingress::Ingress;
use crate::proxy_header::{self, ProxyError, ProxyHeader, PREFIX_LEN};
use crate::relay::{self, DialError};
use crate::telemetry::{outcome, DirectionLabel, Metrics, ServiceLabel};

/// A held connection that finds no file descriptor free retries after this, doubling up
/// to the max.
const FD_BACKOFF_MIN: Duration = Duration::from_millis(5);
const FD_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// A held connection whose dial fails everywhere tries again after this, doubling up to
/// the max, until its hold ends.
const REDIAL_MIN: Duration = Duration::from_millis(50);
const REDIAL_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A PROXY header must arrive within this.
    pub header: Duration,
    /// A held connection waits at most this long for endpoints.
    pub hold: Duration,
    /// Per endpoint dial.
    pub connect: Duration,
    /// After shutdown, relays in progress get this long to finish.
    pub drain: Duration,
}

/// The `zenvoy-holder` flags' defaults (`--header-timeout`, `--hold-timeout`,
/// `--connect-timeout`, `--drain-timeout`).
impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header: Duration::from_secs(5),
            hold: Duration::from_secs(75),
            connect: Duration::from_secs(2),
            drain: Duration::from_secs(90),
        }
    }
}

/// Why a connection was refused before it was held.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("PROXY header: {0}")]
    Proxy(#[from] ProxyError),
    #[error("reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PROXY header within {0:?}")]
    Slow(Duration),
    #[error("no --transparent-service for original destination {0}")]
    UnknownDestination(std::net::SocketAddr),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Proxy(e) => e.reason(),
            Refusal::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "truncated",
            Refusal::Io(_) => "io",
            Refusal::Slow(_) => "slow_header",
            Refusal::UnknownDestination(_) => "unknown_destination",
        }
    }
}

async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, Refusal> {
    let mut prefix = [0u8; PREFIX_LEN];
    stream.read_exact(&mut prefix).await?;
    let len = proxy_header::parse_prefix(&prefix)?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(proxy_header::parse_payload(&prefix, &payload)?)
}

/// Resolves when the client closes (or errors) without having sent data. Once the client
/// has sent bytes we cannot see a later close without reading them, so it never resolves.
async fn client_gone(stream: &TcpStream) {
    let mut b = [0u8; 1];
    match stream.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Shared state of the listener.
#[derive(Debug)]
pub struct Server {
    pub hold: Arc<Hold>,
    pub metrics: Arc<Metrics>,
    pub timeouts: Timeouts,
    next: AtomicUsize,
    /// Connections waiting for file descriptors now; while any do, nothing is accepted.
    fd_waiting: AtomicUsize,
}

impl Server {
    pub fn new(hold: Arc<Hold>, metrics: Arc<Metrics>, timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Server {
            hold,
            metrics,
            timeouts,
            next: AtomicUsize::new(0),
            fd_waiting: AtomicUsize::new(0),
        })
    }

    /// Accept on every listener until `shutdown`, then wait (at most `timeouts.drain`)
    /// for every connection task to finish.
    pub async fn run(
        self: Arc<Self>,
        listeners: Vec<(TcpListener, Ingress)>,
        shutdown: impl Future<Output = ()>,
    ) {
        // Every connection task holds a clone of `alive_tx`; `recv` returns None once the
        // last one is gone.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut accepting = JoinSet::new();
        for (listener, ingress) in listeners {
            let stop = stop_rx.clone();
            accepting.spawn(
                self.clone()
                    .accept(listener, ingress, alive_tx.clone(), stop),
            );
        }
        drop(alive_tx);
        shutdown.await;
        let _ = stop_tx.send(true);
        // Each accept loop drops its listener when it returns: no new connections.
        while accepting.join_next().await.is_some() {}
        info!(
            pending = self.hold.total_pending(),
            "draining: no longer accepting"
        );
        if tokio::time::timeout(self.timeouts.drain, alive_rx.recv())
            .await
            .is_err()
        {
            warn!(grace = ?self.timeouts.drain, "drain grace period over; closing the rest");
        }
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        ingress: Ingress,
        alive: mpsc::Sender<()>,
        mut stop: watch::Receiver<bool>,
    ) {
        let kind = ingress.kind();
        let stopped = async move {
            // The `Ref` this yields is not Send; drop it here, not across the select.
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::pin!(stopped);
        loop {
            // Held connections waiting for descriptors go first: an accept would take
            // one they need, and the client waits unharmed in the accept queue.
            while self.fd_waiting.load(Ordering::Acquire) > 0 {
                tokio::select! {
                    () = tokio::time::sleep(FD_BACKOFF_MIN) => {}
                    () = &mut stopped => return,
                }
            }
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        warn!(error = %e, ingress = kind, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut stopped => return,
            };
            let server = self.clone();
            let alive = alive.clone();
            let ingress = ingress.clone();
            let span = tracing::debug_span!("conn", %peer, ingress = kind);
            tokio::spawn(
                async move {
                    server.handle(stream, &ingress).await;
                    drop(alive);
                }
                .instrument(span),
            );
        }
    }

    /// The service a new connection is for; None when it is refused (counted by reason).
    async fn service(&self, client: &mut TcpStream, ingress: &Ingress) -> Option<String> {
        let refused = match ingress {
            Ingress::Port(service) => return Some(service.to_string()),
            Ingress::Proxy => {
                let read = tokio::time::timeout(self.timeouts.header, read_header(client));
                match read.await {
                    Ok(Ok(header)) => match header.service() {
                        Ok(s) => return Some(s.to_string()),
                        Err(e) => e.into(),
                    },
                    Ok(Err(e)) => e,
                    Err(_) => Refusal::Slow(self.timeouts.header),
                }
            }
            // With IP_TRANSPARENT and TPROXY, the socket's local address is the address
            // the client connected to.
            Ingress::Transparent(map) => match client.local_addr() {
                Ok(dst) => match map.service(dst) {
                    Some(s) => return Some(s.to_string()),
                    None => Refusal::UnknownDestination(dst),
                },
                Err(e) => Refusal::Io(e),
            },
        };
        debug!(error = %refused, "refused");
        self.metrics.refuse(refused.reason());
        None
    }

    async fn handle(&self, mut client: TcpStream, ingress: &Ingress) {
        let started = Instant::now();
        let held = |o| self.metrics.held(o, started.elapsed().as_secs_f64());
        let Some(service) = self.service(&mut client, ingress).await else {
            return;
        };
        let ticket = match self.hold.admit(&service) {
            Ok(t) => t,
            Err(refused) => {
                debug!(%service, %refused, "refused");
                self.metrics.refuse(refused.reason());
                return held(outcome::REJECTED);
            }
        };
        let label = ServiceLabel {
            service: service.clone(),
        };
        self.metrics.pending.get_or_create(&label).inc();
        debug!(%service, "held");
        let mut state = ticket.state();
        let mut fd_backoff = Backoff::new(FD_BACKOFF_MIN, FD_BACKOFF_MAX);
        let mut redials = Backoff::new(REDIAL_MIN, REDIAL_MAX);
        let dialed = loop {
            let (endpoints, deadline) = match self.endpoints(&mut state, started, &client).await {
                Ok(x) => x,
                Err(o) => {
                    self.metrics.pending.get_or_create(&label).dec();
                    debug!(%service, outcome = o, "released without relay");
                    return held(o);
                }
            };
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let first = endpoints[start % endpoints.len()];
            let dialed = match relay::reserve(first) {
                Ok(mut reserved) => {
                    relay::dial(&endpoints, start, self.timeouts.connect, &mut reserved)
                        .await
                        .map(|u| (u, reserved))
                }
                Err(e) if relay::out_of_descriptors(&e) => Err(DialError::NoDescriptors(e)),
                Err(e) => Err(DialError::Reserve(e)),
            };
            match dialed {
                Err(DialError::NoDescriptors(e)) => {
                    // Out of file descriptors: the connection stays held (it is still
                    // in its queue) until a relay ends and frees some, or its hold ends.
                    // Meanwhile the listeners stop accepting (see `accept`), so new
                    // clients wait in the kernel's accept queue instead of taking the
                    // descriptors a relay needs.
                    self.fd_wait(&service, &e);
                    let pause = fd_backoff.failed();
                    self.fd_waiting.fetch_add(1, Ordering::AcqRel);
                    let gone = tokio::select! {
                        () = tokio::time::sleep(pause) => false,
                        () = tokio::time::sleep_until(deadline) => false,
                        () = client_gone(&client) => true,
                    };
                    self.fd_waiting.fetch_sub(1, Ordering::AcqRel);
                    if gone {
                        self.metrics.pending.get_or_create(&label).dec();
                        return held(outcome::CLIENT_CLOSED);
                    }
                }
                // Every endpoint refused or timed out, and the hold has time left for
                // the next pause: the upstream may be restarting, or the endpoints about
                // to change. Try again (with the endpoints then current) until the
                // deadline.
                Err(e @ DialError::AllFailed { .. })
                    if tokio::time::Instant::now() + redials.next() < deadline =>
                {
                    let redial = redials.failed();
                    debug!(%service, error = %e, retry_in = ?redial, "dial failed; retrying while held");
                    self.metrics.redials.inc();
                    let gone = tokio::select! {
                        () = tokio::time::sleep(redial) => false,
                        () = client_gone(&client) => true,
                    };
                    if gone {
                        self.metrics.pending.get_or_create(&label).dec();
                        return held(outcome::CLIENT_CLOSED);
                    }
                }
                other => break other,
            }
        };
        // The connection leaves the queue either way.
        drop(ticket);
        self.metrics.pending.get_or_create(&label).dec();
        let (upstream, reserved) = match dialed {
            Ok(u) => u,
            Err(e) => {
                warn!(%service, error = %e, "dial failed; closing held client");
                return held(outcome::DIAL_FAILED);
            }
        };
        held(outcome::RELAYED);
        self.metrics.relayed.get_or_create(&label).inc();
        let _ = client.set_nodelay(true);
        let up = self.bytes_counter("client_to_upstream");
        let down = self.bytes_counter("upstream_to_client");
        let relayed = relay::relay(
            &client,
            &upstream,
            reserved,
            |n| {
                up.inc_by(n);
            },
            |n| {
                down.inc_by(n);
            },
        )
        .await;
        match relayed {
            Ok((up, down)) => debug!(%service, up, down, "relay done"),
            Err(e) => debug!(%service, error = %e, "relay ended with error"),
        }
    }

    /// Wait until the service has endpoints; returns them with the hold deadline, or the
    /// outcome that ended the wait. The deadline follows the service's policy once the
    /// controller's assignment brings it (ms after the first connection of a service);
    /// until then the flag.
    async fn endpoints(
        &self,
        state: &mut watch::Receiver<QueueState>,
        started: Instant,
        client: &TcpStream,
    ) -> Result<(Vec<SocketAddr>, tokio::time::Instant), &'static str> {
        loop {
            let (endpoints, hold_timeout) = {
                let s = state.borrow_and_update();
                let timeout = s.policy.map_or(self.timeouts.hold, |p| p.hold_timeout);
                (s.endpoints.clone(), timeout)
            };
            let deadline = tokio::time::Instant::from_std(started + hold_timeout);
            if tokio::time::Instant::now() >= deadline {
                return Err(outcome::TIMEOUT);
            }
            if !endpoints.is_empty() {
                return Ok((endpoints, deadline));
            }
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return Err(outcome::TIMEOUT); // registry gone: shutting down
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(outcome::TIMEOUT),
                () = client_gone(client) => return Err(outcome::CLIENT_CLOSED),
            }
        }
    }

    /// Count a wait for file descriptors; say so in the log the first time and every
    /// 1000th after (a flood of these is one problem, not a thousand).
    fn fd_wait(&self, service: &str, e: &std::io::Error) {
        let before = self.metrics.fd_waits.inc();
        if before.is_multiple_of(1000) {
            warn!(
                service,
                error = %e,
                waits = before + 1,
                "out of file descriptors: held connections wait for relays to end (raise the holder's RLIMIT_NOFILE)"
            );
        }
    }

    fn bytes_counter(&self, direction: &'static str) -> Counter {
        self.metrics
            .relay_bytes
            .get_or_create(&DirectionLabel { direction })
            .clone()
    }
}
