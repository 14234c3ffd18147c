use super::*;
use Action::*;

const T: Timing = Timing {
    idle_timeout: Duration::from_secs(15),
    min_warm: Duration::from_secs(30),
    wake_timeout: Duration::from_secs(60),
    park_ack_timeout: Duration::from_secs(5),
};

fn secs(base: Instant, s: u64) -> Instant {
    base + Duration::from_secs(s)
}

/// Drive a sequence of (second, input) and return the final state and all actions.
fn run(start: State, base: Instant, inputs: &[(u64, Input)]) -> (State, Vec<Action>) {
    let mut state = start;
    let mut actions = Vec::new();
    for (s, input) in inputs {
        let (next, step) = step(state, *input, secs(base, *s), &T);
        state = next;
        actions.extend(step.actions);
    }
    (state, actions)
}

#[test]
fn demand_wakes_a_parked_service() {
    let b = crate::test_clock::origin();
    let (s, step) = step(State::Parked, Input::Demand, b, &T);
    assert_eq!(s, State::Waking { since: b });
    assert_eq!(step.actions, vec![ScaleUp]);
}

#[test]
fn parked_ignores_samples_ticks_and_acks() {
    let b = crate::test_clock::origin();
    for input in [
        Input::Sample { active: true },
        Input::Tick,
        Input::Acked,
        Input::Ready,
    ] {
        let (s, step) = step(State::Parked, input, b, &T);
        assert_eq!((s, step.actions), (State::Parked, vec![]), "{input:?}");
    }
}

#[test]
fn ready_publishes_upstream_and_reports_wake_duration() {
    let b = crate::test_clock::origin();
    let (s, step) = step(State::Waking { since: b }, Input::Ready, secs(b, 2), &T);
    assert_eq!(
        s,
        State::Awake {
            since: secs(b, 2),
            last_active: secs(b, 2)
        }
    );
    assert_eq!(step.actions, vec![PublishUpstream]);
    assert_eq!(
        step.wake,
        Some((WakeOutcome::Ready, Duration::from_secs(2)))
    );
}

#[test]
fn waking_times_out_or_fails_back_to_parked() {
    let b = crate::test_clock::origin();
    let waking = State::Waking { since: b };
    let (s, step1) = step(waking, Input::Tick, secs(b, 59), &T);
    assert_eq!((s, step1.actions), (waking, vec![]));
    let (s, step2) = step(waking, Input::Tick, secs(b, 60), &T);
    assert_eq!((s, step2.actions.clone()), (State::Parked, vec![ScaleDown]));
    assert_eq!(step2.wake.map(|w| w.0), Some(WakeOutcome::TimedOut));
    let (s, step3) = step(waking, Input::WakeFailed, secs(b, 1), &T);
    assert_eq!(
        (s, step3.wake.map(|w| w.0)),
        (State::Parked, Some(WakeOutcome::Failed))
    );
}

#[test]
fn awake_parks_only_after_idle_timeout_and_min_warm() {
    let b = crate::test_clock::origin();
    let awake = State::Awake {
        since: b,
        last_active: b,
    };
    // idle 15 s reached but minWarm 30 s not yet.
    let (s, a) = run(awake, b, &[(20, Input::Tick)]);
    assert_eq!((s, a), (awake, vec![]));
    let (s, a) = run(awake, b, &[(30, Input::Tick)]);
    assert_eq!(
        s,
        State::Parking {
            since: secs(b, 30),
            woke: b,
            acked_at: None
        }
    );
    assert_eq!(a, vec![PublishHolder]);
}

#[test]
fn activity_keeps_a_service_awake() {
    let b = crate::test_clock::origin();
    let awake = State::Awake {
        since: b,
        last_active: b,
    };
    let (s, a) = run(
        awake,
        b,
        &[
            (25, Input::Sample { active: true }),
            (31, Input::Tick),
            (39, Input::Tick),
            (40, Input::Sample { active: false }),
            (40, Input::Tick),
        ],
    );
    assert!(matches!(s, State::Parking { since, .. } if since == secs(b, 40)));
    assert_eq!(a, vec![PublishHolder]);
}

#[test]
fn park_completes_after_ack_and_every_envoys_idle_sample() {
    let b = crate::test_clock::origin();
    let parking = State::Parking {
        since: b,
        woke: b,
        acked_at: None,
    };
    // An idle sample before the ACK does not finish the park.
    let (s, a) = run(parking, b, &[(1, Input::Sample { active: false })]);
    assert_eq!((s, a), (parking, vec![]));
    // Settled is only meaningful after the ACK.
    let (s, a) = run(parking, b, &[(1, Input::Settled)]);
    assert_eq!((s, a), (parking, vec![]));
    // One node's idle sample after the ACK is not enough: the planner says Settled
    // once every node's is in.
    let acked = State::Parking {
        since: b,
        woke: b,
        acked_at: Some(secs(b, 1)),
    };
    let (s, a) = run(
        parking,
        b,
        &[(1, Input::Acked), (2, Input::Sample { active: false })],
    );
    assert_eq!((s, a), (acked, vec![]));
    let (s, a) = run(parking, b, &[(1, Input::Acked), (2, Input::Settled)]);
    assert_eq!((s, a), (State::Parked, vec![ScaleDown]));
}

#[test]
fn a_connection_during_parking_cancels_the_park() {
    let b = crate::test_clock::origin();
    let parking = State::Parking {
        since: secs(b, 40),
        woke: b,
        acked_at: Some(secs(b, 41)),
    };
    for input in [Input::Demand, Input::Sample { active: true }] {
        let (s, step) = step(parking, input, secs(b, 42), &T);
        assert_eq!(
            s,
            State::Awake {
                since: b,
                last_active: secs(b, 42)
            }
        );
        assert_eq!(step.actions, vec![PublishUpstream]);
    }
}

#[test]
fn parking_is_bounded_when_acks_never_come() {
    let b = crate::test_clock::origin();
    let parking = State::Parking {
        since: b,
        woke: b,
        acked_at: None,
    };
    let (s, a) = run(parking, b, &[(4, Input::Tick)]);
    assert_eq!((s, a), (parking, vec![]));
    let (s, a) = run(parking, b, &[(5, Input::Tick)]);
    assert_eq!((s, a), (State::Parked, vec![ScaleDown]));
}

#[test]
fn two_full_cycles() {
    let b = crate::test_clock::origin();
    let t = Timing {
        min_warm: Duration::ZERO,
        ..T
    };
    let mut state = State::Parked;
    let mut all = Vec::new();
    for (s, input) in [
        (0, Input::Demand),
        (1, Input::Ready),
        (16, Input::Tick),
        (16, Input::Acked),
        (17, Input::Settled),
        (20, Input::Demand),
        (21, Input::Ready),
        (36, Input::Tick),
        (36, Input::Acked),
        (37, Input::Settled),
    ] {
        let (next, st) = step(state, input, secs(b, s), &t);
        state = next;
        all.extend(st.actions);
    }
    assert_eq!(state, State::Parked);
    assert_eq!(
        all,
        vec![
            ScaleUp,
            PublishUpstream,
            PublishHolder,
            ScaleDown,
            ScaleUp,
            PublishUpstream,
            PublishHolder,
            ScaleDown
        ]
    );
}

#[test]
fn scaled_to_zero_elsewhere_puts_the_holder_back_without_a_scale_call() {
    let b = crate::test_clock::origin();
    let awake = State::Awake {
        since: b,
        last_active: b,
    };
    let parking = State::Parking {
        since: b,
        woke: b,
        acked_at: None,
    };
    for s0 in [awake, parking] {
        let (s, step) = step(s0, Input::ScaledToZero, secs(b, 1), &T);
        assert_eq!(
            (s, step.actions),
            (State::Parked, vec![PublishHolder]),
            "{s0:?}"
        );
    }
    // A wake in flight scales up itself; parked stays parked.
    let waking = State::Waking { since: b };
    for s0 in [waking, State::Parked] {
        let (s, step) = step(s0, Input::ScaledToZero, secs(b, 1), &T);
        assert_eq!((s, step.actions), (s0, vec![]), "{s0:?}");
    }
}

/// `due` is exactly when a tick starts to change the state: the planner's tick looks at
/// a service only from then (and at every tick while it is watched).
#[test]
fn due_is_the_first_instant_a_tick_moves_the_state() {
    let b = crate::test_clock::origin();
    let at = |ms: u64| b + Duration::from_millis(ms);
    let states = [
        State::Parked,
        State::Waking { since: at(1_000) },
        State::Awake {
            since: at(1_000),
            last_active: at(1_000),
        },
        // Active again after min_warm: the idle timeout decides.
        State::Awake {
            since: at(1_000),
            last_active: at(40_000),
        },
        // Active early: min_warm decides.
        State::Awake {
            since: at(1_000),
            last_active: at(2_000),
        },
        State::Parking {
            since: at(1_000),
            woke: at(0),
            acked_at: None,
        },
        State::Parking {
            since: at(1_000),
            woke: at(0),
            acked_at: Some(at(1_500)),
        },
    ];
    for state in states {
        let due = due(state, &T);
        // Every 250 ms for two minutes: before `due` nothing, from it a change.
        for ms in (0..=120_000).step_by(250) {
            let now = at(ms);
            let (next, _) = step(state, Input::Tick, now, &T);
            let moved = next != state;
            assert_eq!(
                moved,
                due.is_some_and(|d| now >= d),
                "{state:?} at {ms} ms (due {:?})",
                due.map(|d| d.duration_since(b))
            );
        }
    }
}

#[test]
fn a_sample_moves_only_an_awake_or_parking_service() {
    let b = crate::test_clock::origin();
    let states = [
        State::Parked,
        State::Waking { since: b },
        State::Awake {
            since: b,
            last_active: b,
        },
        State::Parking {
            since: b,
            woke: b,
            acked_at: Some(b),
        },
    ];
    assert!(sample_moves(Phase::Parking, false), "it may settle a park");
    for s in states {
        for active in [false, true] {
            // Late enough for any timeout: still no move, for a sample is not a tick.
            let (next, step) = step(s, Input::Sample { active }, secs(b, 3600), &T);
            let moved = (next, step) != (s, Step::default());
            // Skipping a sample that moves nothing is what the planner relies on; an
            // idle sample of a parking service moves it through the planner's
            // `Settled`, not through this step.
            if !sample_moves(s.phase(), active) {
                assert!(!moved, "{:?}, active {active}: moved", s.phase());
            } else if active {
                assert!(moved, "{:?}, active: did not move", s.phase());
            }
        }
    }
}
