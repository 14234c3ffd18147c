//! The zenvoy config from a ConfigMap (key `zenvoy.yaml`, the file's schema in
//! Kubernetes mode): read at start, then watched. A change is validated; an invalid one,
//! or one that needs a restart, is rejected with a log line, a Warning Event on the
//! ConfigMap (both naming the field) and `zenvoy_config_reloads_total{result="rejected"}`,
//! and the last good config stays.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use super::events::{reference, Events};
use zenvoy_core::config::{same_top_sections, Config, ConfigError, Mode};

use crate::telemetry::{Metrics, ResultLabel};

/// The ConfigMap key holding the document.
pub const KEY: &str = "zenvoy.yaml";

#[derive(Debug, Clone)]
pub struct Source {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configmap {}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{source_}: {error}")]
    Api {
        source_: String,
        #[source]
        error: kube::Error,
    },
    #[error("{0}: not found")]
    Missing(String),
    #[error("{0}: no data key {KEY:?}")]
    NoKey(String),
    #[error("{source_}: data.{KEY}: {error}")]
    Invalid {
        source_: String,
        #[source]
        error: ConfigError,
    },
}

fn text_of(cm: &ConfigMap) -> Option<&str> {
    cm.data.as_ref()?.get(KEY).map(String::as_str)
}

/// Read and validate the config once. Retries API errors (the apiserver may not be
/// reachable yet) every 2 s for `patience`; a missing ConfigMap, key or an invalid
/// document fails at once.
pub async fn load(
    client: &Client,
    src: &Source,
    patience: Duration,
) -> Result<(String, Config), LoadError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &src.namespace);
    let deadline = tokio::time::Instant::now() + patience;
    let cm = loop {
        match api.get_opt(&src.name).await {
            Ok(Some(cm)) => break cm,
            Ok(None) => return Err(LoadError::Missing(src.to_string())),
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(%src, error = %e, "cannot read the config; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => {
                return Err(LoadError::Api {
                    source_: src.to_string(),
                    error,
                })
            }
        }
    };
    let text = text_of(&cm).ok_or_else(|| LoadError::NoKey(src.to_string()))?;
    let config =
        Config::from_yaml_for(text, Mode::Kubernetes).map_err(|error| LoadError::Invalid {
            source_: src.to_string(),
            error,
        })?;
    Ok((text.to_string(), config))
}

/// Watch the ConfigMap until `shutdown`, publishing each accepted config on `tx`.
pub async fn watch(
    client: Client,
    src: Source,
    mut in_force: String,
    tx: watch::Sender<Arc<Config>>,
    events: Events,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &src.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", src.name));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    tokio::pin!(shutdown);
    let about = reference("v1", "ConfigMap", &src.namespace, &src.name);
    let count = |result| {
        metrics
            .config_reloads
            .get_or_create(&ResultLabel { result })
            .inc()
    };
    let mut last_seen = in_force.clone();
    loop {
        let ev = tokio::select! {
            () = &mut shutdown => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        let cm = match ev {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
            Ok(watcher::Event::Delete(_)) => {
                warn!(%src, "config deleted; the last good config stays");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                warn!(%src, error = %e, "config watch failed; retrying");
                continue;
            }
        };
        let Some(text) = text_of(&cm) else {
            if last_seen != "\0missing" {
                last_seen = "\0missing".into();
                count("rejected");
                warn!(%src, "config has no data key {KEY}; the last good config stays");
                events.warning(
                    about.clone(),
                    "ConfigRejected",
                    format!("data.{KEY}: missing; zenvoy keeps its last good config"),
                );
            }
            continue;
        };
        if text == last_seen {
            continue;
        }
        last_seen = text.to_string();
        let verdict = Config::from_yaml_for(text, Mode::Kubernetes)
            .map_err(|e| e.to_string())
            .and_then(|next| {
                let old = Config::from_yaml_for(&in_force, Mode::Kubernetes)
                    .map_err(|e| e.to_string())?;
                same_top_sections(&old, &next).map_err(|e| e.to_string())?;
                Ok(next)
            });
        match verdict {
            Ok(next) => {
                count("applied");
                info!(%src, "config reloaded");
                in_force = text.to_string();
                tx.send_replace(Arc::new(next));
            }
            Err(e) => {
                count("rejected");
                warn!(%src, error = %e, "config change rejected; the last good config stays");
                events.warning(
                    about.clone(),
                    "ConfigRejected",
                    format!("data.{KEY}: {e}; zenvoy keeps its last good config"),
                );
            }
        }
    }
}
