//! 2: park/wake cycles.

use std::time::Duration;

use tokio::time::Instant;
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};

use crate::client::{exchange, settle, Client, Clients, XorShift};
use crate::report::Report;
use crate::Args;

/// A service that parks 100 ms after its last connection, and clients at random
/// moments (0 to 400 ms apart, from `--seed`), each its own short echo, until the
/// service has parked `--cycles` times or `--cycles-bound` passed. The moments fall
/// anywhere: parked, waking, awake, and both phases of the park. Every client must be
/// served.
pub(crate) async fn park_wake_cycles(args: &Args, rep: &mut Report) -> anyhow::Result<()> {
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
