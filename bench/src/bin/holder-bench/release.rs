//! Measure 3: EDS update -> first byte at the upstream, over fresh services.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use zenvoy_controller::xds::resources::{any, load_assignment, Endpoints, ENDPOINT_TYPE};
use zenvoy_controller::xds::Cache;
use zenvoy_e2e::holder_client::header;
use zenvoy_test_support::monotonic_ns;

use crate::stack::{start_holder, Controller};
use crate::{percentile, verdict, Args};

pub(crate) fn release_rounds(
    cache: &Cache,
    listen: SocketAddr,
    wakes: usize,
) -> anyhow::Result<Vec<f64>> {
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

pub(crate) async fn measure_release(ctl: &Controller, args: &Args) -> anyhow::Result<()> {
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
