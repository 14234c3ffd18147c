//! Failures that used to lose a client or leave state behind, each through the real
//! binaries and a real Envoy: a burst past Envoy's default circuit breaker, an Envoy
//! gone silent without closing, a controller killed with SIGKILL, a holder stopped with
//! connections held, an upstream that flaps right after it looked ready.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zenvoy_e2e::echo::{echo_roundtrip, payload};
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_test_support::wait;

const BOUND: Duration = Duration::from_secs(30);

async fn start(dir: tempfile::TempDir, opts: Options) -> Stack {
    Stack::start(dir, opts).await.expect("stack starts")
}

fn alive(pid: i32) -> bool {
    // A zombie has exited too.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z")
}

/// Raise this process's soft open-file limit to its hard limit (Envoy, started after,
/// inherits it); returns the limit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    }
}

/// 1,500 clients connect at once to a parked service through Envoy's listener and each
/// sends 4 KiB before any reply. Envoy's default circuit breaker (1,024 connections per
/// cluster) used to cut 476 of them: the connections to the holder count too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_envoys_default_circuit_breaker_is_served_whole() {
    const CLIENTS: usize = 1500;
    let limit = raise_nofile();
    // Each client costs this process 1 descriptor, Envoy 2, the holder up to 5.
    if limit < 8 * CLIENTS as u64 {
        let msg = format!("open-file limit {limit} is too low for {CLIENTS} clients");
        assert!(
            std::env::var_os("ZENVOY_REQUIRE_PRIVILEGED").is_none(),
            "{msg}"
        );
        eprintln!("skipped: {msg}");
        return;
    }
    let dir = Stack::tempdir().expect("tempdir");
    let (echo, gate) = ServiceSpec::gated_echo("burst", dir.path()).expect("spec");
    let st = Stack::start(
        dir,
        Options {
            services: vec![echo.with("maxPending: 5000")],
            holder_args: vec!["--max-pending-total".into(), "20000".into()],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let addr = st.listener("burst").await.expect("listener");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let data = payload(i as u64, 4096);
            tokio::spawn(async move { echo_roundtrip(addr, &data).await })
        })
        .collect();
    // All of them held (the gate keeps the service from answering) before it wakes.
    let pending = "zenvoy_holder_pending{service=\"burst\"}";
    let held = wait::until("every client held", BOUND, || async {
        let n = st.holder_metric(pending).await.unwrap_or(0.0);
        Ok((n >= CLIENTS as f64).then_some(n))
    })
    .await;
    gate.open().expect("gate");
    let mut failed = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("client {i}: {e}")),
            Err(e) => failed.push(format!("client {i}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {CLIENTS} clients failed (held before the wake: {held:?}); first: {:?}\n{}",
        failed.len(),
        failed.first(),
        st.logs()
    );
}

/// An Envoy that stops without closing (SIGSTOP: the kernel keeps its sockets open) used
/// to keep its last open-connection count, and its service awake, forever. Now its
/// connection is pinged, closed when the pings go unanswered, and its stats expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_gone_silent_stops_keeping_its_service_awake() {
    let dir = Stack::tempdir().expect("tempdir");
    let echo = ServiceSpec::echo("quiet", dir.path())
        .expect("spec")
        .with("idleTimeout: 2s");
    let st = Stack::start(
        dir,
        Options {
            services: vec![echo],
            controller: vec!["peerTimeout: 6s".into()],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let addr = st.listener("quiet").await.expect("listener");
    // A session that stays open: the service must stay awake while Envoy reports it.
    let mut session = TcpStream::connect(addr).await.expect("connect");
    session.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(BOUND, session.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        st.service("quiet").running_pid().is_some(),
        "an open session keeps it awake\n{}",
        st.logs()
    );
    let envoy = Pid::from_raw(i32::try_from(st.envoy.proc.pid()).expect("pid"));
    kill(envoy, Signal::SIGSTOP).expect("SIGSTOP Envoy");
    // Pings every 2 s, unanswered for 2 s: the streams end; the idle timeout (2 s) runs.
    let parked = wait::until("the silent Envoy's service parked", BOUND, || async {
        Ok(st.service("quiet").running_pid().is_none().then_some(()))
    })
    .await;
    let _ = kill(envoy, Signal::SIGCONT);
    parked.unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    drop(session);
}

/// A controller killed with SIGKILL leaves its services running (as a Kubernetes
/// controller leaves its workloads). A restarted one used to take the orphan for a
/// process of its own that it never stopped, or start a second instance. Now it adopts
/// the orphan from its state file: the next client is served by the same process, and
/// the park stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_adopts_what_the_killed_one_left_running() {
    let dir = Stack::tempdir().expect("tempdir");
    let echo = ServiceSpec::echo("orphan", dir.path())
        .expect("spec")
        .with("idleTimeout: 3s");
    let mut st = start(
        dir,
        Options {
            services: vec![echo],
            ..Options::default()
        },
    )
    .await;
    let addr = st.listener("orphan").await.expect("listener");
    echo_roundtrip(addr, &payload(1, 1000))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let old = st.service("orphan").running_pid().expect("awake");
    st.restart_controller().await.expect("restart");
    assert!(alive(old), "a killed controller stops nothing");
    // The restarted controller adopts it: clients are served by that same process, and
    // no second instance is started.
    let addr = st.listener("orphan").await.expect("listener");
    for seed in 2..5 {
        echo_roundtrip(addr, &payload(seed, 1000))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
        assert_eq!(st.service("orphan").running_pid(), Some(old));
    }
    let adopted = st
        .controller_metric("zenvoy_service_state{service=\"orphan\",state=\"awake\"}")
        .await
        .expect("metrics");
    assert_eq!(adopted, 1.0, "awake after the restart\n{}", st.logs());
    // Idle: the park stops the adopted process.
    wait::until("the adopted process stopped by the park", BOUND, || async {
        Ok((!alive(old)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
}

/// SIGTERM to the holder while a connection is held: it stops accepting, but the held
/// connection stays and is relayed once its service wakes (within the drain bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_held_when_the_holder_is_stopped_is_still_relayed() {
    let dir = Stack::tempdir().expect("tempdir");
    let (echo, gate) = ServiceSpec::gated_echo("drain", dir.path()).expect("spec");
    let mut st = Stack::start(
        dir,
        Options {
            services: vec![echo],
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let addr = st.listener("drain").await.expect("listener");
    let data = payload(3, 64 * 1024);
    let client = tokio::spawn({
        let data = data.clone();
        async move { echo_roundtrip(addr, &data).await }
    });
    wait::until("the client held", BOUND, || async {
        let n = st
            .holder_metric("zenvoy_holder_pending{service=\"drain\"}")
            .await
            .unwrap_or(0.0);
        Ok((n >= 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let holder = Pid::from_raw(i32::try_from(st.holder.pid()).expect("pid"));
    kill(holder, Signal::SIGTERM).expect("SIGTERM holder");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        st.holder.exited().is_none(),
        "a holder with a held connection waits for it"
    );
    gate.open().expect("gate");
    client
        .await
        .expect("client task")
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    wait::until("the holder exited after its last relay", BOUND, || {
        let exited = st.holder.exited();
        async move { Ok(exited) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
}

/// An upstream that accepts the controller's readiness probe and then refuses for a
/// second: the holder used to make one dial pass and close the held client with most of
/// its hold left. It now dials again until the hold ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_connection_is_dialed_again_until_the_upstream_accepts() {
    let dir = Stack::tempdir().expect("tempdir");
    let mut echo = ServiceSpec::echo("flappy", dir.path()).expect("spec");
    echo.command
        .extend(["--pause-after-first".to_string(), "1s".to_string()]);
    // Ready once the server says it stopped listening: the probe's connection can be
    // completed by the kernel before the server accepts it, and a dial in that moment
    // would land in the backlog of the listener about to close (reset, not refused).
    let log = dir.path().join("flappy.log");
    let echo = echo.with(&format!("log: {}", log.display())).with(&format!(
        "ready: {{command: [sh, -c, \"grep -q 'not listening' '{}'\"], interval: 10ms}}",
        log.display()
    ));
    let st = start(
        dir,
        Options {
            services: vec![echo],
            ..Options::default()
        },
    )
    .await;
    let addr = st.listener("flappy").await.expect("listener");
    echo_roundtrip(addr, &payload(4, 10_000))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let redials = st
        .holder_metric("zenvoy_holder_redials_total")
        .await
        .expect("metrics");
    assert!(redials >= 1.0, "the first dial was refused: {redials}");
}
