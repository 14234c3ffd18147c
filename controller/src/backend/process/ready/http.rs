//! The `http` check: `GET path` on the upstream answers the wanted status (any 2xx when
//! none is given).

use std::net::SocketAddr;

use super::{CheckError, CHECK_TIMEOUT};

/// The client for `http` checks: no proxy (the upstream is local), bounded.
pub(in crate::backend::process) fn client() -> reqwest::Client {
    // A redirect is an answer, not readiness: it counts as the status it is.
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(CHECK_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// One `http` check.
pub(super) async fn check(
    http: &reqwest::Client,
    upstream: SocketAddr,
    path: &str,
    status: Option<u16>,
) -> Result<(), CheckError> {
    let url = format!("http://{upstream}{path}");
    let got = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .status()
        .as_u16();
    let ok = match status {
        Some(want) => got == want,
        None => (200..300).contains(&got),
    };
    if ok {
        Ok(())
    } else {
        let want = status.map_or("2xx".to_string(), |s| s.to_string());
        Err(format!("GET {url} answered {got}, not {want}").into())
    }
}
