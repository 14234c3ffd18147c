//! 4: a silent proxy; 5: a second Envoy during the park.

use std::cell::Cell;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::wait;

use super::{controller_is, state, Frozen};
use crate::client::{exchange, settle, wave, Client, Clients};
use crate::report::Report;
use crate::{BOUND, HELD, MSG};

/// Envoy-1 holds a session open (the service stays awake), then is stopped with SIGSTOP:
/// its sockets stay open, it answers nothing. The controller (peerTimeout 6 s) must end
/// its stream, expire its stats and park the service within peerTimeout + idleTimeout +
/// 5 s, while envoy-2's clients (in the first 3 s, and a wake after the park) are all
/// served.
pub(crate) async fn silent_envoy(rep: &mut Report) -> anyhow::Result<()> {
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
pub(crate) async fn second_envoy_during_the_park(rep: &mut Report) -> anyhow::Result<()> {
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
