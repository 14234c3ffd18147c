//! Leader election on a coordination.k8s.io/v1 Lease: only the holder scales.
//!
//! The algorithm is client-go's: read the Lease; take it if it is free or if its record
//! has not changed for a whole lease duration as *we* observed it (no trust in other
//! machines' clocks); renew it while we hold it. Every write is a replace guarded by
//! the resourceVersion read, so of two candidates racing, one gets 409 Conflict.
//!
//! Why not kube-lease-manager: it takes a free Lease with server-side apply and relies on
//! field-manager conflicts for mutual exclusion, and patches strategically; the
//! resourceVersion-guarded replace used here is the whole safety argument in one line
//! and is what client-go does.
//!
//! A leader that cannot renew for a lease duration (apiserver down) steps down before
//! anyone else can take over, so two leaders never overlap as long as clocks run at the
//! same rate.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::telemetry::Metrics;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Run the election until `shutdown`; `leader` reads true while this replica holds the
/// Lease. On shutdown a held Lease is released so a follower takes over at once.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let retry = config.duration / 3;
    let mut observed: Option<(String, Instant)> = None; // (resourceVersion, when seen)
    let mut renewed: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A renewal counts from when it was sent: the write may have committed anywhere
        // up to the answer.
        let round_started = Instant::now();
        // Bounded: a round that hangs (kube retries 503s for minutes) must not leave a
        // stale "leader" standing past the lease.
        let held =
            match tokio::time::timeout(retry, try_acquire_or_renew(&api, &config, &mut observed))
                .await
            {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer from the API server within {retry:?}")),
            };
        let now = Instant::now();
        match held {
            Ok(true) => renewed = Some(round_started),
            Ok(false) => renewed = None,
            Err(e) => {
                metrics
                    .kube_api_errors
                    .get_or_create(&crate::telemetry::OpLabel { op: "lease" })
                    .inc();
                warn!(lease = %config.name, error = %e, "cannot read or renew the Lease");
                if !still_leading(renewed, now, config.duration, retry) {
                    renewed = None;
                }
            }
        }
        let is_leader = renewed.is_some();
        if *leader.borrow() != is_leader {
            info!(identity = %config.identity, leader = is_leader, "leadership changed");
            leader.send_replace(is_leader);
            metrics.leader.set(i64::from(is_leader));
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = &mut shutdown => break,
        }
    }
    if *leader.borrow() {
        leader.send_replace(false);
        metrics.leader.set(0);
        release(&api, &config).await;
    }
}

/// What a round does with the Lease it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Ours: renew it.
    Renew,
    /// Free, or someone else's record has stood still for its whole duration: take it.
    Acquire,
    /// Someone else's and alive (or just seen): wait.
    Wait,
}

/// Someone else's record as this replica first saw it: (resourceVersion, when).
pub type Observed = Option<(String, Instant)>;

/// client-go's rule, pure: expiry is judged by this replica's own clock from when it
/// first saw the current record (`observed`, updated here), never by the holder's
/// `renewTime`, so clock skew between machines cannot hand the Lease over early.
/// `fallback` is the duration when the record has none.
pub fn decide(
    spec: &LeaseSpec,
    rv: &str,
    identity: &str,
    fallback: Duration,
    observed: &mut Observed,
    now: Instant,
) -> Decision {
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        None => Decision::Acquire,
        Some(h) if h == identity => Decision::Renew,
        Some(_) => {
            let theirs = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(fallback, Duration::from_secs);
            match observed {
                Some((v, at)) if v == rv => {
                    if now.saturating_duration_since(*at) >= theirs {
                        Decision::Acquire
                    } else {
                        Decision::Wait
                    }
                }
                _ => {
                    *observed = Some((rv.to_string(), now));
                    Decision::Wait
                }
            }
        }
    }
}

/// Whether a leader whose last renewal was sent at `renewed` may go on acting: the
/// next look is at most a round's timeout and a pause away (2 x `retry`), and must still
/// fall within the lease, before anyone else can take it over.
pub fn still_leading(
    renewed: Option<Instant>,
    now: Instant,
    duration: Duration,
    retry: Duration,
) -> bool {
    renewed.is_some_and(|t| now.saturating_duration_since(t) < duration.saturating_sub(2 * retry))
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One round. `Ok(true)`: we hold the Lease now.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let secs = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let lease = match api.get_opt(&config.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        }
        Some(l) => l,
    };
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    let spec = lease.spec.clone().unwrap_or_default();
    let ours = match decide(
        &spec,
        &rv,
        &config.identity,
        config.duration,
        observed,
        Instant::now(),
    ) {
        Decision::Wait => return Ok(false),
        Decision::Renew => true,
        Decision::Acquire => {
            info!(lease = %config.name, previous = ?spec.holder_identity, "Lease free or expired; taking it");
            false
        }
    };
    let mut next = lease.clone();
    let transitions = spec.lease_transitions.unwrap_or(0);
    next.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(secs),
        acquire_time: if ours {
            spec.acquire_time.clone()
        } else {
            Some(now())
        },
        renew_time: Some(now()),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..spec
    });
    match api
        .replace(&config.name, &PostParams::default(), &next)
        .await
    {
        Ok(l) => {
            *observed = l.metadata.resource_version.map(|v| (v, Instant::now()));
            Ok(true)
        }
        // Another replica wrote first: read again next round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Give the Lease up (client-go's ReleaseOnCancel): clear the holder so a follower need
/// not wait out the duration. Best effort, bounded.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let attempt = async {
        let mut lease = api.get(&config.name).await?;
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        api.replace(&config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(())) => info!(lease = %config.name, "Lease released"),
        Ok(Err(e)) => warn!(lease = %config.name, error = %e, "cannot release the Lease"),
        Err(_) => warn!(lease = %config.name, "releasing the Lease timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, secs: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: secs,
            ..Default::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn free_ours_and_someone_elses() {
        let now = Instant::now();
        let mut seen = None;
        assert_eq!(
            decide(&spec(None, Some(15)), "1", "a", D, &mut seen, now),
            Decision::Acquire
        );
        assert_eq!(
            decide(&spec(Some(""), Some(15)), "1", "a", D, &mut seen, now),
            Decision::Acquire
        );
        assert_eq!(
            decide(&spec(Some("a"), Some(15)), "1", "a", D, &mut seen, now),
            Decision::Renew
        );
        assert_eq!(seen, None, "only someone else's record is observed");
        assert_eq!(
            decide(&spec(Some("b"), Some(15)), "1", "a", D, &mut seen, now),
            Decision::Wait
        );
        assert_eq!(seen, Some(("1".to_string(), now)));
    }

    #[test]
    fn a_record_that_stands_still_for_its_duration_expires() {
        let t0 = Instant::now();
        let b = spec(Some("b"), Some(10));
        let mut seen = None;
        assert_eq!(decide(&b, "7", "a", D, &mut seen, t0), Decision::Wait);
        assert_eq!(
            decide(&b, "7", "a", D, &mut seen, t0 + Duration::from_secs(9)),
            Decision::Wait
        );
        // Renewed by its holder (new resourceVersion): the clock starts again.
        assert_eq!(
            decide(&b, "8", "a", D, &mut seen, t0 + Duration::from_secs(9)),
            Decision::Wait
        );
        assert_eq!(
            decide(&b, "8", "a", D, &mut seen, t0 + Duration::from_secs(18)),
            Decision::Wait
        );
        assert_eq!(
            decide(&b, "8", "a", D, &mut seen, t0 + Duration::from_secs(19)),
            Decision::Acquire
        );
        // Its own duration counts, the fallback only when it has none.
        let mut seen = None;
        let none = spec(Some("b"), None);
        assert_eq!(decide(&none, "1", "a", D, &mut seen, t0), Decision::Wait);
        assert_eq!(
            decide(&none, "1", "a", D, &mut seen, t0 + Duration::from_secs(14)),
            Decision::Wait
        );
        assert_eq!(
            decide(&none, "1", "a", D, &mut seen, t0 + D),
            Decision::Acquire
        );
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_the_lease_could_pass() {
        let t0 = Instant::now();
        let retry = D / 3;
        assert!(!still_leading(None, t0, D, retry));
        assert!(still_leading(
            Some(t0),
            t0 + Duration::from_secs(4),
            D,
            retry
        ));
        // 5 s of 15 s: the next look could be 10 s later, at the lease's end.
        assert!(!still_leading(
            Some(t0),
            t0 + Duration::from_secs(5),
            D,
            retry
        ));
    }
}
