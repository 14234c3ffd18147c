//! The chaos suite (issue #12, RELIABILITY.md): what zenvoy's clients see when things
//! around them break. Each scenario starts its own stack of real binaries (Envoy,
//! controller, holder, `zenvoy-echo` as the service; the fake API server and kubelet for
//! Kubernetes mode), runs echo clients through it while it breaks something, classifies
//! every client by what came back, and drops the stack before the next scenario.
//!
//! ```text
//!  client --payload, FIN--> Envoy --> holder --splice--> zenvoy-echo   (woken)
//!  client <--echo, EOF----- Envoy <-- holder <---------- zenvoy-echo
//!  sha256(sent) == sha256(received)?  -> served | corrupted | reset | refused | lost
//! ```
//!
//! One table at the end, one row per scenario (and per part of scenario 3); the exit
//! status is non-zero when any row failed. Loopback only; every loop is bounded in count
//! and time, every scenario by a timeout that names what it was waiting for.
//!
//! `make chaos`, or `cargo build --release --workspace --bins && target/release/chaos
//! [--only 3b] [--cycles 1000] [--markdown PATH]`. It raises its open-file limit first
//! (root can raise the hard limit): Envoy, the holder and the services inherit it.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use zenvoy_tests::holder_client;
use zenvoy_tests::kube_stack::{self, KubeOptions, KubeStack, OPT_IN};
use zenvoy_tests::process::{rss_mib, Proc};
use zenvoy_tests::stack::{self, Options, ServiceSpec, Stack};
use zenvoy_tests::{bin, free_port, wait};

#[derive(Debug, Parser)]
#[command(about = "zenvoy's chaos suite: clients through a stack that is being broken")]
struct Args {
    /// Run only the scenarios whose id starts with this: 1 to 6, or one part of 3 (3b).
    #[arg(long)]
    only: Option<String>,
    /// Scenario 2 stops after this many parks of its service.
    #[arg(long, default_value_t = 1000)]
    cycles: u64,
    /// Scenario 2 also stops after this long, however many cycles ran (it says how many).
    #[arg(long, default_value = "7m", value_parser = humantime::parse_duration)]
    cycles_bound: Duration,
    /// Seed of scenario 2's arrival times (xorshift): the same seed, the same moments.
    #[arg(long, default_value_t = 12)]
    seed: u64,
    /// Clients in scenario 1's burst.
    #[arg(long, default_value_t = 10_000)]
    burst: u64,
    /// Also write the table as Markdown to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// The open-file limit asked for: scenario 1's 10,000 clients cost the holder six
/// descriptors each while relayed (the client socket, the upstream socket, two pipes),
/// Envoy two, this process and the echo one each.
const NOFILE: u64 = 262_144;
/// Bytes each client sends before it reads anything, unless a scenario says otherwise.
const MSG: usize = 4096;
/// A held client's whole exchange: longer than the 60 s `holdTimeout` the scenarios set,
/// so a client the holder gives up on is closed by it (and counted), not by this bound.
const HELD: Duration = Duration::from_secs(75);
/// A wait for a state the stack reaches in well under a second when healthy.
const BOUND: Duration = Duration::from_secs(30);
/// Clients per wave in scenario 3.
const WAVE: u64 = 20;
/// "At once": far above a loopback round trip, far below every timeout in play.
const AT_ONCE: Duration = Duration::from_secs(2);

/// One row of the table. Scenario 3 is eight rows (3a..3h): each kill is its own stack.
#[derive(Debug)]
struct Scenario {
    id: &'static str,
    title: &'static str,
    /// The whole scenario, stack start and stop included (scenario 2 adds
    /// `--cycles-bound`).
    bound: Duration,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "1",
        title: "a burst of clients at once on a parked service",
        bound: secs(300),
    },
    Scenario {
        id: "2",
        title: "park/wake cycles, clients at random moments",
        bound: secs(120),
    },
    Scenario {
        id: "3a",
        title: "controller SIGKILL mid-wake (processes)",
        bound: secs(150),
    },
    Scenario {
        id: "3b",
        title: "controller SIGKILL mid-park (processes)",
        bound: secs(150),
    },
    Scenario {
        id: "3c",
        title: "controller SIGKILL mid-wake (Kubernetes)",
        bound: secs(150),
    },
    Scenario {
        id: "3d",
        title: "controller SIGKILL mid-park (Kubernetes)",
        bound: secs(150),
    },
    Scenario {
        id: "3e",
        title: "Envoy SIGKILL and restart mid-wake",
        bound: secs(150),
    },
    Scenario {
        id: "3f",
        title: "holder SIGTERM with connections held",
        bound: secs(150),
    },
    Scenario {
        id: "3g",
        title: "holder SIGKILL with connections held",
        bound: secs(150),
    },
    Scenario {
        id: "3h",
        title: "API server down 10 s during a park (Kubernetes)",
        bound: secs(180),
    },
    Scenario {
        id: "4",
        title: "an Envoy gone silent (SIGSTOP), another live",
        bound: secs(120),
    },
    Scenario {
        id: "5",
        title: "a connection on a second Envoy during the park",
        bound: secs(150),
    },
    Scenario {
        id: "6",
        title: "holder: flood past maxPending, slow headers",
        bound: secs(180),
    },
];

/// The scenarios `--only` picks: those whose id starts with it (`3` is 3a..3h).
fn select(only: Option<&str>) -> Vec<&'static Scenario> {
    SCENARIOS
        .iter()
        .filter(|s| only.is_none_or(|o| s.id.starts_with(o)))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let scenarios = select(args.only.as_deref());
    if scenarios.is_empty() {
        let ids: Vec<&str> = SCENARIOS.iter().map(|s| s.id).collect();
        anyhow::bail!(
            "--only {:?} matches no scenario (ids: {})",
            args.only.as_deref().unwrap_or_default(),
            ids.join(", ")
        );
    }
    // Before any stack starts: every process the harness spawns inherits it.
    let nofile = raise_nofile(NOFILE);
    eprintln!("chaos: open-file limit {nofile}");
    let mut rows = Vec::with_capacity(scenarios.len());
    for s in scenarios {
        rows.push(run_scenario(s, &args).await);
    }
    println!("{}", render_text(&rows));
    if let Some(path) = &args.markdown {
        std::fs::write(path, render_markdown(&rows))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if rows.iter().all(|r| r.passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Raise RLIMIT_NOFILE, soft and hard, to at least `want` (raising the hard limit needs
/// CAP_SYS_RESOURCE: root in CI); else the soft limit to the hard one. Returns the soft
/// limit now in force.
fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    let goal = want.max(soft);
    if setrlimit(Resource::RLIMIT_NOFILE, goal, goal.max(hard)).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s)
}

async fn run_scenario(s: &Scenario, args: &Args) -> Row {
    eprintln!("== {} {}", s.id, s.title);
    let bound = if s.id == "2" {
        s.bound + args.cycles_bound
    } else {
        s.bound
    };
    let mut rep = Report {
        id: s.id,
        ..Report::default()
    };
    let started = Instant::now();
    let outcome = tokio::time::timeout(bound, run(s.id, args, &mut rep)).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("   {}: {e:#}", s.id);
            rep.problems.push(first_line(&format!("{e:#}")).to_string());
        }
        Err(_) => rep.problems.push(format!(
            "scenario timed out after {} s while {}",
            bound.as_secs(),
            rep.phase
        )),
    }
    for e in &rep.tally.examples {
        eprintln!("   {}: {e}", s.id);
    }
    let row = Row::new(s, rep, started.elapsed());
    eprintln!(
        "== {} {} in {:.1} s",
        s.id,
        if row.passed { "PASS" } else { "FAIL" },
        row.duration.as_secs_f64()
    );
    row
}

async fn run(id: &str, args: &Args, rep: &mut Report) -> anyhow::Result<()> {
    match id {
        "1" => burst(args, rep).await,
        "2" => park_wake_cycles(args, rep).await,
        "3a" => controller_killed_mid_wake(rep).await,
        "3b" => controller_killed_mid_park(rep).await,
        "3c" => kube_controller_killed_mid_wake(rep).await,
        "3d" => kube_controller_killed_mid_park(rep).await,
        "3e" => envoy_restarted_mid_wake(rep).await,
        "3f" => holder_stopped_with_connections_held(rep).await,
        "3g" => holder_killed_with_connections_held(rep).await,
        "3h" => apiserver_down_during_a_park(rep).await,
        "4" => silent_envoy(rep).await,
        "5" => second_envoy_during_the_park(rep).await,
        "6" => holder_flood_and_slow_headers(rep).await,
        other => anyhow::bail!("no scenario {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Clients and their classification
// ---------------------------------------------------------------------------------------

/// What became of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
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
enum End {
    /// Read to EOF, and no write failed.
    Eof,
    /// An I/O error (a failed write counts when the read saw no error of its own).
    Error(io::ErrorKind),
    /// The client's time ran out.
    TimedOut,
}

/// What one client saw: the only input of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Observation {
    /// connect(2): done, or its error (`TimedOut` when it did not finish in time).
    connect: Result<(), io::ErrorKind>,
    /// Every payload byte written and the write side shut down.
    sent_all: bool,
    /// Bytes that came back.
    received: usize,
    /// What came back is the start of what was sent: nothing foreign, nothing extra.
    prefix: bool,
    /// sha256 of what came back equals sha256 of what was sent.
    identical: bool,
    end: End,
}

impl Observation {
    fn of(
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
fn classify(o: &Observation) -> Outcome {
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
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = XorShift::new(seed);
    (0..len).map(|_| x.step() as u8).collect()
}

/// xorshift64: a fixed seed gives the same sequence on every run.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // `| 1` keeps the state non-zero.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn step(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.step() % n.max(1)
    }
}

/// One echo client: connect, send `len` bytes of pattern `seed` and half-close while
/// reading the echo to EOF, all within `timeout`.
#[derive(Debug, Clone)]
struct Client {
    addr: SocketAddr,
    /// Written first and not echoed: a PROXY v2 header, for the holder's own listener.
    header: Option<Arc<[u8]>>,
    seed: u64,
    len: usize,
    /// After the header, wait this long for the peer to close before sending the
    /// payload: a connection the holder refuses at once is then closed before the
    /// client finished sending, which is what a refusal looks like.
    refusal_window: Option<Duration>,
    timeout: Duration,
}

impl Client {
    fn new(addr: SocketAddr, seed: u64, len: usize, timeout: Duration) -> Client {
        Client {
            addr,
            header: None,
            seed,
            len,
            refusal_window: None,
            timeout,
        }
    }

    fn with_header(self, header: &Arc<[u8]>) -> Client {
        Client {
            header: Some(header.clone()),
            ..self
        }
    }

    fn refused_within(self, window: Duration) -> Client {
        Client {
            refusal_window: Some(window),
            ..self
        }
    }
}

type Clients = JoinSet<Observation>;

async fn exchange(c: Client) -> Observation {
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
async fn talk(
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
fn wave(clients: &mut Clients, addr: SocketAddr, first: u64, n: u64, timeout: Duration) {
    for seed in first..first + n {
        clients.spawn(exchange(Client::new(addr, seed, MSG, timeout)));
    }
}

/// Wait for every client in `clients` (each bounded by its own timeout) and count them.
async fn settle(clients: &mut Clients, tally: &mut Tally) {
    while let Some(joined) = clients.join_next().await {
        tally.record(joined);
    }
}

/// Counts per outcome, and the first few failures as examples for the log.
#[derive(Debug, Default, Clone)]
struct Tally {
    served: u64,
    lost: u64,
    refused: u64,
    reset: u64,
    corrupted: u64,
    examples: Vec<String>,
}

impl Tally {
    fn record(&mut self, joined: Result<Observation, JoinError>) {
        match joined {
            Ok(o) => self.add(classify(&o), &o),
            Err(e) => {
                self.lost += 1;
                self.example(format!("lost: the client's task failed: {e}"));
            }
        }
    }

    fn add(&mut self, outcome: Outcome, o: &Observation) {
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

    fn example(&mut self, text: String) {
        if self.examples.len() < 3 {
            self.examples.push(text);
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.served += other.served;
        self.lost += other.lost;
        self.refused += other.refused;
        self.reset += other.reset;
        self.corrupted += other.corrupted;
    }

    fn clients(&self) -> u64 {
        self.served + self.lost + self.refused + self.reset + self.corrupted
    }
}

// ---------------------------------------------------------------------------------------
// Reports and the table
// ---------------------------------------------------------------------------------------

/// What a scenario found, filled in as it runs: a scenario that times out still shows
/// what it counted and where it was.
#[derive(Debug, Default)]
struct Report {
    id: &'static str,
    /// What the scenario is doing or waiting for now.
    phase: String,
    /// Clients that must be served (or refused, up to `refusals_expected`).
    tally: Tally,
    /// Clients whose connections lived in a process the scenario killed: lost by nature,
    /// counted in the table and never failed on, unless their bytes came back wrong.
    victims: Tally,
    refusals_expected: u64,
    notes: Vec<String>,
    problems: Vec<String>,
}

impl Report {
    fn at(&mut self, phase: impl Into<String>) {
        self.phase = phase.into();
        eprintln!("   {}: {}", self.id, self.phase);
    }

    fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    fn problem(&mut self, text: impl Into<String>) {
        let text = text.into();
        eprintln!("   {}: problem: {text}", self.id);
        self.problems.push(text);
    }

    /// A wait that failed: the scenario fails, but carries on, so the clients it already
    /// started are still settled and counted.
    fn failed(&mut self, e: &anyhow::Error, logs: &str) {
        eprintln!("   {}: {e:#}\n{logs}", self.id);
        self.problems
            .push(first_line(&format!("{e:#}")).to_string());
    }
}

/// Whether a scenario passed: nothing went wrong in its own checks, none of its clients
/// was lost, reset or corrupted, none refused beyond what it expects, and no victim of a
/// kill got wrong bytes.
fn verdict(tally: &Tally, victims: &Tally, refusals_expected: u64, problems: usize) -> bool {
    problems == 0
        && tally.lost == 0
        && tally.reset == 0
        && tally.corrupted == 0
        && tally.refused <= refusals_expected
        && victims.corrupted == 0
}

#[derive(Debug)]
struct Row {
    id: &'static str,
    title: &'static str,
    counts: Tally,
    duration: Duration,
    passed: bool,
    note: String,
}

impl Row {
    fn new(s: &Scenario, rep: Report, duration: Duration) -> Row {
        let passed = verdict(
            &rep.tally,
            &rep.victims,
            rep.refusals_expected,
            rep.problems.len(),
        );
        let mut counts = rep.tally.clone();
        counts.merge(&rep.victims);
        let mut parts: Vec<String> = rep
            .problems
            .iter()
            .map(|p| format!("problem: {p}"))
            .collect();
        parts.extend(rep.notes);
        Row {
            id: s.id,
            title: s.title,
            counts,
            duration,
            passed,
            note: parts.join("; "),
        }
    }

    fn cells(&self) -> [String; 9] {
        let c = &self.counts;
        [
            format!("{} {}", self.id, self.title),
            c.served.to_string(),
            c.lost.to_string(),
            c.refused.to_string(),
            c.reset.to_string(),
            c.corrupted.to_string(),
            format!("{:.1} s", self.duration.as_secs_f64()),
            if self.passed { "PASS" } else { "FAIL" }.to_string(),
            self.note.clone(),
        ]
    }
}

const HEAD: [&str; 9] = [
    "scenario",
    "served",
    "lost",
    "refused",
    "reset",
    "corrupted",
    "duration",
    "result",
    "note",
];

/// The table for the terminal: the scenario column left-aligned, counts and duration
/// right-aligned, the note last and unpadded.
fn render_text(rows: &[Row]) -> String {
    let head = HEAD.map(str::to_string);
    let body: Vec<[String; 9]> = rows.iter().map(Row::cells).collect();
    let mut width = HEAD.map(str::len);
    for cells in &body {
        for (w, cell) in width.iter_mut().zip(cells) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String; 9]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            match i {
                8 => out.push_str(cell),
                0 | 7 => out.push_str(&format!("{cell:<w$}  ")),
                _ => out.push_str(&format!("{cell:>w$}  ")),
            }
        }
        out.trim_end().to_string()
    };
    let rule = "-".repeat(width.iter().sum::<usize>() + 2 * (width.len() - 1));
    let mut lines = vec![line(&head), rule];
    lines.extend(body.iter().map(line));
    lines.join("\n")
}

fn render_markdown(rows: &[Row]) -> String {
    let mut out = format!(
        "| {} |\n|---|---:|---:|---:|---:|---:|---:|---|---|\n",
        HEAD.join(" | ")
    );
    for r in rows {
        let cells: Vec<String> = r.cells().iter().map(|c| c.replace('|', "\\|")).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn with_logs(e: anyhow::Error, logs: &str) -> anyhow::Error {
    anyhow::anyhow!("{e:#}\n{logs}")
}

// ---------------------------------------------------------------------------------------
// Waits on the stack
// ---------------------------------------------------------------------------------------

fn pending(service: &str) -> String {
    format!("zenvoy_holder_pending{{service=\"{service}\"}}")
}

fn state(service: &str, state: &str) -> String {
    format!("zenvoy_service_state{{service=\"{service}\",state=\"{state}\"}}")
}

/// Wait until the holder's `series` reads at least `want`; returns what it read.
async fn holder_at_least(
    st: &Stack,
    series: &str,
    want: f64,
    bound: Duration,
) -> anyhow::Result<f64> {
    let what = format!("{series} to reach {want}");
    wait::until(&what, bound, || async {
        let v = st.holder_metric(series).await?;
        anyhow::ensure!(v >= want, "it is {v}");
        Ok(Some(v))
    })
    .await
}

/// Wait until the controller's `series` reads exactly `want` (a 0/1 state gauge).
async fn controller_is(st: &Stack, series: &str, want: f64, bound: Duration) -> anyhow::Result<()> {
    let what = format!("{series} to be {want}");
    wait::until(&what, bound, || async {
        let v = st.controller_metric(series).await?;
        anyhow::ensure!(v == want, "it is {v}");
        Ok(Some(()))
    })
    .await
}

/// `n` connections held for `service` and its wake under way.
async fn held_and_waking(st: &Stack, service: &str, n: u64) -> anyhow::Result<()> {
    holder_at_least(st, &pending(service), n as f64, BOUND).await?;
    controller_is(st, &state(service, "waking"), 1.0, BOUND).await
}

/// A gated echo service `name` (held until [`stack::Gate::open`]) with a 60 s
/// holdTimeout and the `extra` YAML keys, in a stack of its own.
async fn gated_stack(name: &str, extra: &[&str]) -> anyhow::Result<(Stack, stack::Gate)> {
    let dir = Stack::tempdir()?;
    let (spec, gate) = ServiceSpec::gated_echo(name, dir.path())?;
    let spec = extra
        .iter()
        .fold(spec.with("holdTimeout: 60s"), |spec, e| spec.with(e));
    let opts = Options {
        services: vec![spec],
        ..Options::default()
    };
    Ok((Stack::start(dir, opts).await?, gate))
}

/// A process stopped with SIGSTOP, continued when dropped (an early return included), so
/// the stack's SIGTERM reaches it when it is torn down.
#[derive(Debug)]
struct Frozen(Pid);

impl Frozen {
    fn stop(pid: u32) -> anyhow::Result<Frozen> {
        let pid = Pid::from_raw(i32::try_from(pid)?);
        kill(pid, Signal::SIGSTOP)?;
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

// ---------------------------------------------------------------------------------------
// 1: a burst at a parked service
// ---------------------------------------------------------------------------------------

/// `--burst` clients connect at once through Envoy to a parked service and each sends
/// 4 KiB before any reply. The service is gated: every client is held before it can
/// wake. Then the gate opens and every one must be served.
async fn burst(args: &Args, rep: &mut Report) -> anyhow::Result<()> {
    let n = args.burst;
    let limit = raise_nofile(NOFILE);
    // Descriptor limits are per process. This process holds one per client; each of the
    // two Envoys two per client of its half; the holder one per held client, and relays
    // (five descriptors each) wait for descriptors when it runs short, holding on.
    let need = n + 1024;
    anyhow::ensure!(
        limit >= need,
        "open-file limit {limit} is below the {need} that {n} clients need in one process"
    );
    rep.at("starting the stack");
    let dir = Stack::tempdir()?;
    let (spec, gate) = ServiceSpec::gated_echo("burst", dir.path())?;
    // Above the burst, per service and in total. The holder's own flags count until the
    // service's first assignment reaches it, milliseconds into the burst: both agree.
    // The hold and wake bounds leave room for holding all of them first.
    let max = (2 * n).max(20_000).to_string();
    let spec = spec
        .with(&format!("maxPending: {max}"))
        .with("holdTimeout: 240s")
        .with("wakeTimeout: 240s");
    let holder_args = [
        "--max-pending",
        max.as_str(),
        "--max-pending-total",
        max.as_str(),
        "--hold-timeout",
        "240s",
    ];
    let st = Stack::start(
        dir,
        Options {
            services: vec![spec],
            holder_args: holder_args.iter().map(|a| a.to_string()).collect(),
            ..Options::default()
        },
    )
    .await?;
    // Two Envoys, half the clients each: one Envoy would need two descriptors per client
    // (downstream and upstream), past this machine's limit for one process at 10,000.
    let second = st.start_envoy("envoy-2").await?;
    let addrs = [st.listener("burst").await?, second.listener("burst").await?];
    let mut clients = Clients::new();
    rep.at(format!("{n} clients connecting at once through two Envoys"));
    for seed in 0..n {
        clients.spawn(exchange(Client::new(
            addrs[seed as usize % 2],
            seed,
            MSG,
            Duration::from_secs(240),
        )));
    }
    rep.at(format!("waiting for all {n} clients held"));
    match holder_at_least(&st, &pending("burst"), n as f64, Duration::from_secs(150)).await {
        Ok(held) => rep.note(format!(
            "{held} held before the wake; open-file limit {limit}"
        )),
        Err(e) => rep.failed(&e, &st.logs()),
    }
    gate.open()?;
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 2: park/wake cycles
// ---------------------------------------------------------------------------------------

/// A service that parks 100 ms after its last connection, and clients at random
/// moments (0 to 400 ms apart, from `--seed`), each its own short echo, until the
/// service has parked `--cycles` times or `--cycles-bound` passed. The moments fall
/// anywhere: parked, waking, awake, and both phases of the park. Every client must be
/// served.
async fn park_wake_cycles(args: &Args, rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the stack");
    let dir = Stack::tempdir()?;
    let spec = ServiceSpec::echo("cycle", dir.path())?
        .with("idleTimeout: 50ms")
        .with("parkAckTimeout: 1s")
        .with("wakeTimeout: 20s")
        .with("holdTimeout: 30s");
    let st = Stack::start(
        dir,
        Options {
            services: vec![spec],
            flush: Duration::from_millis(50),
            ..Options::default()
        },
    )
    .await?;
    let addr = st.listener("cycle").await?;
    let parks = "zenvoy_parks_total{service=\"cycle\"}";
    let mut rng = XorShift::new(args.seed);
    let mut clients = Clients::new();
    let started = Instant::now();
    // At most 50 clients a cycle: a bound on the loop whatever the clock does.
    let max_clients = args.cycles.saturating_mul(50);
    let mut done = 0.0;
    let mut next_report = 100.0;
    let mut opened = 0u64;
    rep.at(format!(
        "up to {} park/wake cycles within {} s",
        args.cycles,
        args.cycles_bound.as_secs()
    ));
    while started.elapsed() < args.cycles_bound && opened < max_clients {
        done = st.controller_metric(parks).await.unwrap_or(done);
        if done >= args.cycles as f64 {
            break;
        }
        if done >= next_report {
            eprintln!(
                "   2: {done} cycles, {opened} clients, {:.0} s",
                started.elapsed().as_secs_f64()
            );
            next_report += 100.0;
        }
        // Two in three gaps are quiet long enough for a park to complete (idle, ACK,
        // every Envoy's idle sample: ~300 ms); the rest land while it is awake, waking,
        // or in the park's phases.
        let gap = if rng.below(3) < 2 {
            300 + rng.below(100)
        } else {
            rng.below(150)
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let len = 1 + rng.below(8192) as usize;
        clients.spawn(exchange(Client::new(
            addr,
            opened,
            len,
            Duration::from_secs(40),
        )));
        opened += 1;
        // Count the finished ones as we go: the set stays small.
        while let Some(joined) = clients.try_join_next() {
            rep.tally.record(joined);
        }
    }
    let ran_for = started.elapsed();
    rep.at("waiting for the last clients");
    settle(&mut clients, &mut rep.tally).await;
    let done = st.controller_metric(parks).await.unwrap_or(done);
    let cancelled = st
        .controller_metric("zenvoy_parks_cancelled_total{service=\"cycle\"}")
        .await
        .unwrap_or(f64::NAN);
    let relayed = st
        .holder_metric("zenvoy_holder_relayed_total{service=\"cycle\"}")
        .await
        .unwrap_or(f64::NAN);
    let summary = format!(
        "{done} of {} cycles in {:.0} s ({opened} clients); {cancelled} parks cancelled by a connection in phase one; {relayed} clients held and relayed",
        args.cycles,
        ran_for.as_secs_f64()
    );
    eprintln!("   2: {summary}");
    rep.note(summary);
    if done < 1.0 {
        rep.problem("no park completed: no cycle ran");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3: restarts and kills
// ---------------------------------------------------------------------------------------

/// 3a: the controller is killed (SIGKILL) while it wakes a service with clients held,
/// more clients in flight while it is down and after it is back. The restarted
/// controller adopts the process the killed one started (its state file) and finishes
/// the wake; every client must be served.
async fn controller_killed_mid_wake(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the stack");
    let (mut st, gate) = gated_stack("svc", &[]).await?;
    let addr = st.listener("svc").await?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 0, WAVE, HELD);
    rep.at("waiting for the first wave held and the wake under way");
    if let Err(e) = held_and_waking(&st, "svc", WAVE).await {
        rep.failed(&e, &st.logs());
    }
    // In flight while the controller dies and comes back.
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) and starting it again");
    let restarted = st.restart_controller().await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the three waves held");
    if let Err(e) = holder_at_least(&st, &pending("svc"), 3.0 * WAVE as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    gate.open()?;
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed while waking with {WAVE} held; {WAVE} in flight during the restart, {WAVE} after"
    ));
    Ok(())
}

/// 3b: the controller is killed while it parks a service (phase one: the holder
/// published, an idle sample awaited; a 2 s stats flush holds it there), with clients in
/// flight and more after its restart. Every client must be served.
async fn controller_killed_mid_park(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the stack");
    let dir = Stack::tempdir()?;
    let spec = ServiceSpec::echo("svc", dir.path())?
        .with("idleTimeout: 1s")
        .with("holdTimeout: 60s");
    let mut st = Stack::start(
        dir,
        Options {
            services: vec![spec],
            flush: Duration::from_secs(2),
            ..Options::default()
        },
    )
    .await?;
    let addr = st.listener("svc").await?;
    let mut clients = Clients::new();
    rep.at("waking the service");
    wave(&mut clients, addr, 0, 1, HELD);
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the park to begin");
    controller_is(&st, &state("svc", "parking"), 1.0, BOUND)
        .await
        .map_err(|e| with_logs(e, &st.logs()))?;
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) mid-park and starting it again");
    let restarted = st.restart_controller().await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed in phase one of the park with {WAVE} clients in flight; {WAVE} after the restart"
    ));
    Ok(())
}

/// A Kubernetes-mode stack (one controller) with Deployment `web` at 0 behind the
/// opted-in Service `web.default`; returns it and the Envoy listener for it.
async fn kube_with_web(opts: KubeOptions) -> anyhow::Result<(KubeStack, SocketAddr)> {
    let ks = KubeStack::start(opts, 1).await?;
    let port = free_port()?.port();
    ks.api.put(kube_stack::workload(
        "Deployment",
        "default",
        "web",
        0,
        port,
        &[],
    ))?;
    ks.api
        .put(kube_stack::service("default", "web", port, &OPT_IN))?;
    let addr = ks.listener("web.default").await?;
    Ok((ks, addr))
}

/// 3c: Kubernetes mode, the controller killed after it scaled the Deployment up and
/// before the pod is ready (the kubelet takes 4 s), clients held, in flight, and after.
async fn kube_controller_killed_mid_wake(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the Kubernetes stack");
    let opts = KubeOptions {
        start_delay: Duration::from_secs(4),
        defaults: vec!["idleTimeout: 3s".into(), "holdTimeout: 60s".into()],
        ..KubeOptions::default()
    };
    let (mut ks, addr) = kube_with_web(opts).await?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 0, WAVE, HELD);
    rep.at("waiting for the scale-up");
    if let Err(e) = ks
        .wait_replicas("Deployment", "default", "web", 1, BOUND)
        .await
    {
        rep.failed(&e, &ks.logs());
    }
    if ks.kubelet.running("default", "web") > 0 {
        rep.problem("the pod was already up at the kill: not mid-wake");
    }
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) mid-wake and starting it again");
    let restarted = ks.restart_controller(0).await;
    restarted.map_err(|e| with_logs(e, &ks.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed between the scale-up and the pod's readiness; /scale writes in all: {}",
        ks.scale_writes().len()
    ));
    Ok(())
}

/// 3d: Kubernetes mode, the controller killed in phase one of a park (a 2 s stats flush
/// holds it there), clients in flight and after its restart.
async fn kube_controller_killed_mid_park(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the Kubernetes stack");
    let opts = KubeOptions {
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 60s".into()],
        flush: Duration::from_secs(2),
        ..KubeOptions::default()
    };
    let (mut ks, addr) = kube_with_web(opts).await?;
    let mut clients = Clients::new();
    rep.at("waking the service");
    wave(&mut clients, addr, 0, 1, HELD);
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the park to begin");
    ks.controllers[0]
        .wait_metric(
            &state("web.default", "parking"),
            1.0,
            Duration::from_secs(40),
        )
        .await
        .map_err(|e| with_logs(e, &ks.logs()))?;
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) mid-park and starting it again");
    let restarted = ks.restart_controller(0).await;
    restarted.map_err(|e| with_logs(e, &ks.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed in phase one of the park with {WAVE} clients in flight; {WAVE} after the restart"
    ));
    Ok(())
}

/// 3e: one Envoy is killed (SIGKILL) and started again while a wake is under way, with
/// clients held through a second Envoy and more through the restarted one. Connections
/// through the killed Envoy end with its process, as any proxy's do; none are opened
/// there.
async fn envoy_restarted_mid_wake(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the stack and a second Envoy");
    let (mut st, gate) = gated_stack("svc", &[]).await?;
    let other = st.start_envoy("envoy-2").await?;
    let via_other = other.listener("svc").await?;
    let mut clients = Clients::new();
    wave(&mut clients, via_other, 0, WAVE, HELD);
    rep.at("waiting for envoy-2's clients held and the wake under way");
    if let Err(e) = held_and_waking(&st, "svc", WAVE).await {
        rep.failed(&e, &st.logs());
    }
    rep.at("killing envoy-1 (SIGKILL) and starting it again");
    let restarted = st.restart_envoy().await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    let via_new = st.listener("svc").await?;
    wave(&mut clients, via_new, 100, WAVE, HELD);
    rep.at("waiting for the restarted Envoy's clients held too");
    if let Err(e) = holder_at_least(&st, &pending("svc"), 2.0 * WAVE as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    gate.open()?;
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the restarted Envoy to get the woken endpoint");
    let upstream = st.service("svc").upstream;
    match st.wait_hosts("svc", &[upstream], BOUND).await {
        Ok(()) => {
            wave(&mut clients, via_new, 200, WAVE, HELD);
            settle(&mut clients, &mut rep.tally).await;
        }
        Err(e) => rep.failed(&e, &st.logs()),
    }
    rep.note(format!(
        "{WAVE} held via envoy-2 across the restart, {WAVE} via the restarted envoy-1 mid-wake, {WAVE} after; none opened on the killed Envoy (its connections die with it)"
    ));
    Ok(())
}

/// 3f: SIGTERM to the holder with clients held: it stops accepting, keeps what it
/// holds, relays it once the service is up, then exits. Clients after the wake go
/// straight to the service.
async fn holder_stopped_with_connections_held(rep: &mut Report) -> anyhow::Result<()> {
    const HELD_N: u64 = 50;
    rep.at("starting the stack");
    // Once this holder has exited there is none: a park would point Envoy at an address
    // nothing listens on. The service stays awake for the clients after the wake.
    let (mut st, gate) = gated_stack("svc", &["idleTimeout: 10m"]).await?;
    let addr = st.listener("svc").await?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 0, HELD_N, HELD);
    rep.at(format!("waiting for {HELD_N} clients held"));
    if let Err(e) = holder_at_least(&st, &pending("svc"), HELD_N as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    rep.at("stopping the holder (SIGTERM) with the clients held");
    kill(
        Pid::from_raw(i32::try_from(st.holder.pid())?),
        Signal::SIGTERM,
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(status) = st.holder.exited() {
        rep.problem(format!("the holder exited with connections held: {status}"));
    }
    gate.open()?;
    rep.at("waiting for the held clients' echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the holder to exit after its last relay");
    let exited = wait::until("the holder to exit after its last relay", BOUND, || {
        let exited = st.holder.exited();
        async move { Ok(exited) }
    })
    .await;
    match exited {
        Ok(status) => rep.note(format!(
            "{HELD_N} held through SIGTERM and relayed; the holder then exited ({status})"
        )),
        Err(e) => rep.failed(&e, &st.logs()),
    }
    rep.at("clients after the wake, straight to the service");
    let upstream = st.service("svc").upstream;
    match st.wait_hosts("svc", &[upstream], BOUND).await {
        Ok(()) => {
            wave(&mut clients, addr, 100, WAVE, HELD);
            settle(&mut clients, &mut rep.tally).await;
        }
        Err(e) => rep.failed(&e, &st.logs()),
    }
    Ok(())
}

/// 3g: SIGKILL to the holder with clients held. Their connections lived in that process:
/// they are lost by nature, counted as victims (reported, not failed on). A new holder
/// on the same address then holds the next clients, which must be served.
async fn holder_killed_with_connections_held(rep: &mut Report) -> anyhow::Result<()> {
    const DOOMED: u64 = 50;
    rep.at("starting the stack");
    let (mut st, gate) = gated_stack("svc", &[]).await?;
    let addr = st.listener("svc").await?;
    let mut doomed = Clients::new();
    wave(&mut doomed, addr, 0, DOOMED, HELD);
    rep.at(format!("waiting for {DOOMED} clients held"));
    if let Err(e) = holder_at_least(&st, &pending("svc"), DOOMED as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    rep.at("killing the holder (SIGKILL) with the clients held");
    st.holder.kill();
    settle(&mut doomed, &mut rep.victims).await;
    rep.at("starting a new holder on the same address");
    let restarted = restart_holder(&mut st).await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("waiting for the new holder to hold the next clients");
    if let Err(e) = holder_at_least(&st, &pending("svc"), WAVE as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    gate.open()?;
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "{} held in the killed holder: lost by nature (their sockets lived in that process, and SIGKILL lets it hand none over); {} clients of the restarted holder served",
        rep.victims.clients(),
        rep.tally.served
    ));
    Ok(())
}

/// Start a holder again on the stack's holder address, with the flags
/// [`Stack::start`] gives it (a node id the controller knows, a fresh admin port); the
/// old one must be gone. The stack's admin address follows the new one.
async fn restart_holder(st: &mut Stack) -> anyhow::Result<()> {
    let d = st.dir.path().to_path_buf();
    let address_path = d.join("holder-restarted.json");
    let mut cmd = Command::new(bin("zenvoy-holder")?);
    cmd.arg("--listen")
        .arg(st.holder_listen.to_string())
        .args(["--admin", "127.0.0.1:0", "--node-id", "holder-1"])
        .arg("--controller")
        .arg(format!("http://{}", st.grpc))
        .arg("--address-file")
        .arg(&address_path)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    let mut holder = Proc::spawn("holder", cmd, Some(&d.join("holder-restarted.log")))?;
    let h =
        stack::address_file("the new holder's address file", &address_path, &mut holder).await?;
    st.holder_admin = stack::addr(&h, "admin")?;
    st.holder_addresses = h;
    st.holder = holder;
    Ok(())
}

/// 3h: Kubernetes mode, the API server unreachable for 10 s from the moment a park
/// begins: the scale-down fails and is retried, clients arrive at once and 5 s in, and
/// must all be served once the API is back (within their 60 s holdTimeout). The Lease
/// lasts 15 s, the production default, so the outage is not also a change of leader.
async fn apiserver_down_during_a_park(rep: &mut Report) -> anyhow::Result<()> {
    const OUTAGE: Duration = Duration::from_secs(10);
    rep.at("starting the Kubernetes stack");
    let opts = KubeOptions {
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 60s".into()],
        flush: Duration::from_secs(2),
        lease_duration: Duration::from_secs(15),
        ..KubeOptions::default()
    };
    let (ks, addr) = kube_with_web(opts).await?;
    let mut clients = Clients::new();
    rep.at("waking the service");
    wave(&mut clients, addr, 0, 1, HELD);
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the park to begin");
    ks.controllers[0]
        .wait_metric(
            &state("web.default", "parking"),
            1.0,
            Duration::from_secs(40),
        )
        .await
        .map_err(|e| with_logs(e, &ks.logs()))?;
    ks.api.set_available(false);
    let down = Instant::now();
    rep.at("API down: waiting for the scale-down to fail");
    let failed_scale_down = ks.controllers[0]
        .wait_metric(
            "zenvoy_kube_api_errors_total{op=\"scale_down\"}",
            1.0,
            OUTAGE / 2,
        )
        .await;
    rep.note(match failed_scale_down {
        Ok(()) => "the scale-down failed against the unreachable API and was retried",
        Err(_) => "no scale-down tried in the first 5 s of the outage (still in phase one)",
    });
    wave(&mut clients, addr, 100, WAVE, HELD);
    tokio::time::sleep_until(down + OUTAGE / 2).await;
    wave(&mut clients, addr, 200, WAVE, HELD);
    tokio::time::sleep_until(down + OUTAGE).await;
    ks.api.set_available(true);
    rep.at("API back: waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "{WAVE} clients at the start of the outage, {WAVE} 5 s in; replicas now {:?}",
        ks.replicas("Deployment", "default", "web")
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 4: a silent proxy
// ---------------------------------------------------------------------------------------

/// Envoy-1 holds a session open (the service stays awake), then is stopped with SIGSTOP:
/// its sockets stay open, it answers nothing. The controller (peerTimeout 6 s) must end
/// its stream, expire its stats and park the service within peerTimeout + idleTimeout +
/// 5 s, while envoy-2's clients (in the first 3 s, and a wake after the park) are all
/// served.
async fn silent_envoy(rep: &mut Report) -> anyhow::Result<()> {
    const PEER: Duration = Duration::from_secs(6);
    const IDLE: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_secs(5);
    rep.at("starting the stack and a second Envoy");
    let dir = Stack::tempdir()?;
    let spec = ServiceSpec::echo("quiet", dir.path())?.with("idleTimeout: 2s");
    let st = Stack::start(
        dir,
        Options {
            services: vec![spec],
            controller: vec!["peerTimeout: 6s".into()],
            ..Options::default()
        },
    )
    .await?;
    let live = st.start_envoy("envoy-2").await?;
    let (via_silent, via_live) = (st.listener("quiet").await?, live.listener("quiet").await?);
    rep.at("opening a session through envoy-1");
    let mut session = TcpStream::connect(via_silent).await?;
    session.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(BOUND, session.read_exact(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("no echo of the session's ping within {BOUND:?}"))??;
    tokio::time::sleep(IDLE * 2).await;
    if st.service("quiet").running_pid().is_none() {
        rep.problem("the open session did not keep the service awake");
    }
    let streams = "zenvoy_xds_streams";
    let streams_before = st.controller_metric(streams).await?;
    rep.at("SIGSTOP envoy-1 with its session open; waiting for the service to park");
    let frozen = Frozen::stop(st.envoy.proc.pid())?;
    let stopped = Instant::now();
    let mut clients = Clients::new();
    // The live Envoy's clients, in the first 3 s: they end well before the silent Envoy
    // can be noticed, so the park is timed from the silent one alone.
    let feed = async {
        for seed in 0..15 {
            clients.spawn(exchange(Client::new(via_live, seed, MSG, HELD)));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // When the controller closed envoy-1's stream: one ADS stream fewer.
    let stream_ended: Cell<Option<Duration>> = Cell::new(None);
    let spec = st.service("quiet");
    let watch = wait::until(
        "the service parked with envoy-1 silent",
        Duration::from_secs(40),
        || async {
            if stream_ended.get().is_none()
                && st
                    .controller_metric(streams)
                    .await
                    .is_ok_and(|n| n < streams_before)
            {
                stream_ended.set(Some(stopped.elapsed()));
            }
            Ok(spec.running_pid().is_none().then_some(()))
        },
    );
    let ((), parked) = tokio::join!(feed, watch);
    let took = stopped.elapsed();
    let bound = PEER + IDLE + MARGIN;
    let stream = match stream_ended.get() {
        Some(t) => format!("its stream closed after {:.1} s", t.as_secs_f64()),
        None => "its stream's end not seen".to_string(),
    };
    match parked {
        Ok(()) if took <= bound => rep.note(format!(
            "SIGSTOP -> parked in {:.1} s (bound {} s: peerTimeout 6 s + idleTimeout 2 s + 5 s); {stream}",
            took.as_secs_f64(),
            bound.as_secs()
        )),
        Ok(()) => rep.problem(format!(
            "SIGSTOP -> parked in {:.1} s, over the {} s bound; {stream}",
            took.as_secs_f64(),
            bound.as_secs()
        )),
        Err(e) => rep.failed(&e, &st.logs()),
    }
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waking it through envoy-2 with envoy-1 still stopped");
    wave(&mut clients, via_live, 100, 10, HELD);
    settle(&mut clients, &mut rep.tally).await;
    drop(frozen);
    drop(session);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 5: a second Envoy during the park
// ---------------------------------------------------------------------------------------

/// Two Envoys. Each round, once the park's phase one has begun (the holder published,
/// the service still running; a 2 s stats flush holds it there), connections open on
/// the second Envoy: they must be served, whether they cancel the park or wake the
/// service again.
async fn second_envoy_during_the_park(rep: &mut Report) -> anyhow::Result<()> {
    const ROUNDS: u64 = 5;
    const PER_ROUND: u64 = 10;
    rep.at("starting the stack and a second Envoy");
    let dir = Stack::tempdir()?;
    let spec = ServiceSpec::echo("park", dir.path())?.with("idleTimeout: 1s");
    let st = Stack::start(
        dir,
        Options {
            services: vec![spec],
            flush: Duration::from_secs(2),
            ..Options::default()
        },
    )
    .await?;
    let other = st.start_envoy("envoy-2").await?;
    let (via_first, via_second) = (st.listener("park").await?, other.listener("park").await?);
    let cancelled = "zenvoy_parks_cancelled_total{service=\"park\"}";
    let parking = state("park", "parking");
    let mut clients = Clients::new();
    let mut cancels = 0u64;
    for round in 0..ROUNDS {
        if st.service("park").running_pid().is_none() {
            rep.at(format!("round {round}: waking the service through envoy-1"));
            wave(&mut clients, via_first, round * 1000, 1, HELD);
            settle(&mut clients, &mut rep.tally).await;
        }
        rep.at(format!("round {round}: waiting for the park to begin"));
        if let Err(e) = controller_is(&st, &parking, 1.0, BOUND).await {
            rep.failed(&e, &st.logs());
            break;
        }
        let before = st.controller_metric(cancelled).await.unwrap_or(0.0);
        wave(&mut clients, via_second, round * 1000 + 1, PER_ROUND, HELD);
        rep.at(format!(
            "round {round}: {PER_ROUND} clients on envoy-2 mid-park"
        ));
        settle(&mut clients, &mut rep.tally).await;
        if let Err(e) = controller_is(&st, &parking, 0.0, BOUND).await {
            rep.failed(&e, &st.logs());
            break;
        }
        if st.controller_metric(cancelled).await.unwrap_or(before) > before {
            cancels += 1;
        }
    }
    rep.note(format!(
        "{ROUNDS} rounds of {PER_ROUND} connections on envoy-2 in phase one of a park; {cancels} of those parks cancelled by them (a park past phase one completes; its clients are held and wake the service)"
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 6: floods and slow clients at the holder
// ---------------------------------------------------------------------------------------

/// Straight at the holder's PROXY v2 listener, as Envoy would come. A flood three times
/// `maxPending` at a parked (gated) service: the excess must be refused at once and
/// counted as `max_pending`, the rest held and served. Then waves of slowloris headers
/// (one byte every 200 ms, `--header-timeout 1s`) while normal clients of an awake
/// service are served alongside. The holder's RSS must not grow more than 64 MiB.
async fn holder_flood_and_slow_headers(rep: &mut Report) -> anyhow::Result<()> {
    const MAX_PENDING: u64 = 500;
    const FLOOD: u64 = 1500;
    const SLOW_WAVES: u64 = 4;
    const SLOW_PER_WAVE: u64 = 500;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
    const DRIP: Duration = Duration::from_millis(200);
    const RSS_BOUND_MIB: f64 = 64.0;
    rep.at("starting the stack");
    let dir = Stack::tempdir()?;
    let (flood, gate) = ServiceSpec::gated_echo("flood", dir.path())?;
    // Relayed connections bypass Envoy, whose stats then show no activity: a long
    // idleTimeout keeps each service up for the whole scenario.
    let flood = flood
        .with(&format!("maxPending: {MAX_PENDING}"))
        .with("holdTimeout: 60s")
        .with("idleTimeout: 10m");
    let steady = ServiceSpec::echo("steady", dir.path())?.with("idleTimeout: 10m");
    let max = MAX_PENDING.to_string();
    let header_timeout = humantime::format_duration(HEADER_TIMEOUT).to_string();
    let st = Stack::start(
        dir,
        Options {
            services: vec![flood, steady],
            // The flag counts until the service's first assignment reaches the holder:
            // the same limit both ways.
            holder_args: [
                "--max-pending",
                max.as_str(),
                "--header-timeout",
                header_timeout.as_str(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            ..Options::default()
        },
    )
    .await?;
    let holder = st.holder_listen;
    let rss_start = rss_mib(st.holder.pid())?;

    let excess = FLOOD - MAX_PENDING;
    rep.refusals_expected = excess;
    let refused_max = "zenvoy_holder_refused_total{reason=\"max_pending\"}";
    let flood_header = Arc::<[u8]>::from(holder_client::header("flood")?);
    let mut flood_clients = Clients::new();
    rep.at(format!("{FLOOD} clients at once, maxPending {MAX_PENDING}"));
    for seed in 0..FLOOD {
        flood_clients.spawn(exchange(
            Client::new(holder, seed, MSG, HELD)
                .with_header(&flood_header)
                .refused_within(AT_ONCE),
        ));
    }
    rep.at(format!(
        "waiting for {MAX_PENDING} held and {excess} refused"
    ));
    if let Err(e) = holder_at_least(&st, &pending("flood"), MAX_PENDING as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    if let Err(e) = holder_at_least(&st, refused_max, excess as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    gate.open()?;
    rep.at("waiting for the flood's echoes");
    let mut flood_tally = Tally::default();
    settle(&mut flood_clients, &mut flood_tally).await;
    let counted = st.holder_metric(refused_max).await.unwrap_or(f64::NAN);
    if flood_tally.refused != excess || counted != excess as f64 {
        rep.problem(format!(
            "expected {excess} refused at once: clients saw {}, the holder counted {counted}",
            flood_tally.refused
        ));
    }
    rep.note(format!(
        "flood {FLOOD} at maxPending {MAX_PENDING}: {} refused at once, max_pending counted {counted}",
        flood_tally.refused
    ));
    rep.tally.merge(&flood_tally);
    rep.tally.examples.extend(flood_tally.examples);

    rep.at("waking the steady service");
    let steady_header = Arc::<[u8]>::from(holder_client::header("steady")?);
    let mut normal = Clients::new();
    normal.spawn(exchange(
        Client::new(holder, 10_000, MSG, HELD).with_header(&steady_header),
    ));
    settle(&mut normal, &mut rep.tally).await;
    let slow_series = "zenvoy_holder_refused_total{reason=\"slow_header\"}";
    let slow_before = st.holder_metric(slow_series).await.unwrap_or(0.0);
    rep.at(format!(
        "{SLOW_WAVES} waves of {SLOW_PER_WAVE} slow headers, clients alongside"
    ));
    let close_bound = HEADER_TIMEOUT + AT_ONCE;
    let slow_done = AtomicBool::new(false);
    let slow = async {
        let (mut closed, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
        for _ in 0..SLOW_WAVES {
            let mut set = JoinSet::new();
            for _ in 0..SLOW_PER_WAVE {
                set.spawn(slow_header(
                    holder,
                    steady_header.clone(),
                    DRIP,
                    close_bound,
                ));
            }
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok(t)) => {
                        closed += 1;
                        slowest = slowest.max(t);
                    }
                    Ok(Err(e)) => failures.push(e),
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        slow_done.store(true, Ordering::Relaxed);
        (closed, failures, slowest)
    };
    let feed = async {
        // One client every 20 ms while the slow headers last, at most 2,000.
        let mut fed = 0u64;
        while !slow_done.load(Ordering::Relaxed) && fed < 2_000 {
            normal.spawn(exchange(
                Client::new(holder, 20_000 + fed, 16 * 1024, HELD).with_header(&steady_header),
            ));
            fed += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fed
    };
    let ((closed, failures, slowest), fed) = tokio::join!(slow, feed);
    rep.at("waiting for the normal clients' echoes");
    settle(&mut normal, &mut rep.tally).await;
    let total = SLOW_WAVES * SLOW_PER_WAVE;
    if let Some(first) = failures.first() {
        rep.problem(format!(
            "{} of {total} slow headers not closed within {close_bound:?}; first: {first}",
            failures.len()
        ));
    }
    let slow_refused = st.holder_metric(slow_series).await.unwrap_or(0.0) - slow_before;
    if slow_refused < total as f64 {
        rep.problem(format!(
            "slow_header refusals counted {slow_refused}, expected {total}"
        ));
    }
    rep.note(format!(
        "{closed} of {total} slow headers closed by the holder, the slowest after {:.2} s; {fed} clients alongside",
        slowest.as_secs_f64()
    ));
    let rss_end = rss_mib(st.holder.pid())?;
    eprintln!("   6: holder RSS {rss_start:.1} MiB before, {rss_end:.1} MiB after");
    rep.note(format!(
        "holder RSS {rss_start:.1} -> {rss_end:.1} MiB (bound +{RSS_BOUND_MIB} MiB)"
    ));
    if rss_end - rss_start > RSS_BOUND_MIB {
        rep.problem(format!(
            "holder RSS grew {:.1} MiB, over the {RSS_BOUND_MIB} MiB bound",
            rss_end - rss_start
        ));
    }
    Ok(())
}

/// A slowloris: connect and send `header` one byte every `drip`. Returns how long the
/// holder took to close it; an error if it was still open after `bound`, answered, or
/// could not connect.
async fn slow_header(
    addr: SocketAddr,
    header: Arc<[u8]>,
    drip: Duration,
    bound: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut r, mut w) = stream.into_split();
    let watch = async {
        let mut b = [0u8; 64];
        r.read(&mut b).await
    };
    let trickle = async {
        for byte in header.iter() {
            // A failed write: the holder closed it (the read sees that too).
            if w.write_all(std::slice::from_ref(byte)).await.is_err() {
                return;
            }
            tokio::time::sleep(drip).await;
        }
        // The whole header sent and still open: the bound below decides.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        read = watch => match read {
            Ok(0) | Err(_) => Ok(start.elapsed()),
            Ok(n) => Err(format!("got {n} bytes: the holder never writes to a client")),
        },
        () = trickle => Ok(start.elapsed()),
        () = tokio::time::sleep(bound) => Err(format!("still open after {bound:?}")),
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

    #[test]
    fn victims_of_a_kill_may_be_lost_but_never_corrupted() {
        let lost = Tally {
            lost: 3,
            reset: 2,
            ..Tally::default()
        };
        let clean = Tally {
            served: 10,
            ..Tally::default()
        };
        assert!(verdict(&clean, &lost, 0, 0));
        assert!(!verdict(&lost, &Tally::default(), 0, 0));
        let corrupted = Tally {
            corrupted: 1,
            ..Tally::default()
        };
        assert!(!verdict(&clean, &corrupted, 0, 0));
        let refused = Tally {
            refused: 5,
            ..clean.clone()
        };
        assert!(verdict(&refused, &Tally::default(), 5, 0));
        assert!(!verdict(&refused, &Tally::default(), 4, 0));
        assert!(
            !verdict(&clean, &Tally::default(), 0, 1),
            "a problem fails it"
        );
    }

    #[test]
    fn only_picks_a_scenario_or_every_part_of_it() {
        assert_eq!(select(None).len(), SCENARIOS.len());
        let ids = |only| select(Some(only)).iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids("1"), ["1"]);
        assert_eq!(ids("3b"), ["3b"]);
        assert_eq!(ids("3").len(), 8);
        assert!(ids("9").is_empty());
    }

    fn row(id: &'static str, title: &'static str, served: u64, note: &str) -> Row {
        Row {
            id,
            title,
            counts: Tally {
                served,
                ..Tally::default()
            },
            duration: Duration::from_millis(1500),
            passed: true,
            note: note.to_string(),
        }
    }

    #[test]
    fn the_text_table_lines_its_columns_up() {
        let rows = [
            row("1", "short", 10_000, "a note"),
            row("3a", "a much longer title", 7, ""),
        ];
        let text = render_text(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "header, rule, two rows:\n{text}");
        // Counts are right-aligned under the header: their columns end together.
        let end_of = |line: &str, word: &str| line.find(word).map(|i| i + word.len());
        let served = end_of(lines[0], "served");
        assert_eq!(end_of(lines[2], "10000"), served, "\n{text}");
        assert_eq!(end_of(lines[3], "7"), served, "\n{text}");
        assert_eq!(lines[2].find("PASS"), lines[3].find("PASS"), "\n{text}");
    }

    #[test]
    fn the_markdown_table_has_a_row_per_scenario_and_escapes_pipes() {
        let md = render_markdown(&[row("6", "holder", 3, "a | b")]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("| scenario | served |"));
        assert_eq!(
            lines[2],
            "| 6 holder | 3 | 0 | 0 | 0 | 0 | 1.5 s | PASS | a \\| b |"
        );
    }
}
