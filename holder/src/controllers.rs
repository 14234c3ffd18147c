//! The controller replicas the holder's two streams (the ADS client in `xds`, the pending
//! counts in `push`) connect to: how a connection is made (TLS, keepalives), and the one
//! loop that keeps a stream open, reconnecting with backoff to the next replica each time.

use std::future::Future;
use std::time::Duration;

use tracing::warn;
use zenvoy_base::Backoff;

/// How often the holder pings its controller connections (HTTP/2 and TCP keepalive): a
/// controller that vanished without closing is noticed within this and [`PING_TIMEOUT`],
/// and the streams reconnect to another replica.
pub const PING_EVERY: Duration = Duration::from_secs(10);
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause before a stream is opened again: this after a failure or after a stream
/// that ended, doubled per failure in a row up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The controller replicas the holder's streams connect to, and how.
#[derive(Debug)]
pub struct Controllers {
    pub urls: Vec<String>,
    /// Client certificate and the CA the controller's certificate must chain to.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Controllers {
    /// A gRPC channel to `url`, with keepalives (see [`PING_EVERY`]) and TLS when set.
    pub(crate) async fn connect(
        &self,
        url: &str,
    ) -> Result<tonic::transport::Channel, tonic::Status> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        }
        connect(endpoint).await
    }

    /// Keep one `stream` (`"ADS"`, `"metrics"`: it names the stream in the log) open for
    /// good: `open_once(url)` connects to one replica and runs the stream until it ends
    /// (`Ok`) or fails; then, after a pause, the next replica in turn. A stream that
    /// ended starts the backoff over and pauses [`RETRY_MIN`]; each failure pauses twice
    /// the pause before it, up to [`RETRY_MAX`] (so a failure right after an ended stream
    /// pauses twice `RETRY_MIN`). Returns only when there is no replica at all; the
    /// holder stops it by aborting its task.
    pub(crate) async fn keep_open<'a, F, Fut>(&'a self, stream: &str, mut open_once: F)
    where
        F: FnMut(&'a str) -> Fut,
        Fut: Future<Output = Result<(), tonic::Status>>,
    {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        for controller in self.urls.iter().cycle() {
            let ended = open_once(controller.as_str()).await;
            if ended.is_ok() {
                backoff.succeeded();
            }
            let pause = backoff.failed();
            if let Err(e) = ended {
                warn!(%controller, error = %e, retry_in = ?pause, "{stream} stream to controller failed");
            }
            tokio::time::sleep(pause).await;
        }
    }
}

async fn connect(
    endpoint: tonic::transport::Endpoint,
) -> Result<tonic::transport::Channel, tonic::Status> {
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .tcp_keepalive(Some(PING_EVERY))
        .http2_keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_per_failure_and_an_ended_stream_starts_over() {
        let controllers = Controllers {
            urls: vec!["a".to_string(), "b".to_string()],
            tls: None,
        };
        // Failed three times, ended once, then failed for good.
        let ended = [false, false, false, true];
        let start = tokio::time::Instant::now();
        let mut opened = Vec::new();
        let run = controllers.keep_open("test", |url| {
            opened.push((url, start.elapsed().as_millis()));
            let ok = ended.get(opened.len() - 1).copied().unwrap_or(false);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(tonic::Status::unavailable("down"))
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_millis(1500), run).await;
        assert_eq!(
            opened,
            [
                ("a", 0),
                ("b", 100),
                ("a", 300),
                ("b", 700),
                // The stream ended: 100 ms, then a new row of failures from 200 ms.
                ("a", 800),
                ("b", 1000),
                ("a", 1400),
            ]
        );
    }
}
