//! The dashboards and alerts against live binaries: a real Prometheus scrapes a real
//! stack (controller, holder, Envoy) every second while services wake, serve, fail, are
//! refused and park. Then:
//!
//! - every dashboard query and every alert expression evaluates without error, the
//!   `service` variable lists the service, and Prometheus' own evaluation of the rules
//!   file reports no rule in error;
//! - the Service dashboard's state, wake duration, held-connection and relay panels, and
//!   the Overview's relay throughput, have data for the service that woke and parked;
//! - every metric a dashboard or alert reads is exported by a running binary (the
//!   controller in both modes, the holder, Envoy), and every metric they export is on a
//!   dashboard or in `dashboards/not-shown.yaml` with a reason.
//!
//! The queries come from `dashboards/queries.json`, which `dashboards/` generates with
//! the dashboards (and `make test` checks is current), each with the metric names its
//! PromQL parse tree selects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zenvoy_e2e::kube_stack::{KubeOptions, KubeStack};
use zenvoy_e2e::prometheus::{finite_values, read_text, substitute, Job, Prometheus};
use zenvoy_e2e::stack::{Gate, Options, ServiceSpec, Stack};
use zenvoy_test_support::{free_port, http_get, wait, workspace_root};

const BOUND: Duration = Duration::from_secs(30);
const SCRAPE: Duration = Duration::from_secs(1);
/// What Grafana's `$__rate_interval` stands for here: several 1 s scrapes.
const RATE_INTERVAL: &str = "20s";
/// Series Prometheus makes itself rather than scrapes.
const PROMETHEUS_OWN: [&str; 1] = ["up"];

/// One entry of dashboards/queries.json.
#[derive(Debug, Deserialize)]
struct Query {
    kind: String,
    #[serde(rename = "in")]
    within: String,
    name: String,
    expr: String,
    metrics: Vec<String>,
}

impl Query {
    fn what(&self) -> String {
        format!("{} {} / {}", self.kind, self.within, self.name)
    }
}

#[derive(Debug, Deserialize)]
struct NotShown {
    metric: String,
    reason: String,
}

fn queries() -> anyhow::Result<Vec<Query>> {
    let path = workspace_root().join("dashboards/queries.json");
    Ok(serde_json::from_str(&read_text(&path)?)?)
}

fn not_shown() -> anyhow::Result<Vec<NotShown>> {
    let path = workspace_root().join("dashboards/not-shown.yaml");
    Ok(serde_norway::from_str(&read_text(&path)?)?)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Sample name -> metric family, from a Prometheus or OpenMetrics text page. A sample
/// belongs to the `# TYPE` family above it when its name is the family's or adds one of
/// the suffixes the formats add (`_total` to a counter, `_bucket`, `_count`, `_sum` to a
/// histogram), so a histogram counts as shown when any of its series is.
fn families(page: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut family = String::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            family = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let of_family = !family.is_empty()
            && name.strip_prefix(family.as_str()).is_some_and(|suffix| {
                ["", "_total", "_bucket", "_count", "_sum", "_created"].contains(&suffix)
            });
        let f = if of_family {
            family.clone()
        } else {
            name.clone()
        };
        out.insert(name, f);
    }
    out
}

/// Connect to `addr`, send a line, and read the echo; `before_echo` runs between the two
/// (while the connection is held).
async fn echo_once<F, Fut>(addr: SocketAddr, before_echo: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(b"hello\n").await?;
    before_echo().await?;
    let mut buf = [0u8; 6];
    tokio::time::timeout(BOUND, c.read_exact(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("no echo within {BOUND:?}"))??;
    anyhow::ensure!(&buf == b"hello\n", "echo differs: {buf:?}");
    Ok(())
}

async fn wait_metric(st: &Stack, series: &str, at_least: f64) -> anyhow::Result<()> {
    let r = wait::until(&format!("{series} >= {at_least}"), BOUND, || async {
        Ok((st.controller_metric(series).await? >= at_least).then_some(()))
    })
    .await;
    r.map_err(|e| anyhow::anyhow!("{e}\n{}", st.logs()))
}

async fn wait_parked(st: &Stack, name: &str) -> anyhow::Result<()> {
    st.wait_parked(name, BOUND).await
}

/// A wake of the gated service whose held connection stays held (and `waking`) for a few
/// scrapes, then is relayed; then the park.
async fn wake_held_and_park(st: &Stack, gate: &Gate) -> anyhow::Result<()> {
    let addr = st.listener("echo").await?;
    echo_once(addr, || async {
        wait_metric(
            st,
            "zenvoy_service_state{service=\"echo\",state=\"waking\"}",
            1.0,
        )
        .await?;
        // Held and waking for three scrapes: Prometheus sees both.
        tokio::time::sleep(3 * SCRAPE).await;
        gate.open()?;
        Ok(())
    })
    .await?;
    wait_parked(st, "echo").await
}

/// A connection that arrives while `lively` is parking cancels the park. The window is
/// the time from publishing the holder to the next idle stats sample (up to a 2 s flush);
/// a try that misses it just wakes the service again, so try a few times.
async fn cancel_a_park(st: &Stack) -> anyhow::Result<()> {
    let addr = st.listener("lively").await?;
    let parking = "zenvoy_service_state{service=\"lively\",state=\"parking\"}";
    for _ in 0..5 {
        echo_once(addr, || async { Ok(()) }).await?;
        wait::until("lively to start parking", BOUND, || async {
            Ok((st.controller_metric(parking).await? == 1.0).then_some(()))
        })
        .await?;
        echo_once(addr, || async { Ok(()) }).await?;
        if st
            .controller_metric("zenvoy_parks_cancelled_total{service=\"lively\"}")
            .await?
            >= 1.0
        {
            return wait_parked(st, "lively").await;
        }
    }
    anyhow::bail!("no park of lively was cancelled in 5 tries\n{}", st.logs())
}

/// The controller's page in Kubernetes mode, after an API outage: the metrics only that
/// mode exports (leader election, API errors).
async fn kubernetes_mode_page() -> anyhow::Result<String> {
    let stack = KubeStack::start(KubeOptions::default(), 1).await?;
    let c = &stack.controllers[0];
    stack.api.set_available(false);
    let r = c
        .wait_metric("zenvoy_kube_api_errors_total{op=\"lease\"}", 1.0, BOUND)
        .await;
    stack.api.set_available(true);
    r.map_err(|e| anyhow::anyhow!("{e}\n{}", stack.logs()))?;
    http_get(&format!("http://{}/metrics", c.admin)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_work_against_live_binaries() -> anyhow::Result<()> {
    let queries = queries()?;
    let kube_page = kubernetes_mode_page().await?;

    // The stack: a service whose start waits at a gate (so a connection is held for as
    // long as the test likes), one that parks and wakes freely, one whose command fails,
    // one whose listener port the test holds (Envoy NACKs it), and a scrape target that
    // is down (stats errors).
    let dir = Stack::tempdir()?;
    let (echo, gate) = ServiceSpec::gated_echo("echo", dir.path())?;
    let lively = ServiceSpec::echo("lively", dir.path())?.with("idleTimeout: 1s");
    let mut broken = ServiceSpec::echo("broken", dir.path())?.with("holdTimeout: 2s");
    broken.command = vec!["sh".into(), "-c".into(), "exit 1".into()];
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut nacked = ServiceSpec::echo("taken", dir.path())?;
    nacked.listen = Some(taken.local_addr()?);
    let gone = free_port()?;
    let opts = Options {
        services: vec![echo.with("idleTimeout: 1s"), lively, broken, nacked],
        // A slow flush keeps a park in phase one long enough to cancel it.
        flush: Duration::from_secs(2),
        extra_config: vec![
            "scrape:".into(),
            "  interval: 1s".into(),
            "  targets:".into(),
            "    - name: gone".into(),
            format!("      url: http://{gone}/metrics"),
        ],
        ..Options::default()
    };
    let st = Stack::start(dir, opts).await?;

    let rules = workspace_root().join("alerts/zenvoy.rules.yml");
    let prom = Prometheus::start(
        &[
            Job::new("zenvoy-controller", st.controller_admin, "/metrics"),
            Job::new("zenvoy-holder", st.holder_admin, "/metrics"),
            Job::new("zenvoy-envoy", st.envoy.admin, "/stats/prometheus"),
        ],
        &[rules],
        SCRAPE,
    )
    .await?;
    let started = unix_now();

    // Two wakes (the second is the one rates see: a counter's first sample is its
    // baseline), each held and waking for a few scrapes, and two parks.
    wake_held_and_park(&st, &gate).await?;
    wake_held_and_park(&st, &gate).await?;
    cancel_a_park(&st).await?;

    // A wake that fails until the held connection's 2 s holdTimeout drops it.
    let mut c = TcpStream::connect(st.listener("broken").await?).await?;
    c.write_all(b"anyone?").await?;
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(BOUND, c.read(&mut buf)).await?;
    anyhow::ensure!(matches!(n, Ok(0) | Err(_)), "broken answered: {n:?}");
    let timeouts = "zenvoy_holder_held_seconds_count{outcome=\"timeout\"}";
    wait::until("the holder to count the timeout", BOUND, || async {
        Ok((st.holder_metric(timeouts).await? >= 1.0).then_some(()))
    })
    .await?;

    // No PROXY header: the holder refuses the connection at once.
    let mut c = TcpStream::connect(st.holder_listen).await?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let _ = tokio::time::timeout(BOUND, c.read(&mut buf)).await?;
    wait::until("a refusal on the holder's page", BOUND, || async {
        let page = http_get(&format!("http://{}/metrics", st.holder_admin)).await?;
        Ok(page.contains("zenvoy_holder_refused_total{").then_some(()))
    })
    .await?;

    // An invalid config edit: rejected, and counted.
    let config = st.dir.path().join("zenvoy.yaml");
    let text = read_text(&config)?;
    anyhow::ensure!(text.contains("    holdTimeout: 2s"), "config:\n{text}");
    let tmp = config.with_extension("tmp");
    std::fs::write(
        &tmp,
        text.replace("    holdTimeout: 2s", "    holdTimeout: 0s"),
    )?;
    std::fs::rename(&tmp, &config)?;
    wait_metric(&st, "zenvoy_config_reloads_total{result=\"rejected\"}", 1.0).await?;
    wait_metric(&st, "zenvoy_xds_nacks_total{type=\"lds\"}", 1.0).await?;
    wait_metric(&st, "zenvoy_ingest_errors_total{source=\"scrape\"}", 1.0).await?;
    // Prometheus scrapes the last of it and evaluates the rules again.
    tokio::time::sleep(3 * SCRAPE).await;
    let now = unix_now();
    let range = format!("{}s", (now - started).ceil() as u64 + 1);

    // 1. Every query evaluates, every alert rule is healthy.
    let mut failures = Vec::new();
    for q in &queries {
        if q.kind == "variable" {
            // label_values(metric, label): Grafana asks the label values API.
            let label = q
                .expr
                .trim_end_matches(')')
                .rsplit(',')
                .next()
                .unwrap_or_default()
                .trim();
            match prom.label_values(label, &q.metrics[0]).await {
                Ok(values) if values.iter().any(|v| v == "echo") => {}
                Ok(values) => failures.push(format!("{}: echo not among {values:?}", q.what())),
                Err(e) => failures.push(format!("{}: {e:#}", q.what())),
            }
            continue;
        }
        let expr = substitute(&q.expr, "echo", RATE_INTERVAL, &range);
        if let Err(e) = prom.query(&expr).await {
            failures.push(format!("{}: {e:#}\n  {expr}", q.what()));
        }
    }
    for rule in prom.rules().await? {
        if rule["health"] != "ok" {
            failures.push(format!(
                "rule {}: health {} ({})",
                rule["name"], rule["health"], rule["lastError"]
            ));
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} queries or rules failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        prom.proc.log_tail(20)
    );

    // 2. The panels that show a wake and a park have data for the service. The State
    // timeline went parked (0) -> waking (1) -> awake (2) -> ...; the held connection
    // waited 3 s, so its wake took at least that.
    type Check = fn(&[f64]) -> bool;
    let expect: [(&str, &str, &[&str], &str, Check); 5] = [
        (
            "zenvoy-service",
            "State",
            &["A"],
            "parked, waking and awake",
            |v| [0.0, 1.0, 2.0].iter().all(|s| v.contains(s)),
        ),
        (
            "zenvoy-service",
            "Wake duration",
            &["A", "B", "C"],
            "a wake of 2 s or more",
            |v| v.iter().any(|d| *d >= 2.0),
        ),
        (
            "zenvoy-service",
            "Held connections",
            &["A"],
            "a held connection",
            |v| v.iter().any(|n| *n >= 1.0),
        ),
        (
            "zenvoy-service",
            "Relayed by the holder per minute",
            &["A"],
            "a relay",
            |v| v.iter().any(|r| *r > 0.0),
        ),
        (
            "zenvoy-overview",
            "Relay throughput",
            &["A"],
            "relayed bytes",
            |v| v.iter().any(|b| *b > 0.0),
        ),
    ];
    for (dashboard, panel, refs, what, check) in expect {
        let mut values = Vec::new();
        for r in refs {
            let name = format!("{panel} / {r}");
            let q = queries
                .iter()
                .find(|q| q.within == dashboard && q.name == name)
                .ok_or_else(|| anyhow::anyhow!("{dashboard} has no query {name:?}"))?;
            let expr = substitute(&q.expr, "echo", RATE_INTERVAL, &range);
            let series = prom.query_range(&expr, started, now, SCRAPE).await?;
            values.extend(finite_values(&series));
        }
        anyhow::ensure!(
            check(&values),
            "{dashboard} / {panel}: expected {what} for service echo, got {} values: {:?}",
            values.len(),
            &values[..values.len().min(40)]
        );
    }

    // 3. Metric names: what the dashboards and alerts read is exported, and what is
    // exported is shown or listed as not shown, with a reason.
    let pages = [
        http_get(&format!("http://{}/metrics", st.controller_admin)).await?,
        http_get(&format!("http://{}/metrics", st.holder_admin)).await?,
        st.envoy.get("/stats/prometheus").await?,
        kube_page,
    ];
    let exported: BTreeMap<String, String> = pages.iter().flat_map(|p| families(p)).collect();
    let mut used: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for q in &queries {
        for m in &q.metrics {
            used.entry(m.as_str()).or_default().push(q.what());
        }
    }
    let mut problems = Vec::new();
    for (m, by) in &used {
        if !PROMETHEUS_OWN.contains(m) && !exported.contains_key(*m) {
            problems.push(format!(
                "{m} is read by {} but no running binary exports it",
                by.join(", ")
            ));
        }
    }
    let shown: BTreeSet<&String> = used.keys().filter_map(|m| exported.get(*m)).collect();
    let mut listed = BTreeSet::new();
    for n in not_shown()? {
        if n.reason.trim().is_empty() {
            problems.push(format!(
                "dashboards/not-shown.yaml: {} has no reason",
                n.metric
            ));
        }
        let family = exported
            .get(&n.metric)
            .or_else(|| exported.values().find(|f| **f == n.metric));
        match family {
            None => problems.push(format!(
                "dashboards/not-shown.yaml lists {}, which no running binary exports",
                n.metric
            )),
            Some(f) if shown.contains(f) => problems.push(format!(
                "dashboards/not-shown.yaml lists {}, but a dashboard or alert reads it",
                n.metric
            )),
            Some(f) => {
                listed.insert(f.clone());
            }
        }
    }
    let all: BTreeSet<&String> = exported.values().collect();
    for f in all {
        if !shown.contains(f) && !listed.contains(f) {
            problems.push(format!(
                "{f} is exported but neither on a dashboard or alert nor in dashboards/not-shown.yaml"
            ));
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    drop(taken);
    Ok(())
}
