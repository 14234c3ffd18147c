//! Scrape mode: fetch Prometheus text pages (Envoy's `/stats/prometheus`, a holder's
//! `/metrics`) every interval and feed them to the runtime like pushes. For Envoys without
//! the `metrics_service` sink and holders run with `--no-push`. Detection is as slow as
//! the interval; pushes are the fast path.
//!
//! A target that fails (down, HTTP error, garbage) is counted and logged once per
//! outage, and its node is forgotten, so stale open connections of a dead Envoy do not
//! keep a service awake.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use zenvoy_core::config::{ScrapeConfig, ScrapeTarget};
use zenvoy_core::model::Event;
use zenvoy_core::stats::families;

use crate::telemetry::{Metrics, SourceLabel};
use crate::tracked::Tracked;

const SOURCE: SourceLabel = SourceLabel { source: "scrape" };

#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: the page is larger than {max} bytes")]
    TooBig { url: String, max: usize },
    #[error("GET {url}: the page is not UTF-8")]
    NotUtf8 { url: String },
    #[error("{url}: {source}")]
    Text {
        url: String,
        #[source]
        source: families::TextError,
    },
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, ScrapeError> {
    let http = |source| ScrapeError::Http {
        url: url.to_string(),
        source,
    };
    let mut resp = client.get(url).send().await.map_err(http)?;
    let status = resp.status();
    if !status.is_success() {
        return Err(ScrapeError::Status {
            url: url.to_string(),
            status: status.as_u16(),
        });
    }
    // Read at most MAX_PAGE_BYTES, whatever the page says its length is.
    let too_big = || ScrapeError::TooBig {
        url: url.to_string(),
        max: MAX_PAGE_BYTES,
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_PAGE_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| ScrapeError::NotUtf8 {
        url: url.to_string(),
    })
}

/// The largest stats page read: a 10,000-cluster Envoy page (with zenvoy's stats
/// matcher) is 3.9 MiB.
pub const MAX_PAGE_BYTES: usize = 64 << 20;

/// Scrape every target until `shutdown`.
pub async fn run(
    config: ScrapeConfig,
    tracked: Arc<Tracked>,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let client = match reqwest::Client::builder()
        .timeout(config.interval.max(Duration::from_millis(100)))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the scrape HTTP client; scrape mode is off");
            return;
        }
    };
    let tasks: Vec<_> = config
        .targets
        .into_iter()
        .map(|t| {
            let span = tracing::info_span!("scrape", target = %t.name);
            tokio::spawn(
                target_loop(
                    t,
                    config.interval,
                    client.clone(),
                    tracked.clone(),
                    events.clone(),
                    metrics.clone(),
                )
                .instrument(span),
            )
        })
        .collect();
    shutdown.await;
    for t in tasks {
        t.abort();
    }
}

async fn target_loop(
    target: ScrapeTarget,
    interval: Duration,
    client: reqwest::Client,
    tracked: Arc<Tracked>,
    events: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    let node = format!("scrape:{}", target.name);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy: Option<bool> = None;
    loop {
        tick.tick().await;
        let result = fetch(&client, &target.url).await.and_then(|text| {
            tracked
                .read(|m| families::scraped(&text, |s| m.get(s).copied()))
                .map_err(|source| ScrapeError::Text {
                    url: target.url.clone(),
                    source,
                })
        });
        let event = match result {
            Ok(observations) => {
                metrics.ingest_samples.get_or_create(&SOURCE).inc();
                if healthy != Some(true) {
                    info!(url = %target.url, "scraping");
                }
                healthy = Some(true);
                Event::Metrics {
                    node: node.clone(),
                    observations,
                }
            }
            Err(e) => {
                metrics.ingest_errors.get_or_create(&SOURCE).inc();
                let was_healthy = healthy != Some(false);
                healthy = Some(false);
                if !was_healthy {
                    continue;
                }
                warn!(error = %e, "scrape failed; forgetting this node until it answers");
                Event::NodeGone { node: node.clone() }
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
