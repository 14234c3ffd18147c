//! The zenvoy YAML configuration: schema, defaults and validation.
//!
//! ```text
//! YAML text --serde_norway--> raw::Config --validate--> Config
//!            (shape: types,     (Options, durations    (defaults applied, every
//!             unknown keys)      as strings)            value checked)
//! ```
//!
//! Three modules: [`raw`] mirrors the YAML (camelCase keys, `deny_unknown_fields`, every
//! optional field an `Option`, durations as strings), so serde rejects typos and wrong
//! types with a path and a line. [`validate`] turns it into the types below and reports
//! each rule it enforces as [`ConfigError::Invalid`] naming the field path
//! (`services[1].idleTimeout`) and the offending value; the first broken rule is reported.
//! Every [`Config`] returned by [`Config::from_yaml`] satisfies all the rules. [`reload`]
//! says what a new document may change in a running controller.
//!
//! Pure apart from [`Config::load`], which reads a file. The reference is
//! `docs/config.md`; a commented example is `examples/zenvoy.yaml`.

pub mod raw;
pub mod reload;
mod validate;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

pub use crate::model::{
    Policy, Protocol, DEFAULT_HOLD_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_PENDING,
    DEFAULT_MIN_WARM, DEFAULT_PARK_ACK_TIMEOUT, DEFAULT_WAKE_TIMEOUT,
};
pub use reload::{policy_changes, same_top_sections, NeedsRestart};
pub use validate::apply_overrides;

/// gRPC address of the controller: ADS (xDS) and the Envoy `MetricsService` sink.
pub const DEFAULT_CONTROLLER_LISTEN: SocketAddr = localhost(18000);
/// HTTP address of the controller: `/metrics`, `/healthz`, `/readyz`.
pub const DEFAULT_CONTROLLER_ADMIN: SocketAddr = localhost(18001);
/// Where Envoy sends held connections (PROXY protocol v2).
pub const DEFAULT_HOLDER_ADDRESS: SocketAddr = localhost(15001);
/// The holder's `/metrics` when `zenvoy run` starts it.
pub const DEFAULT_HOLDER_ADMIN: SocketAddr = localhost(15002);
/// Envoy's admin interface when `zenvoy run` starts it.
pub const DEFAULT_ENVOY_ADMIN: SocketAddr = localhost(9901);
/// `runDir` when it is left out (next to the config file).
pub const DEFAULT_RUN_DIR: &str = "zenvoy-run";
/// `ready.interval` when it is left out.
pub const DEFAULT_READY_INTERVAL: Duration = Duration::from_millis(100);
/// `stopGrace` when it is left out.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest service name (a DNS subdomain, RFC 1123).
pub const MAX_NAME_LEN: usize = zenvoy_contract::MAX_SERVICE_NAME_LEN;
/// Namespace used in an HTTP service's domain forms when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

const fn localhost(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub controller: ControllerConfig,
    pub holder: HolderConfig,
    pub envoy: EnvoyConfig,
    /// Kubernetes mode: while parked, a Service's own name (its virtual IP) leads to the
    /// proxies, through an EndpointSlice the controller writes; absent, only the front
    /// door (Envoy's listeners) holds connections.
    pub in_cluster: Option<InClusterConfig>,
    /// Where `zenvoy run` and the process backend keep their files: the state file,
    /// service logs (`logs/<name>.log`), Envoy's and the holder's logs. Relative paths
    /// in a file read with [`Config::load`] are relative to the file's directory.
    pub run_dir: PathBuf,
    /// The shared Host-routed HTTP listener, if any service speaks HTTP.
    pub http: Option<HttpConfig>,
    /// Stats pages to scrape, for Envoys and holders that do not push.
    pub scrape: Option<ScrapeConfig>,
    /// At least one with the process backend; names and non-zero `listen` addresses are
    /// unique. None in Kubernetes mode (services are annotated Services there).
    pub services: Vec<ServiceConfig>,
    /// `defaults` applied over the built-in defaults.
    pub defaults: Policy,
    /// Kubernetes mode: per-service policy by service name (`<name>.<namespace>`),
    /// `defaults` with the entry's fields applied. Empty with the process backend.
    pub overrides: Vec<(String, Policy)>,
}

/// Which backend a document is for: the schema is one, the rules for `services` differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `services` lists every service with its upstream and command.
    Process,
    /// `services` only overrides timeouts and limits of annotated Services by name
    /// (`<name>.<namespace>`); there may be none.
    Kubernetes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControllerConfig {
    /// gRPC: ADS and `MetricsService`.
    pub listen: SocketAddr,
    /// HTTP: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// How soon a peer (Envoy, holder) that went silent without closing is noticed: its
    /// gRPC connection is pinged every third of this and closed when a ping goes
    /// unanswered for another third, and its stats expire after all of it.
    pub peer_timeout: Duration,
    /// mTLS for every gRPC stream; plaintext when absent (loopback only, say).
    pub tls: Option<TlsConfig>,
    /// The largest gRPC message accepted (a metrics push, an ADS request), in bytes.
    pub max_message_bytes: usize,
    /// ADS and metrics streams open at once, all peers together; more are refused.
    pub max_streams: usize,
    /// Resource names one ADS stream may subscribe to.
    pub max_names_per_stream: usize,
}

/// The controller's TLS files (PEM). Clients must present a certificate signed by
/// `client_ca`, and a stream is accepted only from the node its certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The controller's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signs the certificates of Envoys and holders.
    pub client_ca: PathBuf,
}

/// `controller.maxMessageBytes` when it is left out: a 10,000-cluster Envoy push is
/// 3.2 MiB; tonic's own default of 4 MiB would leave too little room.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 << 20;
/// `controller.maxStreams` when it is left out: two streams for each of 500 nodes
/// (an ADS and a metrics stream per Envoy or holder), with room.
pub const DEFAULT_MAX_STREAMS: usize = 1024;
/// `controller.maxNamesPerStream` when it is left out.
pub const DEFAULT_MAX_NAMES_PER_STREAM: usize = 100_000;

/// `controller.peerTimeout` when it is left out.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(30);

impl Config {
    /// How long a node's stats count after its last push or scrape: the peer timeout, and
    /// at least three scrape intervals (a scrape target is heard from once an interval).
    pub fn stats_expiry(&self) -> Duration {
        let scrape = self
            .scrape
            .as_ref()
            .map_or(Duration::ZERO, |s| s.interval.saturating_mul(3));
        self.controller.peer_timeout.max(scrape)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HolderConfig {
    /// Where Envoy sends held connections (PROXY protocol v2).
    pub address: SocketAddr,
    /// The holder's `/metrics` (used by `zenvoy run`, which starts the holder).
    pub admin: SocketAddr,
}

/// `inCluster`: how a parked Service keeps its name. While it is not awake, the controller
/// keeps an EndpointSlice of its own for the Service whose endpoints are the proxy pods,
/// on a port allocated to the Service; kube-proxy (or any EndpointSlice consumer) then
/// sends the Service's traffic to the proxies, which hold it and wake the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InClusterConfig {
    /// The proxies' Service (`namespace/name`): its ready endpoints are the addresses
    /// written into every parked Service's slice.
    pub proxy_namespace: String,
    pub proxy_service: String,
    /// The address the proxies' per-Service listeners bind (`0.0.0.0`: every address).
    pub listen: std::net::IpAddr,
    /// The proxy ports allocated to Services, first and last.
    pub ports: (u16, u16),
    /// How long after its slice is written a parking Service's workload may go to zero:
    /// time for kube-proxy on every node to follow (it cannot be asked whether it has).
    pub settle: Duration,
}

/// `inCluster.ports` when it is left out.
pub const DEFAULT_IN_CLUSTER_PORTS: (u16, u16) = (20000, 29999);
/// `inCluster.settle` when it is left out.
pub const DEFAULT_IN_CLUSTER_SETTLE: Duration = Duration::from_secs(2);

/// The Envoy `zenvoy run` starts.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyConfig {
    /// Its admin interface (`/stats/prometheus`, `/ready`).
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfig {
    /// How often every target is fetched; also each fetch's timeout.
    pub interval: Duration,
    pub targets: Vec<ScrapeTarget>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeTarget {
    /// Names the node in logs and keeps its window apart from other nodes'.
    pub name: String,
    /// `http://` URL of a Prometheus text page: Envoy's `/stats/prometheus`, a holder's
    /// `/metrics`.
    pub url: String,
}

/// Scrape interval when `scrape.interval` is left out.
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Envoy's HTTP listener address: one listener, one virtual host per HTTP service.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// `[a-z0-9]([a-z0-9.-]*[a-z0-9])?`, at most [`MAX_NAME_LEN`] bytes.
    pub name: String,
    /// `tcp` (default) or `http`.
    pub protocol: Protocol,
    /// Envoy TCP listener address (port 0 lets the OS pick). Required for TCP services;
    /// HTTP services are reached through `http.listen` and may also have one.
    pub listen: Option<SocketAddr>,
    /// Namespace for the HTTP domain forms (`name.namespace`, `name.namespace.svc`, ...).
    pub namespace: String,
    /// Host names the HTTP virtual host answers to: the name, its namespace forms and any
    /// extra `domains`. Unique across services.
    pub domains: Vec<String>,
    /// Where the woken service listens; port is never 0.
    pub upstream: SocketAddr,
    /// Program and arguments for the process backend; non-empty, `command[0]` non-empty.
    pub command: Vec<String>,
    /// How the process backend runs, checks and stops the command.
    pub process: ProcessOptions,
    /// `defaults` with this service's overrides applied.
    pub policy: Policy,
}

/// How the process backend runs a service's command, tells it is ready, and stops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    pub ready: Ready,
    /// stdout and stderr, appended (`<runDir>/logs/<name>.log` by default).
    pub log: PathBuf,
    /// Set in the command's environment, over what the controller has.
    pub env: std::collections::BTreeMap<String, String>,
    /// Working directory; the controller's when absent.
    pub cwd: Option<PathBuf>,
    /// Sent to the process group to stop it (`SIGINT` is Postgres's fast shutdown).
    pub stop_signal: StopSignal,
    /// After this long without exiting, the group gets SIGKILL.
    pub stop_grace: Duration,
}

/// When a woken process counts as ready. Every check first waits for the upstream port
/// to accept; the wake gives up after the service's `wakeTimeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub check: ReadyCheck,
    /// How often `http`, `command` and `postgres` checks are tried.
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyCheck {
    /// The upstream port accepts a connection (the default).
    Tcp,
    /// `GET path` on the upstream answers `status` (any 2xx when absent).
    Http { path: String, status: Option<u16> },
    /// The program exits 0 (`pg_isready`, `redis-cli ping`).
    Command(Vec<String>),
    /// A Postgres server takes sessions: its answer to a StartupMessage for `user` and
    /// `database` is not "cannot connect now" (what `pg_isready` asks, without a process).
    Postgres { user: String, database: String },
    /// A Postgres server takes sessions: its data directory's `postmaster.pid` says so
    /// (what `pg_ctl start --wait` reads; no connection, see [`crate::ready::postmaster`]).
    PostgresDataDir(PathBuf),
}

/// The signals a service may be stopped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
    Quit,
    Hup,
    Usr1,
    Usr2,
}

impl StopSignal {
    const ALL: [StopSignal; 6] = [
        StopSignal::Term,
        StopSignal::Int,
        StopSignal::Quit,
        StopSignal::Hup,
        StopSignal::Usr1,
        StopSignal::Usr2,
    ];

    /// `SIGTERM`, `SIGINT`, ...
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
        }
    }

    /// `SIGINT` or `INT`.
    pub fn parse(s: &str) -> Option<StopSignal> {
        let s = s.strip_prefix("SIG").unwrap_or(s);
        Self::ALL.into_iter().find(|sig| &sig.name()[3..] == s)
    }
}

impl ServiceConfig {
    /// The service as the planner fronts it.
    pub fn def(&self) -> crate::model::ServiceDef {
        crate::model::ServiceDef {
            name: self.name.clone(),
            protocol: self.protocol,
            listen: self.listen,
            domains: self.domains.clone(),
            policy: self.policy,
            in_cluster: None,
            group: None,
            // Its port accepting is all a `tcp` check asks: the holder may see that itself.
            dial: (self.process.ready.check == ReadyCheck::Tcp).then_some(self.upstream),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or not the schema's shape (unknown key, wrong type, missing field).
    /// The message is serde's and names the path and line.
    #[error("config is not valid YAML for the schema: {0}")]
    Syntax(String),
    /// The shape is right but a value breaks a rule.
    #[error("{field}: {reason} (got {value:?})")]
    Invalid {
        /// Path in the document, e.g. `services[1].idleTimeout`.
        field: String,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Parses and validates a YAML document.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] if the text is not YAML of the schema's shape,
    /// [`ConfigError::Invalid`] for the first value that breaks a rule.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_for(text, Mode::Process)
    }

    /// As [`Config::from_yaml`], with the `services` rules of `mode`.
    ///
    /// # Errors
    /// As [`Config::from_yaml`].
    pub fn from_yaml_for(text: &str, mode: Mode) -> Result<Self, ConfigError> {
        let raw: raw::Config = serde_norway::from_str(text).map_err(syntax)?;
        match mode {
            Mode::Process => raw.validate(),
            Mode::Kubernetes => raw.validate_kubernetes(),
        }
    }

    /// Reads `path` and parses it with [`Config::from_yaml`].
    ///
    /// # Errors
    /// [`ConfigError::Io`] naming `path` if it cannot be read, else as `from_yaml`.
    /// Relative paths in it (`runDir`, a service's `log`, `cwd` and `dataDir`, TLS files) are
    /// made relative to the file's directory, so the same file means the same thing
    /// whichever directory it is run from.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_for(path, Mode::Process)
    }

    /// As [`Config::load`], with the `services` rules of `mode`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_for(path: &Path, mode: Mode) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_yaml_for(&text, mode)?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.resolve_paths(base);
        Ok(config)
    }

    /// Every relative path made relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.run_dir);
        if let Some(t) = &mut self.controller.tls {
            resolve(&mut t.cert);
            resolve(&mut t.key);
            resolve(&mut t.client_ca);
        }
        for s in &mut self.services {
            resolve(&mut s.process.log);
            if let Some(cwd) = &mut s.process.cwd {
                resolve(cwd);
            }
            if let ReadyCheck::PostgresDataDir(dir) = &mut s.process.ready.check {
                resolve(dir);
            }
        }
    }

    /// Where the process backend keeps what runs.
    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join("state.json")
    }
}

impl Config {
    /// What is valid but likely not meant, each naming its fields: a `holdTimeout`
    /// shorter than the `wakeTimeout` closes a held connection before a slow wake gives
    /// up on it (logged at start and reload; `zenvoy check` prints them).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |at: &str, p: &Policy| {
            if let Some(w) = hold_shorter_than_wake(at, p) {
                out.push(w);
            }
        };
        check("defaults", &self.defaults);
        for (i, s) in self.services.iter().enumerate() {
            check(&format!("services[{i}]"), &s.policy);
        }
        for (i, (_, p)) in self.overrides.iter().enumerate() {
            check(&format!("services[{i}]"), p);
        }
        out
    }
}

/// The warning for a policy whose hold ends before its wake, with `at` the path of the
/// policy (`services[2]`, `defaults`; an annotation prefix ending in '/').
pub fn hold_shorter_than_wake(at: &str, p: &Policy) -> Option<String> {
    if p.hold_timeout >= p.wake_timeout {
        return None;
    }
    let field = |name: &str| {
        if at.ends_with('/') {
            format!("{at}{name}")
        } else {
            format!("{at}.{name}")
        }
    };
    Some(format!(
        "{} ({}) is shorter than {} ({}): a connection held while the service wakes is \
         closed before the wake gives up; make holdTimeout at least wakeTimeout",
        field("holdTimeout"),
        humantime::format_duration(p.hold_timeout),
        field("wakeTimeout"),
        humantime::format_duration(p.wake_timeout),
    ))
}

/// `serde_norway` leaves out the position when it is line 1 column 1 (e.g. an unknown
/// top-level key on the first line); add it so every message says where.
fn syntax(e: serde_norway::Error) -> ConfigError {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains(" at line ") => ConfigError::Syntax(format!(
            "{msg} at line {} column {}",
            loc.line(),
            loc.column()
        )),
        _ => ConfigError::Syntax(msg),
    }
}

pub(crate) fn invalid(
    field: impl Into<String>,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
