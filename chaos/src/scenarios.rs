//! The scenarios, a group to a module, and the waits on the stack they share: 1, a burst
//! at a parked service (`burst`); 2, park/wake cycles (`cycles`); 3, restarts and kills
//! of every component (`kills`); 4 and 5, a silent Envoy and a second Envoy during the
//! park (`envoys`); 6, floods and slow clients at the holder (`holder`).

mod burst;
mod cycles;
mod envoys;
mod holder;
mod kills;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zenvoy_e2e::stack::{self, Options, ServiceSpec, Stack};
use zenvoy_test_support::wait;

use crate::BOUND;

pub(crate) use burst::burst;
pub(crate) use cycles::park_wake_cycles;
pub(crate) use envoys::{second_envoy_during_the_park, silent_envoy};
pub(crate) use holder::holder_flood_and_slow_headers;
pub(crate) use kills::{
    apiserver_down_during_a_park, controller_killed_mid_park, controller_killed_mid_wake,
    envoy_restarted_mid_wake, holder_killed_with_connections_held,
    holder_stopped_with_connections_held, kube_controller_killed_mid_park,
    kube_controller_killed_mid_wake,
};

fn pending(service: &str) -> String {
    format!("zenvoy_holder_pending{{service=\"{service}\"}}")
}

fn state(service: &str, state: &str) -> String {
    format!("zenvoy_service_state{{service=\"{service}\",state=\"{state}\"}}")
}

/// Wait until the holder's `series` reads at least `want`; returns what it read.
async fn holder_at_least(
    st: &Stack,
    series: &str,
    want: f64,
    bound: Duration,
) -> anyhow::Result<f64> {
    let what = format!("{series} to reach {want}");
    wait::until(&what, bound, || async {
        let v = st.holder_metric(series).await?;
        anyhow::ensure!(v >= want, "it is {v}");
        Ok(Some(v))
    })
    .await
}

/// Wait until the controller's `series` reads exactly `want` (a 0/1 state gauge).
async fn controller_is(st: &Stack, series: &str, want: f64, bound: Duration) -> anyhow::Result<()> {
    let what = format!("{series} to be {want}");
    wait::until(&what, bound, || async {
        let v = st.controller_metric(series).await?;
        anyhow::ensure!(v == want, "it is {v}");
        Ok(Some(()))
    })
    .await
}

/// `n` connections held for `service` and its wake under way.
async fn held_and_waking(st: &Stack, service: &str, n: u64) -> anyhow::Result<()> {
    holder_at_least(st, &pending(service), n as f64, BOUND).await?;
    controller_is(st, &state(service, "waking"), 1.0, BOUND).await
}

/// A gated echo service `name` (held until [`stack::Gate::open`]) with a 60 s
/// holdTimeout and the `extra` YAML keys, in a stack of its own.
async fn gated_stack(name: &str, extra: &[&str]) -> anyhow::Result<(Stack, stack::Gate)> {
    let dir = Stack::tempdir()?;
    let (spec, gate) = ServiceSpec::gated_echo(name, dir.path())?;
    let spec = extra
        .iter()
        .fold(spec.with("holdTimeout: 60s"), |spec, e| spec.with(e));
    let opts = Options {
        services: vec![spec],
        ..Options::default()
    };
    Ok((Stack::start(dir, opts).await?, gate))
}

/// A process stopped with SIGSTOP, continued when dropped (an early return included), so
/// the stack's SIGTERM reaches it when it is torn down.
#[derive(Debug)]
struct Frozen(Pid);

impl Frozen {
    fn stop(pid: u32) -> anyhow::Result<Frozen> {
        let pid = Pid::from_raw(i32::try_from(pid)?);
        kill(pid, Signal::SIGSTOP)?;
        Ok(Frozen(pid))
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}
