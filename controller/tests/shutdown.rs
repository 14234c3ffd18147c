//! Shutdown with clients still connected: the controller ends its ADS streams (Envoy then
//! reconnects, to another replica in HA) and its MetricsService streams, so
//! `run_with` returns instead of waiting for clients that never hang up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{stream_metrics_message, StreamMetricsMessage};
use envoy_types::pb::io::prometheus::client::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use zenvoy_controller::backend::{Backend, BackendError, BoxFuture};
use zenvoy_controller::xds::resources::ENDPOINT_TYPE;
use zenvoy_core::config::Config;

/// How long shutdown may take with every client still connected.
const BOUND: Duration = Duration::from_secs(5);

/// Reports each wake it is asked for; the wake itself never finishes.
struct Recorder(mpsc::UnboundedSender<String>);

impl Backend for Recorder {
    fn wake(
        &self,
        service: &str,
        _timeout: Duration,
        _scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>> {
        let _ = self.0.send(service.to_string());
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

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

/// A holder's push: one connection held for `service`.
fn pending_push(service: &str) -> StreamMetricsMessage {
    StreamMetricsMessage {
        identifier: Some(stream_metrics_message::Identifier {
            node: node("holder-1"),
        }),
        envoy_metrics: vec![MetricFamily {
            name: Some("zenvoy_holder_pending".into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![LabelPair {
                    name: Some("service".into()),
                    value: Some(service.into()),
                }],
                gauge: Some(Gauge { value: Some(1.0) }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// `fut`'s output, or `what` when it does not finish within [`BOUND`].
async fn within<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, &'static str> {
    tokio::time::timeout(BOUND, fut).await.map_err(|_| what)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_ads_and_metrics_streams_and_returns() {
    let config = Config::from_yaml(
        "holder:\n  address: 127.0.0.1:1\nservices:\n  - name: echo\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:2\n    command: [\"true\"]\n",
    )
    .expect("config");
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", grpc.local_addr().expect("addr"));
    let (woken_tx, mut woken) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(zenvoy_controller::run_with(
        config,
        Arc::new(Recorder(woken_tx)),
        grpc,
        admin,
        async {
            let _ = stopped.await;
        },
    ));

    // A SotW ADS stream subscribed to the service's assignment; its first response
    // shows the stream is being served. The request side stays open, as Envoy's does.
    let mut ads = AggregatedDiscoveryServiceClient::connect(url.clone())
        .await
        .expect("ADS connect");
    let (sotw_tx, sotw_rx) = mpsc::channel(4);
    sotw_tx
        .send(DiscoveryRequest {
            node: node("envoy-1"),
            type_url: ENDPOINT_TYPE.into(),
            resource_names: vec!["echo".into()],
            ..Default::default()
        })
        .await
        .expect("queue request");
    let mut sotw = ads
        .stream_aggregated_resources(ReceiverStream::new(sotw_rx))
        .await
        .expect("SotW ADS stream")
        .into_inner();
    let first = sotw
        .next()
        .await
        .expect("a response")
        .expect("not an error");
    assert_eq!(first.type_url, ENDPOINT_TYPE);

    // The same over delta ADS.
    let (delta_tx, delta_rx) = mpsc::channel(4);
    delta_tx
        .send(DeltaDiscoveryRequest {
            node: node("envoy-2"),
            type_url: ENDPOINT_TYPE.into(),
            resource_names_subscribe: vec!["echo".into()],
            ..Default::default()
        })
        .await
        .expect("queue request");
    let mut delta = ads
        .delta_aggregated_resources(ReceiverStream::new(delta_rx))
        .await
        .expect("delta ADS stream")
        .into_inner();
    let first = delta
        .next()
        .await
        .expect("a response")
        .expect("not an error");
    assert_eq!(first.resources.len(), 1);

    // A MetricsService stream, as the holder keeps one: its push of a held connection
    // reaching the backend as a wake shows the stream is being read.
    let mut push = MetricsServiceClient::connect(url).await.expect("connect");
    let (push_tx, push_rx) = mpsc::channel(4);
    push_tx
        .send(pending_push("echo"))
        .await
        .expect("queue push");
    let call = tokio::spawn(async move { push.stream_metrics(ReceiverStream::new(push_rx)).await });
    let wake = tokio::time::timeout(BOUND, woken.recv())
        .await
        .expect("the pushed held connection reaches the backend as a wake");
    assert_eq!(wake.as_deref(), Some("echo"));

    stop.send(()).expect("controller running");
    // Every client keeps its request side open (the senders above are alive): only the
    // controller can end these streams.
    let (sotw, delta, push, run) = tokio::join!(
        within("the SotW ADS stream", async {
            while let Some(Ok(_)) = sotw.next().await {}
        }),
        within("the delta ADS stream", async {
            while let Some(Ok(_)) = delta.next().await {}
        }),
        within("the MetricsService stream", call),
        within("run_with (tonic waits for open streams to end)", controller),
    );
    let waited: Vec<&str> = [
        sotw.err(),
        delta.err(),
        push.as_ref().err().copied(),
        run.as_ref().err().copied(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        waited.is_empty(),
        "still open {BOUND:?} after shutdown: {}",
        waited.join(", ")
    );
    if let Ok(call) = push {
        call.expect("push task")
            .expect("the metrics stream ends with its response");
    }
    if let Ok(run) = run {
        run.expect("controller task").expect("run_with");
    }
    drop((sotw_tx, delta_tx, push_tx));
}
