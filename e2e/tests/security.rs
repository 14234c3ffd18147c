//! A control plane no other pod can steer, read or exhaust: mTLS on every gRPC stream
//! (through a whole wake and park with the real Envoy and holder), peers without the
//! right certificate refused, and bounds on what any peer can send.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{stream_metrics_message, StreamMetricsMessage};
use envoy_types::pb::io::prometheus::client::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zenvoy_e2e::certs::{Leaf, Pki};
use zenvoy_e2e::echo::{echo_roundtrip, payload};
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::process::rss_mib;
use zenvoy_test_support::wait;

const BOUND: Duration = Duration::from_secs(30);
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.to_string(),
        cluster: "attacker".into(),
        ..Default::default()
    })
}

/// A channel to the stack's controller: TLS trusting `ca` with `leaf` as the client's
/// certificate when given, plaintext when `ca` is None.
async fn channel(
    st: &Stack,
    ca: Option<&std::path::Path>,
    leaf: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut endpoint = match ca {
        Some(_) => Endpoint::from_shared(format!("https://{}", st.grpc))?,
        None => Endpoint::from_shared(format!("http://{}", st.grpc))?,
    }
    .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = ca {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("CA file")))
            .domain_name("zenvoy-controller");
        if let Some(l) = leaf {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&l.cert).expect("cert"),
                std::fs::read(&l.key).expect("key"),
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await
}

/// What the controller answers an ADS stream that says it is `id`: `Ok(())` when it
/// sends a response, the error otherwise (a refused handshake is an error too).
async fn ads_as(
    st: &Stack,
    ca: Option<&std::path::Path>,
    leaf: Option<&Leaf>,
    id: &str,
) -> Result<(), String> {
    let ch = channel(st, ca, leaf)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = AggregatedDiscoveryServiceClient::new(ch);
    let req = DiscoveryRequest {
        node: node(id),
        type_url: ENDPOINTS.into(),
        resource_names: vec!["echo".into()],
        ..Default::default()
    };
    let call = client.stream_aggregated_resources(tokio_stream::iter(vec![req]));
    let mut inbound = tokio::time::timeout(BOUND, call)
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match tokio::time::timeout(BOUND, inbound.message()).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err("stream ended".into()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("no response".into()),
    }
}

fn pending_push(id: Option<&str>, service: &str, value: f64) -> StreamMetricsMessage {
    StreamMetricsMessage {
        identifier: id.map(|id| stream_metrics_message::Identifier { node: node(id) }),
        envoy_metrics: vec![MetricFamily {
            name: Some("zenvoy_holder_pending".into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: vec![LabelPair {
                    name: Some("service".into()),
                    value: Some(service.into()),
                }],
                gauge: Some(Gauge { value: Some(value) }),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// What the controller answers a metrics stream of `msgs` (the stream stays open for a
/// moment after the last one): `Ok(())` if it is still taking it, the error otherwise.
async fn push_as(
    st: &Stack,
    ca: Option<&std::path::Path>,
    leaf: Option<&Leaf>,
    msgs: Vec<StreamMetricsMessage>,
) -> Result<(), String> {
    let ch = channel(st, ca, leaf)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = MetricsServiceClient::new(ch).max_encoding_message_size(usize::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for m in msgs {
        tx.send(m).await.map_err(|e| e.to_string())?;
    }
    let call = client.stream_metrics(tokio_stream::wrappers::ReceiverStream::new(rx));
    // A refused stream ends with its status at once; an accepted one waits for more.
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(_)) => Err("the controller ended the stream without an error".into()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Ok(()),
    }
}

async fn tls_stack() -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let echo = ServiceSpec::echo("echo", dir.path())
        .expect("spec")
        .with("idleTimeout: 2s");
    Stack::start(
        dir,
        Options {
            services: vec![echo],
            tls: true,
            ..Options::default()
        },
    )
    .await
    .expect("a stack with mTLS starts")
}

/// The real Envoy and holder, with their certificates, through a whole wake and park.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_envoy_and_holder_wake_and_park_over_mtls() {
    let st = tls_stack().await;
    let addr = st.listener("echo").await.expect("listener over mTLS xDS");
    echo_roundtrip(addr, &payload(1, 20_000))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert!(st.service("echo").running_pid().is_some(), "woken");
    wait::until("echo parked", BOUND, || async {
        Ok(st.service("echo").running_pid().is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    // And again: the holder's pending push (over mTLS) wakes it.
    echo_roundtrip(addr, &payload(2, 20_000))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
}

/// No certificate, one from another CA, or one for another node: refused on ADS and on
/// the metrics sink. The right one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_right_certificate_are_refused() {
    let st = tls_stack().await;
    let pki = st.pki.as_ref().expect("the stack's CA");
    let ca = Some(pki.ca.as_path());
    let dir = tempfile::tempdir().expect("dir");
    let other_ca = Pki::new(dir.path(), "other").expect("another CA");
    let stranger = other_ca.issue("envoy-7").expect("cert");
    let intruder = pki.issue("intruder").expect("cert");
    let envoy7 = pki.issue("envoy-7").expect("cert");

    // Plaintext, no certificate, another CA's certificate: no stream at all.
    for (what, ca, leaf) in [
        ("plaintext", None, None),
        ("no client certificate", ca, None),
        ("a certificate from another CA", ca, Some(&stranger)),
    ] {
        let ads = ads_as(&st, ca, leaf, "envoy-7").await;
        assert!(ads.is_err(), "ADS with {what} was served");
        let push = push_as(
            &st,
            ca,
            leaf,
            vec![pending_push(Some("envoy-7"), "echo", 1.0)],
        )
        .await;
        assert!(push.is_err(), "a metrics push with {what} was taken");
    }
    // A valid certificate for another node: refused for the node it claims.
    let ads = ads_as(&st, ca, Some(&intruder), "envoy-7").await;
    assert!(
        ads.as_ref()
            .is_err_and(|e| e.starts_with("PermissionDenied")),
        "ADS as another node: {ads:?}"
    );
    let push = push_as(
        &st,
        ca,
        Some(&intruder),
        vec![pending_push(Some("envoy-7"), "echo", 1.0)],
    )
    .await;
    assert!(
        push.as_ref()
            .is_err_and(|e| e.starts_with("PermissionDenied")),
        "push as another node: {push:?}"
    );
    // Nothing it pushed woke anything.
    assert!(st.service("echo").running_pid().is_none(), "parked still");
    // The node's own certificate: served.
    ads_as(&st, ca, Some(&envoy7), "envoy-7")
        .await
        .unwrap_or_else(|e| panic!("its own certificate: {e}\n{}", st.logs()));
    let refused = st
        .controller_metric("zenvoy_streams_refused_total{reason=\"identity\"}")
        .await
        .expect("metrics");
    assert!(refused >= 2.0, "counted: {refused}");
}

/// Garbage numbers, unknown services, a 64 MiB push and a thousand idle streams: none
/// changes a service's state, the big push and the streams past the bound are refused,
/// and the controller's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pushes_and_idle_streams_are_bounded() {
    let dir = Stack::tempdir().expect("tempdir");
    let echo = ServiceSpec::echo("echo", dir.path()).expect("spec");
    let st = Stack::start(
        dir,
        Options {
            services: vec![echo],
            controller: vec!["maxStreams: 100".into()],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let pid = st.controller.pid();
    let rss_before = rss_mib(pid).expect("rss");

    // Negative, NaN and infinite pending counts, and 10,000 services nobody knows.
    let mut garbage = vec![
        pending_push(Some("hostile"), "echo", -1.0),
        pending_push(None, "echo", f64::NAN),
        pending_push(None, "echo", f64::INFINITY),
    ];
    garbage.push(StreamMetricsMessage {
        identifier: None,
        envoy_metrics: (0..10_000)
            .map(|i| {
                pending_push(None, &format!("unknown-{i}"), 1.0)
                    .envoy_metrics
                    .remove(0)
            })
            .collect(),
    });
    push_as(&st, None, None, garbage)
        .await
        .unwrap_or_else(|e| panic!("garbage is refused value by value, not the stream: {e}"));
    let rejected = wait::until("the bad values counted", BOUND, || async {
        let n = st
            .controller_metric("zenvoy_ingest_rejected_total")
            .await
            .unwrap_or(0.0);
        Ok((n >= 3.0).then_some(n))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert!(rejected >= 3.0);
    assert!(
        st.service("echo").running_pid().is_none(),
        "nothing woke\n{}",
        st.logs()
    );

    // 64 MiB in one message: past controller.maxMessageBytes (8 MiB).
    let big = StreamMetricsMessage {
        identifier: Some(stream_metrics_message::Identifier {
            node: node("hostile"),
        }),
        envoy_metrics: vec![MetricFamily {
            name: Some("x".repeat(64 << 20)),
            ..Default::default()
        }],
    };
    let refused = push_as(&st, None, None, vec![big]).await;
    assert!(refused.is_err(), "a 64 MiB push was taken");

    // 1,000 idle streams (8 per connection at most): past maxStreams they are refused.
    let mut held = Vec::new();
    let mut refused = 0;
    for c in 0..125 {
        let ch = channel(&st, None, None).await.expect("connect");
        for s in 0..8 {
            let mut client = AggregatedDiscoveryServiceClient::new(ch.clone());
            let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
            let id = format!("idle-{c}-{s}");
            let _ = tx
                .send(DiscoveryRequest {
                    node: node(&id),
                    type_url: ENDPOINTS.into(),
                    ..Default::default()
                })
                .await;
            match client
                .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            {
                Ok(stream) => held.push((tx, stream)),
                Err(_) => refused += 1,
            }
        }
    }
    let open = st
        .controller_metric("zenvoy_xds_streams")
        .await
        .expect("metrics");
    let counted = st
        .controller_metric("zenvoy_streams_refused_total{reason=\"max_streams\"}")
        .await
        .expect("metrics");
    let rss_after = rss_mib(pid).expect("rss");
    println!(
        "controller RSS {rss_before:.1} MiB before, {rss_after:.1} MiB after garbage, a 64 MiB push and 1,000 idle streams ({} held, {refused} refused)",
        held.len()
    );
    assert!(open <= 100.0, "{open} streams open past maxStreams 100");
    assert!(
        refused >= 895 && counted >= 895.0,
        "refused {refused}, counted {counted}"
    );
    assert!(
        rss_after - rss_before < 64.0,
        "RSS grew {:.1} MiB",
        rss_after - rss_before
    );
    drop(held);
    // The real Envoy and holder are still served.
    let addr = st.listener("echo").await.expect("listener");
    echo_roundtrip(addr, &payload(3, 1000))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
}

mod kubernetes {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use zenvoy_e2e::holder_client::echo_pattern;
    use zenvoy_e2e::kube_stack::{service, workload, KubeOptions, KubeStack};
    use zenvoy_test_support::{free_port, wait};

    fn port() -> anyhow::Result<u16> {
        Ok(free_port()?.port())
    }

    async fn echo_through(stack: &KubeStack, name: &str, seed: u64) -> anyhow::Result<()> {
        let l = stack.listener(name).await?;
        let s = TcpStream::connect(l).await?;
        tokio::time::timeout(Duration::from_secs(40), echo_pattern(s, seed, 64 * 1024))
            .await
            .map_err(|_| anyhow::anyhow!("no echo from {name} within 40 s\n{}", stack.logs()))?
    }

    /// An annotation whose duration would overflow a deadline is refused with a Warning
    /// naming it; every other service keeps waking and parking.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_overflowing_annotation_is_refused_and_the_rest_keeps_working() -> anyhow::Result<()>
    {
        let stack = KubeStack::start(KubeOptions::default(), 1).await?;
        let (bad, good) = (port()?, port()?);
        stack
            .api
            .put(workload("Deployment", "default", "bad", 0, bad, &[]))?;
        stack.api.put(service(
            "default",
            "bad",
            bad,
            &[
                ("zenvoy.io/enabled", "true"),
                ("zenvoy.io/listen", "127.0.0.1:0"),
                ("zenvoy.io/wakeTimeout", "18446744073709551615s"),
            ],
        ))?;
        stack
            .api
            .put(workload("Deployment", "default", "good", 0, good, &[]))?;
        stack.api.put(service(
            "default",
            "good",
            good,
            &[
                ("zenvoy.io/enabled", "true"),
                ("zenvoy.io/listen", "127.0.0.1:0"),
                ("zenvoy.io/idleTimeout", "2s"),
            ],
        ))?;
        let event = stack
            .wait_event("default", "InvalidAnnotation", Some("bad"))
            .await?;
        let note = event["note"].as_str().unwrap_or_default();
        assert!(note.contains("zenvoy.io/wakeTimeout"), "{note}");
        assert_eq!(event["type"], "Warning");
        // The controller goes on: the good one wakes on a connection and parks.
        echo_through(&stack, "good.default", 1).await?;
        stack
            .wait_replicas("Deployment", "default", "good", 0, Duration::from_secs(30))
            .await?;
        echo_through(&stack, "good.default", 2).await?;
        assert_eq!(stack.replicas("Deployment", "default", "bad"), Some(0));
        Ok(())
    }

    /// Two HTTP Services named `web` in two namespaces: both answer to Host `web`. The
    /// second is refused with a Warning; Envoy rejects nothing and the first keeps
    /// working (under every one of its Host names).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_duplicate_host_is_refused_for_the_later_service() -> anyhow::Result<()> {
        let opts = KubeOptions {
            http: true,
            ..KubeOptions::default()
        };
        let stack = KubeStack::start(opts, 1).await?;
        let (one, two) = (port()?, port()?);
        for (ns, p) in [("one", one), ("two", two)] {
            stack
                .http_ports
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .insert(p);
            stack
                .api
                .put(workload("Deployment", ns, "web", 0, p, &[]))?;
        }
        stack.api.put(service(
            "one",
            "web",
            one,
            &[
                ("zenvoy.io/enabled", "true"),
                ("zenvoy.io/protocol", "http"),
            ],
        ))?;
        let http = stack
            .envoy
            .listener(zenvoy_controller::xds::resources::HTTP_LISTENER)
            .await?;
        let get = |host: &'static str| async move {
            let mut s = TcpStream::connect(http).await?;
            s.write_all(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(40), s.read_to_string(&mut text)).await??;
            anyhow::Ok(text)
        };
        wait::until("web.one routed", Duration::from_secs(30), || async {
            Ok(get("web.one")
                .await?
                .starts_with("HTTP/1.1 200")
                .then_some(()))
        })
        .await?;
        stack.api.put(service(
            "two",
            "web",
            two,
            &[
                ("zenvoy.io/enabled", "true"),
                ("zenvoy.io/protocol", "http"),
            ],
        ))?;
        let event = stack.wait_event("two", "HostConflict", Some("web")).await?;
        assert_eq!(event["type"], "Warning");
        for host in ["web", "web.one", "web.one.svc", "web.one.svc.cluster.local"] {
            let answer = get(host).await?;
            assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
        }
        let nacks = stack.controllers[0]
            .metric("zenvoy_xds_nacks_total{type=\"rds\"}")
            .await?;
        assert_eq!(nacks, 0.0, "Envoy rejected a route configuration");
        assert_eq!(stack.replicas("Deployment", "two", "web"), Some(0));
        Ok(())
    }

    /// A user who may edit a Service but not the workload cannot have zenvoy scale it:
    /// the workload must carry the opt-in itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_workload_without_its_own_opt_in_is_never_scaled() -> anyhow::Result<()> {
        let stack = KubeStack::start(KubeOptions::default(), 1).await?;
        let p = port()?;
        stack.api.put(workload(
            "Deployment",
            "default",
            "theirs",
            2,
            p,
            &[("zenvoy.io/enabled", "false")],
        ))?;
        stack.api.put(service(
            "default",
            "theirs",
            p,
            &[
                ("zenvoy.io/enabled", "true"),
                ("zenvoy.io/listen", "127.0.0.1:0"),
                ("zenvoy.io/idleTimeout", "1s"),
                ("zenvoy.io/parkAckTimeout", "1s"),
            ],
        ))?;
        // Running when found: woken (it has endpoints), then idle: the park is refused.
        let event = stack
            .wait_event("default", "WorkloadNotOptedIn", Some("theirs"))
            .await?;
        assert_eq!(event["type"], "Warning");
        assert_eq!(stack.replicas("Deployment", "default", "theirs"), Some(2));
        assert!(
            stack.scale_writes().is_empty(),
            "no /scale write: {:?}",
            stack.scale_writes()
        );
        Ok(())
    }
}
