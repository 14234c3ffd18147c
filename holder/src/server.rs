//! The PROXY v2 listener: read exactly the header, hold the connection in its service's
//! queue, relay it once the service has endpoints.
//!
//! Invariant: the holder never reads a held client's bytes before the relay. The header is
//! read with exact-length reads (16 bytes, then the announced payload), so whatever the
//! client sent after it stays in the kernel and reaches the upstream first, in order.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::hold::Hold;
use crate::proxy::{self, ProxyError, ProxyHeader, PREFIX_LEN};
use crate::relay;
use crate::telemetry::{outcome, DirectionLabel, Metrics, ServiceLabel};

#[derive(Debug, Clone, Copy)]
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

#[derive(Debug, thiserror::Error)]
enum HeaderError {
    #[error("PROXY header: {0}")]
    Proxy(#[from] ProxyError),
    #[error("reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PROXY header within {0:?}")]
    Slow(Duration),
}

impl HeaderError {
    fn reason(&self) -> &'static str {
        match self {
            HeaderError::Proxy(e) => e.reason(),
            HeaderError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "truncated",
            HeaderError::Io(_) => "io",
            HeaderError::Slow(_) => "slow_header",
        }
    }
}

async fn read_header(stream: &mut TcpStream) -> Result<ProxyHeader, HeaderError> {
    let mut prefix = [0u8; PREFIX_LEN];
    stream.read_exact(&mut prefix).await?;
    let len = proxy::parse_prefix(&prefix)?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(proxy::parse_payload(&prefix, &payload)?)
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
}

impl Server {
    pub fn new(hold: Arc<Hold>, metrics: Arc<Metrics>, timeouts: Timeouts) -> Arc<Self> {
        Arc::new(Server {
            hold,
            metrics,
            timeouts,
            next: AtomicUsize::new(0),
        })
    }

    /// Accept until `shutdown`, then wait (at most `timeouts.drain`) for every connection
    /// task to finish.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let server = self.clone();
            let alive = alive_tx.clone();
            let span = tracing::debug_span!("conn", %peer);
            tokio::spawn(
                async move {
                    server.handle(stream).await;
                    drop(alive);
                }
                .instrument(span),
            );
        }
        drop(listener);
        drop(alive_tx);
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

    async fn handle(&self, mut client: TcpStream) {
        let started = Instant::now();
        let held = |o| self.metrics.held(o, started.elapsed().as_secs_f64());
        let header =
            match tokio::time::timeout(self.timeouts.header, read_header(&mut client)).await {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => return self.refuse(e),
                Err(_) => return self.refuse(HeaderError::Slow(self.timeouts.header)),
            };
        let service = match header.service() {
            Ok(s) => s.to_string(),
            Err(e) => return self.refuse(e.into()),
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
        // The hold deadline follows the service's policy once the controller's assignment
        // brings it (ms after the first connection of a service); until then the flag.
        let waited = loop {
            let (endpoints, hold_timeout) = {
                let s = state.borrow_and_update();
                let timeout = s.policy.map_or(self.timeouts.hold, |p| p.hold_timeout);
                (s.endpoints.clone(), timeout)
            };
            if !endpoints.is_empty() {
                break Ok(endpoints);
            }
            let deadline = tokio::time::Instant::from_std(started + hold_timeout);
            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        break Err(outcome::TIMEOUT); // registry gone: shutting down
                    }
                }
                () = tokio::time::sleep_until(deadline) => break Err(outcome::TIMEOUT),
                () = client_gone(&client) => break Err(outcome::CLIENT_CLOSED),
            }
        };
        let endpoints = match waited {
            Ok(e) => e,
            Err(o) => {
                self.metrics.pending.get_or_create(&label).dec();
                debug!(%service, outcome = o, "released without relay");
                return held(o);
            }
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let dialed = relay::dial(&endpoints, start, self.timeouts.connect).await;
        // The connection leaves the queue either way.
        drop(ticket);
        self.metrics.pending.get_or_create(&label).dec();
        let mut upstream = match dialed {
            Ok(u) => u,
            Err(e) => {
                warn!(%service, error = %e, "dial failed; closing held client");
                return held(outcome::DIAL_FAILED);
            }
        };
        held(outcome::RELAYED);
        self.metrics.relayed.get_or_create(&label).inc();
        let _ = client.set_nodelay(true);
        match relay::relay(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                self.bytes("client_to_upstream", up);
                self.bytes("upstream_to_client", down);
                debug!(%service, up, down, "relay done");
            }
            Err(e) => debug!(%service, error = %e, "relay ended with error"),
        }
    }

    fn bytes(&self, direction: &'static str, n: u64) {
        self.metrics
            .relay_bytes
            .get_or_create(&DirectionLabel { direction })
            .inc_by(n);
    }

    fn refuse(&self, e: HeaderError) {
        debug!(error = %e, "refused");
        self.metrics.refuse(e.reason());
    }
}
