//! The Kubernetes manifests in deploy/, as an operator applies them:
//!
//! - every kustomization there (deploy/ itself, base/, examples/demo/, monitoring/)
//!   renders with kustomize and validates against the Kubernetes API schemas offline
//!   (both tools from the venv `make setup` fills), for the oldest Kubernetes the
//!   manifests are for and the newest the validator knows; the prometheus-operator kinds
//!   of monitoring/ have no schema there (`make monitoring` checks them against theirs);
//! - every pod runs as a non-root user under a seccomp profile, without capabilities or
//!   privilege escalation, with a memory limit; the controller and proxy pods have
//!   readiness and liveness probes, a PodDisruptionBudget and anti-affinity, and the
//!   proxy's drain fits its grace period;
//! - the images are the ones `make images` builds and the Envoy the tests run;
//! - what the manifests carry is accepted by what reads it: every zenvoy document by the
//!   controller's Kubernetes-mode parser, every Envoy bootstrap by `envoy --mode
//!   validate`, the demo's Services by the controller's own Service reader;
//! - the ports line up: the zenvoy-proxy Service reaches the HTTP listener and each of the
//!   demo's TCP listeners, the holder listens where the config sends Envoy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use zenvoy_core::config::{Config, Mode, Protocol};
use zenvoy_tests::workspace_root;

/// The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by
/// default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";
/// Kinds with no schema in kubernetes-validate, checked by `make monitoring` against the
/// prometheus-operator's CRDs instead.
const CRD_KINDS: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];
/// What `make images` builds, in the manifests' names: `localhost/<name>:<version>`.
const IMAGES: [&str; 2] = ["zenvoy-controller", "zenvoy-holder"];

fn venv_tool(name: &str) -> anyhow::Result<PathBuf> {
    let p = workspace_root().join(".venv/bin").join(name);
    anyhow::ensure!(p.exists(), "{} is missing: run `make setup`", p.display());
    Ok(p)
}

/// Every directory under deploy/ with a kustomization.yaml, deploy/ included.
fn kustomizations() -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![workspace_root().join("deploy")];
    while let Some(dir) = dirs.pop() {
        if dir.join("kustomization.yaml").exists() {
            found.push(dir.clone());
        }
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `dir` relative to the workspace, for messages.
fn shown(dir: &Path) -> String {
    dir.strip_prefix(workspace_root())
        .unwrap_or(dir)
        .display()
        .to_string()
}

/// `kubectl kustomize dir`: the text and its documents.
fn render(dir: &Path) -> anyhow::Result<(String, Vec<Value>)> {
    let out = Command::new(venv_tool("kubectl")?)
        .arg("kustomize")
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kustomize {}: {}",
        shown(dir),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let docs = serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).with_context(|| format!("parsing {}", shown(dir))))
        .collect::<anyhow::Result<Vec<Value>>>()?;
    Ok((text, docs))
}

/// deploy/ as `kubectl apply -k deploy/` installs it.
fn install() -> anyhow::Result<Vec<Value>> {
    Ok(render(&workspace_root().join("deploy"))?.1)
}

fn demo() -> anyhow::Result<Vec<Value>> {
    Ok(render(&workspace_root().join("deploy/examples/demo"))?.1)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .ok_or_else(|| anyhow::anyhow!("no {kind} {name} in the rendered manifests"))
}

/// Every pod the documents run: a name for messages and its spec.
fn pods(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter_map(|d| {
            let kind = d["kind"].as_str()?;
            let spec = match kind {
                "Pod" => &d["spec"],
                "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                    &d["spec"]["template"]["spec"]
                }
                "CronJob" => &d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => return None,
            };
            let name = d["metadata"]["name"].as_str().unwrap_or("?");
            Some((format!("{kind}/{name}"), spec))
        })
        .collect()
}

fn containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(move |k| pod[k].as_array())
        .flatten()
}

fn container<'a>(pod: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    containers(pod)
        .find(|c| c["name"] == name)
        .ok_or_else(|| anyhow::anyhow!("no container {name}"))
}

/// A container's security setting, or its pod's where the container has none.
fn setting<'a>(container: &'a Value, pod: &'a Value, key: &str) -> &'a Value {
    let own = &container["securityContext"][key];
    if own.is_null() {
        &pod["securityContext"][key]
    } else {
        own
    }
}

/// What Pod Security's `restricted` profile asks of a container that zenvoy's pods give
/// (deploy/base/namespace.yaml enforces it), and a memory limit.
fn pod_problems(name: &str, pod: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for c in containers(pod) {
        let at = format!("{name}, container {}", c["name"].as_str().unwrap_or("?"));
        if setting(c, pod, "runAsNonRoot").as_bool() != Some(true) {
            problems.push(format!("{at}: runAsNonRoot is not true"));
        }
        if setting(c, pod, "runAsUser").as_u64() == Some(0) {
            problems.push(format!("{at}: runAsUser is 0"));
        }
        if setting(c, pod, "seccompProfile")["type"].as_str().is_none() {
            problems.push(format!("{at}: no seccompProfile"));
        }
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            problems.push(format!("{at}: allowPrivilegeEscalation is not false"));
        }
        let drops_all = sc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v.as_str() == Some("ALL")));
        if !drops_all {
            problems.push(format!("{at}: does not drop ALL capabilities"));
        }
        if c["resources"]["limits"]["memory"].is_null() {
            problems.push(format!("{at}: no memory limit"));
        }
    }
    problems
}

/// The container port a Service's `targetPort` means (a number, or a name some
/// container of the pods behind it declares).
fn target_port(target: &Value, pod: &Value) -> Option<u16> {
    if let Some(n) = target.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = target.as_str()?;
    containers(pod)
        .filter_map(|c| c["ports"].as_array())
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// The container ports the zenvoy-proxy Service sends clients to.
fn proxy_ports(docs: &[Value]) -> anyhow::Result<BTreeSet<u16>> {
    let service = find(docs, "Service", "zenvoy-proxy")?;
    let pod = &find(docs, "Deployment", "zenvoy-proxy")?["spec"]["template"]["spec"];
    let ports = service["spec"]["ports"]
        .as_array()
        .context("Service zenvoy-proxy has no ports")?;
    ports
        .iter()
        .map(|p| {
            let target = if p["targetPort"].is_null() {
                &p["port"]
            } else {
                &p["targetPort"]
            };
            target_port(target, pod)
                .ok_or_else(|| anyhow::anyhow!("zenvoy-proxy port {p}: no such container port"))
        })
        .collect()
}

/// The text under `key` of every ConfigMap that has it.
fn configmap_texts<'a>(docs: &'a [Value], key: &str) -> Vec<(String, &'a str)> {
    docs.iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter_map(|d| {
            let text = d["data"][key].as_str()?;
            let name = d["metadata"]["name"].as_str().unwrap_or("?");
            Some((format!("ConfigMap {name}"), text))
        })
        .collect()
}

/// The zenvoy config of an install (ConfigMap zenvoy, key zenvoy.yaml).
fn zenvoy_config(docs: &[Value]) -> anyhow::Result<Config> {
    let text = find(docs, "ConfigMap", "zenvoy")?["data"]["zenvoy.yaml"]
        .as_str()
        .context("ConfigMap zenvoy has no zenvoy.yaml")?;
    Ok(Config::from_yaml_for(text, Mode::Kubernetes)?)
}

/// `--flag=value` among a container's args.
fn arg<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    container["args"]
        .as_array()?
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix(prefix.as_str()))
}

/// Whole seconds written as `90s`.
fn seconds(v: &str) -> anyhow::Result<u64> {
    v.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{v:?}: expected whole seconds, e.g. 90s"))
}

#[test]
fn every_kustomization_renders_and_validates() -> anyhow::Result<()> {
    let dirs = kustomizations()?;
    let names: BTreeSet<String> = dirs.iter().map(|d| shown(d)).collect();
    for expected in [
        "deploy",
        "deploy/base",
        "deploy/examples/demo",
        "deploy/monitoring",
    ] {
        assert!(
            names.contains(expected),
            "{expected} is a kustomization (found {names:?})"
        );
    }
    let validate = venv_tool("kubernetes-validate")?;
    for dir in &dirs {
        let (text, _) = render(dir)?;
        let rendered = tempfile::Builder::new().suffix(".yaml").tempfile()?;
        std::fs::write(rendered.path(), &text)?;
        for version in [Some(OLDEST_KUBERNETES), None] {
            let mut cmd = Command::new(&validate);
            cmd.args(["--strict", "--quiet"]);
            if let Some(v) = version {
                cmd.args(["--kubernetes-version", v]);
            }
            let v = cmd.arg(rendered.path()).output()?;
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&v.stdout),
                String::from_utf8_lossy(&v.stderr)
            );
            let at = format!(
                "{} (Kubernetes {})",
                shown(dir),
                version.unwrap_or("latest")
            );
            assert!(
                v.status.success() && !report.contains("ERROR"),
                "kubernetes-validate {at}:\n{report}"
            );
            // A kind without a schema was not checked: only the operator's are allowed.
            for line in report.lines() {
                if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
                    let kind = rest.split_whitespace().next().unwrap_or_default();
                    assert!(
                        CRD_KINDS.contains(&kind),
                        "{at}: nothing validated {kind}: {line}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_install_has_every_part() -> anyhow::Result<()> {
    let docs = install()?;
    for (kind, name) in [
        ("Namespace", "zenvoy-system"),
        ("ServiceAccount", "zenvoy-controller"),
        ("ClusterRole", "zenvoy-controller"),
        ("ClusterRoleBinding", "zenvoy-controller"),
        ("Role", "zenvoy-controller"),
        ("RoleBinding", "zenvoy-controller"),
        ("ConfigMap", "zenvoy"),
        ("ConfigMap", "zenvoy-envoy"),
        ("Deployment", "zenvoy-controller"),
        ("Deployment", "zenvoy-proxy"),
        ("Service", "zenvoy-controller"),
        ("Service", "zenvoy-proxy"),
        ("PodDisruptionBudget", "zenvoy-controller"),
        ("PodDisruptionBudget", "zenvoy-proxy"),
    ] {
        find(&docs, kind, name)?;
    }
    // Pod Security enforces what every_pod_runs_as_non_root_with_limits checks offline.
    let ns = find(&docs, "Namespace", "zenvoy-system")?;
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
        "zenvoy-system enforces the restricted Pod Security profile"
    );
    Ok(())
}

#[test]
fn every_pod_runs_as_non_root_with_limits() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut seen = 0;
    for dir in kustomizations()? {
        let (_, docs) = render(&dir)?;
        for (name, pod) in pods(&docs) {
            seen += 1;
            problems.extend(
                pod_problems(&name, pod)
                    .into_iter()
                    .map(|p| format!("{}: {p}", shown(&dir))),
            );
        }
    }
    assert!(seen > 0, "no pods rendered");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[test]
fn the_controller_and_proxy_pods_are_probed_spread_and_budgeted() -> anyhow::Result<()> {
    let docs = install()?;
    for name in ["zenvoy-controller", "zenvoy-proxy"] {
        let deployment = find(&docs, "Deployment", name)?;
        let pod = &deployment["spec"]["template"]["spec"];
        for c in containers(pod) {
            let at = format!("{name}, container {}", c["name"].as_str().unwrap_or("?"));
            for probe in ["readinessProbe", "livenessProbe"] {
                assert!(c[probe].is_object(), "{at} has no {probe}");
            }
        }
        assert!(
            pod_problems(name, pod).is_empty(),
            "{name}: see every_pod_runs_as_non_root_with_limits"
        );
        assert!(
            deployment["spec"]["replicas"].as_u64() >= Some(2),
            "{name} runs at least two replicas"
        );
        let labels = &deployment["spec"]["selector"]["matchLabels"];
        assert!(
            docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"
                && &d["spec"]["selector"]["matchLabels"] == labels),
            "no PodDisruptionBudget selects {name}'s pods"
        );
        let spread = pod["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .is_some_and(|terms| {
                terms.iter().any(|t| {
                    let term = &t["podAffinityTerm"];
                    term["topologyKey"] == "kubernetes.io/hostname"
                        && &term["labelSelector"]["matchLabels"] == labels
                })
            });
        assert!(spread, "{name}'s replicas are not spread over nodes");
    }
    Ok(())
}

/// deploy/base/proxy.yaml's termination: the holder accepts for as long as Envoy does;
/// Envoy outlives the holder's drain; the grace period outlives both; and the drain is
/// long enough for a connection held just before it to wait its whole holdTimeout.
#[test]
fn the_proxy_drain_fits_its_grace_period() -> anyhow::Result<()> {
    let docs = install()?;
    let pod = &find(&docs, "Deployment", "zenvoy-proxy")?["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .context("zenvoy-proxy has no terminationGracePeriodSeconds")?;
    let envoy = container(pod, "envoy")?;
    let holder = container(pod, "holder")?;

    let script = envoy["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .and_then(|c| c.last()?.as_str())
        .context("Envoy has no preStop command")?;
    assert!(
        script.contains("POST /drain_listeners"),
        "Envoy's preStop closes its listeners:\n{script}"
    );
    let sleeps: Vec<u64> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("sleep ")?.trim().parse().ok())
        .collect();
    let &[before_drain, after_drain] = sleeps.as_slice() else {
        panic!("Envoy's preStop: a sleep before the drain request and one after:\n{script}");
    };
    let envoy_stops = before_drain + after_drain;

    let holder_stops = holder["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .context("the holder has no preStop sleep")?;
    let drain = seconds(arg(holder, "--drain-timeout").context("no --drain-timeout")?)?;

    assert!(
        holder_stops > before_drain,
        "the holder stops accepting at {holder_stops} s, before Envoy does at {before_drain} s"
    );
    assert!(
        envoy_stops >= holder_stops + drain,
        "Envoy exits at {envoy_stops} s, before the holder's drain ends at {} s",
        holder_stops + drain
    );
    assert!(
        grace > envoy_stops && grace > holder_stops + drain,
        "terminationGracePeriodSeconds {grace} ends before the drain does"
    );
    let hold = zenvoy_config(&docs)?.defaults.hold_timeout;
    assert!(
        Duration::from_secs(drain) > hold,
        "--drain-timeout {drain}s is shorter than the default holdTimeout {hold:?}"
    );
    Ok(())
}

#[test]
fn the_images_are_what_make_images_builds_and_the_envoy_the_tests_run() -> anyhow::Result<()> {
    let out = Command::new(zenvoy_tests::envoy::binary()?)
        .arg("--version")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let envoy_version = text
        .split("version: ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .with_context(|| format!("envoy --version: {text}"))?;
    let expected: BTreeSet<String> = IMAGES
        .iter()
        .map(|name| format!("localhost/{name}:{}", env!("CARGO_PKG_VERSION")))
        .chain([format!("envoyproxy/envoy:v{envoy_version}")])
        .collect();
    let docs = install()?;
    let used: BTreeSet<String> = pods(&docs)
        .iter()
        .flat_map(|(_, pod)| containers(pod))
        .filter_map(|c| c["image"].as_str().map(str::to_string))
        .collect();
    assert_eq!(used, expected, "the images deploy/ runs");
    Ok(())
}

#[test]
fn every_zenvoy_config_is_a_valid_kubernetes_mode_config() -> anyhow::Result<()> {
    let mut seen = 0;
    for dir in kustomizations()? {
        let (_, docs) = render(&dir)?;
        for (name, text) in configmap_texts(&docs, "zenvoy.yaml") {
            seen += 1;
            let c = Config::from_yaml_for(text, Mode::Kubernetes)
                .with_context(|| format!("{}: {name}", shown(&dir)))?;
            assert!(c.services.is_empty());
        }
    }
    assert!(seen > 0, "no zenvoy config rendered");
    let c = zenvoy_config(&install()?)?;
    assert_eq!(c.overrides[0].0, "postgres.databases");
    assert!(
        c.defaults.hold_timeout >= c.defaults.wake_timeout,
        "held clients are closed before the wake they wait for may end"
    );
    Ok(())
}

#[test]
fn every_envoy_bootstrap_is_valid_for_envoy() -> anyhow::Result<()> {
    let mut bootstraps = BTreeSet::new();
    for dir in kustomizations()? {
        let (_, docs) = render(&dir)?;
        bootstraps.extend(
            configmap_texts(&docs, "envoy.yaml")
                .into_iter()
                .map(|(_, text)| text.to_string()),
        );
    }
    assert!(!bootstraps.is_empty(), "no Envoy bootstrap rendered");
    for boot in bootstraps {
        let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
        std::fs::write(file.path(), &boot)?;
        let out = Command::new(zenvoy_tests::envoy::binary()?)
            .args(["--mode", "validate", "--disable-hot-restart", "-c"])
            .arg(file.path())
            .output()?;
        assert!(
            out.status.success(),
            "envoy --mode validate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The addresses the config names are the ones the pods listen on, and an HTTP Service
/// works out of the box: the zenvoy-proxy Service reaches the HTTP listener.
#[test]
fn the_config_and_the_pods_agree_on_ports() -> anyhow::Result<()> {
    let docs = install()?;
    let c = zenvoy_config(&docs)?;
    let http = c
        .http
        .as_ref()
        .context("no http.listen: HTTP Services are refused")?;
    assert!(
        proxy_ports(&docs)?.contains(&http.listen.port()),
        "the zenvoy-proxy Service does not reach the HTTP listener {}",
        http.listen
    );

    let controller = &find(&docs, "Deployment", "zenvoy-controller")?["spec"]["template"]["spec"];
    for (name, addr) in [("grpc", c.controller.listen), ("admin", c.controller.admin)] {
        assert_eq!(
            target_port(&Value::from(name), controller),
            Some(addr.port()),
            "the controller's {name} port"
        );
    }
    let proxy = &find(&docs, "Deployment", "zenvoy-proxy")?["spec"]["template"]["spec"];
    assert_eq!(
        arg(container(proxy, "holder")?, "--listen"),
        Some(c.holder.address.to_string().as_str()),
        "the holder listens where the config sends Envoy"
    );
    Ok(())
}

/// The demo's Services, read by the controller's own code under the demo's config: each
/// is opted in and valid (no InvalidAnnotation Event), its workload starts parked, and
/// the zenvoy-proxy Service reaches its listener. One of each protocol.
#[test]
fn the_demo_services_are_opted_in_and_start_parked() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use zenvoy_controller::kubernetes::service;

    let docs = demo()?;
    let config = zenvoy_config(&docs)?;
    let reachable = proxy_ports(&docs)?;
    let mut protocols = Vec::new();
    for doc in docs.iter().filter(|d| d["kind"] == "Service") {
        let svc: Service = serde_json::from_value(doc.clone())?;
        if !service::opted_in(&svc) {
            continue;
        }
        let name = svc.metadata.name.clone().unwrap_or_default();
        let read = service::read(&svc, &config)
            .with_context(|| format!("Service {name}: the controller refuses it"))?;
        let kind = match read.target.kind {
            service::Kind::Deployment => "Deployment",
            service::Kind::StatefulSet => "StatefulSet",
        };
        let workload = docs
            .iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == read.target.workload.as_str()
                    && d["metadata"]["namespace"] == read.target.namespace.as_str()
            })
            .with_context(|| format!("Service {name}: no {kind} {}", read.target.workload))?;
        assert_eq!(
            workload["spec"]["replicas"].as_u64(),
            Some(0),
            "{kind} {} starts parked",
            read.target.workload
        );
        let port = match read.def.protocol {
            Protocol::Tcp => read.def.listen.map(|a| a.port()),
            Protocol::Http => config.http.as_ref().map(|h| h.listen.port()),
        };
        assert!(
            port.is_some_and(|p| reachable.contains(&p)),
            "Service {name}: the zenvoy-proxy Service does not reach its listener ({port:?})"
        );
        protocols.push(read.def.protocol);
    }
    assert!(
        protocols.contains(&Protocol::Tcp) && protocols.contains(&Protocol::Http),
        "the demo has a TCP and an HTTP Service (found {protocols:?})"
    );
    Ok(())
}
