//! 1: a burst at a parked service.

use std::time::Duration;

use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};

use super::{holder_at_least, pending};
use crate::client::{exchange, settle, Client, Clients};
use crate::report::Report;
use crate::{raise_nofile, Args, MSG, NOFILE};

/// `--burst` clients connect at once through Envoy to a parked service and each sends
/// 4 KiB before any reply. The service is gated: every client is held before it can
/// wake. Then the gate opens and every one must be served.
pub(crate) async fn burst(args: &Args, rep: &mut Report) -> anyhow::Result<()> {
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
