//! The idle part: the CPU of a controller with N services, one ADS stream and no
//! traffic.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use zenvoy_test_support::process::cpu_seconds;
use zenvoy_test_support::{bin, free_port};

use crate::ads::{no_stream_ended, open_and_sync};
use crate::controller::{config, start_controller};
use crate::Args;

/// What the idle measurement found.
#[derive(Debug)]
pub(crate) struct Idle {
    pub(crate) cpu_secs: f64,
    pub(crate) secs: f64,
}

/// A controller with `args.services` services, one SotW ADS stream, no traffic: its CPU
/// over `args.idle_for`.
pub(crate) async fn idle_cpu(args: &Args) -> anyhow::Result<Idle> {
    let upstream = free_port()?;
    let holder = free_port()?;
    let echo = bin("zenvoy-echo")?.display().to_string();
    let c = start_controller(&config(args.services, holder, (upstream, &echo), None)).await?;
    let pid = c.proc.pid();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let streams = open_and_sync(
        c.grpc,
        1,
        args.sync_timeout + Duration::from_secs(1),
        &reports_tx,
        &mut reports,
    )
    .await
    .with_context(|| c.proc.log_tail(30))?;
    // The start's and the sync's work done (the allocator, the state file, ...).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu0 = cpu_seconds(pid, false)?;
    let t0 = std::time::Instant::now();
    println!(
        "[I] controller with {} services and 1 ADS stream: measuring its CPU for {:?} with no traffic",
        args.services, args.idle_for
    );
    tokio::time::sleep(args.idle_for).await;
    let cpu1 = cpu_seconds(pid, false)?;
    let secs = t0.elapsed().as_secs_f64();
    no_stream_ended(&mut reports)?;
    drop(streams);
    let idle = Idle {
        cpu_secs: cpu1 - cpu0,
        secs,
    };
    println!(
        "[I] idle: {:.2} s controller CPU over {secs:.1} s = {:.3} % of a core (target <= 0.5 %; 10 ms tick resolution)",
        idle.cpu_secs,
        idle.cpu_secs / secs * 100.0
    );
    Ok(idle)
}
