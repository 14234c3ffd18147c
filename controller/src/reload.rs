//! Hot reload of the config file: poll it, and when its text changes, validate it and
//! hand the services' new timeouts and limits to the runtime. A document that is invalid,
//! or that changes what needs a restart, is rejected with a log line naming the field and
//! counted; the last good config stays in force.
//!
//! Polling (one read per interval) rather than inotify: it sees a ConfigMap's symlink
//! swap and an editor's rename alike, and costs nothing worth a dependency.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use zenvoy_core::config::{policy_changes, Config};
use zenvoy_core::model::Event;

use crate::telemetry::{Metrics, ResultLabel};

/// Where the config came from and how often to look again.
#[derive(Debug, Clone)]
pub struct Reload {
    pub path: PathBuf,
    pub interval: Duration,
}

/// The config in force, as the watcher keeps it between looks.
enum InForce {
    /// Its text (normal): parsed again only when a change is compared.
    Text(String),
    /// Parsed, when the file could not be read at start.
    Parsed(Box<Config>),
}

/// Watch `reload.path` until `shutdown`, starting from `current` (the config in force).
///
/// What is kept between looks is the text in force, not the parsed config: at 10,000
/// services the parsed document is several times the size of its text, and it is needed
/// only for the moment a change is compared.
pub async fn run(
    reload: Reload,
    current: Config,
    events: mpsc::Sender<Event>,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let path = reload.path.display().to_string();
    let mut last_text = std::fs::read_to_string(&reload.path).ok();
    // The text in force: the file as the controller read it at start, moments ago (a
    // change in between is seen as a change and compared like any other); without a
    // readable file, the config itself stays the reference until a change is accepted.
    let mut in_force = match &last_text {
        Some(t) => {
            drop(current);
            InForce::Text(t.clone())
        }
        None => InForce::Parsed(Box::new(current)),
    };
    let mut tick = tokio::time::interval(reload.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let count = |result| {
        metrics
            .config_reloads
            .get_or_create(&ResultLabel { result })
            .inc()
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut shutdown => return,
        }
        // A file that cannot be read right now (mid-replace) is looked at again next
        // time; the config in force stays.
        let Ok(text) = tokio::fs::read_to_string(&reload.path).await else {
            continue;
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        let next = match Config::from_yaml(&text) {
            Ok(c) => c,
            Err(e) => {
                count("rejected");
                warn!(%path, error = %e, "config change rejected; the last good config stays");
                continue;
            }
        };
        let current = match &in_force {
            InForce::Text(text) => match Config::from_yaml(text) {
                Ok(c) => c,
                Err(_) => continue, // cannot happen: it was accepted before
            },
            InForce::Parsed(config) => (**config).clone(),
        };
        let policies = match policy_changes(&current, &next) {
            Ok(p) => p,
            Err(e) => {
                count("rejected");
                warn!(%path, error = %e, "config change rejected; the last good config stays");
                continue;
            }
        };
        count("applied");
        info!(%path, services = policies.len(), "config reloaded");
        for w in next.warnings() {
            warn!(%path, warning = %w, "config");
        }
        if !policies.is_empty() && events.send(Event::Reload { policies }).await.is_err() {
            return; // runtime stopped
        }
        drop((current, next));
        in_force = InForce::Text(text);
    }
}
