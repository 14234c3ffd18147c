//! The opted-in Services and their workloads, as discovery's watch delivers them:
//! apply, delete and re-list in, the [`Change`]s to carry out: runtime events, new
//! services whose workload must be read, Warning Events. Synchronous and free of the
//! API: discovery feeds it and does the I/O, and it is tested with plain Service objects.
//!
//! Rules it keeps: a Service without the opt-in is not fronted (and one that loses it is
//! removed); one with bad annotations keeps its last good reading (or is not added) and
//! gets a Warning naming the annotation; a listener address or a workload already taken
//! by another Service, or a change of workload, is refused with a Warning; a re-list that
//! no longer contains a Service removes it. With `inCluster`, each other port of a
//! Service is a service of its own on the same workload (`<name>.<namespace>_<port>`,
//! see `service::other_ports`), added, changed and removed with its Service.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::PoisonError;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use tracing::{info, warn};
use zenvoy_core::config::{hold_shorter_than_wake, Config};
use zenvoy_core::model::{Event, ServiceDef};

use super::annotations;
use super::endpoints::{self, Targets};
use super::ports::Ports;
use super::service::{self, service_name, Discovered, Target};

/// What discovery carries out, in order.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// Send to the runtime.
    Runtime(Event),
    /// A service new to this controller: read its workload's replicas, then send it as
    /// `Upsert` followed by `Observed` (or read again later when the read fails).
    Added(ServiceDef),
    /// `inCluster`: a proxy port was allocated to the service (Some) or released (None):
    /// to be stored (see `port_store`).
    Port { service: String, port: Option<u16> },
    /// A Warning Event on a Service.
    Warn {
        namespace: String,
        name: String,
        reason: &'static str,
        note: String,
    },
}

struct Known {
    svc: Service,
    def: ServiceDef,
    /// Which watch (namespace) it came from: a re-list ends with the stream's own set.
    stream: usize,
    /// `inCluster`: the services of the Service's other ports, by name.
    others: BTreeMap<String, ServiceDef>,
}

pub struct Index {
    known: HashMap<String, Known>,
    /// `inCluster`: the proxy port of each Service.
    ports: Option<Ports>,
    /// Per watch stream in a re-list, the Services seen so far.
    listing: HashMap<usize, HashSet<String>>,
    /// Service -> workload, shared with the EndpointSlice watcher and the backend.
    targets: Targets,
}

impl Index {
    pub fn new(targets: Targets) -> Self {
        Index {
            known: HashMap::new(),
            ports: None,
            listing: HashMap::new(),
            targets,
        }
    }

    /// `inCluster`: allocate proxy ports from `ports` (loaded with what the API holds).
    pub fn with_ports(mut self, ports: Ports) -> Self {
        self.ports = Some(ports);
        self
    }

    /// The fronted services and their workloads (for a new leader's reads).
    pub fn services(&self) -> Vec<(String, Target)> {
        self.known
            .iter()
            .flat_map(|(key, k)| std::iter::once(key).chain(k.others.keys()))
            .filter_map(|key| Some((key.clone(), endpoints::target(&self.targets, key)?)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// A watch stream starts a re-list.
    pub fn relist_started(&mut self, stream: usize) {
        self.listing.insert(stream, HashSet::new());
    }

    /// A Service of a re-list in progress.
    pub fn relisted(&mut self, svc: Service, stream: usize, config: &Config) -> Vec<Change> {
        let key = key_of(&svc);
        self.listing.entry(stream).or_default().insert(key);
        self.apply(svc, stream, config)
    }

    /// A re-list is complete: Services of this stream it did not contain are gone.
    pub fn relist_done(&mut self, stream: usize) -> Vec<Change> {
        let seen = self.listing.remove(&stream).unwrap_or_default();
        let gone: Vec<String> = self
            .known
            .iter()
            .filter(|(k, v)| v.stream == stream && !seen.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        let out = gone.iter().flat_map(|k| self.remove(k)).collect();
        self.journal(out)
    }

    /// A Service was deleted.
    pub fn delete(&mut self, svc: &Service) -> Vec<Change> {
        let out = self.remove(&key_of(svc));
        self.journal(out)
    }

    /// `out`, then what the ports allocated and released meanwhile.
    fn journal(&mut self, mut out: Vec<Change>) -> Vec<Change> {
        if let Some(ports) = &mut self.ports {
            out.extend(
                ports
                    .take_changes()
                    .into_iter()
                    .map(|(service, port)| Change::Port { service, port }),
            );
        }
        out
    }

    /// A Service was added or changed.
    pub fn apply(&mut self, svc: Service, stream: usize, config: &Config) -> Vec<Change> {
        let key = key_of(&svc);
        let out = self.apply_inner(svc, stream, config);
        // A Service refused before it was ever fronted holds no proxy port.
        if !self.known.contains_key(&key) {
            if let Some(ports) = &mut self.ports {
                ports.release(&key);
            }
        }
        self.journal(out)
    }

    fn apply_inner(&mut self, svc: Service, stream: usize, config: &Config) -> Vec<Change> {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let key = service_name(&name, &ns);
        if !service::opted_in(&svc) {
            return self.remove(&key);
        }
        let warn = |reason, note: String| {
            vec![Change::Warn {
                namespace: ns.clone(),
                name: name.clone(),
                reason,
                note,
            }]
        };
        let proxy_port = match (&config.in_cluster, &mut self.ports) {
            (Some(_), Some(ports)) => match ports.get_or_allocate(&key) {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!(service = %key, error = %e, "no proxy port for the Service");
                    return warn(
                        "ProxyPortsExhausted",
                        format!("zenvoy cannot keep this Service's name while it is parked: {e}"),
                    );
                }
            },
            _ => None,
        };
        let d = match service::read_in_cluster(&svc, config, proxy_port) {
            Ok(d) => d,
            Err(e) => {
                warn!(service = %key, error = %e, "Service annotations rejected");
                return warn(
                    "InvalidAnnotation",
                    format!("zenvoy ignores this change: {e}"),
                );
            }
        };
        if let Some(listen) = d.def.listen.filter(|l| l.port() != 0) {
            if let Some((other, _)) = self
                .known
                .iter()
                .find(|(k, v)| **k != key && v.def.listen == Some(listen))
            {
                warn!(service = %key, %listen, %other, "listener address already taken");
                return warn(
                    "ListenConflict",
                    format!("zenvoy cannot front this Service: {listen} is the listener of {other}; set zenvoy.io/listen"),
                );
            }
        }
        // Envoy rejects a route configuration whose virtual hosts share a domain, and
        // then takes no route change at all: a later Service may not claim an earlier
        // one's Host names (two `web` Services in two namespaces both answer to `web`).
        if let Some((other, host)) = self.known.iter().find_map(|(k, v)| {
            (*k != key)
                .then(|| v.def.domains.iter().find(|h| d.def.domains.contains(h)))
                .flatten()
                .map(|h| (k.clone(), h.clone()))
        }) {
            warn!(service = %key, %host, %other, "Host name already taken");
            return warn(
                "HostConflict",
                format!(
                    "zenvoy cannot front this Service: Host {host:?} is already routed to {other}"
                ),
            );
        }
        if let Some(other) = self.fronting(&d.target, &key) {
            warn!(service = %key, workload = %d.target, %other, "workload already fronted by another Service");
            return warn(
                "WorkloadConflict",
                format!(
                    "zenvoy cannot front this Service: {} is already parked and woken for {other}",
                    d.target
                ),
            );
        }
        if let Some(old) = endpoints::target(&self.targets, &key) {
            if old.kind != d.target.kind || old.workload != d.target.workload {
                warn!(service = %key, from = %old, to = %d.target, "workload change refused");
                return warn(
                    "WorkloadChange",
                    format!(
                        "zenvoy keeps scaling {old}: to move this Service to {}, remove {} and add it back",
                        d.target,
                        service::ENABLED
                    ),
                );
            }
        }
        self.set_target(&key, &d);
        // Valid, but a held connection would be closed before a slow wake gives up.
        let mut out = match hold_shorter_than_wake(annotations::PREFIX, &d.def.policy) {
            Some(note) => warn("HoldShorterThanWake", note),
            None => Vec::new(),
        };
        let mut port_warnings = Vec::new();
        let others = self.others(&svc, &d, &mut port_warnings);
        match self.known.get_mut(&key) {
            Some(k) => {
                k.svc = svc;
                if k.def == d.def {
                    out.clear();
                } else {
                    k.def = d.def.clone();
                    out.insert(0, Change::Runtime(Event::Upsert(Box::new(d.def))));
                }
            }
            None => {
                info!(service = %key, workload = %d.target, "service discovered");
                self.known.insert(
                    key.clone(),
                    Known {
                        svc,
                        def: d.def.clone(),
                        stream,
                        others: BTreeMap::new(),
                    },
                );
                out.insert(0, Change::Added(d.def));
            }
        }
        out.extend(self.sync_others(&key, others));
        out.extend(port_warnings);
        out
    }

    /// `inCluster`: the services of the Service's other ports, each on its own proxy
    /// port. A port that cannot get one is left out, with a Warning naming it.
    fn others(
        &mut self,
        svc: &Service,
        d: &Discovered,
        warnings: &mut Vec<Change>,
    ) -> Vec<Discovered> {
        let Some(ports) = self.ports.as_mut().filter(|_| d.def.in_cluster.is_some()) else {
            return Vec::new();
        };
        service::other_ports(svc, d)
            .into_iter()
            .filter_map(|p| match ports.get_or_allocate(&p.key) {
                Ok(port) => service::other_port(d, &p, port),
                Err(e) => {
                    warn!(service = %p.key, error = %e, "no proxy port for the Service port");
                    warnings.push(Change::Warn {
                        namespace: d.target.namespace.clone(),
                        name: d.target.service.clone(),
                        reason: "ProxyPortsExhausted",
                        note: format!(
                            "zenvoy cannot keep port {} of this Service while it is parked: {e}",
                            p.member
                        ),
                    });
                    None
                }
            })
            .collect()
    }

    /// Make the other ports of the Service `key` what `now` says: new ones added, changed
    /// ones updated, ones no longer there removed (their proxy ports freed).
    fn sync_others(&mut self, key: &str, now: Vec<Discovered>) -> Vec<Change> {
        let old = self
            .known
            .get_mut(key)
            .map(|k| std::mem::take(&mut k.others))
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut next = BTreeMap::new();
        for d in now {
            self.set_target(&d.def.name, &d);
            match old.get(&d.def.name) {
                None => {
                    info!(service = %d.def.name, workload = %d.target, "another port of the Service fronted");
                    out.push(Change::Added(d.def.clone()));
                }
                Some(def) if *def != d.def => {
                    out.push(Change::Runtime(Event::Upsert(Box::new(d.def.clone()))));
                }
                Some(_) => {}
            }
            next.insert(d.def.name.clone(), d.def);
        }
        for gone in old.keys().filter(|k| !next.contains_key(*k)) {
            out.extend(self.forget(gone));
        }
        if let Some(k) = self.known.get_mut(key) {
            k.others = next;
        }
        out
    }

    /// A new config: every service's definition again (policy layers may have moved).
    /// A Service whose annotations no longer pass keeps its last good reading.
    pub fn reapply(&mut self, config: &Config) -> Vec<Change> {
        let mut out = Vec::new();
        for (key, k) in &mut self.known {
            let proxy_port = self.ports.as_ref().and_then(|p| p.get(key));
            match service::read_in_cluster(&k.svc, config, proxy_port) {
                Ok(d) => {
                    // The other ports share the Service's policy.
                    for other in k.others.values_mut() {
                        if other.policy != d.def.policy {
                            other.policy = d.def.policy;
                            out.push(Change::Runtime(Event::Upsert(Box::new(other.clone()))));
                        }
                    }
                    if d.def != k.def {
                        k.def = d.def.clone();
                        out.push(Change::Runtime(Event::Upsert(Box::new(d.def))));
                    }
                }
                Err(e) => {
                    warn!(service = %key, error = %e, "Service annotations rejected under the new config");
                }
            }
        }
        out
    }

    fn remove(&mut self, key: &str) -> Vec<Change> {
        let Some(k) = self.known.remove(key) else {
            return Vec::new();
        };
        let mut out: Vec<Change> = k.others.keys().flat_map(|o| self.forget(o)).collect();
        out.extend(self.forget(key));
        out
    }

    /// `key` is no longer fronted: its proxy port is free, its target gone.
    fn forget(&mut self, key: &str) -> Vec<Change> {
        if let Some(ports) = &mut self.ports {
            ports.release(key);
        }
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        info!(service = %key, "service no longer fronted");
        vec![Change::Runtime(Event::Remove {
            service: key.to_string(),
        })]
    }

    /// Another Service that fronts `target`'s workload, if any.
    fn fronting(&self, target: &Target, key: &str) -> Option<String> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(k, t)| {
                **k != key
                    && t.service != target.service
                    && t.namespace == target.namespace
                    && t.kind == target.kind
                    && t.workload == target.workload
            })
            .map(|(k, _)| k.clone())
    }

    fn set_target(&self, name: &str, d: &Discovered) {
        self.targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), d.target.clone());
    }
}

fn key_of(svc: &Service) -> String {
    service_name(&svc.name_any(), &svc.namespace().unwrap_or_default())
}

#[cfg(test)]
mod tests;
