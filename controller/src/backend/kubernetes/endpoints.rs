//! Ready endpoints of each service, from EndpointSlices (discovery.k8s.io/v1), indexed
//! by Service (kube's reflector keeps a flat store: a lookup would scan every slice, and
//! a re-list at 10,000 services would be quadratic). Every change bumps a generation that waiting wakes watch, and
//! tells the runtime the service's new endpoints (an awake service follows its pods).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::service::{service_name, Target};
use zenvoy_core::model::Event;

/// The label EndpointSlice controllers put on a Service's slices.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice, and the value of Kubernetes' own EndpointSlice
/// controller: only its slices are trusted for readiness (anyone who may create a slice
/// in a namespace could otherwise point a woken Service's traffic anywhere).
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Ready `ip:port`s of `target` in `slices`: endpoints whose `ready` condition is not
/// false (the API says an unset `ready` means ready), on the slice port named like the
/// Service port. Sorted, without duplicates.
pub fn ready<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    target: &Target,
) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        if s.metadata.namespace.as_deref() != Some(target.namespace.as_str())
            || s.labels().get(SERVICE_LABEL) != Some(&target.service)
            || s.labels().get(MANAGED_BY).map(String::as_str) != Some(ENDPOINTSLICE_CONTROLLER)
            || !matches!(s.address_type.as_str(), "IPv4" | "IPv6")
        {
            continue;
        }
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or_default() == target.port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            out.extend(
                e.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The slices of one watch, by (namespace, Service name), then slice name: a wake or a
/// slice change looks at its own Service's slices only, not at every slice.
type Index = HashMap<(String, String), BTreeMap<String, EndpointSlice>>;

fn key_of(s: &EndpointSlice) -> Option<(String, String)> {
    Some((s.namespace()?, s.labels().get(SERVICE_LABEL)?.clone()))
}

/// Shared view of the EndpointSlices of the watched namespaces.
#[derive(Clone)]
pub struct Endpoints {
    indexes: Vec<Arc<RwLock<Index>>>,
    changed: watch::Receiver<u64>,
}

impl Endpoints {
    pub fn ready(&self, target: &Target) -> Vec<SocketAddr> {
        let key = (target.namespace.clone(), target.service.clone());
        let mut out = Vec::new();
        for index in &self.indexes {
            let index = index.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(slices) = index.get(&key) {
                out.extend(ready(slices.values(), target));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Changes whenever any slice changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }
}

pub type Targets = Arc<RwLock<HashMap<String, Target>>>;

pub fn target(targets: &Targets, service: &str) -> Option<Target> {
    targets
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(service)
        .cloned()
}

/// Apply one watch event to `index`; returns the (namespace, Service) keys it touched.
/// A re-list (`Init` .. `InitDone`) is buffered in `relist` and swapped in whole, so a
/// slice deleted while the watch was down disappears too.
fn apply(
    index: &RwLock<Index>,
    relist: &mut Option<Index>,
    ev: watcher::Event<EndpointSlice>,
) -> Vec<(String, String)> {
    let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
    match ev {
        watcher::Event::Init => {
            *relist = Some(Index::new());
            Vec::new()
        }
        watcher::Event::InitApply(s) => {
            if let (Some(key), Some(buf)) = (key_of(&s), relist.as_mut()) {
                buf.entry(key).or_default().insert(s.name_any(), s);
            }
            Vec::new()
        }
        watcher::Event::InitDone => {
            let fresh = relist.take().unwrap_or_default();
            let old = std::mem::replace(&mut *index, fresh);
            let mut touched: Vec<_> = old.into_keys().chain(index.keys().cloned()).collect();
            touched.sort();
            touched.dedup();
            touched
        }
        watcher::Event::Apply(s) => {
            let Some(key) = key_of(&s) else {
                return Vec::new();
            };
            index
                .entry(key.clone())
                .or_default()
                .insert(s.name_any(), s);
            vec![key]
        }
        watcher::Event::Delete(s) => {
            let Some(key) = key_of(&s) else {
                return Vec::new();
            };
            if let Some(slices) = index.get_mut(&key) {
                slices.remove(&s.name_any());
                if slices.is_empty() {
                    index.remove(&key);
                }
            }
            vec![key]
        }
    }
}

/// Start watching EndpointSlices of `namespaces` (all when empty). The watchers retry
/// with kube's default backoff for as long as the controller runs.
pub fn start<F>(
    client: &Client,
    namespaces: &[String],
    targets: Targets,
    events: mpsc::Sender<Event>,
    stopped: impl Fn() -> F,
) -> (Endpoints, Vec<tokio::task::JoinHandle<()>>)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let apis: Vec<Api<EndpointSlice>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|n| Api::namespaced(client.clone(), n))
            .collect()
    };
    let (tx, rx) = watch::channel(0u64);
    let tx = Arc::new(tx);
    let mut indexes = Vec::new();
    let mut tasks = Vec::new();
    for api in apis {
        let index = Arc::new(RwLock::new(Index::new()));
        indexes.push(index.clone());
        let config = watcher::Config::default().labels(SERVICE_LABEL);
        let stream = watcher(api, config).default_backoff();
        let (tx, targets, events) = (tx.clone(), targets.clone(), events.clone());
        let view = Endpoints {
            indexes: vec![index.clone()],
            changed: rx.clone(),
        };
        let stop = stopped();
        tasks.push(tokio::spawn(async move {
            futures::pin_mut!(stream);
            tokio::pin!(stop);
            let mut relist = None;
            loop {
                let ev = tokio::select! {
                    () = &mut stop => return,
                    ev = stream.next() => match ev { Some(ev) => ev, None => return },
                };
                let touched = match ev {
                    Ok(ev) => apply(&index, &mut relist, ev),
                    Err(e) => {
                        warn!(error = %e, "EndpointSlice watch failed; retrying");
                        continue;
                    }
                };
                if touched.is_empty() {
                    continue;
                }
                tx.send_modify(|g| *g += 1);
                for (ns, svc) in touched {
                    let service = service_name(&svc, &ns);
                    let Some(t) = target(&targets, &service) else {
                        continue;
                    };
                    let endpoints = view.ready(&t);
                    debug!(%service, endpoints = endpoints.len(), "endpoint slices changed");
                    if events
                        .send(Event::Endpoints { service, endpoints })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }));
    }
    (
        Endpoints {
            indexes,
            changed: rx,
        },
        tasks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kubernetes::service::Kind;

    fn slice(
        ns: &str,
        svc: &str,
        port: (&str, i32),
        eps: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": ns, "labels": {SERVICE_LABEL: svc, MANAGED_BY: ENDPOINTSLICE_CONTROLLER}},
            "addressType": "IPv4",
            "ports": [{"name": port.0, "port": port.1}],
            "endpoints": eps.iter().map(|(a, r)| serde_json::json!({"addresses": [a], "conditions": {"ready": r}})).collect::<Vec<_>>(),
        }))
        .expect("a slice")
    }

    #[test]
    fn a_relist_replaces_the_index_and_names_what_it_touched() {
        let index = RwLock::new(Index::new());
        let mut relist = None;
        let a = slice("db", "pg", ("sql", 5432), &[("10.0.0.1", Some(true))]);
        let b = slice("db", "redis", ("sql", 5432), &[("10.0.0.2", Some(true))]);
        let pg = ("db".to_string(), "pg".to_string());
        let redis = ("db".to_string(), "redis".to_string());
        assert_eq!(
            apply(&index, &mut relist, watcher::Event::Apply(a.clone())),
            vec![pg.clone()]
        );
        // A re-list that no longer has pg's slice: pg is touched and gone.
        assert!(apply(&index, &mut relist, watcher::Event::Init).is_empty());
        assert!(apply(&index, &mut relist, watcher::Event::InitApply(b.clone())).is_empty());
        assert_eq!(
            index.read().expect("lock").len(),
            1,
            "old state served until InitDone"
        );
        assert_eq!(
            apply(&index, &mut relist, watcher::Event::InitDone),
            vec![pg.clone(), redis.clone()]
        );
        assert!(!index.read().expect("lock").contains_key(&pg));
        assert_eq!(
            apply(&index, &mut relist, watcher::Event::Delete(b)),
            vec![redis.clone()]
        );
        assert!(index.read().expect("lock").is_empty());
    }

    #[test]
    fn ready_endpoints_of_the_service_port() {
        let t = Target {
            namespace: "db".into(),
            service: "pg".into(),
            kind: Kind::Deployment,
            workload: "pg".into(),
            port_name: "sql".into(),
            proxy_port: None,
            member: None,
        };
        let slices = [
            slice(
                "db",
                "pg",
                ("sql", 5432),
                &[
                    ("10.0.0.2", Some(true)),
                    ("10.0.0.1", None),
                    ("10.0.0.3", Some(false)),
                ],
            ),
            slice("db", "pg", ("metrics", 9000), &[("10.0.0.4", Some(true))]),
            slice("other", "pg", ("sql", 5432), &[("10.0.0.5", Some(true))]),
            slice("db", "redis", ("sql", 5432), &[("10.0.0.6", Some(true))]),
        ];
        let got = ready(slices.iter(), &t);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.1:5432".parse().expect("a"),
            "10.0.0.2:5432".parse().expect("a"),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn only_the_endpointslice_controllers_slices_are_trusted() {
        let target = Target {
            namespace: "db".into(),
            service: "pg".into(),
            kind: Kind::StatefulSet,
            workload: "pg".into(),
            port_name: "sql".into(),
            proxy_port: None,
            member: None,
        };
        let good = slice("db", "pg", ("sql", 5432), &[("10.0.0.1", Some(true))]);
        let mut forged = slice("db", "pg", ("sql", 5432), &[("10.9.9.9", Some(true))]);
        forged
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(MANAGED_BY.into(), "someone-else".into());
        let mut unlabelled = slice("db", "pg", ("sql", 5432), &[("10.8.8.8", Some(true))]);
        if let Some(l) = unlabelled.metadata.labels.as_mut() {
            l.remove(MANAGED_BY);
        }
        let got = ready([&good, &forged, &unlabelled].into_iter(), &target);
        assert_eq!(
            got,
            vec!["10.0.0.1:5432".parse::<SocketAddr>().expect("addr")]
        );
    }
}
