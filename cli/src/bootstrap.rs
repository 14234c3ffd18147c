//! The Envoy bootstrap zenvoy needs: everything but the controller's own cluster comes
//! over ADS, stats go back to the controller's `MetricsService`, and only the stats zenvoy
//! reads are kept. Pure: options in, JSON out (`zenvoy envoy-bootstrap` prints it,
//! `zenvoy run` writes it, the end-to-end harness starts its Envoys with it).
//!
//! ```text
//!  Envoy --ADS (CDS, LDS; EDS, RDS through them)-----> cluster zenvoy_controller --> controller
//!        --metrics_service (every `flush`)----------->   (HTTP/2, pings, TCP keepalive,
//!                                                          optional mTLS)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

/// Stats zenvoy reads; everything else is not pushed, which keeps pushes small.
pub const STATS_REGEX: &str = r"^cluster\..*\.upstream_(cx_active|cx_total|cx_rx_bytes_total|cx_tx_bytes_total|rq_active|rq_total)$";

/// The static cluster ADS and the stats sink use.
pub const CONTROLLER_CLUSTER: &str = "zenvoy_controller";

/// The name the controller's certificate carries, as the holder expects it too
/// (`zenvoy-holder --tls-server-name`).
pub const DEFAULT_TLS_SERVER_NAME: &str = "zenvoy-controller";

/// Envoy's bounds on `stats_flush_interval`: at least 1 ms, below 300 s.
pub const MIN_FLUSH: Duration = Duration::from_millis(1);
pub const MAX_FLUSH: Duration = Duration::from_secs(300);

/// What a bootstrap is made of.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node id the controller knows this Envoy by (and, with mTLS, the name its
    /// certificate must carry).
    pub node_id: String,
    /// The controller's gRPC address (an IP: the cluster is STATIC).
    pub controller: SocketAddr,
    /// Envoy's admin interface (port 0: the OS picks; `--admin-address-path` tells).
    pub admin: SocketAddr,
    /// How often stats are pushed (`stats_flush_interval`).
    pub flush: Duration,
    /// Push stats to the controller (the `metrics_service` sink). Off: the controller
    /// must scrape `/stats/prometheus` (`scrape.targets`).
    pub push: bool,
    /// mTLS to the controller.
    pub tls: Option<Tls>,
}

/// The files for mTLS to the controller (PEM).
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA the controller's certificate must chain to.
    pub ca: PathBuf,
    /// Envoy's client certificate; it must name the node id.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The name the controller's certificate must carry (SNI and SAN check).
    pub server_name: String,
}

/// The bootstrap for `o`.
pub fn build(o: &Options) -> Value {
    let mut b = without_push(&o.node_id, o.controller, o.admin, o.flush);
    if o.push {
        b["stats_sinks"] = json!([{
            "name": "envoy.stat_sinks.metrics_service",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                "transport_api_version": "V3",
                "grpc_service": { "envoy_grpc": { "cluster_name": CONTROLLER_CLUSTER } }
            }
        }]);
    }
    match &o.tls {
        Some(tls) => with_tls(b, tls),
        None => b,
    }
}

/// A bootstrap that gets listeners, clusters and endpoints from the controller over ADS
/// and pushes its stats to the controller's `MetricsService` every `flush`.
pub fn bootstrap(
    node_id: &str,
    controller: SocketAddr,
    admin: SocketAddr,
    flush: Duration,
) -> Value {
    build(&Options {
        node_id: node_id.to_string(),
        controller,
        admin,
        flush,
        push: true,
        tls: None,
    })
}

/// `bootstrap` with mTLS to the controller: Envoy presents `tls.cert` (which must name its
/// node id) and trusts only a controller certificate from `tls.ca` that names
/// `tls.server_name`.
pub fn with_tls(mut bootstrap: Value, tls: &Tls) -> Value {
    let socket = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                // The controller speaks gRPC: HTTP/2 must be negotiated in the handshake.
                "alpn_protocols": ["h2"],
                "tls_certificates": [{
                    "certificate_chain": { "filename": tls.cert.display().to_string() },
                    "private_key": { "filename": tls.key.display().to_string() }
                }],
                "validation_context": {
                    "trusted_ca": { "filename": tls.ca.display().to_string() },
                    "match_typed_subject_alt_names": [{
                        "san_type": "DNS",
                        "matcher": { "exact": tls.server_name }
                    }]
                }
            }
        }
    });
    if let Some(clusters) = bootstrap["static_resources"]["clusters"].as_array_mut() {
        for c in clusters {
            if c["name"] == CONTROLLER_CLUSTER {
                c["transport_socket"] = socket.clone();
            }
        }
    }
    bootstrap
}

/// The bootstrap without the `metrics_service` sink: the controller must scrape
/// `/stats/prometheus`.
pub fn without_push(
    node_id: &str,
    controller: SocketAddr,
    admin: SocketAddr,
    flush: Duration,
) -> Value {
    let grpc = json!({ "envoy_grpc": { "cluster_name": CONTROLLER_CLUSTER } });
    json!({
        "node": { "id": node_id, "cluster": "zenvoy" },
        "admin": { "address": { "socket_address": {
            "address": admin.ip().to_string(), "port_value": admin.port()
        } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [grpc],
                "set_node_on_first_message_only": true
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [{
            "name": CONTROLLER_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    // A controller that vanished without closing is noticed within
                    // 15 s (pings), and the stream goes to another replica.
                    "explicit_http_config": { "http2_protocol_options": {
                        "connection_keepalive": { "interval": "10s", "timeout": "5s" }
                    } }
                }
            },
            "upstream_connection_options": { "tcp_keepalive": {
                "keepalive_time": 10, "keepalive_interval": 5, "keepalive_probes": 3
            } },
            "load_assignment": {
                "cluster_name": CONTROLLER_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                    "address": controller.ip().to_string(), "port_value": controller.port()
                } } } }] }]
            }
        }] },
        "stats_flush_interval": format!("{}s", flush.as_secs_f64()),
        "stats_config": { "stats_matcher": { "inclusion_list": { "patterns": [
            { "safe_regex": { "regex": STATS_REGEX } }
        ] } } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            node_id: "envoy-1".into(),
            controller: "127.0.0.1:18000".parse().expect("address"),
            admin: "127.0.0.1:0".parse().expect("address"),
            flush: Duration::from_millis(500),
            push: true,
            tls: None,
        }
    }

    #[test]
    fn ads_and_the_stats_sink_point_at_the_controller() {
        let b = build(&options());
        assert_eq!(b["node"]["id"], "envoy-1");
        assert_eq!(b["stats_flush_interval"], "0.5s");
        assert_eq!(
            b["stats_sinks"][0]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"],
            CONTROLLER_CLUSTER
        );
        let cluster = &b["static_resources"]["clusters"][0];
        let addr = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["socket_address"];
        assert_eq!(addr["address"], "127.0.0.1");
        assert_eq!(addr["port_value"], 18000);
        assert!(cluster.get("transport_socket").is_none());
    }

    #[test]
    fn without_push_there_is_no_sink_and_tls_sets_the_controller_socket() {
        let mut o = options();
        o.push = false;
        o.tls = Some(Tls {
            ca: "ca.pem".into(),
            cert: "envoy.pem".into(),
            key: "envoy.key".into(),
            server_name: DEFAULT_TLS_SERVER_NAME.into(),
        });
        let b = build(&o);
        assert!(b.get("stats_sinks").is_none());
        let tls = &b["static_resources"]["clusters"][0]["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], DEFAULT_TLS_SERVER_NAME);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "ca.pem"
        );
    }
}
