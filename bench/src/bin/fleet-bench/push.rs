//! Stats as Envoy and the holder deliver them: an Envoy's metrics push and its scraped
//! page for N clusters, the holder's pending count, and part A's measurement of the
//! controller's CPU per push.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{stream_metrics_message, StreamMetricsMessage};
use envoy_types::pb::io::prometheus::client::{
    Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use zenvoy_test_support::wait;

use crate::ads::node;
use crate::controller::{cpu_and_rss, ingested, name, Controller};

pub(crate) fn gauge(name: &str, v: f64) -> MetricFamily {
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

pub(crate) fn counter(name: &str, v: f64) -> MetricFamily {
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
pub(crate) fn envoy_push(services: usize, round: f64) -> Vec<MetricFamily> {
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
pub(crate) fn envoy_page(services: usize) -> String {
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
pub(crate) async fn serve_page(page: Arc<String>) -> anyhow::Result<SocketAddr> {
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

/// A `MetricsService` stream kept open: its node's stats count until it is closed.
pub(crate) struct PushStream {
    pub(crate) tx: mpsc::Sender<StreamMetricsMessage>,
    pub(crate) call: tokio::task::JoinHandle<()>,
}

impl PushStream {
    /// Open a stream to the controller (nothing sent yet).
    pub(crate) async fn open(grpc: SocketAddr) -> anyhow::Result<PushStream> {
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
    pub(crate) async fn close(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.call).await;
    }
}

/// What a push measurement found.
pub(crate) struct Pushed {
    /// Controller CPU (utime + stime) per push cycle, ms.
    pub(crate) per_push_ms: f64,
    /// One push, encoded bytes.
    pub(crate) size: usize,
    /// Controller RSS after the pushes, MiB.
    pub(crate) rss: f64,
    /// The push stream, still open.
    pub(crate) stream: PushStream,
}

/// Part A's push measurement: one Envoy (node `envoy-bench`) pushes its stats for
/// `services` clusters `cycles` times; the controller's CPU over those pushes, per push.
/// `base`: pushes the controller has ingested before this (other nodes' pushes count in
/// the same counter).
pub(crate) async fn push_cycles(
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
pub(crate) fn holder_pending(first: bool, v: f64) -> StreamMetricsMessage {
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
