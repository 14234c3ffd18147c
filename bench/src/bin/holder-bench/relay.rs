//! Measure 1: relay throughput and CPU, the holder against HAProxy and socat, 1 GiB each
//! way through each.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use zenvoy_test_support::free_port;
use zenvoy_test_support::process::{cpu_seconds, Proc};

use crate::stack::{holder_has_service_ports, publish, start_holder, Controller, Holder};
use crate::{median, verdict, Args, BUF, GIB, STALL};

/// A relay under test: its two ports (client->sink, source->client) and its processes.
pub(crate) struct Relay {
    pub(crate) name: &'static str,
    pub(crate) up: SocketAddr,
    pub(crate) down: SocketAddr,
    pub(crate) pids: Vec<u32>,
    pub(crate) _procs: Vec<Proc>,
    pub(crate) _keep: Option<Holder>,
    pub(crate) _dir: Option<tempfile::TempDir>,
}

impl Relay {
    pub(crate) fn cpu(&self) -> anyhow::Result<f64> {
        self.pids.iter().map(|p| cpu_seconds(*p, true)).sum()
    }
}

/// `name` on PATH, or an error saying how to install it.
pub(crate) fn which(name: &str) -> anyhow::Result<PathBuf> {
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
pub(crate) fn listening(port: u16) -> bool {
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

pub(crate) fn wait_listening(proc: &mut Proc, addrs: &[SocketAddr]) -> anyhow::Result<()> {
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

pub(crate) fn start_haproxy(
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

pub(crate) fn start_socat(sink: SocketAddr, source: SocketAddr) -> anyhow::Result<Relay> {
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

pub(crate) async fn start_holder_relay(
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
pub(crate) fn sink() -> anyhow::Result<(SocketAddr, mpsc::Receiver<(u64, Instant)>)> {
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
pub(crate) fn source() -> anyhow::Result<SocketAddr> {
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
pub(crate) fn upload(
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
pub(crate) fn download(relay: &Relay, bytes: u64, buf: &mut [u8]) -> anyhow::Result<f64> {
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
pub(crate) struct RelayResult {
    pub(crate) up: Vec<f64>,
    pub(crate) down: Vec<f64>,
    pub(crate) cpu_s: f64,
    pub(crate) gib_moved: f64,
}

/// The relays in rotating order per round, upload then download, so drift (thermal, page
/// cache, other load) hits all of them alike.
pub(crate) fn relay_rounds(
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

pub(crate) async fn measure_relay(ctl: &Controller, args: &Args) -> anyhow::Result<()> {
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
