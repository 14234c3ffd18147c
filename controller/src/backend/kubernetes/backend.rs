//! The Kubernetes backend: wakes and parks a Service's Deployment or StatefulSet through
//! its `/scale` subresource, and reports ready endpoints from its EndpointSlices.
//!
//! - Park records the replica count on the workload (`zenvoy.io/parked-replicas`) and
//!   then scales to 0; wake scales back to that count (1 if none). Both are the only
//!   writes, so an HPA or KEDA that owns the count while it runs keeps it.
//! - Only the Lease holder writes. The planner asks a follower for wakes that only wait
//!   for endpoints (the leader sees the same demand and scales) and for no park; this
//!   backend also checks the gate itself before every write, for a lead lost meanwhile.
//! - API errors are retried with backoff until the wake timeout; the held connections
//!   wait in the holder meanwhile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use zenvoy_base::Backoff;
use zenvoy_core::planner::Notice;

use super::api::{bounded, ApiError};
use super::endpoints::{self, Endpoints, Targets};
use super::events::{reference, Events};
use super::service::{self, Kind, Target, PARKED_REPLICAS};
use crate::backend::{Backend, BackendError, BoxFuture};
use crate::telemetry::{Metrics, OpLabel};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The pause before a failed scale step is tried again: 200 ms, doubling up to 5 s (a
/// wake also reads the scale again every 5 s while it waits for endpoints).
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a wake from zero ignores the addresses that were ready at its scale-up.
const STALE_FOR: Duration = Duration::from_secs(5);
/// A park retries for this long, then gives up (the workload stays up; the next wake
/// finds it running).
const PARK_RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct KubeBackend {
    client: Client,
    targets: Targets,
    endpoints: Endpoints,
    leader: watch::Receiver<bool>,
    events: Events,
    metrics: Arc<Metrics>,
    scale_locks: Arc<std::sync::Mutex<HashMap<String, Arc<ScaleLock>>>>,
    /// `inCluster`: the Services' own EndpointSlices.
    slices: Option<super::slices::Slices>,
}

fn api_error(service: &str, what: &'static str, source: ApiError) -> BackendError {
    BackendError::Kubernetes {
        service: service.to_string(),
        what,
        source,
    }
}

/// Addresses that were ready when a wake found its workload at zero: pods still
/// terminating after a park, not the ones the wake waits for. They are ignored until
/// they leave the slices or until `until` (a scale back up before the workload
/// controller saw the 0 keeps the same pods, which never leave). Pure: time is given.
#[derive(Debug, Clone, PartialEq)]
pub struct Stale {
    pub addrs: Vec<SocketAddr>,
    pub until: std::time::Instant,
}

impl Stale {
    /// `ready` without the addresses of `stale` that still count at `now`. An address
    /// that has left the slices stops counting (a pod that later comes with it is new);
    /// past `until` nothing counts and `stale` is cleared.
    pub fn filter(
        stale: &mut Option<Stale>,
        mut ready: Vec<SocketAddr>,
        now: std::time::Instant,
    ) -> Vec<SocketAddr> {
        if let Some(s) = stale.as_mut() {
            if now < s.until {
                s.addrs.retain(|a| ready.contains(a));
                ready.retain(|a| !s.addrs.contains(a));
            } else {
                *stale = None;
            }
        }
        ready
    }
}

impl KubeBackend {
    pub fn new(
        client: Client,
        targets: Targets,
        endpoints: Endpoints,
        leader: watch::Receiver<bool>,
        events: Events,
        metrics: Arc<Metrics>,
    ) -> Self {
        KubeBackend {
            client,
            targets,
            endpoints,
            leader,
            events,
            metrics,
            scale_locks: Arc::default(),
            slices: None,
        }
    }

    /// `inCluster`: keep each Service's EndpointSlice with `slices`.
    pub fn with_slices(mut self, slices: super::slices::Slices) -> Self {
        self.slices = Some(slices);
        self
    }

    fn count_error(&self, op: &'static str) {
        self.metrics
            .kube_api_errors
            .get_or_create(&OpLabel { op })
            .inc();
    }

    fn workload_ref(t: &Target) -> k8s_openapi::api::core::v1::ObjectReference {
        let kind = match t.kind {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
        };
        reference("apps/v1", kind, &t.namespace, &t.workload)
    }

    /// Scale `t` up to its remembered count if it is at 0. `Some((0, n))` when it did.
    async fn scale_up(&self, t: &Target) -> Result<Scaled, kube::Error> {
        let current = replicas(&self.client, t).await?;
        if current > 0 {
            return Ok(Scaled::Already);
        }
        let meta = workload_api(&self.client, t)
            .get(&t.workload)
            .await?
            .metadata;
        if !workload_opted_in(&meta) {
            return Ok(Scaled::NotOptedIn);
        }
        let remembered = parked_replicas(&meta).unwrap_or(1).max(1);
        scale(&self.client, t, remembered).await?;
        Ok(Scaled::From(current, remembered))
    }

    /// Remember the count and scale `t` to 0.
    async fn scale_down(&self, t: &Target) -> Result<Scaled, kube::Error> {
        let current = replicas(&self.client, t).await?;
        if current == 0 {
            return Ok(Scaled::Already);
        }
        let meta = workload_api(&self.client, t)
            .get(&t.workload)
            .await?
            .metadata;
        if !workload_opted_in(&meta) {
            return Ok(Scaled::NotOptedIn);
        }
        let patch = serde_json::json!({"metadata": {"annotations": {PARKED_REPLICAS: current.to_string()}}});
        workload_api(&self.client, t)
            .patch(&t.workload, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        scale(&self.client, t, 0).await?;
        Ok(Scaled::From(current, 0))
    }

    fn not_opted_in(&self, t: &Target) {
        self.events.warning(
            Self::workload_ref(t),
            "WorkloadNotOptedIn",
            format!(
                "zenvoy does not scale {t}: the workload itself lacks {}: \"true\" (the Service's opt-in alone is not enough)",
                service::ENABLED
            ),
        );
    }

    /// The scale lock of the service's workload, made on first use: the ports of one
    /// Service (services of their own, see `service::other_ports`) share it, so a park
    /// asked for one port and a wake asked for another are serialized, and the wake
    /// supersedes the park.
    fn scale_lock(&self, service: &str) -> Arc<ScaleLock> {
        let key = endpoints::target(&self.targets, service)
            .map_or_else(|| service.to_string(), |t| t.to_string());
        let mut locks = self
            .scale_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        locks.entry(key).or_default().clone()
    }

    /// `scale`: scale up (while the gate is open); without it, only wait for endpoints.
    async fn wake_loop(
        self,
        service: String,
        timeout: Duration,
        scale: bool,
        scale_lock: Arc<ScaleLock>,
    ) -> Result<Vec<SocketAddr>, BackendError> {
        let started = Instant::now();
        // A timeout too large to add is as good as none (config bounds it; this cannot
        // panic whatever it is given).
        let deadline = started
            .checked_add(timeout)
            .unwrap_or_else(|| started + Duration::from_secs(86_400 * 365));
        let mut changes = self.endpoints.changes();
        let mut leader = self.leader.clone();
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        let mut last_error: Option<ApiError> = None;
        let mut not_opted_in = false;
        // Leader: the workload was seen with replicas (this wake scaled it, or it ran).
        let mut running = false;
        // Read the scale on this pass (first, when `next_check` comes, or after a
        // leadership change; not on every EndpointSlice change anywhere).
        let mut check = true;
        let mut next_check = started;
        let mut stale: Option<Stale> = None;
        loop {
            let Some(t) = endpoints::target(&self.targets, &service) else {
                return Err(BackendError::UnknownService(service));
            };
            // Scale only when asked to and still allowed to (a lead lost meanwhile).
            let may_scale = scale && *leader.borrow_and_update();
            if may_scale && check {
                // Serialized with this service's park: a park in flight finishes first,
                // and this wake then finds 0 and scales up.
                let _scaling = scale_lock.lock.lock().await;
                if Instant::now() >= deadline {
                    // The runtime gave up on this wake; scaling now would leave a
                    // workload running that it thinks parked.
                    return Err(BackendError::NotReadyInTime {
                        service,
                        waited: timeout,
                        detail: "the wake's deadline passed before it could scale".into(),
                    });
                }
                match bounded(self.scale_up(&t)).await {
                    Ok(Scaled::From(from, to)) => {
                        running = true;
                        stale = Some(Stale {
                            addrs: self.endpoints.ready(&t),
                            until: (Instant::now() + STALE_FOR).into_std(),
                        });
                        info!(%service, workload = %t, from, to, "scaled up");
                        self.events.normal(
                            Self::workload_ref(&t),
                            "Waking",
                            format!("zenvoy scaled {t} from {from} to {to} replicas for a waiting connection"),
                        );
                    }
                    Ok(Scaled::Already) => running = true,
                    Ok(Scaled::NotOptedIn) => {
                        running = false;
                        if !not_opted_in {
                            not_opted_in = true;
                            warn!(%service, workload = %t, "workload not opted in; not scaling it");
                            self.not_opted_in(&t);
                        }
                    }
                    Err(e) => {
                        running = false;
                        self.count_error("scale_up");
                        if last_error.is_none() {
                            self.events.warning(
                                Self::workload_ref(&t),
                                "WakeFailed",
                                format!("zenvoy cannot scale {t} up (retrying until the wake timeout): {e}"),
                            );
                        }
                        // What `backoff.failed()` below pauses (unless endpoints are ready first).
                        let retry_in = backoff.next();
                        warn!(%service, workload = %t, error = %e, ?retry_in, "scale up failed; retrying");
                        last_error = Some(e);
                    }
                }
            }
            let ready = Stale::filter(
                &mut stale,
                self.endpoints.ready(&t),
                Instant::now().into_std(),
            );
            if !ready.is_empty() && (running || !may_scale) {
                debug!(%service, endpoints = ready.len(), took = ?started.elapsed(), "ready");
                return Ok(ready);
            }
            if check {
                let pause = if running || !may_scale {
                    BACKOFF_MAX
                } else {
                    backoff.failed()
                };
                next_check = Instant::now() + pause;
                check = false;
            }
            // Also look again when the stale addresses stop counting.
            let wake_at = stale
                .as_ref()
                .map_or(next_check, |s| next_check.min(Instant::from_std(s.until)));
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return Err(BackendError::Stopping { service });
                },
                r = leader.changed() => {
                    if r.is_err() {
                        return Err(BackendError::Stopping { service });
                    }
                    check = true;
                }
                () = tokio::time::sleep_until(wake_at) => check = Instant::now() >= next_check,
                () = tokio::time::sleep_until(deadline) => {
                    let detail = match last_error {
                        None if not_opted_in => format!("the workload lacks {}: \"true\"", service::ENABLED),
                        Some(e) => format!("scale up: {e}"),
                        None if may_scale => "no ready endpoint in its EndpointSlices".into(),
                        None => "not scaling (not the leader), and no ready endpoint appeared".into(),
                    };
                    return Err(BackendError::NotReadyInTime { service, waited: timeout, detail });
                }
            }
        }
    }

    async fn park_loop(
        self,
        service: String,
        scale_lock: Arc<ScaleLock>,
        epoch: u64,
    ) -> Result<(), BackendError> {
        let deadline = Instant::now() + PARK_RETRY_FOR;
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        loop {
            if !*self.leader.borrow() {
                debug!(%service, "not the leader; the leader parks");
                return Ok(());
            }
            let Some(t) = endpoints::target(&self.targets, &service) else {
                return Err(BackendError::UnknownService(service));
            };
            let scaled = {
                let _scaling = scale_lock.lock.lock().await;
                // A wake asked for after this park supersedes it (a park retried through
                // an outage must not stop what a later connection woke).
                if scale_lock.epoch.load(Ordering::SeqCst) != epoch {
                    info!(%service, "park superseded by a later wake");
                    return Ok(());
                }
                bounded(self.scale_down(&t)).await
            };
            match scaled {
                Ok(Scaled::From(from, _)) => {
                    info!(%service, workload = %t, from, "scaled to zero");
                    self.events.normal(
                        Self::workload_ref(&t),
                        "Parked",
                        format!("zenvoy scaled {t} from {from} to 0 replicas after its idle timeout ({PARKED_REPLICAS}={from})"),
                    );
                    return Ok(());
                }
                Ok(Scaled::Already) => return Ok(()),
                Ok(Scaled::NotOptedIn) => {
                    warn!(%service, workload = %t, "workload not opted in; not scaling it to zero");
                    self.not_opted_in(&t);
                    return Ok(());
                }
                Err(e) => {
                    self.count_error("scale_down");
                    let pause = backoff.failed();
                    if Instant::now() + pause > deadline {
                        self.events.warning(
                            Self::workload_ref(&t),
                            "ParkFailed",
                            format!("zenvoy cannot scale {t} to zero: {e}"),
                        );
                        return Err(api_error(&service, "scale to zero", e));
                    }
                    warn!(%service, workload = %t, error = %e, retry_in = ?pause, "park failed; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Per workload (shared by the services of its Service's ports): the scale steps of its
/// wakes and parks take turns under `lock`, and each wake bumps `epoch` so that an older
/// park gives up.
#[derive(Debug, Default)]
pub struct ScaleLock {
    lock: tokio::sync::Mutex<()>,
    epoch: AtomicU64,
}

impl Backend for KubeBackend {
    fn wake(
        &self,
        service: &str,
        timeout: Duration,
        scale: bool,
    ) -> BoxFuture<'static, Result<Vec<SocketAddr>, BackendError>> {
        let scale_lock = self.scale_lock(service);
        scale_lock.epoch.fetch_add(1, Ordering::SeqCst);
        Box::pin(
            self.clone()
                .wake_loop(service.to_string(), timeout, scale, scale_lock),
        )
    }

    fn park(&self, service: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let scale_lock = self.scale_lock(service);
        let epoch = scale_lock.epoch.load(Ordering::SeqCst);
        Box::pin(
            self.clone()
                .park_loop(service.to_string(), scale_lock, epoch),
        )
    }

    /// Workloads keep running when the controller stops: a restarted controller picks
    /// them up from the API.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Whether the workload has replicas (its `/scale`).
    fn running(&self, service: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let target = endpoints::target(&self.targets, service);
        let client = self.client.clone();
        let service = service.to_string();
        Box::pin(async move {
            let Some(t) = target else {
                return Err(BackendError::UnknownService(service));
            };
            bounded(replicas(&client, &t))
                .await
                .map(|n| n > 0)
                .map_err(|e| api_error(&service, "read the scale", e))
        })
    }

    /// An Event on the Service the notice is about.
    fn steer(&self, service: &str, steer: zenvoy_core::model::Steer) {
        if let Some(slices) = &self.slices {
            slices.set(service, steer);
        }
    }

    fn notify(&self, notice: &Notice) {
        let Some(t) = endpoints::target(&self.targets, &notice.service) else {
            return;
        };
        let about = reference("v1", "Service", &t.namespace, &t.service);
        if notice.warning {
            self.events
                .warning(about, notice.reason, notice.note.clone());
        } else {
            self.events
                .normal(about, notice.reason, notice.note.clone());
        }
    }
}

/// The workload's API, whichever kind it is: both are served the same way (object,
/// `/scale`), so one dynamic Api covers them.
fn workload_api(client: &Client, t: &Target) -> Api<DynamicObject> {
    let resource = match t.kind {
        Kind::Deployment => ApiResource::erase::<Deployment>(&()),
        Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
    };
    Api::namespaced_with(client.clone(), &t.namespace, &resource)
}

/// The workload's desired replicas, from its scale subresource.
pub async fn replicas(client: &Client, t: &Target) -> Result<i32, kube::Error> {
    let s = workload_api(client, t).get_scale(&t.workload).await?;
    Ok(s.spec.and_then(|s| s.replicas).unwrap_or(0))
}

async fn scale(client: &Client, t: &Target, replicas: i32) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    workload_api(client, t)
        .patch_scale(&t.workload, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// What a scale step found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scaled {
    /// From this many replicas to that many.
    From(i32, i32),
    /// Already where it was asked to be.
    Already,
    /// The workload lacks its own opt-in: not touched.
    NotOptedIn,
}

/// The most replicas a wake restores from the annotation: whoever can edit a workload's
/// annotations must not make a wake start thousands of pods.
pub const MAX_PARKED_REPLICAS: i32 = 1000;

/// The workload opted in itself (`zenvoy.io/enabled: "true"` on its own metadata): a
/// user who may edit a Service but not the workload cannot have zenvoy scale it.
pub fn workload_opted_in(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(service::ENABLED))
        .is_some_and(|v| v.trim() == "true")
}

/// The count recorded at the last park, capped at [`MAX_PARKED_REPLICAS`]; an unreadable
/// value counts as none.
pub fn parked_replicas(meta: &ObjectMeta) -> Option<i32> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(PARKED_REPLICAS))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|n| *n > 0)
        .map(|n| n.min(MAX_PARKED_REPLICAS))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_workload_must_opt_in_itself() {
        assert!(workload_opted_in(&meta(&[(service::ENABLED, "true")])));
        assert!(!workload_opted_in(&meta(&[(service::ENABLED, "false")])));
        assert!(!workload_opted_in(&meta(&[])));
        assert!(!workload_opted_in(&ObjectMeta::default()));
    }

    #[test]
    fn the_parked_replica_count_is_capped_and_garbage_is_none() {
        assert_eq!(parked_replicas(&meta(&[(PARKED_REPLICAS, "3")])), Some(3));
        assert_eq!(
            parked_replicas(&meta(&[(PARKED_REPLICAS, "2147483647")])),
            Some(MAX_PARKED_REPLICAS)
        );
        for bad in ["0", "-2", "many", ""] {
            assert_eq!(
                parked_replicas(&meta(&[(PARKED_REPLICAS, bad)])),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn stale_addresses_are_ignored_until_they_leave_or_their_time_is_up() {
        let a: SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:80".parse().expect("addr");
        let now = std::time::Instant::now();
        let later = now + std::time::Duration::from_secs(5);
        let mut stale = Some(Stale {
            addrs: vec![a],
            until: later,
        });
        // The terminating pod is still listed: ignored; a new one counts.
        assert_eq!(Stale::filter(&mut stale, vec![a, b], now), vec![b]);
        // It left the slices: a pod that later comes with its address is new.
        assert_eq!(Stale::filter(&mut stale, vec![b], now), vec![b]);
        assert_eq!(Stale::filter(&mut stale, vec![a, b], now), vec![a, b]);
        // Past the bound nothing is stale any more.
        let mut stale = Some(Stale {
            addrs: vec![a],
            until: later,
        });
        assert_eq!(Stale::filter(&mut stale, vec![a], later), vec![a]);
        assert!(stale.is_none());
    }
}
