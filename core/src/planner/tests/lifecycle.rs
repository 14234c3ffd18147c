//! Wakes, parks, the assignment, leadership, drift, groups and `inCluster` steers.

use super::*;

#[test]
fn a_late_wake_result_is_ignored() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let first = wake_number(&w.pending(0.0, "pg", 1.0)).expect("wake");
    assert_eq!(w.phase("pg"), Phase::Waking);
    // The wake times out; the held connection is standing demand: a second wake.
    let e = w.tick(61.0);
    assert_eq!(parks(&e), 1, "what the timed-out wake started is stopped");
    assert_eq!(w.phase("pg"), Phase::Parked);
    let second = wake_number(&w.tick(61.1)).expect("a new wake for the held connection");
    assert!(second > first);
    // The first wake's result arrives late: nothing changes.
    let e = w.event(
        62.0,
        Event::WakeDone {
            service: "pg".into(),
            wake: first,
            result: Ok(vec![addr("10.0.0.1:5432")]),
        },
    );
    assert_eq!(e, []);
    assert_eq!(w.phase("pg"), Phase::Waking);
    let e = w.event(
        63.0,
        Event::WakeDone {
            service: "pg".into(),
            wake: second,
            result: Ok(vec![addr("10.0.0.2:5432")]),
        },
    );
    assert_eq!(w.phase("pg"), Phase::Awake);
    assert_eq!(
        assignments(&e, "pg"),
        [&Endpoints::Upstream(vec![addr("10.0.0.2:5432")])]
    );
}

#[test]
fn wake_numbers_are_unique_across_services_and_readding() {
    let mut w = World::new(true, false, vec![tcp("a", 1), tcp("b", 2)]);
    let a = wake_number(&w.pending(0.0, "a", 1.0)).expect("wake");
    let b = wake_number(&w.pending(0.0, "b", 1.0)).expect("wake");
    w.event(
        1.0,
        Event::Remove {
            service: "a".into(),
        },
    );
    w.event(1.0, Event::Upsert(Box::new(tcp("a", 1))));
    let again = wake_number(&w.pending(2.0, "a", 2.0)).expect("wake");
    assert!(a != b && again != a && again != b);
    // The removed service's old wake cannot complete the new one.
    w.event(
        3.0,
        Event::WakeDone {
            service: "a".into(),
            wake: a,
            result: Ok(vec![addr("10.0.0.1:1")]),
        },
    );
    assert_eq!(w.phase("a"), Phase::Waking);
}

#[test]
fn a_failed_wake_is_counted_and_the_held_connection_asks_again() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let wake = wake_number(&w.pending(0.0, "pg", 1.0)).expect("wake");
    let e = w.event(
        1.0,
        Event::WakeDone {
            service: "pg".into(),
            wake,
            result: Err("exited".into()),
        },
    );
    assert!(e.contains(&Effect::Record(Record::ScaleError {
        service: "pg".into()
    })));
    assert!(e.contains(&Effect::Record(Record::WakeFinished {
        service: "pg".into(),
        outcome: WakeOutcome::Failed,
        took: Duration::from_secs(1),
    })));
    assert_eq!(parks(&e), 1);
    assert_eq!(w.phase("pg"), Phase::Parked);
    assert!(
        wake_number(&w.tick(1.1)).is_some(),
        "pending > 0: wake again"
    );
}

#[test]
fn wakes_that_keep_failing_are_retried_later_each_time_and_a_success_starts_over() {
    assert_eq!(wake_retry_delay(0), Duration::ZERO);
    assert_eq!(wake_retry_delay(1), WAKE_RETRY_FIRST);
    assert_eq!(wake_retry_delay(2), WAKE_RETRY_FIRST * 2);
    assert_eq!(wake_retry_delay(3), WAKE_RETRY_FIRST * 4);
    assert_eq!(wake_retry_delay(7), WAKE_RETRY_MAX, "6.4 s, capped");
    assert_eq!(wake_retry_delay(u32::MAX), WAKE_RETRY_MAX);

    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let fail = |w: &mut World, at: f64, wake: u64| {
        w.event(
            at,
            Event::WakeDone {
                service: "pg".into(),
                wake,
                result: Err("exited".into()),
            },
        );
        assert_eq!(w.phase("pg"), Phase::Parked);
    };
    // The connection stays held throughout; each failure pushes the next wake further.
    let mut wake = wake_number(&w.pending(0.0, "pg", 1.0)).expect("first wake");
    let mut at = 0.5;
    for (failures, delay) in [(1u32, 0.1), (2, 0.2), (3, 0.4), (4, 0.8)] {
        fail(&mut w, at, wake);
        assert!(
            wake_number(&w.tick(at + delay - 0.01)).is_none(),
            "after {failures} failures: not before {delay} s"
        );
        // A new held connection is demand too, and waits the same.
        assert!(wake_number(&w.pending(at + delay - 0.005, "pg", 2.0)).is_none());
        wake = wake_number(&w.tick(at + delay)).expect("retried once the delay passed");
        at += delay + 0.05;
    }
    // A wake that succeeds starts the count over: the next failure waits one tick.
    w.event(
        at,
        Event::WakeDone {
            service: "pg".into(),
            wake,
            result: Ok(vec![addr("10.0.0.1:5432")]),
        },
    );
    assert_eq!(w.phase("pg"), Phase::Awake);
    w.pending(at, "pg", 0.0);
    w.tick(at + 20.0);
    w.ack("pg");
    w.tick(at + 20.1);
    w.sample(at + 20.2, "pg", 0.0, 5.0);
    assert_eq!(w.phase("pg"), Phase::Parked, "idle: parked");
    let at = at + 21.0;
    let wake = wake_number(&w.pending(at, "pg", 1.0)).expect("woken at once");
    fail(&mut w, at + 0.5, wake);
    assert!(wake_number(&w.tick(at + 0.59)).is_none());
    assert!(
        wake_number(&w.tick(at + 0.6)).is_some(),
        "one failure since the success: the first delay again"
    );
}

#[test]
fn a_timed_out_wake_is_told_to_the_operator() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.pending(0.0, "pg", 1.0);
    let e = w.tick(60.0);
    assert!(e.iter().any(|e| matches!(
        e,
        Effect::Notify(Notice { service, warning: true, reason: "WakeTimedOut", .. }) if service == "pg"
    )));
}

#[test]
fn a_reload_that_changes_hold_timeout_republishes_the_holder_assignment() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432), tcp("redis", 6379)]);
    let longer = Policy {
        hold_timeout: Duration::from_secs(90),
        ..policy()
    };
    let e = w.event(
        0.0,
        Event::Reload {
            policies: vec![("pg".into(), longer)],
        },
    );
    assert_eq!(assignments(&e, "pg"), [&holder(longer)]);
    assert_eq!(assignments(&e, "redis"), Vec::<&Endpoints>::new());
    // A park now waits for the new version.
    let v = w.published["pg"];
    assert!(!w.envoys.all_acked("pg", v) || w.envoys.acked_by_all.is_empty());

    // Only the idle timeout: nothing to republish.
    let idle = Policy {
        idle_timeout: Duration::from_secs(99),
        ..longer
    };
    let e = w.event(
        1.0,
        Event::Reload {
            policies: vec![("pg".into(), idle)],
        },
    );
    assert_eq!(assignments(&e, "pg"), Vec::<&Endpoints>::new());
    assert!(e.contains(&Effect::Record(Record::IdleTimeout {
        service: "pg".into(),
        idle_timeout: Duration::from_secs(99)
    })));

    // Awake: the upstreams stay; the next park publishes the new policy.
    w.wake(2.0, "redis", &["10.0.0.9:6379"]);
    let shorter = Policy {
        hold_timeout: Duration::from_secs(5),
        ..policy()
    };
    let e = w.event(
        3.0,
        Event::Reload {
            policies: vec![("redis".into(), shorter)],
        },
    );
    assert_eq!(assignments(&e, "redis"), Vec::<&Endpoints>::new());
    let e = w.tick(30.0);
    assert_eq!(w.phase("redis"), Phase::Parking);
    assert_eq!(assignments(&e, "redis"), [&holder(shorter)]);
}

#[test]
fn a_park_is_cancelled_by_a_connection_during_phase_one() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    let e = w.tick(20.0);
    assert_eq!(w.phase("pg"), Phase::Parking);
    assert_eq!(assignments(&e, "pg"), [&holder(policy())]);
    // Before every Envoy ACKed the holder, a connection lands in the holder.
    let e = w.pending(20.5, "pg", 1.0);
    assert_eq!(w.phase("pg"), Phase::Awake);
    assert_eq!(
        assignments(&e, "pg"),
        [&Endpoints::Upstream(vec![addr("10.0.0.1:5432")])]
    );
    assert!(e.contains(&Effect::Record(Record::ParkCancelled {
        service: "pg".into()
    })));
    assert_eq!(parks(&w.effects), 0);
}

#[test]
fn phase_two_needs_every_ack_and_then_an_idle_sample() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.envoys.connected = 1;
    w.envoys.acked_by_all.insert("pg".into(), 0);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    w.sample(1.0, "pg", 0.0, 5.0);
    w.tick(20.0);
    assert_eq!(w.phase("pg"), Phase::Parking);
    // An idle sample before the ACK proves nothing.
    w.sample(20.1, "pg", 0.0, 5.0);
    w.tick(20.2);
    assert_eq!(parks(&w.effects), 0);
    w.ack("pg");
    w.tick(20.3);
    assert_eq!(parks(&w.effects), 0, "ACKed; waiting for a sample after it");
    let e = w.sample(20.4, "pg", 0.0, 5.0);
    assert_eq!(parks(&e), 1);
    assert!(e.contains(&Effect::Record(Record::Parked {
        service: "pg".into()
    })));
    assert_eq!(w.phase("pg"), Phase::Parked);
}

#[test]
fn an_open_connection_on_the_old_upstream_cancels_phase_two() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    w.tick(20.0);
    w.ack("pg");
    w.tick(20.1);
    let e = w.sample(20.2, "pg", 1.0, 5.0);
    assert_eq!(w.phase("pg"), Phase::Awake);
    assert_eq!(parks(&e), 0);
}

#[test]
fn followers_plan_no_scaling() {
    let mut w = World::new(false, false, vec![tcp("pg", 5432)]);
    let e = w.pending(0.0, "pg", 1.0);
    let Some(Effect::Wake { scale, wake, .. }) =
        e.iter().find(|e| matches!(e, Effect::Wake { .. }))
    else {
        panic!("a wake that watches for endpoints: {e:?}");
    };
    assert!(!scale, "a follower does not scale up");
    let watch = *wake;
    w.event(
        1.0,
        Event::WakeDone {
            service: "pg".into(),
            wake: watch,
            result: Ok(vec![addr("10.0.0.1:5432")]),
        },
    );
    w.pending(1.1, "pg", 0.0);
    // Idle: the park runs both phases but the follower does not scale down.
    w.tick(20.0);
    w.tick(26.0);
    assert_eq!(w.phase("pg"), Phase::Parked);
    assert_eq!(parks(&w.effects), 0);
    // A wake timed out as a follower stops nothing either.
    w.pending(30.0, "pg", 1.0);
    w.tick(91.0);
    assert_eq!(parks(&w.effects), 0);
    assert!(w
        .effects
        .iter()
        .all(|e| !matches!(e, Effect::Wake { scale: true, .. })));
}

#[test]
fn a_new_leader_asks_again_to_scale_the_wakes_it_only_watched() {
    let mut w = World::new(false, false, vec![tcp("pg", 5432), tcp("idle", 1)]);
    let watch = wake_number(&w.pending(0.0, "pg", 1.0)).expect("watching wake");
    let e = w.event(1.0, Event::Leading(true));
    let Some(Effect::Wake {
        service,
        wake,
        scale: true,
        ..
    }) = e.iter().find(|e| matches!(e, Effect::Wake { .. }))
    else {
        panic!("a scaling wake: {e:?}");
    };
    assert_eq!(service, "pg");
    assert!(*wake > watch);
    assert_eq!(
        e.iter()
            .filter(|e| matches!(e, Effect::Wake { .. }))
            .count(),
        1,
        "only the waking service"
    );
    // The watch's result is now late.
    w.event(
        2.0,
        Event::WakeDone {
            service: "pg".into(),
            wake: watch,
            result: Ok(vec![addr("10.0.0.1:5432")]),
        },
    );
    assert_eq!(w.phase("pg"), Phase::Waking);
    // Leading: the next park scales down.
    let wake = *wake;
    w.event(
        3.0,
        Event::WakeDone {
            service: "pg".into(),
            wake,
            result: Ok(vec![addr("10.0.0.1:5432")]),
        },
    );
    w.pending(3.1, "pg", 0.0);
    w.tick(20.0);
    w.tick(26.0);
    assert_eq!(parks(&w.effects), 1);
    // Losing the lead: no more scale-downs.
    w.event(27.0, Event::Leading(false));
    w.wake(28.0, "pg", &["10.0.0.1:5432"]);
    w.tick(50.0);
    w.tick(56.0);
    assert_eq!(w.phase("pg"), Phase::Parked);
    assert_eq!(parks(&w.effects), 1);
}

#[test]
fn endpoints_that_change_while_awake_are_republished() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    // Parked: kept, not published.
    let e = w.event(
        0.0,
        Event::Endpoints {
            service: "pg".into(),
            endpoints: vec![addr("10.0.0.1:5432")],
        },
    );
    assert_eq!(e, []);
    w.wake(1.0, "pg", &["10.0.0.1:5432"]);
    let two = vec![addr("10.0.0.1:5432"), addr("10.0.0.2:5432")];
    let e = w.event(
        2.0,
        Event::Endpoints {
            service: "pg".into(),
            endpoints: two.clone(),
        },
    );
    assert_eq!(assignments(&e, "pg"), [&Endpoints::Upstream(two.clone())]);
    // The same set again, or none at all: nothing to publish.
    for same in [two.clone(), Vec::new()] {
        let e = w.event(
            3.0,
            Event::Endpoints {
                service: "pg".into(),
                endpoints: same,
            },
        );
        assert_eq!(e, []);
    }
    // During a park the latest set is kept, and a cancelled park publishes it.
    w.tick(20.0);
    assert_eq!(w.phase("pg"), Phase::Parking);
    let three = vec![addr("10.0.0.3:5432")];
    assert_eq!(
        w.event(
            20.1,
            Event::Endpoints {
                service: "pg".into(),
                endpoints: three.clone(),
            },
        ),
        []
    );
    let e = w.pending(20.2, "pg", 1.0);
    assert_eq!(assignments(&e, "pg"), [&Endpoints::Upstream(three)]);
}

#[test]
fn a_workload_found_running_wakes_and_one_found_at_zero_gets_the_holder() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let e = w.event(
        0.0,
        Event::Observed {
            service: "pg".into(),
            running: true,
        },
    );
    assert!(wake_number(&e).is_some());
    let wake = wake_number(&e).expect("wake");
    w.event(
        0.5,
        Event::WakeDone {
            service: "pg".into(),
            wake,
            result: Ok(vec![addr("10.0.0.1:5432")]),
        },
    );
    let e = w.event(
        1.0,
        Event::Observed {
            service: "pg".into(),
            running: false,
        },
    );
    assert_eq!(w.phase("pg"), Phase::Parked);
    assert_eq!(assignments(&e, "pg"), [&holder(policy())]);
    assert_eq!(parks(&e), 0, "already at zero");
}

#[test]
fn samples_and_pending_of_unknown_services_change_nothing() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    assert_eq!(w.pending(0.0, "nope", 5.0), []);
    assert_eq!(w.sample(0.0, "nope", 5.0, 1.0), []);
    assert_eq!(w.phase("pg"), Phase::Parked);
}

#[test]
fn a_failed_park_is_counted() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let e = w.event(
        0.0,
        Event::ParkFailed {
            service: "pg".into(),
            error: "API down".into(),
        },
    );
    assert_eq!(
        e,
        [Effect::Record(Record::ScaleError {
            service: "pg".into()
        })]
    );
}

#[test]
fn a_connection_opened_on_a_second_envoy_just_before_its_ack_stops_the_park() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.envoys.connected = 2;
    w.envoys.acked_by_all.insert("pg".into(), 0);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    w.sample_from("envoy-a#1", 1.0, "pg", 0.0, 5.0);
    w.sample_from("envoy-b#2", 1.0, "pg", 0.0, 9.0);
    w.tick(20.0);
    assert_eq!(w.phase("pg"), Phase::Parking);
    w.ack("pg");
    w.tick(20.1);
    // Envoy a's sample after the ACK is idle; b's last one predates it, and b has just
    // taken a connection to the old upstream. One idle node must not end the park.
    let e = w.sample_from("envoy-a#1", 20.2, "pg", 0.0, 5.0);
    assert_eq!(parks(&e), 0, "b has not reported since the ACK");
    let e = w.sample_from("envoy-b#2", 20.3, "pg", 1.0, 10.0);
    assert_eq!(parks(&e), 0);
    assert_eq!(
        w.phase("pg"),
        Phase::Awake,
        "b's connection cancels the park"
    );
}

#[test]
fn the_park_ends_once_every_envoy_reported_idle_after_the_ack() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    w.sample_from("envoy-a#1", 1.0, "pg", 0.0, 5.0);
    w.sample_from("envoy-b#2", 1.0, "pg", 0.0, 9.0);
    w.tick(20.0);
    w.ack("pg");
    w.tick(20.1);
    assert_eq!(parks(&w.sample_from("envoy-a#1", 20.2, "pg", 0.0, 5.0)), 0);
    assert_eq!(parks(&w.sample_from("envoy-b#2", 20.3, "pg", 0.0, 9.0)), 1);
    assert_eq!(w.phase("pg"), Phase::Parked);
}

#[test]
fn a_silent_envoys_open_connection_stops_counting_after_the_expiry() {
    let mut w = World::with_expiry(true, false, vec![tcp("pg", 5432)], Duration::from_secs(30));
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    // Envoy a reports an open connection, then goes silent without closing its stream
    // (a node that vanished). Envoy b keeps reporting idle.
    w.sample_from("envoy-a#1", 1.0, "pg", 1.0, 5.0);
    for t in 2..=40 {
        w.sample_from("envoy-b#2", f64::from(t), "pg", 0.0, 9.0);
        w.tick(f64::from(t) + 0.5);
    }
    // 30 s after a's last push it is forgotten; from then the idle timeout runs.
    assert_eq!(w.phase("pg"), Phase::Awake);
    let expired = w
        .effects
        .iter()
        .filter(|e| matches!(e, Effect::Record(Record::NodeExpired)))
        .count();
    assert!(
        expired >= 1,
        "a (and the holder that stopped pushing) forgotten"
    );
    for t in 41..=60 {
        w.sample_from("envoy-b#2", f64::from(t), "pg", 0.0, 9.0);
        w.tick(f64::from(t) + 0.5);
    }
    assert_eq!(
        w.phase("pg"),
        Phase::Parked,
        "parked once a's connection stopped counting"
    );
}

#[test]
fn a_silent_holders_pending_count_stops_demanding_a_wake() {
    let mut w = World::with_expiry(true, false, vec![tcp("pg", 5432)], Duration::from_secs(90));
    let first = wake_number(&w.pending(0.0, "pg", 1.0)).expect("wake");
    w.tick(61.0);
    // Standing demand: the held connection asks again after the failed wake...
    assert!(wake_number(&w.tick(61.1)).is_some_and(|n| n > first));
    // ...but a holder silent past the expiry holds nothing we can know of.
    w.tick(122.0);
    w.tick(122.1);
    assert_eq!(wake_number(&w.tick(122.2)), None);
    assert_eq!(w.phase("pg"), Phase::Parked);
}

#[test]
fn values_that_cannot_be_counts_are_refused_and_recorded() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    w.sample_from("envoy-a#1", 1.0, "pg", 2.0, 5.0);
    // A negative open count from another node would cancel a's two connections.
    let e = w.sample_from("envoy-x#9", 1.5, "pg", -2.0, 0.0);
    assert!(e.contains(&Effect::Record(Record::Rejected { count: 1 })));
    w.sample_from("envoy-b#3", 19.0, "pg", 0.0, 1.0);
    w.sample_from("envoy-b#3", 19.5, "pg", 0.0, 1.0);
    w.tick(20.0);
    assert_eq!(w.phase("pg"), Phase::Awake, "a's connections still count");
}

#[test]
fn a_parked_service_found_running_is_scaled_down_again() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432), tcp("redis", 6379)]);
    let checks = w.planner.reconcile();
    w.run(checks.clone());
    let Some(Effect::Check { wake, .. }) = checks
        .iter()
        .find(|e| matches!(e, Effect::Check { service, .. } if service == "pg"))
    else {
        panic!("a check for pg: {checks:?}");
    };
    let e = w.event(
        1.0,
        Event::Checked {
            service: "pg".into(),
            wake: *wake,
            running: true,
        },
    );
    assert_eq!(parks(&e), 1);
    assert!(drift(&e));
    // Parked and not running: nothing to do.
    let e = w.event(
        1.0,
        Event::Checked {
            service: "redis".into(),
            wake: 0,
            running: false,
        },
    );
    assert_eq!(e, []);
}

#[test]
fn an_awake_service_found_stopped_gets_the_holder_again() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    let checks = w.planner.reconcile();
    let Some(Effect::Check { wake, .. }) = checks.first() else {
        panic!("a check: {checks:?}");
    };
    let e = w.event(
        1.0,
        Event::Checked {
            service: "pg".into(),
            wake: *wake,
            running: false,
        },
    );
    assert!(drift(&e));
    assert_eq!(w.phase("pg"), Phase::Parked);
    assert_eq!(assignments(&e, "pg"), [&holder(policy())]);
    assert_eq!(parks(&e), 0, "nothing runs to stop");
}

#[test]
fn a_check_answered_after_a_new_wake_is_ignored_and_busy_services_are_not_checked() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432), tcp("held", 1)]);
    let checks = w.planner.reconcile();
    let Some(Effect::Check { wake, .. }) = checks.first() else {
        panic!("a check");
    };
    let asked = *wake;
    // A connection wakes pg before the answer comes.
    w.pending(0.5, "pg", 1.0);
    let e = w.event(
        1.0,
        Event::Checked {
            service: "pg".into(),
            wake: asked,
            running: true,
        },
    );
    assert_eq!(e, []);
    // Waking, and parked-with-held-connections services are not checked.
    w.pending(1.0, "held", 1.0);
    w.tick(61.0);
    assert!(w.planner.reconcile().iter().all(
        |e| !matches!(e, Effect::Check { service, .. } if service == "pg" || service == "held")
    ));
}

#[test]
fn a_follower_checks_nothing() {
    let mut w = World::new(false, false, vec![tcp("pg", 5432)]);
    assert_eq!(w.planner.reconcile(), []);
}

#[test]
fn status_tells_phase_since_pending_last_wake_and_idle() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    let s = &w.planner.status(w.at(0.0))[0];
    assert_eq!(
        (s.phase, s.since, s.pending, s.last_wake, s.idle),
        (Phase::Parked, None, 0, None, None)
    );
    w.pending(1.0, "pg", 3.0);
    let s = &w.planner.status(w.at(1.25))[0];
    assert_eq!(s.phase, Phase::Waking);
    assert_eq!(s.since, Some(Duration::from_millis(250)));
    assert_eq!(s.pending, 3);
    let wake = wake_number(&w.effects).expect("a wake");
    w.event(
        1.5,
        Event::WakeDone {
            service: "pg".into(),
            wake,
            result: Ok(vec![addr("10.0.0.1:5432")]),
        },
    );
    w.pending(1.6, "pg", 0.0);
    let s = &w.planner.status(w.at(4.5))[0];
    assert_eq!(s.phase, Phase::Awake);
    assert_eq!(s.since, Some(Duration::from_secs(3)));
    assert_eq!(
        s.last_wake,
        Some((WakeOutcome::Ready, Duration::from_millis(500)))
    );
    assert_eq!(s.idle, Some(Duration::from_secs(3)), "idle since it woke");
    assert_eq!(s.idle_timeout, policy().idle_timeout);
}

#[test]
fn the_tick_looks_only_at_services_with_something_due() {
    // 1,000 parked services and one awake: the schedule holds one deadline and watches
    // nothing, and the awake one still parks on time.
    let mut services: Vec<ServiceDef> = (0..1000)
        .map(|i| tcp(&format!("s{i}"), 20_000 + i))
        .collect();
    services.push(tcp("pg", 5432));
    let mut w = World::new(true, false, services);
    assert!(w.planner.schedule.deadlines.is_empty());
    assert!(w.planner.schedule.watched.is_empty());
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    assert_eq!(w.planner.schedule.deadlines.len(), 1, "pg's idle deadline");
    assert!(
        w.planner.schedule.watched.is_empty(),
        "nothing held any more"
    );
    assert!(
        w.planner.schedule.visit(w.at(10.0)).is_empty(),
        "nothing due yet"
    );
    assert_eq!(w.planner.schedule.visit(w.at(31.0)), ["pg"]);
    w.tick(31.0);
    assert_eq!(w.phase("pg"), Phase::Parking);
    assert_eq!(
        w.planner.schedule.watched.iter().collect::<Vec<_>>(),
        ["pg"],
        "a park is looked at every tick (ACKs, samples)"
    );
    // A held connection is standing demand: watched until it is gone.
    w.pending(32.0, "s7", 1.0);
    assert!(w.planner.schedule.watched.contains("s7"));
    w.pending(32.5, "s7", 0.0);
    assert!(!w.planner.schedule.watched.contains("s7"));
    // A removed service leaves nothing behind.
    w.event(
        33.0,
        Event::Remove {
            service: "pg".into(),
        },
    );
    assert!(!w.planner.schedule.watched.contains("pg"));
    assert!(w.planner.schedule.deadlines.iter().all(|(_, n)| n != "pg"));
}

#[test]
fn a_service_that_keeps_its_name_parks_only_once_its_name_leads_to_the_proxies() {
    let pg = ServiceDef {
        in_cluster: Some(addr("10.0.0.9:20001")),
        ..tcp("pg", 5432)
    };
    let mut w = World::new(true, false, vec![pg]);
    assert_eq!(
        steer_effects(&w.effects, "pg"),
        [Steer::Proxy],
        "parked: to the proxies"
    );
    assert!(w.effects.iter().any(|e| matches!(
        e,
        Effect::PublishInClusterListener { service, listen, .. }
            if service == "pg" && *listen == addr("10.0.0.9:20001")
    )));
    w.event(
        0.1,
        Event::Steered {
            service: "pg".into(),
            steer: Steer::Proxy,
        },
    );

    // Awake: straight to the pods.
    w.envoys.connected = 1;
    w.envoys.acked_by_all.insert("pg".into(), 0);
    w.wake(1.0, "pg", &["10.1.0.5:5432"]);
    assert_eq!(
        steer_effects(&w.effects, "pg"),
        [Steer::Proxy, Steer::Direct]
    );
    w.event(
        1.7,
        Event::Steered {
            service: "pg".into(),
            steer: Steer::Direct,
        },
    );

    // Idle: the park steers the name to the proxies again in its first phase ...
    let e = w.tick(20.0);
    assert_eq!(w.phase("pg"), Phase::Parking);
    assert_eq!(steer_effects(&e, "pg"), [Steer::Proxy]);
    w.ack("pg");
    w.tick(20.1);
    // ... and an idle sample after the ACK does not scale down before that steer is
    // written (a stale report of the old steer does not count) ...
    w.event(
        20.15,
        Event::Steered {
            service: "pg".into(),
            steer: Steer::Direct,
        },
    );
    let e = w.sample(20.2, "pg", 0.0, 5.0);
    assert_eq!(parks(&e), 0, "the Service's name still leads to the pods");
    // ... nor by the park's time bound (parkAckTimeout 5 s) while the API has not
    // taken it ...
    assert_eq!(
        parks(&w.tick(25.5)),
        0,
        "parkAckTimeout passed, route not written"
    );
    // ... nor before the settle time (2 s) has passed since it was written.
    w.event(
        25.6,
        Event::Steered {
            service: "pg".into(),
            steer: Steer::Proxy,
        },
    );
    assert_eq!(parks(&w.tick(26.0)), 0);
    assert_eq!(parks(&w.sample(27.0, "pg", 0.0, 5.0)), 0);
    // Settled: then it goes to zero.
    let e = w.sample(27.7, "pg", 0.0, 5.0);
    assert_eq!(parks(&e), 1);
    assert_eq!(w.phase("pg"), Phase::Parked);

    // No longer fronted: its slice goes.
    let e = w.event(
        30.0,
        Event::Remove {
            service: "pg".into(),
        },
    );
    assert_eq!(steer_effects(&e, "pg"), [Steer::Gone]);
}

#[test]
fn without_in_cluster_nothing_is_routed() {
    let mut w = World::new(true, false, vec![tcp("pg", 5432)]);
    w.wake(0.0, "pg", &["10.0.0.1:5432"]);
    w.tick(20.0);
    assert!(steer_effects(&w.effects, "pg").is_empty());
    assert!(!w
        .effects
        .iter()
        .any(|e| matches!(e, Effect::PublishInClusterListener { .. })));
}

#[test]
fn the_ports_of_one_workload_wake_together_and_it_goes_to_zero_with_the_last() {
    let mut w = World::new(
        true,
        false,
        vec![port("pg.db"), port("pg.db_metrics"), tcp("other", 6379)],
    );
    // A connection held on the second port wakes both ports, and nothing else.
    let wakes = woken(&w.pending(0.0, "pg.db_metrics", 1.0));
    assert_eq!(
        wakes.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["pg.db", "pg.db_metrics"]
    );
    assert_eq!(w.phase("other"), Phase::Parked);
    w.ready(0.5, &wakes);
    w.pending(0.6, "pg.db_metrics", 0.0);
    assert_eq!(w.phase("pg.db"), Phase::Awake);
    assert_eq!(w.phase("pg.db_metrics"), Phase::Awake);

    // Traffic on the first port alone keeps the second awake past its idle timeout.
    w.sample(1.0, "pg.db_metrics", 0.0, 0.0);
    w.sample(10.0, "pg.db", 1.0, 1.0);
    w.sample(20.0, "pg.db", 0.0, 2.0);
    w.tick(26.0);
    assert_eq!(w.phase("pg.db_metrics"), Phase::Awake, "kept by pg.db");

    // Idle together: both park; the first to finish does not stop the workload.
    w.tick(35.0);
    assert_eq!(w.phase("pg.db"), Phase::Parking);
    assert_eq!(w.phase("pg.db_metrics"), Phase::Parking);
    w.ack("pg.db");
    w.tick(35.1);
    let e = w.sample(35.2, "pg.db", 0.0, 2.0);
    assert_eq!(w.phase("pg.db"), Phase::Parked);
    assert_eq!(parks(&e), 0, "pg.db_metrics still runs on the workload");
    w.ack("pg.db_metrics");
    w.tick(35.3);
    let e = w.sample(35.4, "pg.db_metrics", 0.0, 0.0);
    assert_eq!(w.phase("pg.db_metrics"), Phase::Parked);
    assert_eq!(parks(&e), 1, "the last port parked: to zero");
    assert_eq!(parks(&w.effects), 1);
}

#[test]
fn a_connection_to_one_port_cancels_the_park_of_every_port() {
    let mut w = World::new(true, false, vec![port("pg.db"), port("pg.db_metrics")]);
    let wakes = woken(&w.pending(0.0, "pg.db", 1.0));
    w.ready(0.5, &wakes);
    w.pending(0.6, "pg.db", 0.0);
    w.tick(20.0);
    assert_eq!(w.phase("pg.db_metrics"), Phase::Parking);
    let e = w.pending(20.5, "pg.db", 1.0);
    assert_eq!(w.phase("pg.db"), Phase::Awake);
    assert_eq!(w.phase("pg.db_metrics"), Phase::Awake);
    assert!(e.contains(&Effect::Record(Record::ParkCancelled {
        service: "pg.db_metrics".into()
    })));
    assert_eq!(parks(&w.effects), 0);
}

#[test]
fn a_port_whose_wake_failed_does_not_stop_the_workload_of_an_awake_port() {
    let mut w = World::new(true, false, vec![port("pg.db"), port("pg.db_metrics")]);
    let wakes = woken(&w.pending(0.0, "pg.db", 1.0));
    let [first, (second, second_wake)] = &wakes[..] else {
        panic!("two wakes: {wakes:?}");
    };
    w.ready(0.5, std::slice::from_ref(first));
    let e = w.event(
        0.6,
        Event::WakeDone {
            service: second.clone(),
            wake: *second_wake,
            result: Err("no ready endpoint for port metrics".into()),
        },
    );
    assert_eq!(w.phase("pg.db"), Phase::Awake);
    assert_eq!(w.phase("pg.db_metrics"), Phase::Parked);
    assert_eq!(parks(&e), 0, "pg.db runs on it");
    // Found running while parked: its sibling's doing, not drift.
    let checks = w.planner.reconcile();
    let wake = checks
        .iter()
        .find_map(|e| match e {
            Effect::Check { service, wake } if service == "pg.db_metrics" => Some(*wake),
            _ => None,
        })
        .expect("a check of the parked port");
    let e = w.event(
        1.0,
        Event::Checked {
            service: "pg.db_metrics".into(),
            wake,
            running: true,
        },
    );
    assert_eq!(e, []);
    // Removed, a port no longer holds the workload up.
    w.event(
        2.0,
        Event::Remove {
            service: "pg.db".into(),
        },
    );
    let e = w.event(
        2.1,
        Event::Checked {
            service: "pg.db_metrics".into(),
            wake,
            running: true,
        },
    );
    assert_eq!(parks(&e), 1);
}
