//! The in-process controller (the controller crate's own xDS cache and ADS server, which
//! publishes an assignment whenever the bench wants a relay) and the holder process under
//! test.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use zenvoy_controller::telemetry::Metrics;
use zenvoy_controller::xds::resources::{any, load_assignment, Endpoints, ENDPOINT_TYPE};
use zenvoy_controller::xds::{AdsServer, AdsService, Cache};
use zenvoy_test_support::bin;
use zenvoy_test_support::process::Proc;

/// The controller's real ADS server over tonic on 127.0.0.1:0, TCP_NODELAY on accepted
/// connections as `zenvoy_controller::run` does. Stops when dropped.
pub(crate) struct Controller {
    pub(crate) cache: Arc<Cache>,
    pub(crate) addr: SocketAddr,
    pub(crate) _stop: tokio::sync::oneshot::Sender<()>,
}

pub(crate) async fn start_controller() -> anyhow::Result<Controller> {
    let cache = Arc::new(Cache::default());
    let metrics = Arc::new(Metrics::register(&mut Registry::default()));
    let ads = AdsService::new(AdsServer::new(cache.clone(), metrics), 8 << 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        std::io::Result::Ok(s)
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    Ok(Controller {
        cache,
        addr,
        _stop: stop,
    })
}

/// Publish `service`'s assignment: awake, at `upstream`.
pub(crate) fn publish(cache: &Cache, service: &str, upstream: SocketAddr) {
    cache.set(
        ENDPOINT_TYPE,
        service,
        any(load_assignment(
            service,
            &Endpoints::Upstream(vec![upstream]),
        )),
    );
}

pub(crate) struct Holder {
    pub(crate) proc: Proc,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) service_ports: HashMap<String, SocketAddr>,
    pub(crate) _dir: tempfile::TempDir,
}

/// Start the release `zenvoy-holder` (no MetricsService push: nothing here ingests it)
/// and read its bound addresses from `--address-file`.
pub(crate) async fn start_holder(
    controller: SocketAddr,
    extra: &[String],
) -> anyhow::Result<Holder> {
    let dir = tempfile::tempdir()?;
    let addr_file = dir.path().join("holder.json");
    let mut cmd = std::process::Command::new(bin("zenvoy-holder")?);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--no-push",
    ])
    .arg("--controller")
    .arg(format!("http://{controller}"))
    .arg("--address-file")
    .arg(&addr_file)
    .args(extra)
    .env("RUST_LOG", "warn")
    .env("NO_COLOR", "1");
    let mut proc = Proc::spawn("holder", cmd, Some(&dir.path().join("holder.log")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let v: serde_json::Value = loop {
        if let Some(v) = std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
        {
            break v;
        }
        if let Some(status) = proc.exited() {
            anyhow::bail!("the holder exited ({status}):\n{}", proc.log_tail(20));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for the holder's address file\n{}",
            proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let parse = |v: &serde_json::Value, what: &str| -> anyhow::Result<SocketAddr> {
        v.as_str()
            .with_context(|| format!("{what} missing in the holder's address file: {v}"))?
            .parse()
            .with_context(|| format!("{what} in the holder's address file"))
    };
    let mut service_ports = HashMap::new();
    if let Some(ports) = v["service_ports"].as_object() {
        for (name, addr) in ports {
            service_ports.insert(name.clone(), parse(addr, "service_ports")?);
        }
    }
    Ok(Holder {
        listen: parse(&v["listen"], "listen")?,
        admin: parse(&v["admin"], "admin")?,
        service_ports,
        proc,
        _dir: dir,
    })
}

/// Whether this `zenvoy-holder` has per-service ports (`--service-port NAME=ADDR`).
pub(crate) fn holder_has_service_ports() -> anyhow::Result<bool> {
    let out = std::process::Command::new(bin("zenvoy-holder")?)
        .arg("--help")
        .output()
        .context("running zenvoy-holder --help")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--service-port"))
}

/// The machine's TcpExt ListenOverflows counter (/proc/net/netstat): connections whose
/// handshake completed while a listener's accept queue was full; the client's SYN is
/// dropped and retransmitted a second later.
pub(crate) fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The holder's warnings and errors, counted by message (timestamps dropped).
pub(crate) fn log_summary(holder: &Holder) -> String {
    let Some(path) = &holder.proc.log else {
        return String::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for l in text.lines() {
        if l.contains(" WARN ") || l.contains(" ERROR ") {
            let msg = l.split_once(": ").map_or(l, |(_, m)| m);
            *counts.entry(msg).or_default() += 1;
        }
    }
    let mut by_count: Vec<_> = counts.into_iter().collect();
    by_count.sort_by_key(|c| std::cmp::Reverse(c.1));
    by_count
        .iter()
        .take(5)
        .map(|(m, n)| format!("    {n} x {m}\n"))
        .collect()
}
