//! The holder's bounds, with the real binaries: limits refuse at once and keep the held,
//! holdTimeout closes, a client that leaves is let go, malformed or slow PROXY headers are
//! refused with their reason and block no one, a gibibyte each way is relayed byte-exact
//! with half-close, and SIGTERM lets relays in progress finish before the holder exits.
//!
//! The tests speak PROXY v2 to the holder directly, as Envoy would; Envoy runs in the
//! stack but is not on the path. The controller still wakes services on the holder's
//! pending-count pushes and publishes their endpoints over ADS.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, RwLock};
use tokio::time::Instant;
use zenvoy_e2e::holder_client::{self, closed_within, connect, is_open, pattern_stream, Pattern};
use zenvoy_e2e::stack::{Options, ServiceSpec, Stack};
use zenvoy_holder::proxy_header::{self, PREFIX_LEN, TLV_SERVICE};
use zenvoy_test_support::{http_get, metric_value, wait};

const BOUND: Duration = Duration::from_secs(10);
/// "At once": far below every timeout in play (the default holdTimeout is 30 s), far above
/// a loopback round trip.
const AT_ONCE: Duration = Duration::from_secs(2);

/// The relay tests keep both cores busy; the tests that time the holder's timeouts must
/// not share the machine with them. Relay tests lock this for writing, the others for
/// reading.
static CPU: RwLock<()> = RwLock::const_new(());

/// A service the controller starts on demand but that never listens: its connections
/// stay held.
fn never(name: &str, dir: &Path) -> anyhow::Result<ServiceSpec> {
    let mut spec = ServiceSpec::echo(name, dir)?;
    spec.command = vec!["sleep".into(), "600".into()];
    Ok(spec)
}

/// An echo service that stays up for the whole test: connections relayed by the holder
/// bypass Envoy, whose stats then show no activity, and a short idleTimeout would park the
/// service mid-relay.
fn echo(dir: &Path) -> anyhow::Result<ServiceSpec> {
    Ok(ServiceSpec::echo("echo", dir)?.with("idleTimeout: 10m"))
}

async fn start(
    services: impl FnOnce(&Path) -> anyhow::Result<Vec<ServiceSpec>>,
    holder_args: &[&str],
) -> Stack {
    let dir = Stack::tempdir().expect("tempdir");
    let services = services(dir.path()).expect("service specs");
    Stack::start(
        dir,
        Options {
            services,
            holder_args: holder_args.iter().map(|a| a.to_string()).collect(),
            ..Options::default()
        },
    )
    .await
    .expect("stack starts")
}

fn pending(service: &str) -> String {
    format!("zenvoy_holder_pending{{service=\"{service}\"}}")
}

fn refused(reason: &str) -> String {
    format!("zenvoy_holder_refused_total{{reason=\"{reason}\"}}")
}

fn held(outcome: &str) -> String {
    format!("zenvoy_holder_held_seconds_count{{outcome=\"{outcome}\"}}")
}

fn relay_bytes(direction: &str) -> String {
    format!("zenvoy_holder_relay_bytes_total{{direction=\"{direction}\"}}")
}

async fn metric(st: &Stack, series: &str) -> f64 {
    st.holder_metric(series)
        .await
        .unwrap_or_else(|e| panic!("{series}: {e}\n{}", st.logs()))
}

async fn wait_metric(st: &Stack, series: &str, want: f64) {
    let what = format!("{series} to be {want}");
    wait::until(&what, BOUND, || async {
        let v = st.holder_metric(series).await?;
        anyhow::ensure!(v == want, "it is {v}");
        Ok(Some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
}

async fn held_conn(st: &Stack, service: &str) -> TcpStream {
    connect(st.holder_listen, service)
        .await
        .unwrap_or_else(|e| panic!("connect for {service}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limits_connections_are_refused_at_once_and_the_held_stay() {
    let _cpu = CPU.read().await;
    let st = start(
        // maxPending per service comes from the controller's config (it overrides the
        // holder's --max-pending); the total is the holder's own limit.
        |d| {
            Ok(vec![
                never("a", d)?.with("maxPending: 3"),
                never("b", d)?.with("maxPending: 3"),
            ])
        },
        &["--max-pending-total", "5"],
    )
    .await;

    // Per service: three held, the fourth closed at once.
    let eds_acks = "zenvoy_xds_push_ack_seconds_count{type=\"eds\"}";
    let acks_before = st
        .controller_metric(eds_acks)
        .await
        .expect("controller metrics");
    let mut a = Vec::new();
    for _ in 0..3 {
        a.push(held_conn(&st, "a").await);
    }
    wait_metric(&st, &pending("a"), 3.0).await;
    // a's limit reaches the holder in a's first assignment, asked for on its first
    // connection: the fourth is refused only once the holder has ACKed it.
    wait::until("the holder to ACK a's assignment", BOUND, || async {
        Ok((st.controller_metric(eds_acks).await? > acks_before).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    let mut fourth = held_conn(&st, "a").await;
    closed_within(&mut fourth, AT_ONCE)
        .await
        .unwrap_or_else(|e| panic!("a's fourth connection: {e}\n{}", st.logs()));
    // Counted before the close, so already visible.
    assert_eq!(metric(&st, &refused("max_pending")).await, 1.0);
    assert_eq!(metric(&st, &held("rejected")).await, 1.0);
    assert_eq!(metric(&st, &pending("a")).await, 3.0);
    assert!(a.iter().all(is_open), "a's three held are still open");

    // In total: a holds 3, b gets 2 (5 in all), and b's third is over the total only.
    let mut b = Vec::new();
    for _ in 0..2 {
        b.push(held_conn(&st, "b").await);
    }
    wait_metric(&st, &pending("b"), 2.0).await;
    let mut sixth = held_conn(&st, "b").await;
    closed_within(&mut sixth, AT_ONCE)
        .await
        .unwrap_or_else(|e| panic!("the sixth connection: {e}\n{}", st.logs()));
    assert_eq!(metric(&st, &refused("max_pending_total")).await, 1.0);
    assert_eq!(metric(&st, &refused("max_pending")).await, 1.0);
    assert_eq!(metric(&st, &pending("a")).await, 3.0);
    assert_eq!(metric(&st, &pending("b")).await, 2.0);
    assert!(
        a.iter().chain(&b).all(is_open),
        "the five held are still open"
    );

    // The limits count connections held now: one leaving makes room for another.
    drop(a.pop());
    wait_metric(&st, &pending("a"), 2.0).await;
    let again = held_conn(&st, "b").await;
    wait_metric(&st, &pending("b"), 3.0).await;
    assert!(is_open(&again));
    assert_eq!(metric(&st, &refused("max_pending_total")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_client_is_closed_after_the_hold_timeout() {
    let _cpu = CPU.read().await;
    // holdTimeout comes from the controller's config (it overrides --hold-timeout).
    let st = start(
        |d| Ok(vec![never("never", d)?.with("holdTimeout: 1s")]),
        &[],
    )
    .await;
    let sent = Instant::now();
    let mut c = held_conn(&st, "never").await;
    closed_within(&mut c, BOUND)
        .await
        .unwrap_or_else(|e| panic!("held connection: {e}\n{}", st.logs()));
    let held_for = sent.elapsed();
    assert!(
        held_for >= Duration::from_secs(1),
        "closed after {held_for:?}, before the 1s holdTimeout"
    );
    assert_eq!(metric(&st, &held("timeout")).await, 1.0);
    let sum = metric(&st, "zenvoy_holder_held_seconds_sum{outcome=\"timeout\"}").await;
    assert!(sum >= 1.0, "held {sum}s by the holder's own count");
    assert_eq!(metric(&st, &pending("never")).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_is_let_go_and_a_half_closed_one_is_relayed() {
    let _cpu = CPU.read().await;
    let mut gate = None;
    let st = start(
        |d| {
            let (spec, g) = ServiceSpec::gated_echo("echo", d)?;
            gate = Some(g);
            Ok(vec![never("never", d)?, spec.with("idleTimeout: 10m")])
        },
        &[],
    )
    .await;
    let gate = gate.expect("the echo's gate");

    // Held, then gone: out of the queue long before the 30 s holdTimeout.
    let c = held_conn(&st, "never").await;
    wait_metric(&st, &pending("never"), 1.0).await;
    let left = Instant::now();
    drop(c);
    wait_metric(&st, &pending("never"), 0.0).await;
    let took = left.elapsed();
    assert!(took < AT_ONCE, "left the queue {took:?} after the client");
    assert_eq!(metric(&st, &held("client_closed")).await, 1.0);
    assert_eq!(metric(&st, &held("timeout")).await, 0.0);

    // A request and a FIN sent while held (the echo waits at its gate until they are):
    // the FIN must not read as "client gone".
    let mut request = vec![0u8; 16 * 1024];
    Pattern::new(3).fill(&mut request);
    let mut c = held_conn(&st, "echo").await;
    c.write_all(&request).await.expect("write request");
    c.shutdown().await.expect("half-close");
    wait_metric(&st, &pending("echo"), 1.0).await;
    gate.open().expect("open the echo's gate");
    let mut echoed = Vec::new();
    tokio::time::timeout(BOUND, c.read_to_end(&mut echoed))
        .await
        .unwrap_or_else(|_| panic!("no EOF within {BOUND:?}\n{}", st.logs()))
        .unwrap_or_else(|e| panic!("echo: {e}\n{}", st.logs()));
    assert!(echoed == request, "the whole request came back, then EOF");
    assert_eq!(
        metric(&st, "zenvoy_holder_relayed_total{service=\"echo\"}").await,
        1.0
    );
    assert_eq!(metric(&st, &held("relayed")).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_are_refused_with_their_reason_and_slow_ones_block_no_one() {
    let _cpu = CPU.read().await;
    let st = start(
        |d| Ok(vec![never("never", d)?, echo(d)?]),
        &["--header-timeout", "3s"],
    )
    .await;
    let h = st.holder_listen;
    let good = holder_client::header("echo").expect("header");
    let with = |tlvs: &[(u8, &[u8])]| {
        let addr = "127.0.0.1:1".parse().expect("addr");
        proxy_header::encode(addr, addr, tlvs).expect("encode")
    };
    let edit = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    // (reason, bytes sent, then half-close)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("bad_signature", edit(0, b"X"), false),
        ("bad_version", edit(12, &[0x11]), false),
        // Refused from the prefix alone; the payload is never read.
        (
            "oversized",
            edit(14, &1025u16.to_be_bytes())[..PREFIX_LEN].to_vec(),
            false,
        ),
        ("missing_service", with(&[(0xE1, b"echo")]), false),
        ("bad_service", with(&[(TLV_SERVICE, b"no spaces")]), false),
        // Closed inside the fixed part, then inside the TLVs.
        ("truncated", good[..10].to_vec(), true),
        ("truncated", good[..good.len() - 2].to_vec(), true),
    ];
    for (reason, bytes, half_close) in cases {
        let before = metric(&st, &refused(reason)).await;
        let mut c = TcpStream::connect(h).await.expect("connect");
        c.write_all(&bytes).await.expect("write");
        if half_close {
            c.shutdown().await.expect("half-close");
        }
        closed_within(&mut c, AT_ONCE)
            .await
            .unwrap_or_else(|e| panic!("{reason}: {e}\n{}", st.logs()));
        assert_eq!(
            metric(&st, &refused(reason)).await,
            before + 1.0,
            "counted as {reason}"
        );
    }

    // A slow header: 5 bytes, then nothing. It gets 3 s (long enough for the scrape below
    // on a loaded machine)...
    let slow_start = Instant::now();
    let mut slow = TcpStream::connect(h).await.expect("connect");
    slow.write_all(&good[..5]).await.expect("write");
    // ...and meanwhile others are served: one valid header is admitted while the slow one
    // is still pending (one scrape shows both), another is relayed end to end.
    let _held = held_conn(&st, "never").await;
    let url = format!("http://{}/metrics", st.holder_admin);
    let slow_refused_then = wait::until(
        "a connection held while the slow header is pending",
        BOUND,
        || async {
            let page = http_get(&url).await?;
            let held_now = metric_value(&page, &pending("never")) == Some(1.0);
            Ok(held_now.then(|| metric_value(&page, &refused("slow_header")).unwrap_or(0.0)))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert_eq!(
        slow_refused_then, 0.0,
        "a valid header was admitted only after the slow one was refused"
    );
    let served = held_conn(&st, "echo").await;
    tokio::time::timeout(BOUND, holder_client::echo_pattern(served, 4, 64 * 1024))
        .await
        .unwrap_or_else(|_| panic!("no full echo within {BOUND:?}\n{}", st.logs()))
        .unwrap_or_else(|e| panic!("echo: {e}\n{}", st.logs()));

    closed_within(&mut slow, BOUND)
        .await
        .unwrap_or_else(|e| panic!("slow header: {e}\n{}", st.logs()));
    let took = slow_start.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "slow header closed after {took:?}, before the 3s header timeout"
    );
    assert_eq!(metric(&st, &refused("slow_header")).await, 1.0);
}

/// The second way in: a port of the service's own, for a proxy that cannot send a PROXY v2
/// TLV. No header; the first byte is the client's, and it waits in the kernel until the
/// relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_service_port_holds_without_a_header_and_relays_byte_exact() {
    const LEN: u64 = 1 << 20;
    let _cpu = CPU.read().await;
    let st = start(
        |d| Ok(vec![echo(d)?, never("other", d)?]),
        &[
            "--service-port",
            "echo=127.0.0.1:0",
            "--service-port",
            "other=127.0.0.1:0",
        ],
    )
    .await;
    let port = st
        .holder_service_port("echo")
        .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert!(
        st.service("echo").running_pid().is_none(),
        "echo must start parked"
    );
    // A connection on the other service's port is held for it, not for echo.
    let other = TcpStream::connect(
        st.holder_service_port("other")
            .unwrap_or_else(|e| panic!("{e}\n{}", st.logs())),
    )
    .await
    .expect("connect to other's port");
    wait_metric(&st, &pending("other"), 1.0).await;

    let c = TcpStream::connect(port)
        .await
        .expect("connect to echo's port");
    tokio::time::timeout(BOUND, holder_client::echo_pattern(c, 6, LEN))
        .await
        .unwrap_or_else(|_| panic!("no full echo within {BOUND:?}\n{}", st.logs()))
        .unwrap_or_else(|e| panic!("echo: {e}\n{}", st.logs()));
    assert_eq!(
        metric(&st, "zenvoy_holder_relayed_total{service=\"echo\"}").await,
        1.0
    );
    wait_metric(&st, &relay_bytes("client_to_upstream"), LEN as f64).await;
    assert!(
        is_open(&other),
        "the other service's connection is still held"
    );
    assert_eq!(metric(&st, &pending("other")).await, 1.0);
}

/// Out of file descriptors is back-pressure, not loss. The holder runs with 96 of them:
/// enough to hold 40 clients, not to relay them all at once (each relay takes five more:
/// the upstream socket and two pipes). Held connections whose dial or pipes fail for
/// lack of descriptors stay held and are relayed as earlier relays end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_held_connections_wait_and_are_all_relayed() {
    const CONNS: usize = 40;
    const LEN: u64 = 64 * 1024;
    let _cpu = CPU.read().await;
    let dir = Stack::tempdir().expect("tempdir");
    let (echo, gate) = ServiceSpec::gated_echo("echo", dir.path()).expect("gated echo");
    let st = Stack::start(
        dir,
        Options {
            services: vec![echo.with("idleTimeout: 10m")],
            holder_nofile: Some(96),
            ..Options::default()
        },
    )
    .await
    .expect("stack starts");
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(held_conn(&st, "echo").await);
    }
    wait_metric(&st, &pending("echo"), CONNS as f64).await;
    gate.open().expect("open the gate");
    let echoes = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| tokio::spawn(holder_client::echo_pattern(c, 100 + i as u64, LEN)))
        .collect::<Vec<_>>();
    for (i, e) in echoes.into_iter().enumerate() {
        tokio::time::timeout(BOUND, e)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "connection {i}: no full echo within {BOUND:?}\n{}",
                    st.logs()
                )
            })
            .expect("echo task")
            .unwrap_or_else(|e| panic!("connection {i}: {e}\n{}", st.logs()));
    }
    assert_eq!(
        metric(&st, "zenvoy_holder_relayed_total{service=\"echo\"}").await,
        CONNS as f64
    );
    assert_eq!(metric(&st, &held("dial_failed")).await, 0.0);
    let waits = metric(&st, "zenvoy_holder_fd_waits_total").await;
    assert!(
        waits > 0.0,
        "the limit never bit (no fd waits): this test proves nothing\n{}",
        st.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_each_way_is_relayed_byte_exact_with_half_close() {
    const GIB: u64 = 1 << 30;
    let _cpu = CPU.write().await;
    let st = start(|d| Ok(vec![echo(d)?]), &[]).await;
    let c = held_conn(&st, "echo").await;
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(60),
        holder_client::echo_pattern(c, 5, GIB),
    )
    .await
    .unwrap_or_else(|_| panic!("no full echo within 60s\n{}", st.logs()))
    .unwrap_or_else(|e| panic!("echo: {e}\n{}", st.logs()));
    eprintln!("1 GiB each way in {:?}", started.elapsed());
    // Counted when both directions are done, just after the client's EOF.
    wait_metric(&st, &relay_bytes("client_to_upstream"), GIB as f64).await;
    wait_metric(&st, &relay_bytes("upstream_to_client"), GIB as f64).await;
    assert_eq!(
        metric(&st, "zenvoy_holder_relayed_total{service=\"echo\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_relays_in_progress_finish_and_then_the_holder_exits() {
    const CONNS: usize = 8;
    const LEN: u64 = 64 << 20;
    const HALF: u64 = LEN / 2;
    const DRAIN: Duration = Duration::from_secs(60);
    let _cpu = CPU.write().await;
    let mut st = start(|d| Ok(vec![echo(d)?]), &["--drain-timeout", "60s"]).await;

    // Each connection sends half its data, says so, and waits for the go; its reader keeps
    // checking the echo all along. At SIGTERM every relay is mid-transfer.
    let (half_tx, mut half_rx) = mpsc::channel::<()>(CONNS);
    let (go_tx, go_rx) = watch::channel(false);
    let mut relays = Vec::new();
    for i in 0..CONNS {
        let (mut w, mut r) = pattern_stream(held_conn(&st, "echo").await, 100 + i as u64);
        let (half, mut go) = (half_tx.clone(), go_rx.clone());
        relays.push(tokio::spawn(async move {
            let write = async {
                w.write(HALF).await?;
                half.send(()).await?;
                go.wait_for(|go| *go).await?;
                w.write(LEN - HALF).await?;
                w.finish().await?;
                anyhow::Ok(())
            };
            let (_, got) = tokio::try_join!(write, r.read_to_end())?;
            anyhow::ensure!(got == LEN, "echo was {got} bytes, sent {LEN}");
            anyhow::Ok(())
        }));
    }
    drop(half_tx);
    for n in 0..CONNS {
        let r = tokio::time::timeout(BOUND, half_rx.recv()).await;
        assert!(
            matches!(r, Ok(Some(()))),
            "only {n} of {CONNS} relays got half way\n{}",
            st.logs()
        );
    }

    let pid = Pid::from_raw(i32::try_from(st.holder.pid()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM the holder");
    let h = st.holder_listen;
    wait::until("the holder to refuse new connections", BOUND, || async {
        match TcpStream::connect(h).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Some(())),
            Err(e) => Err(e.into()),
            Ok(_) => Ok(None),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", st.logs()));
    assert_eq!(
        st.holder.exited(),
        None,
        "the holder waits for its relays\n{}",
        st.logs()
    );

    go_tx.send(true).expect("relays listening");
    for (i, relay) in relays.into_iter().enumerate() {
        tokio::time::timeout(BOUND * 3, relay)
            .await
            .unwrap_or_else(|_| panic!("relay {i} not done\n{}", st.logs()))
            .expect("relay task")
            .unwrap_or_else(|e| panic!("relay {i}: {e}\n{}", st.logs()));
    }
    // On its own: once the relays are done, not when the 60 s grace runs out.
    let status = wait::until("the holder to exit", BOUND, || {
        let exited = st.holder.exited();
        async move { Ok(exited) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e} (drain grace {DRAIN:?})\n{}", st.logs()));
    assert_eq!(status, "exit status: 0");
}

/// SIGCONT on drop: a stopped controller is resumed however the test ends.
struct Stopped(Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// A service whose readiness is its port accepting (a `tcp` check, a fixed address): the
/// holder watches the port itself and relays a held connection the moment a listener
/// appears there. The controller is stopped (SIGSTOP) before the upstream listens, so
/// nothing but the holder can have relayed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_connection_is_relayed_when_a_tcp_ready_upstream_starts_accepting() {
    let _cpu = CPU.read().await;
    let mut upstream = None;
    let st = start(
        |d| {
            let spec = never("slow", d)?;
            upstream = Some(spec.upstream);
            Ok(vec![spec])
        },
        &[],
    )
    .await;
    let upstream = upstream.expect("the service's upstream");
    let mut client = held_conn(&st, "slow").await;
    wait_metric(&st, &pending("slow"), 1.0).await;
    // The holder has the service's policy with its address, and saw the port closed.
    wait_metric(&st, "zenvoy_holder_probes", 1.0).await;

    let pid = Pid::from_raw(i32::try_from(st.controller.pid()).expect("a pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP the controller");
    let _resume = Stopped(pid);
    let listener = tokio::net::TcpListener::bind(upstream)
        .await
        .expect("the upstream listens");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    client.write_all(b"ping\n").await.expect("write");
    let mut got = [0u8; 5];
    tokio::time::timeout(BOUND, client.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("no echo within {BOUND:?}: the holder did not relay"))
        .expect("read");
    assert_eq!(&got, b"ping\n");
    // Counted by the probe's thread after it released the queue: awaited, not read.
    wait_metric(&st, "zenvoy_holder_self_dials_total", 1.0).await;
}
