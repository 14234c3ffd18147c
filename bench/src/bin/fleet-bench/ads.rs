//! Envoy-like ADS clients: part A's two (SotW and delta, every resource, bytes counted),
//! and the fan-out part's N streams, each on its own connection, every response ACKed,
//! reporting when svc-0's assignment changes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use zenvoy_test_support::monotonic_ns;

use crate::controller::{name, WOKEN};

pub(crate) const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub(crate) const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub(crate) const ENDPOINT: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

pub(crate) fn node(id: &str) -> Node {
    Node {
        id: id.to_string(),
        ..Default::default()
    }
}

/// A SotW ADS client subscribed to every listener, cluster and assignment; returns a
/// channel of (type, encoded bytes) per response received, ACKing each.
pub(crate) async fn sotw_client(
    grpc: SocketAddr,
    services: usize,
) -> anyhow::Result<mpsc::Receiver<(String, usize, DiscoveryResponse)>> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc}")).await?;
    client = client.max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(64);
    let names: Vec<String> = (0..services).map(name).collect();
    for t in [CLUSTER, LISTENER] {
        tx.send(DiscoveryRequest {
            node: Some(node("bench-sotw")),
            type_url: t.into(),
            ..Default::default()
        })
        .await?;
    }
    tx.send(DiscoveryRequest {
        node: Some(node("bench-sotw")),
        type_url: ENDPOINT.into(),
        resource_names: names.clone(),
        ..Default::default()
    })
    .await?;
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (out_tx, out_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(Ok(resp)) = inbound.next().await {
            let len = resp.encoded_len();
            let names = if resp.type_url == ENDPOINT {
                names.clone()
            } else {
                Vec::new()
            };
            let ack = DiscoveryRequest {
                type_url: resp.type_url.clone(),
                version_info: resp.version_info.clone(),
                response_nonce: resp.nonce.clone(),
                resource_names: names,
                ..Default::default()
            };
            if tx.send(ack).await.is_err()
                || out_tx
                    .send((resp.type_url.clone(), len, resp))
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    Ok(out_rx)
}

/// The same for delta ADS; returns (type, encoded bytes) per response.
pub(crate) async fn delta_client(
    grpc: SocketAddr,
    services: usize,
) -> anyhow::Result<mpsc::Receiver<(String, usize)>> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc}")).await?;
    client = client.max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(64);
    for t in [CLUSTER, LISTENER] {
        tx.send(DeltaDiscoveryRequest {
            node: Some(node("bench-delta")),
            type_url: t.into(),
            ..Default::default()
        })
        .await?;
    }
    tx.send(DeltaDiscoveryRequest {
        node: Some(node("bench-delta")),
        type_url: ENDPOINT.into(),
        resource_names_subscribe: (0..services).map(name).collect(),
        ..Default::default()
    })
    .await?;
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (out_tx, out_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(Ok(resp)) = inbound.next().await {
            let len = resp.encoded_len();
            let ack = DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            };
            if tx.send(ack).await.is_err()
                || out_tx.send((resp.type_url.clone(), len)).await.is_err()
            {
                return;
            }
        }
    });
    Ok(out_rx)
}

/// Drain what arrives until `quiet` passes with nothing; returns total bytes by type.
pub(crate) async fn drain<T>(
    rx: &mut mpsc::Receiver<T>,
    quiet: Duration,
    len: impl Fn(&T) -> (String, usize),
) -> HashMap<String, (usize, usize)> {
    let mut by_type: HashMap<String, (usize, usize)> = HashMap::new();
    while let Ok(Some(item)) = tokio::time::timeout(quiet, rx.recv()).await {
        let (t, n) = len(&item);
        let e = by_type
            .entry(t.rsplit('.').next().unwrap_or("").to_string())
            .or_default();
        e.0 += 1;
        e.1 += n;
    }
    by_type
}

// ---------------------------------------------------------------------------------------
// Fan-out (issue 15): N Envoy-like ADS streams on one controller with 10,000 services.

/// Field 1 of a message only: the `name` of a Cluster or Listener, the `cluster_name` of a
/// ClusterLoadAssignment. prost skips the other fields, so a 10,000-resource response is
/// read without decoding every resource.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Named {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
}

/// What the fan-out clients tell the bench.
#[derive(Debug)]
pub(crate) enum Report {
    /// The stream has ACKed its first CDS and LDS responses and an assignment for every
    /// cluster it got.
    Synced { stream: usize },
    /// The stream received svc-0's assignment, with upstream endpoints (`awake`) or the
    /// holder only, at `at` (CLOCK_MONOTONIC ns, taken when the response was decoded); its
    /// ACK was queued before this report was sent.
    Woken {
        stream: usize,
        awake: bool,
        at: u128,
    },
    /// The stream ended (why).
    Ended { stream: usize, why: String },
}

/// One stream's initial sync.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) cds: bool,
    pub(crate) lds: bool,
    pub(crate) clusters: usize,
    /// Assignments received, all EDS responses together.
    pub(crate) eds: usize,
    pub(crate) synced: bool,
}

impl Progress {
    pub(crate) fn report(&mut self, stream: usize, reports: &mpsc::UnboundedSender<Report>) {
        if !self.synced && self.cds && self.lds && self.clusters > 0 && self.eds >= self.clusters {
            self.synced = true;
            let _ = reports.send(Report::Synced { stream });
        }
    }
}

pub(crate) const STREAM_CLOSED: &str = "the ADS request stream closed";

/// Whether an encoded ClusterLoadAssignment has upstream endpoints (awake) or only the
/// holder's (parked).
pub(crate) fn awake(cla: &[u8]) -> anyhow::Result<bool> {
    let cla =
        ClusterLoadAssignment::decode(cla).context("decoding svc-0's ClusterLoadAssignment")?;
    Ok(!zenvoy_holder::xds::upstreams(&cla).is_empty())
}

/// Open ADS stream `i` as an Envoy would, on its own connection (one tonic `Channel`, so
/// one HTTP/2 connection per stream, as every Envoy has its own): SotW or delta, node id
/// `envoy-<i>`, wildcard Clusters and Listeners, then the assignment of every cluster it
/// got, every response ACKed. Runs until the task is aborted or the stream ends.
pub(crate) async fn open_stream(
    i: usize,
    grpc: SocketAddr,
    delta: bool,
    reports: mpsc::UnboundedSender<Report>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let node = node(&format!("envoy-{i}"));
    if delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{grpc}"))
            .await
            .with_context(|| format!("connecting ADS stream {i} to {grpc}"))?;
        client = client.max_decoding_message_size(256 << 20);
        let (tx, rx) = mpsc::channel(16);
        for t in [CLUSTER, LISTENER] {
            tx.send(DeltaDiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.into(),
                ..Default::default()
            })
            .await?;
        }
        let inbound = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("opening delta ADS stream {i}"))?
            .into_inner();
        Ok(tokio::spawn(async move {
            let why = match delta_loop(i, inbound, &tx, &reports).await {
                Ok(()) => "the controller ended the stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            let _ = reports.send(Report::Ended { stream: i, why });
        }))
    } else {
        let (tx, rx) = mpsc::channel(16);
        for t in [CLUSTER, LISTENER] {
            tx.send(Outgoing::Msg(Box::new(DiscoveryRequest {
                node: Some(node.clone()),
                type_url: t.into(),
                ..Default::default()
            })))
            .await?;
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
            .connect()
            .await
            .with_context(|| format!("connecting ADS stream {i} to {grpc}"))?;
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 << 20);
        grpc.ready()
            .await
            .with_context(|| format!("opening SotW ADS stream {i}"))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        );
        let inbound = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                path,
                SotwCodec,
            )
            .await
            .with_context(|| format!("opening SotW ADS stream {i}"))?
            .into_inner();
        Ok(tokio::spawn(async move {
            let why = match sotw_loop(i, inbound, &tx, &reports).await {
                Ok(()) => "the controller ended the stream".to_string(),
                Err(e) => format!("{e:#}"),
            };
            let _ = reports.send(Report::Ended { stream: i, why });
        }))
    }
}

/// What a SotW fan-out client sends: a request, or one already encoded. A SotW Envoy
/// repeats its 10,000 cluster names in every EDS request and ACK, and encodes them on
/// its own node; here a hundred clients share the controller's two cores, so the names
/// are encoded once per change and each ACK is its small head followed by those bytes
/// (the fields of one protobuf message may come in any number of runs). The controller
/// reads exactly what a prost-encoded request would give it.
pub(crate) enum Outgoing {
    Msg(Box<DiscoveryRequest>),
    Raw(bytes::Bytes),
}

/// Field 3 (`resource_names`) of a DiscoveryRequest, encoded.
pub(crate) fn encoded_names(names: &[String]) -> bytes::Bytes {
    let mut b = Vec::new();
    for n in names {
        prost::encoding::encode_key(3, prost::encoding::WireType::LengthDelimited, &mut b);
        prost::encoding::encode_varint(n.len() as u64, &mut b);
        b.extend_from_slice(n.as_bytes());
    }
    b.into()
}

/// `head` (a request without names) followed by encoded names.
pub(crate) fn with_names(head: DiscoveryRequest, names: &bytes::Bytes) -> Outgoing {
    let mut b = head.encode_to_vec();
    b.extend_from_slice(names);
    Outgoing::Raw(b.into())
}

/// tonic's prost codec, but sending [`Outgoing`].
pub(crate) struct SotwCodec;

pub(crate) struct SotwEncoder;

impl tonic::codec::Encoder for SotwEncoder {
    type Item = Outgoing;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Outgoing,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        match item {
            Outgoing::Msg(m) => m
                .encode(dst)
                .map_err(|e| tonic::Status::internal(e.to_string())),
            Outgoing::Raw(b) => {
                dst.put_slice(&b);
                Ok(())
            }
        }
    }
}

impl tonic::codec::Codec for SotwCodec {
    type Encode = Outgoing;
    type Decode = DiscoveryResponse;
    type Encoder = SotwEncoder;
    type Decoder = tonic_prost::ProstDecoder<DiscoveryResponse>;

    fn encoder(&mut self) -> SotwEncoder {
        SotwEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<
            DiscoveryRequest,
            DiscoveryResponse,
        >::default())
    }
}

/// A SotW Envoy: on CDS, one EDS request naming every cluster (again when the set
/// changes), then the CDS ACK; every response ACKed with its version and nonce, EDS ACKs
/// naming the same clusters.
pub(crate) async fn sotw_loop(
    i: usize,
    mut inbound: tonic::Streaming<DiscoveryResponse>,
    tx: &mpsc::Sender<Outgoing>,
    reports: &mpsc::UnboundedSender<Report>,
) -> anyhow::Result<()> {
    let mut p = Progress::default();
    let mut eds_names: Vec<String> = Vec::new();
    let mut eds_encoded = bytes::Bytes::new();
    // Version and nonce of the last EDS response, for an EDS request that changes names.
    let mut eds_last = (String::new(), String::new());
    while let Some(resp) = inbound.message().await? {
        let at = monotonic_ns();
        let mut woken = None;
        let ack_names = match resp.type_url.as_str() {
            CLUSTER => {
                let mut names = Vec::with_capacity(resp.resources.len());
                for a in &resp.resources {
                    names.push(
                        Named::decode(&a.value[..])
                            .context("a Cluster in a CDS response")?
                            .name,
                    );
                }
                p.clusters = names.len();
                p.cds = true;
                if names != eds_names {
                    eds_names = names;
                    eds_encoded = encoded_names(&eds_names);
                    let head = DiscoveryRequest {
                        type_url: ENDPOINT.into(),
                        version_info: eds_last.0.clone(),
                        response_nonce: eds_last.1.clone(),
                        ..Default::default()
                    };
                    tx.send(with_names(head, &eds_encoded))
                        .await
                        .context(STREAM_CLOSED)?;
                }
                false
            }
            ENDPOINT => {
                for a in &resp.resources {
                    let n = Named::decode(&a.value[..])
                        .context("a ClusterLoadAssignment in an EDS response")?;
                    if n.name == WOKEN {
                        woken = Some(awake(&a.value[..])?);
                    }
                }
                p.eds += resp.resources.len();
                eds_last = (resp.version_info.clone(), resp.nonce.clone());
                true
            }
            LISTENER => {
                p.lds = true;
                false
            }
            _ => false,
        };
        let head = DiscoveryRequest {
            type_url: resp.type_url,
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            ..Default::default()
        };
        let ack = if ack_names {
            with_names(head, &eds_encoded)
        } else {
            Outgoing::Msg(Box::new(head))
        };
        tx.send(ack).await.context(STREAM_CLOSED)?;
        if let Some(awake) = woken {
            let _ = reports.send(Report::Woken {
                stream: i,
                awake,
                at,
            });
        }
        p.report(i, reports);
    }
    Ok(())
}

/// A delta Envoy: on CDS, subscribe to the assignment of every cluster not yet
/// subscribed, then ACK; every response ACKed with its nonce.
pub(crate) async fn delta_loop(
    i: usize,
    mut inbound: tonic::Streaming<DeltaDiscoveryResponse>,
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    reports: &mpsc::UnboundedSender<Report>,
) -> anyhow::Result<()> {
    let mut p = Progress::default();
    let mut subscribed: HashSet<String> = HashSet::new();
    while let Some(resp) = inbound.message().await? {
        let at = monotonic_ns();
        let mut woken = None;
        match resp.type_url.as_str() {
            CLUSTER => {
                let new: Vec<String> = resp
                    .resources
                    .iter()
                    .filter(|r| !subscribed.contains(&r.name))
                    .map(|r| r.name.clone())
                    .collect();
                if !new.is_empty() {
                    subscribed.extend(new.iter().cloned());
                    tx.send(DeltaDiscoveryRequest {
                        type_url: ENDPOINT.into(),
                        resource_names_subscribe: new,
                        ..Default::default()
                    })
                    .await
                    .context(STREAM_CLOSED)?;
                }
                p.clusters = subscribed.len();
                p.cds = true;
            }
            ENDPOINT => {
                for r in &resp.resources {
                    if r.name == WOKEN {
                        let any = r
                            .resource
                            .as_ref()
                            .context("svc-0's delta resource has no body")?;
                        woken = Some(awake(&any.value[..])?);
                    }
                }
                p.eds += resp.resources.len();
            }
            LISTENER => p.lds = true,
            _ => {}
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await
        .context(STREAM_CLOSED)?;
        if let Some(awake) = woken {
            let _ = reports.send(Report::Woken {
                stream: i,
                awake,
                at,
            });
        }
        p.report(i, reports);
    }
    Ok(())
}

/// The stream tasks, aborted when dropped (on success and on every error path).
pub(crate) struct Streams(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Streams {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Open `count` streams (stream i is delta when i is odd) and wait until each has ACKed
/// its initial CDS, LDS and EDS, within `bound`.
pub(crate) async fn open_and_sync(
    grpc: SocketAddr,
    count: usize,
    bound: Duration,
    reports_tx: &mpsc::UnboundedSender<Report>,
    reports: &mut mpsc::UnboundedReceiver<Report>,
) -> anyhow::Result<Streams> {
    let mut streams = Streams(Vec::with_capacity(count));
    let deadline = tokio::time::Instant::now() + bound;
    for i in 0..count {
        streams
            .0
            .push(open_stream(i, grpc, i % 2 == 1, reports_tx.clone()).await?);
    }
    let mut synced = vec![false; count];
    let mut done = 0;
    let mut said = tokio::time::Instant::now();
    while done < count {
        if said.elapsed() >= Duration::from_secs(10) {
            println!("[F]   ... {done} of {count} streams synced");
            said = tokio::time::Instant::now();
        }
        let next = tokio::time::timeout(Duration::from_secs(1), reports.recv()).await;
        match next {
            Err(_) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "timed out after {bound:?} waiting for all {count} ADS streams to ACK their initial CDS, LDS and EDS: {done} had (stream {} had not)",
                    synced.iter().position(|s| !s).unwrap_or(0)
                );
            }
            Ok(None) => anyhow::bail!("the ADS stream reports channel closed"),
            Ok(Some(Report::Synced { stream })) => {
                if let Some(s) = synced.get_mut(stream).filter(|s| !**s) {
                    *s = true;
                    done += 1;
                }
            }
            Ok(Some(Report::Ended { stream, why })) => {
                anyhow::bail!("ADS stream {stream} ended during its initial sync: {why}")
            }
            Ok(Some(Report::Woken { .. })) => {} // svc-0's initial (holder) assignment
        }
    }
    Ok(streams)
}

/// Take what the streams reported so far; an ended stream is an error.
pub(crate) fn no_stream_ended(reports: &mut mpsc::UnboundedReceiver<Report>) -> anyhow::Result<()> {
    while let Ok(r) = reports.try_recv() {
        if let Report::Ended { stream, why } = r {
            anyhow::bail!("ADS stream {stream} ended: {why}");
        }
    }
    Ok(())
}

/// Wait until each of `count` streams has received svc-0's assignment in state `awake`;
/// returns the receipt instants (CLOCK_MONOTONIC ns), one per stream.
pub(crate) async fn receipts(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    count: usize,
    want_awake: bool,
    bound: Duration,
    what: &str,
) -> anyhow::Result<Vec<u128>> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut at: Vec<Option<u128>> = vec![None; count];
    let mut got = 0;
    while got < count {
        match tokio::time::timeout_at(deadline, reports.recv()).await {
            Err(_) => anyhow::bail!(
                "timed out after {bound:?} waiting for {what}: {got} of {count} streams received it (stream {} did not)",
                at.iter().position(Option::is_none).unwrap_or(0)
            ),
            Ok(None) => anyhow::bail!("the ADS stream reports channel closed"),
            Ok(Some(Report::Woken {
                stream,
                awake,
                at: t,
            })) => {
                anyhow::ensure!(
                    awake == want_awake,
                    "ADS stream {stream} received svc-0's {} assignment while waiting for {what} (a park cancelled, or a second wake?)",
                    if awake { "upstream" } else { "holder" }
                );
                if let Some(slot) = at.get_mut(stream).filter(|s| s.is_none()) {
                    *slot = Some(t);
                    got += 1;
                }
            }
            Ok(Some(Report::Ended { stream, why })) => {
                anyhow::bail!("ADS stream {stream} ended while waiting for {what}: {why}")
            }
            Ok(Some(Report::Synced { .. })) => {}
        }
    }
    Ok(at.into_iter().flatten().collect())
}
