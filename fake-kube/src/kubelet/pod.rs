//! One pod's process: started after the start delay, probed, restarted when it exits,
//! stopped with SIGTERM and then SIGKILL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};

use super::{PodCommand, PodEvent, PodState, EXTRA_ADDRS_ENV};

pub(super) struct PodRun {
    pub(super) uid: String,
    pub(super) addr: SocketAddr,
    /// The container's further ports, given to the process as [`EXTRA_ADDRS_ENV`].
    pub(super) extra: Vec<SocketAddr>,
    pub(super) command: PodCommand,
    pub(super) log: Option<PathBuf>,
    pub(super) start_delay: Duration,
    pub(super) grace: Duration,
    pub(super) probe_timeout: Duration,
}

enum Probe {
    Ready,
    Exited,
    Stop,
    GaveUp,
}

/// One pod's life: wait out the start delay, run the process, probe it, restart it when
/// it exits, stop it when told (or when the kubelet goes away).
pub(super) async fn run_pod(
    p: PodRun,
    mut stop: oneshot::Receiver<()>,
    events: mpsc::Sender<PodEvent>,
) {
    let report = |state: PodState| {
        let events = events.clone();
        let uid = p.uid.clone();
        async move {
            let _ = events.send(PodEvent { uid, state }).await;
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(p.start_delay) => {}
        _ = &mut stop => return report(PodState::Gone).await,
    }
    // Between restarts, as a kubelet's CrashLoopBackOff (never reset, as ours need not be).
    let mut backoff = zenvoy_base::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut child = match spawn(&p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fake kubelet: starting pod at {}: {e}", p.addr);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.failed()) => {}
                    _ = &mut stop => return report(PodState::Gone).await,
                }
                continue;
            }
        };
        report(PodState::Started).await;
        let exited = match probe(&p, &mut child, &mut stop).await {
            Probe::Stop => {
                terminate(&mut child, p.grace).await;
                return report(PodState::Gone).await;
            }
            Probe::Exited => true,
            Probe::Ready => {
                report(PodState::Ready).await;
                false
            }
            Probe::GaveUp => false,
        };
        if !exited {
            tokio::select! {
                _ = child.wait() => {}
                _ = &mut stop => {
                    terminate(&mut child, p.grace).await;
                    return report(PodState::Gone).await;
                }
            }
        }
        report(PodState::Exited).await;
        tokio::select! {
            _ = tokio::time::sleep(backoff.failed()) => {}
            _ = &mut stop => return report(PodState::Gone).await,
        }
    }
}

fn spawn(p: &PodRun) -> std::io::Result<Child> {
    let mut cmd = tokio::process::Command::from((p.command)(p.addr));
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    if !p.extra.is_empty() {
        let addrs: Vec<String> = p.extra.iter().map(ToString::to_string).collect();
        cmd.env(EXTRA_ADDRS_ENV, addrs.join(","));
    }
    match &p.log {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    cmd.spawn()
}

/// TCP-connect to the pod every 20 ms until it accepts, its process exits, it is told to
/// stop, or `probe_timeout` passes. A pod without a port is ready once started.
async fn probe(p: &PodRun, child: &mut Child, stop: &mut oneshot::Receiver<()>) -> Probe {
    if p.addr.port() == 0 {
        return Probe::Ready;
    }
    let deadline = tokio::time::Instant::now() + p.probe_timeout;
    loop {
        tokio::select! {
            biased;
            _ = &mut *stop => return Probe::Stop,
            _ = child.wait() => return Probe::Exited,
            r = tokio::net::TcpStream::connect(p.addr) => {
                if r.is_ok() {
                    return Probe::Ready;
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Probe::GaveUp;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = &mut *stop => return Probe::Stop,
            _ = child.wait() => return Probe::Exited,
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}
