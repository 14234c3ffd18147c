//! The holder/controller contract (`zenvoy-contract`), end to end through both crates'
//! own code: what the controller writes, the holder reads back the same, and the other
//! way round.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use prost::Message;
use zenvoy_controller::xds::resources::{cluster, load_assignment, Endpoints, HoldPolicy};
use zenvoy_core::model::{Observation, Protocol};
use zenvoy_core::stats::{families::Collector, push};
use zenvoy_holder::hold::ServicePolicy;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn the_controllers_holder_endpoint_read_by_the_holder_gives_back_the_policy() {
    for policy in [
        HoldPolicy {
            hold_timeout: Duration::from_millis(2500),
            max_pending: 7,
            dial: None,
        },
        HoldPolicy {
            hold_timeout: Duration::from_secs(3600),
            max_pending: 1,
            dial: Some(addr("127.0.0.1:5432")),
        },
        HoldPolicy {
            hold_timeout: Duration::from_secs(1),
            max_pending: 1,
            dial: Some(addr("[fd00::2]:80")),
        },
    ] {
        let cla = load_assignment("pg.db", &Endpoints::Holder(addr("10.1.2.3:15001"), policy));
        // Through the wire, as the holder receives it.
        let cla = Message::decode(cla.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(
            zenvoy_holder::xds::policy(&cla),
            Some(ServicePolicy {
                hold_timeout: policy.hold_timeout,
                max_pending: policy.max_pending as usize,
                dial: policy.dial,
            })
        );
        assert_eq!(
            zenvoy_holder::xds::upstreams(&cla),
            Vec::<SocketAddr>::new(),
            "the holder is not an upstream of its own"
        );
    }
}

#[test]
fn the_holder_reads_an_awake_assignment_as_its_upstreams_and_no_policy() {
    let ups = vec![addr("10.0.0.1:5432"), addr("[fd00::2]:5432")];
    let cla = load_assignment("pg.db", &Endpoints::Upstream(ups.clone()));
    assert_eq!(zenvoy_holder::xds::upstreams(&cla), ups);
    assert_eq!(zenvoy_holder::xds::policy(&cla), None);
}

#[test]
fn the_service_tlv_envoy_is_told_to_send_is_the_one_the_holder_reads() {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    let c = cluster(
        "pg.db",
        Duration::from_secs(1),
        &zenvoy_core::model::Policy::default().envoy(),
        zenvoy_core::model::Protocol::Tcp,
    );
    let Some(ConfigType::TypedConfig(any)) = c.transport_socket_matches[0]
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.clone())
    else {
        panic!("a typed transport socket");
    };
    let pp = ProxyProtocolUpstreamTransport::decode(any.value.as_slice()).expect("decodes");
    let tlv = &pp.config.expect("PROXY config").added_tlvs[0];
    assert_eq!(
        tlv.r#type,
        u32::from(zenvoy_holder::proxy_header::TLV_SERVICE)
    );
    // A header with that TLV names the service to the holder.
    let a = addr("127.0.0.1:1");
    let header = zenvoy_holder::proxy_header::encode(
        a,
        a,
        &[(
            zenvoy_holder::proxy_header::TLV_SERVICE,
            tlv.value.as_slice(),
        )],
    )
    .expect("encodes");
    let (parsed, _) = zenvoy_holder::proxy_header::parse(&header).expect("parses");
    assert_eq!(parsed.service().expect("a service"), "pg.db");
}

#[test]
fn the_holders_pending_push_is_read_by_the_controller() {
    let msg = StreamMetricsMessage {
        identifier: Some(Identifier {
            node: Some(Node {
                id: "holder-1".into(),
                ..Default::default()
            }),
        }),
        envoy_metrics: vec![zenvoy_holder::push::family(&[
            ("pg.db".to_string(), 3),
            ("unknown".to_string(), 9),
        ])],
    };
    let bytes = msg.encode_to_vec();
    let mut collector = Collector::new(|s| (s == "pg.db").then_some(Protocol::Tcp));
    let node = push::read(&bytes, &mut collector).expect("reads");
    assert_eq!(node.as_deref(), Some("holder-1"));
    assert_eq!(
        collector.finish(),
        [("pg.db".to_string(), Observation::HolderPending(3.0))]
    );
}
