//! The first wait of every wake: for the upstream port to accept a connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::debug;
use zenvoy_base::{Knock, PortProbe};

use crate::backend::process::{exited, Instance};
use crate::backend::BackendError;

/// How often a waking service's port is tried. A connect to a closed loopback port fails
/// at once and costs microseconds, so a short interval is cheap and keeps the wake fast.
/// The probe runs on a blocking thread: tokio's timers have 1 ms granularity, which alone
/// would add up to 2 ms to every wake.
const PROBE_INTERVAL: Duration = Duration::from_micros(100);
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the probe looks at whether the process has exited.
const EXIT_CHECK_EVERY: u32 = 100;

/// Wait until the service's upstream port accepts, looking between rounds of tries
/// whether its process exited (it will then never accept); an error once `deadline`
/// passes (`timeout` is the wake's, for the error).
pub(in crate::backend::process) async fn wait_for_port(
    service: &str,
    instance: &Instance,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), BackendError> {
    loop {
        let upstream = instance.upstream;
        let probe = tokio::task::spawn_blocking(move || {
            probe_until(
                upstream,
                deadline.min(Instant::now() + PROBE_INTERVAL * EXIT_CHECK_EVERY),
            )
        });
        if let Ok(true) = probe.await {
            debug!(service, upstream = %instance.upstream, "port accepts");
            return Ok(());
        }
        exited(service, instance).await?;
        if Instant::now() >= deadline {
            return Err(BackendError::NotReady {
                service: service.to_string(),
                upstream: instance.upstream,
                waited: timeout,
            });
        }
    }
}

/// Try to connect to `upstream` every `PROBE_INTERVAL` until it accepts (true) or
/// `until` passes (false). Blocking: run it on a blocking thread.
fn probe_until(upstream: SocketAddr, until: Instant) -> bool {
    let probe = PortProbe::new(upstream, PROBE_CONNECT_TIMEOUT);
    loop {
        if probe.knock() == Knock::Accepted {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}
