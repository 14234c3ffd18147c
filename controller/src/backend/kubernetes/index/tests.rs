//! The index's rules, with Service objects made here and no API server.

use std::collections::BTreeMap;
use std::sync::Arc;

use zenvoy_core::config::Mode;

use super::*;

fn config() -> Config {
    Config::from_yaml_for("http: {listen: 127.0.0.1:10080}\n", Mode::Kubernetes)
        .expect("valid config")
}

fn svc(name: &str, ns: &str, annotations: &[(&str, &str)], port: i32) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name, "namespace": ns,
            "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        },
        "spec": {"ports": [{"name": "p", "port": port}]},
    }))
    .expect("a Service")
}

fn on(name: &str, ns: &str, port: i32) -> Service {
    svc(name, ns, &[(service::ENABLED, "true")], port)
}

fn index() -> Index {
    Index::new(Arc::default())
}

fn added(changes: &[Change]) -> Vec<&str> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Added(d) => Some(d.name.as_str()),
            _ => None,
        })
        .collect()
}

fn warning(changes: &[Change]) -> Option<(&'static str, String)> {
    changes.iter().find_map(|c| match c {
        Change::Warn { reason, note, .. } => Some((*reason, note.clone())),
        _ => None,
    })
}

fn removed(changes: &[Change]) -> Vec<&str> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Runtime(Event::Remove { service }) => Some(service.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn only_opted_in_services_are_added_and_losing_the_opt_in_removes() {
    let mut ix = index();
    let c = config();
    assert_eq!(ix.apply(svc("a", "ns", &[], 80), 0, &c), []);
    assert_eq!(
        ix.apply(svc("a", "ns", &[(service::ENABLED, "false")], 80), 0, &c),
        []
    );
    assert_eq!(added(&ix.apply(on("a", "ns", 80), 0, &c)), ["a.ns"]);
    assert_eq!(ix.services().len(), 1, "its workload is known");
    // Applied again unchanged: nothing to do.
    assert_eq!(ix.apply(on("a", "ns", 80), 0, &c), []);
    let off = ix.apply(svc("a", "ns", &[(service::ENABLED, "false")], 80), 0, &c);
    assert_eq!(removed(&off), ["a.ns"]);
    assert!(ix.services().is_empty(), "its workload is forgotten");
}

#[test]
fn a_changed_service_is_upserted_and_a_bad_annotation_keeps_the_last_good_reading() {
    let mut ix = index();
    let c = config();
    ix.apply(on("a", "ns", 80), 0, &c);
    let faster = svc(
        "a",
        "ns",
        &[(service::ENABLED, "true"), ("zenvoy.io/idleTimeout", "1m")],
        80,
    );
    let ch = ix.apply(faster, 0, &c);
    let [Change::Runtime(Event::Upsert(def))] = ch.as_slice() else {
        panic!("one upsert: {ch:?}");
    };
    assert_eq!(def.policy.idle_timeout, std::time::Duration::from_secs(60));
    let bad = svc(
        "a",
        "ns",
        &[
            (service::ENABLED, "true"),
            ("zenvoy.io/idleTimeout", "soon"),
        ],
        80,
    );
    let ch = ix.apply(bad, 0, &c);
    let (reason, note) = warning(&ch).expect("a warning");
    assert_eq!(reason, "InvalidAnnotation");
    assert!(note.contains("zenvoy.io/idleTimeout"), "{note}");
    assert_eq!(ch.len(), 1, "nothing else: {ch:?}");
    assert_eq!(ix.len(), 1, "still fronted");
}

#[test]
fn a_taken_listener_or_workload_and_a_workload_change_are_refused() {
    let mut ix = index();
    let c = config();
    ix.apply(on("a", "ns", 5432), 0, &c);
    // Same default listener 0.0.0.0:5432.
    let (reason, _) = warning(&ix.apply(on("b", "ns", 5432), 0, &c)).expect("warning");
    assert_eq!(reason, "ListenConflict");
    // Another port but the same workload (deployment/a).
    let same_workload = svc(
        "c",
        "ns",
        &[
            (service::ENABLED, "true"),
            (service::WORKLOAD, "deployment/a"),
        ],
        6000,
    );
    let (reason, note) = warning(&ix.apply(same_workload, 0, &c)).expect("warning");
    assert_eq!(reason, "WorkloadConflict");
    assert!(note.contains("a.ns"), "{note}");
    // a moves to another workload.
    let moved = svc(
        "a",
        "ns",
        &[
            (service::ENABLED, "true"),
            (service::WORKLOAD, "statefulset/a"),
        ],
        5432,
    );
    let (reason, _) = warning(&ix.apply(moved, 0, &c)).expect("warning");
    assert_eq!(reason, "WorkloadChange");
    assert_eq!(ix.len(), 1);
    // The same name in another namespace is another service.
    assert_eq!(added(&ix.apply(on("a", "other", 7000), 0, &c)), ["a.other"]);
}

#[test]
fn a_relist_removes_what_its_stream_no_longer_has() {
    let mut ix = index();
    let c = config();
    ix.apply(on("a", "one", 1), 0, &c);
    ix.apply(on("b", "one", 2), 0, &c);
    ix.apply(on("x", "two", 3), 1, &c);
    ix.relist_started(0);
    assert_eq!(
        ix.relisted(on("a", "one", 1), 0, &c),
        [],
        "known, unchanged"
    );
    assert_eq!(added(&ix.relisted(on("n", "one", 4), 0, &c)), ["n.one"]);
    // b is gone from stream 0; x belongs to stream 1 and stays.
    assert_eq!(removed(&ix.relist_done(0)), ["b.one"]);
    assert_eq!(ix.len(), 3);
    assert_eq!(removed(&ix.delete(&on("x", "two", 3))), ["x.two"]);
    assert_eq!(ix.delete(&on("x", "two", 3)), [], "already gone");
}

#[test]
fn a_new_config_reapplies_every_services_policy() {
    let mut ix = index();
    ix.apply(on("a", "ns", 80), 0, &config());
    ix.apply(on("b", "ns", 81), 0, &config());
    let c = Config::from_yaml_for(
        "http: {listen: 127.0.0.1:10080}\nservices:\n- name: a.ns\n  idleTimeout: 2m\n",
        Mode::Kubernetes,
    )
    .expect("valid");
    let ch = ix.reapply(&c);
    let [Change::Runtime(Event::Upsert(def))] = ch.as_slice() else {
        panic!("one upsert: {ch:?}");
    };
    assert_eq!(def.name, "a.ns");
    assert_eq!(def.policy.idle_timeout, std::time::Duration::from_secs(120));
    assert_eq!(ix.reapply(&c), [], "already applied");
}

#[test]
fn a_hold_shorter_than_the_wake_is_warned_about_and_still_applied() {
    let mut ix = index();
    let c = config();
    let short = svc(
        "a",
        "ns",
        &[
            (service::ENABLED, "true"),
            ("zenvoy.io/holdTimeout", "10s"),
            ("zenvoy.io/wakeTimeout", "2m"),
        ],
        80,
    );
    let ch = ix.apply(short, 0, &c);
    assert_eq!(added(&ch), ["a.ns"]);
    let (reason, note) = warning(&ch).expect("a warning");
    assert_eq!(reason, "HoldShorterThanWake");
    assert!(
        note.contains("zenvoy.io/holdTimeout") && note.contains("zenvoy.io/wakeTimeout"),
        "{note}"
    );
}

#[test]
fn a_second_http_service_with_an_earlier_ones_host_is_refused() {
    let mut ix = index();
    let c = config();
    let http = |ns: &str| {
        svc(
            "web",
            ns,
            &[(service::ENABLED, "true"), (service::PROTOCOL, "http")],
            80,
        )
    };
    assert_eq!(added(&ix.apply(http("one"), 0, &c)), ["web.one"]);
    let ch = ix.apply(http("two"), 0, &c);
    let (reason, note) = warning(&ch).expect("a warning");
    assert_eq!(reason, "HostConflict");
    assert!(
        note.contains("\"web\"") && note.contains("web.one"),
        "{note}"
    );
    assert_eq!(added(&ch), Vec::<&str>::new());
    assert_eq!(ix.len(), 1);
}

fn in_cluster() -> Config {
    Config::from_yaml_for(
        "inCluster:\n  proxy: zenvoy-system/zenvoy-proxy\n  listen: 10.0.0.9\n  ports: 21000-21002\n",
        Mode::Kubernetes,
    )
    .expect("valid config")
}

fn ports_svc(name: &str, ports: &[(&str, i32)]) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "db", "annotations": {service::ENABLED: "true"}},
        "spec": {"ports": ports.iter().map(|(n, p)| serde_json::json!({"name": n, "port": p})).collect::<Vec<_>>()},
    }))
    .expect("a Service")
}

fn in_cluster_index() -> Index {
    index().with_ports(super::super::ports::Ports::new((21000, 21002)))
}

#[test]
fn in_cluster_every_port_of_a_service_is_a_service_on_its_workload() {
    let c = in_cluster();
    let mut ix = in_cluster_index();
    let changes = ix.apply(
        ports_svc("pg", &[("sql", 5432), ("metrics", 9187), ("admin", 8008)]),
        0,
        &c,
    );
    assert_eq!(added(&changes), ["pg.db", "pg.db_metrics", "pg.db_admin"]);
    assert_eq!(warning(&changes), None, "one workload, no conflict");
    let defs: BTreeMap<&str, &ServiceDef> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Added(d) => Some((d.name.as_str(), d)),
            _ => None,
        })
        .collect();
    let metrics = defs["pg.db_metrics"];
    assert_eq!(metrics.listen, None, "no front door of its own");
    assert_eq!(
        metrics.in_cluster,
        Some("10.0.0.9:21001".parse().expect("addr"))
    );
    assert_eq!(metrics.group, defs["pg.db"].group, "one workload");
    assert!(metrics.group.is_some());
    let targets: BTreeMap<String, Target> = ix.services().into_iter().collect();
    let t = &targets["pg.db_metrics"];
    assert_eq!(
        (t.port_name.as_str(), t.proxy_port, t.member.as_deref()),
        ("metrics", Some(21001), Some("metrics"))
    );
    assert_eq!(t.workload, "pg");
    assert_eq!(targets["pg.db"].proxy_port, Some(21000));
    assert_eq!(targets["pg.db"].member, None);

    // Unchanged: nothing. A port gone: its service goes and frees its proxy port.
    assert_eq!(
        ix.apply(
            ports_svc("pg", &[("sql", 5432), ("metrics", 9187), ("admin", 8008)]),
            0,
            &c
        ),
        []
    );
    let changes = ix.apply(ports_svc("pg", &[("sql", 5432), ("metrics", 9187)]), 0, &c);
    assert_eq!(removed(&changes), ["pg.db_admin"]);
    assert_eq!(added(&ix.apply(on("other", "db", 80), 0, &c)), ["other.db"]);
    assert_eq!(
        ix.services()
            .into_iter()
            .find(|(k, _)| k == "other.db")
            .and_then(|(_, t)| t.proxy_port),
        Some(21002),
        "the freed port"
    );

    // No proxy port left for a new port: the Service is fronted without it, warned.
    let changes = ix.apply(
        ports_svc(
            "pg",
            &[("sql", 5432), ("metrics", 9187), ("replication", 5433)],
        ),
        0,
        &c,
    );
    assert_eq!(added(&changes), Vec::<&str>::new());
    let (reason, note) = warning(&changes).expect("a warning");
    assert_eq!(reason, "ProxyPortsExhausted");
    assert!(note.contains("replication"), "{note}");

    // Deleted: every port of it goes.
    let deleted = ix.delete(&ports_svc("pg", &[]));
    let mut gone = removed(&deleted);
    gone.sort_unstable();
    assert_eq!(gone, ["pg.db", "pg.db_metrics"]);
}

#[test]
fn in_cluster_a_restarted_controller_keeps_every_ports_proxy_port() {
    let c = in_cluster();
    let mut ports = super::super::ports::Ports::new((21000, 21002));
    // What the slices said: the ports in the opposite order of a fresh allocation.
    ports.load([
        ("pg.db_metrics".to_string(), 21000),
        ("pg.db".to_string(), 21002),
    ]);
    let mut ix = index().with_ports(ports);
    ix.apply(ports_svc("pg", &[("sql", 5432), ("metrics", 9187)]), 0, &c);
    let targets: BTreeMap<String, Target> = ix.services().into_iter().collect();
    assert_eq!(targets["pg.db"].proxy_port, Some(21002));
    assert_eq!(targets["pg.db_metrics"].proxy_port, Some(21000));
}
