//! The clients and their classification: one echo client per connection ([`Client`]),
//! what it saw ([`Observation`]), the verdict on it alone ([`classify`]), and the counts
//! per outcome ([`Tally`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::MSG;

/// What became of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The echo came back identical (sha256) and ended with EOF.
    Served,
    /// Timed out with no answer, or anything not covered by the others.
    Lost,
    /// ECONNREFUSED at connect, or closed with nothing back before the client finished
    /// sending: turned away before it got anywhere.
    Refused,
    /// ECONNRESET or EPIPE while connected.
    Reset,
    /// Bytes came back but differ from what was sent.
    Corrupted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Served => "served",
            Outcome::Lost => "lost",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Corrupted => "corrupted",
        })
    }
}

/// How a connected client's exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Read to EOF, and no write failed.
    Eof,
    /// An I/O error (a failed write counts when the read saw no error of its own).
    Error(io::ErrorKind),
    /// The client's time ran out.
    TimedOut,
}

/// What one client saw: the only input of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    /// connect(2): done, or its error (`TimedOut` when it did not finish in time).
    pub(crate) connect: Result<(), io::ErrorKind>,
    /// Every payload byte written and the write side shut down.
    pub(crate) sent_all: bool,
    /// Bytes that came back.
    pub(crate) received: usize,
    /// What came back is the start of what was sent: nothing foreign, nothing extra.
    pub(crate) prefix: bool,
    /// sha256 of what came back equals sha256 of what was sent.
    pub(crate) identical: bool,
    pub(crate) end: End,
}

impl Observation {
    pub(crate) fn of(
        connect: Result<(), io::ErrorKind>,
        sent: &[u8],
        sent_all: bool,
        received: &[u8],
        end: End,
    ) -> Observation {
        Observation {
            connect,
            sent_all,
            received: received.len(),
            prefix: sent.starts_with(received),
            identical: Sha256::digest(sent) == Sha256::digest(received),
            end,
        }
    }
}

/// The verdict on one client, from what it saw alone. Corruption first: wrong bytes are
/// wrong however the connection ended. A close with nothing back before the client had
/// sent everything is a refusal whether it came as a FIN or a reset (the holder's limits
/// close a connection as soon as its header is read, before its payload).
pub(crate) fn classify(o: &Observation) -> Outcome {
    let cut = |k: io::ErrorKind| {
        matches!(
            k,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        )
    };
    match (o.connect, o.end) {
        (Err(io::ErrorKind::ConnectionRefused), _) => Outcome::Refused,
        (Err(_), _) => Outcome::Lost,
        _ if o.received > 0 && !o.prefix => Outcome::Corrupted,
        (Ok(()), End::Eof) if o.sent_all && o.identical => Outcome::Served,
        (Ok(()), End::Eof) if !o.sent_all && o.received == 0 => Outcome::Refused,
        (Ok(()), End::Error(k)) if cut(k) && !o.sent_all && o.received == 0 => Outcome::Refused,
        (Ok(()), End::Error(k)) if cut(k) => Outcome::Reset,
        // A clean EOF after part of the echo: bytes came back, but not all of them.
        (Ok(()), End::Eof) if o.received > 0 => Outcome::Corrupted,
        // EOF with nothing back after everything was sent, a time-out, any other error.
        _ => Outcome::Lost,
    }
}

/// Deterministic, position-dependent bytes: a shifted or swapped byte does not compare
/// equal.
pub(crate) fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = XorShift::new(seed);
    (0..len).map(|_| x.step() as u8).collect()
}

/// xorshift64: a fixed seed gives the same sequence on every run.
#[derive(Debug)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> XorShift {
        // `| 1` keeps the state non-zero.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn step(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.step() % n.max(1)
    }
}

/// One echo client: connect, send `len` bytes of pattern `seed` and half-close while
/// reading the echo to EOF, all within `timeout`.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    /// Written first and not echoed: a PROXY v2 header, for the holder's own listener.
    pub(crate) header: Option<Arc<[u8]>>,
    pub(crate) seed: u64,
    pub(crate) len: usize,
    /// After the header, wait this long for the peer to close before sending the
    /// payload: a connection the holder refuses at once is then closed before the
    /// client finished sending, which is what a refusal looks like.
    pub(crate) refusal_window: Option<Duration>,
    pub(crate) timeout: Duration,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr, seed: u64, len: usize, timeout: Duration) -> Client {
        Client {
            addr,
            header: None,
            seed,
            len,
            refusal_window: None,
            timeout,
        }
    }

    pub(crate) fn with_header(self, header: &Arc<[u8]>) -> Client {
        Client {
            header: Some(header.clone()),
            ..self
        }
    }

    pub(crate) fn refused_within(self, window: Duration) -> Client {
        Client {
            refusal_window: Some(window),
            ..self
        }
    }
}

pub(crate) type Clients = JoinSet<Observation>;

pub(crate) async fn exchange(c: Client) -> Observation {
    let deadline = Instant::now() + c.timeout;
    let sent = payload(c.seed, c.len);
    let mut received = Vec::with_capacity(c.len);
    let sent_all = AtomicBool::new(false);
    let connected = tokio::time::timeout_at(deadline, TcpStream::connect(c.addr)).await;
    let (connect, end) = match connected {
        Err(_) => (Err(io::ErrorKind::TimedOut), End::TimedOut),
        Ok(Err(e)) => (Err(e.kind()), End::Error(e.kind())),
        Ok(Ok(stream)) => {
            let end = talk(stream, &c, &sent, &mut received, &sent_all, deadline).await;
            (Ok(()), end)
        }
    };
    Observation::of(
        connect,
        &sent,
        sent_all.load(Ordering::Relaxed),
        &received,
        end,
    )
}

/// The exchange on a connected socket. What it wrote and read is left in `sent_all` and
/// `received`, so a time-out still shows how far it got.
pub(crate) async fn talk(
    stream: TcpStream,
    c: &Client,
    sent: &[u8],
    received: &mut Vec<u8>,
    sent_all: &AtomicBool,
    deadline: Instant,
) -> End {
    let _ = stream.set_nodelay(true);
    let (mut r, mut w) = stream.into_split();
    if let Some(h) = &c.header {
        match tokio::time::timeout_at(deadline, w.write_all(&h[..])).await {
            Err(_) => return End::TimedOut,
            Ok(Err(e)) => return End::Error(e.kind()),
            Ok(Ok(())) => {}
        }
    }
    // Reads go straight into `received` (sized for the echo): no second buffer per
    // client, which matters with 10,000 of them.
    if let Some(window) = c.refusal_window {
        let window = window.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(window, r.read_buf(&mut *received)).await {
            Err(_) => {} // still open: held
            Ok(Ok(0)) => return End::Eof,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return End::Error(e.kind()),
        }
    }
    let write = async {
        w.write_all(sent).await?;
        w.shutdown().await?;
        sent_all.store(true, Ordering::Relaxed);
        io::Result::Ok(())
    };
    let read = async {
        loop {
            if r.read_buf(&mut *received).await? == 0 {
                return io::Result::Ok(());
            }
            // More than was sent can only be wrong: stop reading it.
            if received.len() > sent.len() {
                return Ok(());
            }
        }
    };
    match tokio::time::timeout_at(deadline, async { tokio::join!(write, read) }).await {
        Err(_) => End::TimedOut,
        Ok((_, Err(e))) | Ok((Err(e), Ok(()))) => End::Error(e.kind()),
        Ok((Ok(()), Ok(()))) => End::Eof,
    }
}

/// Start `n` clients of `addr`, seeds `first..first + n`, each sending [`MSG`] bytes.
pub(crate) fn wave(clients: &mut Clients, addr: SocketAddr, first: u64, n: u64, timeout: Duration) {
    for seed in first..first + n {
        clients.spawn(exchange(Client::new(addr, seed, MSG, timeout)));
    }
}

/// Wait for every client in `clients` (each bounded by its own timeout) and count them.
pub(crate) async fn settle(clients: &mut Clients, tally: &mut Tally) {
    while let Some(joined) = clients.join_next().await {
        tally.record(joined);
    }
}

/// Counts per outcome, and the first few failures as examples for the log.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    pub(crate) served: u64,
    pub(crate) lost: u64,
    pub(crate) refused: u64,
    pub(crate) reset: u64,
    pub(crate) corrupted: u64,
    pub(crate) examples: Vec<String>,
}

impl Tally {
    pub(crate) fn record(&mut self, joined: Result<Observation, JoinError>) {
        match joined {
            Ok(o) => self.add(classify(&o), &o),
            Err(e) => {
                self.lost += 1;
                self.example(format!("lost: the client's task failed: {e}"));
            }
        }
    }

    pub(crate) fn add(&mut self, outcome: Outcome, o: &Observation) {
        match outcome {
            Outcome::Served => self.served += 1,
            Outcome::Lost => self.lost += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Corrupted => self.corrupted += 1,
        }
        // Refusals are expected where a scenario floods a limit: only failures are shown.
        if matches!(outcome, Outcome::Lost | Outcome::Reset | Outcome::Corrupted) {
            self.example(format!(
                "{outcome}: connect {:?}, sent all: {}, {} bytes back, ended {:?}",
                o.connect, o.sent_all, o.received, o.end
            ));
        }
    }

    pub(crate) fn example(&mut self, text: String) {
        if self.examples.len() < 3 {
            self.examples.push(text);
        }
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        self.served += other.served;
        self.lost += other.lost;
        self.refused += other.refused;
        self.reset += other.reset;
        self.corrupted += other.corrupted;
    }

    pub(crate) fn clients(&self) -> u64 {
        self.served + self.lost + self.refused + self.reset + self.corrupted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVED: Observation = Observation {
        connect: Ok(()),
        sent_all: true,
        received: 4096,
        prefix: true,
        identical: true,
        end: End::Eof,
    };

    fn verdict_of(o: Observation) -> Outcome {
        classify(&o)
    }

    #[test]
    fn an_identical_echo_ending_in_eof_is_served() {
        assert_eq!(verdict_of(SERVED), Outcome::Served);
    }

    #[test]
    fn a_refused_connect_is_refused_and_other_connect_failures_are_lost() {
        let refused = Observation {
            connect: Err(io::ErrorKind::ConnectionRefused),
            sent_all: false,
            received: 0,
            identical: false,
            end: End::Error(io::ErrorKind::ConnectionRefused),
            ..SERVED
        };
        assert_eq!(verdict_of(refused), Outcome::Refused);
        let timed_out = Observation {
            connect: Err(io::ErrorKind::TimedOut),
            end: End::TimedOut,
            ..refused
        };
        assert_eq!(verdict_of(timed_out), Outcome::Lost);
    }

    #[test]
    fn foreign_or_extra_bytes_are_corrupted_however_the_connection_ended() {
        for end in [
            End::Eof,
            End::TimedOut,
            End::Error(io::ErrorKind::ConnectionReset),
        ] {
            let wrong = Observation {
                prefix: false,
                identical: false,
                end,
                ..SERVED
            };
            assert_eq!(verdict_of(wrong), Outcome::Corrupted, "{end:?}");
        }
    }

    #[test]
    fn a_short_echo_then_eof_is_corrupted() {
        let short = Observation {
            received: 1000,
            identical: false,
            ..SERVED
        };
        assert_eq!(verdict_of(short), Outcome::Corrupted);
    }

    #[test]
    fn a_reset_or_broken_pipe_while_connected_is_reset() {
        for kind in [io::ErrorKind::ConnectionReset, io::ErrorKind::BrokenPipe] {
            let after_sending = Observation {
                received: 0,
                identical: false,
                end: End::Error(kind),
                ..SERVED
            };
            assert_eq!(verdict_of(after_sending), Outcome::Reset, "{kind:?}");
            let mid_echo = Observation {
                received: 100,
                ..after_sending
            };
            assert_eq!(verdict_of(mid_echo), Outcome::Reset, "{kind:?}");
        }
    }

    #[test]
    fn a_close_with_nothing_back_before_sending_completed_is_refused() {
        for end in [End::Eof, End::Error(io::ErrorKind::ConnectionReset)] {
            let turned_away = Observation {
                sent_all: false,
                received: 0,
                identical: false,
                end,
                ..SERVED
            };
            assert_eq!(verdict_of(turned_away), Outcome::Refused, "{end:?}");
        }
    }

    #[test]
    fn nothing_back_after_sending_everything_or_a_time_out_is_lost() {
        let no_answer = Observation {
            received: 0,
            identical: false,
            ..SERVED
        };
        assert_eq!(verdict_of(no_answer), Outcome::Lost);
        for received in [0, 100] {
            let timed_out = Observation {
                received,
                identical: false,
                end: End::TimedOut,
                ..SERVED
            };
            assert_eq!(verdict_of(timed_out), Outcome::Lost, "{received}");
        }
        let other = Observation {
            end: End::Error(io::ErrorKind::Other),
            ..no_answer
        };
        assert_eq!(verdict_of(other), Outcome::Lost);
    }

    #[test]
    fn an_observation_compares_sha256_and_the_prefix() {
        let sent = payload(7, 4096);
        let whole = Observation::of(Ok(()), &sent, true, &sent, End::Eof);
        assert!(whole.prefix && whole.identical);
        let mut flipped = sent.clone();
        flipped[2000] ^= 1;
        let o = Observation::of(Ok(()), &sent, true, &flipped, End::Eof);
        assert!(!o.prefix && !o.identical);
        let o = Observation::of(Ok(()), &sent, true, &sent[..100], End::Eof);
        assert!(o.prefix && !o.identical);
        assert_eq!(o.received, 100);
        let mut longer = sent.clone();
        longer.push(0);
        let o = Observation::of(Ok(()), &sent, true, &longer, End::Eof);
        assert!(!o.prefix && !o.identical);
        assert_ne!(payload(7, 64), payload(8, 64), "seeds differ");
    }
}
