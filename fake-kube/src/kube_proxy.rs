//! A stand-in for kube-proxy (its nftables mode) for the fake API server: it watches
//! Services and EndpointSlices and programs real DNAT rules in a network namespace, so a
//! client there that connects to a Service's ClusterIP reaches one of the Service's ready
//! endpoints, whoever wrote the slice that lists it (the fake kubelet standing in for the
//! EndpointSlice controller, or zenvoy's controller while the Service is parked).
//!
//! ```text
//!  FakeApi --changes--> KubeProxy (Services, EndpointSlices) --nft -f--> table ip zenvoy_kube_proxy
//!                                                                          in the node namespace
//!  client --> 10.96.0.10:5432 --nat output: DNAT to a random ready endpoint--> pod / zenvoy proxy
//! ```
//!
//! What it does, as kube-proxy does:
//! - Every port of every Service with an IPv4 `spec.clusterIP` (not `None`, not
//!   ExternalName): TCP, UDP and SCTP.
//! - Its endpoints are merged from every IPv4 EndpointSlice labelled
//!   `kubernetes.io/service-name: <service>` in the Service's namespace, whatever its
//!   `endpointslice.kubernetes.io/managed-by`: an endpoint's port is the slice port whose
//!   `name` (and protocol) is the Service port's (`""` when unnamed), its address the first
//!   of `addresses`. The same address and port from two slices is one endpoint. The
//!   Service's `targetPort` plays no part here: the EndpointSlice controller resolves it.
//! - Ready endpoints (`conditions.ready`, absent meaning true); when none is ready, the
//!   serving terminating ones; when none of those either, new connections are refused
//!   (with a TCP reset: kube-proxy's ICMP port unreachable, tried here, left a local
//!   client's connect hanging).
//! - A new connection to a ClusterIP on a port no Service port exposes is refused too.
//! - The table is rebuilt whole, in one `nft -f` transaction, after every change.
//!   Established connections keep their endpoint (conntrack), as with kube-proxy.
//! - DNAT in the `nat` `output` hook (clients in the namespace) and `prerouting` hook
//!   (clients routed through it), to one endpoint at random (`numgen random`).
//!
//! Simplified: it reads the fake's committed changes in-process (a list, then every change
//! in resourceVersion order, as a watch would deliver them), so it keeps seeing writes
//! while the fake plays an outage; no session affinity, traffic policies, NodePorts,
//! load balancers, masquerading or IPv6. It makes ClusterIPs routable in the namespace
//! (`SERVICE_CIDR` routed to `lo`), which a node's default route does for kube-proxy.
//!
//! Addresses: the fake kubelet gives pods `127.A.B.n`, which every namespace's `lo`
//! serves, so a node test runs the whole harness inside one namespace
//! ([`Netns::block_on`](zenvoy_test_support::netns::Netns::block_on)): DNAT from the
//! `output` hook to a loopback address needs nothing more.
//!
//! Needs what [`zenvoy_test_support::netns`] needs, and the kernel's nftables NAT
//! (`nft_nat`, `nft_numgen`, `nft_reject`): [`available`] checks both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use zenvoy_test_support::netns::{self, Netns};

use crate::{Change, ChangeKind, FakeApi};

/// The nftables table it owns (family `ip`).
pub const TABLE: &str = "zenvoy_kube_proxy";
/// Routed to `lo` in the namespace so that connecting to a ClusterIP in it gets as far as
/// the `output` hook. Kubernetes' default service CIDR.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Priorities as kube-proxy's: the endpoint check before DNAT, the ClusterIP check after.
const PRE_DNAT: i32 = -110;
const DNAT: i32 = -100;
const POST_DNAT: i32 = -90;
/// A failed load is tried again this often while nothing changes.
const RETRY: Duration = Duration::from_millis(500);
/// How long one `nft -f` may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// nftables' limit on a comment, in bytes (NFT_USERDATA_MAXLEN).
const COMMENT_MAX: usize = 127;

/// One Service port as it is programmed: new connections to `cluster_ip:port` go to one of
/// `endpoints` at random, or are refused when there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    /// The port's `name`, `""` when unnamed: what EndpointSlice ports are matched by.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Sorted, each once.
    pub endpoints: Vec<SocketAddr>,
}

impl ServicePort {
    fn proto(&self) -> String {
        self.protocol.to_ascii_lowercase()
    }

    /// Unique in a table (a Service's ports differ in port or protocol); `/` cannot occur
    /// in a namespace or Service name, and nft takes it in a chain name.
    fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.service,
            self.proto(),
            self.port
        )
    }

    fn describe(&self) -> String {
        let name = if self.name.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.name)
        };
        format!(
            "{}/{}:{}/{}{name}",
            self.namespace, self.service, self.port, self.protocol
        )
    }
}

fn meta<'a>(o: &'a Value, field: &str) -> Option<&'a str> {
    o.get("metadata")?.get(field)?.as_str()
}

/// What kube-proxy would program for `services` given `slices` (both as the API serves
/// them), in namespace, name, port and protocol order.
pub fn service_ports(services: &[Value], slices: &[Value]) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for svc in services {
        let (Some(namespace), Some(service)) = (meta(svc, "namespace"), meta(svc, "name")) else {
            continue;
        };
        if svc["spec"]["type"] == "ExternalName" {
            continue;
        }
        // `None` (headless), empty and IPv6 addresses do not parse.
        let Some(cluster_ip) = svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let own: Vec<&Value> = slices
            .iter()
            .filter(|s| {
                meta(s, "namespace") == Some(namespace)
                    && s["metadata"]["labels"][SERVICE_NAME_LABEL].as_str() == Some(service)
                    && s["addressType"].as_str().is_none_or(|t| t == "IPv4")
            })
            .collect();
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let Some(port) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
                continue;
            };
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
                continue;
            }
            let name = p["name"].as_str().unwrap_or("");
            out.push(ServicePort {
                namespace: namespace.to_string(),
                service: service.to_string(),
                name: name.to_string(),
                protocol: protocol.to_string(),
                cluster_ip,
                port,
                endpoints: endpoints(&own, name, protocol),
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.namespace, &a.service, a.port, &a.protocol).cmp(&(
            &b.namespace,
            &b.service,
            b.port,
            &b.protocol,
        ))
    });
    out
}

/// The endpoints of one Service port across its slices: the ready ones, or when none is
/// ready the serving terminating ones.
fn endpoints(slices: &[&Value], port_name: &str, protocol: &str) -> Vec<SocketAddr> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        let port = slice["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|sp| {
                sp["name"].as_str().unwrap_or("") == port_name
                    && sp["protocol"].as_str().unwrap_or("TCP") == protocol
            })
            .and_then(|sp| sp["port"].as_u64())
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0);
        let Some(port) = port else {
            continue;
        };
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            let Some(ip) = ep["addresses"][0]
                .as_str()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let addr = SocketAddr::from((ip, port));
            let conditions = &ep["conditions"];
            let is_ready = conditions["ready"].as_bool().unwrap_or(true);
            let serving = conditions["serving"].as_bool().unwrap_or(is_ready);
            let is_terminating = conditions["terminating"].as_bool().unwrap_or(false);
            if is_ready {
                ready.insert(addr);
            } else if serving && is_terminating {
                terminating.insert(addr);
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}

/// `"text"` without quotes inside, cut to what nftables keeps.
fn comment(text: &str) -> String {
    let mut t: String = text.chars().filter(|c| *c != '"').collect();
    let mut end = t.len().min(COMMENT_MAX);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    t.truncate(end);
    format!("\"{t}\"")
}

fn endpoint_chain(p: &ServicePort, ep: &SocketAddr) -> String {
    format!("ep-{}/{}/{}", p.key(), ep.ip(), ep.port())
}

/// The `nft -f` input that replaces [`TABLE`] with the rules for `ports`, in one
/// transaction: created if missing, deleted, defined again.
pub fn render(ports: &[ServicePort]) -> String {
    let mut no_endpoints = String::new();
    let mut services = String::new();
    let mut chains = String::new();
    for p in ports {
        let proto = p.proto();
        let matches = format!("ip daddr {} {proto} dport {}", p.cluster_ip, p.port);
        if p.endpoints.is_empty() {
            no_endpoints.push_str(&format!(
                "    {matches} goto reject-chain comment {}\n",
                comment(&format!("{} has no endpoints", p.describe()))
            ));
            continue;
        }
        let svc_chain = format!("svc-{}", p.key());
        services.push_str(&format!(
            "    {matches} goto {svc_chain} comment {}\n",
            comment(&p.describe())
        ));
        let arms: Vec<String> = p
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(p, ep)))
            .collect();
        chains.push_str(&format!(
            "  chain {svc_chain} {{\n    numgen random mod {} vmap {{ {} }}\n  }}\n",
            p.endpoints.len(),
            arms.join(", ")
        ));
        for ep in &p.endpoints {
            chains.push_str(&format!(
                "  chain {} {{\n    meta l4proto {proto} dnat to {ep}\n  }}\n",
                endpoint_chain(p, ep)
            ));
        }
    }
    let cluster_ips: BTreeSet<Ipv4Addr> = ports.iter().map(|p| p.cluster_ip).collect();
    let cluster_ips_check = if cluster_ips.is_empty() {
        String::new()
    } else {
        let ips: Vec<String> = cluster_ips.iter().map(Ipv4Addr::to_string).collect();
        format!(
            "    ip daddr {{ {} }} goto reject-chain comment \"a port no Service exposes\"\n",
            ips.join(", ")
        )
    };
    let hook = |name: &str, ty: &str, at: &str, priority: i32, rule: &str| {
        format!(
            "  chain {name} {{\n    type {ty} hook {at} priority {priority}; policy accept;\n    {rule}\n  }}\n"
        )
    };
    let mut s = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    s.push_str(
        "  chain reject-chain {\n    meta l4proto tcp reject with tcp reset\n    reject\n  }\n",
    );
    s.push_str(&format!(
        "  chain no-endpoint-services {{\n{no_endpoints}  }}\n"
    ));
    s.push_str(&format!(
        "  chain cluster-ips-check {{\n{cluster_ips_check}  }}\n"
    ));
    let check = "ct state new jump no-endpoint-services";
    s.push_str(&hook("filter-input", "filter", "input", PRE_DNAT, check));
    s.push_str(&hook(
        "filter-forward",
        "filter",
        "forward",
        PRE_DNAT,
        check,
    ));
    s.push_str(&hook("filter-output", "filter", "output", PRE_DNAT, check));
    s.push_str(&hook(
        "filter-output-post-dnat",
        "filter",
        "output",
        POST_DNAT,
        "ct state new jump cluster-ips-check",
    ));
    s.push_str(&hook(
        "nat-prerouting",
        "nat",
        "prerouting",
        DNAT,
        "jump services",
    ));
    s.push_str(&hook("nat-output", "nat", "output", DNAT, "jump services"));
    s.push_str(&format!("  chain services {{\n{services}  }}\n"));
    s.push_str(&chains);
    s.push_str("}\n");
    s
}

/// The `nft -f` input that removes [`TABLE`], whether or not it exists.
fn render_delete() -> String {
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

/// Load `ruleset` into the namespace's nftables.
async fn nft(netns: &str, ruleset: &str) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("ip netns exec {netns} nft -f -: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping it after the write is nft's EOF.
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .map_err(|e| anyhow::anyhow!("writing nft's stdin in netns {netns}: {e}"))?;
    }
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow::anyhow!("nft -f in netns {netns}: no exit within {NFT_TIMEOUT:?}")
        })??;
    anyhow::ensure!(
        out.status.success(),
        "nft -f in netns {netns}: {}: {}\nthe ruleset:\n{ruleset}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// What the rules are now.
#[derive(Debug, Clone, Default)]
struct Status {
    /// Every change up to this resourceVersion is in the loaded rules.
    applied: u64,
    /// `nft -f` loads so far.
    loads: u64,
    ports: Arc<Vec<ServicePort>>,
    ruleset: Arc<String>,
    /// Why the last load failed, or the stand-in stopped; None once a load succeeds.
    error: Option<String>,
}

/// The Services and EndpointSlices seen so far, each with the resourceVersion of its state.
#[derive(Default)]
struct Cache {
    services: BTreeMap<(String, String), (u64, Value)>,
    slices: BTreeMap<(String, String), (u64, Value)>,
}

impl Cache {
    fn key(o: &Value) -> (String, String) {
        (
            meta(o, "namespace").unwrap_or("").to_string(),
            meta(o, "name").unwrap_or("").to_string(),
        )
    }

    fn insert_listed(map: &mut BTreeMap<(String, String), (u64, Value)>, o: Value) {
        let rv = meta(&o, "resourceVersion")
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        map.insert(Cache::key(&o), (rv, o));
    }

    /// Apply one change; true when it concerns a Service or an EndpointSlice. A change no
    /// newer than the state held (the list already had it) is skipped.
    fn apply(&mut self, c: &Change) -> bool {
        let map = if c.is("v1", "Service") {
            &mut self.services
        } else if c.is("discovery.k8s.io/v1", "EndpointSlice") {
            &mut self.slices
        } else {
            return false;
        };
        let key = Cache::key(&c.object);
        if map
            .get(&key)
            .is_some_and(|(rv, _)| *rv >= c.resource_version)
        {
            return true;
        }
        match c.kind {
            ChangeKind::Deleted => {
                map.remove(&key);
            }
            ChangeKind::Added | ChangeKind::Modified => {
                map.insert(key, (c.resource_version, c.object.clone()));
            }
        }
        true
    }

    fn service_ports(&self) -> Vec<ServicePort> {
        let services: Vec<Value> = self.services.values().map(|(_, o)| o.clone()).collect();
        let slices: Vec<Value> = self.slices.values().map(|(_, o)| o.clone()).collect();
        service_ports(&services, &slices)
    }
}

/// The rules loader: one per [`KubeProxy`].
struct Loader {
    netns: String,
    cache: Cache,
    /// The highest resourceVersion taken from the fake so far.
    seen: u64,
    status: watch::Sender<Status>,
}

impl Loader {
    /// Bring the table in line with the cache (a no-op when the rules would not change)
    /// and publish the result.
    async fn load(&mut self) -> anyhow::Result<()> {
        let ports = self.cache.service_ports();
        let ruleset = render(&ports);
        let unchanged = *self.status.borrow().ruleset == ruleset;
        if !unchanged {
            if let Err(e) = nft(&self.netns, &ruleset).await {
                let error = format!("{e:#}");
                self.status.send_modify(|s| s.error = Some(error));
                return Err(e);
            }
        }
        let seen = self.seen;
        self.status.send_modify(|s| {
            s.applied = seen;
            s.error = None;
            if !unchanged {
                s.loads += 1;
                s.ports = Arc::new(ports);
                s.ruleset = Arc::new(ruleset);
            }
        });
        Ok(())
    }

    /// Take one change; false when the stream ended (the fake is gone, or this fell
    /// behind and lost changes: published as the error).
    fn take(
        &mut self,
        r: Result<Arc<Change>, broadcast::error::RecvError>,
        dirty: &mut bool,
    ) -> bool {
        match r {
            Ok(c) => {
                *dirty |= self.cache.apply(&c);
                self.seen = self.seen.max(c.resource_version);
                true
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.status
                    .send_modify(|s| s.error = Some("the fake API server is gone".into()));
                false
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let error = format!(
                    "fell {n} changes behind the fake API server and lost them: the rules are stale"
                );
                self.status.send_modify(|s| s.error = Some(error));
                false
            }
        }
    }

    /// Take every change already queued; false as for [`Loader::take`].
    fn drain(&mut self, changes: &mut broadcast::Receiver<Arc<Change>>, dirty: &mut bool) -> bool {
        loop {
            let r = match changes.try_recv() {
                Ok(c) => Ok(c),
                Err(broadcast::error::TryRecvError::Empty) => return true,
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
            };
            if !self.take(r, dirty) {
                return false;
            }
        }
    }

    /// Load after each batch of changes; a failed load is tried again on the next change
    /// or after [`RETRY`].
    async fn run(mut self, mut changes: broadcast::Receiver<Arc<Change>>) {
        let mut dirty = false;
        loop {
            let received = if dirty {
                tokio::time::timeout(RETRY, changes.recv()).await.ok()
            } else {
                Some(changes.recv().await)
            };
            if let Some(r) = received {
                if !self.take(r, &mut dirty) {
                    return;
                }
            }
            if !self.drain(&mut changes, &mut dirty) {
                return;
            }
            if dirty {
                if self.load().await.is_ok() {
                    dirty = false;
                }
            } else {
                // Nothing it programs changed: the rules reflect this resourceVersion too.
                let seen = self.seen;
                self.status.send_if_modified(|s| {
                    let newer = s.applied < seen;
                    s.applied = s.applied.max(seen);
                    newer
                });
            }
        }
    }
}

/// A running kube-proxy stand-in. Dropping it stops it and deletes its table (and the
/// [`SERVICE_CIDR`] route).
pub struct KubeProxy {
    netns: String,
    netns_path: PathBuf,
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
}

impl KubeProxy {
    /// Route [`SERVICE_CIDR`] to `lo` in `netns`, program the rules for what `api` holds
    /// now, and keep them in line with every later change. Returns once the first rules
    /// are loaded; errors if they cannot be.
    pub async fn start(netns: &Netns, api: &FakeApi) -> anyhow::Result<KubeProxy> {
        // With `src`: a route to `lo` alone picks no source address, and the connection
        // would go out from 0.0.0.0.
        netns.ip(&format!(
            "route replace {SERVICE_CIDR} dev lo src 127.0.0.1"
        ))?;
        // Subscribe, then list: a change committed in between is in both, and applying it
        // again is skipped or harmless (each object keeps its newest state).
        let mut changes = api.changes();
        let mut cache = Cache::default();
        for o in api.list("v1", "Service", None) {
            Cache::insert_listed(&mut cache.services, o);
        }
        for o in api.list("discovery.k8s.io/v1", "EndpointSlice", None) {
            Cache::insert_listed(&mut cache.slices, o);
        }
        // Every change up to here was sent before this read (the fake broadcasts under its
        // store lock), so it is queued for the drain below.
        let listed = api.resource_version();
        let (status, receiver) = watch::channel(Status::default());
        let mut loader = Loader {
            netns: netns.name().to_string(),
            cache,
            seen: listed,
            status,
        };
        let mut dirty = true;
        anyhow::ensure!(
            loader.drain(&mut changes, &mut dirty),
            "kube-proxy in netns {}: {}",
            netns.name(),
            receiver.borrow().error.clone().unwrap_or_default()
        );
        loader
            .load()
            .await
            .map_err(|e| anyhow::anyhow!("kube-proxy in netns {}: {e:#}", netns.name()))?;
        let task = tokio::spawn(loader.run(changes));
        Ok(KubeProxy {
            netns: netns.name().to_string(),
            netns_path: netns.path(),
            status: receiver,
            task,
        })
    }

    /// Wait until the rules reflect everything `api` holds now (its current
    /// resourceVersion), or fail after `timeout`, or at once when a load failed.
    pub async fn synced(&self, api: &FakeApi, timeout: Duration) -> anyhow::Result<()> {
        let target = api.resource_version();
        let what = format!(
            "kube-proxy rules in netns {} to reflect resourceVersion {target}",
            self.netns
        );
        self.wait_until(&what, timeout, |kp| {
            (kp.status.borrow().applied >= target).then_some(())
        })
        .await
    }

    /// Wait until `check` returns Some, re-checking after every load (and every change
    /// that leaves the rules as they are); fail after `timeout` naming `what`, or at once
    /// with the error when a load fails or the stand-in stops.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&KubeProxy) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut status = self.status.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let error = status.borrow_and_update().error.clone();
            if let Some(e) = error {
                anyhow::bail!("{what}: the kube-proxy stand-in failed: {e}");
            }
            if let Some(v) = check(self) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Err(_) => anyhow::bail!("timed out after {timeout:?} waiting for {what}"),
                Ok(Err(_)) => {
                    anyhow::bail!("the kube-proxy stand-in stopped while waiting for {what}")
                }
                Ok(Ok(())) => {}
            }
        }
    }

    /// Where new TCP connections to Service `namespace/service` on its port `port` go in
    /// the loaded rules: None when no such Service port is programmed (no Service, no
    /// ClusterIP, no such port), empty when they are refused.
    pub fn endpoints(&self, namespace: &str, service: &str, port: u16) -> Option<Vec<SocketAddr>> {
        self.status
            .borrow()
            .ports
            .iter()
            .find(|p| {
                p.namespace == namespace
                    && p.service == service
                    && p.port == port
                    && p.protocol == "TCP"
            })
            .map(|p| p.endpoints.clone())
    }

    /// Every Service port in the loaded rules.
    pub fn service_ports(&self) -> Vec<ServicePort> {
        self.status.borrow().ports.as_ref().clone()
    }

    /// The last ruleset loaded (what `nft -f` read), for failure messages.
    pub fn ruleset(&self) -> String {
        self.status.borrow().ruleset.as_ref().clone()
    }

    /// Rule loads so far (a change that leaves the rules as they are loads nothing).
    pub fn loads(&self) -> u64 {
        self.status.borrow().loads
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        // A load in flight is killed with its task (kill_on_drop).
        self.task.abort();
        if !self.netns_path.exists() {
            return;
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "nft", "-f", "-"]);
        if let Err(e) = netns::run_tool(&mut cmd, Some(&render_delete())) {
            eprintln!(
                "leaving table {TABLE} behind in netns {}: {e:#}",
                self.netns
            );
        }
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.netns, "route", "del", SERVICE_CIDR, "dev", "lo"]);
        if let Err(e) = netns::run_tool(&mut cmd, None) {
            eprintln!(
                "leaving the {SERVICE_CIDR} route behind in netns {}: {e:#}",
                self.netns
            );
        }
    }
}

/// Why kube-proxy's rules cannot be loaded here, if they cannot: it loads a ruleset with
/// a DNAT, a random choice and a reject into a throwaway namespace.
pub fn probe() -> Result<(), String> {
    let ns =
        Netns::new("kpprobe").map_err(|e| format!("cannot create a network namespace: {e:#}"))?;
    let port = ServicePort {
        namespace: "probe".into(),
        service: "probe".into(),
        name: String::new(),
        protocol: "TCP".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
        port: 9,
        endpoints: vec![SocketAddr::from(([127, 0, 0, 2], 9))],
    };
    let empty = ServicePort {
        service: "empty".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 2),
        endpoints: Vec::new(),
        ..port.clone()
    };
    ns.nft(&render(&[port, empty])).map_err(|e| {
        format!(
            "cannot load kube-proxy's nft rules (needs `nft` and the kernel's nft_nat, nft_numgen and nft_reject): {e:#}"
        )
    })
}

/// For a test that needs kube-proxy's rules: true when it can run. Otherwise it prints why
/// and returns false (skipped), or with `ZENVOY_REQUIRE_PRIVILEGED=1` panics with the
/// reason, as [`netns::available`] does.
pub fn available(test: &str) -> bool {
    if !netns::available(test) {
        return false;
    }
    let Err(reason) = probe() else {
        return true;
    };
    if std::env::var(netns::REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!(
            "{test}: {reason} ({}=1, so this is a failure, not a skip)",
            netns::REQUIRE_ENV
        );
    }
    eprintln!(
        "SKIPPED {test}: {reason} (set {}=1 to make this a failure)",
        netns::REQUIRE_ENV
    );
    false
}

#[cfg(test)]
mod tests;
