//! Bounded waits on events the harness can observe. Every wait has a deadline and its
//! error says what it waited for.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Poll `check` every `every` until it returns `Ok(Some(v))`, or fail after `timeout`
/// with `what` and the last error seen.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let every = Duration::from_millis(50);
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            let detail = last_err
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{detail}");
        }
        tokio::time::sleep(every).await;
    }
}
