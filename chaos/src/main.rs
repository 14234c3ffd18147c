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

mod client;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::time::Instant;

use report::{first_line, render_markdown, render_text, Report, Row};
use scenarios::{
    apiserver_down_during_a_park, burst, controller_killed_mid_park, controller_killed_mid_wake,
    envoy_restarted_mid_wake, holder_flood_and_slow_headers, holder_killed_with_connections_held,
    holder_stopped_with_connections_held, kube_controller_killed_mid_park,
    kube_controller_killed_mid_wake, park_wake_cycles, second_envoy_during_the_park, silent_envoy,
};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_picks_a_scenario_or_every_part_of_it() {
        assert_eq!(select(None).len(), SCENARIOS.len());
        let ids = |only| select(Some(only)).iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids("1"), ["1"]);
        assert_eq!(ids("3b"), ["3b"]);
        assert_eq!(ids("3").len(), 8);
        assert!(ids("9").is_empty());
    }
}
