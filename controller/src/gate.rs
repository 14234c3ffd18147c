//! When this controller serves streams: the stop signal every task watches, and the
//! leader gate (Kubernetes: only the Lease holder serves ADS and metrics streams). The
//! stream servers (`xds`, `ingest`) and `lib.rs` build on this; it builds on nothing.

use tokio::sync::watch;

/// Why a stream is refused: clients retry, and reach the leader.
pub const NOT_SERVING: &str =
    "this zenvoy-controller replica is not serving (not the Lease holder, or stopping); retry";

/// Resolves once the stop channel reads true or its sender is gone (the controller is
/// stopping either way); never when there is no channel, e.g. a server built without one.
pub async fn stopping(stop: Option<watch::Receiver<bool>>) {
    match stop {
        Some(mut rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

/// A signal that reads true while `gate` is false or `stop` is true.
pub fn closed_or_stopped(
    mut gate: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> watch::Receiver<bool> {
    let end = |g: &watch::Receiver<bool>, s: &watch::Receiver<bool>| !*g.borrow() || *s.borrow();
    let (tx, rx) = watch::channel(end(&gate, &stop));
    tokio::spawn(async move {
        loop {
            let ended = tokio::select! {
                r = gate.changed() => r.is_err(),
                r = stop.changed() => r.is_err(),
                () = tx.closed() => return,
            };
            let value = ended || end(&gate, &stop);
            tx.send_if_modified(|v| std::mem::replace(v, value) != value);
            if ended {
                return;
            }
        }
    });
    rx
}
