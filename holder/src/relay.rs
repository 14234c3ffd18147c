//! Dial an upstream and relay with splice(2): zero-copy, both directions, half-close
//! respected (EOF on one side shuts down the other side's write half), byte-exact.
//! tokio-splice does the splicing; this module adds dialing and counting.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("no endpoints to dial")]
    NoEndpoints,
    #[error("every endpoint failed; last {addr}: {source}")]
    AllFailed {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Try each endpoint once, starting at `start % len`, each within `timeout`.
pub async fn dial(
    endpoints: &[SocketAddr],
    start: usize,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let mut last = None;
    for i in 0..endpoints.len() {
        let addr = endpoints[(start + i) % endpoints.len()];
        let result = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {timeout:?}"),
            )),
        };
        match result {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => {
                debug!(%addr, error = %e, "dial failed");
                last = Some((addr, e));
            }
        }
    }
    match last {
        Some((addr, source)) => Err(DialError::AllFailed { addr, source }),
        None => Err(DialError::NoEndpoints),
    }
}

/// Relay until both directions are done. Returns (client->upstream, upstream->client)
/// bytes.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
) -> std::io::Result<(u64, u64)> {
    tokio_splice::zero_copy_bidirectional(client, upstream).await
}
