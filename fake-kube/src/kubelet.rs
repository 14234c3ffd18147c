//! The simulated kubelet behind [`Kubelet`]: its options, its pod table and the actor that
//! reconciles it with the fake's workloads. One pod's process is in `pod`; the workload
//! status and EndpointSlices it writes back are built in `objects`.

mod objects;
mod pod;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::resources::{self, ResourceDef};
use super::store::meta_str;
use super::{FakeApi, Inner};
use objects::{endpoint_slice, workload_status};
use pod::{run_pod, PodRun};

/// What Kubernetes' EndpointSlice controller puts on its slices: the kubelet here plays
/// that controller too, and the controller trusts only its slices.
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Pods one fake can run at once: one per address in its /24.
const MAX_PODS: usize = 254;

/// Builds a pod's process from the address it must serve on.
pub type PodCommand = Arc<dyn Fn(SocketAddr) -> Command + Send + Sync>;

/// A pod's further container ports (after the first, which its command is built for),
/// as `ip:port,ip:port`, in its process's environment; `zenvoy-echo` serves them too.
pub const EXTRA_ADDRS_ENV: &str = "ZENVOY_POD_EXTRA_ADDRS";

#[derive(Clone)]
pub struct KubeletOptions {
    /// From a pod's creation to its process being spawned.
    pub start_delay: Duration,
    /// SIGTERM to SIGKILL when stopping a pod.
    pub stop_grace: Duration,
    /// How long a started pod is probed before it is left not ready.
    pub probe_timeout: Duration,
    /// Each pod's stdout and stderr go to `<dir>/<namespace>_<pod>.log`; None: discarded.
    pub log_dir: Option<PathBuf>,
    pub command: PodCommand,
}

impl KubeletOptions {
    /// Pods start `start_delay` after creation; 2 s stop grace, 10 s readiness probing,
    /// logs discarded.
    pub fn new(
        start_delay: Duration,
        command: impl Fn(SocketAddr) -> Command + Send + Sync + 'static,
    ) -> Self {
        KubeletOptions {
            start_delay,
            stop_grace: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(10),
            log_dir: None,
            command: Arc::new(command),
        }
    }

    /// Pods run `zenvoy-echo --listen <addr>`, with no start delay.
    pub fn echo() -> anyhow::Result<Self> {
        let bin = zenvoy_test_support::bin("zenvoy-echo")?;
        Ok(KubeletOptions::new(Duration::ZERO, move |addr| {
            let mut c = Command::new(&bin);
            c.arg("--listen").arg(addr.to_string());
            c
        }))
    }
}

/// What the kubelet knows about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    /// The Deployment or StatefulSet.
    pub workload: String,
    pub name: String,
    pub addr: SocketAddr,
    /// Its process has been spawned at least once.
    pub started: bool,
    /// Its process is running now.
    pub alive: bool,
    /// It passed the readiness probe and its process is still running.
    pub ready: bool,
    /// Being stopped (scaled down or its workload deleted).
    pub terminating: bool,
    pub restarts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    fn def(self) -> &'static ResourceDef {
        match self {
            WorkloadKind::Deployment => &resources::DEPLOYMENTS,
            WorkloadKind::StatefulSet => &resources::STATEFULSETS,
        }
    }
}

type WorkloadKey = (WorkloadKind, String, String);

struct Pod {
    info: PodInfo,
    uid: String,
    ordinal: Option<u32>,
    /// Creation order, for "newest first".
    seq: u64,
    labels: Map<String, Value>,
    stop: Option<oneshot::Sender<()>>,
}

impl Pod {
    fn terminate(&mut self) {
        self.info.terminating = true;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Shared {
    pods: Mutex<BTreeMap<WorkloadKey, Vec<Pod>>>,
    start_delay: Mutex<Duration>,
    starts: AtomicU64,
    stops: AtomicU64,
    restarts: AtomicU64,
    /// Bumped on every pod state change, for [`Kubelet::wait_until`].
    version: watch::Sender<u64>,
}

impl Shared {
    fn pods(&self) -> MutexGuard<'_, BTreeMap<WorkloadKey, Vec<Pod>>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A simulated kubelet for the fake API server. It stands in, in-process, for the kubelet,
/// the ReplicaSet and StatefulSet controllers and the EndpointSlice controller at once:
///
/// - For every Deployment and StatefulSet it keeps `spec.replicas` pods, each a real
///   process built by [`KubeletOptions::command`] from the pod's address: its own loopback
///   IP from the fake's `127.A.B.0/24` and the port of
///   `spec.template.spec.containers[0].ports[0].containerPort` (its further ports are in
///   the process's environment, [`EXTRA_ADDRS_ENV`]). A pod starts after
///   `start_delay` and is ready once its address accepts TCP (a TCP readiness probe, tried
///   for `probe_timeout`). A process that exits is restarted in the same pod (same IP)
///   after a back-off, as with `restartPolicy: Always`.
/// - Scaling down stops pods with SIGTERM, then SIGKILL after `stop_grace`. Deployments
///   stop not-started, then not-ready, then newest pods first; StatefulSets are named
///   `<name>-<ordinal>`, stop the highest ordinal first, and with the default
///   `OrderedReady` policy start and stop one pod at a time (`Parallel`: all at once).
///   Deployment pods are named `<name>-<template hash>-<suffix>`.
/// - For every Service with a selector it keeps an EndpointSlice `<service>-fake` holding
///   the started pods whose template labels match (`ready`, `serving`, `terminating`
///   conditions as the real controller sets them), and writes each workload's `status`
///   (`replicas`, `readyReplicas`, `availableReplicas`, `observedGeneration`, ...).
/// - While the API server is down it writes nothing and ignores spec changes; pods keep
///   running. When it is back it catches up.
///
/// Simplified: no Pod objects in the API, no rolling updates (a template change does not
/// replace pods), one EndpointSlice per Service whatever its size, IPv4 only. Dropping the
/// [`Kubelet`] kills every pod process.
pub struct Kubelet {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Kubelet {
    pub fn start(api: &FakeApi, opts: KubeletOptions) -> Kubelet {
        let shared = Arc::new(Shared {
            pods: Mutex::new(BTreeMap::new()),
            start_delay: Mutex::new(opts.start_delay),
            starts: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            version: watch::Sender::new(0),
        });
        let (events_tx, events_rx) = mpsc::channel(256);
        let actor = Actor {
            api: api.inner().clone(),
            shared: shared.clone(),
            opts,
            tasks: JoinSet::new(),
            events: events_tx,
            next_host: 1,
            seq: 0,
            rng: super::random_u64(),
        };
        // Subscribe before the first reconcile so no change is missed.
        let changes = actor.api.changes.subscribe();
        let task = tokio::spawn(actor.run(changes, events_rx));
        Kubelet { shared, task }
    }

    /// Applies to pods created from now on.
    pub fn set_start_delay(&self, d: Duration) {
        *self
            .shared
            .start_delay
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// Pods of the Deployment or StatefulSet `namespace/workload`, by name.
    pub fn pods(&self, namespace: &str, workload: &str) -> Vec<PodInfo> {
        let mut out: Vec<PodInfo> = self
            .shared
            .pods()
            .iter()
            .filter(|((_, ns, name), _)| ns == namespace && name == workload)
            .flat_map(|(_, pods)| pods.iter().map(|p| p.info.clone()))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Pods of `namespace/workload` whose process is running now (terminating ones too).
    pub fn running(&self, namespace: &str, workload: &str) -> usize {
        self.pods(namespace, workload)
            .iter()
            .filter(|p| p.alive)
            .count()
    }

    /// Pods of `namespace/workload` that are ready and not terminating.
    pub fn ready(&self, namespace: &str, workload: &str) -> usize {
        self.pods(namespace, workload)
            .iter()
            .filter(|p| p.ready && !p.terminating)
            .count()
    }

    /// Pods whose process was spawned (restarts not counted).
    pub fn pod_starts(&self) -> u64 {
        self.shared.starts.load(Relaxed)
    }

    /// Started pods that were stopped (scale-down or workload deletion) and are gone.
    pub fn pod_stops(&self) -> u64 {
        self.shared.stops.load(Relaxed)
    }

    /// Processes restarted in place after exiting on their own.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Relaxed)
    }

    /// Wait until `check` returns Some, re-checking after every pod state change; fail
    /// after `timeout` naming `what`.
    pub async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Kubelet) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut version = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            version.mark_unchanged();
            if let Some(v) = check(self) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Err(_) => anyhow::bail!("timed out after {timeout:?} waiting for {what}"),
                Ok(Err(_)) => anyhow::bail!("kubelet stopped while waiting for {what}"),
                Ok(Ok(())) => {}
            }
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Aborting the actor drops its JoinSet, which aborts every pod task, which drops
        // each Child: kill_on_drop sends SIGKILL.
        self.task.abort();
    }
}

#[derive(Debug)]
enum PodState {
    Started,
    Ready,
    Exited,
    Gone,
}

#[derive(Debug)]
struct PodEvent {
    uid: String,
    state: PodState,
}

enum Trigger {
    Change,
    Pod(PodEvent),
    Quiet,
    Stop,
}

struct Actor {
    api: Arc<Inner>,
    shared: Arc<Shared>,
    opts: KubeletOptions,
    tasks: JoinSet<()>,
    events: mpsc::Sender<PodEvent>,
    next_host: u8,
    seq: u64,
    rng: u64,
}

impl Actor {
    async fn run(
        mut self,
        mut changes: broadcast::Receiver<Arc<super::Change>>,
        mut events: mpsc::Receiver<PodEvent>,
    ) {
        let mut state = self.api.state.subscribe();
        self.reconcile();
        loop {
            let trigger = tokio::select! {
                r = changes.recv() => match r {
                    Ok(c) if !relevant(&c) => Trigger::Quiet,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => Trigger::Change,
                    Err(broadcast::error::RecvError::Closed) => Trigger::Stop,
                },
                Some(ev) = events.recv() => Trigger::Pod(ev),
                r = state.changed() => if r.is_ok() { Trigger::Change } else { Trigger::Stop },
                Some(_) = self.tasks.join_next() => Trigger::Quiet,
            };
            match trigger {
                Trigger::Stop => return,
                Trigger::Quiet => continue,
                Trigger::Pod(ev) => self.on_pod_event(ev),
                Trigger::Change => {}
            }
            // Coalesce whatever else is queued into one reconcile.
            while let Ok(ev) = events.try_recv() {
                self.on_pod_event(ev);
            }
            self.reconcile();
        }
    }

    fn on_pod_event(&mut self, ev: PodEvent) {
        let mut table = self.shared.pods();
        for pods in table.values_mut() {
            let Some(i) = pods.iter().position(|p| p.uid == ev.uid) else {
                continue;
            };
            let pod = &mut pods[i];
            match ev.state {
                PodState::Started => {
                    if pod.info.started {
                        pod.info.restarts += 1;
                        self.shared.restarts.fetch_add(1, Relaxed);
                    } else {
                        self.shared.starts.fetch_add(1, Relaxed);
                    }
                    pod.info.started = true;
                    pod.info.alive = true;
                }
                PodState::Ready => pod.info.ready = pod.info.alive,
                PodState::Exited => {
                    pod.info.alive = false;
                    pod.info.ready = false;
                }
                PodState::Gone => {
                    if pod.info.started {
                        self.shared.stops.fetch_add(1, Relaxed);
                    }
                    pods.remove(i);
                }
            }
            break;
        }
        table.retain(|_, pods| !pods.is_empty());
        drop(table);
        self.shared.version.send_modify(|v| *v += 1);
    }

    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Bring pods, workload status and EndpointSlices in line with the store. Level-based:
    /// safe to call any number of times.
    fn reconcile(&mut self) {
        if !self.api.is_up() {
            return;
        }
        let (workloads, services, slices) = {
            let store = self.api.lock();
            let mut workloads = Vec::new();
            for kind in [WorkloadKind::Deployment, WorkloadKind::StatefulSet] {
                for w in store.list(kind.def(), None) {
                    let ns = meta_str(w, "namespace").unwrap_or("").to_string();
                    let name = meta_str(w, "name").unwrap_or("").to_string();
                    workloads.push(((kind, ns, name), w.clone()));
                }
            }
            let services: Vec<Value> = store.list(&resources::SERVICES, None).cloned().collect();
            let slices: Vec<Value> = store
                .list(&resources::ENDPOINTSLICES, None)
                .filter(|s| {
                    s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
                })
                .cloned()
                .collect();
            (workloads, services, slices)
        };

        // Held while pods change so that queries never see a half-done table; the store
        // lock is never taken under it.
        let shared = self.shared.clone();
        let mut table = shared.pods();
        let live_keys: BTreeSet<&WorkloadKey> = workloads.iter().map(|(k, _)| k).collect();
        for (key, pods) in table.iter_mut() {
            if !live_keys.contains(key) {
                pods.iter_mut()
                    .filter(|p| !p.info.terminating)
                    .for_each(Pod::terminate);
            }
        }
        for (key, w) in &workloads {
            let mut pods = table.remove(key).unwrap_or_default();
            self.scale(key, w, &mut pods, &table);
            table.insert(key.clone(), pods);
        }
        table.retain(|_, pods| !pods.is_empty());

        let statuses: Vec<(WorkloadKey, Value)> = workloads
            .iter()
            .map(|(key, w)| (key.clone(), workload_status(key.0, w, table.get(key))))
            .collect();
        let desired_slices: Vec<Value> = services
            .iter()
            .filter_map(|svc| endpoint_slice(svc, &workloads, &table))
            .collect();
        drop(table);
        self.shared.version.send_modify(|v| *v += 1);

        for ((kind, ns, name), status) in statuses {
            let def = kind.def();
            // The workload may be gone by now: nothing to do then.
            let _ = self
                .api
                .write_status(&def.api_version(), def.kind, &ns, &name, status);
        }
        let wanted: BTreeSet<(String, String)> = desired_slices
            .iter()
            .map(|s| {
                (
                    meta_str(s, "namespace").unwrap_or("").to_string(),
                    meta_str(s, "name").unwrap_or("").to_string(),
                )
            })
            .collect();
        for slice in desired_slices {
            let _ = self.api.write(false, &|s, now| s.put(slice.clone(), now));
        }
        for stale in slices {
            let ns = meta_str(&stale, "namespace").unwrap_or("").to_string();
            let name = meta_str(&stale, "name").unwrap_or("").to_string();
            if !wanted.contains(&(ns.clone(), name.clone())) {
                let _ = self.api.write(false, &|s, _| {
                    s.delete(&resources::ENDPOINTSLICES, &ns, &name, &Value::Null)
                });
            }
        }
    }

    /// Start or stop pods of one workload toward `spec.replicas`.
    fn scale(
        &mut self,
        key: &WorkloadKey,
        w: &Value,
        pods: &mut Vec<Pod>,
        others: &BTreeMap<WorkloadKey, Vec<Pod>>,
    ) {
        let desired = w["spec"]["replicas"]
            .as_u64()
            .map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let template = &w["spec"]["template"];
        let live = pods.iter().filter(|p| !p.info.terminating).count();
        match key.0 {
            WorkloadKind::Deployment => {
                if live > desired {
                    let mut victims: Vec<&mut Pod> =
                        pods.iter_mut().filter(|p| !p.info.terminating).collect();
                    // As the ReplicaSet controller ranks them: not started, not ready, newest.
                    victims
                        .sort_by_key(|p| (p.info.started, p.info.ready, std::cmp::Reverse(p.seq)));
                    victims
                        .into_iter()
                        .take(live - desired)
                        .for_each(Pod::terminate);
                }
                for _ in live..desired {
                    // None: the address block is full; try again on a later reconcile.
                    let Some(pod) = self.create_pod(key, None, template, pods, others) else {
                        break;
                    };
                    pods.push(pod);
                }
            }
            WorkloadKind::StatefulSet => {
                let parallel = w["spec"]["podManagementPolicy"] == "Parallel";
                let ordinal_of = |p: &Pod| p.ordinal.map_or(0, |o| o as usize);
                let stopping = live != pods.len();
                let mut excess: Vec<&mut Pod> = pods
                    .iter_mut()
                    .filter(|p| !p.info.terminating && ordinal_of(p) >= desired)
                    .collect();
                excess.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
                if parallel {
                    excess.into_iter().for_each(Pod::terminate);
                } else if !stopping {
                    if let Some(p) = excess.into_iter().next() {
                        p.terminate();
                    }
                }
                let taken: BTreeSet<usize> = pods.iter().map(ordinal_of).collect();
                let stopping = pods.iter().any(|p| p.info.terminating);
                let all_ready = pods.iter().all(|p| p.info.ready);
                let budget = if parallel {
                    usize::MAX
                } else if !stopping && all_ready {
                    1
                } else {
                    0
                };
                let missing: Vec<usize> = (0..desired)
                    .filter(|o| !taken.contains(o))
                    .take(budget.min(MAX_PODS))
                    .collect();
                for o in missing {
                    let ordinal = u32::try_from(o).unwrap_or(u32::MAX);
                    // None: the address block is full; try again on a later reconcile.
                    let Some(pod) = self.create_pod(key, Some(ordinal), template, pods, others)
                    else {
                        break;
                    };
                    pods.push(pod);
                }
            }
        }
    }

    /// A new pod with its own address, its process started after the start delay.
    fn create_pod(
        &mut self,
        key: &WorkloadKey,
        ordinal: Option<u32>,
        template: &Value,
        siblings: &[Pod],
        others: &BTreeMap<WorkloadKey, Vec<Pod>>,
    ) -> Option<Pod> {
        let (_, ns, workload) = key;
        let in_use: BTreeSet<Ipv4Addr> = siblings
            .iter()
            .chain(others.values().flatten())
            .filter_map(|p| match p.info.addr.ip() {
                std::net::IpAddr::V4(ip) => Some(ip),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        let base = self.api.pod_network.octets();
        let ip = (0..254u16).find_map(|_| {
            let host = self.next_host;
            self.next_host = if host >= 254 { 1 } else { host + 1 };
            let ip = Ipv4Addr::new(base[0], base[1], base[2], host);
            (!in_use.contains(&ip)).then_some(ip)
        });
        let Some(ip) = ip else {
            eprintln!(
                "fake kubelet: no free pod address in {}/24",
                self.api.pod_network
            );
            return None;
        };
        let ports: Vec<u16> = template["spec"]["containers"][0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        let port = ports.first().copied().unwrap_or(0);
        let name = match ordinal {
            Some(o) => format!("{workload}-{o}"),
            None => {
                let hash = encode(fnv(template.to_string().as_bytes()), 10);
                format!("{workload}-{hash}-{}", encode(self.random(), 5))
            }
        };
        let r = self.random();
        let uid = format!("{:016x}{:016x}", r, self.random());
        self.seq += 1;
        let addr = SocketAddr::new(ip.into(), port);
        let (stop_tx, stop_rx) = oneshot::channel();
        let run = PodRun {
            uid: uid.clone(),
            addr,
            extra: ports
                .iter()
                .skip(1)
                .map(|p| SocketAddr::new(ip.into(), *p))
                .collect(),
            command: self.opts.command.clone(),
            log: self
                .opts
                .log_dir
                .as_ref()
                .map(|d| d.join(format!("{ns}_{name}.log"))),
            start_delay: *self
                .shared
                .start_delay
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            grace: self.opts.stop_grace,
            probe_timeout: self.opts.probe_timeout,
        };
        self.tasks.spawn(run_pod(run, stop_rx, self.events.clone()));
        Some(Pod {
            info: PodInfo {
                namespace: ns.clone(),
                workload: workload.clone(),
                name,
                addr,
                started: false,
                alive: false,
                ready: false,
                terminating: false,
                restarts: 0,
            },
            uid,
            ordinal,
            seq: self.seq,
            labels: template["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            stop: Some(stop_tx),
        })
    }
}

fn relevant(c: &super::Change) -> bool {
    [
        &resources::DEPLOYMENTS,
        &resources::STATEFULSETS,
        &resources::SERVICES,
        &resources::ENDPOINTSLICES,
    ]
    .iter()
    .any(|d| c.resource.same(d))
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` characters from the apiserver's safe alphabet (no vowels).
fn encode(mut v: u64, n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| {
            let c = ALPHABET[(v % ALPHABET.len() as u64) as usize] as char;
            v /= ALPHABET.len() as u64;
            c
        })
        .collect()
}
