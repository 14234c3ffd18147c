//! Ready endpoints of each service, from EndpointSlices (discovery.k8s.io/v1), kept by
//! kube's reflector. Every change bumps a generation that waiting wakes watch, and
//! tells the runtime the service's new endpoints (an awake service follows its pods).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::service::{service_name, Target};
use crate::runtime::Event;

/// The label EndpointSlice controllers put on a Service's slices.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";

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

/// Shared view of the EndpointSlices of the watched namespaces.
#[derive(Clone)]
pub struct Endpoints {
    stores: Vec<Store<EndpointSlice>>,
    changed: watch::Receiver<u64>,
}

impl Endpoints {
    pub fn ready(&self, target: &Target) -> Vec<SocketAddr> {
        let slices: Vec<_> = self.stores.iter().flat_map(Store::state).collect();
        ready(slices.iter().map(AsRef::as_ref), target)
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

/// Start watching EndpointSlices of `namespaces` (all when empty). The watchers retry
/// with kube's default backoff for as long as the controller runs.
pub fn start(
    client: &Client,
    namespaces: &[String],
    targets: Targets,
    events: mpsc::Sender<Event>,
) -> (Endpoints, Vec<tokio::task::JoinHandle<()>>) {
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
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    for api in apis {
        let (store, writer) = reflector::store();
        stores.push(store.clone());
        let config = watcher::Config::default().labels(SERVICE_LABEL);
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let (tx, targets, events) = (tx.clone(), targets.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let touched: Vec<String> = match ev {
                    Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => {
                        match (s.labels().get(SERVICE_LABEL), s.namespace()) {
                            (Some(svc), Some(ns)) => vec![service_name(svc, &ns)],
                            _ => Vec::new(),
                        }
                    }
                    Ok(watcher::Event::InitDone) => targets
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .keys()
                        .cloned()
                        .collect(),
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(error = %e, "EndpointSlice watch failed; retrying");
                        continue;
                    }
                };
                tx.send_modify(|g| *g += 1);
                for service in touched {
                    let Some(t) = target(&targets, &service) else {
                        continue;
                    };
                    let endpoints = ready(store.state().iter().map(AsRef::as_ref), &t);
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
            stores,
            changed: rx,
        },
        tasks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::service::Kind;

    fn slice(
        ns: &str,
        svc: &str,
        port: (&str, i32),
        eps: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{svc}-x"), "namespace": ns, "labels": {SERVICE_LABEL: svc}},
            "addressType": "IPv4",
            "ports": [{"name": port.0, "port": port.1}],
            "endpoints": eps.iter().map(|(a, r)| serde_json::json!({"addresses": [a], "conditions": {"ready": r}})).collect::<Vec<_>>(),
        }))
        .expect("a slice")
    }

    #[test]
    fn ready_endpoints_of_the_service_port() {
        let t = Target {
            namespace: "db".into(),
            service: "pg".into(),
            kind: Kind::Deployment,
            workload: "pg".into(),
            port_name: "sql".into(),
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
}
