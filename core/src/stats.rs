//! Stats readers: what Envoys and holders say, read into per-service observations, and
//! the windows that turn them into activity verdicts. Pure; the gRPC sink and the
//! scraper (controller `ingest`) hand them bytes and text.
//!
//! ```text
//!  metrics_service push bytes --push::read---+
//!                                            +--> families::Collector --> observations
//!  Prometheus page text --text::sample-------+    (known services only)       |
//!        (fallback: prometheus-parse)                                         v
//!                                                   window::Windows --> verdicts per service
//! ```

pub mod families;
pub mod push;
pub mod text;
pub mod window;
