//! Readiness that fits real servers (process backend, real Envoy, holder and splice).
//!
//! The upstream here is `zenvoy-echo --starting-for 300ms`: it accepts at once but, like
//! a Postgres still starting or a Redis loading its dataset, refuses every connection in
//! its protocol for 300 ms (`503` over HTTP, a `FATAL` line over TCP). With the `tcp`
//! check a wake relays the held clients into those refusals, and each test first shows
//! that it does; with the `http` or `command` check they are all served.

use std::time::Duration;

use zenvoy_e2e::echo::{echo_roundtrip, http_get_host, payload};
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::{bin, wait};

const BOUND: Duration = Duration::from_secs(30);
/// Clients that arrive together while the service is parked.
const CLIENTS: usize = 20;
const STARTING: &str = "300ms";

async fn http_stack(ready: &str) -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let mut web = ServiceSpec::http("web", dir.path(), "served").expect("spec");
    web.command
        .extend(["--starting-for".to_string(), STARTING.to_string()]);
    let web = web.with(ready).with("idleTimeout: 1s");
    Stack::start(
        dir,
        Options {
            services: vec![web],
            http: true,
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

/// `CLIENTS` GETs at once through the shared HTTP listener; each one's status line.
async fn burst_of_gets(st: &Stack) -> Vec<String> {
    let addr = st.listener("zenvoy_http").await.expect("HTTP listener");
    let gets = (0..CLIENTS).map(|_| http_get_host(addr, "web", false));
    futures::future::join_all(gets)
        .await
        .into_iter()
        .map(|r| match r {
            Ok((status, body)) if status.contains(" 200 ") => {
                assert_eq!(body, "served\n");
                status
            }
            Ok((status, _)) => status,
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_tcp_check_a_starting_server_refuses_the_held_clients() {
    // The control: it shows the server really refuses while starting, so the next
    // tests' all-served results come from the check, not from luck.
    let st = http_stack("ready: {tcp: {}}").await;
    let statuses = burst_of_gets(&st).await;
    let refused = statuses.iter().filter(|s| s.contains(" 503 ")).count();
    assert!(
        refused > 0,
        "a port that accepts is not a server that serves: {statuses:?}\n{}",
        st.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_holds_every_client_until_the_server_answers() {
    let st = http_stack("ready: {http: {path: /, status: 200}, interval: 20ms}").await;
    assert!(st.service("web").running_pid().is_none(), "starts parked");
    let statuses = burst_of_gets(&st).await;
    assert!(
        statuses.iter().all(|s| s.contains(" 200 ")),
        "every one of {CLIENTS} held clients answered: {statuses:?}\n{}",
        st.logs()
    );
    // Parked again after its idle timeout, the next single client is the one that wakes
    // it: its first request is answered too.
    st.wait_parked("web", BOUND).await.expect("parks when idle");
    let addr = st.listener("zenvoy_http").await.expect("HTTP listener");
    let (status, body) = http_get_host(addr, "web", false)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert!(
        status.contains(" 200 "),
        "first request after a wake: {status}"
    );
    assert_eq!(body, "served\n");
}

async fn tcp_stack(ready: &str) -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let mut db = ServiceSpec::echo("db", dir.path()).expect("spec");
    db.command
        .extend(["--starting-for".to_string(), STARTING.to_string()]);
    let ready = ready.replace("UPSTREAM", &db.upstream.to_string()).replace(
        "ECHO",
        &bin("zenvoy-echo")
            .expect("zenvoy-echo")
            .display()
            .to_string(),
    );
    let db = db.with(&ready);
    Stack::start(
        dir,
        Options {
            services: vec![db],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

/// `CLIENTS` echo round trips at once through the service's TCP listener; the failures.
async fn burst_of_echoes(st: &Stack) -> Vec<String> {
    let addr = st.listener("db").await.expect("listener");
    let trips = (0..CLIENTS).map(|i| async move {
        echo_roundtrip(addr, &payload(i as u64, 4096))
            .await
            .map_err(|e| format!("client {i}: {e}"))
    });
    futures::future::join_all(trips)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_check_holds_every_client_until_the_server_serves() {
    let control = tcp_stack("ready: {tcp: {}}").await;
    let failures = burst_of_echoes(&control).await;
    assert!(
        !failures.is_empty(),
        "the control: with a tcp check some client meets the starting server"
    );
    drop(control);

    let st = tcp_stack("ready: {command: [ECHO, --check, UPSTREAM], interval: 20ms}").await;
    let failures = burst_of_echoes(&st).await;
    assert!(
        failures.is_empty(),
        "every held client served exactly: {failures:?}\n{}",
        st.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_fails_the_wake_with_what_it_saw() {
    // The check asks for a status the server never answers: the wake gives up at its
    // timeout and says why, and the held client is not relayed into the server.
    let dir = Stack::tempdir().expect("tempdir");
    let web = ServiceSpec::http("web", dir.path(), "served")
        .expect("spec")
        .with("ready: {http: {path: /, status: 204}, interval: 50ms}")
        .with("wakeTimeout: 1s");
    let st = Stack::start(
        dir,
        Options {
            services: vec![web],
            http: true,
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let addr = st.listener("zenvoy_http").await.expect("HTTP listener");
    let client = tokio::spawn(http_get_host(addr, "web", false));
    wake_fails_saying(&st, "web", "answered 200, not 204").await;
    client.abort();
}

/// Wait for a wake of `service` to fail; the controller's log then names what its check
/// saw (`said`).
async fn wake_fails_saying(st: &Stack, service: &str, said: &str) {
    let failed = format!("zenvoy_wake_outcomes_total{{service=\"{service}\",outcome=\"failed\"}}");
    wait::until("the wake to fail", BOUND, || async {
        Ok((st.controller_metric(&failed).await? >= 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let logs = st.controller.log_tail(200);
    assert!(
        logs.contains(said),
        "the error names the check and what it saw ({said}):\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_data_dir_with_a_stale_file_fails_the_wake_naming_it() {
    // `dataDir` holds a postmaster.pid that says "ready" but was written long before
    // this wake started the server (what a crash leaves, or another server's): the check
    // must not believe it, and the wake's error says whose file it read and why.
    let dir = Stack::tempdir().expect("tempdir");
    let data = dir.path().join("other-data");
    std::fs::create_dir(&data).expect("data dir");
    std::fs::write(
        data.join("postmaster.pid"),
        format!(
            "4242\n{}\n1000000000\n5432\n\n127.0.0.1\n  1234567    98304\nready   \n",
            data.display()
        ),
    )
    .expect("postmaster.pid");
    let st = data_dir_stack(dir, &data, "wakeTimeout: 1s").await;
    let addr = st.listener("db").await.expect("listener");
    let client = tokio::spawn(async move { echo_roundtrip(addr, &payload(1, 16)).await });
    wake_fails_saying(
        &st,
        "db",
        "postmaster.pid: it was written by a server that started at 1000000000",
    )
    .await;
    client.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_data_dir_that_is_not_there_fails_the_wake_at_once() {
    // No later try can read a file in a directory that does not exist: the wake ends at
    // the first try, not at its timeout (30 s here, the wait's bound too), with the
    // reason.
    let dir = Stack::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-data");
    let st = data_dir_stack(dir, &missing, "wakeTimeout: 30s").await;
    let addr = st.listener("db").await.expect("listener");
    let client = tokio::spawn(async move { echo_roundtrip(addr, &payload(2, 16)).await });
    wake_fails_saying(&st, "db", "its ready check cannot pass: cannot read").await;
    let logs = st.controller.log_tail(200);
    assert!(
        logs.contains("dataDir is not a directory"),
        "the error says what is wrong with dataDir:\n{logs}"
    );
    // The client is still held, so the wake is tried again, each time later: the
    // fourth failure comes no sooner than 0.1 + 0.2 + 0.4 s after the first, less the
    // time this test took to see the first (retried every tick, as before the backoff,
    // the three took about 0.2 s).
    let first = std::time::Instant::now();
    let failed = "zenvoy_wake_outcomes_total{service=\"db\",outcome=\"failed\"}";
    wait::until("three more failed wakes", BOUND, || async {
        Ok((st.controller_metric(failed).await? >= 4.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let took = first.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "three retries in {took:?}: not backing off"
    );
    client.abort();
}

/// An echo service, `db`, whose ready check is the `postgres` check reading `data`.
async fn data_dir_stack(dir: tempfile::TempDir, data: &std::path::Path, extra: &str) -> Stack {
    let db = ServiceSpec::echo("db", dir.path())
        .expect("spec")
        .with(&format!(
            "ready: {{postgres: {{dataDir: {:?}}}, interval: 20ms}}",
            data.display().to_string()
        ))
        .with(extra);
    Stack::start(
        dir,
        Options {
            services: vec![db],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_process_gets_its_env_cwd_log_and_stop_signal() {
    let dir = Stack::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let log = dir.path().join("logs/svc.log");
    let mut svc = ServiceSpec::echo("svc", dir.path()).expect("spec");
    // A shell that says what it got and how it was stopped, around the echo server (a
    // background job of a non-interactive shell ignores SIGINT: the trap stops it).
    let quoted: Vec<String> = svc.command.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "trap 'echo stopped by INT; kill $p; exit 0' INT; echo \"MODE=$MODE in $(pwd)\"; \
         {} & p=$!; wait $p",
        quoted.join(" ")
    );
    svc.command = vec!["sh".into(), "-c".into(), script];
    let svc = svc
        .with("env: {MODE: quiet}")
        .with(&format!("cwd: {}", work.display()))
        .with(&format!("log: {}", log.display()))
        .with("stopSignal: SIGINT")
        .with("stopGrace: 10s")
        .with("idleTimeout: 1s");
    let st = Stack::start(
        dir,
        Options {
            services: vec![svc],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let addr = st.listener("svc").await.expect("listener");
    echo_roundtrip(addr, b"hello")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    st.wait_parked("svc", BOUND).await.expect("parks when idle");
    let text = wait::until("the log to say how it stopped", BOUND, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(text.contains("stopped by INT").then_some(text))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert!(
        text.contains(&format!("MODE=quiet in {}", work.display())),
        "env and cwd: {text}"
    );
    assert!(text.contains("zenvoy-echo listening"), "stderr too: {text}");
    assert!(text.contains("--- zenvoy: starting"), "{text}");
}
