//! The holder as an xDS client of the controller: one ADS stream subscribing to the
//! ClusterLoadAssignments of every service it has held a connection for. Each update
//! sets that service's endpoints in the hold registry, which releases its queue.
//!
//! The holder's own endpoint is in every parked assignment, marked with the metadata the
//! controller uses for Envoy's transport-socket match; those endpoints are skipped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, LbEndpoint,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::controllers::Controllers;
use crate::hold::{Hold, ServicePolicy};

pub use zenvoy_contract::ENDPOINT_TYPE;
use zenvoy_contract::{Field, HoldPolicy, HOLDER_MARK, HOLD_POLICY, TRANSPORT_SOCKET_MATCH};

fn is_holder(e: &LbEndpoint) -> bool {
    e.metadata
        .as_ref()
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
        .and_then(|s| s.fields.get(HOLDER_MARK))
        .is_some_and(|v| v.kind == Some(value::Kind::BoolValue(true)))
}

/// The per-service policy the controller put on the holder endpoint, if any.
pub fn policy(cla: &ClusterLoadAssignment) -> Option<ServicePolicy> {
    let fields = &cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .find(|e| is_holder(e))?
        .metadata
        .as_ref()?
        .filter_metadata
        .get(HOLD_POLICY)?
        .fields;
    let p = HoldPolicy::from_fields(|k| match fields.get(k)?.kind.as_ref()? {
        value::Kind::NumberValue(n) => Some(Field::Number(*n)),
        value::Kind::StringValue(s) => Some(Field::Text(s.clone())),
        _ => None,
    })?;
    Some(ServicePolicy {
        hold_timeout: p.hold_timeout,
        max_pending: usize::try_from(p.max_pending).unwrap_or(usize::MAX),
        dial: p.dial,
    })
}

/// The real upstream endpoints of an assignment (empty when parked).
pub fn upstreams(cla: &ClusterLoadAssignment) -> Vec<SocketAddr> {
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter(|e| !is_holder(e))
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
            _ => None,
        })
        .filter_map(|a| match &a.address {
            Some(address::Address::SocketAddress(sa)) => {
                let ip: IpAddr = sa.address.parse().ok()?;
                let port = match sa.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok()?,
                    _ => return None,
                };
                Some(SocketAddr::new(ip, port))
            }
            _ => None,
        })
        .collect()
}

/// Keep one ADS stream to a controller open for the life of the process, reconnecting
/// with backoff, to the next of `controllers` each time (see `Controllers::keep_open`).
/// Endpoints already known are kept while disconnected.
pub async fn run(controllers: Arc<Controllers>, node: Node, hold: Arc<Hold>) {
    let (controllers, node, hold) = (&*controllers, &node, &hold);
    controllers
        .keep_open("ADS", move |controller| async move {
            stream_once(controllers, controller, node, hold).await
        })
        .await;
}

fn request(node: &Node, names: Vec<String>, last: Option<&DiscoveryResponse>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node.clone()),
        type_url: ENDPOINT_TYPE.to_string(),
        resource_names: names,
        version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

async fn stream_once(
    controllers: &Controllers,
    controller: &str,
    node: &Node,
    hold: &Arc<Hold>,
) -> Result<(), tonic::Status> {
    let channel = controllers.connect(controller).await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    // Seen before the names are read: a change made after this read is not lost.
    let mut names_rx = hold.watch_names();
    names_rx.borrow_and_update();
    // While there was no stream nothing kept any endpoints current: forget those of
    // services without held connections (they are not in this subscription).
    hold.forget_unheld_endpoints();
    let mut names = hold.names();
    if !names.is_empty() {
        let _ = tx.send(request(node, names.clone(), None)).await;
    }
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    info!(%controller, subscribed = names.len(), "ADS stream open");
    let mut last: Option<DiscoveryResponse> = None;
    let mut known: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    loop {
        tokio::select! {
            changed = names_rx.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let next = hold.names();
                if next == names {
                    // A service lost its last held connection and got a new one before
                    // this task looked: still subscribed, its endpoints still current.
                    continue;
                }
                // Both sorted.
                let dropped: Vec<String> = names
                    .iter()
                    .filter(|n| next.binary_search(n).is_err())
                    .cloned()
                    .collect();
                names = next;
                debug!(subscribed = names.len(), dropped = dropped.len(), "subscription changed");
                if tx.send(request(node, names.clone(), last.as_ref())).await.is_err() {
                    return Ok(());
                }
                hold.forget_endpoints(&dropped);
                for n in &dropped {
                    known.remove(n);
                }
            }
            msg = inbound.message() => {
                let Some(resp) = msg? else {
                    return Ok(());
                };
                let mut error = None;
                for any in &resp.resources {
                    match ClusterLoadAssignment::decode(any.value.as_slice()) {
                        // One that crossed an unsubscribe would not be kept current.
                        Ok(cla) if names.binary_search(&cla.cluster_name).is_err() => {}
                        Ok(cla) => {
                            let eps = upstreams(&cla);
                            if known.get(&cla.cluster_name) != Some(&eps) {
                                info!(service = %cla.cluster_name, endpoints = ?eps, "endpoints");
                            }
                            hold.set_state(&cla.cluster_name, eps.clone(), policy(&cla));
                            known.insert(cla.cluster_name, eps);
                        }
                        Err(e) => error = Some(e.to_string()),
                    }
                }
                let mut ack = request(node, names.clone(), Some(&resp));
                if let Some(e) = error {
                    warn!(error = %e, "cannot decode ClusterLoadAssignment; NACK");
                    ack.version_info = last.as_ref().map(|r| r.version_info.clone()).unwrap_or_default();
                    ack.error_detail = Some(envoy_types::pb::google::rpc::Status {
                        code: 3,
                        message: e,
                        details: Vec::new(),
                    });
                }
                if tx.send(ack).await.is_err() {
                    return Ok(());
                }
                last = Some(resp);
            }
        }
    }
}
