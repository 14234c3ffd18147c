//! Measure 2: held idle connections: the holder's RSS with 10,000 held, then every one
//! released and its echo checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use zenvoy_e2e::holder_client::header;
use zenvoy_test_support::process::rss_mib;
use zenvoy_test_support::{http_get, metric_value, wait};

use crate::stack::{listen_overflows, log_summary, publish, start_holder, Controller};
use crate::{verdict, Args, MSG};

/// Raise RLIMIT_NOFILE towards `want` (children inherit it): the hard limit too when
/// allowed, else up to the hard limit. Returns the soft limit now in force.
pub(crate) fn raise_nofile(want: u64) -> anyhow::Result<u64> {
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
pub(crate) fn echo_server() -> anyhow::Result<SocketAddr> {
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

pub(crate) fn message(i: usize) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    let text = format!("held connection #{i:>14}\n");
    let n = text.len().min(MSG);
    m[..n].copy_from_slice(&text.as_bytes()[..n]);
    m
}

pub(crate) async fn pending(admin: SocketAddr, service: &str) -> anyhow::Result<f64> {
    let page = http_get(&format!("http://{admin}/metrics")).await?;
    Ok(metric_value(
        &page,
        &format!("zenvoy_holder_pending{{service=\"{service}\"}}"),
    )
    .unwrap_or(0.0))
}

pub(crate) async fn measure_held(ctl: &Controller, args: &Args) -> anyhow::Result<()> {
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
