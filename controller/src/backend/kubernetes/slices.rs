//! `inCluster`: a parked Service keeps its name. While a fronted Service is not awake the
//! controller keeps an EndpointSlice of its own for each of its ports
//! (`zenvoy-<service>[.<port>]`, labelled with the Service's name and managed by
//! `controller.zenvoy.io`) listing the proxy pods on the port's allocated proxy port, so
//! kube-proxy sends the Service's virtual IP to them (and they hold, and wake); once it
//! is awake the slice is deleted and the Service's traffic goes straight to its pods. The
//! ports live in the `zenvoy-ports` ConfigMap (`port_store`); a slice left by an older
//! controller, which kept its slice to store the port, is still read back ([`load`]).
//!
//! ```text
//!  runtime --Steer{service, Proxy|Direct|Gone}--> Slices::set --> writer task
//!     ^                                                           | (leader only)
//!     +------------ Event::Steered once it is in the API ---------+--> EndpointSlice
//!  proxy Service's EndpointSlices --watch--> proxy addresses ----^   (rewritten when
//!                                                                     they move)
//! ```
//!
//! What a slice holds is decided by [`desired`] (pure); the writer only writes it,
//! retrying with a backoff while it is still what is wanted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};
use zenvoy_base::Backoff;
use zenvoy_core::model::{Event, Steer};

use super::api::{bounded, sleep_or_never, ApiError};
use super::endpoints::{self, Targets, ENDPOINTSLICE_CONTROLLER, MANAGED_BY, SERVICE_LABEL};
use super::service::{member_name, service_name, Target};

/// `endpointslice.kubernetes.io/managed-by` of the slices zenvoy writes.
pub const MANAGED_BY_ZENVOY: &str = "controller.zenvoy.io";

/// The pause before a failed list or write of the slices is tried again: 500 ms,
/// doubling up to 30 s, back to 500 ms after a success.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The slice's name for `target`: `zenvoy-<Service>` for the port zenvoy fronts,
/// `zenvoy-<Service>.<port>` for each other port (a Service name has no `.`, so no
/// two of them meet).
pub fn slice_name(target: &Target) -> String {
    match &target.member {
        None => format!("zenvoy-{}", target.service),
        Some(member) => format!("zenvoy-{}.{member}", target.service),
    }
}

/// The zenvoy service a slice of ours belongs to, from its name and its Service label:
/// `<name>.<namespace>`, or `<name>.<namespace>_<port>` for another port. Pure.
fn slice_owner(slice_name: &str, service: &str, namespace: &str) -> Option<String> {
    let rest = slice_name.strip_prefix("zenvoy-")?.strip_prefix(service)?;
    let key = service_name(service, namespace);
    match rest.strip_prefix('.') {
        None if rest.is_empty() => Some(key),
        Some(member) if !member.is_empty() => Some(member_name(&key, member)),
        _ => None,
    }
}

/// The slice that makes `target`'s name lead where `steer` says, with the proxies at
/// `proxies`; None for [`Steer::Direct`] and [`Steer::Gone`] (delete it: the pods' own
/// slices are then the Service's only ones). Pure.
pub fn desired(target: &Target, steer: Steer, proxies: &[IpAddr]) -> Option<EndpointSlice> {
    let port = target.proxy_port?;
    let endpoints = match steer {
        Steer::Gone | Steer::Direct => return None,
        Steer::Proxy => proxies
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                ..Default::default()
            })
            .collect(),
    };
    let v6 = proxies.first().is_some_and(IpAddr::is_ipv6);
    Some(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(target)),
            namespace: Some(target.namespace.clone()),
            labels: Some(BTreeMap::from([
                (SERVICE_LABEL.to_string(), target.service.clone()),
                (MANAGED_BY.to_string(), MANAGED_BY_ZENVOY.to_string()),
            ])),
            ..Default::default()
        },
        address_type: if v6 { "IPv6" } else { "IPv4" }.to_string(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: (!target.port_name.is_empty()).then(|| target.port_name.clone()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".to_string()),
            app_protocol: None,
        }]),
    })
}

/// zenvoy service (a Service, or another port of one) -> proxy port, from slices zenvoy
/// wrote. Pure.
pub fn allocations<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<(String, u16)> {
    slices
        .into_iter()
        .filter(|s| s.labels().get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_ZENVOY))
        .filter_map(|s| {
            let svc = s.labels().get(SERVICE_LABEL)?;
            let ns = s.metadata.namespace.as_deref()?;
            let port = s.ports.as_ref()?.first()?.port?;
            let owner = slice_owner(s.metadata.name.as_deref()?, svc, ns)?;
            Some((owner, u16::try_from(port).ok()?))
        })
        .collect()
}

/// The EndpointSlice mirroring controller's `managed-by`: it writes the slices of a
/// Service without a selector from its Endpoints object.
pub const MIRRORING_CONTROLLER: &str = "endpointslice-mirroring-controller.k8s.io";

/// Ready addresses of the proxies' Service, from its slices (Kubernetes' own: the
/// EndpointSlice controller's, or the mirroring controller's for a Service without a
/// selector). Pure.
pub fn proxy_addresses<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = slices
        .into_iter()
        .filter(|s| {
            matches!(
                s.labels().get(MANAGED_BY).map(String::as_str),
                Some(ENDPOINTSLICE_CONTROLLER | MIRRORING_CONTROLLER)
            )
        })
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Read the ports of every slice zenvoy wrote in `namespaces` (all when empty), retrying
/// until the API answers: ports must not move because the API was slow at start.
pub async fn load(client: &Client, namespaces: &[String]) -> Vec<(String, u16)> {
    let selector = format!("{MANAGED_BY}={MANAGED_BY_ZENVOY}");
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    loop {
        let mut all = Vec::new();
        let mut failed = None;
        let apis: Vec<Api<EndpointSlice>> = if namespaces.is_empty() {
            vec![Api::all(client.clone())]
        } else {
            namespaces
                .iter()
                .map(|n| Api::namespaced(client.clone(), n))
                .collect()
        };
        for api in apis {
            let lp = ListParams::default().labels(&selector);
            match bounded(api.list(&lp)).await {
                Ok(list) => all.extend(allocations(&list.items)),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            None => {
                info!(slices = all.len(), "inCluster: proxy ports read back");
                return all;
            }
            Some(e) => {
                warn!(error = %e, "inCluster: cannot list zenvoy's EndpointSlices; trying again");
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

/// The writer's shared state: what each Service's slice should say, and the Service it
/// belongs to (kept: by the time a removed Service's slice is deleted, discovery has
/// forgotten it).
#[derive(Default)]
struct Wanted {
    steers: HashMap<String, (Steer, Target)>,
    /// Services whose slice must be (re)written.
    dirty: HashSet<String>,
}

/// The controller's slices: [`Slices::set`] records a steer, a task writes it.
#[derive(Clone)]
pub struct Slices {
    wanted: Arc<Mutex<Wanted>>,
    wake: Arc<Notify>,
    targets: Targets,
}

impl Slices {
    /// Start watching the proxies' Service and writing slices (only while `leader`
    /// reads true; a new leader writes every slice again).
    pub fn start<F>(
        client: Client,
        proxy: (String, String),
        targets: Targets,
        runtime: mpsc::Sender<Event>,
        leader: watch::Receiver<bool>,
        stopped: impl Fn() -> F,
    ) -> (Slices, Vec<tokio::task::JoinHandle<()>>)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let slices = Slices {
            wanted: Arc::default(),
            wake: Arc::default(),
            targets,
        };
        let (addr_tx, addr_rx) = watch::channel(Vec::new());
        let watching = tokio::spawn(watch_proxies(client.clone(), proxy, addr_tx, stopped()));
        let writing =
            tokio::spawn(
                slices
                    .clone()
                    .write_loop(client, runtime, leader, addr_rx, stopped()),
            );
        (slices, vec![watching, writing])
    }

    /// `service`'s slice is to say `steer`.
    pub fn set(&self, service: &str, steer: Steer) {
        let known = endpoints::target(&self.targets, service);
        let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        let target = known.or_else(|| w.steers.get(service).map(|(_, t)| t.clone()));
        let Some(target) = target else {
            debug!(
                service,
                ?steer,
                "inCluster: no Service to write a slice for"
            );
            return;
        };
        w.steers.insert(service.to_string(), (steer, target));
        w.dirty.insert(service.to_string());
        drop(w);
        self.wake.notify_one();
    }

    /// Mark every slice to be written again (`proxied_only`: only those that list the
    /// proxies, when their addresses moved).
    fn mark_all(&self, proxied_only: bool) {
        let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        let all: Vec<String> = w
            .steers
            .iter()
            .filter(|(_, (steer, _))| !proxied_only || *steer == Steer::Proxy)
            .map(|(k, _)| k.clone())
            .collect();
        w.dirty.extend(all);
        drop(w);
        self.wake.notify_one();
    }

    async fn write_loop(
        self,
        client: Client,
        runtime: mpsc::Sender<Event>,
        mut leader: watch::Receiver<bool>,
        mut proxies: watch::Receiver<Vec<IpAddr>>,
        stopped: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
        loop {
            let leading = *leader.borrow();
            let batch: Vec<(String, Steer, Target)> = if leading {
                let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
                let dirty: Vec<String> = w.dirty.drain().collect();
                dirty
                    .into_iter()
                    .filter_map(|s| {
                        let (steer, target) = w.steers.get(&s)?.clone();
                        Some((s, steer, target))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let addresses = proxies.borrow().clone();
            let mut failed = false;
            for (service, steer, target) in batch {
                match write(&client, &target, steer, &addresses).await {
                    Ok(()) => {
                        debug!(%service, ?steer, "inCluster: slice written");
                        if steer == Steer::Gone {
                            self.forget(&service, steer);
                        }
                        if runtime
                            .send(Event::Steered { service, steer })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(%service, ?steer, error = %e, "inCluster: cannot write the Service's EndpointSlice; trying again");
                        let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
                        w.dirty.insert(service);
                        failed = true;
                    }
                }
            }
            let retry = if failed {
                Some(backoff.failed())
            } else {
                backoff.succeeded();
                None
            };
            tokio::select! {
                () = &mut stopped => return,
                () = self.wake.notified() => {}
                () = sleep_or_never(retry) => {}
                r = leader.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if *leader.borrow_and_update() {
                        info!("inCluster: leading; writing every Service's EndpointSlice");
                        self.mark_all(false);
                    }
                }
                r = proxies.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let now = proxies.borrow_and_update().clone();
                    info!(proxies = ?now, "inCluster: proxy addresses changed; rewriting the slices");
                    self.mark_all(true);
                }
            }
        }
    }

    /// Drop `service` once its slice is gone (unless another steer came meanwhile).
    fn forget(&self, service: &str, steer: Steer) {
        let mut w = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        if steer == Steer::Gone && w.steers.get(service).is_some_and(|(r, _)| *r == steer) {
            w.steers.remove(service);
        }
    }
}

/// Write (or delete) `target`'s slice for `steer`: a merge patch of what zenvoy owns in
/// it, or a create when there is none yet.
async fn write(
    client: &Client,
    target: &Target,
    steer: Steer,
    proxies: &[IpAddr],
) -> Result<(), ApiError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &target.namespace);
    let name = slice_name(target);
    let Some(slice) = desired(target, steer, proxies) else {
        return match bounded(api.delete(&name, &DeleteParams::default())).await {
            Ok(_) => Ok(()),
            Err(ApiError::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        };
    };
    let patch = serde_json::json!({
        "metadata": { "labels": slice.metadata.labels },
        "addressType": slice.address_type,
        "endpoints": slice.endpoints,
        "ports": slice.ports,
    });
    match bounded(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))).await {
        Ok(_) => Ok(()),
        Err(ApiError::Kube(kube::Error::Api(e))) if e.code == 404 => {
            match bounded(api.create(&PostParams::default(), &slice)).await {
                Ok(_) => Ok(()),
                // Created meanwhile (another writer, a retry): the next write patches it.
                Err(ApiError::Kube(kube::Error::Api(e))) if e.code == 409 => {
                    bounded(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)))
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Watch the proxies' Service's EndpointSlices; publish their ready addresses.
async fn watch_proxies(
    client: Client,
    (namespace, service): (String, String),
    tx: watch::Sender<Vec<IpAddr>>,
    stopped: impl std::future::Future<Output = ()>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_LABEL}={service}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    tokio::pin!(stopped);
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, EndpointSlice>> = None;
    loop {
        let ev = tokio::select! {
            () = &mut stopped => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        match ev {
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(r) = relist.as_mut() {
                    r.insert(s.name_any(), s);
                }
            }
            Ok(watcher::Event::InitDone) => slices = relist.take().unwrap_or_default(),
            Ok(watcher::Event::Apply(s)) => {
                slices.insert(s.name_any(), s);
            }
            Ok(watcher::Event::Delete(s)) => {
                slices.remove(&s.name_any());
            }
            Err(e) => {
                warn!(error = %e, "inCluster: watch of the proxies' EndpointSlices failed; retrying");
                continue;
            }
        }
        let now = proxy_addresses(slices.values());
        tx.send_if_modified(|old| {
            let changed = *old != now;
            if changed {
                *old = now;
            }
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kubernetes::service::Kind;

    fn target() -> Target {
        Target {
            namespace: "db".into(),
            service: "postgres".into(),
            kind: Kind::StatefulSet,
            workload: "postgres".into(),
            port_name: "pg".into(),
            proxy_port: Some(20003),
            member: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn parked_lists_the_proxies_awake_lists_nothing_gone_deletes() {
        let proxies = [ip("10.0.0.7"), ip("10.0.0.8")];
        let s = desired(&target(), Steer::Proxy, &proxies).expect("a slice");
        assert_eq!(s.metadata.name.as_deref(), Some("zenvoy-postgres"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("db"));
        let labels = s.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels[SERVICE_LABEL], "postgres",
            "kube-proxy merges it into the Service"
        );
        assert_eq!(labels[MANAGED_BY], MANAGED_BY_ZENVOY);
        assert_eq!(s.address_type, "IPv4");
        let port = &s.ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("pg"), Some(20003)),
            "named as the Service port, on the proxy port"
        );
        let addrs: Vec<&str> = s
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().map(String::as_str))
            .collect();
        assert_eq!(addrs, ["10.0.0.7", "10.0.0.8"]);

        assert!(
            desired(&target(), Steer::Direct, &proxies).is_none(),
            "awake: no slice of zenvoy's"
        );
        assert!(desired(&target(), Steer::Gone, &proxies).is_none());
        let no_port = Target {
            proxy_port: None,
            ..target()
        };
        assert!(desired(&no_port, Steer::Proxy, &proxies).is_none());
    }

    #[test]
    fn ports_are_read_back_from_zenvoys_slices_only() {
        let ours = desired(&target(), Steer::Proxy, &[]).expect("slice");
        let mut theirs = ours.clone();
        if let Some(l) = theirs.metadata.labels.as_mut() {
            l.insert(MANAGED_BY.into(), ENDPOINTSLICE_CONTROLLER.into());
        }
        let other_port = Target {
            member: Some("metrics".into()),
            port_name: "metrics".into(),
            proxy_port: Some(20004),
            ..target()
        };
        let second = desired(&other_port, Steer::Proxy, &[ip("10.0.0.7")]).expect("slice");
        assert_eq!(
            second.metadata.name.as_deref(),
            Some("zenvoy-postgres.metrics")
        );
        // Named by someone else into our Service's label: not ours to read.
        let mut stray = ours.clone();
        stray.metadata.name = Some("zenvoy-postgresql".into());
        assert_eq!(
            allocations([&ours, &theirs, &second, &stray]),
            [
                ("postgres.db".to_string(), 20003),
                ("postgres.db_metrics".to_string(), 20004)
            ]
        );
    }

    #[test]
    fn proxy_addresses_are_the_ready_ones_of_the_endpointslice_controller() {
        let slice = |managed: &str, eps: &[(&str, Option<bool>)]| EndpointSlice {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_string(),
                    managed.to_string(),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        };
        let good = slice(
            ENDPOINTSLICE_CONTROLLER,
            &[
                ("10.0.0.2", Some(true)),
                ("10.0.0.1", None),
                ("10.0.0.3", Some(false)),
            ],
        );
        let forged = slice("someone-else", &[("6.6.6.6", Some(true))]);
        assert_eq!(
            proxy_addresses([&good, &forged]),
            [ip("10.0.0.1"), ip("10.0.0.2")]
        );
    }
}
