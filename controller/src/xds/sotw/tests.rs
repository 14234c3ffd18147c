use super::*;
use crate::xds::resources::{self, Endpoints, ROUTE_TYPE};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prometheus_client::registry::Registry;
use zenvoy_core::model::Protocol;

fn metrics() -> Metrics {
    Metrics::register(&mut Registry::default())
}

fn cache_with(services: &[&str]) -> Cache {
    let cache = Cache::default();
    for s in services {
        let addr = "127.0.0.1:1000".parse().expect("addr");
        cache.set(
            LISTENER_TYPE,
            s,
            resources::any(resources::listener(s, addr, &limits())),
        );
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
        cache.set(
            ENDPOINT_TYPE,
            s,
            resources::any(resources::load_assignment(
                s,
                &Endpoints::Holder(
                    addr,
                    resources::HoldPolicy {
                        hold_timeout: std::time::Duration::from_secs(30),
                        max_pending: 10,
                        dial: None,
                    },
                ),
            )),
        );
    }
    cache
}

fn req(type_url: &str, names: &[&str], ack_of: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "envoy-1".into(),
            ..Default::default()
        }),
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: ack_of.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: ack_of.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

#[test]
fn wildcard_types_get_everything_once_until_a_change() {
    let (cache, m) = (cache_with(&["a", "b"]), metrics());
    let mut s = SotwStream::new(1);
    let r = s.on_request_decoded(req(CLUSTER_TYPE, &[], None), &cache, &m);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].resources.len(), 2);
    // The ACK sends nothing more.
    assert!(s
        .on_request_decoded(req(CLUSTER_TYPE, &[], Some(&r[0])), &cache, &m)
        .is_empty());
    assert!(s.on_change_decoded(&cache).is_empty());
    // A changed cluster re-sends the whole type (SotW for CDS).
    cache.set(
        CLUSTER_TYPE,
        "a",
        resources::any(resources::cluster(
            "a",
            std::time::Duration::from_secs(5),
            &limits(),
            Protocol::Tcp,
        )),
    );
    let r2 = s.on_change_decoded(&cache);
    assert_eq!(r2.len(), 1);
    assert_eq!(r2[0].resources.len(), 2);
    assert_ne!(r2[0].version_info, r[0].version_info);
    assert_ne!(r2[0].nonce, r[0].nonce);
}

#[test]
fn endpoints_are_sent_per_resource_and_only_when_changed() {
    let (cache, m) = (cache_with(&["a", "b", "c"]), metrics());
    let mut s = SotwStream::new(1);
    let r = s.on_request_decoded(req(ENDPOINT_TYPE, &["a", "b"], None), &cache, &m);
    assert_eq!(r[0].resources.len(), 2, "only the subscribed names");
    assert!(s
        .on_request_decoded(req(ENDPOINT_TYPE, &["a", "b"], Some(&r[0])), &cache, &m)
        .is_empty());

    let up = Endpoints::Upstream(vec!["127.0.0.1:2000".parse().expect("addr")]);
    let v = cache.set(
        ENDPOINT_TYPE,
        "b",
        resources::any(resources::load_assignment("b", &up)),
    );
    let r2 = s.on_change_decoded(&cache);
    assert_eq!(r2.len(), 1);
    assert_eq!(
        r2[0].resources.len(),
        1,
        "a wake sends one CLA, not the fleet"
    );
    assert!(!cache.all_acked("b", v), "not ACKed yet");
    s.on_request_decoded(req(ENDPOINT_TYPE, &["a", "b"], Some(&r2[0])), &cache, &m);
    assert!(cache.all_acked("b", v));
    // Setting an identical resource does not bump its version or push anything.
    assert_eq!(
        cache.set(
            ENDPOINT_TYPE,
            "b",
            resources::any(resources::load_assignment("b", &up))
        ),
        v
    );
    assert!(s.on_change_decoded(&cache).is_empty());
}

#[test]
fn a_new_subscription_name_is_sent_at_once() {
    let (cache, m) = (cache_with(&["a", "b"]), metrics());
    let mut s = SotwStream::new(1);
    let r = s.on_request_decoded(req(ENDPOINT_TYPE, &["a"], None), &cache, &m);
    let r2 = s.on_request_decoded(req(ENDPOINT_TYPE, &["a", "b"], Some(&r[0])), &cache, &m);
    assert_eq!(r2.len(), 1);
    assert_eq!(r2[0].resources.len(), 1);
}

#[test]
fn nack_is_counted_and_nothing_is_resent() {
    let (cache, m) = (cache_with(&["a"]), metrics());
    let mut s = SotwStream::new(1);
    let r = s.on_request_decoded(req(LISTENER_TYPE, &[], None), &cache, &m);
    let mut nack = req(LISTENER_TYPE, &[], Some(&r[0]));
    nack.version_info = String::new();
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad listener".into(),
        details: vec![],
    });
    assert!(s.on_request_decoded(nack, &cache, &m).is_empty());
    assert_eq!(m.xds_nacks.get_or_create(&"lds".into()).get(), 1);
}

#[test]
fn all_acked_waits_for_every_subscribed_stream() {
    let (cache, m) = (cache_with(&["a"]), metrics());
    let mut s1 = SotwStream::new(1);
    let mut s2 = SotwStream::new(2);
    let r1 = s1.on_request_decoded(req(ENDPOINT_TYPE, &["a"], None), &cache, &m);
    let _r2 = s2.on_request_decoded(req(ENDPOINT_TYPE, &["a"], None), &cache, &m);
    let v: u64 = r1[0].version_info.parse().expect("numeric version");
    s1.on_request_decoded(req(ENDPOINT_TYPE, &["a"], Some(&r1[0])), &cache, &m);
    assert!(!cache.all_acked("a", v), "stream 2 has not ACKed");
    cache.acks.forget(2);
    assert!(
        cache.all_acked("a", v),
        "a closed stream does not hold the park"
    );
}

#[test]
fn a_request_of_another_type_keeps_the_endpoint_acks() {
    let (cache, m) = (cache_with(&["a"]), metrics());
    cache.set(
        ROUTE_TYPE,
        resources::HTTP_LISTENER,
        resources::any(resources::route_configuration(&[])),
    );
    let mut s = SotwStream::new(1);
    let r = s.on_request_decoded(req(ENDPOINT_TYPE, &["a"], None), &cache, &m);
    s.on_request_decoded(req(ENDPOINT_TYPE, &["a"], Some(&r[0])), &cache, &m);
    let v: u64 = r[0].version_info.parse().expect("numeric version");
    assert!(cache.all_acked("a", v));
    // Envoy asks for (and ACKs) routes on the same stream.
    let rds = s.on_request_decoded(
        req(ROUTE_TYPE, &[resources::HTTP_LISTENER], None),
        &cache,
        &m,
    );
    s.on_request_decoded(
        req(ROUTE_TYPE, &[resources::HTTP_LISTENER], Some(&rds[0])),
        &cache,
        &m,
    );

    // A park publishes the holder again; this stream has not ACKed it.
    let up = Endpoints::Upstream(vec!["127.0.0.1:2000".parse().expect("addr")]);
    let v2 = cache.set(
        ENDPOINT_TYPE,
        "a",
        resources::any(resources::load_assignment("a", &up)),
    );
    assert!(v2 > v);
    assert!(
        !cache.all_acked("a", v2),
        "the stream still subscribes to a and has not ACKed {v2}"
    );
    assert!(
        cache.subscribed("a"),
        "a route request is no EDS unsubscribe"
    );
    let r2 = s.on_change_decoded(&cache);
    assert_eq!(r2.len(), 1);
    s.on_request_decoded(req(ENDPOINT_TYPE, &["a"], Some(&r2[0])), &cache, &m);
    assert!(cache.all_acked("a", v2));
}

fn limits() -> resources::EnvoyLimits {
    zenvoy_core::model::Policy::default().envoy()
}

/// What the server reads is what Envoy sent: a DiscoveryRequest's bytes decode to the
/// same fields, with the names as slices.
#[test]
fn a_sotw_request_decodes_a_discovery_requests_bytes() {
    use prost::Message;
    let mut r = req(ENDPOINT_TYPE, &["a", "b.default", "ü"], None);
    r.response_nonce = "7".into();
    r.version_info = "3".into();
    r.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad".into(),
        details: vec![],
    });
    let read = SotwRequest::decode(r.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(read, SotwRequest::from(r));
    assert_eq!(read.resource_names[2].as_ref(), "ü".as_bytes());
}

/// A names list that is not UTF-8 (prost would refuse it as a string) is ignored: no
/// response, no subscription, and the stream's earlier subscription stands.
#[test]
fn a_name_that_is_not_utf8_is_ignored() {
    let (cache, m) = (cache_with(&["a"]), metrics());
    let mut s = SotwStream::new(1);
    let first = s.on_request_decoded(req(ENDPOINT_TYPE, &["a"], None), &cache, &m);
    assert_eq!(first.len(), 1);
    let mut bad = SotwRequest::from(req(ENDPOINT_TYPE, &["a"], Some(&first[0])));
    bad.resource_names.push(Bytes::from_static(&[0xff, 0xfe]));
    assert!(s.on_request_decoded(bad, &cache, &m).is_empty());
    assert_eq!(s.subs.subscribed(), 1, "the earlier subscription stands");
}
