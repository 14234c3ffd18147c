//! Holder benchmark (BENCHMARKS.md): the real `zenvoy-holder` binary against an in-process
//! controller (the controller crate's own `xds::Cache` + `AdsServer` on tonic), which
//! publishes a service's ClusterLoadAssignment whenever the bench wants a relay.
//!
//! ```text
//!  relay:   client thread --1 GiB--> holder | HAProxy | socat --> sink thread (discard)
//!           client thread <--1 GiB-- holder | HAProxy | socat <-- source thread
//!  held:    10,000 x (PROXY v2 + 32 B) --> holder (parked: no CLA) ; RSS ;
//!           publish CLA -> every connection gets its own 32 B back from a tokio echo
//!  release: PROXY v2 + 1 B --> holder ; holder subscribes ; t0 = publish CLA ;
//!           t1 = the byte read by a blocking upstream thread (EDS update -> first byte)
//! ```
//!
//! Targets (printed with a verdict, never asserted): relay throughput >= 1.0x HAProxy and
//! >= 1.5x socat; <= 40 MiB RSS with 10,000 held; p99 EDS update -> first byte <= 2 ms.
//!
//! `make bench` or `cargo build --release --workspace --bins && target/release/holder-bench`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use zenvoy_controller::telemetry::Metrics;
use zenvoy_controller::xds::resources::{any, load_assignment, Endpoints, ENDPOINT_TYPE};
use zenvoy_controller::xds::{AdsServer, AdsService, Cache};
use zenvoy_tests::holder_client::header;
use zenvoy_tests::process::{cpu_seconds, rss_mib, Proc};
use zenvoy_tests::{bin, free_port, http_get, metric_value, monotonic_ns, wait};

const GIB: f64 = (1u64 << 30) as f64;
/// Client, sink and source buffer: allocated once per thread, big reads and writes.
const BUF: usize = 1 << 20;
/// A relay that moves no byte for this long has stalled.
const STALL: Duration = Duration::from_secs(30);
/// Bytes each held connection sends before its service has endpoints.
const MSG: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measure {
    /// Relay throughput and CPU: holder vs HAProxy vs socat.
    Relay,
    /// 10,000 held idle connections: RSS, then release and echo check.
    Held,
    /// EDS update -> first byte at the upstream, over fresh services.
    Release,
}

#[derive(Debug, Parser)]
struct Args {
    /// Runs per relay and direction (median reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Bytes per relay run and direction.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Held idle connections.
    #[arg(long, default_value_t = 10_000)]
    held: usize,
    /// Wakes timed for EDS update -> first byte.
    #[arg(long, default_value_t = 1000)]
    wakes: usize,
    /// Run one measure only.
    #[arg(long, value_enum)]
    only: Option<Measure>,
    /// HAProxy's `tune.pipesize` (bytes); unset, HAProxy's default (the kernel's 64 KiB).
    /// The holder asks for 1 MiB pipes: `--haproxy-pipesize 1048576` compares like with
    /// like.
    #[arg(long)]
    haproxy_pipesize: Option<usize>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

// ---------------------------------------------------------------------------------------
// The in-process controller and the holder process.

/// The controller's real ADS server over tonic on 127.0.0.1:0, TCP_NODELAY on accepted
/// connections as `zenvoy_controller::run` does. Stops when dropped.
struct Controller {
    cache: Arc<Cache>,
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_controller() -> anyhow::Result<Controller> {
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
fn publish(cache: &Cache, service: &str, upstream: SocketAddr) {
    cache.set(
        ENDPOINT_TYPE,
        service,
        any(load_assignment(
            service,
            &Endpoints::Upstream(vec![upstream]),
        )),
    );
}

struct Holder {
    proc: Proc,
    listen: SocketAddr,
    admin: SocketAddr,
    service_ports: HashMap<String, SocketAddr>,
    _dir: tempfile::TempDir,
}

/// Start the release `zenvoy-holder` (no MetricsService push: nothing here ingests it)
/// and read its bound addresses from `--address-file`.
async fn start_holder(controller: SocketAddr, extra: &[String]) -> anyhow::Result<Holder> {
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
fn holder_has_service_ports() -> anyhow::Result<bool> {
    let out = std::process::Command::new(bin("zenvoy-holder")?)
        .arg("--help")
        .output()
        .context("running zenvoy-holder --help")?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--service-port"))
}

/// The machine's TcpExt ListenOverflows counter (/proc/net/netstat): connections whose
/// handshake completed while a listener's accept queue was full; the client's SYN is
/// dropped and retransmitted a second later.
fn listen_overflows() -> u64 {
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
fn log_summary(holder: &Holder) -> String {
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

// ---------------------------------------------------------------------------------------
// Measure 1: relay throughput and CPU.

/// A relay under test: its two ports (client->sink, source->client) and its processes.
struct Relay {
    name: &'static str,
    up: SocketAddr,
    down: SocketAddr,
    pids: Vec<u32>,
    _procs: Vec<Proc>,
    _keep: Option<Holder>,
    _dir: Option<tempfile::TempDir>,
}

impl Relay {
    fn cpu(&self) -> anyhow::Result<f64> {
        self.pids.iter().map(|p| cpu_seconds(*p, true)).sum()
    }
}

/// `name` on PATH, or an error saying how to install it.
fn which(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{name} not found on PATH: `make bench` installs it (`scripts/setup.sh bench`), or `apt-get install haproxy socat`")
        })
}

/// Whether some socket listens on TCP `port` (from /proc/net/tcp, so no connection is
/// made: a probe through socat would reach the sink).
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| a.ends_with(&want)) && f.get(3) == Some(&"0A")
        })
}

fn wait_listening(proc: &mut Proc, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !addrs.iter().all(|a| listening(a.port())) {
        if let Some(status) = proc.exited() {
            anyhow::bail!("{} exited ({status}):\n{}", proc.name, proc.log_tail(20));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after 10 s waiting for {} to listen on {addrs:?}\n{}",
            proc.name,
            proc.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn start_haproxy(
    sink: SocketAddr,
    source: SocketAddr,
    pipesize: Option<usize>,
) -> anyhow::Result<Relay> {
    let haproxy = which("haproxy")?;
    let dir = tempfile::tempdir()?;
    let (up, down) = (free_port()?, free_port()?);
    // TCP mode, splice(2) forced both ways (the holder splices too), defaults otherwise.
    let tune = pipesize.map_or(String::new(), |n| format!("    tune.pipesize {n}\n"));
    let cfg = format!(
        "global\n    maxconn 1000\n{tune}\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n    option splice-request\n    option splice-response\n\
         frontend up\n    bind {up}\n    default_backend sink\n\
         backend sink\n    server sink {sink}\n\
         frontend down\n    bind {down}\n    default_backend source\n\
         backend source\n    server source {source}\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let mut cmd = std::process::Command::new(haproxy);
    cmd.arg("-f").arg(&path).arg("-db");
    let mut proc = Proc::spawn("haproxy", cmd, Some(&dir.path().join("haproxy.log")))?;
    wait_listening(&mut proc, &[up, down])?;
    Ok(Relay {
        name: "haproxy",
        up,
        down,
        pids: vec![proc.pid()],
        _procs: vec![proc],
        _keep: None,
        _dir: Some(dir),
    })
}

fn start_socat(sink: SocketAddr, source: SocketAddr) -> anyhow::Result<Relay> {
    let socat = which("socat")?;
    let dir = tempfile::tempdir()?;
    let (up, down) = (free_port()?, free_port()?);
    let mut procs = Vec::new();
    for (name, listen, to) in [("socat-up", up, sink), ("socat-down", down, source)] {
        let mut cmd = std::process::Command::new(&socat);
        cmd.arg(format!(
            "TCP-LISTEN:{},bind={},reuseaddr,fork",
            listen.port(),
            listen.ip()
        ))
        .arg(format!("TCP:{to}"));
        let mut proc = Proc::spawn(name, cmd, Some(&dir.path().join(format!("{name}.log"))))?;
        wait_listening(&mut proc, &[listen])?;
        procs.push(proc);
    }
    Ok(Relay {
        name: "socat",
        up,
        down,
        pids: procs.iter().map(Proc::pid).collect(),
        _procs: procs,
        _keep: None,
        _dir: Some(dir),
    })
}

async fn start_holder_relay(
    ctl: &Controller,
    sink: SocketAddr,
    source: SocketAddr,
) -> anyhow::Result<Relay> {
    anyhow::ensure!(
        holder_has_service_ports()?,
        "this zenvoy-holder has no --service-port flag: rebuild it (`cargo build --release --workspace --bins`)"
    );
    // Awake before the first connection: the holder subscribes on it and relays at once.
    publish(&ctl.cache, "bulk-up", sink);
    publish(&ctl.cache, "bulk-down", source);
    let h = start_holder(
        ctl.addr,
        &[
            "--service-port".into(),
            "bulk-up=127.0.0.1:0".into(),
            "--service-port".into(),
            "bulk-down=127.0.0.1:0".into(),
        ],
    )
    .await?;
    let port = |s: &str| {
        h.service_ports
            .get(s)
            .copied()
            .with_context(|| format!("no service port for {s} in the holder's address file"))
    };
    Ok(Relay {
        name: "holder",
        up: port("bulk-up")?,
        down: port("bulk-down")?,
        pids: vec![h.proc.pid()],
        _procs: Vec::new(),
        _keep: Some(h),
        _dir: None,
    })
}

/// Accept forever; each connection is read to EOF into one reused buffer and discarded;
/// reports (bytes, when EOF arrived).
fn sink() -> anyhow::Result<(SocketAddr, mpsc::Receiver<(u64, Instant)>)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(STALL));
                let mut buf = vec![0u8; BUF];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => n += k as u64,
                        Err(e) => {
                            eprintln!("sink: read failed after {n} bytes: {e}");
                            break;
                        }
                    }
                }
                let _ = tx.send((n, Instant::now()));
            });
        }
    });
    Ok((addr, rx))
}

/// Accept forever; each connection asks for a length (u64 LE) and gets that many bytes
/// from one reused buffer, then EOF.
fn source() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(STALL));
                let _ = s.set_write_timeout(Some(STALL));
                let mut len = [0u8; 8];
                if s.read_exact(&mut len).is_err() {
                    return; // not a bench client
                }
                let buf = vec![0xA5u8; BUF];
                let mut left = u64::from_le_bytes(len);
                while left > 0 {
                    let k = usize::try_from(left).unwrap_or(BUF).min(BUF);
                    if let Err(e) = s.write_all(&buf[..k]) {
                        eprintln!("source: write failed with {left} bytes left: {e}");
                        return;
                    }
                    left -= k as u64;
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    Ok(addr)
}

/// `bytes` from the client through the relay to the sink; returns GiB/s, connect to
/// the sink's EOF.
fn upload(
    relay: &Relay,
    bytes: u64,
    sunk: &mpsc::Receiver<(u64, Instant)>,
    buf: &[u8],
) -> anyhow::Result<f64> {
    while sunk.try_recv().is_ok() {}
    let what = format!("{} upload", relay.name);
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&relay.up, Duration::from_secs(5))
        .with_context(|| format!("{what}: connecting to {}", relay.up))?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    let mut left = bytes;
    while left > 0 {
        let k = usize::try_from(left).unwrap_or(buf.len()).min(buf.len());
        s.write_all(&buf[..k])
            .with_context(|| format!("{what}: write with {left} bytes left"))?;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let (n, done) = sunk.recv_timeout(STALL).with_context(|| {
        format!("{what}: the sink saw no EOF within {STALL:?} of the last write")
    })?;
    anyhow::ensure!(n == bytes, "{what}: the sink got {n} bytes, sent {bytes}");
    // The relay closes towards the client once the sink has closed: wait, so runs never
    // overlap.
    let mut b = [0u8; 64];
    let extra = s
        .read(&mut b)
        .with_context(|| format!("{what}: waiting for the relay to close"))?;
    anyhow::ensure!(extra == 0, "{what}: {extra} unexpected bytes back");
    Ok(bytes as f64 / GIB / done.duration_since(t0).as_secs_f64())
}

/// `bytes` from the source through the relay to the client; returns GiB/s, connect to
/// the client's EOF.
fn download(relay: &Relay, bytes: u64, buf: &mut [u8]) -> anyhow::Result<f64> {
    let what = format!("{} download", relay.name);
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect_timeout(&relay.down, Duration::from_secs(5))
        .with_context(|| format!("{what}: connecting to {}", relay.down))?;
    s.set_read_timeout(Some(STALL))?;
    s.set_write_timeout(Some(STALL))?;
    // No half-close here: socat ends a connection 0.5 s after either side's EOF.
    s.write_all(&bytes.to_le_bytes())?;
    let mut n = 0u64;
    loop {
        match s.read(buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) => anyhow::bail!("{what}: read failed after {n} of {bytes} bytes: {e}"),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(n == bytes, "{what}: got {n} bytes, expected {bytes}");
    Ok(bytes as f64 / GIB / secs)
}

#[derive(Debug, Default)]
struct RelayResult {
    up: Vec<f64>,
    down: Vec<f64>,
    cpu_s: f64,
    gib_moved: f64,
}

/// The relays in rotating order per round, upload then download, so drift (thermal, page
/// cache, other load) hits all of them alike.
fn relay_rounds(
    relays: &[Relay],
    runs: usize,
    bytes: u64,
    sunk: &mpsc::Receiver<(u64, Instant)>,
) -> anyhow::Result<Vec<RelayResult>> {
    let wbuf = vec![0x5Au8; BUF];
    let mut rbuf = vec![0u8; BUF];
    // Warm-up: the holder subscribes and learns its endpoints, every relay faults in its
    // buffers and pipes.
    let warm = bytes.min(64 << 20);
    for r in relays {
        upload(r, warm, sunk, &wbuf).context("warm-up")?;
        download(r, warm, &mut rbuf).context("warm-up")?;
    }
    std::thread::sleep(Duration::from_millis(200));
    let cpu0: Vec<f64> = relays.iter().map(Relay::cpu).collect::<Result<_, _>>()?;
    let mut out: Vec<RelayResult> = relays.iter().map(|_| RelayResult::default()).collect();
    for round in 0..runs {
        let order: Vec<usize> = (0..relays.len())
            .map(|i| (i + round) % relays.len())
            .collect();
        let mut line = format!("[relay] round {}:", round + 1);
        for &i in &order {
            let up = upload(&relays[i], bytes, sunk, &wbuf)?;
            out[i].up.push(up);
        }
        for &i in &order {
            let down = download(&relays[i], bytes, &mut rbuf)?;
            out[i].down.push(down);
        }
        for &i in &order {
            line.push_str(&format!(
                " {} up {:.2} down {:.2} GiB/s;",
                relays[i].name, out[i].up[round], out[i].down[round]
            ));
        }
        println!("{}", line.trim_end_matches(';'));
    }
    // socat's forked relays are counted once reaped.
    std::thread::sleep(Duration::from_millis(700));
    for (i, r) in relays.iter().enumerate() {
        out[i].cpu_s = r.cpu()? - cpu0[i];
        out[i].gib_moved = (2 * runs) as f64 * bytes as f64 / GIB;
    }
    Ok(out)
}

async fn measure_relay(ctl: &Controller, args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs > 0 && args.bytes > 0,
        "--runs and --bytes must be > 0"
    );
    let (sink_addr, sunk) = sink()?;
    let source_addr = source()?;
    let holder = start_holder_relay(ctl, sink_addr, source_addr).await?;
    let haproxy = start_haproxy(sink_addr, source_addr, args.haproxy_pipesize)?;
    let socat = start_socat(sink_addr, source_addr)?;
    let relays = vec![holder, haproxy, socat];
    println!(
        "[relay] {} runs x {:.2} GiB each way per relay, loopback, one connection at a time; client and sink are blocking threads with 1 MiB buffers",
        args.runs,
        args.bytes as f64 / GIB
    );
    let (runs, bytes) = (args.runs, args.bytes);
    let (relays, results) = tokio::task::spawn_blocking(move || {
        let r = relay_rounds(&relays, runs, bytes, &sunk);
        (relays, r)
    })
    .await?;
    let results = results?;
    let mut up = BTreeMap::new();
    let mut down = BTreeMap::new();
    for (r, res) in relays.iter().zip(&results) {
        let (mu, md) = (median(&res.up), median(&res.down));
        up.insert(r.name, mu);
        down.insert(r.name, md);
        println!(
            "[relay] {:<8} median up {mu:.2} GiB/s, down {md:.2} GiB/s; CPU {:.2} s per GiB ({:.1} s over {:.1} GiB)",
            r.name,
            res.cpu_s / res.gib_moved,
            res.cpu_s,
            res.gib_moved
        );
    }
    for (dir, m) in [("up", &up), ("down", &down)] {
        let h = m.get("holder").copied().unwrap_or(f64::NAN);
        let vs_h = h / m.get("haproxy").copied().unwrap_or(f64::NAN);
        let vs_s = h / m.get("socat").copied().unwrap_or(f64::NAN);
        println!(
            "[relay] {dir}: holder = {vs_h:.3}x HAProxy (target >= 1.0x: {}), {vs_s:.2}x socat (target >= 1.5x: {})",
            verdict(vs_h >= 1.0),
            verdict(vs_s >= 1.5)
        );
    }
    drop(relays);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measure 2: held idle connections.

/// Raise RLIMIT_NOFILE towards `want` (children inherit it): the hard limit too when
/// allowed, else up to the hard limit. Returns the soft limit now in force.
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, hard.max(want)).is_ok() {
        return Ok(want);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .with_context(|| format!("raising RLIMIT_NOFILE from {soft} to its hard limit {hard}"))?;
    println!(
        "[held] note: RLIMIT_NOFILE stays at its hard limit {hard} ({want} wanted; raising the hard limit was refused: `ulimit -Hn {want}` as root first)"
    );
    Ok(hard)
}

/// Echo server on tokio: every connection gets back what it sends, until EOF. Its
/// backlog is large: the holder dials every released connection at once.
fn echo_server() -> anyhow::Result<SocketAddr> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>()?.into())?;
    s.listen(65_535)?; // capped by net.core.somaxconn
    s.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(s.into())?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

fn message(i: usize) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    let text = format!("held connection #{i:>14}\n");
    let n = text.len().min(MSG);
    m[..n].copy_from_slice(&text.as_bytes()[..n]);
    m
}

async fn pending(admin: SocketAddr, service: &str) -> anyhow::Result<f64> {
    let page = http_get(&format!("http://{admin}/metrics")).await?;
    Ok(metric_value(
        &page,
        &format!("zenvoy_holder_pending{{service=\"{service}\"}}"),
    )
    .unwrap_or(0.0))
}

async fn measure_held(ctl: &Controller, args: &Args) -> anyhow::Result<()> {
    let n = args.held;
    anyhow::ensure!(n > 0, "--held must be > 0");
    // The bench holds both ends at release (client + echo side), the holder two per
    // connection (client + upstream).
    let nofile = raise_nofile(2 * n as u64 + 4096)?;
    anyhow::ensure!(
        nofile >= n as u64 + 256,
        "RLIMIT_NOFILE {nofile} is too low to hold {n} connections: lower --held"
    );
    let h = start_holder(
        ctl.addr,
        &[
            "--hold-timeout".into(),
            "10m".into(),
            "--max-pending".into(),
            n.to_string(),
            "--max-pending-total".into(),
            n.to_string(),
        ],
    )
    .await?;
    wait::until("the holder's /metrics", Duration::from_secs(10), || async {
        Ok(http_get(&format!("http://{}/metrics", h.admin))
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;
    let rss0 = rss_mib(h.proc.pid())?;

    // Open them, a few hundred in flight at a time (the holder's accept backlog is 1024).
    let service = "idle";
    let hdr = Arc::new(header(service)?);
    let permits = Arc::new(Semaphore::new(256));
    let mut opening = JoinSet::new();
    let t_open = Instant::now();
    let overflows0 = listen_overflows();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let (hdr, listen) = (hdr.clone(), h.listen);
        opening.spawn(async move {
            let r = async {
                let mut s = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::net::TcpStream::connect(listen),
                )
                .await
                .context("connect timed out after 10 s")??;
                let mut first = Vec::with_capacity(hdr.len() + MSG);
                first.extend_from_slice(&hdr);
                first.extend_from_slice(&message(i));
                s.write_all(&first).await?;
                anyhow::Ok(s)
            }
            .await;
            drop(permit);
            (i, r)
        });
    }
    let mut conns: Vec<Option<tokio::net::TcpStream>> = (0..n).map(|_| None).collect();
    while let Some(j) = opening.join_next().await {
        let (i, r) = j?;
        conns[i] = Some(r.with_context(|| format!("opening held connection #{i}"))?);
    }
    let opened = t_open.elapsed();
    let overflows = listen_overflows().saturating_sub(overflows0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = 0.0;
    while seen < n as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for zenvoy_holder_pending{{service=\"idle\"}} {n} (last seen {seen})\n{}",
            h.proc.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = pending(h.admin, service).await.unwrap_or(seen);
    }
    let rss = rss_mib(h.proc.pid())?;
    println!(
        "[held] {n} connections opened in {:.0} ms ({overflows} listen-queue overflows, each a SYN retransmitted after 1 s), all pending in the holder",
        opened.as_secs_f64() * 1e3
    );
    println!(
        "[held] holder RSS with {n} held: {rss:.1} MiB (idle {rss0:.1} MiB, +{:.2} KiB per connection); target <= 40 MiB: {}",
        (rss - rss0) * 1024.0 / n as f64,
        verdict(rss <= 40.0)
    );

    // Release: every connection must get exactly its own early bytes back.
    let echo = echo_server()?;
    let t0 = Instant::now();
    publish(&ctl.cache, service, echo);
    let mut reading = JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        let Some(mut c) = c else { continue };
        reading.spawn(async move {
            let mut got = [0u8; MSG];
            let r =
                match tokio::time::timeout(Duration::from_secs(60), c.read_exact(&mut got)).await {
                    Err(_) => Err("no echo within 60 s".to_string()),
                    Ok(Err(e)) => Err(format!("read failed: {e}")),
                    Ok(Ok(_)) if got != message(i) => Err(format!(
                        "wrong bytes: got {:?}",
                        String::from_utf8_lossy(&got)
                    )),
                    Ok(Ok(_)) => Ok(()),
                };
            (i, r, t0.elapsed())
        });
    }
    let mut failures = Vec::new();
    let mut last = Duration::ZERO;
    let mut ok = 0usize;
    while let Some(j) = reading.join_next().await {
        let (i, r, at) = j?;
        match r {
            Ok(()) => {
                ok += 1;
                last = last.max(at);
            }
            Err(e) => failures.push((i, e)),
        }
    }
    failures.sort();
    let mut reasons: BTreeMap<&str, (usize, Vec<usize>)> = BTreeMap::new();
    for (i, e) in &failures {
        let r = reasons.entry(e.as_str()).or_default();
        r.0 += 1;
        if r.1.len() < 5 {
            r.1.push(*i);
        }
    }
    println!(
        "[held] released {n} (one CLA published): {ok} echoed byte-exact, {} failed; the last echo arrived {:.0} ms after the publish",
        failures.len(),
        last.as_secs_f64() * 1e3
    );
    for (reason, (count, first)) in &reasons {
        println!("[held]   {count} x {reason} (e.g. #{first:?})");
    }
    if !failures.is_empty() {
        print!("[held] holder log, by message:\n{}", log_summary(&h));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measure 3: EDS update -> first byte at the upstream.

fn release_rounds(cache: &Cache, listen: SocketAddr, wakes: usize) -> anyhow::Result<Vec<f64>> {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0")?;
    let up_addr = upstream.local_addr()?;
    let (tx, rx) = mpsc::channel();
    // Blocks in accept, then in a 1-byte read; stamps the byte's arrival.
    std::thread::spawn(move || {
        for s in upstream.incoming() {
            let r = (|| {
                let mut s = s?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
                let t1 = monotonic_ns();
                std::io::Result::Ok((t1, b[0], s))
            })();
            if tx.send(r).is_err() {
                return;
            }
        }
    });
    let mut lat = Vec::with_capacity(wakes);
    for i in 0..wakes {
        let name = format!("wake-{i}");
        let cla = any(load_assignment(&name, &Endpoints::Upstream(vec![up_addr])));
        let mut c = std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(5))
            .with_context(|| format!("connecting to the holder at {listen}"))?;
        c.set_nodelay(true)?;
        let mut first = header(&name)?;
        first.push(b'w');
        c.write_all(&first)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cache.subscribed(&name) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "timed out after 10 s waiting for the holder to subscribe to {name}"
            );
            std::thread::sleep(Duration::from_micros(20));
        }
        let t0 = monotonic_ns();
        cache.set(ENDPOINT_TYPE, &name, cla);
        let (t1, b, s) = rx
            .recv_timeout(Duration::from_secs(10))
            .with_context(|| {
                format!("timed out after 10 s waiting for {name}'s byte at the upstream")
            })?
            .with_context(|| format!("the upstream reading {name}'s byte"))?;
        anyhow::ensure!(
            b == b'w',
            "{name}: the upstream got {b:#04x}, not the client's byte"
        );
        lat.push(t1.saturating_sub(t0) as f64 / 1e6);
        drop(s);
        drop(c);
    }
    Ok(lat)
}

async fn measure_release(ctl: &Controller, args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.wakes > 0, "--wakes must be > 0");
    let h = start_holder(
        ctl.addr,
        &["--max-services".into(), (args.wakes + 16).to_string()],
    )
    .await?;
    let cache = ctl.cache.clone();
    let (listen, wakes) = (h.listen, args.wakes);
    let in_order =
        tokio::task::spawn_blocking(move || release_rounds(&cache, listen, wakes)).await??;
    let mut lat = in_order.clone();
    lat.sort_by(f64::total_cmp);
    let p99 = percentile(&lat, 99.0);
    println!(
        "[release] EDS update published by the control plane -> first byte at the upstream (an upper bound of EDS received -> first byte relayed), {} wakes: p50 {:.3} ms, p90 {:.3} ms, p99 {p99:.3} ms, max {:.3} ms; target p99 <= 2 ms: {}",
        lat.len(),
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        lat.last().copied().unwrap_or(f64::NAN),
        verdict(p99 <= 2.0)
    );
    // The holder subscribes to every service it has seen, so each wake's SotW request
    // and each push walk more names: show whether latency grows with them.
    let tenth = (in_order.len() / 10).max(1);
    let p50_of = |part: &[f64]| {
        let mut p = part.to_vec();
        p.sort_by(f64::total_cmp);
        percentile(&p, 50.0)
    };
    let first = &in_order[..tenth.min(in_order.len())];
    let last = &in_order[in_order.len().saturating_sub(tenth)..];
    println!(
        "[release] p50 of the first {} wakes {:.3} ms, of the last {} (holder subscribed to {} services by then) {:.3} ms",
        first.len(),
        p50_of(first),
        last.len(),
        in_order.len(),
        p50_of(last)
    );
    drop(h);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctl = start_controller().await?;
    let want = |m: Measure| args.only.is_none_or(|o| o == m);
    let mut failed = Vec::new();
    if want(Measure::Relay) {
        if let Err(e) = measure_relay(&ctl, &args).await {
            println!("[relay] FAILED: {e:#}");
            failed.push("relay");
        }
    }
    if want(Measure::Held) {
        if let Err(e) = measure_held(&ctl, &args).await {
            println!("[held] FAILED: {e:#}");
            failed.push("held");
        }
    }
    if want(Measure::Release) {
        if let Err(e) = measure_release(&ctl, &args).await {
            println!("[release] FAILED: {e:#}");
            failed.push("release");
        }
    }
    anyhow::ensure!(failed.is_empty(), "measures failed: {failed:?}");
    Ok(())
}
