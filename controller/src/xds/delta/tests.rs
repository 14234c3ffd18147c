use super::*;
use crate::xds::resources::{self, Endpoints, CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use zenvoy_core::model::Protocol;

fn cache() -> Cache {
    let cache = Cache::default();
    for s in ["a", "b"] {
        cache.set(
            CLUSTER_TYPE,
            s,
            resources::any(resources::cluster(
                s,
                std::time::Duration::from_secs(1),
                &limits(),
                Protocol::Tcp,
            )),
        );
        let up = Endpoints::Upstream(vec!["127.0.0.1:1".parse().expect("addr")]);
        cache.set(
            ENDPOINT_TYPE,
            s,
            resources::any(resources::load_assignment(s, &up)),
        );
    }
    cache
}

fn req(type_url: &str, sub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

#[test]
fn wildcard_then_one_resource_per_change() {
    let (c, m) = (cache(), Metrics::register(&mut Registry::default()));
    let mut s = DeltaStream::new(1);
    let r = s.on_request_decoded(req(CLUSTER_TYPE, &[], ""), &c, &m);
    assert_eq!(r[0].resources.len(), 2, "wildcard: every cluster");
    assert!(s
        .on_request_decoded(req(CLUSTER_TYPE, &[], &r[0].nonce), &c, &m)
        .is_empty());
    let r = s.on_request_decoded(req(ENDPOINT_TYPE, &["b"], ""), &c, &m);
    assert_eq!(r[0].resources.len(), 1);
    assert_eq!(r[0].resources[0].name, "b");
    s.on_request_decoded(req(ENDPOINT_TYPE, &[], &r[0].nonce), &c, &m);

    let up = Endpoints::Upstream(vec!["127.0.0.1:2".parse().expect("addr")]);
    let v = c.set(
        ENDPOINT_TYPE,
        "b",
        resources::any(resources::load_assignment("b", &up)),
    );
    let r = s.on_change_decoded(&c);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].resources.len(), 1, "one CLA per wake");
    assert_eq!(r[0].resources[0].version, v.to_string());
    assert!(!c.all_acked("b", v));
    s.on_request_decoded(req(ENDPOINT_TYPE, &[], &r[0].nonce), &c, &m);
    assert!(c.all_acked("b", v));
}

#[test]
fn initial_versions_are_not_resent_and_unsubscribe_stops_updates() {
    let (c, m) = (cache(), Metrics::register(&mut Registry::default()));
    let (_, entries, _) = c.read(ENDPOINT_TYPE, Some(&["a".into()]), |_, _| true);
    let current = entries[0].1.version;
    let mut s = DeltaStream::new(1);
    let mut r = req(ENDPOINT_TYPE, &["a", "b"], "");
    r.initial_resource_versions = HashMap::from([("a".to_string(), current.to_string())]);
    let out = s.on_request_decoded(r, &c, &m);
    let names: Vec<&str> = out[0].resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b"], "a is current on the client");

    let mut unsub = req(ENDPOINT_TYPE, &[], &out[0].nonce);
    unsub.resource_names_unsubscribe = vec!["b".into()];
    s.on_request_decoded(unsub, &c, &m);
    let up = Endpoints::Upstream(vec!["127.0.0.1:3".parse().expect("addr")]);
    c.set(
        ENDPOINT_TYPE,
        "b",
        resources::any(resources::load_assignment("b", &up)),
    );
    assert!(s.on_change_decoded(&c).is_empty());
}

#[test]
fn a_request_of_another_type_keeps_the_endpoint_acks() {
    let (c, m) = (cache(), Metrics::register(&mut Registry::default()));
    c.set(
        ROUTE_TYPE,
        resources::HTTP_LISTENER,
        resources::any(resources::route_configuration(&[])),
    );
    let mut s = DeltaStream::new(1);
    let r = s.on_request_decoded(req(ENDPOINT_TYPE, &["a"], ""), &c, &m);
    s.on_request_decoded(req(ENDPOINT_TYPE, &[], &r[0].nonce), &c, &m);
    let v: u64 = r[0].resources[0].version.parse().expect("numeric version");
    assert!(c.all_acked("a", v));
    // Envoy subscribes to (and ACKs) routes on the same stream.
    let rds = s.on_request_decoded(req(ROUTE_TYPE, &[resources::HTTP_LISTENER], ""), &c, &m);
    s.on_request_decoded(req(ROUTE_TYPE, &[], &rds[0].nonce), &c, &m);

    // A park publishes the holder again; this stream has not ACKed it.
    let up = Endpoints::Upstream(vec!["127.0.0.1:4".parse().expect("addr")]);
    let v2 = c.set(
        ENDPOINT_TYPE,
        "a",
        resources::any(resources::load_assignment("a", &up)),
    );
    assert!(
        !c.all_acked("a", v2),
        "the stream still subscribes to a and has not ACKed {v2}"
    );
    assert!(c.subscribed("a"), "a route request is no EDS unsubscribe");
    let r2 = s.on_change_decoded(&c);
    assert_eq!(r2.len(), 1);
    s.on_request_decoded(req(ENDPOINT_TYPE, &[], &r2[0].nonce), &c, &m);
    assert!(c.all_acked("a", v2));
}

fn limits() -> resources::EnvoyLimits {
    zenvoy_core::model::Policy::default().envoy()
}
