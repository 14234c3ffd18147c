//! Fleet benchmark (BENCHMARKS.md): the controller with 10,000 services.
//!
//! Part A runs the real `zenvoy-controller` binary and measures its RSS, its CPU per ingest
//! cycle (a 10,000-cluster metrics push; a 10,000-cluster Envoy stats page scraped), and
//! the bytes one Envoy-like ADS client receives for a single wake, SotW and delta.
//! Part B runs the controller in-process with a backend that records when it is asked to
//! scale, plus the real holder, and measures detection latency: first held connection ->
//! scale call issued, over 1,000 services.
//!
//! `cargo build --release --workspace --bins && target/release/fleet-bench`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
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
            (
                woken.0.to_string(),
                format!("[{:?}, \"--listen\", \"{}\"]", woken.1, woken.0),
            )
        } else {
            ("127.0.0.1:9".to_string(), "[\"true\"]".to_string())
        };
        y.push_str(&format!(
            "  - name: {}\n    listen: 127.0.0.1:0\n    upstream: {upstream}\n    command: {command}\n",
            name(i)
        ));
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
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("zenvoy.yaml");
    std::fs::write(&cfg, yaml)?;
    let addr_file = dir.path().join("addr.json");
    let mut cmd = std::process::Command::new(bin("zenvoy-controller")?);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--address-file")
        .arg(&addr_file);
    cmd.env("RUST_LOG", "warn");
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
    let mut metrics = MetricsServiceClient::connect(format!("http://{}", c.grpc)).await?;
    metrics = metrics.max_encoding_message_size(256 << 20);
    let (ptx, prx) = mpsc::channel(4);
    let call = tokio::spawn(async move { metrics.stream_metrics(ReceiverStream::new(prx)).await });
    let msg = |round: f64, first: bool| StreamMetricsMessage {
        identifier: first.then(|| stream_metrics_message::Identifier {
            node: Some(node("envoy-bench")),
        }),
        envoy_metrics: envoy_push(n, round),
    };
    let size = msg(0.0, true).encoded_len();
    ptx.send(msg(0.0, true)).await?;
    let samples = |admin: SocketAddr, source: &'static str| async move {
        let page = http_get(&format!("http://{admin}/metrics")).await?;
        anyhow::Ok(
            metric_value(
                &page,
                &format!("zenvoy_ingest_samples_total{{source=\"{source}\"}}"),
            )
            .unwrap_or(0.0),
        )
    };
    wait::until(
        "the first push to be ingested",
        Duration::from_secs(30),
        || async { Ok((samples(c.admin, "push").await? >= 1.0).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The pushes are built before the clock starts, and the controller's /metrics (a
    // 10,000-service page costs CPU to render) is read once a second, not per push.
    let pushes: Vec<StreamMetricsMessage> =
        (1..=args.cycles).map(|r| msg(r as f64, false)).collect();
    let (cpu_before, _) = cpu_and_rss(c.proc.pid())?;
    for push in pushes {
        ptx.send(push).await?;
    }
    let want = (args.cycles + 1) as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if samples(c.admin, "push").await? >= want {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} pushes not ingested within 60 s",
            args.cycles
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let the runtime finish the last batch
    let (cpu_after, rss_push) = cpu_and_rss(c.proc.pid())?;
    let per_push_ms = (cpu_after - cpu_before) * 1000.0 / args.cycles as f64;
    println!(
        "[A] push ingest: {} cycles of a {n}-cluster push ({:.1} MiB encoded): {per_push_ms:.1} ms controller CPU per cycle (10 ms tick resolution; /metrics read about once a second)",
        args.cycles,
        size as f64 / (1 << 20) as f64
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
    htx.send(StreamMetricsMessage {
        identifier: Some(stream_metrics_message::Identifier {
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
                gauge: Some(Gauge { value: Some(1.0) }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
    .await?;
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
    drop(ptx);
    let _ = call.await;
    drop(c);

    // Scrapes of a 10k-cluster Envoy page.
    let page = Arc::new(envoy_page(n));
    let page_len = page.len();
    let srv = serve_page(page).await?;
    let url = format!("http://{srv}/stats/prometheus");
    let c = start_controller(&config(n, holder, (upstream, &echo), Some(&url))).await?;
    wait::until("the first scrape", Duration::from_secs(30), || async {
        Ok((samples(c.admin, "scrape").await? >= 2.0).then_some(()))
    })
    .await?;
    let s0 = samples(c.admin, "scrape").await?;
    let (cpu_before, _) = cpu_and_rss(c.proc.pid())?;
    tokio::time::sleep(Duration::from_millis(250) * args.cycles as u32).await;
    let s1 = samples(c.admin, "scrape").await?;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    part_a(&args).await?;
    part_b(&args).await?;
    Ok(())
}
