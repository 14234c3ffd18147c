//! Part B: detection latency, the first held connection to the scale call, with the
//! controller in-process (a backend that records its calls) and the real holder.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use zenvoy_controller::backend::{Backend, BackendError, BoxFuture};
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, free_port, monotonic_ns, wait};

use crate::controller::{config, name};
use crate::Args;

/// Records when it is asked to scale; never becomes ready.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    pub(crate) tx: mpsc::UnboundedSender<(String, u128)>,
}

impl Backend for Recorder {
    fn wake(
        &self,
        service: &str,
        _timeout: Duration,
        _scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>> {
        let _ = self.tx.send((service.to_string(), monotonic_ns()));
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

pub(crate) async fn part_b(args: &Args) -> anyhow::Result<()> {
    let n = args.wakes;
    let holder_addr = free_port()?;
    let yaml = config(n, holder_addr, ("127.0.0.1:9".parse()?, "true"), None);
    let cfg = zenvoy_core::config::Config::from_yaml(&yaml)?;
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let grpc_addr = grpc.local_addr()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(zenvoy_controller::run_with(
        cfg,
        Arc::new(Recorder { tx }),
        grpc,
        admin,
        async {
            let _ = stop_rx.await;
        },
    ));
    let dir = tempfile::tempdir()?;
    let mut cmd = std::process::Command::new(bin("zenvoy-holder")?);
    cmd.args([
        "--listen",
        &holder_addr.to_string(),
        "--admin",
        "127.0.0.1:0",
        "--controller",
    ])
    .arg(format!("http://{grpc_addr}"))
    .env("RUST_LOG", "warn");
    let holder = Proc::spawn("holder", cmd, Some(&dir.path().join("holder.log")))?;
    wait::until("the holder to listen", Duration::from_secs(30), || async {
        Ok(TcpStream::connect(holder_addr).await.ok().map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // its push stream is open
    let conns = Arc::new(Mutex::new(Vec::new()));
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let svc = name(i);
        let header = zenvoy_holder::proxy_header::encode(
            "127.0.0.1:1".parse()?,
            holder_addr,
            &[(zenvoy_holder::proxy_header::TLV_SERVICE, svc.as_bytes())],
        )?;
        let t0 = monotonic_ns();
        let mut s = TcpStream::connect(holder_addr).await?;
        s.write_all(&header).await?;
        let (woken, t1) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("no scale call within 10 s")?
            .context("controller stopped")?;
        anyhow::ensure!(woken == svc, "expected a wake of {svc}, got {woken}");
        lat.push(t1.saturating_sub(t0) as f64 / 1e6);
        conns.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(s);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((p / 100.0) * (lat.len() - 1) as f64).round() as usize];
    println!(
        "[B] detection: first held connection -> scale call issued, {n} wakes: p50={:.3} ms p99={:.3} ms max={:.3} ms",
        pct(50.0),
        pct(99.0),
        lat[lat.len() - 1]
    );
    // The controller ends its ADS and metrics streams on shutdown; the holder goes too
    // (its held connections first, so its drain has nothing to wait for), and the wait
    // is bounded so a regression fails here instead of hanging the bench.
    let _ = stop_tx.send(());
    drop(conns);
    drop(holder);
    tokio::time::timeout(Duration::from_secs(10), controller)
        .await
        .context("the in-process controller did not stop within 10 s of shutdown")?
        .context("controller task")??;
    Ok(())
}
