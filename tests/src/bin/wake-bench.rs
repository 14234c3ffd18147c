//! Wake benchmark (BENCHMARKS.md): for N wakes of a local upstream that is ready the
//! moment its port accepts, the time from the upstream's listen(2) to the first relayed
//! byte reaching the client, through a real Envoy, controller and holder.
//!
//! Each round: wait until the service is parked, connect through Envoy, send one byte at
//! once (it waits in the kernel while the service wakes), and time its echo. The upstream
//! (`zenvoy-echo --ready-file`) writes CLOCK_MONOTONIC right after listen(2); the client
//! reads the same clock when the byte arrives.
//!
//! `make bench` or `cargo build --release --workspace --bins && target/release/wake-bench`.

use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zenvoy_tests::stack::{Options, ServiceSpec, Stack};
use zenvoy_tests::{monotonic_ns, wait};

#[derive(Debug, Parser)]
struct Args {
    /// Number of wakes.
    #[arg(long, default_value_t = 100)]
    wakes: usize,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = Stack::tempdir()?;
    let ready_file = dir.path().join("ready.ns");
    let mut spec = ServiceSpec::echo("bench", dir.path())?.with("idleTimeout: 100ms");
    spec.command.push("--ready-file".into());
    spec.command.push(ready_file.display().to_string());
    let opts = Options {
        services: vec![spec],
        defaults: vec!["holdTimeout: 30s".into()],
        flush: Duration::from_millis(100),
        ..Options::default()
    };
    let st = Stack::start(dir, opts).await?;
    let addr = st.listener("bench").await?;
    let mut samples = Vec::with_capacity(args.wakes);
    let mut segments: Vec<[f64; 3]> = Vec::with_capacity(args.wakes);
    for round in 0..args.wakes {
        let spec = st.service("bench");
        wait::until("the service to park", Duration::from_secs(30), || async {
            Ok(spec.running_pid().is_none().then_some(()))
        })
        .await?;
        st.wait_hosts("bench", &[st.holder_listen], Duration::from_secs(30))
            .await?;
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(b"x").await?;
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut b)).await??;
        let got = monotonic_ns();
        drop(s);
        // Written by the upstream: its listen(2), then its first two accepts (probe, dial).
        let text = std::fs::read_to_string(&ready_file)?;
        let _ = std::fs::remove_file(&ready_file);
        let stamps: Vec<u128> = text
            .lines()
            .filter_map(|l| l.trim_start_matches("accept ").parse().ok())
            .collect();
        let [ready, probe, dial] = stamps[..] else {
            anyhow::bail!(
                "round {round}: expected listen + 2 accepts in {}, got {text:?}",
                ready_file.display()
            );
        };
        let ms = |a: u128, b: u128| b.saturating_sub(a) as f64 / 1e6;
        samples.push(ms(ready, got));
        segments.push([ms(ready, probe), ms(probe, dial), ms(dial, got)]);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "wakes={} port-accepting -> first relayed byte at client: p50={:.3} ms p90={:.3} ms p99={:.3} ms min={:.3} ms max={:.3} ms",
        sorted.len(),
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    for (i, name) in [
        "listen -> readiness probe accepted",
        "probe accepted -> holder dial accepted (controller publish, xDS, holder)",
        "holder dial accepted -> byte at client (relay, upstream echo, Envoy)",
    ]
    .iter()
    .enumerate()
    {
        let mut seg: Vec<f64> = segments.iter().map(|s| s[i]).collect();
        seg.sort_by(f64::total_cmp);
        println!(
            "  {name}: p50={:.3} ms p99={:.3} ms",
            percentile(&seg, 50.0),
            percentile(&seg, 99.0)
        );
    }
    Ok(())
}
