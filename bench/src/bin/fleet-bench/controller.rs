//! The controller under test: its config of N services (svc-0 the one the bench wakes), the
//! release binary started on it, and what it has ingested.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use zenvoy_test_support::process::{cpu_seconds, rss_mib, Proc};
use zenvoy_test_support::{bin, http_get, metric_value, wait};

/// svc-0 (`name(0)`): the service parts A and the fan-out part wake.
pub(crate) const WOKEN: &str = "svc-0";

pub(crate) fn name(i: usize) -> String {
    format!("svc-{i}")
}

pub(crate) fn config(
    services: usize,
    holder: SocketAddr,
    woken: (SocketAddr, &str),
    scrape: Option<&str>,
) -> String {
    let command = format!("[{:?}, \"--listen\", \"{}\"]", woken.1, woken.0);
    config_with(services, holder, (woken.0, &command, ""), scrape)
}

/// The config: `services` TCP services, all but svc-0 with a command that is never run;
/// svc-0 with `woken` = (upstream, command as a YAML flow list, extra keys as indented YAML
/// lines).
pub(crate) fn config_with(
    services: usize,
    holder: SocketAddr,
    woken: (SocketAddr, &str, &str),
    scrape: Option<&str>,
) -> String {
    let mut y = String::from("controller:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\n");
    y.push_str(&format!("holder:\n  address: {holder}\n"));
    if let Some(url) = scrape {
        y.push_str(&format!(
            "scrape:\n  interval: 250ms\n  targets:\n    - name: envoy-bench\n      url: {url}\n"
        ));
    }
    y.push_str("defaults:\n  idleTimeout: 1h\nservices:\n");
    for i in 0..services {
        let (upstream, command) = if i == 0 {
            (woken.0.to_string(), woken.1.to_string())
        } else {
            ("127.0.0.1:9".to_string(), "[\"true\"]".to_string())
        };
        y.push_str(&format!(
            "  - name: {}\n    listen: 127.0.0.1:0\n    upstream: {upstream}\n    command: {command}\n",
            name(i)
        ));
        if i == 0 {
            y.push_str(woken.2);
        }
    }
    y
}

/// `/proc/<pid>/stat` utime + stime in seconds, and VmRSS in MiB.
pub(crate) fn cpu_and_rss(pid: u32) -> anyhow::Result<(f64, f64)> {
    Ok((cpu_seconds(pid, false)?, rss_mib(pid)?))
}

pub(crate) struct Controller {
    pub(crate) proc: Proc,
    pub(crate) grpc: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) async fn start_controller(yaml: &str) -> anyhow::Result<Controller> {
    start_controller_with(yaml, "warn", &[]).await
}

/// The controller binary with this `RUST_LOG` and extra arguments.
pub(crate) async fn start_controller_with(
    yaml: &str,
    rust_log: &str,
    extra: &[&str],
) -> anyhow::Result<Controller> {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("zenvoy.yaml");
    std::fs::write(&cfg, yaml)?;
    let addr_file = dir.path().join("addr.json");
    let mut cmd = std::process::Command::new(bin("zenvoy-controller")?);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--address-file")
        .arg(&addr_file)
        .args(extra);
    cmd.env("RUST_LOG", rust_log);
    let proc = Proc::spawn("controller", cmd, Some(&dir.path().join("controller.log")))?;
    let v: serde_json::Value = wait::until(
        "controller address file",
        Duration::from_secs(60),
        || async {
            Ok(std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok()))
        },
    )
    .await?;
    let parse = |k: &str| -> anyhow::Result<SocketAddr> {
        v[k].as_str().context("address")?.parse().context("address")
    };
    Ok(Controller {
        proc,
        grpc: parse("grpc")?,
        admin: parse("admin")?,
        _dir: dir,
    })
}

/// Messages of `source` ("push", "scrape") the controller has ingested, from its /metrics.
pub(crate) async fn ingested(admin: SocketAddr, source: &str) -> anyhow::Result<f64> {
    let page = http_get(&format!("http://{admin}/metrics")).await?;
    Ok(metric_value(
        &page,
        &format!("zenvoy_ingest_samples_total{{source=\"{source}\"}}"),
    )
    .unwrap_or(0.0))
}
