//! The whole loop through a real Envoy: held, woken, relayed byte-exact, served direct,
//! parked after idle, woken again. Each test starts its own stack on OS-chosen ports.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zenvoy_e2e::echo::{echo_roundtrip, http_get_host as http_get, payload};
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::wait;

const BOUND: Duration = Duration::from_secs(30);

async fn stack(
    services: impl FnOnce(&std::path::Path) -> anyhow::Result<Vec<ServiceSpec>>,
) -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let services = services(dir.path()).expect("service specs");
    Stack::start(
        dir,
        Options {
            services,
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

async fn wait_parked(st: &Stack, name: &str) {
    st.wait_parked(name, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_64k_write_is_echoed_exactly_after_wake() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?])).await;
    let addr = st.listener("echo").await.expect("listener");
    assert!(st.service("echo").running_pid().is_none(), "starts parked");
    // 64 KiB written at once, before any upstream exists.
    echo_roundtrip(addr, &payload(1, 64 * 1024))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert!(
        st.service("echo").running_pid().is_some(),
        "woken by the connection"
    );
    assert_eq!(
        st.holder_metric("zenvoy_holder_relayed_total{service=\"echo\"}")
            .await
            .expect("metrics"),
        1.0,
        "the held connection was relayed by the holder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_at_once_are_all_served() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?])).await;
    let addr = st.listener("echo").await.expect("listener");
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            tokio::spawn(
                async move { echo_roundtrip(addr, &payload(i, 1024 + i as usize * 37)).await },
            )
        })
        .collect();
    let mut failures = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if let Err(e) = t.await.expect("task") {
            failures.push(format!("conn {i}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        st.logs()
    );
    let refused = st
        .holder_metric("zenvoy_holder_refused_total{reason=\"max_pending\"}")
        .await
        .expect("metrics");
    assert_eq!(refused, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awake_service_is_served_directly_not_through_the_holder() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?])).await;
    let addr = st.listener("echo").await.expect("listener");
    echo_roundtrip(addr, b"wake up")
        .await
        .expect("first connection");
    let upstream = st.service("echo").upstream;
    st.wait_hosts("echo", &[upstream], BOUND)
        .await
        .expect("Envoy has the real endpoint");
    let relayed = "zenvoy_holder_relayed_total{service=\"echo\"}";
    let before = st.holder_metric(relayed).await.expect("metrics");
    for i in 0..5 {
        echo_roundtrip(addr, &payload(100 + i, 4096))
            .await
            .expect("direct connection");
    }
    let after = st.holder_metric(relayed).await.expect("metrics");
    assert_eq!(before, after, "no new connection passed through the holder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_service_parks_and_wakes_again_twice() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?.with("idleTimeout: 2s")])).await;
    let addr = st.listener("echo").await.expect("listener");
    for cycle in 1..=2 {
        echo_roundtrip(addr, &payload(cycle, 10_000))
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}\n{}", st.logs()));
        assert!(
            st.service("echo").running_pid().is_some(),
            "cycle {cycle}: awake"
        );
        wait_parked(&st, "echo").await;
    }
    let parks = st
        .controller_metric("zenvoy_parks_total{service=\"echo\"}")
        .await
        .expect("metrics");
    assert_eq!(parks, 2.0);
    // Each wake's cold start, per service, in the histogram and the outcome counter.
    let ready = "{service=\"echo\",outcome=\"ready\"}";
    for (series, want) in [
        (format!("zenvoy_wake_duration_seconds_count{ready}"), 2.0),
        (format!("zenvoy_wake_outcomes_total{ready}"), 2.0),
    ] {
        let got = st.controller_metric(&series).await.expect("metrics");
        assert_eq!(got, want, "{series}");
    }
    let took = st
        .controller_metric(&format!("zenvoy_wake_duration_seconds_sum{ready}"))
        .await
        .expect("metrics");
    assert!(took > 0.0, "two wakes took {took} s in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_keeps_the_service_awake() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?.with("idleTimeout: 2s")])).await;
    let addr = st.listener("echo").await.expect("listener");
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    tokio::time::timeout(BOUND, conn.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    let pid = st.service("echo").running_pid().expect("awake");
    // Three idle timeouts with the connection open and silent.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        st.service("echo").running_pid(),
        Some(pid),
        "still the same process"
    );
    conn.write_all(b"still").await.expect("write after idle");
    tokio::time::timeout(BOUND, conn.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"still");
    drop(conn);
    wait_parked(&st, "echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routed_http_wakes_the_right_service_and_parks_despite_keep_alive() {
    let dir = Stack::tempdir().expect("tempdir");
    let services = vec![
        ServiceSpec::http("web", dir.path(), "hello from web")
            .expect("spec")
            .with("idleTimeout: 2s"),
        ServiceSpec::http("api", dir.path(), "hello from api").expect("spec"),
    ];
    let st = Stack::start(
        dir,
        Options {
            services,
            http: true,
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let addr = st.listener("zenvoy_http").await.expect("HTTP listener");

    // Parked: the request is held, the service woken, the reply returned.
    let (status, body) = http_get(addr, "web", true)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "hello from web\n");
    assert!(st.service("web").running_pid().is_some(), "web woken");
    assert!(
        st.service("api").running_pid().is_none(),
        "only the routed service wakes"
    );

    // The Kubernetes-style domain forms route to the same service; the port is ignored.
    for host in [
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local:8080",
    ] {
        let (status, body) = http_get(addr, host, true).await.expect("request");
        assert!(status.contains(" 200 "), "{host}: {status}");
        assert_eq!(body, "hello from web\n", "{host}");
    }
    let (status, _) = http_get(addr, "nobody", false).await.expect("request");
    assert!(status.contains(" 404 "), "unknown host: {status}");

    // Envoy keeps its upstream keep-alive connection to web open; with no requests the
    // service still parks (request stats, not connections, decide for HTTP).
    wait_parked(&st, "web").await;
    let (status, body) = http_get(addr, "web", false)
        .await
        .expect("request after park");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "hello from web\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_envoys_share_one_controller_and_their_activity_is_summed() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?.with("idleTimeout: 2s")])).await;
    let second = st
        .start_envoy("envoy-2")
        .await
        .expect("second Envoy gets config");
    let (a1, a2) = (
        st.listener("echo").await.expect("listener on envoy-1"),
        second.listener("echo").await.expect("listener on envoy-2"),
    );
    assert_ne!(a1, a2);
    // Woken through envoy-2, and the real endpoint reaches both Envoys.
    echo_roundtrip(a2, &payload(7, 8192))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let upstream = st.service("echo").upstream;
    st.wait_hosts("echo", &[upstream], BOUND)
        .await
        .expect("envoy-1 has the endpoint");
    assert_eq!(
        second.cluster_hosts("echo").await.expect("clusters"),
        [upstream]
    );

    // Busy on envoy-1 only (one open, silent connection); envoy-2 reports idle samples.
    let mut conn = TcpStream::connect(a1).await.expect("connect via envoy-1");
    conn.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(BOUND, conn.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    let pid = st.service("echo").running_pid().expect("awake");
    // Three idle timeouts pass; envoy-2's idle samples must not park a service that is
    // busy on envoy-1.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(st.service("echo").running_pid(), Some(pid), "still awake");
    assert_eq!(
        st.controller_metric("zenvoy_parks_total{service=\"echo\"}")
            .await
            .expect("metrics"),
        0.0
    );
    drop(conn);
    wait_parked(&st, "echo").await;
    assert_eq!(
        second.cluster_hosts("echo").await.expect("clusters"),
        [st.holder_listen]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_envoy_gets_the_current_state_and_its_reset_is_not_activity() {
    let mut st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?.with("idleTimeout: 3s")])).await;
    let addr = st.listener("echo").await.expect("listener");
    echo_roundtrip(addr, &payload(9, 4096)).await.expect("wake");
    let upstream = st.service("echo").upstream;
    st.wait_hosts("echo", &[upstream], BOUND)
        .await
        .expect("awake endpoint");

    st.restart_envoy()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    // The new Envoy gets the service as it is now: awake, the real endpoint.
    st.wait_hosts("echo", &[upstream], BOUND)
        .await
        .expect("restarted Envoy sees the upstream");
    let addr = st.listener("echo").await.expect("listener after restart");
    let relayed = "zenvoy_holder_relayed_total{service=\"echo\"}";
    let before = st.holder_metric(relayed).await.expect("metrics");
    echo_roundtrip(addr, &payload(10, 4096))
        .await
        .expect("served after restart");
    assert_eq!(
        st.holder_metric(relayed).await.expect("metrics"),
        before,
        "served directly"
    );
    // Its counters started again from zero; that is not activity, and the service parks
    // after its idle timeout as usual.
    wait_parked(&st, "echo").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_during_the_park_is_served() {
    // A slow stats flush keeps the park in phase one (holder published, waiting for an idle
    // sample after the ACK) for up to 2 s: a window a test can hit.
    let dir = Stack::tempdir().expect("tempdir");
    let services = vec![ServiceSpec::echo("echo", dir.path())
        .expect("spec")
        .with("idleTimeout: 1s")];
    let opts = Options {
        services,
        flush: Duration::from_secs(2),
        ..Options::default()
    };
    let st = Stack::start(dir, opts).await.expect("stack starts");
    let addr = st.listener("echo").await.expect("listener");
    echo_roundtrip(addr, b"wake").await.expect("wake");
    let parking = "zenvoy_service_state{service=\"echo\",state=\"parking\"}";
    wait::until("the park to begin", BOUND, || async {
        Ok((st.controller_metric(parking).await? == 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    // The holder is the endpoint again but the service still runs: this connection is
    // held and must cancel the park, not be lost.
    echo_roundtrip(addr, &payload(11, 32 * 1024))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let cancelled = st
        .controller_metric("zenvoy_parks_cancelled_total{service=\"echo\"}")
        .await
        .expect("metrics");
    assert_eq!(
        cancelled,
        1.0,
        "the park was cancelled by the connection\n{}",
        st.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_envoy_rejects_is_nacked_and_the_rest_keeps_serving() {
    // The test holds this port, so Envoy cannot bind service "taken"'s listener and
    // rejects the listener update.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = Stack::tempdir().expect("tempdir");
    let mut bad = ServiceSpec::echo("taken", dir.path()).expect("spec");
    bad.listen = Some(taken.local_addr().expect("addr"));
    let services = vec![ServiceSpec::echo("echo", dir.path()).expect("spec"), bad];
    let st = Stack::start(
        dir,
        Options {
            services,
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let nacks = "zenvoy_xds_nacks_total{type=\"lds\"}";
    wait::until(
        "the controller to count Envoy's LDS NACK",
        BOUND,
        || async { Ok((st.controller_metric(nacks).await? >= 1.0).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let log = std::fs::read_to_string(st.dir.path().join("controller.log")).expect("log");
    assert!(
        log.contains("Envoy rejected config (NACK)"),
        "NACK logged with Envoy's error"
    );
    // The other service still works through the same Envoy.
    let addr = st.listener("echo").await.expect("good listener");
    echo_roundtrip(addr, &payload(12, 2048))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_mode_alone_wakes_and_parks() {
    // No pushes at all: Envoy has no metrics_service sink and the holder runs with
    // --no-push. The controller learns of the held connection from the holder's /metrics
    // and of activity from Envoy's /stats/prometheus.
    let dir = Stack::tempdir().expect("tempdir");
    let services = vec![ServiceSpec::echo("echo", dir.path())
        .expect("spec")
        .with("idleTimeout: 2s")];
    let opts = Options {
        services,
        scrape: Some(Duration::from_millis(200)),
        ..Options::default()
    };
    let st = Stack::start(dir, opts).await.expect("stack starts");
    let addr = st.listener("echo").await.expect("listener");
    for cycle in 1..=2 {
        echo_roundtrip(addr, &payload(20 + cycle, 16 * 1024))
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}\n{}", st.logs()));
        wait_parked(&st, "echo").await;
    }
    let pushes = st
        .controller_metric("zenvoy_ingest_samples_total{source=\"push\"}")
        .await
        .expect("metrics");
    assert_eq!(pushes, 0.0, "nothing was pushed");
    let scrapes = st
        .controller_metric("zenvoy_ingest_samples_total{source=\"scrape\"}")
        .await
        .expect("metrics");
    assert!(scrapes > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_xds_envoy_wakes_and_parks_next_to_a_sotw_one() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?.with("idleTimeout: 2s")])).await;
    let delta = st
        .start_delta_envoy("envoy-delta")
        .await
        .expect("delta Envoy gets config");
    let addr = delta
        .listener("echo")
        .await
        .expect("listener on the delta Envoy");
    for cycle in 1..=2 {
        echo_roundtrip(addr, &payload(30 + cycle, 8192))
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}\n{}", st.logs()));
        let upstream = st.service("echo").upstream;
        wait::until(
            "the delta Envoy to get the real endpoint",
            BOUND,
            || async { Ok((delta.cluster_hosts("echo").await? == [upstream]).then_some(())) },
        )
        .await
        .expect("delta EDS update");
        wait_parked(&st, "echo").await;
        wait::until("the delta Envoy to get the holder back", BOUND, || async {
            Ok((delta.cluster_hosts("echo").await? == [st.holder_listen]).then_some(()))
        })
        .await
        .expect("delta EDS update");
    }
    // Both Envoys ACKed every update: no NACKs of any type.
    for t in ["lds", "cds", "eds"] {
        let series = format!("zenvoy_xds_nacks_total{{type=\"{t}\"}}");
        assert_eq!(
            st.controller_metric(&series).await.expect("metrics"),
            0.0,
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configs_hold_timeout_reaches_the_holder() {
    // The holder's own --hold-timeout stays at its 30 s default; the service's config says
    // 1 s, and the controller delivers that with the parked assignment.
    let dir = Stack::tempdir().expect("tempdir");
    let mut never = ServiceSpec::echo("never", dir.path())
        .expect("spec")
        .with("holdTimeout: 1s");
    never.command = vec!["sleep".into(), "600".into()]; // runs, never listens
    let st = Stack::start(
        dir,
        Options {
            services: vec![never],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let addr = st.listener("never").await.expect("listener");
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"anyone?").await.expect("write");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(BOUND, s.read(&mut buf))
        .await
        .expect("closed within the bound");
    let held = started.elapsed();
    assert!(matches!(n, Ok(0) | Err(_)), "closed, not answered: {n:?}");
    assert!(
        held >= Duration::from_millis(900),
        "held {held:?}, at least the 1 s holdTimeout"
    );
    assert!(
        held < Duration::from_secs(10),
        "held {held:?}: the config's 1 s, not the flag's 30 s"
    );
    let timeouts = "zenvoy_holder_held_seconds_count{outcome=\"timeout\"}";
    assert_eq!(st.holder_metric(timeouts).await.expect("metrics"), 1.0);
}

/// Rewrite the controller's config file in one step (what a ConfigMap update or an
/// editor's save-and-rename does): the controller never reads half a file.
fn rewrite_config(st: &Stack, from: &str, to: &str) {
    let path = st.dir.path().join("zenvoy.yaml");
    let text = std::fs::read_to_string(&path).expect("read config");
    assert!(text.contains(from), "config has no {from:?}:\n{text}");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replace(from, to)).expect("write config");
    std::fs::rename(&tmp, &path).expect("replace config");
}

async fn wait_reloads(st: &Stack, result: &str, want: f64) {
    let series = format!("zenvoy_config_reloads_total{{result=\"{result}\"}}");
    wait::until(&format!("{series} to be {want}"), BOUND, || async {
        let v = st.controller_metric(&series).await?;
        Ok((v == want).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_idle_timeout_applies_without_a_restart_and_an_invalid_edit_is_rejected() {
    let st = stack(|d| Ok(vec![ServiceSpec::echo("echo", d)?.with("idleTimeout: 10m")])).await;
    let addr = st.listener("echo").await.expect("listener");
    echo_roundtrip(addr, &payload(1, 1000))
        .await
        .unwrap_or_else(|e| panic!("wake: {e}\n{}", st.logs()));
    let pid = st.service("echo").running_pid().expect("awake");

    // Invalid: rejected, counted, and the running config stays (10m: still awake).
    rewrite_config(&st, "    idleTimeout: 10m", "    idleTimeout: 0s");
    wait_reloads(&st, "rejected", 1.0).await;
    // A change that needs a restart is refused the same way.
    rewrite_config(
        &st,
        "    idleTimeout: 0s",
        "    idleTimeout: 10m\n    namespace: other",
    );
    wait_reloads(&st, "rejected", 2.0).await;
    assert_eq!(
        st.controller_metric("zenvoy_config_reloads_total{result=\"applied\"}")
            .await
            .expect("metrics"),
        0.0
    );
    assert_eq!(st.service("echo").running_pid(), Some(pid), "still awake");

    // Valid: the service parks after the new idle timeout, with no restart.
    rewrite_config(
        &st,
        "    idleTimeout: 10m\n    namespace: other",
        "    idleTimeout: 1s",
    );
    wait_reloads(&st, "applied", 1.0).await;
    wait_parked(&st, "echo").await;
    // And the loop still works: a connection wakes it again.
    echo_roundtrip(addr, &payload(2, 1000))
        .await
        .unwrap_or_else(|e| panic!("wake after reload: {e}\n{}", st.logs()));
}
