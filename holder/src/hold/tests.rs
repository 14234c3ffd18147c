use std::time::Duration;

use super::*;

fn hold(per: usize, total: usize, services: usize) -> Arc<Hold> {
    Hold::new(Limits {
        max_pending_per_service: per,
        max_pending_total: total,
        max_services: services,
    })
}

#[test]
fn limits_refuse_and_tickets_release() {
    let h = hold(2, 3, 2);
    let a1 = h.admit("a").expect("first");
    let _a2 = h.admit("a").expect("second");
    assert_eq!(h.admit("a").err(), Some(Refused::ServiceFull(2)));
    let _b1 = h.admit("b").expect("b");
    assert_eq!(h.admit("b").err(), Some(Refused::HolderFull(3)));
    assert_eq!(h.admit("c").err(), Some(Refused::TooManyServices(2)));
    drop(a1);
    assert_eq!(h.total_pending(), 2);
    let _a3 = h.admit("a").expect("a place was freed");
}

#[test]
fn the_subscription_is_the_services_with_held_connections() {
    let h = hold(10, 10, 10);
    let mut pending = h.watch_pending();
    let mut names = h.watch_names();
    let t1 = h.admit("svc").expect("admit");
    assert!(pending.has_changed().expect("open"));
    assert!(
        names.has_changed().expect("open"),
        "first connection: subscribe"
    );
    assert_eq!(h.names(), vec!["svc".to_string()]);
    pending.mark_unchanged();
    names.mark_unchanged();
    let t2 = h.admit("svc").expect("admit");
    assert!(pending.has_changed().expect("open"));
    assert!(!names.has_changed().expect("open"), "second: no change");
    drop(t1);
    assert!(!names.has_changed().expect("open"), "one still held");
    pending.mark_unchanged();
    drop(t2);
    assert!(pending.has_changed().expect("open"));
    assert!(
        names.has_changed().expect("open"),
        "last one gone: unsubscribe"
    );
    assert!(h.names().is_empty());
    assert_eq!(h.pending(), vec![("svc".to_string(), 0)]);
}

#[test]
fn endpoints_are_forgotten_when_the_subscription_drops() {
    let h = hold(10, 10, 10);
    let ep: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let policy = ServicePolicy {
        hold_timeout: Duration::from_secs(1),
        max_pending: 5,
        dial: None,
    };
    let t = h.admit("svc").expect("admit");
    h.set_state("svc", vec![ep], Some(policy));
    drop(t);
    // Still subscribed (the xDS client has not sent the change yet): still current.
    let t = h.admit("svc").expect("admit");
    assert_eq!(t.state().borrow().endpoints, vec![ep]);
    // Forgetting a service that holds a connection again does nothing.
    h.forget_endpoints(&["svc".to_string()]);
    assert_eq!(t.state().borrow().endpoints, vec![ep]);
    drop(t);
    // Unsubscribed: these endpoints will not be kept current, so a new connection
    // must wait for a fresh assignment (which brings the policy again).
    h.forget_endpoints(&["svc".to_string()]);
    let t = h.admit("svc").expect("admit");
    let state = t.state().borrow().clone();
    assert_eq!(state, QueueState::default());
    let _ = policy;
}

#[test]
fn a_forgotten_service_frees_its_place_among_max_services() {
    let h = hold(10, 10, 2);
    for name in ["a", "b", "c", "d"] {
        let t = h.admit(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        drop(t);
        // The xDS client drops the subscription of a service with nothing held.
        h.forget_endpoints(&[name.to_string()]);
    }
    // Two held at once still fill the holder's two places.
    let _a = h.admit("a").expect("a");
    let _b = h.admit("b").expect("b");
    assert_eq!(h.admit("c").err(), Some(Refused::TooManyServices(2)));
}

#[test]
fn a_new_xds_stream_forgets_endpoints_of_services_without_connections() {
    let h = hold(10, 10, 10);
    let ep: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let held = h.admit("held").expect("admit");
    let gone = h.admit("gone").expect("admit");
    h.set_state("held", vec![ep], None);
    h.set_state("gone", vec![ep], None);
    drop(gone);
    h.forget_unheld_endpoints();
    assert_eq!(held.state().borrow().endpoints, vec![ep]);
    let again = h.admit("gone").expect("admit");
    assert!(again.state().borrow().endpoints.is_empty());
}

#[test]
fn endpoints_reach_waiting_tickets() {
    let h = hold(10, 10, 10);
    let t = h.admit("svc").expect("admit");
    let rx = t.state();
    assert!(rx.borrow().endpoints.is_empty());
    let ep: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    h.set_state("svc", vec![ep], None);
    assert_eq!(rx.borrow().endpoints, vec![ep]);
}

#[test]
fn the_controllers_policy_replaces_the_flag_default() {
    let h = hold(10, 100, 10);
    let _t = h.admit("svc").expect("admit");
    let policy = ServicePolicy {
        hold_timeout: Duration::from_secs(1),
        max_pending: 2,
        dial: None,
    };
    h.set_state("svc", Vec::new(), Some(policy));
    let _t2 = h.admit("svc").expect("second of two");
    assert_eq!(h.admit("svc").err(), Some(Refused::ServiceFull(2)));
    // A later assignment without a policy (awake) keeps the known one.
    h.set_state("svc", Vec::new(), None);
    assert_eq!(h.admit("svc").err(), Some(Refused::ServiceFull(2)));
}

/// The probe of a waiting service's dial address, as the registry starts and ends it.
mod probes {
    use std::time::Instant;

    use super::*;

    fn policy(dial: SocketAddr) -> ServicePolicy {
        ServicePolicy {
            hold_timeout: Duration::from_secs(30),
            max_pending: 10,
            dial: Some(dial),
        }
    }

    /// A port nothing listens on now.
    fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    /// Poll `f` every millisecond for at most 10 s.
    fn wait(what: &str, f: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_port_that_starts_accepting_becomes_the_endpoint_of_the_held() {
        let h = Hold::new(Limits::default());
        let dial = closed_port();
        let ticket = h.admit("svc").expect("admit");
        let state = ticket.state();
        h.set_state("svc", Vec::new(), Some(policy(dial)));
        wait("the probe to see the port closed", || {
            h.probe_saw_closed("svc")
        });
        let _listener = std::net::TcpListener::bind(dial).expect("the upstream listens");
        wait("the dial address as the endpoint", || {
            state.borrow().endpoints == [dial]
        });
        wait("the probe to end", || !h.probing("svc"));
        assert_eq!(h.probes.self_dials.get(), 1);
        assert_eq!(h.probes.watching.get(), 0, "no longer watching");
    }

    #[test]
    fn a_port_that_accepts_at_once_is_left_to_the_controller() {
        let h = Hold::new(Limits::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dial = listener.local_addr().expect("addr");
        let ticket = h.admit("svc").expect("admit");
        h.set_state("svc", Vec::new(), Some(policy(dial)));
        wait("the probe to end", || !h.probing("svc"));
        assert!(
            ticket.state().borrow().endpoints.is_empty(),
            "an instance that already listened is not taken for a fresh start"
        );
        assert_eq!(h.probes.self_dials.get(), 0);
    }

    #[test]
    fn no_dial_address_or_nothing_held_starts_no_probe() {
        let h = Hold::new(Limits::default());
        let dial = closed_port();
        // A policy before any connection: nothing to probe for.
        h.set_state("idle", Vec::new(), Some(policy(dial)));
        assert!(!h.probing("idle"));
        // Held, without a dial address.
        let _t = h.admit("plain").expect("admit");
        h.set_state(
            "plain",
            Vec::new(),
            Some(ServicePolicy {
                dial: None,
                ..policy(dial)
            }),
        );
        assert!(!h.probing("plain"));
        // Held with one: probing until the connection goes.
        let t = h.admit("svc").expect("admit");
        h.set_state("svc", Vec::new(), Some(policy(dial)));
        assert!(h.probing("svc"));
        drop(t);
        wait("the probe to end with the last held connection", || {
            !h.probing("svc")
        });
    }
}
