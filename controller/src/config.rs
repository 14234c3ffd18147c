//! The zenvoy YAML configuration: schema, defaults and validation.
//!
//! ```text
//! YAML text --serde_norway--> raw::Config --validate--> Config
//!            (shape: types,     (Options, durations    (defaults applied, every
//!             unknown keys)      as strings)            value checked)
//! ```
//!
//! Two layers: `raw` mirrors the YAML (camelCase keys, `deny_unknown_fields`, every
//! optional field an `Option`, durations as strings), so serde rejects typos and wrong
//! types with a path and a line. The validation layer turns it into the types below and
//! reports each rule it enforces as [`ConfigError::Invalid`] naming the field path
//! (`services[1].idleTimeout`) and the offending value; the first broken rule is reported.
//! Every [`Config`] returned by [`Config::from_yaml`] satisfies all the rules.
//!
//! Pure apart from [`Config::load`], which reads a file. The reference is
//! `docs/config.md`; a commented example is `examples/zenvoy.yaml`.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

/// gRPC address of the controller: ADS (xDS) and the Envoy `MetricsService` sink.
pub const DEFAULT_CONTROLLER_LISTEN: SocketAddr = localhost(18000);
/// HTTP address of the controller: `/metrics`, `/healthz`, `/readyz`.
pub const DEFAULT_CONTROLLER_ADMIN: SocketAddr = localhost(18001);
/// Where Envoy sends held connections (PROXY protocol v2).
pub const DEFAULT_HOLDER_ADDRESS: SocketAddr = localhost(15001);
/// No activity for this long parks a service.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A held connection waits at most this long for the upstream.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(30);
/// After a wake, a service stays awake at least this long.
pub const DEFAULT_MIN_WARM: Duration = Duration::ZERO;
/// A wake that is not ready by then fails.
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Park phase 1 waits at most this long for Envoy to ACK the holder endpoint.
pub const DEFAULT_PARK_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Held connections per service in the holder.
pub const DEFAULT_MAX_PENDING: u32 = 1000;
/// Longest service name (a DNS subdomain, RFC 1123).
pub const MAX_NAME_LEN: usize = 253;
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct HolderConfig {
    /// Where Envoy sends held connections (PROXY protocol v2).
    pub address: SocketAddr,
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

/// How Envoy fronts a service, and which stats tell it is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// A TCP listener per service (`tcp_proxy`); activity from connections and bytes.
    #[default]
    Tcp,
    /// A virtual host on the shared HTTP listener; activity from requests (pooled
    /// keep-alive connections stay open while idle, so connections do not count).
    Http,
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
    /// `defaults` with this service's overrides applied.
    pub policy: Policy,
}

/// Timeouts and limits of one service. Every duration except `min_warm` is > 0, and
/// `max_pending` >= 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub idle_timeout: Duration,
    pub hold_timeout: Duration,
    pub min_warm: Duration,
    pub wake_timeout: Duration,
    pub park_ack_timeout: Duration,
    pub max_pending: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            hold_timeout: DEFAULT_HOLD_TIMEOUT,
            min_warm: DEFAULT_MIN_WARM,
            wake_timeout: DEFAULT_WAKE_TIMEOUT,
            park_ack_timeout: DEFAULT_PARK_ACK_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
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
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }
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

fn invalid(
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

/// The YAML as written. Nothing here is checked beyond its shape.
mod raw {
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Config {
        pub controller: Option<Controller>,
        pub holder: Option<Holder>,
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
        pub idle_timeout: Option<String>,
        pub hold_timeout: Option<String>,
        pub min_warm: Option<String>,
        pub wake_timeout: Option<String>,
        pub park_ack_timeout: Option<String>,
        pub max_pending: Option<u32>,
    }
}

impl raw::Config {
    fn validate(mut self) -> Result<Config, ConfigError> {
        let raw_services = std::mem::take(&mut self.services);
        let Config {
            controller,
            holder,
            http,
            scrape,
            defaults,
            ..
        } = self.validate_top()?;

        if raw_services.is_empty() {
            return Err(invalid(
                "services",
                "[]",
                "at least one service is required",
            ));
        }
        let services = raw_services
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.validate(&format!("services[{i}]"), defaults))
            .collect::<Result<Vec<_>, _>>()?;

        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            if let Some(first) = names.insert(&s.name, i) {
                return Err(invalid(
                    format!("services[{i}].name"),
                    s.name.clone(),
                    format!("duplicate of services[{first}].name"),
                ));
            }
        }

        // Envoy rejects a route configuration whose virtual hosts share a domain.
        let mut domains: HashMap<&str, usize> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            if s.protocol == Protocol::Http && http.is_none() {
                return Err(invalid(
                    format!("services[{i}].protocol"),
                    "http",
                    "HTTP services need the top-level `http.listen`",
                ));
            }
            for d in &s.domains {
                if let Some(first) = domains.insert(d, i) {
                    if first != i {
                        return Err(invalid(
                            format!("services[{i}].domains"),
                            d.clone(),
                            format!(
                                "also a domain of services[{first}] ({})",
                                services[first].name
                            ),
                        ));
                    }
                }
            }
        }

        // Every address something binds must be distinct. Port 0 binds a fresh port,
        // so it cannot collide.
        let mut bound: HashMap<SocketAddr, String> = HashMap::new();
        let fixed = [
            ("controller.listen".to_owned(), controller.listen),
            ("controller.admin".to_owned(), controller.admin),
            ("holder.address".to_owned(), holder.address),
        ]
        .into_iter()
        .chain(http.as_ref().map(|h| ("http.listen".to_owned(), h.listen)));
        let listens = services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((format!("services[{i}].listen"), s.listen?)));
        for (field, addr) in fixed.into_iter().chain(listens) {
            if addr.port() == 0 {
                continue;
            }
            if let Some(first) = bound.get(&addr) {
                return Err(invalid(
                    field,
                    addr.to_string(),
                    format!("same address as {first}"),
                ));
            }
            bound.insert(addr, field);
        }

        Ok(Config {
            controller,
            holder,
            http,
            scrape,
            services,
            defaults,
            overrides: Vec::new(),
        })
    }

    /// Kubernetes mode: the same top-level sections; `services` entries name a service
    /// (`<name>.<namespace>`) and carry only timeouts and limits, since how Envoy fronts
    /// it and what runs it come from the Service and its workload.
    fn validate_kubernetes(mut self) -> Result<Config, ConfigError> {
        let services = std::mem::take(&mut self.services);
        let mut overrides: Vec<(String, Policy)> = Vec::with_capacity(services.len());
        let top = self.validate_top()?;
        for (i, s) in services.into_iter().enumerate() {
            let at = format!("services[{i}]");
            check_name(&format!("{at}.name"), &s.name)?;
            let only_policy = [
                ("protocol", s.protocol.is_some()),
                ("listen", s.listen.is_some()),
                ("namespace", s.namespace.is_some()),
                ("domains", !s.domains.is_empty()),
                ("upstream", s.upstream.is_some()),
                ("command", s.command.is_some()),
            ];
            if let Some((key, _)) = only_policy.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    format!("{at}.{key}"),
                    "",
                    "in kubernetes mode this comes from the Service and its annotations; \
                     a services entry only overrides timeouts and limits",
                ));
            }
            if let Some(first) = overrides.iter().position(|(n, _)| *n == s.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    s.name,
                    format!("duplicate of services[{first}].name"),
                ));
            }
            let policy = top.defaults.apply(
                &at,
                raw::Policy {
                    idle_timeout: s.idle_timeout,
                    hold_timeout: s.hold_timeout,
                    min_warm: s.min_warm,
                    wake_timeout: s.wake_timeout,
                    park_ack_timeout: s.park_ack_timeout,
                    max_pending: s.max_pending,
                },
            )?;
            overrides.push((s.name, policy));
        }
        Ok(Config { overrides, ..top })
    }

    /// The top-level sections (no services).
    fn validate_top(self) -> Result<Config, ConfigError> {
        let c = self.controller.unwrap_or_default();
        let controller = ControllerConfig {
            listen: addr_or("controller.listen", c.listen, DEFAULT_CONTROLLER_LISTEN)?,
            admin: addr_or("controller.admin", c.admin, DEFAULT_CONTROLLER_ADMIN)?,
        };
        let h = self.holder.unwrap_or_default();
        let holder = HolderConfig {
            address: addr_or("holder.address", h.address, DEFAULT_HOLDER_ADDRESS)?,
        };
        let http = self
            .http
            .map(|h| parse_addr("http.listen", &h.listen).map(|listen| HttpConfig { listen }))
            .transpose()?;
        let scrape = self.scrape.map(raw::Scrape::validate).transpose()?;
        let defaults = Policy::default().apply("defaults", self.defaults.unwrap_or_default())?;
        Ok(Config {
            controller,
            holder,
            http,
            scrape,
            services: Vec::new(),
            defaults,
            overrides: Vec::new(),
        })
    }
}

impl raw::Scrape {
    fn validate(self) -> Result<ScrapeConfig, ConfigError> {
        let interval = duration_or(
            "scrape.interval",
            self.interval,
            DEFAULT_SCRAPE_INTERVAL,
            Zero::Rejected,
        )?;
        if self.targets.is_empty() {
            return Err(invalid(
                "scrape.targets",
                "[]",
                "at least one target is required",
            ));
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut targets = Vec::with_capacity(self.targets.len());
        for (i, t) in self.targets.into_iter().enumerate() {
            if t.name.is_empty() {
                return Err(invalid(
                    format!("scrape.targets[{i}].name"),
                    "",
                    "must not be empty",
                ));
            }
            if let Some(first) = names.insert(t.name.clone(), i) {
                return Err(invalid(
                    format!("scrape.targets[{i}].name"),
                    t.name,
                    format!("duplicate of scrape.targets[{first}].name"),
                ));
            }
            let rest = t.url.strip_prefix("http://").unwrap_or_default();
            if rest.is_empty() || rest.starts_with('/') || t.url.contains(char::is_whitespace) {
                return Err(invalid(
                    format!("scrape.targets[{i}].url"),
                    t.url,
                    "must be an http:// URL with a host, like \"http://127.0.0.1:9901/stats/prometheus\"",
                ));
            }
            targets.push(ScrapeTarget {
                name: t.name,
                url: t.url,
            });
        }
        Ok(ScrapeConfig { interval, targets })
    }
}

impl raw::Service {
    fn validate(self, at: &str, defaults: Policy) -> Result<ServiceConfig, ConfigError> {
        let raw::Service {
            name,
            protocol,
            listen,
            namespace,
            domains: extra_domains,
            upstream,
            command,
            idle_timeout,
            hold_timeout,
            min_warm,
            wake_timeout,
            park_ack_timeout,
            max_pending,
        } = self;
        check_name(&format!("{at}.name"), &name)?;
        let protocol = match protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("http") => Protocol::Http,
            Some(other) => {
                return Err(invalid(
                    format!("{at}.protocol"),
                    other,
                    "must be \"tcp\" or \"http\"",
                ))
            }
        };
        let listen = listen
            .map(|l| parse_addr(&format!("{at}.listen"), &l))
            .transpose()?;
        if listen.is_none() && protocol == Protocol::Tcp {
            return Err(invalid(
                format!("{at}.listen"),
                "",
                "required for a TCP service (the Envoy listener clients connect to)",
            ));
        }
        let namespace = namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        check_name(&format!("{at}.namespace"), &namespace)?;
        let mut domains = Vec::new();
        if protocol == Protocol::Http {
            domains = vec![
                name.clone(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ];
            for (j, d) in extra_domains.into_iter().enumerate() {
                if d.is_empty() || d.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(invalid(
                        format!("{at}.domains[{j}]"),
                        d,
                        "must be a host name without spaces or '/'",
                    ));
                }
                if !domains.contains(&d) {
                    domains.push(d);
                }
            }
        } else if !extra_domains.is_empty() {
            return Err(invalid(
                format!("{at}.domains"),
                extra_domains.join(","),
                "only HTTP services have domains (set protocol: http)",
            ));
        }
        let upstream_field = format!("{at}.upstream");
        let Some(upstream) = upstream else {
            return Err(invalid(
                upstream_field,
                "",
                "required: the address the woken service listens on",
            ));
        };
        let upstream = parse_addr(&upstream_field, &upstream)?;
        if upstream.port() == 0 {
            return Err(invalid(
                upstream_field,
                upstream.to_string(),
                "port must not be 0",
            ));
        }
        let command_field = format!("{at}.command");
        let command = command.unwrap_or_default();
        match command.first().map(String::as_str) {
            None => return Err(invalid(command_field, "[]", "must name a program")),
            Some("") => return Err(invalid(command_field + "[0]", "", "must not be empty")),
            Some(_) => {}
        }
        let overrides = raw::Policy {
            idle_timeout,
            hold_timeout,
            min_warm,
            wake_timeout,
            park_ack_timeout,
            max_pending,
        };
        Ok(ServiceConfig {
            name,
            protocol,
            listen,
            namespace,
            domains,
            upstream,
            command,
            policy: defaults.apply(at, overrides)?,
        })
    }
}

impl Policy {
    /// `self` with each field present in `raw` replaced; `at` prefixes field paths.
    /// An `at` ending in '/' is a prefix (annotation keys: `zenvoy.io/idleTimeout`).
    fn apply(self, at: &str, raw: raw::Policy) -> Result<Self, ConfigError> {
        use Zero::{Allowed, Rejected};
        let path = |name: &str| {
            if at.ends_with('/') {
                format!("{at}{name}")
            } else {
                format!("{at}.{name}")
            }
        };
        let dur = |name: &str, raw: Option<String>, current: Duration, zero: Zero| {
            duration_or(&path(name), raw, current, zero)
        };
        let max_pending = match raw.max_pending {
            Some(0) => return Err(invalid(path("maxPending"), "0", "must be at least 1")),
            Some(n) => n,
            None => self.max_pending,
        };
        Ok(Self {
            idle_timeout: dur("idleTimeout", raw.idle_timeout, self.idle_timeout, Rejected)?,
            hold_timeout: dur("holdTimeout", raw.hold_timeout, self.hold_timeout, Rejected)?,
            min_warm: dur("minWarm", raw.min_warm, self.min_warm, Allowed)?,
            wake_timeout: dur("wakeTimeout", raw.wake_timeout, self.wake_timeout, Rejected)?,
            park_ack_timeout: dur(
                "parkAckTimeout",
                raw.park_ack_timeout,
                self.park_ack_timeout,
                Rejected,
            )?,
            max_pending,
        })
    }
}

/// Prefix of the annotations that override a service's policy in Kubernetes mode; the
/// keys after it are the config's field names (`zenvoy.io/idleTimeout: 10m`).
pub const ANNOTATION_PREFIX: &str = "zenvoy.io/";

impl Policy {
    /// `self` with the policy annotations present in `annotations` applied
    /// (`zenvoy.io/idleTimeout`, `holdTimeout`, `minWarm`, `wakeTimeout`,
    /// `parkAckTimeout`, `maxPending`). Other keys are ignored.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the annotation key and value.
    pub fn with_annotations<'a>(
        self,
        annotations: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Self, ConfigError> {
        let get =
            |name: &str| annotations(&format!("{ANNOTATION_PREFIX}{name}")).map(str::to_owned);
        let max_pending = match get("maxPending") {
            None => None,
            Some(v) => Some(v.trim().parse::<u32>().map_err(|_| {
                invalid(
                    format!("{ANNOTATION_PREFIX}maxPending"),
                    v.clone(),
                    "not a whole number",
                )
            })?),
        };
        self.apply(
            ANNOTATION_PREFIX,
            raw::Policy {
                idle_timeout: get("idleTimeout"),
                hold_timeout: get("holdTimeout"),
                min_warm: get("minWarm"),
                wake_timeout: get("wakeTimeout"),
                park_ack_timeout: get("parkAckTimeout"),
                max_pending,
            },
        )
    }
}

/// Whether a duration field may be zero.
#[derive(Clone, Copy, PartialEq)]
enum Zero {
    Allowed,
    Rejected,
}

fn duration_or(
    field: &str,
    raw: Option<String>,
    default: Duration,
    zero: Zero,
) -> Result<Duration, ConfigError> {
    let Some(text) = raw else { return Ok(default) };
    let d = humantime::parse_duration(&text).map_err(|e| {
        invalid(
            field,
            text.as_str(),
            format!("not a duration like \"30s\", \"5m\" or \"1h 30m\": {e}"),
        )
    })?;
    if zero == Zero::Rejected && d.is_zero() {
        return Err(invalid(field, text, "must be greater than zero"));
    }
    Ok(d)
}

fn addr_or(
    field: &str,
    raw: Option<String>,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    raw.map_or(Ok(default), |text| parse_addr(field, &text))
}

fn parse_addr(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|e| {
        invalid(
            field,
            text,
            format!("not an ip:port address like \"127.0.0.1:8080\" or \"[::1]:8080\": {e}"),
        )
    })
}

/// RFC 1123 subdomain shape: the name becomes an Envoy cluster name, a metric label and
/// (in Kubernetes) an object name.
fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let bytes = name.as_bytes();
    let reason = if name.len() > MAX_NAME_LEN {
        format!("must be at most {MAX_NAME_LEN} characters")
    } else if !bytes.iter().all(|&b| allowed(b)) || !alnum(bytes.first()) || !alnum(bytes.last()) {
        "must be lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
            .to_owned()
    } else {
        return Ok(());
    };
    Err(invalid(field, name, reason))
}

/// Why a valid new document cannot replace the running one without a restart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: changing it needs a restart (only the timeouts and limits of existing services reload)")]
pub struct NeedsRestart {
    /// Path in the document, e.g. `services[2].upstream` or `controller`.
    pub field: String,
}

/// The sections wired in at start (addresses, the HTTP listener, scrape targets) are
/// unchanged: the test every reload passes first, in either mode.
///
/// # Errors
/// [`NeedsRestart`] naming the first section that differs.
pub fn same_top_sections(old: &Config, new: &Config) -> Result<(), NeedsRestart> {
    let changed = if old.controller != new.controller {
        "controller"
    } else if old.holder != new.holder {
        "holder"
    } else if old.http != new.http {
        "http"
    } else if old.scrape != new.scrape {
        "scrape"
    } else {
        return Ok(());
    };
    Err(NeedsRestart {
        field: changed.to_string(),
    })
}

/// What a reload changes: per service whose policy differs, the new policy. Everything
/// else must be unchanged: listeners, addresses, commands and the set of services are
/// wired into Envoy, the holder and the backend at start.
///
/// # Errors
/// [`NeedsRestart`] naming the first field that differs and cannot be reloaded.
pub fn policy_changes(old: &Config, new: &Config) -> Result<Vec<(String, Policy)>, NeedsRestart> {
    let restart = |field: &str| NeedsRestart {
        field: field.to_string(),
    };
    same_top_sections(old, new)?;
    if old.services.len() != new.services.len() {
        return Err(restart("services"));
    }
    let mut changes = Vec::new();
    for (i, (o, n)) in old.services.iter().zip(&new.services).enumerate() {
        let at = |key: &str| restart(&format!("services[{i}].{key}"));
        if o.name != n.name {
            return Err(at("name"));
        }
        if o.protocol != n.protocol {
            return Err(at("protocol"));
        }
        if o.listen != n.listen {
            return Err(at("listen"));
        }
        if o.namespace != n.namespace || o.domains != n.domains {
            return Err(at("domains"));
        }
        if o.upstream != n.upstream {
            return Err(at("upstream"));
        }
        if o.command != n.command {
            return Err(at("command"));
        }
        if o.policy != n.policy {
            changes.push((n.name.clone(), n.policy));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests;
