//! Fleet benchmark (BENCHMARKS.md): the controller with 10,000 services.
//!
//! Part A runs the real `zenvoy-controller` binary and measures its RSS, its CPU per ingest
//! cycle (a 10,000-cluster metrics push; a 10,000-cluster Envoy stats page scraped), and
//! the bytes one Envoy-like ADS client receives for a single wake, SotW and delta.
//! Part B runs the controller in-process with a backend that records when it is asked to
//! scale, plus the real holder, and measures detection latency: first held connection ->
//! scale call issued, over 1,000 services.
//! The fan-out part (issue 15) runs the real controller with 10,000 services and N
//! Envoy-like ADS streams (N = 1, 10, 100, 300 by default; half SotW, half delta, each on
//! its own HTTP/2 connection, every response ACKed) and measures its RSS after the initial
//! sync and after wake/park cycles of svc-0, its CPU per push cycle with N streams
//! connected, and the fan-out latency of each wake and park (ready -> the last of the N
//! streams has the new assignment). The idle part measures a 10,000-service controller's
//! CPU with one stream connected and no traffic.
//!
//! `cargo build --release --workspace --bins && target/release/fleet-bench` runs parts A
//! and B, as it always did; `--part fanout,idle` (or `--part all`) runs the new ones.

mod ads;
mod controller;
mod fanout;
mod idle;
mod part_a;
mod part_b;
mod push;

use std::time::Duration;

use clap::Parser;

use fanout::{cell, fanout, FanoutRow};
use idle::{idle_cpu, Idle};
use part_a::part_a;
use part_b::part_b;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Ingest cycles measured (pushes, scrapes).
    #[arg(long, default_value_t = 20)]
    cycles: usize,
    /// Wakes for the detection latency.
    #[arg(long, default_value_t = 1000)]
    wakes: usize,
    /// Parts to run, comma-separated or repeated: a, b, fanout, idle, all. The default is
    /// what fleet-bench always ran.
    #[arg(long = "part", value_enum, value_delimiter = ',', default_values_t = [Part::A, Part::B])]
    parts: Vec<Part>,
    /// Fan-out: ADS streams per run (one fresh controller each), comma-separated or
    /// repeated. Even-numbered streams are SotW, odd ones delta.
    #[arg(long = "streams", value_delimiter = ',', default_values_t = [1usize, 10, 100, 300])]
    streams: Vec<usize>,
    /// Fan-out: wake/park cycles of svc-0 per stream count.
    #[arg(long, default_value_t = 50)]
    fanout_wakes: usize,
    /// Fan-out: svc-0's idleTimeout (how soon after a wake it parks).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    fanout_idle: Duration,
    /// Fan-out: svc-0's parkAckTimeout. With no Envoy reporting svc-0's stats a park never
    /// settles early, so each park takes this long after its holder assignment goes out.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    fanout_park_ack: Duration,
    /// Fan-out: the bound on every stream's initial sync is this plus 1 s per stream.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    sync_timeout: Duration,
    /// Idle: how long the idle controller's CPU is measured (60s for the target; shorter
    /// for a quick run).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Controller RSS, CPU per push and scrape cycle, bytes per wake (real binary).
    A,
    /// Detection latency (in-process controller, real holder).
    B,
    /// N ADS streams: RSS, push CPU, fan-out latency of wakes and parks.
    Fanout,
    /// CPU of an idle 10,000-service controller with one ADS stream.
    Idle,
    /// All of the above.
    All,
}

fn print_summary(args: &Args, rows: &[FanoutRow], idle: Option<&Idle>) {
    if !rows.is_empty() {
        println!();
        println!(
            "Fan-out: {} services, {} wake/park cycles of svc-0 per row (idleTimeout {}, parkAckTimeout {}), {} pushes; latencies in ms, p50 / p99",
            args.services,
            args.fanout_wakes,
            humantime::format_duration(args.fanout_idle),
            humantime::format_duration(args.fanout_park_ack),
            args.cycles
        );
        println!();
        println!("| N streams (SotW/delta) | initial sync | RSS after sync | RSS after cycles | push CPU/cycle | wake: listen -> last stream | wake: ctl ready -> last | wake: first -> last | park: ctl decision -> last | park: first -> last |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in rows {
            println!(
                "| {} ({}/{}) | {:.1} s | {:.1} MiB | {:.1} MiB | {:.1} ms | {} | {} | {} | {} | {} |",
                r.streams,
                r.streams.div_ceil(2),
                r.streams / 2,
                r.sync_secs,
                r.rss_sync,
                r.rss_cycles,
                r.push_ms,
                cell(&r.wake_ready),
                cell(&r.wake_ctl),
                cell(&r.wake_spread),
                cell(&r.park_ctl),
                cell(&r.park_spread)
            );
        }
        println!();
        println!("- initial sync: from opening the first stream until every stream had ACKed its first CDS and LDS and an assignment for every cluster.");
        println!("- RSS (VmRSS of the controller): 1 s after that sync; after the wake/park cycles (before the pushes). RSS after the pushes: {}.",
            rows.iter().map(|r| format!("N={} {:.1} MiB", r.streams, r.rss_push)).collect::<Vec<_>>().join(", "));
        println!("- push CPU/cycle: controller utime+stime per {}-cluster metrics push with the N streams connected and svc-0 parked (as part A).", args.services);
        println!("- wake: listen -> last stream: zenvoy-echo's CLOCK_MONOTONIC right after listen(2) -> the last of the N streams decoded svc-0's assignment with the upstream (its ACK queued right after). Includes the controller's readiness probe (TCP connect every 100 us), the planner, the xDS cache, N encodes and HTTP/2 writes, and the bench's decoding on the same 2 cores.");
        println!("- ctl ready / ctl decision: the controller's own log line (planner `state` Waking->Awake, Awake->Parking; microsecond wall-clock timestamps mapped to CLOCK_MONOTONIC) -> the last stream; excludes the probe, and for parks the idle timeout.");
        println!("- first -> last: the spread of receipt among the N streams (0 with one stream).");
    }
    if let Some(i) = idle {
        println!();
        println!(
            "Idle: {} services, 1 SotW ADS stream, no traffic: {:.2} s controller CPU over {:.1} s = {:.3} % of a core (target <= 0.5 %)",
            args.services,
            i.cpu_secs,
            i.secs,
            i.cpu_secs / i.secs * 100.0
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = |p: Part| args.parts.contains(&p) || args.parts.contains(&Part::All);
    if run(Part::A) {
        part_a(&args).await?;
    }
    if run(Part::B) {
        part_b(&args).await?;
    }
    let mut rows = Vec::new();
    if run(Part::Fanout) {
        for &count in &args.streams {
            rows.push(fanout(&args, count).await?);
        }
    }
    let idle = if run(Part::Idle) {
        Some(idle_cpu(&args).await?)
    } else {
        None
    };
    print_summary(&args, &rows, idle.as_ref());
    Ok(())
}
