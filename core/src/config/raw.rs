//! The YAML as written: the schema's shape, nothing checked beyond it. camelCase keys,
//! `deny_unknown_fields`, every optional field an `Option`, durations as strings, so
//! serde rejects typos and wrong types with a path and a line, and the validation layer
//! (`validate.rs`) sees exactly what the user wrote.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    pub controller: Option<Controller>,
    pub holder: Option<Holder>,
    pub envoy: Option<Envoy>,
    pub run_dir: Option<String>,
    pub in_cluster: Option<InCluster>,
    pub http: Option<Http>,
    pub scrape: Option<Scrape>,
    pub defaults: Option<Policy>,
    #[serde(default)]
    pub services: Vec<Service>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Controller {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub peer_timeout: Option<String>,
    pub tls: Option<Tls>,
    pub max_message_bytes: Option<u64>,
    pub max_streams: Option<u64>,
    pub max_names_per_stream: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    pub cert: String,
    pub key: String,
    pub client_ca: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scrape {
    pub interval: Option<String>,
    #[serde(default)]
    pub targets: Vec<ScrapeTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScrapeTarget {
    pub name: String,
    pub url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http {
    pub listen: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Holder {
    pub address: Option<String>,
    pub admin: Option<String>,
}

/// Kubernetes mode: parked Services keep their names (see `InClusterConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InCluster {
    pub proxy: String,
    pub listen: Option<String>,
    pub ports: Option<String>,
    pub settle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envoy {
    pub admin: Option<String>,
}

/// `ready`: one of `tcp`, `http`, `command`, `postgres`, and how often it is tried.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ready {
    pub tcp: Option<Empty>,
    pub http: Option<ReadyHttp>,
    pub command: Option<Vec<String>>,
    pub postgres: Option<ReadyPostgres>,
    pub interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadyPostgres {
    pub user: Option<String>,
    pub database: Option<String>,
    pub data_dir: Option<String>,
}

/// `{}`: a check with nothing to set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadyHttp {
    pub path: Option<String>,
    pub status: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub idle_timeout: Option<String>,
    pub hold_timeout: Option<String>,
    pub min_warm: Option<String>,
    pub wake_timeout: Option<String>,
    pub park_ack_timeout: Option<String>,
    pub max_pending: Option<u32>,
    pub tcp_idle_timeout: Option<String>,
    pub max_connections: Option<u32>,
}

/// The policy fields are repeated rather than `#[serde(flatten)]`ed: serde does not
/// support `flatten` together with `deny_unknown_fields`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub protocol: Option<String>,
    pub listen: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    pub upstream: Option<String>,
    pub command: Option<Vec<String>>,
    pub ready: Option<Ready>,
    pub log: Option<String>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
    pub cwd: Option<String>,
    pub stop_signal: Option<String>,
    pub stop_grace: Option<String>,
    pub idle_timeout: Option<String>,
    pub hold_timeout: Option<String>,
    pub min_warm: Option<String>,
    pub wake_timeout: Option<String>,
    pub park_ack_timeout: Option<String>,
    pub max_pending: Option<u32>,
    pub tcp_idle_timeout: Option<String>,
    pub max_connections: Option<u32>,
}
