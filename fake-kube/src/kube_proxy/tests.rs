//! The kube-proxy stand-in: which endpoints a Service port gets from its slices, the nft
//! text for them, the cache that follows the fake's changes, and (privileged) real DNAT in
//! a namespace following the slices.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// What the fake kubelet (Kubernetes' EndpointSlice controller) and zenvoy's controller
/// put on their slices.
const KUBE: &str = "endpointslice-controller.k8s.io";
const ZENVOY: &str = "zenvoy.io/controller";
const BOUND: Duration = Duration::from_secs(10);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address constant")
}

fn service(namespace: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| {
            let mut port = json!({"port": p, "protocol": "TCP", "targetPort": p});
            if !n.is_empty() {
                port["name"] = json!(n);
            }
            port
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "ports": ports},
    })
}

fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

fn not_ready() -> Value {
    json!({"ready": false, "serving": false, "terminating": false})
}

/// Still serving while it terminates.
fn terminating() -> Value {
    json!({"ready": false, "serving": true, "terminating": true})
}

/// An EndpointSlice `name` in namespace `shop` for Service `service`.
fn slice(
    name: &str,
    service: &str,
    manager: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, Value)],
) -> Value {
    slice_in("shop", name, service, manager, ports, endpoints)
}

fn slice_in(
    namespace: &str,
    name: &str,
    service: &str,
    manager: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, Value)],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| {
            let mut port = json!({"port": p, "protocol": "TCP"});
            if !n.is_empty() {
                port["name"] = json!(n);
            }
            port
        })
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, conditions)| json!({"addresses": [ip], "conditions": conditions}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {SERVICE_NAME_LABEL: service,
                       "endpointslice.kubernetes.io/managed-by": manager},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

fn endpoints_of(ports: &[ServicePort], service: &str, port: u16) -> Option<Vec<SocketAddr>> {
    ports
        .iter()
        .find(|p| p.service == service && p.port == port)
        .map(|p| p.endpoints.clone())
}

#[test]
fn endpoints_merge_every_slice_of_the_service_by_port_name() {
    let services = [service(
        "shop",
        "web",
        "10.96.0.10",
        &[("http", 80), ("admin", 9000)],
    )];
    let slices = [
        // The workload's pods: one ready, one not.
        slice(
            "web-fake",
            "web",
            KUBE,
            &[("admin", 9090), ("http", 8080)],
            &[("127.1.2.3", ready()), ("127.1.2.4", not_ready())],
        ),
        // zenvoy's proxy, on the ports allocated to the Service's ports.
        slice(
            "zenvoy-web",
            "web",
            ZENVOY,
            &[("http", 15001), ("admin", 15002)],
            &[("127.0.0.1", ready())],
        ),
        // Not the Service's: another namespace, another Service.
        slice_in(
            "other",
            "web-fake",
            "web",
            KUBE,
            &[("http", 8080)],
            &[("127.9.9.9", ready())],
        ),
        slice(
            "api-fake",
            "api",
            KUBE,
            &[("http", 8080)],
            &[("127.9.9.8", ready())],
        ),
    ];
    let ports = service_ports(&services, &slices);
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(
        endpoints_of(&ports, "web", 80),
        Some(vec![addr("127.0.0.1:15001"), addr("127.1.2.3:8080")])
    );
    assert_eq!(
        endpoints_of(&ports, "web", 9000),
        Some(vec![addr("127.0.0.1:15002"), addr("127.1.2.3:9090")])
    );
    let http = ports.iter().find(|p| p.port == 80).expect("port 80");
    assert_eq!(
        (
            http.namespace.as_str(),
            http.name.as_str(),
            http.protocol.as_str()
        ),
        ("shop", "http", "TCP")
    );
    assert_eq!(http.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
}

#[test]
fn an_unnamed_port_matches_only_unnamed_slice_ports() {
    let services = [service("shop", "db", "10.96.0.11", &[("", 5432)])];
    let unnamed = slice(
        "db-fake",
        "db",
        KUBE,
        &[("", 5432)],
        &[("127.1.2.3", ready())],
    );
    let mut empty_name = slice(
        "zenvoy-db",
        "db",
        ZENVOY,
        &[("", 15001)],
        &[("127.0.0.1", ready())],
    );
    empty_name["ports"][0]["name"] = json!("");
    let named = slice(
        "db-other",
        "db",
        KUBE,
        &[("pg", 6432)],
        &[("127.1.2.5", ready())],
    );
    let ports = service_ports(&services, &[unnamed, empty_name, named]);
    assert_eq!(
        endpoints_of(&ports, "db", 5432),
        Some(vec![addr("127.0.0.1:15001"), addr("127.1.2.3:5432")])
    );
}

#[test]
fn readiness_as_kube_proxy_reads_it() {
    let services = [service("shop", "web", "10.96.0.10", &[("http", 80)])];
    let no_conditions = json!({});
    let ports = service_ports(
        &services,
        &[slice(
            "web-fake",
            "web",
            KUBE,
            &[("http", 8080)],
            &[
                ("127.1.2.1", no_conditions),
                ("127.1.2.2", not_ready()),
                ("127.1.2.3", terminating()),
            ],
        )],
    );
    // Absent conditions read as ready; a terminating endpoint is not used beside a ready one.
    assert_eq!(
        endpoints_of(&ports, "web", 80),
        Some(vec![addr("127.1.2.1:8080")])
    );
    // With none ready, the serving terminating ones are used.
    let ports = service_ports(
        &services,
        &[slice(
            "web-fake",
            "web",
            KUBE,
            &[("http", 8080)],
            &[("127.1.2.2", not_ready()), ("127.1.2.3", terminating())],
        )],
    );
    assert_eq!(
        endpoints_of(&ports, "web", 80),
        Some(vec![addr("127.1.2.3:8080")])
    );
    // With none serving either: no endpoints (refused), not an absent port.
    let ports = service_ports(
        &services,
        &[slice(
            "web-fake",
            "web",
            KUBE,
            &[("http", 8080)],
            &[("127.1.2.2", not_ready())],
        )],
    );
    assert_eq!(endpoints_of(&ports, "web", 80), Some(vec![]));
}

#[test]
fn the_same_endpoint_in_two_slices_is_one() {
    let services = [service("shop", "web", "10.96.0.10", &[("http", 80)])];
    let a = slice(
        "web-a",
        "web",
        KUBE,
        &[("http", 8080)],
        &[("127.1.2.3", ready())],
    );
    let b = slice(
        "web-b",
        "web",
        KUBE,
        &[("http", 8080)],
        &[("127.1.2.3", ready()), ("127.1.2.4", ready())],
    );
    let ports = service_ports(&services, &[a, b]);
    assert_eq!(
        endpoints_of(&ports, "web", 80),
        Some(vec![addr("127.1.2.3:8080"), addr("127.1.2.4:8080")])
    );
}

#[test]
fn services_kube_proxy_does_not_program() {
    let mut headless = service("shop", "headless", "None", &[("http", 80)]);
    headless["spec"]["clusterIP"] = json!("None");
    let mut no_ip = service("shop", "pending", "", &[("http", 80)]);
    no_ip["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("clusterIP");
    let mut external = service("shop", "external", "10.96.0.12", &[("http", 80)]);
    external["spec"]["type"] = json!("ExternalName");
    let v6 = service("shop", "v6", "fd00::10", &[("http", 80)]);
    let mut sctp_and_udp = service("shop", "dns", "10.96.0.13", &[("dns", 53), ("x", 99)]);
    sctp_and_udp["spec"]["ports"][0]["protocol"] = json!("UDP");
    sctp_and_udp["spec"]["ports"][1]["protocol"] = json!("ICMP");
    let mut v6_slice = slice(
        "dns-v6",
        "dns",
        KUBE,
        &[("dns", 53)],
        &[("fd00::1", ready())],
    );
    v6_slice["addressType"] = json!("IPv6");
    let mut udp_slice = slice(
        "dns-fake",
        "dns",
        KUBE,
        &[("dns", 53)],
        &[("127.1.2.3", ready())],
    );
    udp_slice["ports"][0]["protocol"] = json!("UDP");
    let ports = service_ports(
        &[headless, no_ip, external, v6, sctp_and_udp],
        &[v6_slice, udp_slice],
    );
    assert_eq!(ports.len(), 1, "only dns's UDP port: {ports:?}");
    assert_eq!(ports[0].protocol, "UDP");
    assert_eq!(ports[0].endpoints, vec![addr("127.1.2.3:53")]);
}

/// One Service parked behind two endpoints, one with none.
fn model() -> Vec<ServicePort> {
    vec![
        ServicePort {
            namespace: "db".into(),
            service: "postgres".into(),
            name: "tcp".into(),
            protocol: "TCP".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
            port: 5432,
            endpoints: vec![addr("127.1.2.3:5432"), addr("127.1.2.4:5432")],
        },
        ServicePort {
            namespace: "web".into(),
            service: "api".into(),
            name: String::new(),
            protocol: "TCP".into(),
            cluster_ip: Ipv4Addr::new(10, 96, 0, 11),
            port: 80,
            endpoints: Vec::new(),
        },
    ]
}

/// Loaded as is with `nft -f` (nftables 1.0.6) in a namespace when this was written: a
/// client there reached both endpoints of 10.96.0.10:5432 at random and was refused at once
/// on 10.96.0.11:80 and on 10.96.0.10:5433.
const GOLDEN: &str = r#"table ip zenvoy_kube_proxy {}
delete table ip zenvoy_kube_proxy
table ip zenvoy_kube_proxy {
  chain reject-chain {
    meta l4proto tcp reject with tcp reset
    reject
  }
  chain no-endpoint-services {
    ip daddr 10.96.0.11 tcp dport 80 goto reject-chain comment "web/api:80/TCP has no endpoints"
  }
  chain cluster-ips-check {
    ip daddr { 10.96.0.10, 10.96.0.11 } goto reject-chain comment "a port no Service exposes"
  }
  chain filter-input {
    type filter hook input priority -110; policy accept;
    ct state new jump no-endpoint-services
  }
  chain filter-forward {
    type filter hook forward priority -110; policy accept;
    ct state new jump no-endpoint-services
  }
  chain filter-output {
    type filter hook output priority -110; policy accept;
    ct state new jump no-endpoint-services
  }
  chain filter-output-post-dnat {
    type filter hook output priority -90; policy accept;
    ct state new jump cluster-ips-check
  }
  chain nat-prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump services
  }
  chain nat-output {
    type nat hook output priority -100; policy accept;
    jump services
  }
  chain services {
    ip daddr 10.96.0.10 tcp dport 5432 goto svc-db/postgres/tcp/5432 comment "db/postgres:5432/TCP (tcp)"
  }
  chain svc-db/postgres/tcp/5432 {
    numgen random mod 2 vmap { 0 : goto ep-db/postgres/tcp/5432/127.1.2.3/5432, 1 : goto ep-db/postgres/tcp/5432/127.1.2.4/5432 }
  }
  chain ep-db/postgres/tcp/5432/127.1.2.3/5432 {
    meta l4proto tcp dnat to 127.1.2.3:5432
  }
  chain ep-db/postgres/tcp/5432/127.1.2.4/5432 {
    meta l4proto tcp dnat to 127.1.2.4:5432
  }
}
"#;

#[test]
fn render_replaces_the_whole_table_in_one_file() {
    assert_eq!(render(&model()), GOLDEN);
}

#[test]
fn render_of_nothing_still_makes_the_table() {
    let text = render(&[]);
    assert!(text.starts_with(
        "table ip zenvoy_kube_proxy {}\ndelete table ip zenvoy_kube_proxy\ntable ip zenvoy_kube_proxy {\n"
    ));
    // No empty anonymous set (nft rejects `{ }`), no DNAT, chains still there.
    assert!(!text.contains("ip daddr {"), "{text}");
    assert!(!text.contains("dnat to"), "{text}");
    assert!(text.contains("  chain services {\n  }\n"), "{text}");
    assert!(text.contains("  chain nat-output {\n"), "{text}");
    assert_eq!(
        render_delete(),
        "table ip zenvoy_kube_proxy {}\ndelete table ip zenvoy_kube_proxy\n"
    );
}

#[test]
fn render_depends_only_on_the_state() {
    let services = [
        service("shop", "web", "10.96.0.10", &[("http", 80)]),
        service("db", "postgres", "10.96.0.9", &[("tcp", 5432)]),
    ];
    let slices = [
        slice(
            "web-fake",
            "web",
            KUBE,
            &[("http", 8080)],
            &[("127.1.2.4", ready()), ("127.1.2.3", ready())],
        ),
        slice_in(
            "db",
            "postgres-fake",
            "postgres",
            KUBE,
            &[("tcp", 5432)],
            &[("127.1.2.5", ready())],
        ),
    ];
    let a = render(&service_ports(&services, &slices));
    let mut rev_services = services.to_vec();
    rev_services.reverse();
    let mut rev_slices = slices.to_vec();
    rev_slices.reverse();
    rev_slices[1]["endpoints"]
        .as_array_mut()
        .expect("endpoints")
        .reverse();
    let b = render(&service_ports(&rev_services, &rev_slices));
    assert_eq!(a, b);
    // Numeric address order, db before shop.
    assert!(a.contains("ip daddr { 10.96.0.9, 10.96.0.10 }"), "{a}");
    let db = a.find("svc-db/postgres").expect("db's chain");
    let web = a.find("svc-shop/web").expect("web's chain");
    assert!(db < web, "{a}");
}

#[test]
fn long_names_fit_a_comment() {
    let long = "a".repeat(63);
    let port = ServicePort {
        namespace: long.clone(),
        service: long.clone(),
        name: long,
        ..model()[1].clone()
    };
    let text = render(&[port]);
    for line in text.lines().filter(|l| l.contains("comment")) {
        let c = line
            .split("comment \"")
            .nth(1)
            .expect("a comment")
            .trim_end_matches('"');
        assert!(c.len() <= COMMENT_MAX, "{c:?}");
    }
}

#[tokio::test]
async fn the_cache_keeps_the_newest_state_of_each_object() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    // Subscribed before the writes and listed after some of them, as `start` does: the
    // changes the list already holds come again and change nothing.
    let mut changes = api.changes();
    api.put(service("shop", "web", "10.96.0.10", &[("http", 80)]))?;
    api.put(slice(
        "web-fake",
        "web",
        KUBE,
        &[("http", 8080)],
        &[("127.1.2.3", ready())],
    ))?;
    let mut cache = Cache::default();
    for o in api.list("v1", "Service", None) {
        Cache::insert_listed(&mut cache.services, o);
    }
    for o in api.list("discovery.k8s.io/v1", "EndpointSlice", None) {
        Cache::insert_listed(&mut cache.slices, o);
    }
    api.put(slice(
        "zenvoy-web",
        "web",
        ZENVOY,
        &[("http", 15001)],
        &[("127.0.0.1", ready())],
    ))?;
    api.put(slice(
        "web-fake",
        "web",
        KUBE,
        &[("http", 8080)],
        &[("127.1.2.4", ready())],
    ))?;
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "unrelated", "namespace": "shop"}}))?;
    let mut relevant = Vec::new();
    while let Ok(c) = changes.try_recv() {
        relevant.push(cache.apply(&c));
    }
    assert_eq!(relevant, [true, true, true, true, false]);
    assert_eq!(
        endpoints_of(&cache.service_ports(), "web", 80),
        Some(vec![addr("127.0.0.1:15001"), addr("127.1.2.4:8080")])
    );

    // Deleted and made again: the new object counts.
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "zenvoy-web");
    api.delete("v1", "Service", "shop", "web");
    while let Ok(c) = changes.try_recv() {
        cache.apply(&c);
    }
    assert!(cache.service_ports().is_empty());
    api.put(service("shop", "web", "10.96.0.20", &[("http", 80)]))?;
    while let Ok(c) = changes.try_recv() {
        cache.apply(&c);
    }
    let ports = cache.service_ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 20));
    assert_eq!(ports[0].endpoints, vec![addr("127.1.2.4:8080")]);
    Ok(())
}

/// A "pod" on `addr`: to each connection, once it has sent a byte, it writes its own
/// address and closes it.
async fn named_listener(addr: &str) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut byte = [0u8; 1];
                if matches!(s.read(&mut byte).await, Ok(1)) {
                    let _ = s.write_all(local.to_string().as_bytes()).await;
                }
            });
        }
    });
    Ok(local)
}

/// Ask who answers on `s`: send a byte, read the name to the end.
async fn ask(what: &str, s: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    let answer = tokio::time::timeout(BOUND, async {
        s.write_all(b"?").await?;
        let mut name = String::new();
        s.read_to_string(&mut name).await?;
        anyhow::Ok(name)
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {BOUND:?} waiting for {what}"))?;
    answer.map_err(|e| anyhow::anyhow!("{what}: {e:#}"))
}

async fn connect(to: &str) -> anyhow::Result<tokio::net::TcpStream> {
    tokio::time::timeout(BOUND, tokio::net::TcpStream::connect(to))
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {BOUND:?} connecting to {to}"))?
        .map_err(|e| anyhow::anyhow!("connecting to {to}: {e}"))
}

/// Who answers a new connection to `to`.
async fn who(to: &str) -> anyhow::Result<String> {
    let mut s = connect(to).await?;
    ask(&format!("an answer from {to}"), &mut s).await
}

/// A new connection to `to` is refused at once.
async fn refused(to: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(BOUND, tokio::net::TcpStream::connect(to)).await {
        Err(_) => {
            anyhow::bail!("connecting to {to}: neither refused nor accepted within {BOUND:?}")
        }
        Ok(Ok(_)) => anyhow::bail!("connecting to {to}: accepted, expected a refusal"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Ok(Err(e)) => anyhow::bail!("connecting to {to}: {e}, expected a refusal"),
    }
}

/// Service `shop/web`'s slice from the EndpointSlice controller: the pods on 8080.
fn pods(endpoints: &[(&str, Value)]) -> Value {
    slice("web-fake", "web", KUBE, &[("http", 8080)], endpoints)
}

/// zenvoy's slice for `shop/web`: the proxy on the port allocated to `http`.
fn zenvoy(endpoints: &[(&str, Value)]) -> Value {
    slice("zenvoy-web", "web", ZENVOY, &[("http", 15001)], endpoints)
}

#[test]
fn dnat_follows_the_slices_in_a_namespace() {
    let test = "kube_proxy::tests::dnat_follows_the_slices_in_a_namespace";
    if !available(test) {
        return;
    }
    let node = Netns::new("kp").expect("a network namespace");
    node.block_on(2, dnat_follows_the_slices(&node))
        .expect("a tokio runtime in the namespace")
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
}

async fn dnat_follows_the_slices(node: &Netns) -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    // The whole test runs inside the namespace: these bind there.
    let pod = named_listener("127.77.0.1:8080").await?;
    let proxy = named_listener("127.77.0.2:15001").await?;
    let kp = KubeProxy::start(node, &api).await?;
    let vip = "10.96.0.10:80";

    // Awake: the EndpointSlice controller's slice lists the pod.
    api.put(service("shop", "web", "10.96.0.10", &[("http", 80)]))?;
    api.put(pods(&[("127.77.0.1", ready())]))?;
    kp.synced(&api, BOUND).await?;
    assert_eq!(kp.endpoints("shop", "web", 80), Some(vec![pod]));
    assert_eq!(who(vip).await?, pod.to_string());

    // Parking: zenvoy's slice first, then the pods go; both meanwhile, at random.
    api.put(zenvoy(&[("127.77.0.2", ready())]))?;
    kp.synced(&api, BOUND).await?;
    assert_eq!(kp.endpoints("shop", "web", 80), Some(vec![pod, proxy]));
    let mut answered = BTreeSet::new();
    for _ in 0..200 {
        answered.insert(who(vip).await?);
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered.len(), 2, "only {answered:?} answered {vip}");
    api.put(pods(&[]))?;
    kp.synced(&api, BOUND).await?;
    assert_eq!(kp.endpoints("shop", "web", 80), Some(vec![proxy]));
    assert_eq!(who(vip).await?, proxy.to_string());

    // A connection made now keeps its endpoint when the rules change.
    let mut held = connect(vip).await?;

    // Woken: pods back (one not ready yet), zenvoy's slice emptied.
    api.put(pods(&[
        ("127.77.0.1", ready()),
        ("127.77.0.3", not_ready()),
    ]))?;
    api.put(zenvoy(&[]))?;
    kp.synced(&api, BOUND).await?;
    assert_eq!(kp.endpoints("shop", "web", 80), Some(vec![pod]));
    assert_eq!(who(vip).await?, pod.to_string());
    let name = ask(
        "an answer on the connection held across the change",
        &mut held,
    )
    .await?;
    assert_eq!(name, proxy.to_string(), "the held connection moved");

    // No endpoints: refused at once; a port the Service lacks too.
    api.put(pods(&[]))?;
    kp.synced(&api, BOUND).await?;
    assert_eq!(kp.endpoints("shop", "web", 80), Some(vec![]));
    refused(vip).await?;
    refused("10.96.0.10:81").await?;

    // A change to anything else loads nothing, and is synced all the same.
    let loads = kp.loads();
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "unrelated", "namespace": "shop"}}))?;
    kp.synced(&api, BOUND).await?;
    assert_eq!(kp.loads(), loads);

    api.delete("v1", "Service", "shop", "web");
    kp.synced(&api, BOUND).await?;
    assert_eq!(kp.endpoints("shop", "web", 80), None);

    // Dropped: its table is gone.
    drop(kp);
    let listed = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            node.name(),
            "nft",
            "list",
            "table",
            "ip",
            TABLE,
        ])
        .output()?;
    anyhow::ensure!(
        !listed.status.success(),
        "table {TABLE} is still there after the drop:\n{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    Ok(())
}
