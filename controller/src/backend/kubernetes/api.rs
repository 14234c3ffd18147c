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

/// Sleep for `d`, or forever when there is nothing to retry.
pub async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
