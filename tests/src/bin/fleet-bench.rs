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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{stream_metrics_message, StreamMetricsMessage};
use envoy_types::pb::io::prometheus::client::{
    Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use zenvoy_controller::backend::{Backend, BackendError, BoxFuture};
use zenvoy_tests::process::{cpu_seconds, rss_mib, Proc};
use zenvoy_tests::{bin, free_port, http_get, metric_value, monotonic_ns, wait};

const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// svc-0 (`name(0)`): the service parts A and the fan-out part wake.
const WOKEN: &str = "svc-0";

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

fn name(i: usize) -> String {
    format!("svc-{i}")
}

fn config(
    services: usize,
    holder: SocketAddr,
    woken: (SocketAddr, &str),
    scrape: Option<&str>,
) -> String {
    let command = format!("[{:?}, \"--listen\", \"{}\"]", woken.1, woken.0);
    config_with(services, holder, (woken.0, &command, ""), scrape)
}

/// The config: `services` TCP services, all but svc-0 with a command that is never run;
/// svc-0 with `woken` = (upstream, command as a YAML flow list, extra keys as indented YAML
/// lines).
fn config_with(
    services: usize,
    holder: SocketAddr,
    woken: (SocketAddr, &str, &str),
    scrape: Option<&str>,
) -> String {
    let mut y = String::from("controller:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n");
    y.push_str(&format!("holder:\n  address: {holder}\n"));
    if let Some(url) = scrape {
        y.push_str(&format!(
            "scrape:\n  interval: 250ms\n  targets:\n    - name: envoy-bench\n      url: {url}\n"
        ));
    }
    y.push_str("defaults:\n  idleTimeout: 1h\nservices:\n");
    for i in 0..services {
        let (upstream, command) = if i == 0 {
            (woken.0.to_string(), woken.1.to_string())
        } else {
            ("127.0.0.1:9".to_string(), "[\"true\"]".to_string())
        };
        y.push_str(&format!(
            "  - name: {}\n    listen: 127.0.0.1:0\n    upstream: {upstream}\n    command: {command}\n",
            name(i)
        ));
        if i == 0 {
            y.push_str(woken.2);
        }
    }
    y
}

/// `/proc/<pid>/stat` utime + stime in seconds, and VmRSS in MiB.
fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    Ok((cpu_seconds(pid, false)?, rss_mib(pid)?))
}

fn gauge(name: &str, v: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_string()),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            gauge: Some(Gauge { value: Some(v) }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn counter(name: &str, v: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.to_string()),
        r#type: Some(MetricType::Counter as i32),
        metric: vec![Metric {
            counter: Some(Counter {
                value: Some(v),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One Envoy push for `services` clusters: the six stats zenvoy's bootstrap keeps.
fn envoy_push(services: usize, round: f64) -> Vec<MetricFamily> {
    let mut f = Vec::with_capacity(services * 6);
    for i in 0..services {
        let n = name(i);
        f.push(gauge(&format!("cluster.{n}.upstream_cx_active"), 0.0));
        f.push(gauge(&format!("cluster.{n}.upstream_rq_active"), 0.0));
        f.push(counter(&format!("cluster.{n}.upstream_cx_total"), round));
        f.push(counter(&format!("cluster.{n}.upstream_rq_total"), 0.0));
        f.push(counter(
            &format!("cluster.{n}.upstream_cx_rx_bytes_total"),
            round * 10.0,
        ));
        f.push(counter(
            &format!("cluster.{n}.upstream_cx_tx_bytes_total"),
            round * 10.0,
        ));
    }
    f
}

/// The `/stats/prometheus` page Envoy serves with zenvoy's stats matcher for `services`
/// clusters (the tagged form, as Envoy writes it).
fn envoy_page(services: usize) -> String {
    let mut p = String::new();
    for (stat, kind) in [
        ("upstream_cx_active", "gauge"),
        ("upstream_rq_active", "gauge"),
        ("upstream_cx_total", "counter"),
        ("upstream_rq_total", "counter"),
        ("upstream_cx_rx_bytes_total", "counter"),
        ("upstream_cx_tx_bytes_total", "counter"),
    ] {
        p.push_str(&format!("# TYPE envoy_cluster_{stat} {kind}\n"));
        for i in 0..services {
            p.push_str(&format!(
                "envoy_cluster_{stat}{{envoy_cluster_name=\"{}\"}} 0\n",
                name(i)
            ));
        }
    }
    p
}

/// Serve `page` on every GET until the process ends.
async fn serve_page(page: Arc<String>) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    page.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(page.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

struct Controller {
    proc: Proc,
    grpc: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_controller(yaml: &str) -> anyhow::Result<Controller> {
    start_controller_with(yaml, "warn", &[]).await
}

/// The controller binary with this `RUST_LOG` and extra arguments.
async fn start_controller_with(
    yaml: &str,
    rust_log: &str,
    extra: &[&str],
) -> anyhow::Result<Controller> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("zenvoy.yaml");
    std::fs::write(&cfg, yaml)?;
    let addr_file = dir.path().join("addr.json");
    let mut cmd = std::process::Command::new(bin("zenvoy-controller")?);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--address-file")
        .arg(&addr_file)
        .args(extra);
    cmd.env("RUST_LOG", rust_log);
    let proc = Proc::spawn("controller", cmd, Some(&dir.path().join("controller.log")))?;
    let v: serde_json::Value = wait::until(
        "controller address file",
        Duration::from_secs(60),
        || async {
            Ok(std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok()))
        },
    )
    .await?;
    let parse = |k: &str| -> anyhow::Result<SocketAddr> {
        v[k].as_str().context("address")?.parse().context("address")
    };
    Ok(Controller {
        proc,
        grpc: parse("grpc")?,
        admin: parse("admin")?,
        _dir: dir,
    })
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        ..Default::default()
    }
}

/// A SotW ADS client subscribed to every listener, cluster and assignment; returns a
/// channel of (type, encoded bytes) per response received, ACKing each.
async fn sotw_client(
    grpc: SocketAddr,
    services: usize,
) -> anyhow::Result<mpsc::Receiver<(String, usize, DiscoveryResponse)>> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc}")).await?;
    client = client.max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(64);
    let names: Vec<String> = (0..services).map(name).collect();
    for t in [CLUSTER, LISTENER] {
        tx.send(DiscoveryRequest {
            node: Some(node("bench-sotw")),
            type_url: t.into(),
            ..Default::default()
        })
        .await?;
    }
    tx.send(DiscoveryRequest {
        node: Some(node("bench-sotw")),
        type_url: ENDPOINT.into(),
        resource_names: names.clone(),
        ..Default::default()
    })
    .await?;
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (out_tx, out_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(Ok(resp)) = inbound.next().await {
            let len = resp.encoded_len();
            let names = if resp.type_url == ENDPOINT {
                names.clone()
            } else {
                Vec::new()
            };
            let ack = DiscoveryRequest {
                type_url: resp.type_url.clone(),
                version_info: resp.version_info.clone(),
                response_nonce: resp.nonce.clone(),
                resource_names: names,
                ..Default::default()
            };
            if tx.send(ack).await.is_err()
                || out_tx
                    .send((resp.type_url.clone(), len, resp))
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    Ok(out_rx)
}

/// The same for delta ADS; returns (type, encoded bytes) per response.
async fn delta_client(
    grpc: SocketAddr,
    services: usize,
) -> anyhow::Result<mpsc::Receiver<(String, usize)>> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc}")).await?;
    client = client.max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(64);
    for t in [CLUSTER, LISTENER] {
        tx.send(DeltaDiscoveryRequest {
            node: Some(node("bench-delta")),
            type_url: t.into(),
            ..Default::default()
        })
        .await?;
    }
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("bench-delta")),
        type_url: ENDPOINT.into(),
        resource_names_subscribe: (0..services).map(name).collect(),
        ..Default::default()
    })
    .await?;
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (out_tx, out_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(Ok(resp)) = inbound.next().await {
            let len = resp.encoded_len();
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            if tx.send(ack).await.is_err()
                || out_tx.send((resp.type_url.clone(), len)).await.is_err()
            {
                return;
            }
        }
    });
    Ok(out_rx)
}

/// Drain what arrives until `quiet` passes with nothing; returns total bytes by type.
async fn drain<T>(
    rx: &mut mpsc::Receiver<T>,
    quiet: Duration,
    len: impl Fn(&T) -> (String, usize),
) -> HashMap<String, (usize, usize)> {
    let mut by_type: HashMap<String, (usize, usize)> = HashMap::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, rx.recv()).await {
        let (t, n) = len(&item);
        let e = by_type
            .entry(t.rsplit('.').next().unwrap_or("").to_string())
            .or_default();
        e.0 += 1;
        e.1 += n;
    }
    by_type
}

/// Messages of `source` ("push", "scrape") the controller has ingested, from its /metrics.
async fn ingested(admin: SocketAddr, source: &str) -> anyhow::Result<f64> {
    let page = http_get(&format!("http://{admin}/metrics")).await?;
    Ok(metric_value(
        &page,
        &format!("zenvoy_ingest_samples_total{{source=\"{source}\"}}"),
    )
    .unwrap_or(0.0))
}

/// A `MetricsService` stream kept open: its node's stats count until it is closed.
struct PushStream {
    tx: mpsc::Sender<StreamMetricsMessage>,
    call: tokio::task::JoinHandle<()>,
}

impl PushStream {
    /// Open a stream to the controller (nothing sent yet).
    async fn open(grpc: SocketAddr) -> anyhow::Result<PushStream> {
        let mut metrics = MetricsServiceClient::connect(format!("http://{grpc}"))
            .await
            .with_context(|| format!("connecting a metrics stream to {grpc}"))?;
        metrics = metrics.max_encoding_message_size(256 << 20);
        let (tx, rx) = mpsc::channel(4);
        let call = tokio::spawn(async move {
            let _ = metrics.stream_metrics(ReceiverStream::new(rx)).await;
        });
        Ok(PushStream { tx, call })
    }

    /// End the stream and wait (bounded) for the call to finish.
    async fn close(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.call).await;
    }
}

/// What a push measurement found.
struct Pushed {
    /// Controller CPU (utime + stime) per push cycle, ms.
    per_push_ms: f64,
    /// One push, encoded bytes.
    size: usize,
    /// Controller RSS after the pushes, MiB.
    rss: f64,
    /// The push stream, still open.
    stream: PushStream,
}

/// Part A's push measurement: one Envoy (node `envoy-bench`) pushes its stats for
/// `services` clusters `cycles` times; the controller's CPU over those pushes, per push.
/// `base`: pushes the controller has ingested before this (other nodes' pushes count in
/// the same counter).
async fn push_cycles(
    c: &Controller,
    services: usize,
    cycles: usize,
    base: f64,
) -> anyhow::Result<Pushed> {
    let stream = PushStream::open(c.grpc).await?;
    let msg = |round: f64, first: bool| StreamMetricsMessage {
        identifier: first.then(|| stream_metrics_message::Identifier {
            node: Some(node("envoy-bench")),
        }),
        envoy_metrics: envoy_push(services, round),
    };
    let size = msg(0.0, true).encoded_len();
    stream.tx.send(msg(0.0, true)).await?;
    let (admin, first) = (c.admin, base + 1.0);
    wait::until(
        "the first push to be ingested",
        Duration::from_secs(30),
        || async move { Ok((ingested(admin, "push").await? >= first).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The pushes are built before the clock starts, and the controller's /metrics (a
    // 10,000-service page costs CPU to render) is read once a second, not per push.
    let pushes: Vec<StreamMetricsMessage> = (1..=cycles).map(|r| msg(r as f64, false)).collect();
    let (cpu_before, _) = cpu_and_rss(c.proc.pid())?;
    for push in pushes {
        stream.tx.send(push).await?;
    }
    let want = base + (cycles + 1) as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if ingested(c.admin, "push").await? >= want {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{cycles} pushes not ingested within 60 s"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let the runtime finish the last batch
    let (cpu_after, rss) = cpu_and_rss(c.proc.pid())?;
    Ok(Pushed {
        per_push_ms: (cpu_after - cpu_before) * 1000.0 / cycles.max(1) as f64,
        size,
        rss,
        stream,
    })
}

/// A holder's push of `zenvoy_holder_pending{service="svc-0"} = v` (node `holder-bench`;
/// the first message of a stream names it).
fn holder_pending(first: bool, v: f64) -> StreamMetricsMessage {
    StreamMetricsMessage {
        identifier: first.then(|| stream_metrics_message::Identifier {
            node: Some(node("holder-bench")),
        }),
        envoy_metrics: vec![MetricFamily {
            name: Some("zenvoy_holder_pending".into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![LabelPair {
                    name: Some("service".into()),
                    value: Some(name(0)),
                }],
                gauge: Some(Gauge { value: Some(v) }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn part_a(args: &Args) -> anyhow::Result<()> {
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

/// Records when it is asked to scale; never becomes ready.
#[derive(Debug, Clone)]
struct Recorder {
    tx: mpsc::UnboundedSender<(String, u128)>,
}

impl Backend for Recorder {
    fn wake(
        &self,
        service: &str,
        _timeout: Duration,
        _scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>> {
        let _ = self.tx.send((service.to_string(), monotonic_ns()));
        Box::pin(std::future::pending())
    }
    fn park(&self, _service: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
    fn running(&self, _service: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        Box::pin(async { Ok(false) })
    }
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

async fn part_b(args: &Args) -> anyhow::Result<()> {
    let n = args.wakes;
    let holder_addr = free_port()?;
    let yaml = config(n, holder_addr, ("127.0.0.1:9".parse()?, "true"), None);
    let cfg = zenvoy_core::config::Config::from_yaml(&yaml)?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = grpc.local_addr()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(zenvoy_controller::run_with(
        cfg,
        Arc::new(Recorder { tx }),
        grpc,
        admin,
        async {
            let _ = stop_rx.await;
        },
    ));
    let dir = tempfile::tempdir()?;
    let mut cmd = std::process::Command::new(bin("zenvoy-holder")?);
    cmd.args([
        "--listen",
        &holder_addr.to_string(),
        "--admin",
        "127.0.0.1:0",
        "--controller",
    ])
    .arg(format!("http://{grpc_addr}"))
    .env("RUST_LOG", "warn");
    let holder = Proc::spawn("holder", cmd, Some(&dir.path().join("holder.log")))?;
    wait::until("the holder to listen", Duration::from_secs(30), || async {
        Ok(TcpStream::connect(holder_addr).await.ok().map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // its push stream is open
    let conns = Arc::new(Mutex::new(Vec::new()));
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let svc = name(i);
        let header = zenvoy_holder::proxy::encode(
            "127.0.0.1:1".parse()?,
            holder_addr,
            &[(zenvoy_holder::proxy::TLV_SERVICE, svc.as_bytes())],
        )?;
        let t0 = monotonic_ns();
        let mut s = TcpStream::connect(holder_addr).await?;
        s.write_all(&header).await?;
        let (woken, t1) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("no scale call within 10 s")?
            .context("controller stopped")?;
        anyhow::ensure!(woken == svc, "expected a wake of {svc}, got {woken}");
        lat.push(t1.saturating_sub(t0) as f64 / 1e6);
        conns.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(s);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize];
    println!(
        "[B] detection: first held connection -> scale call issued, {n} wakes: p50={:.3} ms p99={:.3} ms max={:.3} ms",
        pct(50.0),
        pct(99.0),
        lat[lat.len() - 1]
    );
    // The controller ends its ADS and metrics streams on shutdown; the holder goes too
    // (its held connections first, so its drain has nothing to wait for), and the wait
    // is bounded so a regression fails here instead of hanging the bench.
    let _ = stop_tx.send(());
    drop(conns);
    drop(holder);
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .context("the in-process controller did not stop within 10 s of shutdown")?
        .context("controller task")??;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fan-out (issue 15): N Envoy-like ADS streams on one controller with 10,000 services.

/// Field 1 of a message only: the `name` of a Cluster or Listener, the `cluster_name` of a
/// ClusterLoadAssignment. prost skips the other fields, so a 10,000-resource response is
/// read without decoding every resource.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// What the fan-out clients tell the bench.
#[derive(Debug)]
enum Report {
    /// The stream has ACKed its first CDS and LDS responses and an assignment for every
    /// cluster it got.
    Synced { stream: usize },
    /// The stream received svc-0's assignment, with upstream endpoints (`awake`) or the
    /// holder only, at `at` (CLOCK_MONOTONIC ns, taken when the response was decoded); its
    /// ACK was queued before this report was sent.
    Woken {
        stream: usize,
        awake: bool,
        at: u128,
    },
    /// The stream ended (why).
    Ended { stream: usize, why: String },
}

/// One stream's initial sync.
#[derive(Debug, Default)]
struct Progress {
    cds: bool,
    lds: bool,
    clusters: usize,
    /// Assignments received, all EDS responses together.
    eds: usize,
    synced: bool,
}

impl Progress {
    fn report(&mut self, stream: usize, reports: &mpsc::UnboundedSender<Report>) {
        if !self.synced && self.cds && self.lds && self.clusters > 0 && self.eds >= self.clusters {
            self.synced = true;
            let _ = reports.send(Report::Synced { stream });
        }
    }
}

const STREAM_CLOSED: &str = "the ADS request stream closed";

/// Whether an encoded ClusterLoadAssignment has upstream endpoints (awake) or only the
/// holder's (parked).
fn awake(cla: &[u8]) -> anyhow::Result<bool> {
    let cla =
        ClusterLoadAssignment::decode(cla).context("decoding svc-0's ClusterLoadAssignment")?;
    Ok(!zenvoy_holder::xds::upstreams(&cla).is_empty())
}

/// Open ADS stream `i` as an Envoy would, on its own connection (one tonic `Channel`, so
/// one HTTP/2 connection per stream, as every Envoy has its own): SotW or delta, node id
/// `envoy-<i>`, wildcard Clusters and Listeners, then the assignment of every cluster it
/// got, every response ACKed. Runs until the task is aborted or the stream ends.
async fn open_stream(
    i: usize,
    grpc: SocketAddr,
    delta: bool,
    reports: mpsc::UnboundedSender<Report>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let node = node(&format!("envoy-{i}"));
    if delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc}"))
            .await
            .with_context(|| format!("connecting ADS stream {i} to {grpc}"))?;
        client = client.max_decoding_message_size(256 << 20);
        let (tx, rx) = mpsc::channel(16);
        for t in [CLUSTER, LISTENER] {
            tx.send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.into(),
                ..Default::default()
            })
            .await?;
        }
        let inbound = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("opening delta ADS stream {i}"))?
            .into_inner();
        Ok(tokio::spawn(async move {
            let why = match delta_loop(i, inbound, &tx, &reports).await {
                Ok(()) => "the controller ended the stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            let _ = reports.send(Report::Ended { stream: i, why });
        }))
    } else {
        let (tx, rx) = mpsc::channel(16);
        for t in [CLUSTER, LISTENER] {
            tx.send(Outgoing::Msg(Box::new(DiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.into(),
                ..Default::default()
            })))
            .await?;
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
            .connect()
            .await
            .with_context(|| format!("connecting ADS stream {i} to {grpc}"))?;
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 << 20);
        grpc.ready()
            .await
            .with_context(|| format!("opening SotW ADS stream {i}"))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        );
        let inbound = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                path,
                SotwCodec,
            )
            .await
            .with_context(|| format!("opening SotW ADS stream {i}"))?
            .into_inner();
        Ok(tokio::spawn(async move {
            let why = match sotw_loop(i, inbound, &tx, &reports).await {
                Ok(()) => "the controller ended the stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            let _ = reports.send(Report::Ended { stream: i, why });
        }))
    }
}

/// What a SotW fan-out client sends: a request, or one already encoded. A SotW Envoy
/// repeats its 10,000 cluster names in every EDS request and ACK, and encodes them on
/// its own node; here a hundred clients share the controller's two cores, so the names
/// are encoded once per change and each ACK is its small head followed by those bytes
/// (the fields of one protobuf message may come in any number of runs). The controller
/// reads exactly what a prost-encoded request would give it.
enum Outgoing {
    Msg(Box<DiscoveryRequest>),
    Raw(bytes::Bytes),
}

/// Field 3 (`resource_names`) of a DiscoveryRequest, encoded.
fn encoded_names(names: &[String]) -> bytes::Bytes {
    let mut b = Vec::new();
    for n in names {
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut b);
        prost::encoding::encode_varint(n.len() as u64, &mut b);
        b.extend_from_slice(n.as_bytes());
    }
    b.into()
}

/// `head` (a request without names) followed by encoded names.
fn with_names(head: DiscoveryRequest, names: &bytes::Bytes) -> Outgoing {
    let mut b = head.encode_to_vec();
    b.extend_from_slice(names);
    Outgoing::Raw(b.into())
}

/// tonic's prost codec, but sending [`Outgoing`].
struct SotwCodec;

struct SotwEncoder;

impl tonic::codec::Encoder for SotwEncoder {
    type Item = Outgoing;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Outgoing,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        match item {
            Outgoing::Msg(m) => m
                .encode(dst)
                .map_err(|e| tonic::Status::internal(e.to_string())),
            Outgoing::Raw(b) => {
                dst.put_slice(&b);
                Ok(())
            }
        }
    }
}

impl tonic::codec::Codec for SotwCodec {
    type Encode = Outgoing;
    type Decode = DiscoveryResponse;
    type Encoder = SotwEncoder;
    type Decoder = tonic_prost::ProstDecoder<DiscoveryResponse>;

    fn encoder(&mut self) -> SotwEncoder {
        SotwEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<
            DiscoveryRequest,
            DiscoveryResponse,
        >::default())
    }
}

/// A SotW Envoy: on CDS, one EDS request naming every cluster (again when the set
/// changes), then the CDS ACK; every response ACKed with its version and nonce, EDS ACKs
/// naming the same clusters.
async fn sotw_loop(
    i: usize,
    mut inbound: tonic::Streaming<DiscoveryResponse>,
    tx: &mpsc::Sender<Outgoing>,
    reports: &mpsc::UnboundedSender<Report>,
) -> anyhow::Result<()> {
    let mut p = Progress::default();
    let mut eds_names: Vec<String> = Vec::new();
    let mut eds_encoded = bytes::Bytes::new();
    // Version and nonce of the last EDS response, for an EDS request that changes names.
    let mut eds_last = (String::new(), String::new());
    while let Some(resp) = inbound.message().await? {
        let at = monotonic_ns();
        let mut woken = None;
        let ack_names = match resp.type_url.as_str() {
            CLUSTER => {
                let mut names = Vec::with_capacity(resp.resources.len());
                for a in &resp.resources {
                    names.push(
                        Named::decode(&a.value[..])
                            .context("a Cluster in a CDS response")?
                            .name,
                    );
                }
                p.clusters = names.len();
                p.cds = true;
                if names != eds_names {
                    eds_names = names;
                    eds_encoded = encoded_names(&eds_names);
                    let head = DiscoveryRequest {
                        type_url: ENDPOINT.into(),
                        version_info: eds_last.0.clone(),
                        response_nonce: eds_last.1.clone(),
                        ..Default::default()
                    };
                    tx.send(with_names(head, &eds_encoded))
                        .await
                        .context(STREAM_CLOSED)?;
                }
                false
            }
            ENDPOINT => {
                for a in &resp.resources {
                    let n = Named::decode(&a.value[..])
                        .context("a ClusterLoadAssignment in an EDS response")?;
                    if n.name == WOKEN {
                        woken = Some(awake(&a.value[..])?);
                    }
                }
                p.eds += resp.resources.len();
                eds_last = (resp.version_info.clone(), resp.nonce.clone());
                true
            }
            LISTENER => {
                p.lds = true;
                false
            }
            _ => false,
        };
        let head = DiscoveryRequest {
            type_url: resp.type_url,
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        let ack = if ack_names {
            with_names(head, &eds_encoded)
        } else {
            Outgoing::Msg(Box::new(head))
        };
        tx.send(ack).await.context(STREAM_CLOSED)?;
        if let Some(awake) = woken {
            let _ = reports.send(Report::Woken {
                stream: i,
                awake,
                at,
            });
        }
        p.report(i, reports);
    }
    Ok(())
}

/// A delta Envoy: on CDS, subscribe to the assignment of every cluster not yet
/// subscribed, then ACK; every response ACKed with its nonce.
async fn delta_loop(
    i: usize,
    mut inbound: tonic::Streaming<DeltaDiscoveryResponse>,
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    reports: &mpsc::UnboundedSender<Report>,
) -> anyhow::Result<()> {
    let mut p = Progress::default();
    let mut subscribed: HashSet<String> = HashSet::new();
    while let Some(resp) = inbound.message().await? {
        let at = monotonic_ns();
        let mut woken = None;
        match resp.type_url.as_str() {
            CLUSTER => {
                let new: Vec<String> = resp
                    .resources
                    .iter()
                    .filter(|r| !subscribed.contains(&r.name))
                    .map(|r| r.name.clone())
                    .collect();
                if !new.is_empty() {
                    subscribed.extend(new.iter().cloned());
                    tx.send(DeltaDiscoveryRequest {
                        type_url: ENDPOINT.into(),
                        resource_names_subscribe: new,
                        ..Default::default()
                    })
                    .await
                    .context(STREAM_CLOSED)?;
                }
                p.clusters = subscribed.len();
                p.cds = true;
            }
            ENDPOINT => {
                for r in &resp.resources {
                    if r.name == WOKEN {
                        let any = r
                            .resource
                            .as_ref()
                            .context("svc-0's delta resource has no body")?;
                        woken = Some(awake(&any.value[..])?);
                    }
                }
                p.eds += resp.resources.len();
            }
            LISTENER => p.lds = true,
            _ => {}
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await
        .context(STREAM_CLOSED)?;
        if let Some(awake) = woken {
            let _ = reports.send(Report::Woken {
                stream: i,
                awake,
                at,
            });
        }
        p.report(i, reports);
    }
    Ok(())
}

/// The stream tasks, aborted when dropped (on success and on every error path).
struct Streams(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Streams {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Open `count` streams (stream i is delta when i is odd) and wait until each has ACKed
/// its initial CDS, LDS and EDS, within `bound`.
async fn open_and_sync(
    grpc: SocketAddr,
    count: usize,
    bound: Duration,
    reports_tx: &mpsc::UnboundedSender<Report>,
    reports: &mut mpsc::UnboundedReceiver<Report>,
) -> anyhow::Result<Streams> {
    let mut streams = Streams(Vec::with_capacity(count));
    let deadline = tokio::time::Instant::now() + bound;
    for i in 0..count {
        streams
            .0
            .push(open_stream(i, grpc, i % 2 == 1, reports_tx.clone()).await?);
    }
    let mut synced = vec![false; count];
    let mut done = 0;
    let mut said = tokio::time::Instant::now();
    while done < count {
        if said.elapsed() >= Duration::from_secs(10) {
            println!("[F]   ... {done} of {count} streams synced");
            said = tokio::time::Instant::now();
        }
        let next = tokio::time::timeout(Duration::from_secs(1), reports.recv()).await;
        match next {
            Err(_) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "timed out after {bound:?} waiting for all {count} ADS streams to ACK their initial CDS, LDS and EDS: {done} had (stream {} had not)",
                    synced.iter().position(|s| !s).unwrap_or(0)
                );
            }
            Ok(None) => anyhow::bail!("the ADS stream reports channel closed"),
            Ok(Some(Report::Synced { stream })) => {
                if let Some(s) = synced.get_mut(stream).filter(|s| !**s) {
                    *s = true;
                    done += 1;
                }
            }
            Ok(Some(Report::Ended { stream, why })) => {
                anyhow::bail!("ADS stream {stream} ended during its initial sync: {why}")
            }
            Ok(Some(Report::Woken { .. })) => {} // svc-0's initial (holder) assignment
        }
    }
    Ok(streams)
}

/// Take what the streams reported so far; an ended stream is an error.
fn no_stream_ended(reports: &mut mpsc::UnboundedReceiver<Report>) -> anyhow::Result<()> {
    while let Ok(r) = reports.try_recv() {
        if let Report::Ended { stream, why } = r {
            anyhow::bail!("ADS stream {stream} ended: {why}");
        }
    }
    Ok(())
}

/// Wait until each of `count` streams has received svc-0's assignment in state `awake`;
/// returns the receipt instants (CLOCK_MONOTONIC ns), one per stream.
async fn receipts(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    count: usize,
    want_awake: bool,
    bound: Duration,
    what: &str,
) -> anyhow::Result<Vec<u128>> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut at: Vec<Option<u128>> = vec![None; count];
    let mut got = 0;
    while got < count {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Err(_) => anyhow::bail!(
                "timed out after {bound:?} waiting for {what}: {got} of {count} streams received it (stream {} did not)",
                at.iter().position(Option::is_none).unwrap_or(0)
            ),
            Ok(None) => anyhow::bail!("the ADS stream reports channel closed"),
            Ok(Some(Report::Woken {
                stream,
                awake,
                at: t,
            })) => {
                anyhow::ensure!(
                    awake == want_awake,
                    "ADS stream {stream} received svc-0's {} assignment while waiting for {what} (a park cancelled, or a second wake?)",
                    if awake { "upstream" } else { "holder" }
                );
                if let Some(slot) = at.get_mut(stream).filter(|s| s.is_none()) {
                    *slot = Some(t);
                    got += 1;
                }
            }
            Ok(Some(Report::Ended { stream, why })) => {
                anyhow::bail!("ADS stream {stream} ended while waiting for {what}: {why}")
            }
            Ok(Some(Report::Synced { .. })) => {}
        }
    }
    Ok(at.into_iter().flatten().collect())
}

/// The first instant zenvoy-echo wrote to its ready file: CLOCK_MONOTONIC ns right after
/// listen(2) (the other lines are its first accepts).
fn listened_at(ready: &Path) -> Option<u128> {
    std::fs::read_to_string(ready)
        .ok()?
        .lines()
        .find(|l| !l.starts_with("accept"))
        .and_then(|l| l.trim().parse().ok())
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z" | "X") | None
        ),
        Err(_) => false,
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, ns (the tightest of a few readings): turns the
/// controller's log timestamps (wall clock) into the monotonic clock the bench uses.
fn clock_offset() -> i128 {
    let mut best: Option<(u128, i128)> = None;
    for _ in 0..5 {
        let m1 = monotonic_ns();
        let real = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let m2 = monotonic_ns();
        let width = m2.saturating_sub(m1);
        let offset = real as i128 - ((m1 + m2) / 2) as i128;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
    }
    best.map_or(0, |(_, o)| o)
}

/// When svc-0 went from phase `from` to phase `to`, by the controller's JSON log (its
/// planner logs `state` at info), wall clock ns.
fn transitions(log: &Path, from: &str, to: &str) -> Vec<i128> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = &v["fields"];
            let ours = f["message"].as_str() == Some("state")
                && f["service"].as_str() == Some(WOKEN)
                && f["from"].as_str() == Some(from)
                && f["to"].as_str() == Some(to);
            if !ours {
                return None;
            }
            let t = humantime::parse_rfc3339_weak(v["timestamp"].as_str()?).ok()?;
            let ns = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
            i128::try_from(ns).ok()
        })
        .collect()
}

/// One wake or park seen by the bench: from `start` (the bench's push) to `last` (the
/// last stream's receipt), the first receipt, and the clock offset then.
#[derive(Debug, Clone, Copy)]
struct Seen {
    start: u128,
    first: u128,
    last: u128,
    offset: i128,
}

impl Seen {
    fn of(start: u128, at: &[u128]) -> Seen {
        Seen {
            start,
            first: at.iter().copied().min().unwrap_or(start),
            last: at.iter().copied().max().unwrap_or(start),
            offset: clock_offset(),
        }
    }

    fn spread_ms(&self) -> f64 {
        self.last.saturating_sub(self.first) as f64 / 1e6
    }

    /// The controller's decision (a log instant, wall clock) inside this window -> the
    /// last receipt, ms.
    fn since_log_ms(&self, log: &[i128]) -> Option<f64> {
        let (start, last) = (self.start as i128, self.last as i128);
        log.iter()
            .map(|t| t - self.offset)
            .find(|m| (start..=last).contains(m))
            .map(|m| (last - m) as f64 / 1e6)
    }
}

/// What one fan-out run (one stream count) measured. Latencies in ms.
#[derive(Debug)]
struct FanoutRow {
    streams: usize,
    sync_secs: f64,
    rss_sync: f64,
    rss_cycles: f64,
    rss_push: f64,
    push_ms: f64,
    /// svc-0's upstream listen(2) -> the last stream received the upstream assignment.
    wake_ready: Vec<f64>,
    /// The controller marked svc-0 ready (log) -> the last stream received it.
    wake_ctl: Vec<f64>,
    /// First -> last stream's receipt of the upstream assignment.
    wake_spread: Vec<f64>,
    /// The controller decided to park (log) -> the last stream received the holder.
    park_ctl: Vec<f64>,
    /// First -> last stream's receipt of the holder assignment.
    park_spread: Vec<f64>,
}

/// p50, p99 and max of `v`, sorted in place.
fn pcts(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((p / 100.0) * (v.len() - 1) as f64).round() as usize];
    Some((pct(50.0), pct(99.0), v[v.len() - 1]))
}

fn cell(v: &[f64]) -> String {
    let mut v = v.to_vec();
    match pcts(&mut v) {
        Some((p50, p99, _)) => format!("{p50:.2} / {p99:.2}"),
        None => "n/a".to_string(),
    }
}

fn line(v: &[f64]) -> String {
    let mut v = v.to_vec();
    match pcts(&mut v) {
        Some((p50, p99, max)) => format!("p50={p50:.3} p99={p99:.3} max={max:.3} ms"),
        None => "n/a".to_string(),
    }
}

/// One fan-out run: a fresh controller with `args.services` services and `count` streams.
async fn fanout(args: &Args, count: usize) -> anyhow::Result<FanoutRow> {
    anyhow::ensure!(count >= 1, "--streams: at least 1 stream per run");
    let upstream = free_port()?;
    let holder = free_port()?;
    let echo = bin("zenvoy-echo")?.display().to_string();
    let dir = tempfile::tempdir()?;
    let ready = dir.path().join("echo.ready");
    let pid_file = dir.path().join("echo.pid");
    let command = format!(
        "[{echo:?}, \"--listen\", \"{upstream}\", \"--ready-file\", {:?}, \"--pid-file\", {:?}]",
        ready.display().to_string(),
        pid_file.display().to_string()
    );
    let extra = format!(
        "    idleTimeout: {}\n    parkAckTimeout: {}\n",
        humantime::format_duration(args.fanout_idle),
        humantime::format_duration(args.fanout_park_ack)
    );
    let yaml = config_with(args.services, holder, (upstream, &command, &extra), None);
    // The planner's `state` lines (JSON, with microsecond timestamps) say when the
    // controller marked svc-0 ready and when it decided to park it.
    let c = start_controller_with(&yaml, "warn,zenvoy_core::planner=info", &["--log-json"]).await?;
    let row = fanout_run(args, count, &c, &ready, &pid_file).await;
    row.with_context(|| {
        format!(
            "fan-out with {count} streams failed\n{}",
            c.proc.log_tail(30)
        )
    })
}

async fn fanout_run(
    args: &Args,
    count: usize,
    c: &Controller,
    ready: &Path,
    pid_file: &Path,
) -> anyhow::Result<FanoutRow> {
    let pid = c.proc.pid();
    let (sotw, delta) = (count.div_ceil(2), count / 2);
    println!(
        "[F] N={count}: controller with {} services; opening {count} ADS streams ({sotw} SotW, {delta} delta), one connection each",
        args.services
    );
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let t0 = std::time::Instant::now();
    let bound = args.sync_timeout + Duration::from_secs(count as u64);
    let streams = open_and_sync(c.grpc, count, bound, &reports_tx, &mut reports).await?;
    let sync_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await; // the last ACKs are read
    let rss_sync = rss_mib(pid)?;
    no_stream_ended(&mut reports)?;
    println!(
        "[F] N={count}: every stream ACKed its initial CDS, LDS and EDS in {sync_secs:.1} s; controller RSS {rss_sync:.1} MiB"
    );

    // Wake/park cycles of svc-0, driven as the holder drives them: its pending count.
    let holder = PushStream::open(c.grpc).await?;
    holder.tx.send(holder_pending(true, 0.0)).await?;
    let mut wakes: Vec<(Seen, u128)> = Vec::with_capacity(args.fanout_wakes);
    let mut parks: Vec<Seen> = Vec::with_capacity(args.fanout_wakes);
    for k in 0..args.fanout_wakes {
        for f in [ready, pid_file] {
            match std::fs::remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", f.display()));
                }
                _ => {}
            }
        }
        let start = monotonic_ns();
        holder.tx.send(holder_pending(false, 1.0)).await?;
        let at = receipts(
            &mut reports,
            count,
            true,
            Duration::from_secs(30),
            &format!("every stream to receive svc-0's upstream assignment (wake {k})"),
        )
        .await?;
        let seen = Seen::of(start, &at);
        let r = ready.to_path_buf();
        let listened = wait::until(
            "zenvoy-echo's ready file (its listen instant)",
            Duration::from_secs(10),
            || {
                let r = r.clone();
                async move { Ok(listened_at(&r)) }
            },
        )
        .await?;
        let p = pid_file.to_path_buf();
        let echo_pid: u32 = wait::until("zenvoy-echo's pid file", Duration::from_secs(10), || {
            let p = p.clone();
            async move {
                Ok(std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()))
            }
        })
        .await?;
        wakes.push((seen, listened));

        let start = monotonic_ns();
        holder.tx.send(holder_pending(false, 0.0)).await?;
        let at = receipts(
            &mut reports,
            count,
            false,
            args.fanout_idle + args.fanout_park_ack + Duration::from_secs(30),
            &format!("every stream to receive svc-0's holder assignment (park {k})"),
        )
        .await?;
        parks.push(Seen::of(start, &at));
        wait::until(
            &format!("svc-0's zenvoy-echo (pid {echo_pid}) to exit after park {k}"),
            Duration::from_secs(30),
            || async move { Ok((!alive(echo_pid)).then_some(())) },
        )
        .await?;
        if (k + 1) % 10 == 0 {
            println!(
                "[F]   ... {} of {} wake/park cycles",
                k + 1,
                args.fanout_wakes
            );
        }
    }
    let rss_cycles = rss_mib(pid)?;
    holder.close().await;
    no_stream_ended(&mut reports)?;
    println!(
        "[F] N={count}: {} wake/park cycles done; controller RSS {rss_cycles:.1} MiB",
        args.fanout_wakes
    );

    // Pushes with N streams connected (svc-0 parked, nothing to fan out unless an ingest
    // changes a resource).
    let base = ingested(c.admin, "push").await?;
    let pushed = push_cycles(c, args.services, args.cycles, base).await?;
    let (push_ms, rss_push) = (pushed.per_push_ms, pushed.rss);
    pushed.stream.close().await;
    no_stream_ended(&mut reports)?;
    println!(
        "[F] N={count}: push ingest {push_ms:.1} ms controller CPU per cycle ({} cycles, {:.1} MiB each); RSS after {rss_push:.1} MiB",
        args.cycles,
        pushed.size as f64 / (1 << 20) as f64
    );
    drop(streams);

    let log = c.proc.log.clone().unwrap_or_default();
    let ready_log = transitions(&log, "Waking", "Awake");
    let park_log = transitions(&log, "Awake", "Parking");
    let row = FanoutRow {
        streams: count,
        sync_secs,
        rss_sync,
        rss_cycles,
        rss_push,
        push_ms,
        wake_ready: wakes
            .iter()
            .map(|(s, listened)| s.last.saturating_sub(*listened) as f64 / 1e6)
            .collect(),
        wake_ctl: wakes
            .iter()
            .filter_map(|(s, _)| s.since_log_ms(&ready_log))
            .collect(),
        wake_spread: wakes.iter().map(|(s, _)| s.spread_ms()).collect(),
        park_ctl: parks
            .iter()
            .filter_map(|s| s.since_log_ms(&park_log))
            .collect(),
        park_spread: parks.iter().map(Seen::spread_ms).collect(),
    };
    if row.wake_ctl.len() < wakes.len() || row.park_ctl.len() < parks.len() {
        println!(
            "[F] N={count}: the controller's log ({}) gave the instant of {} of {} readies and {} of {} park decisions; the others are left out",
            log.display(),
            row.wake_ctl.len(),
            wakes.len(),
            row.park_ctl.len(),
            parks.len()
        );
    }
    println!(
        "[F] N={count}: wake, svc-0's listen(2) -> last stream has the upstream: {}",
        line(&row.wake_ready)
    );
    println!(
        "[F] N={count}: wake, controller marked it ready -> last stream: {}",
        line(&row.wake_ctl)
    );
    println!(
        "[F] N={count}: wake, first -> last stream: {}",
        line(&row.wake_spread)
    );
    println!(
        "[F] N={count}: park, controller decided -> last stream has the holder: {}",
        line(&row.park_ctl)
    );
    println!(
        "[F] N={count}: park, first -> last stream: {}",
        line(&row.park_spread)
    );
    Ok(row)
}

/// What the idle measurement found.
#[derive(Debug)]
struct Idle {
    cpu_secs: f64,
    secs: f64,
}

/// A controller with `args.services` services, one SotW ADS stream, no traffic: its CPU
/// over `args.idle_for`.
async fn idle_cpu(args: &Args) -> anyhow::Result<Idle> {
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
