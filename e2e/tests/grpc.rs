//! gRPC on the shared HTTP listener: a real tonic client calls a parked tonic server
//! (`zenvoy-grpc`) through Envoy, routed by `:authority`, with an HTTP/2 upstream that the
//! holder relays while the server wakes.

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tonic::transport::{Channel, Endpoint};
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::bin;

const BOUND: Duration = Duration::from_secs(30);

async fn grpc_stack(idle: &str) -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let mut svc = ServiceSpec::echo("limits", dir.path()).expect("spec");
    svc.command = vec![
        bin("zenvoy-grpc")
            .expect("zenvoy-grpc")
            .display()
            .to_string(),
        "--listen".into(),
        svc.upstream.to_string(),
        "--pid-file".into(),
        svc.pid_file.display().to_string(),
    ];
    let svc = svc
        .with("protocol: grpc")
        .with(&format!("idleTimeout: {idle}"));
    Stack::start(
        dir,
        Options {
            services: vec![svc],
            http: true,
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

/// A client of the shared listener whose `:authority` names the service.
async fn client(st: &Stack) -> RateLimitServiceClient<Channel> {
    let addr = st.listener("zenvoy_http").await.expect("HTTP listener");
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .origin("http://limits".parse().expect("uri"))
        .connect_timeout(BOUND)
        .timeout(BOUND)
        .connect()
        .await
        .expect("connect to Envoy");
    RateLimitServiceClient::new(channel)
}

async fn call(c: &mut RateLimitServiceClient<Channel>, domain: &str) -> Result<i32, tonic::Status> {
    let req = RateLimitRequest {
        domain: domain.to_string(),
        ..Default::default()
    };
    c.should_rate_limit(req)
        .await
        .map(|r| r.get_ref().overall_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_wakes_a_parked_server_and_it_parks_when_no_call_is_in_flight() {
    let st = grpc_stack("1s").await;
    assert!(
        st.service("limits").running_pid().is_none(),
        "starts parked"
    );
    let mut c = client(&st).await;

    // The call that wakes it is answered.
    let code = call(&mut c, "wake")
        .await
        .unwrap_or_else(|e| panic!("the waking call: {e}\n{}", st.logs()));
    assert_eq!(code, Code::Ok as i32);
    let pid = st
        .service("limits")
        .running_pid()
        .expect("woken by the call");

    // A call in flight for 3 s, three idle timeouts: requests, not connections, are the
    // activity, and an open request keeps the server up.
    let code = call(&mut c, "slow")
        .await
        .unwrap_or_else(|e| panic!("the slow call: {e}\n{}", st.logs()));
    assert_eq!(code, Code::Ok as i32);
    assert_eq!(
        st.service("limits").running_pid(),
        Some(pid),
        "not parked (or restarted) under a call in flight"
    );

    // No call in flight: parked after the idle timeout, though the client keeps its
    // HTTP/2 connection to Envoy (and Envoy its own upstream) open.
    st.wait_parked("limits", BOUND)
        .await
        .expect("parks when idle");

    // The same client's next call wakes it again.
    let code = call(&mut c, "again")
        .await
        .unwrap_or_else(|e| panic!("the call after the park: {e}\n{}", st.logs()));
    assert_eq!(code, Code::Ok as i32);
    assert!(st.service("limits").running_pid().is_some(), "woken again");
}
