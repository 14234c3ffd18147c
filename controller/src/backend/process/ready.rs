//! When a started (or adopted) process counts as ready: its upstream port accepts
//! ([`port`]), and then its `ready` check passes, tried every `ready.interval` until the
//! wake's deadline: `tcp` (nothing more), an HTTP GET ([`http`](self::http)), a command
//! that exits 0 ([`command`]), Postgres' answer to a StartupMessage or its
//! `postmaster.pid` ([`postgres`], read with `zenvoy_core::ready`). Many servers accept
//! before they can answer, and a client relayed to them then would be refused.

mod command;
mod http;
mod port;
mod postgres;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::debug;
use zenvoy_core::config::{ProcessOptions, ReadyCheck};

use super::{exited, Instance};
use crate::backend::BackendError;

// `self::`: the `http` crate is a dependency too.
pub(super) use self::http::client as http_client;
pub(super) use port::wait_for_port;
pub use postgres::postgres_ready;

/// The longest one `http` or `command` check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Try the service's `ready` check (its port accepts) every `ready.interval` until it
/// passes (the upstream is the endpoint), cannot pass, or `deadline` comes (`timeout` is
/// the wake's, for the error).
pub(super) async fn wait_for_check(
    service: String,
    instance: &Instance,
    http: &reqwest::Client,
    spawned: Option<i64>,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, BackendError> {
    let ready = &instance.options.ready;
    let mut seen = Seen::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let try_ = Try {
            upstream: instance.upstream,
            spawned,
        };
        match check_ready(&ready.check, try_, http, &instance.options, left).await {
            Ok(()) => {
                debug!(service, upstream = %instance.upstream, "ready");
                return Ok(vec![instance.upstream]);
            }
            Err(failed) if failed.fatal => {
                return Err(BackendError::CannotBeReady {
                    service,
                    detail: failed.said,
                });
            }
            Err(failed) => {
                debug!(service, said = %failed.said, "not ready yet");
                seen.note(failed);
                exited(&service, instance).await?;
                let now = Instant::now();
                if now >= deadline {
                    return Err(BackendError::NotReadyInTime {
                        service,
                        waited: timeout,
                        detail: format!(
                            "its port accepts but its ready check fails: {}",
                            seen.said()
                        ),
                    });
                }
                tokio::time::sleep(ready.interval.min(deadline - now)).await;
            }
        }
    }
}

/// One try of a service's `ready` check once its port accepts: Ok when it passes, else
/// what it saw (for the wake's error when time runs out).
async fn check_ready(
    check: &ReadyCheck,
    try_: Try,
    http: &reqwest::Client,
    o: &ProcessOptions,
    left: Duration,
) -> Result<(), Failed> {
    let bound = CHECK_TIMEOUT.min(left);
    match tokio::time::timeout(bound, check_once(check, try_, http, o)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(CheckError { said, fatal })) => Err(Failed {
            said,
            cut_short: false,
            fatal,
        }),
        Err(_) => Err(Failed {
            said: format!("the check did not finish within {bound:?}"),
            cut_short: bound < CHECK_TIMEOUT,
            fatal: false,
        }),
    }
}

async fn check_once(
    check: &ReadyCheck,
    try_: Try,
    http: &reqwest::Client,
    o: &ProcessOptions,
) -> Result<(), CheckError> {
    let upstream = try_.upstream;
    match check {
        ReadyCheck::Tcp => Ok(()),
        ReadyCheck::Http { path, status } => self::http::check(http, upstream, path, *status).await,
        ReadyCheck::Command(argv) => command::check(argv, o).await,
        ReadyCheck::Postgres { user, database } => {
            Ok(postgres_ready(upstream, user, database).await?)
        }
        ReadyCheck::PostgresDataDir(dir) => postgres::postmaster_ready(dir, try_.spawned).await,
    }
}

/// What one try of a check is about: the upstream, and when this wake started the
/// process (seconds since the epoch; None when it was already running).
#[derive(Debug, Clone, Copy)]
struct Try {
    upstream: SocketAddr,
    spawned: Option<i64>,
}

/// What a failed try saw. `fatal`: no later try can pass (the wake ends at once).
#[derive(Debug)]
struct CheckError {
    said: String,
    fatal: bool,
}

impl From<String> for CheckError {
    fn from(said: String) -> Self {
        CheckError { said, fatal: false }
    }
}

/// A failed check: what it saw, whether the wake's deadline cut it short, and whether
/// no later try can pass.
#[derive(Debug)]
struct Failed {
    said: String,
    cut_short: bool,
    fatal: bool,
}

/// What a wake's failing checks said, for its error: a check cut short by the wake's
/// deadline says less than the answer before it, so it does not replace one.
#[derive(Debug, Default)]
struct Seen(Option<String>);

impl Seen {
    fn note(&mut self, failed: Failed) {
        if !(failed.cut_short && self.0.is_some()) {
            self.0 = Some(failed.said);
        }
    }

    fn said(self) -> String {
        self.0.unwrap_or_else(|| "no check finished".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_cut_short_by_the_deadline_keeps_the_answer_before_it() {
        let failed = |said: &str, cut_short| Failed {
            said: said.to_string(),
            cut_short,
            fatal: false,
        };
        let mut seen = Seen::default();
        seen.note(failed("GET / answered 503, not 2xx", false));
        seen.note(failed("the check did not finish within 3ms", true));
        assert_eq!(seen.said(), "GET / answered 503, not 2xx");

        let mut seen = Seen::default();
        seen.note(failed("the check did not finish within 3ms", true));
        assert_eq!(
            seen.said(),
            "the check did not finish within 3ms",
            "all there is"
        );
        let mut seen = Seen::default();
        seen.note(failed("answered 503", false));
        seen.note(failed("answered 500", false));
        assert_eq!(
            seen.said(),
            "answered 500",
            "a newer answer replaces an older one"
        );
        assert_eq!(Seen::default().said(), "no check finished");
    }
}
