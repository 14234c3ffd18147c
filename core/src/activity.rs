//! The per-service activity state machine. Pure: it is fed inputs and `now`, and returns
//! the actions to take. It never reads a clock and does no I/O, so every transition is
//! unit-tested with made-up instants.
//!
//! ```text
//!            Demand                 Ready
//!   Parked ---------> Waking ----------------> Awake <------------------+
//!     ^                 | wakeTimeout            | idleTimeout (and     | Demand or
//!     |                 v                        | minWarm) with no     | Activity
//!     +------------- (failed)                    v activity             |
//!     +---------------------------------------- Parking ----------------+
//!        ACKed by every Envoy and an idle sample from each after it, or parkAckTimeout
//! ```
//!
//! Parking is two-phase: `PublishHolder` first, and only once every Envoy has ACKed that
//! assignment (`Acked`) and every Envoy's stats sample taken after it shows nothing still
//! open on the old upstream (`Settled`) does the machine say `ScaleDown`. A connection that arrives in between lands in the holder,
//! shows up as `Demand`, and cancels the park.

use std::time::{Duration, Instant};

/// Timing policy of one service (a subset of the config's `Policy`, kept here so this
/// module depends on nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub idle_timeout: Duration,
    pub min_warm: Duration,
    pub wake_timeout: Duration,
    pub park_ack_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Scaled to zero; the holder is the endpoint.
    Parked,
    /// Scale-up requested at `since`; waiting for ready endpoints.
    Waking { since: Instant },
    /// Real endpoints published. `since` is when it became ready.
    Awake {
        since: Instant,
        last_active: Instant,
    },
    /// Holder published again at `since`; waiting for ACKs before scaling to zero.
    Parking {
        since: Instant,
        woke: Instant,
        acked_at: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The holder has connections waiting for this service.
    Demand,
    /// A stats sample arrived (summed over Envoy nodes): `active` if a connection or request
    /// is open or a counter moved since that node's previous sample.
    Sample { active: bool },
    /// The backend reports ready endpoints.
    Ready,
    /// The backend gave up on the wake (the command exited, the API refused, ...).
    WakeFailed,
    /// Every connected Envoy subscribed to the service's assignment has ACKed the holder.
    Acked,
    /// Since that ACK, every Envoy that reports the service has sent a sample, and each
    /// shows nothing open and no counter moved: no connection is left on the upstream.
    Settled,
    /// The backend found the workload at zero replicas (parked by another controller
    /// replica, or by someone else): the holder goes back in front of it.
    ScaledToZero,
    /// Time passed.
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the backend for replicas.
    ScaleUp,
    /// Publish the ready upstream endpoints to Envoy (and the holder).
    PublishUpstream,
    /// Publish the holder as the only endpoint.
    PublishHolder,
    /// Ask the backend to go to zero.
    ScaleDown,
}

/// Why a wake ended, for the wake metrics' `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeOutcome {
    Ready,
    Failed,
    TimedOut,
}

impl WakeOutcome {
    pub const ALL: [WakeOutcome; 3] = [
        WakeOutcome::Ready,
        WakeOutcome::Failed,
        WakeOutcome::TimedOut,
    ];

    /// The `outcome` label value.
    pub fn label(self) -> &'static str {
        match self {
            WakeOutcome::Ready => "ready",
            WakeOutcome::Failed => "failed",
            WakeOutcome::TimedOut => "timed_out",
        }
    }
}

/// A [`State`] without its instants: what metrics, logs and status pages show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Parked,
    Waking,
    Awake,
    Parking,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Parked, Phase::Waking, Phase::Awake, Phase::Parking];

    /// The `state` label value (lowercase, as dashboards and alerts query it).
    pub fn label(self) -> &'static str {
        match self {
            Phase::Parked => "parked",
            Phase::Waking => "waking",
            Phase::Awake => "awake",
            Phase::Parking => "parking",
        }
    }
}

impl State {
    pub fn phase(&self) -> Phase {
        match self {
            State::Parked => Phase::Parked,
            State::Waking { .. } => Phase::Waking,
            State::Awake { .. } => Phase::Awake,
            State::Parking { .. } => Phase::Parking,
        }
    }
}

/// What a step did, besides the new state: the actions, and a finished wake if any.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    pub actions: Vec<Action>,
    /// A wake that ended in this step: its outcome and how long it took.
    pub wake: Option<(WakeOutcome, Duration)>,
}

impl Step {
    fn act(actions: &[Action]) -> Self {
        Step {
            actions: actions.to_vec(),
            wake: None,
        }
    }
}

/// When time alone next moves `state` (a [`Input::Tick`] at or after this changes it;
/// one before it does not). None: nothing happens to it with time (parked).
pub fn due(state: State, t: &Timing) -> Option<Instant> {
    match state {
        State::Parked => None,
        State::Waking { since } => since.checked_add(t.wake_timeout),
        State::Awake { since, last_active } => last_active
            .checked_add(t.idle_timeout)?
            .max(since.checked_add(t.min_warm)?)
            .into(),
        State::Parking { since, .. } => since.checked_add(t.park_ack_timeout),
    }
}

/// Whether a stats sample can move a service in `phase`: an active one keeps an awake
/// service awake and cancels a park, an idle one only lets a park settle (the planner's
/// [`Input::Settled`] once every node's sample after the ACK is idle). A parked or
/// waking service ignores samples (the holder's pending count wakes it), so [`step`]
/// leaves it as it is, and the planner need not even look it up: at 10,000 services a
/// push is 10,000 samples, nearly all of parked or idle ones.
pub fn sample_moves(phase: Phase, active: bool) -> bool {
    match phase {
        Phase::Parking => true,
        Phase::Awake => active,
        Phase::Parked | Phase::Waking => false,
    }
}

/// One transition. Inputs that mean nothing in a state leave it unchanged with no action.
pub fn step(state: State, input: Input, now: Instant, t: &Timing) -> (State, Step) {
    use Action::*;
    use State::*;
    match (state, input) {
        (Parked, Input::Demand) => (Waking { since: now }, Step::act(&[ScaleUp])),

        (Waking { since }, Input::Ready) => (
            Awake {
                since: now,
                last_active: now,
            },
            Step {
                actions: vec![PublishUpstream],
                wake: Some((WakeOutcome::Ready, now.saturating_duration_since(since))),
            },
        ),
        (Waking { since }, Input::WakeFailed) => (
            Parked,
            Step {
                actions: vec![ScaleDown],
                wake: Some((WakeOutcome::Failed, now.saturating_duration_since(since))),
            },
        ),
        (Waking { since }, Input::Tick)
            if now.saturating_duration_since(since) >= t.wake_timeout =>
        {
            (
                Parked,
                Step {
                    actions: vec![ScaleDown],
                    wake: Some((WakeOutcome::TimedOut, now.saturating_duration_since(since))),
                },
            )
        }

        (Awake { since, .. }, Input::Demand | Input::Sample { active: true }) => (
            Awake {
                since,
                last_active: now,
            },
            Step::default(),
        ),
        (Awake { since, last_active }, Input::Tick)
            if now.saturating_duration_since(last_active) >= t.idle_timeout
                && now.saturating_duration_since(since) >= t.min_warm =>
        {
            (
                Parking {
                    since: now,
                    woke: since,
                    acked_at: None,
                },
                Step::act(&[PublishHolder]),
            )
        }

        // A connection (held, or still open on the old upstream) cancels the park.
        (Parking { woke, .. }, Input::Demand | Input::Sample { active: true }) => (
            Awake {
                since: woke,
                last_active: now,
            },
            Step::act(&[PublishUpstream]),
        ),
        (
            Parking {
                since,
                woke,
                acked_at: None,
            },
            Input::Acked,
        ) => (
            Parking {
                since,
                woke,
                acked_at: Some(now),
            },
            Step::default(),
        ),
        // Every Envoy sends new connections to the holder now, and each one's sample taken
        // after that shows nothing open on the upstream: nothing is lost by stopping it.
        // (One node's idle sample proves nothing of another's connections.)
        (
            Parking {
                acked_at: Some(_), ..
            },
            Input::Settled,
        ) => (Parked, Step::act(&[ScaleDown])),
        // Bounded: an Envoy that never ACKs (or no stats at all) does not keep the service up.
        (Parking { since, .. }, Input::Tick)
            if now.saturating_duration_since(since) >= t.park_ack_timeout =>
        {
            (Parked, Step::act(&[ScaleDown]))
        }

        // Nothing runs behind the published endpoints: publish the holder so the next
        // connection is held (and wakes it), not refused. No scale call: it is at zero.
        (Awake { .. } | Parking { .. }, Input::ScaledToZero) => {
            (Parked, Step::act(&[PublishHolder]))
        }

        (s, _) => (s, Step::default()),
    }
}

#[cfg(test)]
mod tests;
