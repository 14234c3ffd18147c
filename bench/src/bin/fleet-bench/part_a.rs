//! Part A: the real controller binary with N services: its RSS, its CPU per push and per
//! scrape, and the bytes one wake sends to a SotW and a delta ADS client.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use zenvoy_test_support::{bin, free_port, wait};

use crate::ads::{delta_client, drain, sotw_client};
use crate::controller::{config, cpu_and_rss, ingested, start_controller};
use crate::push::{envoy_page, holder_pending, push_cycles, serve_page};
use crate::Args;

pub(crate) async fn part_a(args: &Args) -> anyhow::Result<()> {
    let n = args.services;
    let upstream = free_port()?;
    let echo = bin("zenvoy-echo")?.display().to_string();
    let holder = free_port()?;
    let c = start_controller(&config(n, holder, (upstream, &echo), None)).await?;
    let (cpu0, rss0) = cpu_and_rss(c.proc.pid())?;
    println!("[A] controller with {n} services started: RSS {rss0:.1} MiB, CPU so far {cpu0:.2} s");

    let mut sotw = sotw_client(c.grpc, n).await?;
    let mut delta = delta_client(c.grpc, n).await?;
    let initial = drain(&mut sotw, Duration::from_millis(1500), |(t, l, _)| {
        (t.clone(), *l)
    })
    .await;
    let initial_delta = drain(&mut delta, Duration::from_millis(500), |(t, l)| {
        (t.clone(), *l)
    })
    .await;
    println!("[A] initial sync, SotW client: {initial:?} (type: (responses, bytes))");
    println!("[A] initial sync, delta client: {initial_delta:?}");
    let (_, rss_sync) = cpu_and_rss(c.proc.pid())?;
    println!("[A] RSS after the initial sync of both ADS clients: {rss_sync:.1} MiB");

    // Pushes: one Envoy's full push per cycle.
    let pushed = push_cycles(&c, n, args.cycles, 0.0).await?;
    let rss_push = pushed.rss;
    println!(
        "[A] push ingest: {} cycles of a {n}-cluster push ({:.1} MiB encoded): {:.1} ms controller CPU per cycle (10 ms tick resolution; /metrics read about once a second)",
        args.cycles,
        pushed.size as f64 / (1 << 20) as f64,
        pushed.per_push_ms
    );

    // One wake: the holder's pending push for svc-0.
    drop(
        drain(&mut sotw, Duration::from_millis(300), |(t, l, _)| {
            (t.clone(), *l)
        })
        .await,
    );
    drop(
        drain(&mut delta, Duration::from_millis(100), |(t, l)| {
            (t.clone(), *l)
        })
        .await,
    );
    let mut holder_push = MetricsServiceClient::connect(format!("http://{}", c.grpc)).await?;
    let (htx, hrx) = mpsc::channel(4);
    let _hcall =
        tokio::spawn(async move { holder_push.stream_metrics(ReceiverStream::new(hrx)).await });
    htx.send(holder_pending(true, 1.0)).await?;
    let wake_sotw = drain(&mut sotw, Duration::from_millis(1500), |(t, l, _)| {
        (t.clone(), *l)
    })
    .await;
    let wake_delta = drain(&mut delta, Duration::from_millis(300), |(t, l)| {
        (t.clone(), *l)
    })
    .await;
    println!("[A] one wake, bytes to a SotW client: {wake_sotw:?}");
    println!("[A] one wake, bytes to a delta client: {wake_delta:?}");
    let (_, rss) = cpu_and_rss(c.proc.pid())?;
    println!("[A] controller RSS with {n} services, 2 ADS clients, pushes ingested: {rss:.1} MiB (after pushes: {rss_push:.1} MiB)");
    pushed.stream.close().await;
    drop(c);

    // Scrapes of a 10k-cluster Envoy page.
    let page = Arc::new(envoy_page(n));
    let page_len = page.len();
    let srv = serve_page(page).await?;
    let url = format!("http://{srv}/stats/prometheus");
    let c = start_controller(&config(n, holder, (upstream, &echo), Some(&url))).await?;
    wait::until("the first scrape", Duration::from_secs(30), || async {
        Ok((ingested(c.admin, "scrape").await? >= 2.0).then_some(()))
    })
    .await?;
    let s0 = ingested(c.admin, "scrape").await?;
    let (cpu_before, _) = cpu_and_rss(c.proc.pid())?;
    tokio::time::sleep(Duration::from_millis(250) * args.cycles as u32).await;
    let s1 = ingested(c.admin, "scrape").await?;
    let (cpu_after, rss) = cpu_and_rss(c.proc.pid())?;
    let per_scrape_ms = (cpu_after - cpu_before) * 1000.0 / (s1 - s0).max(1.0);
    println!(
        "[A] scrape ingest: {} scrapes of a {n}-cluster page ({:.1} MiB, {} lines): {per_scrape_ms:.1} ms controller CPU per cycle; RSS {rss:.1} MiB",
        s1 - s0,
        page_len as f64 / (1 << 20) as f64,
        n * 6
    );
    Ok(())
}
