//! Calls to the API server, bounded in time, with a typed error. kube retries 503s
//! internally for minutes; a wake or park must see the failure and go on retrying (and
//! counting) on its own schedule, so every call the controller makes goes through
//! [`bounded`].

use std::time::Duration;

/// Bound on one API call (or one scale step's calls).
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

pub use crate::backend::ApiError;

/// `f`, bounded by [`API_TIMEOUT`].
///
/// # Errors
/// The call's error, or [`ApiError::Timeout`].
pub async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(API_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::Timeout(API_TIMEOUT)),
    }
}

/// The pause before a failed write or read is tried again: 500 ms, doubling up to 30 s,
/// back to 500 ms after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// A failure: the pause to take now (the next one is longer).
    pub fn failed(&mut self) -> Duration {
        let p = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        p
    }

    pub fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Sleep for `d`, or forever when there is nothing to retry.
pub async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_bound_and_a_success_resets_it() {
        let mut b = Backoff::new();
        let pauses: Vec<Duration> = (0..8).map(|_| b.failed()).collect();
        assert_eq!(pauses[0], Duration::from_millis(500));
        assert_eq!(pauses[1], Duration::from_secs(1));
        assert_eq!(pauses[7], Duration::from_secs(30));
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(500));
    }
}
