//! `inCluster`: a parked Service keeps its name. A client in the cluster connects to the
//! Service's virtual IP, as it always has; a kube-proxy stand-in programs real DNAT
//! rules in a network namespace from the EndpointSlices (the pods' and zenvoy's), so
//! while the Service is parked its virtual IP leads to the proxies (held, woken, relayed)
//! and once it is awake straight to its pods. Everything (fake API server, kubelet, pods,
//! controller, holder, Envoy, clients) runs in that namespace, the "node".
//!
//! Privileged (a network namespace, nftables): skipped with the reason otherwise, and a
//! failure under `ZENVOY_REQUIRE_PRIVILEGED=1`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;
use zenvoy_e2e::holder_client::echo_pattern;
use zenvoy_e2e::kube_stack::{self, service, workload, KubeOptions, KubeStack, OPT_IN};
use zenvoy_fake_kube::kube_proxy::{self, KubeProxy};
use zenvoy_test_support::netns::Netns;
use zenvoy_test_support::{free_port, wait};

const BOUND: Duration = Duration::from_secs(40);
const VIP: &str = "10.96.0.10";
const SERVICE_PORT: u16 = 5432;
const FIRST_PROXY_PORT: u16 = 21000;
const PROXY: &str = "127.0.0.1";

fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("ip"), SERVICE_PORT)
}

fn proxy() -> SocketAddr {
    SocketAddr::new(PROXY.parse().expect("ip"), FIRST_PROXY_PORT)
}

async fn echo(addr: SocketAddr, seed: u64, stack: &KubeStack) -> anyhow::Result<()> {
    let s = TcpStream::connect(addr).await.map_err(|e| {
        anyhow::anyhow!("connecting to {addr} (echo {seed}): {e}\n{}", stack.logs())
    })?;
    tokio::time::timeout(BOUND, echo_pattern(s, seed, 64 * 1024))
        .await
        .map_err(|_| anyhow::anyhow!("no echo through {addr} within {BOUND:?}\n{}", stack.logs()))?
}

/// The controller's writes of the Service's slice ("slice" written, "deleted") and of
/// the workload's scale ("scale"), in the order the API took them.
fn writes(stack: &KubeStack) -> Vec<&'static str> {
    stack
        .api
        .requests()
        .iter()
        .filter(|r| r.is_write() && r.status < 300)
        .filter_map(|r| {
            if r.method == "DELETE" && r.path.ends_with("/endpointslices/zenvoy-db") {
                Some("deleted")
            } else if r.path.ends_with("/endpointslices/zenvoy-db")
                || (r.method == "POST" && r.path.ends_with("/endpointslices"))
            {
                Some("slice")
            } else if r.path.ends_with("/deployments/db/scale") {
                Some("scale")
            } else {
                None
            }
        })
        .collect()
}

/// The controller's own EndpointSlice for the Service `db`.
fn zenvoy_slice(stack: &KubeStack) -> Option<serde_json::Value> {
    stack.api.get(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "default",
        "zenvoy-db",
    )
}

async fn holder_metric(stack: &KubeStack, series: &str) -> anyhow::Result<f64> {
    let page =
        zenvoy_test_support::http_get(&format!("http://{}/metrics", stack.holder_admin)).await?;
    Ok(zenvoy_test_support::metric_value(&page, series).unwrap_or(0.0))
}

#[test]
fn a_parked_service_keeps_its_name() -> anyhow::Result<()> {
    const TEST: &str = "a_parked_service_keeps_its_name";
    if !kube_proxy::available(TEST) {
        return Ok(());
    }
    let node = Netns::new("node")?;
    node.block_on(2, keeps_its_name(&node))?
}

fn options() -> KubeOptions {
    KubeOptions {
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 30s".into()],
        extra_config: vec![
            "inCluster:".into(),
            "  proxy: zenvoy-system/zenvoy-proxy".into(),
            format!("  listen: {PROXY}"),
            format!("  ports: {FIRST_PROXY_PORT}-{}", FIRST_PROXY_PORT + 99),
            "  settle: 1s".into(),
        ],
        ..KubeOptions::default()
    }
}

async fn keeps_its_name(node: &Netns) -> anyhow::Result<()> {
    let mut stack = KubeStack::start(options(), 1).await?;
    for o in kube_stack::proxy_objects("zenvoy-system", PROXY) {
        stack.api.put(o)?;
    }
    let pod_port = free_port()?.port();
    stack
        .api
        .put(workload("Deployment", "default", "db", 0, pod_port, &[]))?;
    let mut svc = service("default", "db", pod_port, &OPT_IN);
    svc["spec"]["clusterIP"] = json!(VIP);
    svc["spec"]["ports"][0]["port"] = json!(SERVICE_PORT);
    stack.api.put(svc)?;
    let kp = KubeProxy::start(node, &stack.api).await?;

    // Parked: the virtual IP leads to the proxy, on the Service's allocated port.
    kp.wait_until(
        "the parked Service's VIP to lead to the proxy",
        BOUND,
        |kp| (kp.endpoints("default", "db", SERVICE_PORT)? == [proxy()]).then_some(()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", kp.ruleset(), stack.logs()))?;
    let slice =
        zenvoy_slice(&stack).ok_or_else(|| anyhow::anyhow!("no zenvoy-db EndpointSlice"))?;
    assert_eq!(
        slice["ports"][0]["name"], "tcp",
        "named as the Service port"
    );
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "db"
    );

    // (Envoy's listener for it comes over LDS: wait for it, as a client arriving in the
    // first second of a fresh install would not; docs/kubernetes.md says so.)
    // Asked of Envoy's admin, not by connecting: a connection would wake the Service.
    let listening = wait::until("Envoy's listener for the Service's name", BOUND, || async {
        Ok(stack.envoy.in_cluster_listener("db.default").await.ok())
    })
    .await?;
    assert_eq!(listening, proxy());

    // 1: a client of the VIP is held, the workload woken, the echo byte-exact.
    assert_eq!(stack.replicas("Deployment", "default", "db"), Some(0));
    echo(vip(), 1, &stack).await?;
    assert_eq!(stack.replicas("Deployment", "default", "db"), Some(1));
    let relayed = "zenvoy_holder_relayed_total{service=\"db.default\"}";
    let via_holder = holder_metric(&stack, relayed).await?;
    assert!(via_holder >= 1.0, "the first client was held and relayed");

    // 2: awake, the controller's slice lists nothing: the VIP leads to the pod alone, and
    // new connections do not pass the holder.
    let pod = kp
        .wait_until(
            "the awake Service's VIP to lead to its pod alone",
            BOUND,
            |kp| {
                let eps = kp.endpoints("default", "db", SERVICE_PORT)?;
                (eps.len() == 1 && eps[0] != proxy()).then(|| eps[0])
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", kp.ruleset(), stack.logs()))?;
    assert_eq!(pod.port(), pod_port);
    wait::until(
        "zenvoy's slice to go once the Service is awake",
        BOUND,
        || async { Ok(zenvoy_slice(&stack).is_none().then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.logs()))?;
    echo(vip(), 2, &stack).await?;
    assert_eq!(
        holder_metric(&stack, relayed).await?,
        via_holder,
        "straight to the pod, not through the holder"
    );

    // Idle: the slice returns before the replicas reach 0, and a connection arriving
    // during the park is served.
    kp.wait_until(
        "the parking Service's VIP to lead to the proxy again",
        BOUND,
        |kp| {
            kp.endpoints("default", "db", SERVICE_PORT)?
                .contains(&proxy())
                .then_some(())
        },
    )
    .await?;
    echo(vip(), 3, &stack).await?;
    stack
        .wait_replicas("Deployment", "default", "db", 0, BOUND)
        .await?;
    // Between the last scale-up and the scale to 0: the slice deleted (awake), then
    // written back with the proxy (the park's first phase), both before the scale-down.
    let w = writes(&stack);
    let down = w.iter().rposition(|k| *k == "scale");
    let up = down.and_then(|d| w[..d].iter().rposition(|k| *k == "scale"));
    let (Some(up), Some(down)) = (up, down) else {
        anyhow::bail!("no scale-up and scale-down in {w:?}");
    };
    let deleted = w[up..down].iter().position(|k| *k == "deleted");
    assert!(
        deleted.is_some_and(|d| w[up + d..down].contains(&"slice")),
        "the slice was deleted and written back between the wake and the park: {w:?}"
    );
    assert_eq!(
        stack.replicas("Deployment", "default", "db"),
        Some(0),
        "parked again"
    );
    let slice =
        zenvoy_slice(&stack).ok_or_else(|| anyhow::anyhow!("no zenvoy-db EndpointSlice"))?;
    assert_eq!(
        slice["endpoints"][0]["addresses"][0], PROXY,
        "parked: the proxy in the slice"
    );

    // 3: a restarted controller keeps the Service's port (stored in the API), and the
    // VIP still wakes it.
    assert_eq!(
        stored_port(&stack, "db.default"),
        Some(u64::from(FIRST_PROXY_PORT))
    );
    stack.restart_controller(0).await?;
    kp.synced(&stack.api, BOUND).await?;
    let slice =
        zenvoy_slice(&stack).ok_or_else(|| anyhow::anyhow!("no zenvoy-db EndpointSlice"))?;
    assert_eq!(
        slice["ports"][0]["port"],
        json!(FIRST_PROXY_PORT),
        "port kept"
    );
    assert_eq!(
        stack.envoy.in_cluster_listener("db.default").await?,
        proxy()
    );
    echo(vip(), 4, &stack).await?;
    assert_eq!(stack.replicas("Deployment", "default", "db"), Some(1));

    // 4: opted out, zenvoy's slice is deleted and the VIP leads to the pod alone.
    let mut svc = service("default", "db", pod_port, &[]);
    svc["spec"]["clusterIP"] = json!(VIP);
    svc["spec"]["ports"][0]["port"] = json!(SERVICE_PORT);
    stack.api.put(svc)?;
    wait::until("zenvoy's slice to go after the opt-out", BOUND, || async {
        Ok(zenvoy_slice(&stack).is_none().then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.logs()))?;
    kp.wait_until(
        "the opted-out Service's VIP to lead to its pod",
        BOUND,
        |kp| {
            let eps = kp.endpoints("default", "db", SERVICE_PORT)?;
            (eps.len() == 1 && eps[0] != proxy()).then_some(())
        },
    )
    .await?;
    echo(vip(), 5, &stack).await?;

    rbac_allows_every_slice_write(&stack)
}

#[test]
fn a_two_port_service_wakes_from_either_port() -> anyhow::Result<()> {
    const TEST: &str = "a_two_port_service_wakes_from_either_port";
    if !kube_proxy::available(TEST) {
        return Ok(());
    }
    let node = Netns::new("node2")?;
    node.block_on(2, two_ports(&node))?
}

const ALT_PORT: u16 = 6432;

fn alt_vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().expect("ip"), ALT_PORT)
}

fn proxy_at(port: u16) -> SocketAddr {
    SocketAddr::new(PROXY.parse().expect("ip"), port)
}

/// The proxy port stored for zenvoy's service `service` (the `zenvoy-ports` ConfigMap).
fn stored_port(stack: &KubeStack, service: &str) -> Option<u64> {
    stack
        .api
        .get("v1", "ConfigMap", kube_stack::NAMESPACE, "zenvoy-ports")?["data"][service]
        .as_str()?
        .parse()
        .ok()
}

/// The proxy port of zenvoy's slice `name`.
fn slice_port(stack: &KubeStack, name: &str) -> Option<u64> {
    stack
        .api
        .get("discovery.k8s.io/v1", "EndpointSlice", "default", name)?["ports"][0]["port"]
        .as_u64()
}

/// Wait until each of the Service's two ports leads where `want` says.
async fn lead(
    kp: &KubeProxy,
    stack: &KubeStack,
    what: &str,
    want: [SocketAddr; 2],
) -> anyhow::Result<()> {
    kp.wait_until(what, BOUND, |kp| {
        let first = kp.endpoints("default", "db", SERVICE_PORT)?;
        let second = kp.endpoints("default", "db", ALT_PORT)?;
        (first == [want[0]] && second == [want[1]]).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", kp.ruleset(), stack.logs()))
}

/// db parks (0 replicas), and then both its ports lead to `proxies` (`where_` says what
/// they are, for the wait's error).
async fn parks_leading_to(
    kp: &KubeProxy,
    stack: &KubeStack,
    where_: &str,
    proxies: [SocketAddr; 2],
) -> anyhow::Result<()> {
    stack
        .wait_replicas("Deployment", "default", "db", 0, BOUND)
        .await?;
    lead(
        kp,
        stack,
        &format!("both parked ports to lead to {where_}"),
        proxies,
    )
    .await
}

async fn two_ports(node: &Netns) -> anyhow::Result<()> {
    let mut stack = KubeStack::start(options(), 1).await?;
    for o in kube_stack::proxy_objects("zenvoy-system", PROXY) {
        stack.api.put(o)?;
    }
    // A Service that comes and goes first, so db's ports are not the first of the range:
    // a restarted controller that allocated afresh would move them.
    let decoy_port = free_port()?.port();
    stack.api.put(workload(
        "Deployment",
        "default",
        "decoy",
        0,
        decoy_port,
        &[],
    ))?;
    stack
        .api
        .put(service("default", "decoy", decoy_port, &OPT_IN))?;
    wait::until("the decoy's port to be stored", BOUND, || async {
        Ok(stored_port(&stack, "decoy.default"))
    })
    .await?;

    // One pod serving two ports; a Service with a port on each.
    let (pod_port, alt_pod_port) = (free_port()?.port(), free_port()?.port());
    let mut w = workload("Deployment", "default", "db", 0, pod_port, &[]);
    w["spec"]["template"]["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": pod_port}, {"containerPort": alt_pod_port}]);
    stack.api.put(w)?;
    let mut svc = service("default", "db", pod_port, &OPT_IN);
    svc["spec"]["clusterIP"] = json!(VIP);
    svc["spec"]["ports"] = json!([
        {"name": "sql", "port": SERVICE_PORT, "targetPort": pod_port, "protocol": "TCP"},
        {"name": "alt", "port": ALT_PORT, "targetPort": alt_pod_port, "protocol": "TCP"},
    ]);
    stack.api.put(svc)?;
    let kp = KubeProxy::start(node, &stack.api).await?;

    // Parked: each port of the Service leads to the proxies, on a proxy port of its own.
    let proxies = [
        proxy_at(FIRST_PROXY_PORT + 1),
        proxy_at(FIRST_PROXY_PORT + 2),
    ];
    lead(
        &kp,
        &stack,
        "both parked ports to lead to the proxy",
        proxies,
    )
    .await?;
    stack
        .api
        .delete("v1", "Service", "default", "decoy")
        .ok_or_else(|| anyhow::anyhow!("no decoy Service to delete"))?;
    wait::until("the decoy's port to be released", BOUND, || async {
        Ok(stored_port(&stack, "decoy.default").is_none().then_some(()))
    })
    .await?;
    for service in ["db.default", "db.default_alt"] {
        wait::until(
            &format!("Envoy's listener for {service}"),
            BOUND,
            || async { Ok(stack.envoy.in_cluster_listener(service).await.ok()) },
        )
        .await?;
    }

    // The second port wakes it: held, woken, relayed byte-exact to the pod's second port.
    assert_eq!(stack.replicas("Deployment", "default", "db"), Some(0));
    echo(alt_vip(), 11, &stack).await?;
    assert_eq!(stack.replicas("Deployment", "default", "db"), Some(1));
    let relayed = "zenvoy_holder_relayed_total{service=\"db.default_alt\"}";
    assert!(
        holder_metric(&stack, relayed).await? >= 1.0,
        "held and relayed for the second port"
    );
    let hosts = wait::until("Envoy's alt cluster to list the pod", BOUND, || async {
        let hosts = stack.envoy.cluster_hosts("db.default_alt").await?;
        Ok((hosts.len() == 1 && hosts[0].ip() != proxies[1].ip()).then_some(hosts))
    })
    .await?;
    assert_eq!(
        hosts[0].port(),
        alt_pod_port,
        "the second port's upstream is the pod's second port"
    );
    // Both ports are awake with one wake: each leads to the pod.
    let pod_ip = hosts[0].ip();
    lead(
        &kp,
        &stack,
        "both awake ports to lead to the pod",
        [
            SocketAddr::new(pod_ip, pod_port),
            SocketAddr::new(pod_ip, alt_pod_port),
        ],
    )
    .await?;
    echo(vip(), 12, &stack).await?;
    for slice in ["zenvoy-db", "zenvoy-db.alt"] {
        anyhow::ensure!(
            slice_port(&stack, slice).is_none(),
            "awake: {slice} is gone"
        );
    }

    // Restarted while awake (no slice of zenvoy's holds a port now), the controller
    // keeps both ports: when the Service parks, its slices come back on them.
    stack.restart_controller(0).await?;
    parks_leading_to(&kp, &stack, "the proxy again", proxies).await?;
    assert_eq!(
        (
            slice_port(&stack, "zenvoy-db"),
            slice_port(&stack, "zenvoy-db.alt")
        ),
        (
            Some(u64::from(FIRST_PROXY_PORT + 1)),
            Some(u64::from(FIRST_PROXY_PORT + 2))
        ),
        "every allocated port kept"
    );
    assert_eq!(
        stack.envoy.in_cluster_listener("db.default_alt").await?,
        proxies[1]
    );
    // Now the first port wakes it.
    echo(vip(), 13, &stack).await?;
    assert_eq!(stack.replicas("Deployment", "default", "db"), Some(1));
    echo(alt_vip(), 14, &stack).await?;

    // The stored ports lost while awake (the ConfigMap deleted, no slice holds a port): a
    // restarted controller allocates afresh from the start of the range, so the first
    // port moves to where nothing is and the second to where the first was. Envoy still
    // has the old listeners; it must take the moved ones in one update (an update that
    // gave a listener the port another one still holds would be refused), and each port
    // must lead to its own cluster.
    for slice in ["zenvoy-db", "zenvoy-db.alt"] {
        wait::until(&format!("awake: {slice} to be gone"), BOUND, || async {
            Ok(slice_port(&stack, slice).is_none().then_some(()))
        })
        .await?;
    }
    stack
        .api
        .delete("v1", "ConfigMap", kube_stack::NAMESPACE, "zenvoy-ports")
        .ok_or_else(|| anyhow::anyhow!("no zenvoy-ports ConfigMap to delete"))?;
    stack.restart_controller(0).await?;
    let moved = [proxy_at(FIRST_PROXY_PORT), proxy_at(FIRST_PROXY_PORT + 1)];
    for (service, at) in [("db.default", moved[0]), ("db.default_alt", moved[1])] {
        wait::until(
            &format!("Envoy's listener for {service} on {at}"),
            BOUND,
            || async {
                Ok((stack.envoy.in_cluster_listener(service).await.ok() == Some(at)).then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", stack.logs()))?;
    }
    let nacks = stack.controllers[0]
        .metric("zenvoy_xds_nacks_total{type=\"lds\"}")
        .await?;
    assert_eq!(nacks, 0.0, "Envoy took the moved listeners");
    parks_leading_to(&kp, &stack, "the proxy on their new ports", moved).await?;
    // The second port, now where the first was, wakes it and reaches its own cluster.
    let alt_before = holder_metric(&stack, relayed).await?;
    echo(alt_vip(), 15, &stack).await?;
    assert!(
        holder_metric(&stack, relayed).await? > alt_before,
        "held and relayed for the second port, on its new proxy port"
    );
    Ok(())
}

/// `deploy/base/rbac.yaml` allows every request the controller made here, and its
/// EndpointSlice writes (granted for this mode only, so the front-door RBAC test skips
/// them) were each used: create, patch, delete.
fn rbac_allows_every_slice_write(stack: &KubeStack) -> anyhow::Result<()> {
    let rules = kube_stack::rbac_rules(
        &zenvoy_test_support::workspace_root().join("deploy/base/rbac.yaml"),
    )?;
    let identity = stack.controllers[0].identity.clone();
    let mut used = std::collections::BTreeSet::new();
    for r in stack.api.requests() {
        if r.token.as_deref() != Some(identity.as_str()) {
            continue;
        }
        let a = kube_stack::access(&r.method, &r.path, &r.query)
            .ok_or_else(|| anyhow::anyhow!("unexpected request {} {}", r.method, r.path))?;
        anyhow::ensure!(
            rules
                .iter()
                .any(|(rule, ns)| kube_stack::allows(rule, *ns, &a, kube_stack::NAMESPACE)),
            "deploy/base/rbac.yaml does not allow {a:?} ({} {}?{})",
            r.method,
            r.path,
            r.query
        );
        if a.resource == "endpointslices" {
            used.insert(a.verb);
        }
    }
    for verb in kube_stack::IN_CLUSTER_SLICE_VERBS {
        anyhow::ensure!(
            used.contains(*verb),
            "the controller never used {verb:?} on endpointslices (used {used:?})"
        );
    }
    Ok(())
}

#[test]
fn an_http_service_keeps_its_name_too() -> anyhow::Result<()> {
    const TEST: &str = "an_http_service_keeps_its_name_too";
    if !kube_proxy::available(TEST) {
        return Ok(());
    }
    let node = Netns::new("node3")?;
    node.block_on(2, http_keeps_its_name(&node))?
}

/// One HTTP/1.1 request to `addr`; the whole answer.
async fn get(addr: SocketAddr, stack: &KubeStack) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}\n{}", stack.logs()))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(BOUND, s.read_to_string(&mut text))
        .await
        .map_err(|_| {
            anyhow::anyhow!("no answer from {addr} within {BOUND:?}\n{}", stack.logs())
        })??;
    Ok(text)
}

async fn http_keeps_its_name(node: &Netns) -> anyhow::Result<()> {
    const HTTP_VIP: &str = "10.96.0.11";
    let opts = KubeOptions {
        http: true,
        ..options()
    };
    let stack = KubeStack::start(opts, 1).await?;
    for o in kube_stack::proxy_objects("zenvoy-system", PROXY) {
        stack.api.put(o)?;
    }
    let pod_port = free_port()?.port();
    stack
        .http_ports
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .insert(pod_port);
    stack
        .api
        .put(workload("Deployment", "default", "site", 0, pod_port, &[]))?;
    let mut svc = service(
        "default",
        "site",
        pod_port,
        &[
            ("zenvoy.io/enabled", "true"),
            ("zenvoy.io/protocol", "http"),
        ],
    );
    svc["spec"]["clusterIP"] = json!(HTTP_VIP);
    svc["spec"]["ports"][0]["port"] = json!(80);
    stack.api.put(svc)?;
    let kp = KubeProxy::start(node, &stack.api).await?;
    let vip = SocketAddr::new(HTTP_VIP.parse()?, 80);

    kp.wait_until(
        "the parked HTTP Service's VIP to lead to the proxy",
        BOUND,
        |kp| (kp.endpoints("default", "site", 80)? == [proxy()]).then_some(()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", kp.ruleset(), stack.logs()))?;
    wait::until(
        "Envoy's listener for the HTTP Service's name",
        BOUND,
        || async { Ok(stack.envoy.in_cluster_listener("site.default").await.ok()) },
    )
    .await?;

    // A request to the parked Service's name, whatever its Host, is answered by its pod.
    assert_eq!(stack.replicas("Deployment", "default", "site"), Some(0));
    let answer = get(vip, &stack).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "first answer: {answer}");
    assert!(
        answer.trim_end().ends_with("hello from zenvoy-echo"),
        "{answer}"
    );
    assert_eq!(stack.replicas("Deployment", "default", "site"), Some(1));

    // Awake: straight to the pod, zenvoy's slice gone.
    kp.wait_until(
        "the awake HTTP Service's VIP to lead to its pod",
        BOUND,
        |kp| {
            let eps = kp.endpoints("default", "site", 80)?;
            (eps.len() == 1 && eps[0].port() == pod_port).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", kp.ruleset(), stack.logs()))?;
    let answer = get(vip, &stack).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "awake answer: {answer}");
    Ok(())
}
