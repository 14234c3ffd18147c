//! Dial an upstream and relay with splice(2): zero-copy, both directions, half-close
//! respected (EOF on one side shuts down the other side's write half), byte-exact.
//!
//! Our own splice loop rather than tokio-splice's `zero_copy_bidirectional`, for three
//! reasons that crate's one function cannot meet: it makes its pipes inside the relay
//! (so descriptors cannot be reserved before the dial, see [`Reserved`]), with a fixed
//! 64 KiB size (see [`PIPE_SIZE`]), and reports byte counts only when both directions
//! end cleanly. The loop follows the same fill-then-drain shape; the syscalls are in
//! [`crate::sys`].
//!
//! Not handled: TCP urgent data (`MSG_OOB`). splice stops at the urgent mark, so a peer
//! that sends it would stall that direction. Envoy never sends it; a client on a
//! per-service port or in transparent mode could.

use crate::sys;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::Interest;
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

/// Bytes a relay pipe grows to when its direction turns out to be bulk. Each pass of a
/// direction fills the pipe from one socket and drains it into the other, so a bigger
/// pipe means fewer passes, syscalls and wake-ups per byte (1 MiB: ~1.5x the throughput
/// of 64 KiB pipes on loopback, BENCHMARKS.md). Pipes start at the kernel's 64 KiB and
/// grow only for a fill of at least half the pipe: pipe pages count against the user's
/// `pipe-user-pages-soft` (64 MiB by default), past which new pipes get one page, so
/// thousands of mostly idle relays (database sessions) must not each take 2 MiB.
pub const PIPE_SIZE: usize = 1 << 20;

/// One direction's pipe.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the kernel holds now.
    size: usize,
    /// Growing was tried (once per pipe).
    grown: bool,
}

impl Pipe {
    fn new() -> std::io::Result<Self> {
        let (read, write, size) = sys::pipe()?;
        Ok(Pipe {
            read,
            write,
            size,
            grown: false,
        })
    }

    /// After a fill of `filled` bytes: a bulk direction gets the big pipe.
    fn maybe_grow(&mut self, filled: usize) {
        if !self.grown && filled >= self.size / 2 && self.size < PIPE_SIZE {
            self.grown = true;
            if let Ok(size) = sys::grow_pipe(&self.write, PIPE_SIZE) {
                self.size = size;
            }
        }
    }
}

/// The five descriptors a relay needs besides the client's socket: the upstream socket
/// and two pipes. They are taken together before the dial and kept until the relay
/// ends, so a relay never starts without its pipes. Taking them one by one as needed
/// would let every held connection, when descriptors run short, take some and wait
/// forever for the rest.
#[derive(Debug)]
pub struct Reserved {
    socket: Option<TcpSocket>,
    pipes: [Pipe; 2],
}

/// Reservations do not interleave: two of them can never each hold part of what both
/// need. Held only while descriptors are made (microseconds, no await).
static RESERVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Reserve a relay's descriptors for a first dial to `addr`, or fail (EMFILE/ENFILE when
/// the process is out of them; nothing stays taken then).
pub fn reserve(addr: SocketAddr) -> std::io::Result<Reserved> {
    let _one_at_a_time = zenvoy_base::lock(&RESERVING);
    let pipes = [Pipe::new()?, Pipe::new()?];
    let socket = socket_for(addr)?;
    Ok(Reserved {
        socket: Some(socket),
        pipes,
    })
}

/// EMFILE or ENFILE: the process or the system has no file descriptor to give.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE))
}

/// Relay until both directions are done, with splice(2) through the reservation's
/// pipes: bytes go socket -> pipe -> socket inside the kernel, never through the
/// holder's memory. `up` and `down` are told every chunk moved (client -> upstream,
/// upstream -> client), so counters move during a long relay, not only at its end.
/// Returns the totals. An error in either direction ends both (the caller then closes
/// both sockets).
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    mut reserved: Reserved,
    up: impl Fn(u64),
    down: impl Fn(u64),
) -> std::io::Result<(u64, u64)> {
    let [to_upstream, to_client] = &mut reserved.pipes;
    tokio::try_join!(
        one_way(client, upstream, to_upstream, up),
        one_way(upstream, client, to_client, down),
    )
}

/// One direction: fill the (empty) pipe from `from`, drain it all into `to`, again,
/// until `from` reaches EOF; then shut down `to`'s write half, so its peer reads EOF
/// after the last byte (half-close), while the other direction goes on.
///
/// Readiness is cleared only by the socket it belongs to: a fill starts with an empty
/// pipe, so its `WouldBlock` can only mean `from` has nothing; a drain has bytes in the
/// pipe, so its `WouldBlock` can only mean `to` has no room.
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &mut Pipe,
    moved: impl Fn(u64),
) -> std::io::Result<u64> {
    let mut total = 0u64;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                sys::splice(from, &pipe.write, pipe.size)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        pipe.maybe_grow(filled);
        if filled == 0 {
            match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
                // The peer is gone already: nothing left to tell it.
                Err(e) if e.kind() != std::io::ErrorKind::NotConnected => return Err(e),
                _ => return Ok(total),
            }
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || sys::splice(&pipe.read, to, left)) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "splice moved nothing into the socket",
                    ))
                }
                Ok(n) => {
                    left -= n;
                    total += n as u64;
                    moved(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
