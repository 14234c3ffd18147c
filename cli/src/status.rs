//! `zenvoy status`: the controller's `GET /status` (admin port) as a table, once or
//! redrawn until Ctrl-C.
//!
//! ```text
//! {"services":[{"name":"pg","state":"awake","since_seconds":12.3,"pending":0,
//!               "last_wake_seconds":1.234,"idle_seconds":3.2}]}
//!   (or "last_wake":{"outcome":"ready","seconds":1.234})
//!   ->
//! SERVICE  STATE  SINCE  PENDING  LAST WAKE  IDLE FOR
//! pg       awake  12.3s  0        1.2s       3.2s
//! ```

use std::time::Duration;

use serde::Deserialize;

/// The controller's `/status` document.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
}

/// One service as `/status` reports it. Fields other than `name` and `state` may be
/// missing or null (unknown fields are ignored), so an older or newer controller still
/// shows.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    /// parked, waking, awake or parking.
    pub state: String,
    /// How long it has been in `state`; none: since the controller started.
    #[serde(default)]
    pub since_seconds: Option<f64>,
    /// Connections held for it now.
    #[serde(default)]
    pub pending: u64,
    /// Demand to ready of the last wake; none before the first.
    #[serde(default)]
    pub last_wake_seconds: Option<f64>,
    /// The same with how it ended, as the controller may report it instead.
    #[serde(default)]
    pub last_wake: Option<LastWake>,
    /// Time without activity; none while there is activity or none is known.
    #[serde(default)]
    pub idle_seconds: Option<f64>,
}

/// The last wake: how long it took and how it ended (ready, failed, timed_out).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LastWake {
    pub seconds: f64,
    #[serde(default)]
    pub outcome: Option<String>,
}

impl ServiceStatus {
    /// `1.2s`, or `5.0s(timed_out)` for a wake that did not end ready: one word, so the
    /// table's columns split on whitespace.
    fn last_wake_cell(&self) -> String {
        match &self.last_wake {
            Some(w) => match w.outcome.as_deref() {
                None | Some("ready") => seconds(Some(w.seconds)),
                Some(outcome) => format!("{}({outcome})", seconds(Some(w.seconds))),
            },
            None => seconds(self.last_wake_seconds),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach the controller at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: the controller answered {status}: {body}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("{url}: not a status document: {source}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `http://<admin>/status` for an admin address given as `ip:port`, `host:port` or a
/// base URL.
pub fn url(admin: &str) -> String {
    let base = admin.trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        format!("{base}/status")
    } else {
        format!("http://{base}/status")
    }
}

/// A client for the admin port: loopback or LAN, never through a proxy from the
/// environment; a controller that does not answer within `timeout` is reported.
///
/// # Errors
/// When reqwest cannot build a client (no TLS backend is needed, so not in practice).
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
}

/// `GET /status` from the controller's admin address.
///
/// # Errors
/// [`StatusError`] naming the URL: unreachable, an error status, or not the document.
pub async fn fetch(client: &reqwest::Client, admin: &str) -> Result<Status, StatusError> {
    let url = url(admin);
    let unreachable = |source| StatusError::Unreachable {
        url: url.clone(),
        source,
    };
    let resp = client.get(&url).send().await.map_err(unreachable)?;
    let status = resp.status();
    let body = resp.text().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(StatusError::Status {
            url,
            status,
            body: body.trim().to_string(),
        });
    }
    serde_json::from_str(&body).map_err(|source| StatusError::Decode { url, source })
}

/// The table: a header and one row per service, columns aligned.
pub fn render(status: &Status) -> String {
    if status.services.is_empty() {
        return "no services\n".to_string();
    }
    let header = [
        "SERVICE",
        "STATE",
        "SINCE",
        "PENDING",
        "LAST WAKE",
        "IDLE FOR",
    ]
    .map(str::to_string);
    let rows: Vec<[String; 6]> = status
        .services
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.state.clone(),
                seconds(s.since_seconds),
                s.pending.to_string(),
                s.last_wake_cell(),
                seconds(s.idle_seconds),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h10m`, `3d04h`; `-` when unknown.
pub fn seconds(v: Option<f64>) -> String {
    let Some(s) = v.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".to_string();
    };
    if s < 1.0 {
        return format!("{}ms", (s * 1000.0).round() as u64);
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let whole = s as u64;
    let (d, h, m, sec) = (
        whole / 86_400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if whole < 3600 {
        format!("{m}m{sec:02}s")
    } else if whole < 86_400 {
        format!("{h}h{m:02}m")
    } else {
        format!("{d}d{h:02}h")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_becomes_an_aligned_table() {
        let status: Status = serde_json::from_str(
            r#"{"services":[
                {"name":"pg","state":"awake","since_seconds":12.3,"pending":0,"last_wake_seconds":1.234,"idle_seconds":3.2},
                {"name":"redis-cache","state":"parked","since_seconds":4000,"pending":2,"last_wake_seconds":null,"idle_seconds":null},
                {"name":"web","state":"waking","since_seconds":null,"pending":1,"last_wake":{"outcome":"timed_out","seconds":60.0},"idle_seconds":null,"idle_timeout_seconds":300}
            ]}"#,
        )
        .expect("status document");
        let table = render(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("SERVICE      STATE"), "{table}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["pg", "awake", "12.3s", "0", "1.2s", "3.2s"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["redis-cache", "parked", "1h06m", "2", "-", "-"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["web", "waking", "-", "1", "1m00s(timed_out)", "-"]
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(Some(0.0123)), "12ms");
        assert_eq!(seconds(Some(59.94)), "59.9s");
        assert_eq!(seconds(Some(245.0)), "4m05s");
        assert_eq!(seconds(Some(90_000.0)), "1d01h");
        assert_eq!(seconds(None), "-");
        assert_eq!(seconds(Some(f64::NAN)), "-");
    }

    #[test]
    fn admin_addresses_become_status_urls() {
        assert_eq!(url("127.0.0.1:18001"), "http://127.0.0.1:18001/status");
        assert_eq!(url("http://ctl:18001/"), "http://ctl:18001/status");
    }
}
