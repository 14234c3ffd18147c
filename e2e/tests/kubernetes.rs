//! Kubernetes mode end to end: a real Envoy, holder and `zenvoy-controller --kubernetes`
//! against the fake API server and simulated kubelet in `zenvoy_fake_kube`
//! (real HTTP, real upstream processes). What must hold is issue #5's list.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zenvoy_e2e::holder_client::{echo_pattern, is_open};
use zenvoy_e2e::kube_stack::{self, service, workload, KubeOptions, KubeStack, OPT_IN};
use zenvoy_test_support::{free_port, wait};

const ECHO_BYTES: u64 = 256 * 1024;

async fn echo_through(stack: &KubeStack, name: &str, seed: u64) -> anyhow::Result<()> {
    let l = stack.listener(name).await?;
    let s = TcpStream::connect(l).await?;
    tokio::time::timeout(Duration::from_secs(40), echo_pattern(s, seed, ECHO_BYTES))
        .await
        .map_err(|_| anyhow::anyhow!("no echo from {name} within 40 s\n{}", stack.logs()))?
}

fn port() -> anyhow::Result<u16> {
    Ok(free_port()?.port())
}

/// 1 and 6: a parked Deployment and a parked StatefulSet wake on a connection through
/// Envoy, serve it byte-exact and park again; a Deployment running at 3 parks with 3
/// remembered and wakes to 3; Services without the opt-in are never scaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_and_parks_deployments_and_statefulsets() -> anyhow::Result<()> {
    let stack = KubeStack::start(KubeOptions::default(), 1).await?;
    let api = &stack.api;
    let (web, db, big, plain, off) = (port()?, port()?, port()?, port()?, port()?);
    api.put(workload("Deployment", "default", "web", 0, web, &[]))?;
    api.put(service("default", "web", web, &OPT_IN))?;
    api.put(workload("StatefulSet", "data", "db", 0, db, &[]))?;
    let mut db_ann = OPT_IN.to_vec();
    db_ann.push(("zenvoy.io/workload", "statefulset/db"));
    api.put(service("data", "db", db, &db_ann))?;
    api.put(workload("Deployment", "default", "big", 3, big, &[]))?;
    api.put(service("default", "big", big, &OPT_IN))?;
    // Not opted in: no annotation, and "false".
    api.put(workload("Deployment", "default", "plain", 0, plain, &[]))?;
    api.put(service(
        "default",
        "plain",
        plain,
        &[("zenvoy.io/listen", "127.0.0.1:0")],
    ))?;
    api.put(workload("Deployment", "default", "off", 2, off, &[]))?;
    api.put(service(
        "default",
        "off",
        off,
        &[("zenvoy.io/enabled", "false")],
    ))?;

    // The running Deployment is found running, idles, and parks remembering 3.
    stack
        .wait_replicas("Deployment", "default", "big", 0, Duration::from_secs(30))
        .await?;
    let big_ann = api
        .get("apps/v1", "Deployment", "default", "big")
        .and_then(|d| {
            d["metadata"]["annotations"]["zenvoy.io/parked-replicas"]
                .as_str()
                .map(str::to_string)
        });
    assert_eq!(
        big_ann.as_deref(),
        Some("3"),
        "parked count recorded on the workload"
    );

    for (name, kind, ns, wname, want, seed) in [
        ("web.default", "Deployment", "default", "web", 1, 1),
        ("db.data", "StatefulSet", "data", "db", 1, 2),
        ("big.default", "Deployment", "default", "big", 3, 3),
    ] {
        assert_eq!(
            stack.replicas(kind, ns, wname),
            Some(0),
            "{name} starts parked"
        );
        echo_through(&stack, name, seed).await?;
        assert_eq!(
            stack.replicas(kind, ns, wname),
            Some(want),
            "{name} woke to {want}"
        );
        assert_eq!(
            stack.kubelet.running(ns, wname),
            want as usize,
            "{name}: kubelet pods"
        );
        stack
            .wait_replicas(kind, ns, wname, 0, Duration::from_secs(30))
            .await?;
    }

    // Events on the workloads: wake and park, from the controller.
    for (ns, wname) in [("default", "web"), ("data", "db"), ("default", "big")] {
        let events = api.list("events.k8s.io/v1", "Event", Some(ns));
        for reason in ["Waking", "Parked"] {
            let e = events
                .iter()
                .find(|e| e["reason"] == reason && e["regarding"]["name"] == wname)
                .ok_or_else(|| anyhow::anyhow!("no {reason} Event for {ns}/{wname}: {events:?}"))?;
            assert_eq!(e["reportingController"], "zenvoy-controller");
        }
    }

    // A second opted-in Service on web's workload is refused with an Event.
    let mut twin = OPT_IN.to_vec();
    twin.push(("zenvoy.io/workload", "deployment/web"));
    api.put(service("default", "web-twin", web, &twin))?;
    stack
        .wait_event("default", "WorkloadConflict", Some("web-twin"))
        .await?;
    assert!(
        stack.envoy.listener("web-twin.default").await.is_err(),
        "the twin is not fronted"
    );

    // 6: never scaled, never fronted.
    assert_eq!(stack.replicas("Deployment", "default", "plain"), Some(0));
    assert_eq!(stack.replicas("Deployment", "default", "off"), Some(2));
    for (_, path) in stack.scale_writes() {
        assert!(
            !path.contains("/plain/") && !path.contains("/off/"),
            "scaled a Service without opt-in: {path}"
        );
    }
    assert!(
        stack.envoy.listener("plain.default").await.is_err(),
        "no listener without opt-in"
    );
    // Opting in later is picked up; opting out again removes it.
    api.put(service("default", "plain", plain, &OPT_IN))?;
    stack.listener("plain.default").await?;
    api.put(service("default", "plain", plain, &[]))?;
    wait::until(
        "plain.default's listener to go",
        Duration::from_secs(20),
        || async {
            Ok(stack
                .envoy
                .listener("plain.default")
                .await
                .is_err()
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

/// 2: the controller is killed mid-wake (scaled, pods not ready yet) and started again:
/// the wake completes and the held connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_wake_finishes_it_after_restart() -> anyhow::Result<()> {
    let opts = KubeOptions {
        start_delay: Duration::from_secs(4),
        ..KubeOptions::default()
    };
    let mut stack = KubeStack::start(opts, 1).await?;
    let p = port()?;
    stack
        .api
        .put(workload("Deployment", "default", "web", 0, p, &[]))?;
    stack.api.put(service("default", "web", p, &OPT_IN))?;
    let l = stack.listener("web.default").await?;
    let client = TcpStream::connect(l).await?;
    stack
        .wait_replicas("Deployment", "default", "web", 1, Duration::from_secs(20))
        .await?;
    assert_eq!(
        stack.kubelet.running("default", "web"),
        0,
        "killed before the pod is up"
    );
    stack.restart_controller(0).await?;
    tokio::time::timeout(Duration::from_secs(40), echo_pattern(client, 7, ECHO_BYTES))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "held connection not served after the restart\n{}",
                stack.logs()
            )
        })??;
    let ups = stack.scale_writes().len();
    assert_eq!(
        ups,
        1,
        "the restarted controller found the wake under way: {:?}",
        stack.scale_writes()
    );
    Ok(())
}

/// 3: the API server is down for 10 s while a connection waits: the controller retries
/// and the connection is served once it is back, within its hold timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_outage_during_a_wake_delays_it() -> anyhow::Result<()> {
    let stack = KubeStack::start(KubeOptions::default(), 1).await?;
    let p = port()?;
    stack
        .api
        .put(workload("Deployment", "default", "web", 0, p, &[]))?;
    stack.api.put(service("default", "web", p, &OPT_IN))?;
    let l = stack.listener("web.default").await?;
    stack.api.set_available(false);
    let client = TcpStream::connect(l).await?;
    let down = tokio::time::Instant::now();
    stack.controllers[0]
        .wait_metric(
            "zenvoy_kube_api_errors_total{op=\"scale_up\"}",
            1.0,
            Duration::from_secs(10),
        )
        .await?;
    // The outage lasts 10 s whatever the test observed meanwhile.
    tokio::time::sleep_until(down + Duration::from_secs(10)).await;
    assert!(is_open(&client), "the held connection survived the outage");
    assert_eq!(
        stack.replicas("Deployment", "default", "web"),
        Some(0),
        "nothing scaled while down"
    );
    stack.api.set_available(true);
    tokio::time::timeout(Duration::from_secs(19), echo_pattern(client, 9, ECHO_BYTES))
        .await
        .map_err(|_| {
            anyhow::anyhow!("not served within its 30 s hold timeout\n{}", stack.logs())
        })??;
    Ok(())
}

/// 4: the ConfigMap's idle timeout changes without a restart; an invalid edit is
/// rejected with an Event naming the field and the old value keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_edits_reload_and_bad_ones_are_rejected() -> anyhow::Result<()> {
    let opts = KubeOptions {
        defaults: vec!["idleTimeout: 1h".into(), "holdTimeout: 30s".into()],
        ..KubeOptions::default()
    };
    let stack = KubeStack::start(opts.clone(), 1).await?;
    let c = &stack.controllers[0];
    let p = port()?;
    stack
        .api
        .put(workload("Deployment", "default", "web", 0, p, &[]))?;
    stack.api.put(service("default", "web", p, &OPT_IN))?;
    echo_through(&stack, "web.default", 1).await?;

    let doc = |idle: &str| {
        let o = KubeOptions {
            defaults: vec![format!("idleTimeout: {idle}"), "holdTimeout: 30s".into()],
            ..opts.clone()
        };
        kube_stack::config_document(
            &o,
            stack.holder_listen,
            stack.envoy_admin,
            stack.holder_admin,
        )
    };
    stack.api.put(kube_stack::configmap(&doc("2s")))?;
    c.wait_metric(
        "zenvoy_config_reloads_total{result=\"applied\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await?;
    stack
        .wait_replicas("Deployment", "default", "web", 0, Duration::from_secs(20))
        .await?;

    stack.api.put(kube_stack::configmap(&doc("soon")))?;
    c.wait_metric(
        "zenvoy_config_reloads_total{result=\"rejected\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await?;
    let event = stack
        .wait_event(kube_stack::NAMESPACE, "ConfigRejected", None)
        .await?;
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("defaults.idleTimeout") && note.contains("soon"),
        "Event names the field: {note}"
    );
    assert_eq!(event["regarding"]["name"], kube_stack::CONFIGMAP);
    // The 2 s idle timeout is still in force.
    echo_through(&stack, "web.default", 2).await?;
    stack
        .wait_replicas("Deployment", "default", "web", 0, Duration::from_secs(20))
        .await?;
    Ok(())
}

/// 5: two controllers: only the Lease holder scales; killing it hands the Lease over
/// within the lease duration, and the new leader serves and scales.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_scales_and_a_follower_takes_over() -> anyhow::Result<()> {
    let lease = Duration::from_secs(4);
    let opts = KubeOptions {
        lease_duration: lease,
        ..KubeOptions::default()
    };
    let mut stack = KubeStack::start(opts, 2).await?;
    let (a, b) = (
        stack.controllers[0].identity.clone(),
        stack.controllers[1].identity.clone(),
    );
    assert_eq!(
        kube_stack::lease_holder(&stack.api).as_deref(),
        Some(a.as_str())
    );
    let p = port()?;
    stack
        .api
        .put(workload("Deployment", "default", "web", 0, p, &[]))?;
    stack.api.put(service("default", "web", p, &OPT_IN))?;
    // A running service kept busy through the leader: the follower, which sees no
    // stats, finds it idle and parks it in its own state machine, and must not write.
    let q = port()?;
    stack
        .api
        .put(workload("Deployment", "default", "api", 1, q, &[]))?;
    stack.api.put(service("default", "api", q, &OPT_IN))?;
    let busy = TcpStream::connect(stack.listener("api.default").await?).await?;
    let (mut busy_w, mut busy_r) = zenvoy_e2e::holder_client::pattern_stream(busy, 5);
    busy_w.write(1024).await?;
    busy_r.read_at_least(1024).await?;
    echo_through(&stack, "web.default", 1).await?;
    stack
        .wait_replicas("Deployment", "default", "web", 0, Duration::from_secs(30))
        .await?;
    // The follower's own state machine parks it (a 0/1 gauge).
    stack.controllers[1]
        .wait_metric(
            "zenvoy_service_state{service=\"api.default\",state=\"parked\"}",
            1.0,
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(
        stack.replicas("Deployment", "default", "api"),
        Some(1),
        "the busy service runs"
    );
    busy_w.write(1024).await?;
    busy_r.read_at_least(2048).await?;
    let writes = stack.scale_writes();
    assert_eq!(writes.len(), 2, "one wake, one park: {writes:?}");
    assert!(
        writes.iter().all(|(who, _)| *who == a),
        "only the leader scaled: {writes:?}"
    );
    assert_eq!(stack.controllers[1].metric("zenvoy_leader").await?, 0.0);
    // The follower refuses streams: Envoy and the holder are on the leader.
    assert_eq!(
        stack.controllers[1].metric("zenvoy_xds_streams").await?,
        0.0
    );

    stack.controllers[0].proc.kill();
    let took = kube_stack::wait_leader(&stack.api, &b, Duration::from_secs(20)).await?;
    // client-go's rule: a follower takes over once the Lease record has stood still for
    // a lease duration as it observed it; it looks every duration / 3.
    let bound = lease + lease / 3 * 2;
    assert!(
        took <= bound,
        "handed over in {took:?}, more than {bound:?}"
    );
    stack.controllers[1]
        .wait_metric("zenvoy_xds_streams", 2.0, Duration::from_secs(20))
        .await?;
    echo_through(&stack, "web.default", 2).await?;
    let writes = stack.scale_writes();
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert_eq!(writes[2].0, b, "the new leader woke it: {writes:?}");
    Ok(())
}

/// RBAC: every request the controllers made in a wake/park/lease/config run is allowed by
/// `deploy/base/rbac.yaml`, and every verb there was used, bar the one kube's Event recorder
/// uses only for a repeated Event (patch events: a series).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_covers_exactly_what_the_controller_does() -> anyhow::Result<()> {
    let opts = KubeOptions {
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 30s".into()],
        ..KubeOptions::default()
    };
    let stack = KubeStack::start(opts, 1).await?;
    let p = port()?;
    stack
        .api
        .put(workload("Deployment", "default", "web", 0, p, &[]))?;
    stack.api.put(service("default", "web", p, &OPT_IN))?;
    echo_through(&stack, "web.default", 1).await?;
    stack
        .wait_replicas("Deployment", "default", "web", 0, Duration::from_secs(30))
        .await?;
    let mut bad = OPT_IN.to_vec();
    bad.push(("zenvoy.io/idleTimeout", "soon"));
    stack.api.put(service("default", "web", p, &bad))?;
    stack
        .wait_event("default", "InvalidAnnotation", None)
        .await?;

    let rules = kube_stack::rbac_rules(
        &zenvoy_test_support::workspace_root().join("deploy/base/rbac.yaml"),
    )?;
    let mut used = std::collections::HashSet::new();
    let identity = stack.controllers[0].identity.clone();
    for r in stack.api.requests() {
        if r.token.as_deref() != Some(identity.as_str()) {
            continue;
        }
        let a = kube_stack::access(&r.method, &r.path, &r.query)
            .ok_or_else(|| anyhow::anyhow!("unexpected request {} {}", r.method, r.path))?;
        let mut allowed = false;
        for (i, (rule, namespaced)) in rules.iter().enumerate() {
            if kube_stack::allows(rule, *namespaced, &a, kube_stack::NAMESPACE) {
                allowed = true;
                used.insert((i, a.verb.clone()));
            }
        }
        assert!(
            allowed,
            "deploy/base/rbac.yaml does not allow {a:?} ({} {}?{})",
            r.method, r.path, r.query
        );
    }
    for (i, (rule, _)) in rules.iter().enumerate() {
        for verb in rule["verbs"].as_array().into_iter().flatten() {
            let verb = verb.as_str().unwrap_or_default();
            // kube's Recorder patches an Event only when it repeats (a series).
            let series_only = rule["resources"] == serde_json::json!(["events"]) && verb == "patch";
            // Slice and port-store writes are inCluster's, checked by e2e/tests/in_cluster.rs.
            let in_cluster = kube_stack::in_cluster_only(rule, verb);
            assert!(
                series_only || in_cluster || used.contains(&(i, verb.to_string())),
                "verb {verb:?} of rule {rule} never used by the controller"
            );
        }
    }
    Ok(())
}

/// RBAC of the namespaced install (`deploy/namespaced/`, rendered as `kubectl apply -k`
/// sends it): nothing is granted cluster-wide, the Roles sit exactly in the namespaces
/// the controller is told to watch (`--namespace`) and its own, and a controller run
/// with that list through a wake, a park, a refused annotation and a rejected ConfigMap
/// makes only requests they allow, and uses every verb they grant (bar the Recorder's
/// series-only `patch` on Events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_of_the_namespaced_install_covers_exactly_what_the_controller_does(
) -> anyhow::Result<()> {
    // The install's own namespace; the fake API's is kube_stack::NAMESPACE.
    const OWN: &str = "zenvoy-system";
    let docs =
        kube_stack::kustomize(&zenvoy_test_support::workspace_root().join("deploy/namespaced"))?;
    let grants = kube_stack::rbac_grants(&docs, OWN, "zenvoy-controller")?;
    assert!(
        !grants.is_empty(),
        "deploy/namespaced grants the controller nothing"
    );
    for g in &grants {
        assert!(
            g.namespace.is_some(),
            "deploy/namespaced grants {} cluster-wide: {}",
            g.role,
            g.rule
        );
    }
    let watched: Vec<String> = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "zenvoy-controller")
        .ok_or_else(|| anyhow::anyhow!("deploy/namespaced has no zenvoy-controller Deployment"))?
        ["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.strip_prefix("--namespace="))
        .map(str::to_string)
        .collect();
    let granted: std::collections::BTreeSet<&str> = grants
        .iter()
        .filter_map(|g| g.namespace.as_deref())
        .collect();
    let expected: std::collections::BTreeSet<&str> =
        watched.iter().map(String::as_str).chain([OWN]).collect();
    assert_eq!(
        granted, expected,
        "Roles in exactly the watched namespaces and the controller's own"
    );
    let ns = watched
        .first()
        .ok_or_else(|| anyhow::anyhow!("deploy/namespaced watches no namespace"))?
        .clone();

    // With inCluster on, as deploy/ ships it: the proxies are in the controller's own
    // namespace, and their slices are watched there. One port to allocate, one free.
    let in_cluster = port()?;
    let opts = KubeOptions {
        defaults: vec!["idleTimeout: 2s".into(), "holdTimeout: 30s".into()],
        namespaces: watched.clone(),
        extra_config: vec![
            "inCluster:".into(),
            format!("  proxy: {}/zenvoy-proxy", kube_stack::NAMESPACE),
            "  listen: 127.0.0.1".into(),
            format!("  ports: {in_cluster}-{in_cluster}"),
            "  settle: 1s".into(),
        ],
        ..KubeOptions::default()
    };
    let stack = KubeStack::start(opts, 1).await?;
    for o in kube_stack::proxy_objects(kube_stack::NAMESPACE, "127.0.0.1") {
        stack.api.put(o)?;
    }
    let p = port()?;
    stack
        .api
        .put(workload("Deployment", &ns, "web", 0, p, &[]))?;
    stack.api.put(service(&ns, "web", p, &OPT_IN))?;
    echo_through(&stack, &format!("web.{ns}"), 1).await?;
    stack
        .wait_replicas("Deployment", &ns, "web", 0, Duration::from_secs(30))
        .await?;
    let mut bad = OPT_IN.to_vec();
    bad.push(("zenvoy.io/idleTimeout", "soon"));
    stack.api.put(service(&ns, "web", p, &bad))?;
    stack.wait_event(&ns, "InvalidAnnotation", None).await?;
    // Its Event is written in the controller's own namespace, not a watched one.
    stack
        .api
        .put(kube_stack::configmap("defaults:\n  idleTimeout: soon\n"))?;
    stack
        .wait_event(kube_stack::NAMESPACE, "ConfigRejected", None)
        .await?;

    let namespace_of = |n: &str| {
        if n == OWN {
            kube_stack::NAMESPACE.to_string()
        } else {
            n.to_string()
        }
    };
    let mut used = std::collections::HashSet::new();
    let identity = stack.controllers[0].identity.clone();
    for r in stack.api.requests() {
        if r.token.as_deref() != Some(identity.as_str()) {
            continue;
        }
        let a = kube_stack::access(&r.method, &r.path, &r.query)
            .ok_or_else(|| anyhow::anyhow!("unexpected request {} {}", r.method, r.path))?;
        let mut allowed = false;
        for (i, g) in grants.iter().enumerate() {
            if kube_stack::grant_allows(g, &a, &namespace_of) {
                allowed = true;
                used.insert((i, a.verb.clone()));
            }
        }
        assert!(
            allowed,
            "deploy/namespaced does not allow {a:?} ({} {}?{})",
            r.method, r.path, r.query
        );
    }
    for (i, g) in grants.iter().enumerate() {
        for verb in g.rule["verbs"].as_array().into_iter().flatten() {
            let verb = verb.as_str().unwrap_or_default();
            let series_only =
                g.rule["resources"] == serde_json::json!(["events"]) && verb == "patch";
            assert!(
                series_only || used.contains(&(i, verb.to_string())),
                "verb {verb:?} of {}'s rule {} never used by the controller",
                g.role,
                g.rule
            );
        }
    }
    Ok(())
}

/// A Service that opts in while the stack runs is served from its very first connection:
/// its Envoy listener appears only once its cluster is warm (Envoy closes connections
/// to a warming cluster). Watched closely, for several Services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_service_is_held_from_its_first_connection() -> anyhow::Result<()> {
    let stack = KubeStack::start(KubeOptions::default(), 1).await?;
    for i in 0..8 {
        let p = port()?;
        let name = format!("svc{i}");
        stack
            .api
            .put(workload("Deployment", "default", &name, 0, p, &[]))?;
        stack.api.put(service("default", &name, p, &OPT_IN))?;
        let full = format!("{name}.default");
        // Closer than the harness's usual 50 ms poll: the window is milliseconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = stack.envoy.listener(&full).await {
                break a;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no listener {full} in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let s = TcpStream::connect(addr).await?;
        tokio::time::timeout(Duration::from_secs(30), echo_pattern(s, i, 4096))
            .await
            .map_err(|_| anyhow::anyhow!("{full}: no echo within 30 s"))?
            .map_err(|e| anyhow::anyhow!("{full}: first connection: {e}"))?;
    }
    Ok(())
}

/// An HTTP Service (`zenvoy.io/protocol: http`) is a virtual host on the shared HTTP
/// listener: a request at zero replicas is answered once the Deployment wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_service_wakes_on_a_request() -> anyhow::Result<()> {
    let opts = KubeOptions {
        http: true,
        ..KubeOptions::default()
    };
    let stack = KubeStack::start(opts, 1).await?;
    let p = port()?;
    stack
        .http_ports
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .insert(p);
    stack
        .api
        .put(workload("Deployment", "default", "site", 0, p, &[]))?;
    stack.api.put(service(
        "default",
        "site",
        p,
        &[
            ("zenvoy.io/enabled", "true"),
            ("zenvoy.io/protocol", "http"),
        ],
    ))?;
    let http = stack
        .envoy
        .listener(zenvoy_controller::xds::resources::HTTP_LISTENER)
        .await?;
    // The virtual host appears once its cluster is warm; until then Envoy answers 404.
    let response = wait::until(
        "a 200 from site.default",
        Duration::from_secs(30),
        || async {
            let mut s = TcpStream::connect(http).await?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: site.default.svc\r\nConnection: close\r\n\r\n")
                .await?;
            let mut text = String::new();
            tokio::time::timeout(Duration::from_secs(40), s.read_to_string(&mut text)).await??;
            // 404: no virtual host yet. The first other answer must be the 200 (a 503 from
            // a still-warming cluster would be a request lost).
            Ok((!text.starts_with("HTTP/1.1 404")).then_some(text))
        },
    )
    .await?;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "first answer: {response}"
    );
    assert!(
        response.trim_end().ends_with("hello from zenvoy-echo"),
        "{response}"
    );
    assert_eq!(stack.replicas("Deployment", "default", "site"), Some(1));
    stack
        .wait_replicas("Deployment", "default", "site", 0, Duration::from_secs(30))
        .await?;
    Ok(())
}

/// `--namespace`: only Services in the listed namespaces are fronted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_namespaces_are_watched() -> anyhow::Result<()> {
    let opts = KubeOptions {
        namespaces: vec!["shop".into()],
        ..KubeOptions::default()
    };
    let stack = KubeStack::start(opts, 1).await?;
    let (outside, inside) = (port()?, port()?);
    // The one outside first: by the time the inside one is fronted, it was seen too.
    stack
        .api
        .put(workload("Deployment", "default", "web", 0, outside, &[]))?;
    stack.api.put(service("default", "web", outside, &OPT_IN))?;
    stack
        .api
        .put(workload("Deployment", "shop", "web", 0, inside, &[]))?;
    stack.api.put(service("shop", "web", inside, &OPT_IN))?;
    echo_through(&stack, "web.shop", 1).await?;
    assert!(
        stack.envoy.listener("web.default").await.is_err(),
        "default is not watched"
    );
    for r in stack.api.requests() {
        assert!(
            !(r.path.starts_with("/api/v1/services") || r.path.contains("/namespaces/default/")),
            "a request outside the listed namespace: {} {}",
            r.method,
            r.path
        );
    }
    Ok(())
}

/// Next to an autoscaler that writes `/scale` too (an HPA's stand-in): it scales the woken
/// workload to 3, then back to 2; the park records 2 and the next wake restores 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_park_next_to_an_autoscaler_remembers_its_last_count() -> anyhow::Result<()> {
    use zenvoy_e2e::hpa::{Hpa, Step};
    let stack = KubeStack::start(KubeOptions::default(), 1).await?;
    let api = &stack.api;
    let p = port()?;
    api.put(workload("Deployment", "default", "api", 0, p, &[]))?;
    let mut ann = OPT_IN.to_vec();
    ann.push(("zenvoy.io/idleTimeout", "2s"));
    api.put(service("default", "api", p, &ann))?;
    let hpa = Hpa::new(api, "Deployment", "default", "api").await?;
    assert_eq!(
        hpa.scale_to(3).await?,
        Step::Disabled,
        "an HPA leaves a parked workload alone"
    );

    // A session keeps it awake while the autoscaler moves it.
    let l = stack.listener("api.default").await?;
    let mut session = TcpStream::connect(l).await?;
    session.write_all(b"x").await?;
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(40), session.read_exact(&mut one))
        .await
        .map_err(|_| anyhow::anyhow!("no echo through the parked api\n{}", stack.logs()))??;
    assert_eq!(stack.replicas("Deployment", "default", "api"), Some(1));
    assert_eq!(hpa.scale_to(3).await?, Step::Scaled { from: 1, to: 3 });
    stack
        .wait_replicas("Deployment", "default", "api", 3, Duration::from_secs(10))
        .await?;
    assert_eq!(hpa.scale_to(2).await?, Step::Scaled { from: 3, to: 2 });
    drop(session);

    // Idle: parked, remembering the autoscaler's last word.
    stack
        .wait_replicas("Deployment", "default", "api", 0, Duration::from_secs(30))
        .await?;
    let parked = api
        .get("apps/v1", "Deployment", "default", "api")
        .and_then(|d| {
            d["metadata"]["annotations"]["zenvoy.io/parked-replicas"]
                .as_str()
                .map(str::to_string)
        });
    assert_eq!(parked.as_deref(), Some("2"), "the park recorded 2");
    echo_through(&stack, "api.default", 7).await?;
    assert_eq!(
        stack.replicas("Deployment", "default", "api"),
        Some(2),
        "the wake restored 2"
    );
    assert_eq!(stack.kubelet.running("default", "api"), 2);
    Ok(())
}
