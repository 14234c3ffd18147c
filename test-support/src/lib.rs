//! What every test crate of the workspace needs from the host, none of it zenvoy's: the
//! workspace's root and its built binaries ([`bin`]), loopback ports free to hand to a
//! process before it starts ([`free_port`]), child processes killed when dropped
//! ([`process`]), polling until a condition holds ([`wait`]), network namespaces for the
//! tests that need root ([`netns`]), an HTTP GET and a Prometheus sample read
//! ([`http_get`], [`metric_value`]), and one monotonic clock for every process
//! ([`monotonic_ns`]).
//!
//! Used by the end-to-end harness and tests (`zenvoy-e2e`), the fake Kubernetes API server
//! and kubelet (`zenvoy-fake-kube`), the benchmarks (`zenvoy-bench`) and the chaos suite
//! (`zenvoy-chaos`).

pub mod netns;
pub mod process;
pub mod wait;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

/// The workspace root (where `.venv` and `target` live).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Directory holding the workspace binaries: next to the running executable (tests run
/// from `target/<profile>/deps`), or `ZENVOY_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ZENVOY_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, with an error that says how to build it.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir().join(name);
    anyhow::ensure!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` first (or set ZENVOY_BIN_DIR)",
        p.display()
    );
    Ok(p)
}

/// A loopback port free at the time of the call, for processes whose address must be
/// known before they start (the holder, a woken upstream).
///
/// Drawn from below the kernel's ephemeral range (`ip_local_port_range`), never from it:
/// a port from `bind(0)` is an ephemeral one, and in the moments before the child process
/// binds it, any outgoing connection of a test running alongside could take it as its
/// local port, and the child would fail with EADDRINUSE. Ports below the range are only
/// ever taken by an explicit bind; this process never hands out the same one twice.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    const LOWEST: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low <= LOWEST + 1_000 {
        // No room below the range: fall back to an ephemeral port.
        let l = TcpListener::bind("127.0.0.1:0")?;
        return Ok(l.local_addr()?);
    }
    let span = u64::from(ephemeral_low - LOWEST);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    // A start that differs per process and per call; then walk the range.
    let start = (monotonic_ns() as u64 ^ u64::from(std::process::id()).rotate_left(17))
        .wrapping_add(given.len() as u64 * 7_919)
        % span;
    for i in 0..span {
        let port = LOWEST + ((start + i) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            return Ok(l.local_addr()?);
        }
    }
    anyhow::bail!("no free loopback port in {LOWEST}..{ephemeral_low}")
}

/// GET a URL and return the body; errors name the URL and status.
pub async fn http_get(url: &str) -> anyhow::Result<String> {
    let resp = reqwest::get(url)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {body}");
    Ok(body)
}

/// Read one sample from a Prometheus text page: `name{labels}` exactly as written.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so two
/// processes' timestamps can be subtracted.
pub fn monotonic_ns() -> u128 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => {
            u128::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u128::try_from(t.tv_nsec()).unwrap_or(0)
        }
        Err(_) => 0,
    }
}
