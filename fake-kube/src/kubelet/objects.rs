//! What the kubelet writes back to the API server as the workload and EndpointSlice
//! controllers would: each workload's `status`, and each Service's EndpointSlice.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{Pod, WorkloadKey, WorkloadKind, MANAGED_BY};
use crate::selector::map_selects;
use crate::store::meta_str;

/// The status the workload controller would write; zero counts omitted as in Go's
/// `omitempty` (StatefulSet `replicas` and `availableReplicas` are always present).
pub(super) fn workload_status(kind: WorkloadKind, w: &Value, pods: Option<&Vec<Pod>>) -> Value {
    let live: Vec<&Pod> = pods
        .into_iter()
        .flatten()
        .filter(|p| !p.info.terminating)
        .collect();
    let n = live.len() as u64;
    let ready = live.iter().filter(|p| p.info.ready).count() as u64;
    let desired = w["spec"]["replicas"].as_u64().unwrap_or(1);
    let mut status = Map::new();
    status.insert(
        "observedGeneration".into(),
        w["metadata"]["generation"].clone(),
    );
    let mut put = |k: &str, v: u64, always: bool| {
        if v != 0 || always {
            status.insert(k.into(), json!(v));
        }
    };
    match kind {
        WorkloadKind::Deployment => {
            put("replicas", n, false);
            put("updatedReplicas", n, false);
            put("readyReplicas", ready, false);
            put("availableReplicas", ready, false);
            put("unavailableReplicas", desired.saturating_sub(ready), false);
        }
        WorkloadKind::StatefulSet => {
            put("replicas", n, true);
            put("readyReplicas", ready, false);
            put("currentReplicas", n, false);
            put("updatedReplicas", n, false);
            put("availableReplicas", ready, true);
        }
    }
    Value::Object(status)
}

/// The EndpointSlice `<svc>-fake` for a Service with a selector, from the started pods
/// whose labels it selects.
pub(super) fn endpoint_slice(
    svc: &Value,
    workloads: &[(WorkloadKey, Value)],
    table: &BTreeMap<WorkloadKey, Vec<Pod>>,
) -> Option<Value> {
    let selector = svc["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())?;
    let ns = meta_str(svc, "namespace")?;
    let name = meta_str(svc, "name")?;
    let mut endpoints: Vec<(String, Value)> = table
        .iter()
        .filter(|((_, wns, _), _)| wns == ns)
        .flat_map(|(_, pods)| pods)
        .filter(|p| p.info.started && map_selects(selector, Some(&p.labels)))
        .map(|p| {
            let ready = p.info.ready && p.info.alive && !p.info.terminating;
            let serving = p.info.ready && p.info.alive;
            (
                p.info.name.clone(),
                json!({
                    "addresses": [p.info.addr.ip().to_string()],
                    "conditions": {"ready": ready, "serving": serving,
                                   "terminating": p.info.terminating},
                    "targetRef": {"kind": "Pod", "name": p.info.name, "namespace": ns,
                                  "uid": p.uid},
                }),
            )
        })
        .collect();
    endpoints.sort_by(|a, b| a.0.cmp(&b.0));
    // Named target ports resolve against the selected workloads' container ports.
    let containers: Vec<&Value> = workloads
        .iter()
        .filter(|((_, wns, _), w)| {
            wns == ns
                && map_selects(
                    selector,
                    w["spec"]["template"]["metadata"]["labels"].as_object(),
                )
        })
        .filter_map(|(_, w)| w["spec"]["template"]["spec"]["containers"].as_array())
        .flatten()
        .collect();
    let ports: Vec<Value> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = match &p["targetPort"] {
                Value::Number(n) => n.as_u64(),
                Value::String(named) => containers
                    .iter()
                    .filter_map(|c| c["ports"].as_array())
                    .flatten()
                    .find(|cp| cp["name"].as_str() == Some(named))
                    .and_then(|cp| cp["containerPort"].as_u64()),
                _ => p["port"].as_u64(),
            }?;
            let mut out = json!({"port": port,
                                 "protocol": p["protocol"].as_str().unwrap_or("TCP")});
            if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
                out["name"] = json!(n);
            }
            Some(out)
        })
        .collect();
    Some(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{name}-fake"),
            "namespace": ns,
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": name,
                "uid": svc["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "addressType": "IPv4",
        "endpoints": endpoints.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        "ports": ports,
    }))
}
