//! Holder benchmark (BENCHMARKS.md): the real `zenvoy-holder` binary against an in-process
//! controller (the controller crate's own `xds::Cache` + `AdsServer` on tonic), which
//! publishes a service's ClusterLoadAssignment whenever the bench wants a relay.
//!
//! ```text
//!  relay:   client thread --1 GiB--> holder | HAProxy | socat --> sink thread (discard)
//!           client thread <--1 GiB-- holder | HAProxy | socat <-- source thread
//!  held:    10,000 x (PROXY v2 + 32 B) --> holder (parked: no CLA) ; RSS ;
//!           publish CLA -> every connection gets its own 32 B back from a tokio echo
//!  release: PROXY v2 + 1 B --> holder ; holder subscribes ; t0 = publish CLA ;
//!           t1 = the byte read by a blocking upstream thread (EDS update -> first byte)
//! ```
//!
//! Targets (printed with a verdict, never asserted): relay throughput >= 1.0x HAProxy and
//! >= 1.5x socat; <= 40 MiB RSS with 10,000 held; p99 EDS update -> first byte <= 2 ms.
//!
//! `make bench` or `cargo build --release --workspace --bins && target/release/holder-bench`.

mod held;
mod relay;
mod release;
mod stack;

use std::time::Duration;

use clap::{Parser, ValueEnum};

use held::measure_held;
use relay::measure_relay;
use release::measure_release;
use stack::start_controller;

const GIB: f64 = (1u64 << 30) as f64;
/// Client, sink and source buffer: allocated once per thread, big reads and writes.
const BUF: usize = 1 << 20;
/// A relay that moves no byte for this long has stalled.
const STALL: Duration = Duration::from_secs(30);
/// Bytes each held connection sends before its service has endpoints.
const MSG: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measure {
    /// Relay throughput and CPU: holder vs HAProxy vs socat.
    Relay,
    /// 10,000 held idle connections: RSS, then release and echo check.
    Held,
    /// EDS update -> first byte at the upstream, over fresh services.
    Release,
}

#[derive(Debug, Parser)]
struct Args {
    /// Runs per relay and direction (median reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Bytes per relay run and direction.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Held idle connections.
    #[arg(long, default_value_t = 10_000)]
    held: usize,
    /// Wakes timed for EDS update -> first byte.
    #[arg(long, default_value_t = 1000)]
    wakes: usize,
    /// Run one measure only.
    #[arg(long, value_enum)]
    only: Option<Measure>,
    /// HAProxy's `tune.pipesize` (bytes); unset, HAProxy's default (the kernel's 64 KiB).
    /// The holder asks for 1 MiB pipes: `--haproxy-pipesize 1048576` compares like with
    /// like.
    #[arg(long)]
    haproxy_pipesize: Option<usize>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctl = start_controller().await?;
    let want = |m: Measure| args.only.is_none_or(|o| o == m);
    let mut failed = Vec::new();
    if want(Measure::Relay) {
        if let Err(e) = measure_relay(&ctl, &args).await {
            println!("[relay] FAILED: {e:#}");
            failed.push("relay");
        }
    }
    if want(Measure::Held) {
        if let Err(e) = measure_held(&ctl, &args).await {
            println!("[held] FAILED: {e:#}");
            failed.push("held");
        }
    }
    if want(Measure::Release) {
        if let Err(e) = measure_release(&ctl, &args).await {
            println!("[release] FAILED: {e:#}");
            failed.push("release");
        }
    }
    anyhow::ensure!(failed.is_empty(), "measures failed: {failed:?}");
    Ok(())
}
