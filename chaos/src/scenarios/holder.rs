//! 6: floods and slow clients at the holder.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use zenvoy_e2e::holder_client;
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::process::rss_mib;

use super::{holder_at_least, pending};
use crate::client::{exchange, settle, Client, Clients, Tally};
use crate::report::Report;
use crate::{AT_ONCE, BOUND, HELD, MSG};

/// Straight at the holder's PROXY v2 listener, as Envoy would come. A flood three times
/// `maxPending` at a parked (gated) service: the excess must be refused at once and
/// counted as `max_pending`, the rest held and served. Then waves of slowloris headers
/// (one byte every 200 ms, `--header-timeout 1s`) while normal clients of an awake
/// service are served alongside. The holder's RSS must not grow more than 64 MiB.
pub(crate) async fn holder_flood_and_slow_headers(rep: &mut Report) -> anyhow::Result<()> {
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
