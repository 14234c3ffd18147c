//! The Kubernetes manifests in deploy/, as an operator applies them:
//!
//! - every kustomization there (deploy/ itself, base/, examples/demo/, monitoring/,
//!   namespaced/, tls/cert-manager/) renders with kustomize and validates against the
//!   Kubernetes API schemas offline (both tools from the venv `make setup` fills), for
//!   the oldest Kubernetes the manifests are for and the newest the validator knows; the
//!   prometheus-operator kinds of monitoring/ have no schema there (`make monitoring`
//!   checks them against theirs), nor do cert-manager's (checked field by field below);
//! - mTLS is wired end to end: the controller's config, the holder's flags and Envoy's
//!   bootstrap name files of mounted Secrets, the names each side checks are in the
//!   other's certificate (cert-manager's and deploy/tls/make-certs.sh's alike), and the
//!   real controller, holder and Envoy, given exactly those files, connect and are
//!   accepted; Envoy takes a renewed certificate without a restart;
//! - the NetworkPolicies admit exactly who should reach each port (the proxy pods the
//!   controller's gRPC, the monitoring namespace the metrics, anyone the proxies' client
//!   ports) and let the controller reach only the API server and DNS;
//! - the namespaced install grants nothing cluster-wide, and per watched namespace what
//!   the cluster-wide one grants (e2e/tests/kubernetes.rs runs a controller against
//!   its Roles);
//! - every pod runs as a non-root user under a seccomp profile, without capabilities or
//!   privilege escalation, with a memory limit; the controller and proxy pods have
//!   readiness and liveness probes, a PodDisruptionBudget and anti-affinity, and the
//!   proxy's drain fits its grace period;
//! - the images are the ones `make images` builds and the Envoy the tests run;
//! - what the manifests carry is accepted by what reads it: every zenvoy document by the
//!   controller's Kubernetes-mode parser, every Envoy bootstrap (with its files where the
//!   pod mounts them) by `envoy --mode validate`, the demo's Services by the
//!   controller's own Service reader, its workloads' own opt-in by the controller's;
//! - the ports line up: the zenvoy-proxy Service reaches the HTTP listener and each of the
//!   demo's TCP listeners, the holder listens where the config sends Envoy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};
use zenvoy_core::config::{Config, Mode, Protocol};
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, free_port, http_get, wait, workspace_root};

/// The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by
/// default from 1.30.
const OLDEST_KUBERNETES: &str = "1.30.0";
/// Kinds with no schema in kubernetes-validate: the prometheus-operator's, checked by
/// `make monitoring` against its CRDs, and cert-manager's, whose fields the TLS tests
/// below read one by one.
const CRD_KINDS: [&str; 5] = [
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "Certificate",
    "Issuer",
];
/// What `make images` builds, in the manifests' names: `localhost/<name>:<version>`.
const IMAGES: [&str; 2] = ["zenvoy-controller", "zenvoy-holder"];
/// The keys of a TLS Secret as cert-manager writes it and deploy/tls/make-certs.sh
/// makes it: all a pod may name in one.
const TLS_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];
/// The Secrets deploy/tls/make-certs.sh makes (one directory each).
const TLS_SECRETS: [&str; 3] = [
    "zenvoy-controller-tls",
    "zenvoy-envoy-tls",
    "zenvoy-holder-tls",
];
/// The namespace deploy/ installs into.
const NAMESPACE: &str = "zenvoy-system";

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
        "deploy/namespaced",
        "deploy/tls/cert-manager",
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
        ("NetworkPolicy", "zenvoy-default-deny"),
        ("NetworkPolicy", "zenvoy-controller"),
        ("NetworkPolicy", "zenvoy-proxy"),
        ("NetworkPolicy", "zenvoy-monitoring"),
        ("Issuer", "zenvoy-selfsigned"),
        ("Certificate", "zenvoy-ca"),
        ("Issuer", "zenvoy-ca"),
        ("Certificate", "zenvoy-controller-tls"),
        ("Certificate", "zenvoy-envoy-tls"),
        ("Certificate", "zenvoy-holder-tls"),
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
    // The follower is ready too: with /readyz (the leader only) as its readiness probe a
    // rollout could never finish (the new pod cannot lead while the old leader runs, and
    // the old one goes only once the new one is ready) and the budget would never let a
    // drain evict the leader.
    let controller = container(pod_of(&docs, "zenvoy-controller")?, "controller")?;
    assert_eq!(
        controller["readinessProbe"]["httpGet"]["path"], "/healthz",
        "the controller's readiness must not depend on leading"
    );
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
    let out = Command::new(zenvoy_e2e::envoy::binary()?)
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
            assert!(
                c.controller.tls.is_some(),
                "{}: {name}: no controller.tls, the gRPC port is plaintext",
                shown(&dir)
            );
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

/// Every pod that runs Envoy, as the pod runs it: its command line, its bootstrap and
/// SDS files from the ConfigMap, its certificates from the Secrets (made as
/// docs/kubernetes.md says), each where the pod mounts it, through `envoy --mode
/// validate`.
#[test]
fn every_envoy_bootstrap_is_valid_for_envoy() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("zenvoy-deploy-")
        .tempdir()?;
    let (secrets, _) = made_secrets(&dir.path().join("pki"))?;
    let mut seen = 0;
    for (i, kdir) in kustomizations()?.iter().enumerate() {
        let (_, docs) = render(kdir)?;
        for (name, pod) in pods(&docs) {
            let Some(envoy) = containers(pod).find(|c| {
                c["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("envoyproxy/envoy:"))
            }) else {
                continue;
            };
            seen += 1;
            let at = format!("{}: {name}", shown(kdir));
            let sandbox = Sandbox::new(
                &dir.path().join(format!("pod-{i}-{seen}")),
                &docs,
                pod,
                &secrets,
            )
            .with_context(|| at.clone())?;
            let args = sandbox.args(envoy)?;
            let out = Command::new(zenvoy_e2e::envoy::binary()?)
                .args(args)
                .args(["--mode", "validate"])
                .output()?;
            assert!(
                out.status.success(),
                "{at}: envoy --mode validate:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(seen > 0, "no pod runs Envoy");
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
    // Only Envoy, in the same pod, may hand the holder connections.
    assert!(
        c.holder.address.ip().is_loopback(),
        "the holder's PROXY listener {} is not on loopback",
        c.holder.address
    );
    Ok(())
}

/// The demo's Services, read by the controller's own code under the demo's config: each
/// is opted in and valid (no InvalidAnnotation Event), its workload starts parked, and
/// the zenvoy-proxy Service reaches its listener. One of each protocol.
#[test]
fn the_demo_services_are_opted_in_and_start_parked() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use zenvoy_controller::backend::kubernetes::service;

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
        let meta: ObjectMeta = serde_json::from_value(workload["metadata"].clone())?;
        assert!(
            zenvoy_controller::backend::kubernetes::backend::workload_opted_in(&meta),
            "{kind} {} lacks its own zenvoy.io/enabled: \"true\": zenvoy would never scale it",
            read.target.workload
        );
        let port = match read.def.protocol {
            Protocol::Tcp => read.def.listen.map(|a| a.port()),
            Protocol::Http | Protocol::Http2 => config.http.as_ref().map(|h| h.listen.port()),
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

// ---- TLS: files, Secrets, certificates --------------------------------------------

/// The pod spec of Deployment `name`.
fn pod_of<'a>(docs: &'a [Value], name: &str) -> anyhow::Result<&'a Value> {
    Ok(&find(docs, "Deployment", name)?["spec"]["template"]["spec"])
}

/// The strings of a YAML list.
fn strings(list: &Value) -> BTreeSet<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Where a file a container names comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Key `key` of Secret `secret`, mounted at `mount`.
    Secret {
        secret: String,
        key: String,
        mount: String,
    },
    /// Key `key` of ConfigMap `config_map`.
    ConfigMap { config_map: String, key: String },
}

/// Which volume key `path` is, in `container` of `pod`: the deepest mount that holds
/// it. An error when no volume is mounted there, the key is not in the volume (a
/// Secret: one of TLS_KEYS), or a Secret is mounted writable.
fn source_of(docs: &[Value], pod: &Value, container: &Value, path: &str) -> anyhow::Result<Source> {
    let name = container["name"].as_str().unwrap_or("?");
    let (mount, key) = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let key = path
                .strip_prefix(m["mountPath"].as_str()?)?
                .strip_prefix('/')?;
            Some((m, key))
        })
        .max_by_key(|(m, _)| m["mountPath"].as_str().map_or(0, str::len))
        .with_context(|| format!("container {name}: no volume is mounted where {path} is"))?;
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .with_context(|| {
            format!(
                "container {name} mounts {}, which its pod lacks",
                mount["name"]
            )
        })?;
    if let Some(secret) = volume["secret"]["secretName"].as_str() {
        anyhow::ensure!(
            mount["readOnly"] == true,
            "container {name}: Secret {secret} is not mounted read-only"
        );
        anyhow::ensure!(
            TLS_KEYS.contains(&key),
            "{path}: a TLS Secret ({secret}) has {TLS_KEYS:?}, not {key}"
        );
        return Ok(Source::Secret {
            secret: secret.to_string(),
            key: key.to_string(),
            mount: mount["mountPath"].as_str().unwrap_or_default().to_string(),
        });
    }
    if let Some(config_map) = volume["configMap"]["name"].as_str() {
        anyhow::ensure!(
            find(docs, "ConfigMap", config_map)?["data"][key].is_string(),
            "{path}: ConfigMap {config_map} has no key {key}"
        );
        return Ok(Source::ConfigMap {
            config_map: config_map.to_string(),
            key: key.to_string(),
        });
    }
    anyhow::bail!(
        "{path}: volume {} is neither a Secret nor a ConfigMap",
        volume["name"]
    )
}

/// The text of a ConfigMap file a container names.
fn configmap_file<'a>(
    docs: &'a [Value],
    pod: &Value,
    container: &Value,
    path: &str,
) -> anyhow::Result<&'a str> {
    match source_of(docs, pod, container, path)? {
        Source::ConfigMap { config_map, key } => find(docs, "ConfigMap", &config_map)?["data"]
            [key.as_str()]
        .as_str()
        .with_context(|| format!("ConfigMap {config_map}: {key} is not text")),
        other => anyhow::bail!("{path} is not in a ConfigMap: {other:?}"),
    }
}

/// The Secret key a container names at `path`, which must be `key`: the Secret and
/// where it is mounted.
fn secret_file(
    docs: &[Value],
    pod: &Value,
    container: &Value,
    path: &str,
    key: &str,
) -> anyhow::Result<(String, String)> {
    match source_of(docs, pod, container, path)? {
        Source::Secret {
            secret,
            key: k,
            mount,
        } => {
            anyhow::ensure!(k == key, "{path} is {k} of Secret {secret}, not {key}");
            Ok((secret, mount))
        }
        other => anyhow::bail!("{path} is not in a Secret: {other:?}"),
    }
}

/// The Certificate that makes Secret `secret`.
fn certificate_for<'a>(docs: &'a [Value], secret: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == secret)
        .with_context(|| format!("no Certificate makes Secret {secret}"))
}

/// Every `--flag=value` among a container's args.
fn args_of<'a>(container: &'a Value, flag: &str) -> Vec<&'a str> {
    let prefix = format!("{flag}=");
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.strip_prefix(prefix.as_str()))
        .collect()
}

/// The value after `flag` among a container's args (`--flag value`).
fn arg_after<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let args = container["args"].as_array()?;
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.as_str()
}

/// The one element of `set`; an error naming `what` when there are several or none.
fn only(set: BTreeSet<String>, what: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        set.len() == 1,
        "{what} come from several Secrets, or none: {set:?}"
    );
    set.into_iter().next().context("empty")
}

/// Secrets by name, each its keys and bytes.
type Secrets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;
/// Per Secret, the DNS names of its certificate and its extended key usage.
type Made = BTreeMap<String, (BTreeSet<String>, String)>;

/// The TLS Secrets as docs/kubernetes.md has an operator make them without cert-manager:
/// deploy/tls/make-certs.sh into `pki` (again into the same `pki`: new leaves from the
/// same CA), then `kubectl create secret generic NAME --from-file=pki/NAME/`, client
/// side. Also what the script says it made: per Secret, its DNS names and its extended
/// key usage (serverAuth or clientAuth).
fn made_secrets(pki: &Path) -> anyhow::Result<(Secrets, Made)> {
    let script = workspace_root().join("deploy/tls/make-certs.sh");
    let out = Command::new("sh")
        .arg(script)
        .arg(pki)
        .output()
        .context("running deploy/tls/make-certs.sh (sh and openssl)")?;
    anyhow::ensure!(
        out.status.success(),
        "deploy/tls/make-certs.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "make-certs: PKI/NAME: DNS:a,DNS:b (usage)"
    let mut said = BTreeMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let Some(rest) = line.strip_prefix("make-certs: ") else {
            continue;
        };
        let (path, rest) = rest.rsplit_once(": ").context(line.to_string())?;
        let (sans, usage) = rest.rsplit_once(" (").context(line.to_string())?;
        let name = Path::new(path)
            .file_name()
            .context(line.to_string())?
            .to_string_lossy()
            .into_owned();
        let dns: BTreeSet<String> = sans
            .split(',')
            .filter_map(|s| s.strip_prefix("DNS:"))
            .map(str::to_string)
            .collect();
        said.insert(name, (dns, usage.trim_end_matches(')').to_string()));
    }
    let kubectl = venv_tool("kubectl")?;
    let mut secrets = Secrets::new();
    for name in TLS_SECRETS {
        let out = Command::new(&kubectl)
            .args([
                "create",
                "secret",
                "generic",
                name,
                "--namespace",
                NAMESPACE,
            ])
            .arg(format!("--from-file={}/", pki.join(name).display()))
            .args(["--dry-run=client", "--output=json"])
            // Client side only: no cluster is asked anything.
            .env("KUBECONFIG", pki.join("no-kubeconfig"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl create secret {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_slice(&out.stdout)?;
        let data = secret
            .data
            .with_context(|| format!("Secret {name} has no data"))?
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        secrets.insert(name.to_string(), data);
    }
    Ok((secrets, said))
}

/// A pod's volumes as files, laid out as the kubelet lays them out (each key a link
/// through `..data` to a directory of that version, `..data` replaced by one rename on
/// an update, which is what Envoy's watched_directory notices), and the paths each
/// container names mapped there.
struct Sandbox {
    dir: PathBuf,
    /// Per container: (mountPath, the volume's directory), deepest first.
    mounts: BTreeMap<String, Vec<(String, PathBuf)>>,
    version: u32,
}

impl Sandbox {
    /// Every volume of `pod`: ConfigMaps from `docs` (their paths rewritten for the
    /// container that mounts them), Secrets from `secrets`.
    fn new(dir: &Path, docs: &[Value], pod: &Value, secrets: &Secrets) -> anyhow::Result<Sandbox> {
        let mut sandbox = Sandbox {
            dir: dir.to_path_buf(),
            mounts: BTreeMap::new(),
            version: 0,
        };
        for c in containers(pod) {
            let mut mounts: Vec<(String, PathBuf)> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    Some((
                        m["mountPath"].as_str()?.to_string(),
                        dir.join(m["name"].as_str()?),
                    ))
                })
                .collect();
            mounts.sort_by_key(|(at, _)| std::cmp::Reverse(at.len()));
            sandbox
                .mounts
                .insert(c["name"].as_str().unwrap_or_default().to_string(), mounts);
        }
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().context("a volume without a name")?;
            let files: BTreeMap<String, Vec<u8>> =
                if let Some(secret) = volume["secret"]["secretName"].as_str() {
                    secrets
                        .get(secret)
                        .with_context(|| format!("volume {name}: no Secret {secret} was made"))?
                        .clone()
                } else if let Some(config_map) = volume["configMap"]["name"].as_str() {
                    let reader = containers(pod)
                        .find(|c| {
                            c["volumeMounts"]
                                .as_array()
                                .is_some_and(|ms| ms.iter().any(|m| m["name"] == name))
                        })
                        .with_context(|| format!("no container mounts volume {name}"))?;
                    let data = find(docs, "ConfigMap", config_map)?["data"]
                        .as_object()
                        .with_context(|| format!("ConfigMap {config_map} has no data"))?;
                    data.iter()
                        .map(|(k, v)| {
                            let text = v.as_str().unwrap_or_default();
                            (k.clone(), sandbox.rewrite(reader, text).into_bytes())
                        })
                        .collect()
                } else {
                    anyhow::bail!("volume {name} is neither a Secret nor a ConfigMap")
                };
            sandbox.write_volume(name, &files)?;
        }
        Ok(sandbox)
    }

    /// Write volume `name`'s files as a new version, as the kubelet does: a directory
    /// of its own, then `..data` pointed at it by one rename.
    fn write_volume(
        &mut self,
        name: &str,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> anyhow::Result<()> {
        self.version += 1;
        let volume = self.dir.join(name);
        let version = format!("..version-{}", self.version);
        std::fs::create_dir_all(volume.join(&version))?;
        for (key, bytes) in files {
            std::fs::write(volume.join(&version).join(key), bytes)?;
            let link = volume.join(key);
            if link.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), link)?;
            }
        }
        let next = volume.join("..data_tmp");
        let _ = std::fs::remove_file(&next);
        std::os::unix::fs::symlink(version, &next)?;
        std::fs::rename(next, volume.join("..data"))?;
        Ok(())
    }

    /// `text` with every path `container` mounts pointing into the sandbox.
    fn rewrite(&self, container: &Value, text: &str) -> String {
        let mounts = self
            .mounts
            .get(container["name"].as_str().unwrap_or_default());
        let mut text = text.to_string();
        for (at, dir) in mounts.into_iter().flatten() {
            text = text.replace(at.as_str(), &dir.display().to_string());
        }
        text
    }

    /// A container's command line (its args, after `command`'s first word), with its
    /// paths in the sandbox and `$(POD_NAME)` as a pod's name.
    fn args(&self, container: &Value) -> anyhow::Result<Vec<String>> {
        let command = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1);
        command
            .chain(container["args"].as_array().into_iter().flatten())
            .map(|a| -> anyhow::Result<String> {
                let a = a.as_str().context("an argument that is not a string")?;
                Ok(self.rewrite(container, a).replace("$(POD_NAME)", POD_NAME))
            })
            .collect()
    }
}

/// The name the tests give a pod (what `$(POD_NAME)` expands to).
const POD_NAME: &str = "zenvoy-proxy-7c9d8f6b5-x2x7q";

/// The last lines of each one's log, for a failure message.
fn tails(procs: &[&Proc]) -> String {
    procs.iter().map(|p| p.log_tail(30)).collect()
}

/// The serial numbers of the certificates Envoy presents (its admin's /certs).
async fn envoy_cert_serials(admin: SocketAddr) -> anyhow::Result<BTreeSet<String>> {
    let certs: Value = serde_json::from_str(&http_get(&format!("http://{admin}/certs")).await?)?;
    Ok(certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
        .filter_map(|c| c["serial_number"].as_str().map(str::to_string))
        .collect())
}

/// Each side of every gRPC stream presents a certificate from a mounted Secret and
/// checks the other's: the names each checks are in the certificate the other is
/// issued (by cert-manager here; make_certs_makes_what_cert_manager_makes keeps the
/// script in step), and every file is the right key of the right Secret.
#[test]
fn the_tls_wiring_names_mounted_files_and_matching_certificates() -> anyhow::Result<()> {
    let docs = install()?;
    let config = zenvoy_config(&docs)?;

    // The controller: controller.tls names tls.crt, tls.key and ca.crt of one Secret.
    let tls = config
        .controller
        .tls
        .as_ref()
        .context("controller.tls is missing: the gRPC port would be plaintext")?;
    let pod = pod_of(&docs, "zenvoy-controller")?;
    let controller = container(pod, "controller")?;
    let mut controller_secrets = BTreeSet::new();
    for (path, key) in [
        (&tls.cert, "tls.crt"),
        (&tls.key, "tls.key"),
        (&tls.client_ca, "ca.crt"),
    ] {
        let path = path.to_str().context("a TLS path that is not UTF-8")?;
        controller_secrets.insert(secret_file(&docs, pod, controller, path, key)?.0);
    }
    let controller_secret = only(controller_secrets, "controller.tls's files")?;

    // The holder: https only, its node id named by its certificate, its files one Secret.
    let pod = pod_of(&docs, "zenvoy-proxy")?;
    let holder = container(pod, "holder")?;
    let urls = args_of(holder, "--controller");
    assert!(!urls.is_empty(), "the holder has no --controller");
    for url in urls.iter().flat_map(|u| u.split(',')) {
        assert!(
            url.starts_with("https://"),
            "the holder dials {url}: not TLS"
        );
    }
    let node = arg(holder, "--node-id").context("the holder has no --node-id")?;
    let holder_name = node.strip_suffix("/$(POD_NAME)").with_context(|| {
        format!("the holder's node id {node} does not name its pod after a slash")
    })?;
    let holder_server_name = arg(holder, "--tls-server-name").unwrap_or("zenvoy-controller");
    let mut holder_secrets = BTreeSet::new();
    for (flag, key) in [
        ("--tls-ca", "ca.crt"),
        ("--tls-cert", "tls.crt"),
        ("--tls-key", "tls.key"),
    ] {
        let path = arg(holder, flag).with_context(|| format!("the holder has no {flag}"))?;
        holder_secrets.insert(secret_file(&docs, pod, holder, path, key)?.0);
    }
    let holder_secret = only(holder_secrets, "the holder's --tls-* files")?;

    // Envoy: its node id, its bootstrap's controller cluster, the SDS files.
    let envoy = container(pod, "envoy")?;
    let node = arg_after(envoy, "--service-node")
        .context("Envoy has no --service-node: every pod would share the bootstrap's node id")?;
    let envoy_name = node
        .strip_suffix("/$(POD_NAME)")
        .with_context(|| format!("Envoy's node id {node} does not name its pod after a slash"))?;
    let boot: Value = serde_norway::from_str(configmap_file(
        &docs,
        pod,
        envoy,
        arg_after(envoy, "-c").context("Envoy has no -c")?,
    )?)?;
    assert_eq!(
        boot["admin"]["address"]["socket_address"]["address"], "127.0.0.1",
        "Envoy's admin (it can stop Envoy) is on loopback"
    );
    assert_eq!(
        boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"],
        "zenvoy_controller",
        "ADS goes through the TLS cluster"
    );
    for sink in boot["stats_sinks"].as_array().into_iter().flatten() {
        assert_eq!(
            sink["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"], "zenvoy_controller",
            "the stats sink goes through the TLS cluster"
        );
    }
    let cluster = boot["static_resources"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "zenvoy_controller")
        .context("the bootstrap has no zenvoy_controller cluster")?;
    assert_eq!(
        cluster["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            ["common_http_protocol_options"]["max_requests_per_connection"],
        1,
        "a stream a follower refused is retried on the same connection, never reaching the leader"
    );
    let context = &cluster["transport_socket"]["typed_config"];
    assert_eq!(
        context["@type"],
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    );
    let common = &context["common_tls_context"];
    assert_eq!(
        common["alpn_protocols"],
        json!(["h2"]),
        "gRPC over TLS needs h2"
    );
    let sni = context["sni"].as_str().context("no SNI")?;
    let validation = &common["combined_validation_context"];
    let matched: Vec<&str> = validation["default_validation_context"]
        ["match_typed_subject_alt_names"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            assert_eq!(m["san_type"], "DNS");
            m["matcher"]["exact"].as_str().unwrap_or_default()
        })
        .collect();
    assert!(
        !matched.is_empty(),
        "Envoy accepts any certificate the CA signed"
    );
    // Each SDS file holds one secret (Envoy rejects more), named as referenced, whose
    // files are keys of one Secret and whose watched directory is its mount.
    let sds = |config: &Value, field: &str| -> anyhow::Result<Value> {
        let path = config["sds_config"]["path_config_source"]["path"]
            .as_str()
            .context("an SDS config that is not a file")?;
        let file: Value = serde_norway::from_str(configmap_file(&docs, pod, envoy, path)?)?;
        let resources = file["resources"].as_array().context("no resources")?;
        anyhow::ensure!(
            resources.len() == 1,
            "{path}: Envoy takes one secret per SDS file, not {}",
            resources.len()
        );
        anyhow::ensure!(
            resources[0]["name"] == config["name"],
            "{path}: not {}",
            config["name"]
        );
        Ok(resources[0][field].clone())
    };
    let certificate = sds(
        &common["tls_certificate_sds_secret_configs"][0],
        "tls_certificate",
    )?;
    let trusted = sds(
        &validation["validation_context_sds_secret_config"],
        "validation_context",
    )?;
    let mut envoy_secrets = BTreeSet::new();
    for (secret, file, key) in [
        (&certificate, "certificate_chain", "tls.crt"),
        (&certificate, "private_key", "tls.key"),
        (&trusted, "trusted_ca", "ca.crt"),
    ] {
        let path = secret[file]["filename"].as_str().context("not a file")?;
        let (name, mount) = secret_file(&docs, pod, envoy, path, key)?;
        assert_eq!(
            secret["watched_directory"]["path"], mount,
            "{path}: Envoy would not see the kubelet replace the Secret's files"
        );
        envoy_secrets.insert(name);
    }
    let envoy_secret = only(envoy_secrets, "Envoy's TLS files")?;

    // One Secret per container (none can speak as another), the ones make-certs.sh makes.
    let mounted: BTreeSet<&str> = [&controller_secret, &envoy_secret, &holder_secret]
        .into_iter()
        .map(String::as_str)
        .collect();
    assert_eq!(mounted, BTreeSet::from(TLS_SECRETS));

    // cert-manager issues each the names the other side checks.
    let issued = |secret: &str, usage: &str| -> anyhow::Result<BTreeSet<String>> {
        let c = certificate_for(&docs, secret)?;
        assert!(
            strings(&c["spec"]["usages"]).contains(usage),
            "Certificate for {secret}: no {usage:?} usage"
        );
        Ok(strings(&c["spec"]["dnsNames"])
            .into_iter()
            .map(str::to_string)
            .collect())
    };
    let controller_names = issued(controller_secret.as_str(), "server auth")?;
    for (who, name) in [
        ("Envoy's SNI", sni),
        ("the holder's --tls-server-name", holder_server_name),
    ]
    .into_iter()
    .chain(matched.iter().map(|m| ("Envoy's SAN match", *m)))
    {
        assert!(
            controller_names.contains(name),
            "{who} {name} is not a name of the controller's certificate {controller_names:?}"
        );
    }
    for (secret, name) in [(&envoy_secret, envoy_name), (&holder_secret, holder_name)] {
        let names = issued(secret.as_str(), "client auth")?;
        assert!(
            names.contains(name),
            "node ids {name}/<pod> need a certificate for {name}; {secret}'s has {names:?}"
        );
    }
    // All from one CA, which a self-signed Issuer makes.
    let mut cas = BTreeSet::new();
    for secret in &mounted {
        let c = certificate_for(&docs, secret)?;
        assert_eq!(c["spec"]["issuerRef"]["kind"], "Issuer", "{secret}");
        let issuer = find(
            &docs,
            "Issuer",
            c["spec"]["issuerRef"]["name"].as_str().unwrap_or_default(),
        )?;
        let ca = issuer["spec"]["ca"]["secretName"]
            .as_str()
            .with_context(|| format!("{secret}: its Issuer is not a CA Issuer"))?;
        let ca_cert = certificate_for(&docs, ca)?;
        assert_eq!(ca_cert["spec"]["isCA"], true, "{ca}");
        let root = find(
            &docs,
            "Issuer",
            ca_cert["spec"]["issuerRef"]["name"]
                .as_str()
                .unwrap_or_default(),
        )?;
        assert!(
            root["spec"]["selfSigned"].is_object(),
            "{ca}: not self-signed"
        );
        cas.insert(ca);
    }
    assert_eq!(cas.len(), 1, "the leaves come from several CAs: {cas:?}");
    Ok(())
}

/// deploy/tls/make-certs.sh (for clusters without cert-manager) makes the Secrets the
/// pods mount, each with the names and usage cert-manager's Certificate gives it.
#[test]
fn make_certs_makes_what_cert_manager_makes() -> anyhow::Result<()> {
    let docs = install()?;
    let dir = tempfile::Builder::new().prefix("zenvoy-pki-").tempdir()?;
    let (secrets, said) = made_secrets(dir.path())?;
    for name in TLS_SECRETS {
        let keys: BTreeSet<&str> = secrets[name].keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(TLS_KEYS), "Secret {name}");
        let (dns, usage) = said
            .get(name)
            .with_context(|| format!("make-certs.sh made no {name}"))?;
        let c = certificate_for(&docs, name)?;
        let names: BTreeSet<String> = strings(&c["spec"]["dnsNames"])
            .into_iter()
            .map(str::to_string)
            .collect();
        assert_eq!(
            dns, &names,
            "{name}: make-certs.sh and cert-manager issue different names"
        );
        let expected = match usage.as_str() {
            "serverAuth" => "server auth",
            "clientAuth" => "client auth",
            other => panic!("{name}: usage {other}"),
        };
        assert!(
            strings(&c["spec"]["usages"]).contains(expected),
            "{name}: {usage}"
        );
    }
    Ok(())
}

/// The manifests' TLS wiring, run: the controller (Kubernetes mode, against the fake
/// API) with the ConfigMap's document, the holder with its container's args and Envoy
/// with its container's args and bootstrap, each with its files where its pod mounts
/// them, made as docs/kubernetes.md says; only addresses are moved to loopback. The
/// holder's and Envoy's streams are accepted (their certificates name their node ids)
/// and none is refused; then Envoy's certificate is renewed the way the kubelet updates
/// a Secret, and Envoy presents the new one without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_tls_wiring_connects_the_real_binaries() -> anyhow::Result<()> {
    use zenvoy_e2e::kube_stack::{self, KubeOptions};
    use zenvoy_fake_kube::FakeApi;

    let docs = install()?;
    let dir = tempfile::Builder::new()
        .prefix("zenvoy-deploy-")
        .tempdir()?;
    let d = dir.path();
    let (secrets, _) = made_secrets(&d.join("pki"))?;
    let grpc = free_port()?;
    let holder_listen = free_port()?;

    // The controller: the ConfigMap's document with its pod's files, loopback addresses.
    let pod = pod_of(&docs, "zenvoy-controller")?;
    let controller_files = Sandbox::new(&d.join("controller"), &docs, pod, &secrets)?;
    let text = find(&docs, "ConfigMap", "zenvoy")?["data"]["zenvoy.yaml"]
        .as_str()
        .context("ConfigMap zenvoy has no zenvoy.yaml")?;
    let mut doc: Value =
        serde_norway::from_str(&controller_files.rewrite(container(pod, "controller")?, text))?;
    doc["holder"]["address"] = Value::from(holder_listen.to_string());
    if doc["http"].is_object() {
        doc["http"]["listen"] = Value::from(free_port()?.to_string());
    }
    let api = FakeApi::start().await?;
    api.put(kube_stack::configmap(&serde_norway::to_string(&doc)?))?;
    let controller =
        kube_stack::spawn_controller(&api, d, "controller-0", grpc, &KubeOptions::default())
            .await?;
    kube_stack::wait_leader(&api, &controller.identity, Duration::from_secs(20)).await?;

    // The holder, as its container runs it.
    let pod = pod_of(&docs, "zenvoy-proxy")?;
    let mut proxy_files = Sandbox::new(&d.join("proxy"), &docs, pod, &secrets)?;
    let mut args = Vec::new();
    for a in proxy_files.args(container(pod, "holder")?)? {
        let moved = match a.split_once('=') {
            Some(("--listen", _)) => Some(format!("--listen={holder_listen}")),
            Some(("--admin", _)) => Some("--admin=127.0.0.1:0".to_string()),
            Some(("--controller", url)) => {
                let (scheme, _) = url
                    .split_once("://")
                    .context("a --controller without a scheme")?;
                Some(format!("--controller={scheme}://{grpc}"))
            }
            _ => None,
        };
        args.push(moved.unwrap_or(a));
    }
    let mut cmd = Command::new(bin("zenvoy-holder")?);
    cmd.args(args);
    let holder = Proc::spawn("holder", cmd, Some(&d.join("holder.log")))?;
    // Its first push names its node: counted only once its certificate was found to
    // name it.
    controller
        .wait_metric(
            "zenvoy_ingest_samples_total{source=\"push\"}",
            1.0,
            Duration::from_secs(20),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: the holder's stream\n{}",
                tails(&[&holder, &controller.proc])
            )
        })?;

    // Envoy, as its container runs it, with its listeners and controller on loopback.
    let envoy = container(pod, "envoy")?;
    let args = proxy_files.args(envoy)?;
    let config = args
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| args.get(i + 1))
        .context("Envoy has no -c")?
        .clone();
    let mut boot: Value = serde_norway::from_str(&std::fs::read_to_string(&config)?)?;
    let admin = free_port()?;
    boot["admin"]["address"]["socket_address"] =
        json!({"address": "127.0.0.1", "port_value": admin.port()});
    for l in boot["static_resources"]["listeners"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        l["address"]["socket_address"] =
            json!({"address": "127.0.0.1", "port_value": free_port()?.port()});
    }
    for c in boot["static_resources"]["clusters"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        let to = match c["name"].as_str() {
            Some("envoy_admin") => admin,
            Some("zenvoy_controller") => grpc,
            _ => continue,
        };
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"] = json!({"address": to.ip().to_string(), "port_value": to.port()});
    }
    // JSON is YAML: the file keeps its name.
    std::fs::write(config, serde_json::to_vec_pretty(&boot)?)?;
    let mut cmd = Command::new(zenvoy_e2e::envoy::binary()?);
    cmd.args(args);
    let envoy_proc = Proc::spawn("envoy", cmd, Some(&d.join("envoy.log")))?;
    wait::until(
        "Envoy /ready (its ADS stream accepted)",
        Duration::from_secs(30),
        || async {
            Ok(http_get(&format!("http://{admin}/ready"))
                .await
                .ok()
                .filter(|b| b.contains("LIVE"))
                .map(|_| ()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(&[&envoy_proc, &controller.proc])))?;
    // Its stats arrive too (the sink shares the cluster, and so its TLS).
    let pushes = controller
        .metric("zenvoy_ingest_samples_total{source=\"push\"}")
        .await?;
    controller
        .wait_metric(
            "zenvoy_ingest_samples_total{source=\"push\"}",
            pushes + 2.0,
            Duration::from_secs(20),
        )
        .await?;
    assert_eq!(
        controller
            .metric("zenvoy_streams_refused_total{reason=\"identity\"}")
            .await?,
        0.0,
        "a stream was refused for its certificate\n{}",
        tails(&[&holder, &envoy_proc, &controller.proc])
    );

    // Renewal: new leaves from the same CA; the kubelet swaps the Secret's files.
    let before = envoy_cert_serials(admin).await?;
    assert!(!before.is_empty(), "Envoy presents no certificate");
    let (renewed, _) = made_secrets(&d.join("pki"))?;
    let volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["secret"]["secretName"] == "zenvoy-envoy-tls")
        .and_then(|v| v["name"].as_str())
        .context("no volume of Secret zenvoy-envoy-tls")?;
    proxy_files.write_volume(volume, &renewed["zenvoy-envoy-tls"])?;
    wait::until(
        "Envoy to present its renewed certificate",
        Duration::from_secs(20),
        || async {
            let now = envoy_cert_serials(admin).await?;
            Ok((!now.is_empty() && now.is_disjoint(&before)).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tails(&[&envoy_proc])))?;
    Ok(())
}

// ---- NetworkPolicies ---------------------------------------------------------------

/// Someone who connects: a pod (its namespace, whose one label here is
/// kubernetes.io/metadata.name, and its labels), or an address outside the cluster.
#[derive(Debug, Clone, Copy)]
enum Peer<'a> {
    Pod {
        namespace: &'a str,
        labels: &'a [(&'a str, &'a str)],
    },
    Outside,
}

/// Fails on a field this evaluator does not know, so that it never judges a policy it
/// only half reads.
fn known_fields(v: &Value, fields: &[&str], what: &str) {
    for k in v.as_object().into_iter().flatten().map(|(k, _)| k) {
        assert!(
            fields.contains(&k.as_str()),
            "{what}: {k} is unknown to this test's evaluator"
        );
    }
}

/// Whether a label selector selects `labels`.
fn selects(selector: &Value, labels: &[(&str, &str)]) -> bool {
    known_fields(
        selector,
        &["matchLabels", "matchExpressions"],
        "a label selector",
    );
    let get = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k.as_str()) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values = strings(&e["values"]);
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.contains(v)),
                Some("NotIn") => !get(key).is_some_and(|v| values.contains(v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                other => panic!("selector operator {other:?}"),
            }
        });
    by_labels && by_expressions
}

/// Whether a rule's `from`/`to` entry, in a policy of `namespace`, matches `peer`.
fn peer_matches(entry: &Value, namespace: &str, peer: Peer<'_>) -> bool {
    known_fields(
        entry,
        &["podSelector", "namespaceSelector"],
        "a policy peer",
    );
    let Peer::Pod {
        namespace: peer_namespace,
        labels,
    } = peer
    else {
        return false; // only an ipBlock, which these policies do not use, would
    };
    let by_namespace = match entry.get("namespaceSelector") {
        Some(s) => selects(s, &[("kubernetes.io/metadata.name", peer_namespace)]),
        None => peer_namespace == namespace,
    };
    by_namespace && entry.get("podSelector").is_none_or(|s| selects(s, labels))
}

/// Whether a rule's `ports` entry admits `port`/`protocol`; `named` resolves a port
/// name on the pod the policy protects.
fn port_matches(
    entry: &Value,
    port: u16,
    protocol: &str,
    named: &dyn Fn(&str) -> Option<u16>,
) -> bool {
    known_fields(entry, &["port", "endPort", "protocol"], "a policy port");
    if entry["protocol"].as_str().unwrap_or("TCP") != protocol {
        return false;
    }
    let first = match &entry["port"] {
        Value::Null => return true,
        Value::String(name) => named(name.as_str()),
        v => v.as_u64().and_then(|n| u16::try_from(n).ok()),
    };
    let Some(first) = first else {
        return false;
    };
    let last = entry["endPort"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(first);
    (first..=last).contains(&port)
}

/// Whether the NetworkPolicies among `docs` let `peer` connect (`direction`
/// "Ingress") to a pod of `namespace` with `labels` and spec `pod`, on `port`, or let
/// that pod connect (`direction` "Egress") to `peer` on `port`.
#[allow(clippy::too_many_arguments)]
fn policy_allows(
    docs: &[Value],
    direction: &str,
    namespace: &str,
    labels: &[(&str, &str)],
    pod: &Value,
    peer: Peer<'_>,
    port: u16,
    protocol: &str,
) -> bool {
    let (rules_key, peers_key) = match direction {
        "Ingress" => ("ingress", "from"),
        _ => ("egress", "to"),
    };
    let named = |name: &str| -> Option<u16> {
        // A named port is the protected pod's (ingress); egress names are not used here.
        assert_eq!(direction, "Ingress", "a named egress port ({name})");
        target_port(&Value::from(name), pod)
    };
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["namespace"] == namespace)
        .filter(|p| {
            known_fields(
                &p["spec"],
                &["podSelector", "policyTypes", "ingress", "egress"],
                "a policy",
            );
            let types = match p["spec"]["policyTypes"].as_array() {
                Some(_) => strings(&p["spec"]["policyTypes"]),
                None if p["spec"]["egress"].is_array() => BTreeSet::from(["Ingress", "Egress"]),
                None => BTreeSet::from(["Ingress"]),
            };
            types.contains(direction) && selects(&p["spec"]["podSelector"], labels)
        })
        .collect();
    if policies.is_empty() {
        return true; // a pod no policy isolates
    }
    policies.iter().any(|p| {
        p["spec"][rules_key]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                known_fields(rule, &[peers_key, "ports"], "a policy rule");
                let peers = rule[peers_key].as_array().filter(|l| !l.is_empty());
                let ports = rule["ports"].as_array().filter(|l| !l.is_empty());
                peers.is_none_or(|l| l.iter().any(|e| peer_matches(e, namespace, peer)))
                    && ports
                        .is_none_or(|l| l.iter().any(|e| port_matches(e, port, protocol, &named)))
            })
    })
}

/// A Deployment's pod spec and its labels.
fn pod_and_labels<'a>(
    docs: &'a [Value],
    name: &str,
) -> anyhow::Result<(&'a Value, Vec<(&'a str, &'a str)>)> {
    let template = &find(docs, "Deployment", name)?["spec"]["template"];
    let labels = template["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        .collect();
    Ok((&template["spec"], labels))
}

/// The NetworkPolicies, read as a CNI reads them: the controller's gRPC port only from
/// the proxy pods, every metrics port only from the monitoring namespace, the proxies'
/// client ports (the HTTP listener, every port the zenvoy-proxy Service sends clients
/// to, any other TCP listener) from anyone; the controller reaches the API server and
/// DNS and nothing else, the proxies anything.
#[test]
fn network_policies_admit_exactly_the_intended_peers() -> anyhow::Result<()> {
    let docs = install()?;
    let config = zenvoy_config(&docs)?;
    let (controller, controller_labels) = pod_and_labels(&docs, "zenvoy-controller")?;
    let (proxy, proxy_labels) = pod_and_labels(&docs, "zenvoy-proxy")?;
    let stranger = [("app.kubernetes.io/name", "something-else")];
    let prometheus = [("app.kubernetes.io/name", "prometheus")];
    let peers = [
        (
            "proxy",
            Peer::Pod {
                namespace: NAMESPACE,
                labels: &proxy_labels,
            },
        ),
        (
            "neighbour",
            Peer::Pod {
                namespace: NAMESPACE,
                labels: &stranger,
            },
        ),
        (
            "other namespace",
            Peer::Pod {
                namespace: "shop",
                labels: &stranger,
            },
        ),
        (
            "monitoring",
            Peer::Pod {
                namespace: "monitoring",
                labels: &prometheus,
            },
        ),
        ("outside", Peer::Outside),
    ];
    let everyone: Vec<&str> = peers.iter().map(|(name, _)| *name).collect();
    let named = |pod: &Value, name: &str| {
        target_port(&Value::from(name), pod).with_context(|| format!("no port {name}"))
    };
    let mut wrong = Vec::new();
    let mut ingress =
        |what: &str, pod: &Value, labels: &[(&str, &str)], port: u16, allowed: &[&str]| {
            for (name, peer) in peers {
                let got =
                    policy_allows(&docs, "Ingress", NAMESPACE, labels, pod, peer, port, "TCP");
                if got != allowed.contains(&name) {
                    let verdict = if got { "admitted" } else { "refused" };
                    wrong.push(format!("{what} (port {port}) from {name}: {verdict}"));
                }
            }
        };
    ingress(
        "the controller's gRPC",
        controller,
        &controller_labels,
        config.controller.listen.port(),
        &["proxy"],
    );
    ingress(
        "the controller's admin",
        controller,
        &controller_labels,
        config.controller.admin.port(),
        &["monitoring"],
    );
    for (what, port) in [
        ("Envoy's metrics listener", named(proxy, "envoy-metrics")?),
        ("the holder's admin", named(proxy, "holder-admin")?),
    ] {
        ingress(what, proxy, &proxy_labels, port, &["monitoring"]);
    }
    let http = config
        .http
        .as_ref()
        .context("no http.listen")?
        .listen
        .port();
    ingress("the HTTP listener", proxy, &proxy_labels, http, &everyone);
    // A TCP Service's listener, on whatever port it is given.
    for port in [22, 5432, 6379, 27017] {
        ingress("a TCP listener", proxy, &proxy_labels, port, &everyone);
    }
    for port in proxy_ports(&demo()?)? {
        ingress(
            "the demo's zenvoy-proxy Service",
            proxy,
            &proxy_labels,
            port,
            &everyone,
        );
    }

    let egress = |labels: &[(&str, &str)], pod: &Value, peer, port: u16, protocol: &str| {
        policy_allows(
            &docs, "Egress", NAMESPACE, labels, pod, peer, port, protocol,
        )
    };
    let shop = Peer::Pod {
        namespace: "shop",
        labels: &stranger,
    };
    for (to, peer, port, protocol, allowed) in [
        ("the API server", Peer::Outside, 443, "TCP", true),
        ("the API server", Peer::Outside, 6443, "TCP", true),
        ("DNS", Peer::Outside, 53, "UDP", true),
        ("DNS", Peer::Outside, 53, "TCP", true),
        ("a web server outside", Peer::Outside, 80, "TCP", false),
        ("a pod of another namespace", shop, 5432, "TCP", false),
    ] {
        let got = egress(&controller_labels, controller, peer, port, protocol);
        if got != allowed {
            wrong.push(format!(
                "the controller to {to} ({port}/{protocol}): allowed {got}"
            ));
        }
    }
    // The proxies reach the opted-in Services' pods, wherever they are.
    if !egress(&proxy_labels, proxy, shop, 5432, "TCP") {
        wrong.push("a proxy cannot reach a pod of another namespace".into());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// The monitoring namespace is a parameter: one patch in the operator's kustomization
/// (the one docs/kubernetes.md shows) moves every metrics port to another namespace.
#[test]
fn the_monitoring_namespace_is_one_patch_away() -> anyhow::Result<()> {
    // kustomize takes another kustomization only by a relative path, so the overlay
    // lives under the workspace.
    let target = workspace_root().join("target");
    std::fs::create_dir_all(&target)?;
    let overlay = tempfile::Builder::new()
        .prefix("zenvoy-overlay-")
        .tempdir_in(target)?;
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        "resources:\n  - ../../deploy/base\npatches:\n  - target: { kind: NetworkPolicy, name: zenvoy-monitoring }\n    patch: |-\n      - op: replace\n        path: /spec/ingress/0/from/0/namespaceSelector/matchLabels\n        value: { kubernetes.io/metadata.name: prometheus }\n",
    )?;
    let (_, docs) = render(overlay.path())?;
    let (proxy, labels) = pod_and_labels(&docs, "zenvoy-proxy")?;
    let (controller, controller_labels) = pod_and_labels(&docs, "zenvoy-controller")?;
    let scraper = [("app.kubernetes.io/name", "prometheus")];
    for (namespace, allowed) in [("prometheus", true), ("monitoring", false)] {
        let peer = Peer::Pod {
            namespace,
            labels: &scraper,
        };
        for (pod, labels, port) in [
            (proxy, &labels, "envoy-metrics"),
            (proxy, &labels, "holder-admin"),
            (controller, &controller_labels, "admin"),
        ] {
            let port = target_port(&Value::from(port), pod).context("port")?;
            assert_eq!(
                policy_allows(&docs, "Ingress", NAMESPACE, labels, pod, peer, port, "TCP"),
                allowed,
                "port {port} from a pod in {namespace}"
            );
        }
    }
    Ok(())
}

// ---- the namespaced install --------------------------------------------------------

/// deploy/namespaced/ is deploy/ without cluster-wide RBAC: no ClusterRole or
/// ClusterRoleBinding, one Role per `--namespace` the controller is given, each
/// granting there what the ClusterRole grants everywhere. (e2e/tests/kubernetes.rs
/// runs a controller against these Roles.)
#[test]
fn the_namespaced_install_grants_per_namespace_what_the_cluster_wide_one_grants(
) -> anyhow::Result<()> {
    let cluster = install()?;
    let (_, namespaced) = render(&workspace_root().join("deploy/namespaced"))?;
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        assert!(
            !namespaced.iter().any(|d| d["kind"] == kind),
            "deploy/namespaced has a {kind}"
        );
    }
    let everywhere = &find(&cluster, "ClusterRole", "zenvoy-controller")?["rules"];
    let controller = container(pod_of(&namespaced, "zenvoy-controller")?, "controller")?;
    let watched = args_of(controller, "--namespace");
    assert!(
        !watched.is_empty(),
        "deploy/namespaced watches no namespace"
    );
    for ns in &watched {
        let binding = namespaced
            .iter()
            .find(|d| {
                d["kind"] == "RoleBinding"
                    && d["metadata"]["namespace"] == *ns
                    && d["subjects"].as_array().is_some_and(|s| {
                        s.iter().any(|s| {
                            s["kind"] == "ServiceAccount"
                                && s["name"] == "zenvoy-controller"
                                && s["namespace"] == NAMESPACE
                        })
                    })
            })
            .with_context(|| format!("no RoleBinding for zenvoy-controller in {ns}"))?;
        assert_eq!(binding["roleRef"]["kind"], "Role", "{ns}");
        let role = namespaced
            .iter()
            .find(|d| {
                d["kind"] == "Role"
                    && d["metadata"]["namespace"] == *ns
                    && d["metadata"]["name"] == binding["roleRef"]["name"]
            })
            .with_context(|| format!("no Role {} in {ns}", binding["roleRef"]["name"]))?;
        assert_eq!(
            &role["rules"], everywhere,
            "the Role in {ns} and the cluster-wide ClusterRole differ"
        );
    }
    Ok(())
}
