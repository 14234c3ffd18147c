//! Dial an upstream and relay with splice(2): zero-copy, both directions, half-close
//! respected (EOF on one side shuts down the other side's write half), byte-exact.
//! tokio-splice does the splicing; this module adds dialing and counting.

use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("no endpoints to dial")]
    NoEndpoints,
    /// The holder is out of file descriptors (EMFILE, ENFILE): not the upstream's fault,
    /// and it passes once relays end.
    #[error("no file descriptor for a socket or pipe: {0}")]
    NoDescriptors(#[source] std::io::Error),
    #[error("cannot make a socket or relay pipes: {0}")]
    Reserve(#[source] std::io::Error),
    #[error("every endpoint failed; last {addr}: {source}")]
    AllFailed {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Try each endpoint once, starting at `start % len`, each within `timeout`. The first
/// attempt uses the reservation's socket.
pub async fn dial(
    endpoints: &[SocketAddr],
    start: usize,
    timeout: Duration,
    reserved: &mut Reserved,
) -> Result<TcpStream, DialError> {
    let mut last = None;
    for i in 0..endpoints.len() {
        let addr = endpoints[(start + i) % endpoints.len()];
        let socket = match reserved.socket.take() {
            Some(s) if s.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4()) => s,
            _ => socket_for(addr).map_err(|e| match out_of_descriptors(&e) {
                true => DialError::NoDescriptors(e),
                false => DialError::Reserve(e),
            })?,
        };
        let result = match tokio::time::timeout(timeout, socket.connect(addr)).await {
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

fn socket_for(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
}

/// The five descriptors a relay needs besides the client's socket: the upstream socket
/// and the two pipes' four ends. They are taken together and held from before the dial
/// until the relay has made its pipes. Taking them one by one as needed would let every
/// held connection, when descriptors run short, take some and wait forever for the rest.
#[derive(Debug)]
pub struct Reserved {
    socket: Option<TcpSocket>,
    _pipes: [(std::io::PipeReader, std::io::PipeWriter); 2],
}

/// Serialises taking descriptors for relays: a reservation, and the hand-over of a
/// reservation's pipe descriptors to tokio-splice (which makes its pipes when the relay
/// is first polled). So no two relays can each hold part of what both need, and pipe
/// descriptors one relay gives back go to that relay.
static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn pipes() -> std::io::Result<[(std::io::PipeReader, std::io::PipeWriter); 2]> {
    Ok([std::io::pipe()?, std::io::pipe()?])
}

/// Reserve a relay's descriptors for a first dial to `addr` (`None`: pipes only, for a
/// relay whose upstream is connected already), or fail with EMFILE/ENFILE when the
/// process is out of them; nothing stays taken then.
pub async fn reserve(addr: Option<SocketAddr>) -> std::io::Result<Reserved> {
    let _one_at_a_time = STARTING.lock().await;
    let pipes = pipes()?;
    let socket = addr.map(socket_for).transpose()?;
    Ok(Reserved {
        socket,
        _pipes: pipes,
    })
}

/// EMFILE or ENFILE: the process or the system has no file descriptor to give.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

/// Relay until both directions are done. Returns (client->upstream, upstream->client)
/// bytes. The reservation's pipe descriptors are given back just as tokio-splice makes
/// its two pipes, before it moves a byte: an error that [`out_of_descriptors`]
/// recognises means nothing moved, and the relay can be retried with a new reservation.
pub async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    reserved: Reserved,
) -> std::io::Result<(u64, u64)> {
    let mut relay = std::pin::pin!(tokio_splice::zero_copy_bidirectional(client, upstream));
    let first = {
        let _handing_over = STARTING.lock().await;
        drop(reserved);
        std::future::poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx))).await
    };
    match first {
        Poll::Ready(r) => r,
        Poll::Pending => relay.await,
    }
}
