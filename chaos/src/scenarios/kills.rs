//! 3: restarts and kills of the controller, an Envoy, the holder and the API server.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;
use zenvoy_e2e::kube_stack::{self, KubeOptions, KubeStack, OPT_IN};
use zenvoy_e2e::stack::{self, Options, ServiceSpec, Stack};
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, free_port, wait};

use super::{controller_is, gated_stack, held_and_waking, holder_at_least, pending, state};
use crate::client::{settle, wave, Clients};
use crate::report::{with_logs, Report};
use crate::{BOUND, HELD, WAVE};

/// 3a: the controller is killed (SIGKILL) while it wakes a service with clients held,
/// more clients in flight while it is down and after it is back. The restarted
/// controller adopts the process the killed one started (its state file) and finishes
/// the wake; every client must be served.
pub(crate) async fn controller_killed_mid_wake(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the stack");
    let (mut st, gate) = gated_stack("svc", &[]).await?;
    let addr = st.listener("svc").await?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 0, WAVE, HELD);
    rep.at("waiting for the first wave held and the wake under way");
    if let Err(e) = held_and_waking(&st, "svc", WAVE).await {
        rep.failed(&e, &st.logs());
    }
    // In flight while the controller dies and comes back.
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) and starting it again");
    let restarted = st.restart_controller().await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the three waves held");
    if let Err(e) = holder_at_least(&st, &pending("svc"), 3.0 * WAVE as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    gate.open()?;
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed while waking with {WAVE} held; {WAVE} in flight during the restart, {WAVE} after"
    ));
    Ok(())
}

/// 3b: the controller is killed while it parks a service (phase one: the holder
/// published, an idle sample awaited; a 2 s stats flush holds it there), with clients in
/// flight and more after its restart. Every client must be served.
pub(crate) async fn controller_killed_mid_park(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the stack");
    let dir = Stack::tempdir()?;
    let spec = ServiceSpec::echo("svc", dir.path())?
        .with("idleTimeout: 1s")
        .with("holdTimeout: 60s");
    let mut st = Stack::start(
        dir,
        Options {
            services: vec![spec],
            flush: Duration::from_secs(2),
            ..Options::default()
        },
    )
    .await?;
    let addr = st.listener("svc").await?;
    let mut clients = Clients::new();
    rep.at("waking the service");
    wave(&mut clients, addr, 0, 1, HELD);
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the park to begin");
    controller_is(&st, &state("svc", "parking"), 1.0, BOUND)
        .await
        .map_err(|e| with_logs(e, &st.logs()))?;
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) mid-park and starting it again");
    let restarted = st.restart_controller().await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed in phase one of the park with {WAVE} clients in flight; {WAVE} after the restart"
    ));
    Ok(())
}

/// A Kubernetes-mode stack (one controller) with Deployment `web` at 0 behind the
/// opted-in Service `web.default`; returns it and the Envoy listener for it.
async fn kube_with_web(opts: KubeOptions) -> anyhow::Result<(KubeStack, SocketAddr)> {
    let ks = KubeStack::start(opts, 1).await?;
    let port = free_port()?.port();
    ks.api.put(kube_stack::workload(
        "Deployment",
        "default",
        "web",
        0,
        port,
        &[],
    ))?;
    ks.api
        .put(kube_stack::service("default", "web", port, &OPT_IN))?;
    let addr = ks.listener("web.default").await?;
    Ok((ks, addr))
}

/// 3c: Kubernetes mode, the controller killed after it scaled the Deployment up and
/// before the pod is ready (the kubelet takes 4 s), clients held, in flight, and after.
pub(crate) async fn kube_controller_killed_mid_wake(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the Kubernetes stack");
    let opts = KubeOptions {
        start_delay: Duration::from_secs(4),
        defaults: vec!["idleTimeout: 3s".into(), "holdTimeout: 60s".into()],
        ..KubeOptions::default()
    };
    let (mut ks, addr) = kube_with_web(opts).await?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 0, WAVE, HELD);
    rep.at("waiting for the scale-up");
    if let Err(e) = ks
        .wait_replicas("Deployment", "default", "web", 1, BOUND)
        .await
    {
        rep.failed(&e, &ks.logs());
    }
    if ks.kubelet.running("default", "web") > 0 {
        rep.problem("the pod was already up at the kill: not mid-wake");
    }
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) mid-wake and starting it again");
    let restarted = ks.restart_controller(0).await;
    restarted.map_err(|e| with_logs(e, &ks.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed between the scale-up and the pod's readiness; /scale writes in all: {}",
        ks.scale_writes().len()
    ));
    Ok(())
}

/// 3d: Kubernetes mode, the controller killed in phase one of a park (a 2 s stats flush
/// holds it there), clients in flight and after its restart.
pub(crate) async fn kube_controller_killed_mid_park(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the Kubernetes stack");
    let opts = KubeOptions {
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 60s".into()],
        flush: Duration::from_secs(2),
        ..KubeOptions::default()
    };
    let (mut ks, addr) = kube_with_web(opts).await?;
    let mut clients = Clients::new();
    rep.at("waking the service");
    wave(&mut clients, addr, 0, 1, HELD);
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the park to begin");
    ks.controllers[0]
        .wait_metric(
            &state("web.default", "parking"),
            1.0,
            Duration::from_secs(40),
        )
        .await
        .map_err(|e| with_logs(e, &ks.logs()))?;
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("killing the controller (SIGKILL) mid-park and starting it again");
    let restarted = ks.restart_controller(0).await;
    restarted.map_err(|e| with_logs(e, &ks.logs()))?;
    wave(&mut clients, addr, 200, WAVE, HELD);
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "killed in phase one of the park with {WAVE} clients in flight; {WAVE} after the restart"
    ));
    Ok(())
}

/// 3e: one Envoy is killed (SIGKILL) and started again while a wake is under way, with
/// clients held through a second Envoy and more through the restarted one. Connections
/// through the killed Envoy end with its process, as any proxy's do; none are opened
/// there.
pub(crate) async fn envoy_restarted_mid_wake(rep: &mut Report) -> anyhow::Result<()> {
    rep.at("starting the stack and a second Envoy");
    let (mut st, gate) = gated_stack("svc", &[]).await?;
    let other = st.start_envoy("envoy-2").await?;
    let via_other = other.listener("svc").await?;
    let mut clients = Clients::new();
    wave(&mut clients, via_other, 0, WAVE, HELD);
    rep.at("waiting for envoy-2's clients held and the wake under way");
    if let Err(e) = held_and_waking(&st, "svc", WAVE).await {
        rep.failed(&e, &st.logs());
    }
    rep.at("killing envoy-1 (SIGKILL) and starting it again");
    let restarted = st.restart_envoy().await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    let via_new = st.listener("svc").await?;
    wave(&mut clients, via_new, 100, WAVE, HELD);
    rep.at("waiting for the restarted Envoy's clients held too");
    if let Err(e) = holder_at_least(&st, &pending("svc"), 2.0 * WAVE as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    gate.open()?;
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the restarted Envoy to get the woken endpoint");
    let upstream = st.service("svc").upstream;
    match st.wait_hosts("svc", &[upstream], BOUND).await {
        Ok(()) => {
            wave(&mut clients, via_new, 200, WAVE, HELD);
            settle(&mut clients, &mut rep.tally).await;
        }
        Err(e) => rep.failed(&e, &st.logs()),
    }
    rep.note(format!(
        "{WAVE} held via envoy-2 across the restart, {WAVE} via the restarted envoy-1 mid-wake, {WAVE} after; none opened on the killed Envoy (its connections die with it)"
    ));
    Ok(())
}

/// 3f: SIGTERM to the holder with clients held: it stops accepting, keeps what it
/// holds, relays it once the service is up, then exits. Clients after the wake go
/// straight to the service.
pub(crate) async fn holder_stopped_with_connections_held(rep: &mut Report) -> anyhow::Result<()> {
    const HELD_N: u64 = 50;
    rep.at("starting the stack");
    // Once this holder has exited there is none: a park would point Envoy at an address
    // nothing listens on. The service stays awake for the clients after the wake.
    let (mut st, gate) = gated_stack("svc", &["idleTimeout: 10m"]).await?;
    let addr = st.listener("svc").await?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 0, HELD_N, HELD);
    rep.at(format!("waiting for {HELD_N} clients held"));
    if let Err(e) = holder_at_least(&st, &pending("svc"), HELD_N as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    rep.at("stopping the holder (SIGTERM) with the clients held");
    kill(
        Pid::from_raw(i32::try_from(st.holder.pid())?),
        Signal::SIGTERM,
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(status) = st.holder.exited() {
        rep.problem(format!("the holder exited with connections held: {status}"));
    }
    gate.open()?;
    rep.at("waiting for the held clients' echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the holder to exit after its last relay");
    let exited = wait::until("the holder to exit after its last relay", BOUND, || {
        let exited = st.holder.exited();
        async move { Ok(exited) }
    })
    .await;
    match exited {
        Ok(status) => rep.note(format!(
            "{HELD_N} held through SIGTERM and relayed; the holder then exited ({status})"
        )),
        Err(e) => rep.failed(&e, &st.logs()),
    }
    rep.at("clients after the wake, straight to the service");
    let upstream = st.service("svc").upstream;
    match st.wait_hosts("svc", &[upstream], BOUND).await {
        Ok(()) => {
            wave(&mut clients, addr, 100, WAVE, HELD);
            settle(&mut clients, &mut rep.tally).await;
        }
        Err(e) => rep.failed(&e, &st.logs()),
    }
    Ok(())
}

/// 3g: SIGKILL to the holder with clients held. Their connections lived in that process:
/// they are lost by nature, counted as victims (reported, not failed on). A new holder
/// on the same address then holds the next clients, which must be served.
pub(crate) async fn holder_killed_with_connections_held(rep: &mut Report) -> anyhow::Result<()> {
    const DOOMED: u64 = 50;
    rep.at("starting the stack");
    let (mut st, gate) = gated_stack("svc", &[]).await?;
    let addr = st.listener("svc").await?;
    let mut doomed = Clients::new();
    wave(&mut doomed, addr, 0, DOOMED, HELD);
    rep.at(format!("waiting for {DOOMED} clients held"));
    if let Err(e) = holder_at_least(&st, &pending("svc"), DOOMED as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    rep.at("killing the holder (SIGKILL) with the clients held");
    st.holder.kill();
    settle(&mut doomed, &mut rep.victims).await;
    rep.at("starting a new holder on the same address");
    let restarted = restart_holder(&mut st).await;
    restarted.map_err(|e| with_logs(e, &st.logs()))?;
    let mut clients = Clients::new();
    wave(&mut clients, addr, 100, WAVE, HELD);
    rep.at("waiting for the new holder to hold the next clients");
    if let Err(e) = holder_at_least(&st, &pending("svc"), WAVE as f64, BOUND).await {
        rep.failed(&e, &st.logs());
    }
    gate.open()?;
    rep.at("waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "{} held in the killed holder: lost by nature (their sockets lived in that process, and SIGKILL lets it hand none over); {} clients of the restarted holder served",
        rep.victims.clients(),
        rep.tally.served
    ));
    Ok(())
}

/// Start a holder again on the stack's holder address, with the flags
/// [`Stack::start`] gives it (a node id the controller knows, a fresh admin port); the
/// old one must be gone. The stack's admin address follows the new one.
async fn restart_holder(st: &mut Stack) -> anyhow::Result<()> {
    let d = st.dir.path().to_path_buf();
    let address_path = d.join("holder-restarted.json");
    let mut cmd = Command::new(bin("zenvoy-holder")?);
    cmd.arg("--listen")
        .arg(st.holder_listen.to_string())
        .args(["--admin", "127.0.0.1:0", "--node-id", "holder-1"])
        .arg("--controller")
        .arg(format!("http://{}", st.grpc))
        .arg("--address-file")
        .arg(&address_path)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    let mut holder = Proc::spawn("holder", cmd, Some(&d.join("holder-restarted.log")))?;
    let h =
        stack::address_file("the new holder's address file", &address_path, &mut holder).await?;
    st.holder_admin = stack::addr(&h, "admin")?;
    st.holder_addresses = h;
    st.holder = holder;
    Ok(())
}

/// 3h: Kubernetes mode, the API server unreachable for 10 s from the moment a park
/// begins: the scale-down fails and is retried, clients arrive at once and 5 s in, and
/// must all be served once the API is back (within their 60 s holdTimeout). The Lease
/// lasts 15 s, the production default, so the outage is not also a change of leader.
pub(crate) async fn apiserver_down_during_a_park(rep: &mut Report) -> anyhow::Result<()> {
    const OUTAGE: Duration = Duration::from_secs(10);
    rep.at("starting the Kubernetes stack");
    let opts = KubeOptions {
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 60s".into()],
        flush: Duration::from_secs(2),
        lease_duration: Duration::from_secs(15),
        ..KubeOptions::default()
    };
    let (ks, addr) = kube_with_web(opts).await?;
    let mut clients = Clients::new();
    rep.at("waking the service");
    wave(&mut clients, addr, 0, 1, HELD);
    settle(&mut clients, &mut rep.tally).await;
    rep.at("waiting for the park to begin");
    ks.controllers[0]
        .wait_metric(
            &state("web.default", "parking"),
            1.0,
            Duration::from_secs(40),
        )
        .await
        .map_err(|e| with_logs(e, &ks.logs()))?;
    ks.api.set_available(false);
    let down = Instant::now();
    rep.at("API down: waiting for the scale-down to fail");
    let failed_scale_down = ks.controllers[0]
        .wait_metric(
            "zenvoy_kube_api_errors_total{op=\"scale_down\"}",
            1.0,
            OUTAGE / 2,
        )
        .await;
    rep.note(match failed_scale_down {
        Ok(()) => "the scale-down failed against the unreachable API and was retried",
        Err(_) => "no scale-down tried in the first 5 s of the outage (still in phase one)",
    });
    wave(&mut clients, addr, 100, WAVE, HELD);
    tokio::time::sleep_until(down + OUTAGE / 2).await;
    wave(&mut clients, addr, 200, WAVE, HELD);
    tokio::time::sleep_until(down + OUTAGE).await;
    ks.api.set_available(true);
    rep.at("API back: waiting for the echoes");
    settle(&mut clients, &mut rep.tally).await;
    rep.note(format!(
        "{WAVE} clients at the start of the outage, {WAVE} 5 s in; replicas now {:?}",
        ks.replicas("Deployment", "default", "web")
    ));
    Ok(())
}
