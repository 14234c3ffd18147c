//! Domain state -> Envoy resources. Pure functions: no tonic, no I/O, so every resource
//! zenvoy sends can be checked in a unit test.
//!
//! Per service `svc` there are three resources, all named `svc`:
//! - a Listener on the service's address with a `tcp_proxy` to cluster `svc`;
//! - an EDS Cluster `svc` whose endpoints come from ADS, with a transport-socket match that
//!   gives the holder endpoint an upstream PROXY v2 header carrying TLV 0xE0 = `svc`;
//! - its ClusterLoadAssignment: the holder while parked, the real upstreams while awake.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, proxy_protocol_config, socket_address, Address, AggregatedConfigSource,
    ApiVersion, ConfigSource, Metadata, ProxyProtocolConfig, SocketAddress, TlvEntry,
    TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::{value, Any, Duration, Struct, UInt32Value, Value};
use envoy_types::util::pack_any;

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str = zenvoy_contract::ENDPOINT_TYPE;
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Name of the shared HTTP listener and of its route configuration.
pub const HTTP_LISTENER: &str = "zenvoy_http";

use zenvoy_contract::Field;
pub use zenvoy_contract::{HOLDER_MARK, HOLD_POLICY, TRANSPORT_SOCKET_MATCH};
use zenvoy_core::model::{self, Protocol};
pub use zenvoy_core::model::{Endpoints, EnvoyLimits, HoldPolicy};

fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // subsec_nanos() < 1e9 always fits in i32.
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn holder_mark() -> Struct {
    Struct {
        fields: HashMap::from([(
            HOLDER_MARK.to_string(),
            Value {
                kind: Some(value::Kind::BoolValue(true)),
            },
        )]),
    }
}

/// The Listener for a service: plain TCP, proxied to the service's cluster, closing a
/// connection idle for `limits.tcp_idle_timeout` (zero: never; Envoy's own default is
/// 1 h, which would cut a database pool's idle sessions).
pub fn listener(name: &str, listen: SocketAddr, limits: &EnvoyLimits) -> Listener {
    let proxy = TcpProxy {
        stat_prefix: name.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(name.to_string())),
        idle_timeout: Some(duration(limits.tcp_idle_timeout)),
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(socket_address(listen)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The name of a service's `inCluster` listener on `listen` (its cluster keeps the
/// service's name). The port is in the name so that moving a listener to a port another
/// one leaves (ports reallocated, a restart without the stored ones) is a removal and an
/// addition: Envoy applies an update's removals first, where the same name with a new
/// address would be refused ("duplicate address") while the other still holds the port.
pub fn in_cluster_listener_name(service: &str, listen: SocketAddr) -> String {
    format!("{service}~in-{}", listen.port())
}

/// A service's `inCluster` listener on the proxies: where its EndpointSlice sends the
/// Service's own traffic while it is not awake. TCP: proxied to the service's cluster as
/// its front door is. HTTP and gRPC: an HTTP connection manager whose one route sends
/// every request to the cluster (whatever Host the client used: the Service's name, its
/// virtual IP), so requests, not connections, count as activity there too.
pub fn in_cluster_listener(
    service: &str,
    listen: SocketAddr,
    protocol: Protocol,
    limits: &EnvoyLimits,
    route_timeout: std::time::Duration,
) -> Listener {
    let name = in_cluster_listener_name(service, listen);
    let filter = match protocol {
        Protocol::Tcp => {
            let proxy = TcpProxy {
                stat_prefix: name.clone(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(service.to_string())),
                idle_timeout: Some(duration(limits.tcp_idle_timeout)),
                ..Default::default()
            };
            Filter {
                name: "envoy.filters.network.tcp_proxy".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
            }
        }
        Protocol::Http | Protocol::Http2 => {
            let routes = RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: service.to_string(),
                    domains: vec!["*".to_string()],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::Prefix(
                                "/".to_string(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                                service.to_string(),
                            )),
                            timeout: Some(duration(route_timeout)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let hcm = HttpConnectionManager {
                stat_prefix: name.clone(),
                route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
                http_filters: vec![HttpFilter {
                    name: "envoy.filters.http.router".to_string(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                        Router::default(),
                    ))),
                    ..Default::default()
                }],
                ..Default::default()
            };
            Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }
        }
    };
    Listener {
        name,
        address: Some(socket_address(listen)),
        filter_chains: vec![FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The shared HTTP listener: an HTTP connection manager whose routes come over RDS
/// (route configuration [`HTTP_LISTENER`]). Ports are stripped from Host before matching,
/// so `Host: echo:10000` and `Host: echo` reach the same virtual host.
pub fn http_listener(listen: SocketAddr) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: HTTP_LISTENER.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: HTTP_LISTENER.to_string(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        strip_port_mode: Some(http_connection_manager::StripPortMode::StripAnyHostPort(
            true,
        )),
        ..Default::default()
    };
    Listener {
        name: HTTP_LISTENER.to_string(),
        address: Some(socket_address(listen)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The route configuration of the shared HTTP listener: one virtual host per HTTP
/// service, everything under `/` to the service's cluster.
pub fn route_configuration(hosts: &[model::VirtualHost]) -> RouteConfiguration {
    RouteConfiguration {
        name: HTTP_LISTENER.to_string(),
        virtual_hosts: hosts
            .iter()
            .map(|h| VirtualHost {
                name: h.service.clone(),
                domains: h.domains.clone(),
                routes: vec![Route {
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                        ..Default::default()
                    }),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                            h.service.clone(),
                        )),
                        timeout: Some(duration(h.timeout)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The EDS Cluster for a service. Endpoints marked as the holder get an upstream PROXY v2
/// transport socket whose TLV 0xE0 names the service; other endpoints use raw TCP. Its
/// circuit breakers allow `limits.max_connections` connections, pending requests and
/// requests at once: Envoy's default of 1,024 applies to the connections to the holder
/// too, and cut a burst of clients at a parked service.
/// `protocol` `Http2`: the cluster speaks HTTP/2 (h2c) upstream, gRPC's transport; the
/// holder relays those bytes as any others.
pub fn cluster(
    name: &str,
    connect_timeout: std::time::Duration,
    limits: &EnvoyLimits,
    protocol: Protocol,
) -> Cluster {
    let max = Some(UInt32Value {
        value: limits.max_connections,
    });
    let circuit_breakers = CircuitBreakers {
        thresholds: vec![circuit_breakers::Thresholds {
            max_connections: max,
            max_pending_requests: max,
            max_requests: max,
            ..Default::default()
        }],
        ..Default::default()
    };
    let proxy_protocol = ProxyProtocolUpstreamTransport {
        config: Some(ProxyProtocolConfig {
            version: proxy_protocol_config::Version::V2 as i32,
            added_tlvs: vec![TlvEntry {
                r#type: u32::from(zenvoy_contract::TLV_SERVICE),
                value: name.as_bytes().to_vec(),
                format_string: None,
            }],
            ..Default::default()
        }),
        transport_socket: Some(raw_buffer()),
        ..Default::default()
    };
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(duration(connect_timeout)),
        circuit_breakers: Some(circuit_breakers),
        transport_socket_matches: vec![cluster::TransportSocketMatch {
            name: "zenvoy-holder".to_string(),
            r#match: Some(holder_mark()),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.upstream_proxy_protocol".to_string(),
                config_type: Some(
                    envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                        pack_any(proxy_protocol),
                    ),
                ),
            }),
        }],
        typed_extension_protocol_options: match protocol {
            Protocol::Http2 => [(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(http2_upstream()))]
                .into_iter()
                .collect(),
            Protocol::Tcp | Protocol::Http => Default::default(),
        },
        ..Default::default()
    }
}

/// The key Envoy reads a cluster's upstream HTTP options under.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn http2_upstream() -> HttpProtocolOptions {
    use http_protocol_options::{explicit_http_config::ProtocolConfig, ExplicitHttpConfig};
    HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Default::default())),
                },
            ),
        ),
        ..Default::default()
    }
}

fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_string(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                pack_any(RawBuffer {}),
            ),
        ),
    }
}

/// The ClusterLoadAssignment for a service in its current state.
pub fn load_assignment(name: &str, endpoints: &Endpoints) -> ClusterLoadAssignment {
    let lb_endpoints = match endpoints {
        Endpoints::Holder(holder, policy) => vec![lb_endpoint_for(
            *holder,
            Some(Metadata {
                filter_metadata: HashMap::from([
                    (TRANSPORT_SOCKET_MATCH.to_string(), holder_mark()),
                    (HOLD_POLICY.to_string(), policy_struct(policy)),
                ]),
                ..Default::default()
            }),
        )],
        Endpoints::Upstream(addrs) => addrs.iter().map(|a| lb_endpoint_for(*a, None)).collect(),
    };
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn policy_struct(p: &HoldPolicy) -> Struct {
    Struct {
        fields: p
            .fields()
            .into_iter()
            .map(|(k, field)| {
                let kind = match field {
                    Field::Number(n) => value::Kind::NumberValue(n),
                    Field::Text(t) => value::Kind::StringValue(t),
                };
                (k.to_string(), Value { kind: Some(kind) })
            })
            .collect(),
    }
}

fn lb_endpoint_for(addr: SocketAddr, metadata: Option<Metadata>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(addr)),
            ..Default::default()
        })),
        metadata,
        ..Default::default()
    }
}

/// Pack any resource for a DiscoveryResponse.
pub fn any<T: prost::Name + prost::Message>(resource: T) -> Any {
    pack_any(resource)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parked_assignment_marks_the_holder_for_proxy_protocol() {
        let policy = HoldPolicy {
            hold_timeout: std::time::Duration::from_millis(2500),
            max_pending: 7,
            dial: None,
        };
        let cla = load_assignment("echo", &Endpoints::Holder(addr("127.0.0.1:15001"), policy));
        let eps = &cla.endpoints[0].lb_endpoints;
        assert_eq!(eps.len(), 1);
        let md = eps[0].metadata.as_ref().expect("holder metadata");
        let mark = &md.filter_metadata[TRANSPORT_SOCKET_MATCH].fields[HOLDER_MARK];
        assert_eq!(mark.kind, Some(value::Kind::BoolValue(true)));
        let p = &md.filter_metadata[HOLD_POLICY].fields;
        assert_eq!(
            p[zenvoy_contract::HOLD_TIMEOUT_MS].kind,
            Some(value::Kind::NumberValue(2500.0))
        );
        assert_eq!(
            p[zenvoy_contract::MAX_PENDING].kind,
            Some(value::Kind::NumberValue(7.0))
        );
    }

    #[test]
    fn awake_assignment_lists_upstreams_without_metadata() {
        let ups = vec![addr("127.0.0.1:8080"), addr("[::1]:8081")];
        let cla = load_assignment("echo", &Endpoints::Upstream(ups));
        let eps = &cla.endpoints[0].lb_endpoints;
        assert_eq!(eps.len(), 2);
        assert!(eps.iter().all(|e| e.metadata.is_none()));
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &eps[1].host_identifier else {
            panic!("endpoint expected");
        };
        let Some(address::Address::SocketAddress(sa)) =
            ep.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            panic!("socket address expected");
        };
        assert_eq!(sa.address, "::1");
        assert_eq!(
            sa.port_specifier,
            Some(socket_address::PortSpecifier::PortValue(8081))
        );
    }

    #[test]
    fn cluster_adds_the_service_tlv_for_the_holder_match() {
        let limits = EnvoyLimits {
            tcp_idle_timeout: std::time::Duration::ZERO,
            max_connections: 50_000,
        };
        let c = cluster(
            "pg.db",
            std::time::Duration::from_millis(1500),
            &limits,
            Protocol::Tcp,
        );
        assert!(
            c.typed_extension_protocol_options.is_empty(),
            "HTTP/1.1 or TCP"
        );
        let h2 = cluster(
            "grpc.db",
            std::time::Duration::from_millis(1500),
            &limits,
            Protocol::Http2,
        );
        let opts = &h2.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS];
        assert_eq!(
            opts.type_url,
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        );
        let t = &c
            .circuit_breakers
            .as_ref()
            .expect("circuit breakers")
            .thresholds[0];
        for limit in [t.max_connections, t.max_pending_requests, t.max_requests] {
            assert_eq!(
                limit,
                Some(UInt32Value { value: 50_000 }),
                "above Envoy's 1,024"
            );
        }
        assert_eq!(
            c.connect_timeout,
            Some(Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        let m = &c.transport_socket_matches[0];
        assert_eq!(m.r#match, Some(holder_mark()));
        let Some(transport_socket::ConfigType::TypedConfig(any)) = m
            .transport_socket
            .as_ref()
            .and_then(|t| t.config_type.clone())
        else {
            panic!("typed config expected");
        };
        let pp = ProxyProtocolUpstreamTransport::decode(any.value.as_slice()).expect("decodes");
        let cfg = pp.config.expect("proxy protocol config");
        assert_eq!(cfg.version, proxy_protocol_config::Version::V2 as i32);
        assert_eq!(cfg.added_tlvs[0].r#type, 0xE0);
        assert_eq!(cfg.added_tlvs[0].value, b"pg.db");
    }

    #[test]
    fn listener_proxies_to_the_cluster_of_the_same_name() {
        let limits = EnvoyLimits {
            tcp_idle_timeout: std::time::Duration::from_secs(8 * 3600),
            max_connections: 1,
        };
        let l = listener("redis", addr("0.0.0.0:6379"), &limits);
        let Some(filter::ConfigType::TypedConfig(any)) =
            l.filter_chains[0].filters[0].config_type.clone()
        else {
            panic!("typed config expected");
        };
        let tp = TcpProxy::decode(any.value.as_slice()).expect("decodes");
        assert_eq!(
            tp.cluster_specifier,
            Some(tcp_proxy::ClusterSpecifier::Cluster("redis".into()))
        );
        assert_eq!(
            tp.idle_timeout,
            Some(Duration {
                seconds: 8 * 3600,
                nanos: 0
            }),
            "a database session idle for hours stays"
        );
    }

    use envoy_types::pb::envoy::config::core::v3::transport_socket;

    #[test]
    fn routes_give_each_http_service_its_domains_and_a_long_timeout() {
        let rc = route_configuration(&[model::VirtualHost {
            service: "web".into(),
            domains: vec!["web".into(), "web.default".into()],
            timeout: std::time::Duration::from_secs(75),
        }]);
        assert_eq!(rc.name, HTTP_LISTENER);
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.domains, ["web", "web.default"]);
        let Some(route::Action::Route(action)) = &vh.routes[0].action else {
            panic!("route action expected");
        };
        assert_eq!(
            action.cluster_specifier,
            Some(route_action::ClusterSpecifier::Cluster("web".into()))
        );
        assert_eq!(
            action.timeout,
            Some(Duration {
                seconds: 75,
                nanos: 0
            })
        );
    }
}
