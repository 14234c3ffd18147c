//! A zenvoy stack in Kubernetes mode: the fake API server and simulated kubelet
//! ([`zenvoy_fake_kube`]), one or more `zenvoy-controller --kubernetes` replicas, a real
//! holder and a real Envoy. Services, workloads and the ConfigMap are objects in the
//! fake API, written by the test as an operator would with kubectl.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use zenvoy_fake_kube::{FakeApi, Kubelet, KubeletOptions};
use zenvoy_test_support::process::Proc;
use zenvoy_test_support::{bin, free_port, http_get, metric_value, wait};

use crate::envoy::{self, Envoy};
use crate::stack::{addr, address_file};

/// Where the controllers' ConfigMap and Lease live.
pub const NAMESPACE: &str = "zenvoy";
pub const CONFIGMAP: &str = "zenvoy";
pub const LEASE: &str = "zenvoy-controller";

#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// YAML lines under `defaults:` in the ConfigMap's document.
    pub defaults: Vec<String>,
    /// How long the kubelet takes to start a pod.
    pub start_delay: Duration,
    pub lease_duration: Duration,
    /// Envoy stats flush interval.
    pub flush: Duration,
    /// Scrape mode: every controller reads Envoy's and the holder's stats pages (how
    /// several replicas all see the same activity); else both push to controller 0.
    pub scrape: Option<Duration>,
    /// The shared Host-routed HTTP listener (`http.listen`, port chosen by the OS).
    pub http: bool,
    /// `--namespace` for the controllers (all namespaces when empty).
    pub namespaces: Vec<String>,
    /// Top-level YAML appended to the ConfigMap's document (e.g. an `inCluster:` section).
    pub extra_config: Vec<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            defaults: vec!["idleTimeout: 3s".into(), "holdTimeout: 30s".into()],
            start_delay: Duration::from_millis(300),
            lease_duration: Duration::from_secs(4),
            flush: Duration::from_millis(500),
            scrape: None,
            http: false,
            namespaces: Vec::new(),
            extra_config: Vec::new(),
        }
    }
}

/// One controller replica. Its identity is also its API token, so the fake API's
/// request log tells which replica wrote what.
#[derive(Debug)]
pub struct Controller {
    pub identity: String,
    pub proc: Proc,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Controller {
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let page = http_get(&format!("http://{}/metrics", self.admin)).await?;
        Ok(metric_value(&page, series).unwrap_or(0.0))
    }

    /// Wait until `series` reads at least `want`.
    pub async fn wait_metric(
        &self,
        series: &str,
        want: f64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("{series} on {} to reach {want}", self.identity);
        wait::until(&what, timeout, || async {
            Ok((self.metric(series).await? >= want).then_some(()))
        })
        .await
    }
}

/// Drop order is field order: Envoy, holder, controllers, kubelet (stops the pods), API.
pub struct KubeStack {
    pub envoy: Envoy,
    pub holder: Proc,
    pub controllers: Vec<Controller>,
    pub kubelet: Kubelet,
    pub api: FakeApi,
    pub opts: KubeOptions,
    pub holder_listen: SocketAddr,
    pub envoy_admin: SocketAddr,
    pub holder_admin: SocketAddr,
    /// Pods listening on these ports answer HTTP (`zenvoy-echo --http`) instead of echoing.
    pub http_ports: Arc<Mutex<HashSet<u16>>>,
    pub dir: tempfile::TempDir,
}

/// The ConfigMap's document.
pub fn config_document(
    opts: &KubeOptions,
    holder: SocketAddr,
    envoy_admin: SocketAddr,
    holder_admin: SocketAddr,
) -> String {
    let mut y = format!(
        "controller:\n  listen: 127.0.0.1:0\n  admin: 127.0.0.1:0\nholder:\n  address: {holder}\n"
    );
    if opts.http {
        y.push_str("http:\n  listen: 127.0.0.1:0\n");
    }
    if let Some(interval) = opts.scrape {
        y.push_str(&format!(
            "scrape:\n  interval: {}ms\n  targets:\n    - name: envoy-1\n      url: http://{envoy_admin}/stats/prometheus\n    - name: holder-1\n      url: http://{holder_admin}/metrics\n",
            interval.as_millis()
        ));
    }
    y.push_str("defaults:\n");
    for d in &opts.defaults {
        y.push_str(&format!("  {d}\n"));
    }
    for line in &opts.extra_config {
        y.push_str(line);
        y.push('\n');
    }
    y
}

/// The proxies' own Service `zenvoy-proxy` in `namespace` and its EndpointSlice: one
/// ready proxy at `address`. Without a selector, as the simulated kubelet runs no proxy
/// pods; its slice is then the mirroring controller's (in a cluster the EndpointSlice
/// controller writes the same from the proxy pods). What `inCluster.proxy` points at.
pub fn proxy_objects(namespace: &str, address: &str) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "zenvoy-proxy", "namespace": namespace},
               "spec": {"ports": [{"name": "holder", "port": 15001}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "zenvoy-proxy-abcde", "namespace": namespace,
                            "labels": {"kubernetes.io/service-name": "zenvoy-proxy",
                                       "endpointslice.kubernetes.io/managed-by": "endpointslice-mirroring-controller.k8s.io"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
               "ports": [{"name": "holder", "port": 15001, "protocol": "TCP"}]}),
    ]
}

pub fn configmap(document: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
        "data": {"zenvoy.yaml": document},
    })
}

/// A workload for the kubelet: `replicas` pods of zenvoy-echo on `port`, labelled
/// `app: <name>`.
pub fn workload(
    kind: &str,
    namespace: &str,
    name: &str,
    replicas: i32,
    port: u16,
    annotations: &[(&str, &str)],
) -> Value {
    // Opted in unless the caller says otherwise: zenvoy scales only workloads that carry
    // the opt-in themselves.
    let mut annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    annotations
        .entry("zenvoy.io/enabled")
        .or_insert_with(|| Value::from("true"));
    json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "echo", "image": "zenvoy-echo", "ports": [{"containerPort": port}]}]},
            },
        },
    })
}

/// A Service selecting `app: <name>` on `port`, with `annotations`.
pub fn service(namespace: &str, name: &str, port: u16, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "tcp", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    })
}

/// Opt-in annotations with Envoy's listener on a port the OS picks.
pub const OPT_IN: [(&str, &str); 2] = [
    ("zenvoy.io/enabled", "true"),
    ("zenvoy.io/listen", "127.0.0.1:0"),
];

impl KubeStack {
    /// Start the fake API and kubelet, `controllers` replicas (controller 0 first, and
    /// the others once it leads, so replica 0 is the first leader), and the holder and
    /// Envoy, each given every replica (only the leader accepts their streams).
    pub async fn start(opts: KubeOptions, controllers: usize) -> anyhow::Result<KubeStack> {
        let dir = tempfile::Builder::new().prefix("zenvoy-kube-").tempdir()?;
        let d = dir.path().to_path_buf();
        let api = FakeApi::start().await?;
        let echo = bin("zenvoy-echo")?;
        let http_ports: Arc<Mutex<HashSet<u16>>> = Arc::default();
        let http = http_ports.clone();
        let kubelet = Kubelet::start(
            &api,
            KubeletOptions::new(opts.start_delay, move |addr: SocketAddr| {
                let mut c = Command::new(&echo);
                c.arg("--listen").arg(addr.to_string());
                if http.lock().is_ok_and(|p| p.contains(&addr.port())) {
                    c.arg("--http");
                }
                c
            }),
        );
        let holder_listen = free_port()?;
        let envoy_admin = free_port()?;
        let holder_admin = free_port()?;
        api.put(configmap(&config_document(
            &opts,
            holder_listen,
            envoy_admin,
            holder_admin,
        )))?;

        let mut stack_controllers = Vec::new();
        for i in 0..controllers {
            let c =
                spawn_controller(&api, &d, &format!("controller-{i}"), free_port()?, &opts).await?;
            if i == 0 {
                wait_leader(&api, &c.identity, opts.lease_duration * 3).await?;
            }
            stack_controllers.push(c);
        }
        let urls: Vec<String> = stack_controllers
            .iter()
            .map(|c| format!("http://{}", c.grpc))
            .collect();

        let mut cmd = Command::new(bin("zenvoy-holder")?);
        cmd.arg("--listen")
            .arg(holder_listen.to_string())
            .arg("--admin")
            .arg(holder_admin.to_string())
            .args(["--node-id", "holder-1"])
            .arg("--controller")
            .arg(urls.join(","))
            .arg("--address-file")
            .arg(d.join("holder.json"))
            .args(opts.scrape.map(|_| "--no-push"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let mut holder = Proc::spawn("holder", cmd, Some(&d.join("holder.log")))?;
        address_file("holder address file", &d.join("holder.json"), &mut holder).await?;

        let grpc = stack_controllers[0].grpc;
        let mut boot = match opts.scrape {
            Some(_) => {
                envoy::bootstrap_without_push("envoy-1", grpc, envoy_admin.port(), opts.flush)
            }
            None => envoy::bootstrap("envoy-1", grpc, envoy_admin.port(), opts.flush),
        };
        // Every replica in the controller cluster, and quick reconnects: a refused or
        // ended stream is retried (on the next host) within a second.
        let hosts: Vec<Value> = stack_controllers
            .iter()
            .map(|c| json!({"endpoint": {"address": {"socket_address": {"address": c.grpc.ip().to_string(), "port_value": c.grpc.port()}}}}))
            .collect();
        boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
            ["lb_endpoints"] = Value::from(hosts);
        boot["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["retry_policy"] =
            json!({"retry_back_off": {"base_interval": "0.25s", "max_interval": "1s"}});
        let envoy = Envoy::start(&d, "envoy", &boot, Some(&d.join("envoy.log"))).await?;
        Ok(KubeStack {
            envoy,
            holder,
            controllers: stack_controllers,
            kubelet,
            api,
            opts,
            holder_listen,
            envoy_admin,
            holder_admin,
            http_ports,
            dir,
        })
    }

    /// Kill controller `i` (SIGKILL: no Lease release, no goodbye) and start it again
    /// with the same identity and gRPC address.
    pub async fn restart_controller(&mut self, i: usize) -> anyhow::Result<()> {
        let old = &mut self.controllers[i];
        old.proc.kill();
        let (identity, grpc) = (old.identity.clone(), old.grpc);
        let c = spawn_controller(&self.api, self.dir.path(), &identity, grpc, &self.opts).await?;
        self.controllers[i] = c;
        Ok(())
    }

    /// Where clients connect for zenvoy service `name` (`<service>.<namespace>`), once
    /// Envoy has its listener. The controller publishes a new service's listener only
    /// once the Envoys have its cluster warm (Envoy closes connections to a warming
    /// cluster): checked here, at the moment the listener is seen.
    pub async fn listener(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let what = format!("Envoy listener {name}");
        let addr = wait::until(&what, Duration::from_secs(20), || async {
            Ok(self.envoy.listener(name).await.ok())
        })
        .await?;
        let hosts = self.envoy.cluster_hosts(name).await?;
        anyhow::ensure!(
            !hosts.is_empty(),
            "listener {name} is active before its cluster is warm"
        );
        Ok(addr)
    }

    /// `spec.replicas` of a workload.
    pub fn replicas(&self, kind: &str, namespace: &str, name: &str) -> Option<i64> {
        self.api
            .get("apps/v1", kind, namespace, name)
            .and_then(|w| w["spec"]["replicas"].as_i64())
    }

    pub async fn wait_replicas(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        want: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("{kind} {namespace}/{name} at {want} replicas");
        wait::until(&what, timeout, || async {
            Ok((self.replicas(kind, namespace, name) == Some(want)).then_some(()))
        })
        .await
    }

    /// Wait for an events.k8s.io Event in `namespace` with `reason` (about the object
    /// named `regarding`, when given); returns it.
    pub async fn wait_event(
        &self,
        namespace: &str,
        reason: &str,
        regarding: Option<&str>,
    ) -> anyhow::Result<Value> {
        let what = format!("a {reason} Event in {namespace}");
        wait::until(&what, Duration::from_secs(20), || async {
            Ok(self
                .api
                .list("events.k8s.io/v1", "Event", Some(namespace))
                .into_iter()
                .find(|e| {
                    e["reason"] == reason && regarding.is_none_or(|r| e["regarding"]["name"] == r)
                }))
        })
        .await
    }

    /// Writes to any `/scale` subresource, as (token, path) in order.
    pub fn scale_writes(&self) -> Vec<(String, String)> {
        self.api
            .requests()
            .into_iter()
            .filter(|r| {
                r.path.ends_with("/scale")
                    && matches!(r.method.as_str(), "PATCH" | "PUT")
                    && r.status < 300
            })
            .map(|r| (r.token.clone().unwrap_or_default(), r.path.clone()))
            .collect()
    }

    /// Log tails of every process, for a failure message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for c in &self.controllers {
            s.push_str(&c.proc.log_tail(40));
        }
        s.push_str(&self.holder.log_tail(20));
        s
    }
}

/// Start `zenvoy-controller --kubernetes` as `identity` (also its API token).
pub async fn spawn_controller(
    api: &FakeApi,
    dir: &Path,
    identity: &str,
    grpc: SocketAddr,
    opts: &KubeOptions,
) -> anyhow::Result<Controller> {
    let lease = opts.lease_duration;
    let kubeconfig: PathBuf = api.kubeconfig(dir, identity)?;
    let address_path = dir.join(format!("{identity}.json"));
    let _ = std::fs::remove_file(&address_path);
    let mut cmd = Command::new(bin("zenvoy-controller")?);
    cmd.arg("--kubernetes")
        .arg(format!("{NAMESPACE}/{CONFIGMAP}"))
        .arg("--identity")
        .arg(identity)
        .arg("--lease-duration")
        .arg(format!("{}ms", lease.as_millis()))
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--admin")
        .arg("127.0.0.1:0")
        .arg("--address-file")
        .arg(&address_path)
        .args(opts.namespaces.iter().map(|n| format!("--namespace={n}")))
        .env("KUBECONFIG", &kubeconfig)
        // kube applies HTTP(S)_PROXY even to an http://127.0.0.1 cluster, and without its
        // http-proxy feature fails to build the client: the fake is local.
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
        );
    let log = dir.join(format!("{identity}.log"));
    let mut proc = Proc::spawn(identity, cmd, Some(&log))?;
    let a = address_file("controller address file", &address_path, &mut proc).await?;
    Ok(Controller {
        identity: identity.to_string(),
        grpc: addr(&a, "grpc")?,
        admin: addr(&a, "admin")?,
        proc,
    })
}

/// The Lease's holder, if any.
pub fn lease_holder(api: &FakeApi) -> Option<String> {
    api.get("coordination.k8s.io/v1", "Lease", NAMESPACE, LEASE)
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

pub async fn wait_leader(
    api: &FakeApi,
    identity: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = tokio::time::Instant::now();
    let what = format!("{identity} to hold the Lease");
    wait::until(&what, timeout, || async {
        Ok((lease_holder(api).as_deref() == Some(identity)).then_some(()))
    })
    .await?;
    Ok(started.elapsed())
}

/// One API request as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub group: String,
    /// `deployments`, or `deployments/scale` for a subresource.
    pub resource: String,
    pub verb: String,
    pub namespace: Option<String>,
    /// The object's name (or a list's `metadata.name` field selector).
    pub name: Option<String>,
}

/// What RBAC would check for a request the fake API served.
/// The EndpointSlice verbs `deploy/base/rbac.yaml` grants for `inCluster` alone (the
/// controller's own slices); a front-door run never uses them, the in-cluster test does.
pub const IN_CLUSTER_SLICE_VERBS: &[&str] = &["create", "patch", "delete"];

/// Whether `verb` of `rule` is one granted for `inCluster` alone: the controller's own
/// slices, and the `zenvoy-ports` ConfigMap (created, read and patched).
pub fn in_cluster_only(rule: &Value, verb: &str) -> bool {
    let configmaps = rule["resources"] == serde_json::json!(["configmaps"]);
    (rule["resources"] == serde_json::json!(["endpointslices"])
        && IN_CLUSTER_SLICE_VERBS.contains(&verb))
        || (configmaps && rule["resourceNames"] == serde_json::json!(["zenvoy-ports"]))
        || (configmaps && rule["resourceNames"].is_null() && verb == "create")
}

pub fn access(method: &str, path: &str, query: &str) -> Option<Access> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [r] => (r.to_string(), None),
        [r, n] => (r.to_string(), Some(n.to_string())),
        [r, n, sub] => (format!("{r}/{sub}"), Some(n.to_string())),
        _ => return None,
    };
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let watch = params
        .iter()
        .any(|(k, v)| *k == "watch" && (*v == "true" || *v == "1"));
    let by_name = params.iter().find_map(|(k, v)| {
        (*k == "fieldSelector")
            .then(|| v.replace("%3D", "=").replace("%3d", "="))
            .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_string))
    });
    let verb = match (method, &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => return None,
    };
    Some(Access {
        group,
        resource,
        verb: verb.to_string(),
        namespace,
        name: name.or(by_name),
    })
}

/// The rules of `deploy/base/rbac.yaml`: (rule, namespaced to the controller's namespace).
pub fn rbac_rules(path: &Path) -> anyhow::Result<Vec<(Value, bool)>> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path)?;
    let mut rules = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc)?;
        let namespaced = match v["kind"].as_str() {
            Some("ClusterRole") => false,
            Some("Role") => true,
            _ => continue,
        };
        for r in v["rules"].as_array().into_iter().flatten() {
            rules.push((r.clone(), namespaced));
        }
    }
    Ok(rules)
}

fn has(list: &Value, item: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|x| x == item || x == "*"))
}

/// Whether `rule` allows `a` (Role rules only in `own_namespace`).
pub fn allows(rule: &Value, namespaced: bool, a: &Access, own_namespace: &str) -> bool {
    if namespaced && a.namespace.as_deref() != Some(own_namespace) {
        return false;
    }
    let names_ok = match rule["resourceNames"].as_array() {
        None => true,
        Some(_) => a
            .name
            .as_deref()
            .is_some_and(|n| has(&rule["resourceNames"], n)),
    };
    has(&rule["apiGroups"], &a.group)
        && has(&rule["resources"], &a.resource)
        && has(&rule["verbs"], &a.verb)
        && names_ok
}

/// `kubectl kustomize dir` with the venv's kubectl: an install's objects as the API
/// server would receive them (namespaces set, patches applied).
pub fn kustomize(dir: &Path) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let kubectl = zenvoy_test_support::workspace_root().join(".venv/bin/kubectl");
    anyhow::ensure!(
        kubectl.exists(),
        "{} is missing: run `make setup`",
        kubectl.display()
    );
    let out = Command::new(kubectl).arg("kustomize").arg(dir).output()?;
    anyhow::ensure!(
        out.status.success(),
        "kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    serde_norway::Deserializer::from_str(&text)
        .map(|d| -> anyhow::Result<Value> { Ok(Value::deserialize(d)?) })
        .collect()
}

/// One RBAC rule as it reaches a ServiceAccount: through which role, and where.
#[derive(Debug, Clone)]
pub struct Grant {
    pub rule: Value,
    /// The namespace a RoleBinding grants it in; `None` for a ClusterRoleBinding: every
    /// namespace, and requests at cluster scope.
    pub namespace: Option<String>,
    /// `Role namespace/name` or `ClusterRole name`, for messages.
    pub role: String,
}

/// The rules of role `kind` `name` (a Role in `namespace`) among `docs`.
fn role_rules<'a>(
    docs: &'a [Value],
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> Option<&'a Vec<Value>> {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && (namespace.is_none() || d["metadata"]["namespace"].as_str() == namespace)
        })
        .and_then(|d| d["rules"].as_array())
}

/// Every rule a rendered install (`docs`, e.g. from [`kustomize`]) grants the
/// ServiceAccount `sa_namespace/sa_name`: Roles and ClusterRoles bound by a RoleBinding
/// apply in that binding's namespace, ClusterRoles bound by a ClusterRoleBinding
/// everywhere. A binding to a role the install lacks is an error.
pub fn rbac_grants(
    docs: &[Value],
    sa_namespace: &str,
    sa_name: &str,
) -> anyhow::Result<Vec<Grant>> {
    let names_the_account = |b: &Value| {
        b["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == sa_name
                    && s["namespace"] == sa_namespace
            })
        })
    };
    let mut grants = Vec::new();
    for binding in docs.iter().filter(|d| names_the_account(d)) {
        let binding_name = binding["metadata"]["name"].as_str().unwrap_or("?");
        let namespace = match binding["kind"].as_str() {
            Some("RoleBinding") => Some(
                binding["metadata"]["namespace"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("RoleBinding {binding_name} has no namespace"))?
                    .to_string(),
            ),
            Some("ClusterRoleBinding") => None,
            _ => continue,
        };
        let ref_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let ref_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let (rules, role) = match (ref_kind, namespace.as_deref()) {
            ("Role", Some(ns)) => (
                role_rules(docs, "Role", Some(ns), ref_name),
                format!("Role {ns}/{ref_name}"),
            ),
            ("ClusterRole", _) => (
                role_rules(docs, "ClusterRole", None, ref_name),
                format!("ClusterRole {ref_name}"),
            ),
            _ => anyhow::bail!("binding {binding_name}: cannot bind a {ref_kind:?} here"),
        };
        let rules = rules.ok_or_else(|| {
            anyhow::anyhow!("binding {binding_name} names {role}, which the install lacks")
        })?;
        grants.extend(rules.iter().map(|rule| Grant {
            rule: rule.clone(),
            namespace: namespace.clone(),
            role: role.clone(),
        }));
    }
    Ok(grants)
}

/// Whether `grant` allows `a`; `namespace_of` maps the install's namespaces to the
/// ones the fake API was given (the install's own is [`NAMESPACE`] there).
pub fn grant_allows(grant: &Grant, a: &Access, namespace_of: &dyn Fn(&str) -> String) -> bool {
    if let Some(ns) = &grant.namespace {
        if a.namespace.as_deref() != Some(namespace_of(ns).as_str()) {
            return false;
        }
    }
    allows(&grant.rule, false, a, "")
}
