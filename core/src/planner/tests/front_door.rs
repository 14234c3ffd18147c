//! What Envoy serves for a service besides its assignment: clusters, listeners, virtual
//! hosts, the warm-up gate.

use super::*;
use crate::planner::front_door::FrontDoor;

#[test]
fn at_start_every_service_is_published_parked_with_its_listener_and_routes() {
    let w = World::new(true, true, vec![tcp("pg", 5432), http("web")]);
    let e = &w.effects;
    assert_eq!(listeners(e), ["pg"]);
    assert_eq!(assignments(e, "pg"), [&holder(policy())]);
    assert_eq!(assignments(e, "web"), [&holder(policy())]);
    let hosts = routes(e).expect("route configuration");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].service, "web");
    assert_eq!(hosts[0].timeout, Duration::from_secs(75));
    assert!(e.contains(&Effect::PublishHttpListener(addr(HTTP))));
    assert!(e.contains(&Effect::Track {
        service: "pg".into(),
        protocol: Protocol::Tcp
    }));
    assert_eq!(w.phase("pg"), Phase::Parked);
}

#[test]
fn a_new_services_listener_waits_for_every_connected_envoys_ack_of_its_cluster() {
    let mut w = World::new(true, false, vec![]);
    w.envoys.connected = 2;
    let e = w.event(0.0, Event::Upsert(Box::new(tcp("pg", 5432))));
    assert!(e.contains(&Effect::PublishCluster {
        service: "pg".into(),
        protocol: Protocol::Tcp,
        limits: policy().envoy(),
    }));
    assert_eq!(assignments(&e, "pg"), [&holder(policy())]);
    assert_eq!(listeners(&e), Vec::<&str>::new(), "cluster still warming");
    assert_eq!(listeners(&w.tick(0.1)), Vec::<&str>::new(), "nobody ACKed");
    // One Envoy has ACKed an older version only: still warming.
    w.envoys
        .acked_by_all
        .insert("pg".into(), w.published["pg"] - 1);
    assert_eq!(listeners(&w.tick(0.2)), Vec::<&str>::new());
    w.ack("pg");
    assert_eq!(listeners(&w.tick(0.3)), ["pg"]);
    assert_eq!(
        listeners(&w.tick(0.4)),
        Vec::<&str>::new(),
        "published once"
    );
}

#[test]
fn with_no_envoy_connected_a_new_service_gets_its_listener_at_once() {
    let mut w = World::new(true, false, vec![]);
    let e = w.event(0.0, Event::Upsert(Box::new(tcp("pg", 5432))));
    assert_eq!(listeners(&e), ["pg"]);
}

#[test]
fn a_new_http_services_virtual_host_waits_for_its_warm_cluster() {
    let mut w = World::new(true, true, vec![http("old")]);
    w.envoys.connected = 1;
    let e = w.event(0.0, Event::Upsert(Box::new(http("web"))));
    let hosts: Vec<&str> = routes(&e)
        .expect("routes rebuilt")
        .iter()
        .map(|h| h.service.as_str())
        .collect();
    assert_eq!(hosts, ["old"], "web still warming");
    w.ack("web");
    let e = w.tick(0.1);
    let hosts: Vec<&str> = routes(&e)
        .expect("routes rebuilt")
        .iter()
        .map(|h| h.service.as_str())
        .collect();
    assert_eq!(hosts, ["old", "web"]);
}

#[test]
fn a_reload_of_an_http_services_wake_timeout_moves_its_route_timeout() {
    let mut w = World::new(true, true, vec![http("web")]);
    let slow = Policy {
        wake_timeout: Duration::from_secs(120),
        ..policy()
    };
    let e = w.event(
        0.0,
        Event::Reload {
            policies: vec![("web".into(), slow)],
        },
    );
    let hosts = routes(&e).expect("routes rebuilt");
    assert_eq!(hosts[0].timeout, Duration::from_secs(135));
}

#[test]
fn removing_a_service_drops_its_resources_and_its_virtual_host() {
    let mut w = World::new(true, true, vec![http("web"), tcp("pg", 5432)]);
    let e = w.event(
        0.0,
        Event::Remove {
            service: "web".into(),
        },
    );
    assert!(e.contains(&Effect::RemoveService {
        service: "web".into(),
        in_cluster: None,
    }));
    assert!(e.contains(&Effect::Untrack {
        service: "web".into()
    }));
    assert!(e.contains(&Effect::Record(Record::Forget {
        service: "web".into()
    })));
    assert_eq!(routes(&e).map(Vec::len), Some(0));
    // Its stats and results no longer matter.
    assert_eq!(w.pending(1.0, "web", 3.0), []);
    assert_eq!(w.planner.phases().count(), 1);
}

#[test]
fn an_upsert_moves_the_listener_and_a_new_policy_applies() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let mut moved = tcp("pg", 6543);
    let e = w.event(0.0, Event::Upsert(Box::new(moved.clone())));
    assert_eq!(
        e,
        [Effect::PublishListener {
            service: "pg".into(),
            listen: moved.listen.expect("listen"),
            limits: moved.policy.envoy(),
        }]
    );
    moved.listen = None;
    let e = w.event(1.0, Event::Upsert(Box::new(moved.clone())));
    assert_eq!(
        e,
        [Effect::RemoveListener {
            service: "pg".into()
        }]
    );
    moved.policy.max_pending = 7;
    let e = w.event(2.0, Event::Upsert(Box::new(moved.clone())));
    assert_eq!(
        assignments(&e, "pg"),
        [&holder(moved.policy)],
        "new maxPending reaches the holders"
    );
    assert_eq!(
        w.event(3.0, Event::Upsert(Box::new(moved))),
        [],
        "nothing changed"
    );
}

#[test]
fn a_new_services_front_door_opens_after_the_warm_bound_without_every_ack() {
    let mut w = World::new(true, false, vec![]);
    w.envoys.connected = 1;
    w.event(0.0, Event::Upsert(Box::new(tcp("pg", 5432))));
    assert_eq!(listeners(&w.tick(14.9)), Vec::<&str>::new());
    let e = w.tick(15.0);
    assert_eq!(listeners(&e), ["pg"]);
    assert!(e.iter().any(|e| matches!(
        e,
        Effect::Notify(Notice {
            reason: "ClusterNotWarm",
            ..
        })
    )));
}

#[test]
fn new_envoy_limits_republish_the_cluster_and_the_listener() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let roomy = Policy {
        max_connections: 5000,
        tcp_idle_timeout: Duration::ZERO,
        ..policy()
    };
    let e = w.event(
        0.0,
        Event::Reload {
            policies: vec![("pg".into(), roomy)],
        },
    );
    assert!(e.contains(&Effect::PublishCluster {
        service: "pg".into(),
        protocol: Protocol::Tcp,
        limits: roomy.envoy()
    }));
    assert_eq!(listeners(&e), ["pg"]);
}

#[test]
fn a_domain_on_two_services_goes_to_the_first_only() {
    let mut a = http("a");
    a.domains.push("shared".into());
    let mut b = http("b");
    b.domains = vec!["shared".into()];
    let w = World::new(true, true, vec![b, a]);
    let hosts = routes(&w.effects).expect("routes");
    let names: Vec<&str> = hosts.iter().map(|h| h.service.as_str()).collect();
    assert_eq!(names, ["a"], "b has no domain left");
    assert!(hosts[0].domains.contains(&"shared".to_string()));
}

#[test]
fn a_grpc_service_is_routed_like_http_with_an_http2_cluster() {
    let grpc = ServiceDef {
        protocol: Protocol::Http2,
        ..http("greeter")
    };
    let mut w = World::new(true, true, vec![grpc.clone()]);
    assert!(w.effects.contains(&Effect::PublishCluster {
        service: "greeter".into(),
        protocol: Protocol::Http2,
        limits: policy().envoy(),
    }));
    assert!(w.effects.contains(&Effect::Track {
        service: "greeter".into(),
        protocol: Protocol::Http2
    }));
    let hosts = routes(&w.effects).expect("route configuration");
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].service, "greeter");
    assert_eq!(hosts[0].timeout, Duration::ZERO, "a gRPC stream is not cut");
    // Kubernetes: the port's appProtocol changes; the cluster follows.
    let e = w.event(1.0, Event::Upsert(Box::new(http("greeter"))));
    assert!(e.contains(&Effect::PublishCluster {
        service: "greeter".into(),
        protocol: Protocol::Http,
        limits: policy().envoy(),
    }));
    assert_eq!(Protocol::parse("grpc"), Some(Protocol::Http2));
    assert_eq!(Protocol::parse("http2"), Some(Protocol::Http2));
    assert_eq!(Protocol::Http2.activity(), Protocol::Http);
    assert_eq!(Protocol::parse("h2"), None);
}

#[test]
fn an_in_cluster_listener_that_moves_is_removed_from_its_old_port_first() {
    let at = |port| ServiceDef {
        in_cluster: Some(addr(&format!("10.0.0.9:{port}"))),
        ..tcp("pg", 5432)
    };
    let mut w = World::new(true, false, vec![at(20001)]);
    let e = w.event(1.0, Event::Upsert(Box::new(at(20002))));
    let moves: Vec<(bool, SocketAddr)> = e
        .iter()
        .filter_map(|e| match e {
            Effect::RemoveInClusterListener { listen, .. } => Some((false, *listen)),
            Effect::PublishInClusterListener { listen, .. } => Some((true, *listen)),
            _ => None,
        })
        .collect();
    assert_eq!(
        moves,
        [
            (false, addr("10.0.0.9:20001")),
            (true, addr("10.0.0.9:20002"))
        ]
    );
    let e = w.event(
        2.0,
        Event::Remove {
            service: "pg".into(),
        },
    );
    assert!(e.contains(&Effect::RemoveService {
        service: "pg".into(),
        in_cluster: Some(addr("10.0.0.9:20002")),
    }));
}

#[test]
fn a_door_diffed_with_itself_changes_nothing_and_opening_it_adds_only_its_doors() {
    let mut def = tcp("pg", 5432);
    def.in_cluster = Some(addr("10.0.0.5:21001"));
    let closed = FrontDoor::of(&def, false);
    let open = FrontDoor::of(&def, true);
    let (mut cluster, mut doors) = (Vec::new(), Vec::new());
    assert!(!open.changes("pg", Some(&open), &mut cluster, &mut doors));
    assert_eq!((cluster.len(), doors.len()), (0, 0));
    assert!(!open.changes("pg", Some(&closed), &mut cluster, &mut doors));
    assert_eq!(cluster, []);
    assert_eq!(listeners(&doors), ["pg"]);
    assert!(matches!(
        doors.last(),
        Some(Effect::PublishInClusterListener { .. })
    ));
}

#[test]
fn a_tcp_in_cluster_listener_has_no_route_so_a_new_wake_timeout_leaves_it() {
    let mut def = tcp("pg", 5432);
    def.in_cluster = Some(addr("10.0.0.5:21001"));
    let old = FrontDoor::of(&def, true);
    def.policy.wake_timeout = Duration::from_secs(120);
    let (mut cluster, mut doors) = (Vec::new(), Vec::new());
    assert!(!FrontDoor::of(&def, true).changes("pg", Some(&old), &mut cluster, &mut doors));
    assert_eq!((cluster, doors), (vec![], vec![]));
}

/// An upsert (Kubernetes annotations) that changes Envoy's limits reaches Envoy, as a
/// reload does. (Before the front door was one diff, the upsert replaced the definition
/// first and the policy step then saw no change.)
#[test]
fn an_upsert_with_new_envoy_limits_republishes_the_cluster_and_the_listener() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let mut roomy = tcp("pg", 5432);
    roomy.policy.max_connections = 5000;
    roomy.policy.idle_timeout = Duration::from_secs(99);
    let e = w.event(0.0, Event::Upsert(Box::new(roomy.clone())));
    assert!(e.contains(&Effect::PublishCluster {
        service: "pg".into(),
        protocol: Protocol::Tcp,
        limits: roomy.policy.envoy(),
    }));
    assert_eq!(listeners(&e), ["pg"]);
    assert!(e.contains(&Effect::Record(Record::IdleTimeout {
        service: "pg".into(),
        idle_timeout: Duration::from_secs(99)
    })));
}
