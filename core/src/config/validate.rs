//! The validation layer: a [`raw::Config`] into a [`Config`] whose every value satisfies
//! its rule, or the first broken rule as [`ConfigError::Invalid`] naming the field path
//! (`services[1].idleTimeout`) and the offending value.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw;
use super::*;

impl raw::Config {
    pub(super) fn validate(mut self) -> Result<Config, ConfigError> {
        let raw_services = std::mem::take(&mut self.services);
        // The admin addresses of the holder and Envoy that `zenvoy run` starts count as
        // bound only when written: a controller run on its own binds neither, and a
        // service on Envoy's usual 9901 must not clash with a default nobody uses.
        let holder_admin_set = self.holder.as_ref().is_some_and(|h| h.admin.is_some());
        let envoy_admin_set = self.envoy.as_ref().is_some_and(|e| e.admin.is_some());
        let Config {
            controller,
            holder,
            envoy,
            run_dir,
            http,
            scrape,
            defaults,
            in_cluster,
            ..
        } = self.validate_top()?;
        if in_cluster.is_some() {
            return Err(invalid(
                "inCluster",
                "",
                "only in kubernetes mode: with the process backend clients already use Envoy's listeners",
            ));
        }

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
            .map(|(i, s)| s.validate(&format!("services[{i}]"), defaults, &run_dir))
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
            if s.protocol.routed() && http.is_none() {
                return Err(invalid(
                    format!("services[{i}].protocol"),
                    s.protocol.name(),
                    "HTTP and gRPC services need the top-level `http.listen`",
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
        .chain(holder_admin_set.then(|| ("holder.admin".to_owned(), holder.admin)))
        .chain(envoy_admin_set.then(|| ("envoy.admin".to_owned(), envoy.admin)))
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
            envoy,
            run_dir,
            in_cluster: None,
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
    pub(super) fn validate_kubernetes(mut self) -> Result<Config, ConfigError> {
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
                ("ready", s.ready.is_some()),
                ("log", s.log.is_some()),
                ("env", s.env.is_some()),
                ("cwd", s.cwd.is_some()),
                ("stopSignal", s.stop_signal.is_some()),
                ("stopGrace", s.stop_grace.is_some()),
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
                    tcp_idle_timeout: s.tcp_idle_timeout,
                    max_connections: s.max_connections,
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
            peer_timeout: duration_or(
                "controller.peerTimeout",
                c.peer_timeout,
                DEFAULT_PEER_TIMEOUT,
                Zero::Rejected,
            )?,
            tls: c.tls.map(validate_tls).transpose()?,
            max_message_bytes: bounded_count(
                "controller.maxMessageBytes",
                c.max_message_bytes,
                DEFAULT_MAX_MESSAGE_BYTES,
                64 << 10,
                256 << 20,
            )?,
            max_streams: bounded_count(
                "controller.maxStreams",
                c.max_streams,
                DEFAULT_MAX_STREAMS,
                2,
                1_000_000,
            )?,
            max_names_per_stream: bounded_count(
                "controller.maxNamesPerStream",
                c.max_names_per_stream,
                DEFAULT_MAX_NAMES_PER_STREAM,
                1,
                10_000_000,
            )?,
        };
        if controller.peer_timeout < MIN_PEER_TIMEOUT {
            return Err(invalid(
                "controller.peerTimeout",
                humantime::format_duration(controller.peer_timeout).to_string(),
                "must be at least 3s (a third of it is the keepalive ping interval)",
            ));
        }
        let h = self.holder.unwrap_or_default();
        let holder = HolderConfig {
            address: addr_or("holder.address", h.address, DEFAULT_HOLDER_ADDRESS)?,
            admin: addr_or("holder.admin", h.admin, DEFAULT_HOLDER_ADMIN)?,
        };
        let envoy = EnvoyConfig {
            admin: addr_or(
                "envoy.admin",
                self.envoy.unwrap_or_default().admin,
                DEFAULT_ENVOY_ADMIN,
            )?,
        };
        let in_cluster = self.in_cluster.map(validate_in_cluster).transpose()?;
        let run_dir = match self.run_dir {
            None => PathBuf::from(DEFAULT_RUN_DIR),
            Some(d) if d.trim().is_empty() => {
                return Err(invalid("runDir", d, "must be a directory path"))
            }
            Some(d) => PathBuf::from(d),
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
            envoy,
            run_dir,
            in_cluster,
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
    fn validate(
        self,
        at: &str,
        defaults: Policy,
        run_dir: &Path,
    ) -> Result<ServiceConfig, ConfigError> {
        let raw::Service {
            name,
            protocol,
            listen,
            namespace,
            domains: extra_domains,
            upstream,
            command,
            ready,
            log,
            env,
            cwd,
            stop_signal,
            stop_grace,
            idle_timeout,
            hold_timeout,
            min_warm,
            wake_timeout,
            park_ack_timeout,
            max_pending,
            tcp_idle_timeout,
            max_connections,
        } = self;
        check_name(&format!("{at}.name"), &name)?;
        let protocol = match protocol.as_deref() {
            None => Protocol::Tcp,
            Some(p) => Protocol::parse(p)
                .ok_or_else(|| invalid(format!("{at}.protocol"), p, Protocol::EXPECTED))?,
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
        if protocol.routed() {
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
                "only HTTP and gRPC services have domains (set protocol: http or grpc)",
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
        let process = ProcessOptions {
            ready: validate_ready(&format!("{at}.ready"), ready.unwrap_or_default())?,
            log: match log {
                None => run_dir.join("logs").join(format!("{name}.log")),
                Some(l) if l.trim().is_empty() => {
                    return Err(invalid(format!("{at}.log"), l, "must be a file path"))
                }
                Some(l) => PathBuf::from(l),
            },
            env: validate_env(&format!("{at}.env"), env.unwrap_or_default())?,
            cwd: match cwd {
                None => None,
                Some(c) if c.trim().is_empty() => {
                    return Err(invalid(format!("{at}.cwd"), c, "must be a directory path"))
                }
                Some(c) => Some(PathBuf::from(c)),
            },
            stop_signal: match stop_signal {
                None => StopSignal::Term,
                Some(s) => StopSignal::parse(&s).ok_or_else(|| {
                    invalid(
                        format!("{at}.stopSignal"),
                        s,
                        "must be one of SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2",
                    )
                })?,
            },
            stop_grace: duration_or(
                &format!("{at}.stopGrace"),
                stop_grace,
                DEFAULT_STOP_GRACE,
                Zero::Allowed,
            )?,
        };
        let overrides = raw::Policy {
            idle_timeout,
            hold_timeout,
            min_warm,
            wake_timeout,
            park_ack_timeout,
            max_pending,
            tcp_idle_timeout,
            max_connections,
        };
        Ok(ServiceConfig {
            name,
            protocol,
            listen,
            namespace,
            domains,
            upstream,
            command,
            process,
            policy: defaults.apply(at, overrides)?,
        })
    }
}

/// `inCluster`: the proxies' Service, the listen address, a port range, the settle time.
fn validate_in_cluster(raw: raw::InCluster) -> Result<InClusterConfig, ConfigError> {
    let (proxy_namespace, proxy_service) = match raw.proxy.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            (ns.to_string(), name.to_string())
        }
        _ => return Err(invalid(
            "inCluster.proxy",
            raw.proxy,
            "must be namespace/name of the proxies' Service, like \"zenvoy-system/zenvoy-proxy\"",
        )),
    };
    check_name("inCluster.proxy", &proxy_namespace)?;
    check_name("inCluster.proxy", &proxy_service)?;
    let listen = match raw.listen {
        None => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        Some(l) => l.parse().map_err(|_| {
            invalid(
                "inCluster.listen",
                l,
                "must be an IP address, like \"0.0.0.0\"",
            )
        })?,
    };
    let ports = match raw.ports {
        None => DEFAULT_IN_CLUSTER_PORTS,
        Some(p) => {
            let bad = || {
                invalid(
                    "inCluster.ports",
                    p.as_str(),
                    "must be a range of ports FIRST-LAST, like \"20000-29999\", FIRST at least 1",
                )
            };
            let (a, b) = p.split_once('-').ok_or_else(bad)?;
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a == 0 || a > b {
                return Err(bad());
            }
            (a, b)
        }
    };
    let settle = duration_or(
        "inCluster.settle",
        raw.settle,
        DEFAULT_IN_CLUSTER_SETTLE,
        Zero::Allowed,
    )?;
    Ok(InClusterConfig {
        proxy_namespace,
        proxy_service,
        listen,
        ports,
        settle,
    })
}

/// `ready`: exactly one check (none: `tcp`), its fields, its interval.
fn validate_ready(at: &str, r: raw::Ready) -> Result<Ready, ConfigError> {
    let raw::Ready {
        tcp,
        http,
        command,
        postgres,
        interval,
    } = r;
    let set = [
        ("tcp", tcp.is_some()),
        ("http", http.is_some()),
        ("command", command.is_some()),
        ("postgres", postgres.is_some()),
    ];
    let named: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(k, _)| *k).collect();
    if named.len() > 1 {
        return Err(invalid(
            at,
            named.join(", "),
            "name one check: tcp, http, command or postgres",
        ));
    }
    let check = if let Some(h) = http {
        let path = h.path.unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') || path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                format!("{at}.http.path"),
                path,
                "must start with '/' and hold no spaces",
            ));
        }
        if let Some(s) = h.status {
            if !(100..=599).contains(&s) {
                return Err(invalid(
                    format!("{at}.http.status"),
                    s.to_string(),
                    "must be an HTTP status (100 to 599)",
                ));
            }
        }
        ReadyCheck::Http {
            path,
            status: h.status,
        }
    } else if let Some(c) = command {
        match c.first().map(String::as_str) {
            None => {
                return Err(invalid(
                    format!("{at}.command"),
                    "[]",
                    "must name a program",
                ))
            }
            Some("") => return Err(invalid(format!("{at}.command[0]"), "", "must not be empty")),
            Some(_) => ReadyCheck::Command(c),
        }
    } else if let Some(raw::ReadyPostgres {
        user,
        database,
        data_dir: Some(dir),
    }) = postgres
    {
        for (field, value) in [("user", user), ("database", database)] {
            if let Some(value) = value {
                return Err(invalid(
                    format!("{at}.postgres.{field}"),
                    value,
                    "is not asked with dataDir, which reads postmaster.pid instead of \
                     connecting: set one or the other",
                ));
            }
        }
        if dir.trim().is_empty() {
            return Err(invalid(
                format!("{at}.postgres.dataDir"),
                dir,
                "must be a directory path: the server's data directory, where its postmaster.pid is",
            ));
        }
        ReadyCheck::PostgresDataDir(PathBuf::from(dir))
    } else if let Some(p) = postgres {
        let user = p.user.unwrap_or_else(|| "postgres".to_string());
        let database = p.database.unwrap_or_else(|| user.clone());
        for (field, v) in [("user", &user), ("database", &database)] {
            if v.is_empty() || v.len() > 63 || v.contains('\0') {
                return Err(invalid(
                    format!("{at}.postgres.{field}"),
                    v.as_str(),
                    "must be a Postgres name: 1 to 63 bytes, no NUL",
                ));
            }
        }
        ReadyCheck::Postgres { user, database }
    } else {
        ReadyCheck::Tcp
    };
    let interval = duration_or(
        &format!("{at}.interval"),
        interval,
        DEFAULT_READY_INTERVAL,
        Zero::Rejected,
    )?;
    Ok(Ready { check, interval })
}

/// `env`: names a shell would accept in `NAME=value`, values without NUL.
fn validate_env(
    at: &str,
    env: std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    for (k, v) in &env {
        let name_ok = k.chars().next().is_some_and(|c| !c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(invalid(
                format!("{at}.{k}"),
                k.clone(),
                "must be a variable name: letters, digits and '_', not starting with a digit",
            ));
        }
        if v.contains('\0') {
            return Err(invalid(
                format!("{at}.{k}"),
                v.clone(),
                "must not contain NUL",
            ));
        }
    }
    Ok(env)
}

/// `policy` with each field present in `overrides` replaced, every value checked as the
/// config's own are; `at` prefixes the field paths in errors. An `at` ending in '/' is a
/// prefix (annotation keys: `zenvoy.io/idleTimeout`).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the field (`at` + its name) and the value.
pub fn apply_overrides(
    policy: Policy,
    at: &str,
    overrides: raw::Policy,
) -> Result<Policy, ConfigError> {
    policy.apply(at, overrides)
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
        let count = |name: &str, raw: Option<u32>, current: u32, max: u32| match raw {
            Some(0) => Err(invalid(path(name), "0", "must be at least 1")),
            Some(n) if n > max => Err(invalid(
                path(name),
                n.to_string(),
                format!("must be at most {max}"),
            )),
            Some(n) => Ok(n),
            None => Ok(current),
        };
        let max_pending = count("maxPending", raw.max_pending, self.max_pending, MAX_PENDING)?;
        let max_connections = count(
            "maxConnections",
            raw.max_connections,
            self.max_connections,
            MAX_CONNECTIONS,
        )?;
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
            tcp_idle_timeout: dur(
                "tcpIdleTimeout",
                raw.tcp_idle_timeout,
                self.tcp_idle_timeout,
                Allowed,
            )?,
            max_connections,
        })
    }
}

/// `raw`, or `default`, checked to lie in `min..=max`.
fn bounded_count(
    field: &str,
    raw: Option<u64>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let Some(n) = raw else { return Ok(default) };
    match usize::try_from(n) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(invalid(
            field,
            n.to_string(),
            format!("must be from {min} to {max}"),
        )),
    }
}

/// The three TLS files, each a non-empty path.
fn validate_tls(t: raw::Tls) -> Result<TlsConfig, ConfigError> {
    let path = |field: &str, p: String| {
        if p.trim().is_empty() {
            Err(invalid(field, p, "must name a PEM file"))
        } else {
            Ok(PathBuf::from(p))
        }
    };
    Ok(TlsConfig {
        cert: path("controller.tls.cert", t.cert)?,
        key: path("controller.tls.key", t.key)?,
        client_ca: path("controller.tls.clientCa", t.client_ca)?,
    })
}

/// The shortest `controller.peerTimeout`.
pub const MIN_PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest duration any field takes: a deadline computed from it never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most connections held per service (each is a descriptor in every holder).
pub const MAX_PENDING: u32 = 1_000_000;
/// The highest circuit-breaker limit.
pub const MAX_CONNECTIONS: u32 = 10_000_000;

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
    if d > MAX_DURATION {
        return Err(invalid(
            field,
            text,
            "must be at most 365d (durations are bounded so that no deadline can overflow)",
        ));
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
