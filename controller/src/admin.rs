//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (fails once a vital
//! task has died: Kubernetes then restarts the pod), `/readyz` (not ready while this
//! replica does not serve: a follower, or a leader still reading what runs), `/status`
//! (every service's phase and timings as JSON, what `zenvoy status` shows).

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use zenvoy_core::planner::Status;

use crate::runtime::StatusQuery;
use std::time::Duration;

async fn metrics(registry: Arc<Registry>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// What `/healthz` and `/readyz` look at.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Tasks the controller cannot work without (the runtime, watchers, the election):
    /// one that has ended while the controller runs makes it unhealthy.
    pub vital: Vec<tokio::task::AbortHandle>,
    /// Whether this replica serves streams (Kubernetes: the gate); always without one.
    pub serving: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where `/status` asks the runtime.
    pub status: Option<tokio::sync::mpsc::Sender<StatusQuery>>,
}

/// How long `/status` waits for the runtime (busy with a burst of events, say).
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// `/status`'s body. Durations in seconds; a field is null when it does not apply.
#[derive(Debug, serde::Serialize)]
struct StatusPage {
    services: Vec<ServiceStatus>,
}

#[derive(Debug, serde::Serialize)]
struct ServiceStatus {
    name: String,
    /// parked, waking, awake, parking.
    state: &'static str,
    /// In this state for; null: since the controller started.
    since_seconds: Option<f64>,
    /// Connections the holders hold for it.
    pending: u64,
    last_wake: Option<LastWake>,
    /// Awake: time since it was last active.
    idle_seconds: Option<f64>,
    idle_timeout_seconds: f64,
}

#[derive(Debug, serde::Serialize)]
struct LastWake {
    /// ready, failed, timed_out.
    outcome: &'static str,
    seconds: f64,
}

impl From<Status> for ServiceStatus {
    fn from(s: Status) -> Self {
        ServiceStatus {
            name: s.name,
            state: s.phase.label(),
            since_seconds: s.since.map(|d| d.as_secs_f64()),
            pending: s.pending,
            last_wake: s.last_wake.map(|(outcome, took)| LastWake {
                outcome: outcome.label(),
                seconds: took.as_secs_f64(),
            }),
            idle_seconds: s.idle.map(|d| d.as_secs_f64()),
            idle_timeout_seconds: s.idle_timeout.as_secs_f64(),
        }
    }
}

async fn status(query: Option<tokio::sync::mpsc::Sender<StatusQuery>>) -> axum::response::Response {
    let unavailable = |why: &'static str| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    let Some(query) = query else {
        return unavailable("no runtime\n");
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if query.try_send(tx).is_err() {
        return unavailable("too many status queries at once, or the runtime has stopped\n");
    }
    match tokio::time::timeout(STATUS_TIMEOUT, rx).await {
        Ok(Ok(services)) => {
            let page = StatusPage {
                services: services.into_iter().map(ServiceStatus::from).collect(),
            };
            match serde_json::to_string(&page) {
                Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
            }
        }
        Ok(Err(_)) => unavailable("the runtime has stopped\n"),
        Err(_) => unavailable("the runtime did not answer within 5s\n"),
    }
}

impl Health {
    fn healthy(&self) -> bool {
        self.vital.iter().all(|t| !t.is_finished())
    }

    fn ready(&self) -> bool {
        self.healthy() && self.serving.as_ref().is_none_or(|s| *s.borrow())
    }
}

fn answer(ok: bool, what: &'static str) -> axum::response::Response {
    if ok {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, what).into_response()
    }
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let query = health.status.clone();
    let live = Arc::new(health);
    let ready = live.clone();
    let app = Router::new()
        .route("/status", get(move || status(query.clone())))
        .route("/metrics", get(move || metrics(registry.clone())))
        .route(
            "/healthz",
            get(move || {
                let ok = live.healthy();
                async move { answer(ok, "a vital task has stopped\n") }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ok = ready.ready();
                async move {
                    answer(
                        ok,
                        "not serving (a follower, or a vital task has stopped)\n",
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
