//! A FAKE Kubernetes for the tests: an API server over real HTTP ([`FakeApi`]), a
//! simulated kubelet ([`Kubelet`]) and a kube-proxy stand-in ([`kube_proxy`]). No real
//! kube-apiserver can be installed where these tests run, so the controller's Kubernetes
//! code talks to this instead, through an unmodified `kube::Client`.
//!
//! ```text
//!  kube::Client --HTTP--> FakeApi (routing, verbs, watch) --> Store (objects, rv, history)
//!                                                               | changes (broadcast)
//!                              Kubelet (in-process) <-----------+
//!                                 | spawns a process per pod on 127.A.B.n:containerPort,
//!                                 | writes EndpointSlices `<svc>-fake` and workload status
//! ```
//!
//! The aim is to behave like the real API, not like our code expects it to.
//!
//! **Faithful** (checked against kube-rs in `e2e/tests/fake_kube.rs`):
//! - URL shapes (`/api/v1/...`, `/apis/{group}/{version}/...`, namespaced and all-namespace
//!   collections), `metav1.Status` errors with the real reasons and codes (NotFound,
//!   AlreadyExists, Conflict, Invalid, BadRequest, Expired, MethodNotAllowed,
//!   UnsupportedMediaType, Unauthorized), 201 on create, DELETE answering a Success Status
//!   (or the object, for Services).
//! - One global resourceVersion counter; `uid`, `creationTimestamp`; `generation` where the
//!   type tracks it (1 on create; bumped on `spec` change for Deployments/StatefulSets, on
//!   any non-metadata change for EndpointSlices); no-op updates write nothing.
//! - Preconditions: `metadata.resourceVersion` and `uid` on PUT and in patches (409
//!   Conflict); Lease PUTs must carry a resourceVersion (422); PUT creates Leases, Events
//!   and Services but 404s the others; resourceVersion set on create is a 400; namespace
//!   and name mismatches are 400s; names must be DNS-1123 subdomains (422).
//! - Status subresource (Deployments, StatefulSets, Services): main-resource writes keep
//!   `status`, `/status` writes change only `status`. Scale subresource: autoscaling/v1
//!   Scale (GET, PUT with resourceVersion precondition, PATCH), writing the parent.
//! - Defaulting that tests rely on: `spec.replicas` 1, StatefulSet `podManagementPolicy`
//!   OrderedReady, Service port `protocol` TCP and `targetPort` = `port`.
//! - Lists: `<Kind>List` with the current resourceVersion; items carry no `apiVersion` and
//!   `kind`. Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`), field
//!   selectors on `metadata.name` and `metadata.namespace` (others are a 400).
//! - Watch: newline-delimited events; resourceVersion absent or "0" starts with ADDED for
//!   every current object; rv=N replays history after N, or sends an ERROR 410 Expired
//!   Status and ends when N predates the kept history (or `compact()`); an object that
//!   stops (starts) matching the selectors is DELETED (ADDED); `sendInitialEvents` ends the
//!   initial batch with the `k8s.io/initial-events-end` bookmark; `timeoutSeconds` ends the
//!   stream; a watcher that falls behind the broadcast is closed, to resume from its rv.
//! - `Accept: ...;as=PartialObjectMetadata` (kube's metadata API) for get, list and watch.
//! - Merge patch (RFC 7386) and JSON patch (RFC 6902); `dryRun` writes nothing.
//! - Bearer tokens are required (401 without) and recorded per request.
//! - Down (`set_available(false)`): open connections, idle keep-alive ones and watches
//!   included, are closed at once; new ones are reset right after accept.
//!
//! **Simplified** (documented deviations):
//! - Only Services, ConfigMaps, Deployments, StatefulSets, EndpointSlices, Leases and
//!   events.k8s.io Events exist; no Pods, ReplicaSets, Namespaces or CRDs. Every
//!   namespace exists. No admission, RBAC (any token is allowed), schema validation,
//!   managedFields, finalizers or graceful deletion (objects vanish at once).
//! - Bookmarks every second (the real server sends them about once a minute).
//! - Strategic merge patch is a merge patch (lists replaced, not merged by key; `$`
//!   directives dropped). Server-side apply is a 415. `limit`/`continue` are ignored: one
//!   page with everything. `resourceVersionMatch=Exact` works only for the current rv.
//!   `deletecollection` is a 405. Discovery is the legacy (non-aggregated) documents.
//! - Field selectors know only `metadata.name` and `metadata.namespace`; the real server
//!   also indexes a few per-type fields (e.g. an Event's `regarding.name`).
//! - Watch history is bounded (the last 4096 changes), as the watch cache's is.
//!
//! The [`Kubelet`] stands in for the kubelet, the ReplicaSet/StatefulSet controllers and
//! the EndpointSlice controller together; its docs say what it does and simplifies.

pub mod kube_proxy;
mod kubelet;
mod patch;
mod resources;
mod selector;
mod server;
mod store;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

pub use kubelet::{Kubelet, KubeletOptions, PodCommand, PodInfo, EXTRA_ADDRS_ENV};
pub use store::{Change, ChangeKind};

use store::{ApiError, Mode, Store};

/// Requests kept in the audit log; older ones are dropped.
const AUDIT_LIMIT: usize = 10_000;
/// Changes a slow `changes()` receiver may fall behind before it sees `Lagged`.
const BROADCAST_CAPACITY: usize = 1024;

/// One request as the fake served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// From `Authorization: Bearer <token>`.
    pub token: Option<String>,
    pub method: String,
    pub path: String,
    /// The raw (percent-encoded) query string.
    pub query: String,
    pub content_type: Option<String>,
    pub status: u16,
}

impl AuditRecord {
    /// POST, PUT, PATCH or DELETE.
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Availability {
    Up,
    Down,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Serving {
    availability: Availability,
    /// Counts transitions to Down: a connection accepted before an outage is closed by it
    /// even if the server is back up before its task notices.
    outages: u64,
}

pub(crate) struct Inner {
    store: Mutex<Store>,
    changes: broadcast::Sender<Arc<Change>>,
    state: watch::Sender<Serving>,
    refused: AtomicU64,
    closed: AtomicU64,
    audit: Mutex<VecDeque<AuditRecord>>,
    addr: SocketAddr,
    /// `127.A.B.0`: this fake's block of pod addresses.
    pod_network: Ipv4Addr,
    bookmark_interval: Duration,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run a write against the store and broadcast what it committed, under one lock so
    /// watchers see changes in resourceVersion order. With `dry_run`, against a copy.
    fn write<T>(
        &self,
        dry_run: bool,
        f: &dyn Fn(&mut Store, &str) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let now = now_rfc3339();
        let mut store = self.lock();
        if dry_run {
            let mut copy = store.clone();
            return f(&mut copy, &now);
        }
        let result = f(&mut store, &now);
        for change in store.take_changes() {
            // No receivers is fine.
            let _ = self.changes.send(change);
        }
        result
    }

    fn audit(&self, record: AuditRecord) {
        let mut log = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= AUDIT_LIMIT {
            log.pop_front();
        }
        log.push_back(record);
    }

    fn is_up(&self) -> bool {
        self.state.borrow().availability == Availability::Up
    }
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    store::rfc3339(secs)
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(zenvoy_test_support::monotonic_ns());
    h.write_u32(std::process::id());
    h.finish()
}

/// A fake Kubernetes API server on `127.0.0.1:<random port>` (plain HTTP). Stops serving
/// when dropped.
pub struct FakeApi {
    inner: Arc<Inner>,
    server: JoinHandle<()>,
}

impl FakeApi {
    pub async fn start() -> anyhow::Result<FakeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let r = random_u64();
        // 127.A.B.0/24 with A in 1..=254: clear of 127.0.0.x, and one of ~65k blocks so
        // concurrent tests do not share addresses. Linux routes all of 127/8 to lo.
        let pod_network = Ipv4Addr::new(127, 1 + (r % 254) as u8, (r >> 8) as u8, 0);
        let (changes, _) = broadcast::channel(BROADCAST_CAPACITY);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new(random_u64())),
            changes,
            state: watch::Sender::new(Serving {
                availability: Availability::Up,
                outages: 0,
            }),
            refused: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            audit: Mutex::new(VecDeque::new()),
            addr,
            pod_network,
            bookmark_interval: Duration::from_secs(1),
        });
        let server = tokio::spawn(server::serve(listener, inner.clone()));
        Ok(FakeApi { inner, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// The kubeconfig document: one cluster (this server), one user with `token`, one
    /// context (namespace `default`), current.
    pub fn kubeconfig_value(&self, token: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake",
                          "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        })
    }

    /// Write [`Self::kubeconfig_value`] to `dir/kubeconfig-<token>` (JSON, which is YAML)
    /// and return its path, for `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
        let safe: String = token
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("kubeconfig-{safe}"));
        std::fs::write(&path, self.kubeconfig_value(token).to_string())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// A `kube::Client` for this server, authenticating with `token`, built the way
    /// `Client::try_default` builds one from a kubeconfig.
    pub async fn client(&self, token: &str) -> anyhow::Result<kube::Client> {
        let kubeconfig: kube::config::Kubeconfig =
            serde_json::from_value(self.kubeconfig_value(token))?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Create or replace an object (by its `apiVersion`, `kind`, namespace, default
    /// `default`, and name) directly in the store, as a write the server accepted: uid,
    /// resourceVersion, creationTimestamp, generation and defaults are set and watchers
    /// see it. No preconditions; `status` is kept as given.
    pub fn put(&self, obj: Value) -> anyhow::Result<Value> {
        Ok(self.inner.write(false, &|s, now| s.put(obj.clone(), now))?)
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let def = resources::by_kind(api_version, kind)?;
        self.inner.lock().get(def, namespace, name).cloned()
    }

    /// Objects of one type in a namespace (None: all), ordered by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Some(def) = resources::by_kind(api_version, kind) else {
            return Vec::new();
        };
        self.inner.lock().list(def, namespace).cloned().collect()
    }

    /// Delete directly; returns the object as it was, None if it did not exist.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let def = resources::by_kind(api_version, kind)?;
        self.inner
            .write(false, &|s, _| s.delete(def, namespace, name, &Value::Null))
            .ok()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().resource_version()
    }

    /// Forget the watch history: a watch from any resourceVersion before now gets an
    /// ERROR 410 Expired event.
    pub fn compact(&self) {
        self.inner.lock().compact();
    }

    /// Up: serve. Down: behave like a dead apiserver — close every open connection now
    /// (in-flight requests, idle keep-alive connections, watches) and reset each new one
    /// as soon as it is accepted. The port stays bound.
    pub fn set_available(&self, up: bool) {
        let next = if up {
            Availability::Up
        } else {
            Availability::Down
        };
        self.inner.state.send_if_modified(|s| {
            if s.availability == next || s.availability == Availability::Stopped {
                return false;
            }
            s.availability = next;
            if !up {
                s.outages += 1;
            }
            true
        });
    }

    pub fn is_available(&self) -> bool {
        self.inner.is_up()
    }

    /// Connections reset on accept while down.
    pub fn refused_connections(&self) -> u64 {
        self.inner.refused.load(Relaxed)
    }

    /// Open connections closed by going down.
    pub fn closed_connections(&self) -> u64 {
        self.inner.closed.load(Relaxed)
    }

    /// Every request served so far (the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<AuditRecord> {
        let log = self.inner.audit.lock().unwrap_or_else(|e| e.into_inner());
        log.iter().cloned().collect()
    }

    /// Writes (POST, PUT, PATCH, DELETE) to paths ending in `suffix`, e.g. `/scale`.
    pub fn writes_to(&self, suffix: &str) -> Vec<AuditRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_write() && r.path.ends_with(suffix))
            .collect()
    }

    /// Every committed change from now on, in resourceVersion order.
    pub fn changes(&self) -> broadcast::Receiver<Arc<Change>> {
        self.inner.changes.subscribe()
    }

    /// Wait until `check` returns Some, re-checking after every store change; fail after
    /// `timeout` naming `what`.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&FakeApi) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut changes = self.changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check(self) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => anyhow::bail!("timed out after {timeout:?} waiting for {what}"),
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    anyhow::bail!("fake apiserver stopped while waiting for {what}")
                }
                Ok(_) => {}
            }
        }
    }

    /// `127.A.B.0`: the /24 the kubelet gives pods of this fake their addresses from.
    pub fn pod_network(&self) -> Ipv4Addr {
        self.inner.pod_network
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.inner
            .state
            .send_modify(|s| s.availability = Availability::Stopped);
        self.server.abort();
    }
}

impl Inner {
    /// Replace `status` of an object as the `/status` subresource would.
    pub(crate) fn write_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        status: Value,
    ) -> Result<(), ApiError> {
        let def = resources::by_kind(api_version, kind)
            .ok_or_else(|| ApiError::bad_request(format!("no {kind} in {api_version}")))?;
        self.write(false, &|s, now| {
            let body = json!({"metadata": {"name": name}, "status": status});
            s.update(def, ns, name, body, Mode::Status, now).map(drop)
        })
    }
}
