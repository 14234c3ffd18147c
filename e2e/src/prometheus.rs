//! A real Prometheus (Debian's `prometheus` package, which `make setup` installs, or the
//! binary `ZENVOY_PROMETHEUS` names) scraping a stack every second, and queries against
//! its HTTP API. Its config and data live in a temporary directory; it is stopped when
//! dropped.
//!
//! ```text
//!  controller /metrics ----+
//!  holder /metrics --------+--scrape (1 s)--> Prometheus --/api/v1/...--> test
//!  Envoy /stats/prometheus +                  + alerts/zenvoy.rules.yml
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{free_port, http_get, wait};

/// One scrape job: its name (the `job` label the dashboards and alerts select on) and
/// where its page is.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub target: SocketAddr,
    pub path: String,
}

impl Job {
    pub fn new(name: &str, target: SocketAddr, path: &str) -> Self {
        Job {
            name: name.to_string(),
            target,
            path: path.to_string(),
        }
    }
}

/// The Prometheus binary: `ZENVOY_PROMETHEUS`, else `prometheus` on the PATH.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ZENVOY_PROMETHEUS") {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no prometheus on the PATH: run `make setup` (Debian package prometheus)"
            )
        })
}

/// The config Prometheus gets: every job scraped each `interval`, rules evaluated as
/// often. JSON is YAML, so serde_json writes it.
pub fn config(jobs: &[Job], rule_files: &[PathBuf], interval: Duration) -> Value {
    let every = format!("{}ms", interval.as_millis());
    json!({
        "global": {
            "scrape_interval": every,
            "scrape_timeout": every,
            "evaluation_interval": every,
        },
        "rule_files": rule_files,
        "scrape_configs": jobs.iter().map(|j| json!({
            "job_name": j.name,
            "metrics_path": j.path,
            "static_configs": [{ "targets": [j.target.to_string()] }],
        })).collect::<Vec<_>>(),
    })
}

#[derive(Debug)]
pub struct Prometheus {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Config, data and log; removed after the process is stopped (field order).
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start Prometheus scraping `jobs` and evaluating `rule_files`, and wait until it is
    /// ready and every target has been scraped successfully once.
    pub async fn start(
        jobs: &[Job],
        rule_files: &[PathBuf],
        interval: Duration,
    ) -> anyhow::Result<Prometheus> {
        let dir = tempfile::Builder::new().prefix("zenvoy-prom-").tempdir()?;
        let d = dir.path();
        let cfg = d.join("prometheus.yml");
        std::fs::write(
            &cfg,
            serde_json::to_vec_pretty(&config(jobs, rule_files, interval))?,
        )?;
        let addr = free_port()?;
        let mut cmd = Command::new(binary()?);
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn");
        let proc = Proc::spawn("prometheus", cmd, Some(&d.join("prometheus.log")))?;
        let mut p = Prometheus { proc, addr, dir };
        p.wait_ready().await?;
        p.wait_targets_up(jobs.len(), Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", p.proc.log_tail(30)))?;
        Ok(p)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("http://{}/-/ready", self.addr);
        let r = wait::until("Prometheus /-/ready", Duration::from_secs(30), || {
            let exited = self.proc.exited();
            let url = url.clone();
            async move {
                if let Some(status) = exited {
                    anyhow::bail!("prometheus exited: {status}");
                }
                Ok(http_get(&url).await.ok().map(|_| ()))
            }
        })
        .await;
        r.map_err(|e| anyhow::anyhow!("{e}\n{}", self.proc.log_tail(30)))
    }

    /// Wait until `n` targets report health "up".
    pub async fn wait_targets_up(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        wait::until(
            &format!("{n} Prometheus targets to be up"),
            timeout,
            || async {
                let v = self.api("/api/v1/targets", &[]).await?;
                let targets = v["activeTargets"].as_array().cloned().unwrap_or_default();
                let up = targets.iter().filter(|t| t["health"] == "up").count();
                if up < n {
                    let errors: Vec<String> = targets
                        .iter()
                        .filter(|t| t["health"] != "up")
                        .map(|t| format!("{}: {}", t["scrapeUrl"], t["lastError"]))
                        .collect();
                    anyhow::bail!("{up} of {n} up; {errors:?}");
                }
                Ok(Some(()))
            },
        )
        .await
    }

    /// GET an API path with query parameters; returns the response's `data`, or an error
    /// with Prometheus' own message (a PromQL parse or evaluation error).
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let url = reqwest::Url::parse_with_params(&format!("http://{}{path}", self.addr), params)?;
        let resp = reqwest::get(url.clone())
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|e| anyhow::anyhow!("GET {path}: {status}: not JSON ({e}): {body}"))?;
        anyhow::ensure!(
            v["status"] == "success",
            "{}: {}",
            v["errorType"].as_str().unwrap_or("error"),
            v["error"].as_str().unwrap_or(&body)
        );
        Ok(v["data"].clone())
    }

    /// Evaluate `expr` now; the result (`data.result`: a vector's samples, or a scalar).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Value> {
        Ok(self.api("/api/v1/query", &[("query", expr)]).await?["result"].clone())
    }

    /// Evaluate `expr` from `start` to `end` (Unix seconds) every `step`: one entry per
    /// series, each `{metric, values: [[t, "v"], ...]}`.
    pub async fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let (start, end, step) = (
            format!("{start:.3}"),
            format!("{end:.3}"),
            format!("{}", step.as_secs_f64()),
        );
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", expr),
                    ("start", start.as_str()),
                    ("end", end.as_str()),
                    ("step", step.as_str()),
                ],
            )
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The values of `label` on series of `metric`.
    pub async fn label_values(&self, label: &str, metric: &str) -> anyhow::Result<Vec<String>> {
        let data = self
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[("match[]", metric)],
            )
            .await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    /// Every rule Prometheus evaluates, with its `health` ("ok", "err", "unknown" before
    /// the first evaluation) and `lastError`.
    pub async fn rules(&self) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/rules", &[]).await?;
        Ok(data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }
}

/// The finite values of a range query's series (NaN, where a quantile has no wakes to
/// rank, and infinities left out).
pub fn finite_values(series: &[Value]) -> Vec<f64> {
    series
        .iter()
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p[1].as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .collect()
}

/// A dashboard query as Prometheus sees it once Grafana has filled in its variables:
/// `$service`, and the intervals Grafana computes from the time range and the scrape
/// interval.
pub fn substitute(expr: &str, service: &str, rate_interval: &str, range: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$__interval", rate_interval)
        .replace("$__range", range)
        .replace("${service}", service)
        .replace("$service", service)
}

/// Read a text file of the workspace (dashboards, rules, lists) with its path in errors.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}
