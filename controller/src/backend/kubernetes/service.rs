//! An opted-in Kubernetes Service, read into what the runtime and the backend need.
//! Pure: a `Service` object and the config in, a [`Discovered`] or an error naming the
//! annotation out.
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     zenvoy.io/enabled: "true"              # opt-in; nothing else is touched
//!     zenvoy.io/workload: statefulset/pg     # default: deployment/<service name>
//!     zenvoy.io/port: postgres               # which Service port (name or number; default the first)
//!     zenvoy.io/listen: "5432"               # Envoy's listener: port or ip:port (default 0.0.0.0:<port>)
//!     zenvoy.io/protocol: tcp                # or http, grpc, http2 (a virtual host on
//!                                            # http.listen; without the annotation a port
//!                                            # with appProtocol grpc or kubernetes.io/h2c
//!                                            # is grpc when http.listen is set)
//!     zenvoy.io/idleTimeout: 10m             # any policy field of the config
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Service;

use zenvoy_core::config::{Config, ConfigError, Policy, Protocol};
use zenvoy_core::model::ServiceDef;

use super::annotations;

pub const ENABLED: &str = "zenvoy.io/enabled";
pub const WORKLOAD: &str = "zenvoy.io/workload";
pub const PORT: &str = "zenvoy.io/port";
pub const LISTEN: &str = "zenvoy.io/listen";
pub const PROTOCOL: &str = "zenvoy.io/protocol";
/// On the workload: the replica count it had when parked, restored on wake.
pub const PARKED_REPLICAS: &str = "zenvoy.io/parked-replicas";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Deployment,
    StatefulSet,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
        }
    }
}

/// Where a service's replicas come from and how its ready endpoints are found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub namespace: String,
    /// The Service's name (EndpointSlices carry it as `kubernetes.io/service-name`).
    pub service: String,
    pub kind: Kind,
    pub workload: String,
    /// The Service port's name ("" when unnamed): EndpointSlice ports carry the same.
    pub port_name: String,
    /// `inCluster`: the proxy port allocated to the Service port (its EndpointSlice's
    /// port).
    pub proxy_port: Option<u16>,
    /// `inCluster`: another port of the Service than the one `zenvoy.io/port` picks, by
    /// its name (or number, unnamed): see [`other_ports`]. None: the picked port.
    pub member: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.namespace,
            self.kind.as_str(),
            self.workload
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    pub def: ServiceDef,
    pub target: Target,
}

/// zenvoy's name for a Service: `<name>.<namespace>`, a valid cluster and label name.
pub fn service_name(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// zenvoy's name for another port of a Service: `<name>.<namespace>_<port>`. No Service,
/// namespace or port name has a `_`, so it is no other Service's name; the holder takes
/// it as it is.
pub fn member_name(service: &str, member: &str) -> String {
    format!("{service}_{member}")
}

/// `inCluster`: a port of the Service besides the one zenvoy fronts. Each is a service
/// of its own (listener, cluster, holder assignment, slice, proxy port) on the same
/// workload, so a client of any port of a parked Service is held and wakes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherPort {
    /// `<name>.<namespace>_<member>`.
    pub key: String,
    /// The port's name, or its number when unnamed.
    pub member: String,
    /// The port's name as EndpointSlices carry it ("" when unnamed).
    pub port_name: String,
}

/// The Service's ports other than `d`'s (the one `zenvoy.io/port` picks), in the
/// Service's order. A port that repeats the picked one's name is left out.
pub fn other_ports(svc: &Service, d: &Discovered) -> Vec<OtherPort> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports
        .into_iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port_name = p.name.clone().unwrap_or_default();
            if port_name == d.target.port_name {
                return None;
            }
            let member = if port_name.is_empty() {
                p.port.to_string()
            } else {
                port_name.clone()
            };
            Some(OtherPort {
                key: member_name(&d.def.name, &member),
                member,
                port_name,
            })
        })
        .collect()
}

/// `inCluster`: the service for `port`, another port of the Service `d` was read from:
/// the same workload and policy, relayed as TCP, reached only by the Service's name (no
/// listener of its own for clients outside the cluster), at `proxy_port` on the proxies.
pub fn other_port(d: &Discovered, port: &OtherPort, proxy_port: u16) -> Option<Discovered> {
    let listen = d.def.in_cluster?;
    Some(Discovered {
        def: ServiceDef {
            name: port.key.clone(),
            protocol: Protocol::Tcp,
            listen: None,
            domains: Vec::new(),
            policy: d.def.policy,
            in_cluster: Some(SocketAddr::new(listen.ip(), proxy_port)),
            group: d.def.group.clone(),
            dial: None,
        },
        target: Target {
            port_name: port.port_name.clone(),
            proxy_port: Some(proxy_port),
            member: Some(port.member.clone()),
            ..d.target.clone()
        },
    })
}

pub fn opted_in(svc: &Service) -> bool {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENABLED))
        .is_some_and(|v| v.trim() == "true")
}

fn bad(field: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Read an opted-in Service. Its policy: the config's defaults, then the config's
/// `services` entry for its name, then its annotations.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the annotation (or field) that is wrong.
pub fn read(svc: &Service, config: &Config) -> Result<Discovered, ConfigError> {
    read_in_cluster(svc, config, None)
}

/// As [`read`], with the proxy port allocated to the Service when the config has
/// `inCluster` (its listener on the proxies, and its EndpointSlice's port).
///
/// # Errors
/// As [`read`].
pub fn read_in_cluster(
    svc: &Service,
    config: &Config,
    proxy_port: Option<u16>,
) -> Result<Discovered, ConfigError> {
    let empty = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let get = |k: &str| annotations.get(k).map(|v| v.trim());
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let zname = service_name(name, namespace);

    let (kind, workload) = match get(WORKLOAD) {
        None => (Kind::Deployment, name.to_string()),
        Some(v) => {
            let (kind, wname) = v.split_once('/').ok_or_else(|| {
                bad(
                    WORKLOAD,
                    v,
                    "must be deployment/<name> or statefulset/<name>",
                )
            })?;
            let kind = match kind.to_ascii_lowercase().as_str() {
                "deployment" | "deployments" | "deploy" => Kind::Deployment,
                "statefulset" | "statefulsets" | "sts" => Kind::StatefulSet,
                _ => return Err(bad(WORKLOAD, v, "kind must be deployment or statefulset")),
            };
            if wname.is_empty() {
                return Err(bad(WORKLOAD, v, "names no workload"));
            }
            (kind, wname.to_string())
        }
    };

    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("spec.ports", "[]", "the Service has no port"))?;
    let port = match get(PORT) {
        None => &ports[0],
        Some(v) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(v) || p.port.to_string() == v)
            .ok_or_else(|| bad(PORT, v, "no port of the Service has this name or number"))?,
    };
    let service_port = u16::try_from(port.port)
        .map_err(|_| bad("spec.ports.port", &port.port.to_string(), "not a port"))?;

    let protocol = match get(PROTOCOL) {
        Some(v) => Protocol::parse(v).ok_or_else(|| bad(PROTOCOL, v, Protocol::EXPECTED))?,
        // Without the annotation, a port that says it speaks HTTP/2 (`appProtocol`) is
        // routed on the shared listener with an HTTP/2 upstream, when there is one;
        // everything else is TCP, as before `appProtocol` was read.
        None => match port.app_protocol.as_deref() {
            Some("grpc" | "kubernetes.io/h2c") if config.http.is_some() => Protocol::Http2,
            _ => Protocol::Tcp,
        },
    };
    if protocol.routed() && config.http.is_none() {
        return Err(bad(
            PROTOCOL,
            protocol.name(),
            "HTTP and gRPC services need `http.listen` in the zenvoy config",
        ));
    }
    let listen = match get(LISTEN) {
        Some(v) => Some(parse_listen(v)?),
        None if protocol == Protocol::Tcp => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            service_port,
        )),
        None => None,
    };
    let domains = if protocol.routed() {
        vec![
            name.to_string(),
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.cluster.local"),
        ]
    } else {
        Vec::new()
    };

    let base = config
        .overrides
        .iter()
        .find(|(n, _)| *n == zname)
        .map_or(config.defaults, |(_, p)| *p);
    let policy: Policy = annotations::policy(base, |k| annotations.get(k).map(String::as_str))?;

    Ok(Discovered {
        def: ServiceDef {
            name: zname,
            protocol,
            listen,
            domains,
            policy,
            in_cluster: config
                .in_cluster
                .as_ref()
                .zip(proxy_port)
                .map(|(ic, port)| SocketAddr::new(ic.listen, port)),
            group: Some(format!("{namespace}/{}/{workload}", kind.as_str())),
            // Pod addresses are known only once they run.
            dial: None,
        },
        target: Target {
            namespace: namespace.to_string(),
            service: name.to_string(),
            kind,
            workload,
            port_name: port.name.clone().unwrap_or_default(),
            proxy_port: config.in_cluster.as_ref().and(proxy_port),
            member: None,
        },
    })
}

fn parse_listen(v: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(port) = v.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    v.parse().map_err(|_| {
        bad(
            LISTEN,
            v,
            "must be a port (\"5432\") or ip:port (\"0.0.0.0:5432\")",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(annotations: &[(&str, &str)], ports: &[(&str, i32)]) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "pg", "namespace": "db",
                "annotations": annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            },
            "spec": {"ports": ports.iter().map(|(n, p)| serde_json::json!({"name": n, "port": p})).collect::<Vec<_>>()},
        }))
        .expect("a Service")
    }

    fn config(yaml: &str) -> Config {
        Config::from_yaml_for(yaml, zenvoy_core::config::Mode::Kubernetes).expect("valid config")
    }

    #[test]
    fn conventions_and_layers() {
        let c =
            config("defaults: {idleTimeout: 5m}\nservices:\n- name: pg.db\n  holdTimeout: 7s\n");
        let s = svc(
            &[(ENABLED, "true"), ("zenvoy.io/maxPending", "9")],
            &[("sql", 5432)],
        );
        assert!(opted_in(&s));
        let d = read(&s, &c).expect("readable");
        assert_eq!(d.def.name, "pg.db");
        assert_eq!(d.def.listen, Some("0.0.0.0:5432".parse().expect("addr")));
        assert_eq!(
            d.def.policy.idle_timeout,
            std::time::Duration::from_secs(300)
        );
        assert_eq!(d.def.policy.hold_timeout, std::time::Duration::from_secs(7));
        assert_eq!(d.def.policy.max_pending, 9);
        assert_eq!(d.target.kind, Kind::Deployment);
        assert_eq!(d.target.workload, "pg");
        assert_eq!(d.target.port_name, "sql");
    }

    #[test]
    fn annotations_pick_workload_port_and_listen() {
        let c = config("{}");
        let s = svc(
            &[
                (WORKLOAD, "statefulset/pg-main"),
                (PORT, "6543"),
                (LISTEN, "127.0.0.1:0"),
            ],
            &[("a", 5432), ("b", 6543)],
        );
        let d = read(&s, &c).expect("readable");
        assert_eq!(d.target.kind, Kind::StatefulSet);
        assert_eq!(d.target.workload, "pg-main");
        assert_eq!(d.target.port_name, "b");
        assert_eq!(d.def.listen, Some("127.0.0.1:0".parse().expect("addr")));
        assert!(!opted_in(&s));
    }

    #[test]
    fn errors_name_the_annotation() {
        let c = config("{}");
        for (k, v) in [
            (WORKLOAD, "job/x"),
            (WORKLOAD, "pg"),
            (PORT, "nope"),
            (LISTEN, "localhost:1"),
            (PROTOCOL, "udp"),
            (PROTOCOL, "http"),
            ("zenvoy.io/idleTimeout", "soon"),
            ("zenvoy.io/maxPending", "-1"),
            ("zenvoy.io/holdTimeout", "0s"),
        ] {
            let err = read(&svc(&[(k, v)], &[("", 80)]), &c)
                .expect_err(k)
                .to_string();
            assert!(err.contains(k), "{err} should name {k}");
        }
        let err = read(&svc(&[], &[]), &c).expect_err("no ports").to_string();
        assert!(err.contains("spec.ports"), "{err}");
    }
}
