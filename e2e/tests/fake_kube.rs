//! The fake Kubernetes API server, checked with the real kube-rs client: if kube's `Api`,
//! `watcher` and event `Recorder` work against it unmodified, the controller's Kubernetes
//! tests exercise the same client paths they would against a cluster. Also the simulated
//! kubelet: replicas become real processes behind ready EndpointSlice endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as RecordedEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zenvoy_fake_kube::{FakeApi, Kubelet, KubeletOptions};

const WAIT: Duration = Duration::from_secs(10);

fn object<K: DeserializeOwned>(v: Value) -> anyhow::Result<K> {
    Ok(serde_json::from_value(v)?)
}

fn config_map(name: &str, app: &str) -> anyhow::Result<ConfigMap> {
    object(json!({"metadata": {"name": name, "labels": {"app": app}}, "data": {"k": "1"}}))
}

/// The `kube::Error::Api` status code and reason of a failed call.
fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A kube watcher running in the background, its events forwarded to a channel.
struct Watching<K> {
    rx: mpsc::Receiver<Result<Event<K>, watcher::Error>>,
    task: JoinHandle<()>,
}

impl<K> Watching<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    fn start(api: Api<K>, config: watcher::Config) -> Self {
        let (tx, rx) = mpsc::channel(256);
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
            while let Some(ev) = events.next().await {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        Watching { rx, task }
    }

    /// Read events until `f` accepts one; fail after [`WAIT`] naming `what`.
    async fn until(
        &mut self,
        what: &str,
        mut f: impl FnMut(&Result<Event<K>, watcher::Error>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => anyhow::bail!("timed out after {WAIT:?} waiting for {what}"),
                Ok(None) => anyhow::bail!("the watcher ended while waiting for {what}"),
                Ok(Some(ev)) if f(&ev) => return Ok(()),
                Ok(Some(_)) => {}
            }
        }
    }
}

impl<K> Drop for Watching<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn applied<'a, K: ResourceExt>(
    ev: &'a Result<Event<K>, watcher::Error>,
    name: &str,
) -> Option<&'a K> {
    match ev {
        Ok(Event::Apply(o) | Event::InitApply(o)) if o.name_any() == name => Some(o),
        _ => None,
    }
}

#[tokio::test]
async fn crud_through_a_kubeconfig_client() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let dir = tempfile::tempdir()?;
    let path = api.kubeconfig(dir.path(), "replica-a")?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&path)?,
        &Default::default(),
    )
    .await?;
    assert_eq!(config.default_namespace, "default");
    assert_eq!(config.cluster_url.scheme_str(), Some("http"));
    let cms: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(config)?);

    let created = cms
        .create(&PostParams::default(), &config_map("a", "web")?)
        .await?;
    let uid = created.uid().unwrap_or_default();
    assert_eq!(uid.len(), 36);
    assert!(created.creation_timestamp().is_some());
    assert!(created.resource_version().is_some());
    assert_eq!(
        api_error(
            cms.create(&PostParams::default(), &config_map("a", "web")?)
                .await
        ),
        (409, "AlreadyExists".into())
    );
    assert_eq!(cms.get("a").await?, created);
    assert_eq!(api_error(cms.get("nope").await), (404, "NotFound".into()));
    cms.create(&PostParams::default(), &config_map("b", "db")?)
        .await?;

    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.iter().map(ResourceExt::name_any).collect()
    };
    assert_eq!(names(cms.list(&ListParams::default()).await?), ["a", "b"]);
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app=web")).await?),
        ["a"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app!=web")).await?),
        ["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await?
        ),
        ["b"]
    );
    let all: Api<ConfigMap> = Api::all(cms.clone().into_client());
    assert_eq!(names(all.list(&ListParams::default()).await?), ["a", "b"]);
    assert_eq!(
        api_error(cms.list(&ListParams::default().fields("data.k=1")).await).0,
        400
    );

    let pp = PatchParams::default();
    let patched = cms
        .patch(
            "a",
            &pp,
            &Patch::Merge(json!({"data": {"k": null, "m": "2"}})),
        )
        .await?;
    assert_eq!(
        patched
            .data
            .as_ref()
            .and_then(|d| d.get("m"))
            .map(String::as_str),
        Some("2")
    );
    assert!(patched.data.as_ref().is_some_and(|d| !d.contains_key("k")));
    assert_ne!(patched.resource_version(), created.resource_version());
    let strategic = cms
        .patch(
            "a",
            &pp,
            &Patch::Strategic(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await?;
    assert_eq!(strategic.labels().get("x").map(String::as_str), Some("y"));

    // Replacing from a stale read is a conflict; from the latest read it succeeds.
    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "stale".to_string())].into());
    assert_eq!(
        api_error(cms.replace("a", &PostParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    let mut fresh = strategic.clone();
    fresh.data = Some([("k".to_string(), "fresh".to_string())].into());
    let replaced = cms.replace("a", &PostParams::default(), &fresh).await?;
    assert_eq!(replaced.uid(), created.uid());

    // A dry run writes nothing; server-side apply is refused loudly.
    let rv = api.resource_version();
    cms.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &config_map("c", "x")?,
    )
    .await?;
    assert_eq!(api.resource_version(), rv);
    assert!(cms.get_opt("c").await?.is_none());
    let apply = cms
        .patch(
            "a",
            &PatchParams::apply("test"),
            &Patch::Apply(json!({"data": {}})),
        )
        .await;
    assert_eq!(api_error(apply).0, 415);

    // JSON patch, sent by hand (kube's Patch::Json wants the json-patch crate's type).
    let url = format!("{}/api/v1/namespaces/default/configmaps/a", api.url());
    let http = reqwest::Client::new();
    let resp = http
        .patch(&url)
        .bearer_auth("replica-a")
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/data/k","value":"jp"}]"#)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_str(&resp.text().await?)?;
    assert_eq!(body["data"]["k"], "jp");
    // Without a token the fake answers 401, as an apiserver without anonymous auth does.
    let resp = http.get(&url).send().await?;
    assert_eq!(resp.status(), 401);
    let status: Value = serde_json::from_str(&resp.text().await?)?;
    assert_eq!(status["kind"], "Status");

    // ConfigMaps answer DELETE with a Success Status.
    let deleted = cms.delete("a", &DeleteParams::default()).await?;
    assert!(deleted.is_right(), "{deleted:?}");
    assert!(cms.get_opt("a").await?.is_none());

    let requests = api.requests();
    let with_token = requests
        .iter()
        .filter(|r| r.token.as_deref() == Some("replica-a"))
        .count();
    assert_eq!(with_token, requests.len() - 1, "all but the anonymous GET");
    assert!(requests.iter().any(|r| r.method == "PATCH"
        && r.content_type.as_deref() == Some("application/merge-patch+json")
        && r.status == 200));
    assert_eq!(
        api.writes_to("/configmaps/a")
            .last()
            .map(|r| r.method.as_str()),
        Some("DELETE")
    );
    Ok(())
}

#[tokio::test]
async fn raw_watch_events_bookmarks_resume_and_expiry() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client("w").await?);
    let pre = cms
        .create(&PostParams::default(), &config_map("pre", "web")?)
        .await?;

    let wp = WatchParams::default().timeout(20);
    let mut stream = cms.watch(&wp, "0").await?.boxed();
    let first = tokio::time::timeout(WAIT, stream.next()).await?;
    assert!(
        matches!(&first, Some(Ok(WatchEvent::Added(o))) if o.name_any() == "pre"),
        "existing objects come first as ADDED: {first:?}"
    );
    let a = cms
        .create(&PostParams::default(), &config_map("a", "web")?)
        .await?;
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "2"}})),
    )
    .await?;
    cms.delete("a", &DeleteParams::default()).await?;
    let deleted_at = api.resource_version();

    let mut seen = Vec::new();
    let mut bookmark_rv = 0u64;
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 3 || bookmark_rv < deleted_at {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("waiting for events and a bookmark; saw {seen:?}"))?;
        match ev {
            Some(Ok(WatchEvent::Added(o))) => seen.push(format!("ADDED {}", o.name_any())),
            Some(Ok(WatchEvent::Modified(o))) => seen.push(format!("MODIFIED {}", o.name_any())),
            Some(Ok(WatchEvent::Deleted(o))) => seen.push(format!("DELETED {}", o.name_any())),
            Some(Ok(WatchEvent::Bookmark(b))) => {
                assert_eq!(b.types.kind, "ConfigMap");
                bookmark_rv = b.metadata.resource_version.parse()?;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["ADDED a", "MODIFIED a", "DELETED a"]);

    // Resuming from a resourceVersion replays what came after it.
    let mut resumed = cms
        .watch(&wp, &a.resource_version().unwrap_or_default())
        .await?
        .boxed();
    let next = tokio::time::timeout(WAIT, resumed.next()).await?;
    assert!(
        matches!(next, Some(Ok(WatchEvent::Modified(_)))),
        "{next:?}"
    );

    // After compaction the same resume is too old: an ERROR event with 410, then the end.
    api.compact();
    let mut expired = cms
        .watch(&wp, &pre.resource_version().unwrap_or_default())
        .await?
        .boxed();
    let next = tokio::time::timeout(WAIT, expired.next()).await?;
    match next {
        Some(Ok(WatchEvent::Error(s))) => {
            assert_eq!((s.code, s.reason.as_str()), (410, "Expired"));
        }
        other => anyhow::bail!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(tokio::time::timeout(WAIT, expired.next()).await?.is_none());

    let watches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.query.contains("watch=true"))
        .collect();
    assert!(watches
        .iter()
        .all(|r| r.query.contains("allowWatchBookmarks=true")
            && r.query.contains("timeoutSeconds=20")));
    Ok(())
}

#[tokio::test]
async fn watcher_follows_a_selector_and_metadata_watcher_works() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let client = api.client("w").await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    cms.create(&PostParams::default(), &config_map("early", "web")?)
        .await?;
    let mut w = Watching::start(cms.clone(), watcher::Config::default().labels("app=web"));
    w.until("the initial list", |e| applied(e, "early").is_some())
        .await?;
    w.until("InitDone", |e| matches!(e, Ok(Event::InitDone)))
        .await?;

    cms.create(&PostParams::default(), &config_map("other", "db")?)
        .await?;
    cms.create(&PostParams::default(), &config_map("late", "web")?)
        .await?;
    w.until("late applied", |e| {
        assert!(
            applied(e, "other").is_none(),
            "a non-matching object leaked: {e:?}"
        );
        applied(e, "late").is_some()
    })
    .await?;
    // Relabelled out of the selector: the watcher sees it deleted.
    cms.patch(
        "late",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await?;
    w.until(
        "late deleted",
        |e| matches!(e, Ok(Event::Delete(o)) if o.name_any() == "late"),
    )
    .await?;
    // And relabelled back in: applied again.
    cms.patch(
        "late",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await?;
    w.until("late back", |e| applied(e, "late").is_some())
        .await?;

    // kube's metadata API (`Accept: ...;as=PartialObjectMetadata`), which kube 5 uses for
    // every request through an `Api<PartialObjectMeta<K>>`.
    let metas: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client, "team");
    let mut meta = std::pin::pin!(watcher::watcher(metas.clone(), watcher::Config::default()));
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, meta.next()).await? {
            Some(Ok(Event::Init)) => {}
            Some(Ok(Event::InitApply(m))) => names.push(m.name_any()),
            Some(Ok(Event::InitDone)) => break,
            other => anyhow::bail!("metadata watcher: {other:?}"),
        }
    }
    assert_eq!(names, ["early", "late", "other"]);
    let one = metas.get("early").await?;
    assert_eq!(
        one.types.map(|t| t.kind).as_deref(),
        Some("PartialObjectMetadata")
    );
    assert_eq!(
        one.metadata
            .labels
            .unwrap_or_default()
            .get("app")
            .map(String::as_str),
        Some("web")
    );
    let patched = metas
        .patch(
            "early",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await?;
    assert_eq!(
        patched.types.map(|t| t.kind).as_deref(),
        Some("PartialObjectMetadata")
    );
    let listed = cms.list_metadata(&ListParams::default()).await?;
    assert_eq!(listed.items.len(), 3);
    Ok(())
}

#[tokio::test]
async fn watcher_relists_after_compaction() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client("w").await?);
    cms.create(&PostParams::default(), &config_map("a", "web")?)
        .await?;
    let mut w = Watching::start(cms.clone(), watcher::Config::default());
    w.until("InitDone", |e| matches!(e, Ok(Event::InitDone)))
        .await?;

    // While the watch is cut, the object changes and history is compacted: resuming from
    // the watcher's resourceVersion is answered 410, and kube's watcher re-lists.
    api.set_available(false);
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "b", "namespace": "default"}}))?;
    api.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.set_available(true);
    w.until(
        "the 410",
        |e| matches!(e, Err(watcher::Error::WatchError(s)) if s.code == 410),
    )
    .await?;
    w.until("the re-list", |e| matches!(e, Ok(Event::Init)))
        .await?;
    w.until(
        "b in the re-list",
        |e| matches!(e, Ok(Event::InitApply(o)) if o.name_any() == "b"),
    )
    .await?;
    w.until("InitDone", |e| matches!(e, Ok(Event::InitDone)))
        .await?;
    cms.create(&PostParams::default(), &config_map("c", "web")?)
        .await?;
    w.until(
        "c after recovery",
        |e| matches!(e, Ok(Event::Apply(o)) if o.name_any() == "c"),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn outage_closes_connections_and_clients_recover() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(api.client("w").await?);
    let mut w = Watching::start(cms.clone(), watcher::Config::default());
    w.until("InitDone", |e| matches!(e, Ok(Event::InitDone)))
        .await?;
    cms.create(&PostParams::default(), &config_map("a", "web")?)
        .await?;
    w.until("a", |e| applied(e, "a").is_some()).await?;

    api.set_available(false);
    // The watch and the idle keep-alive connection are both closed at once.
    w.until("the watch to break", |e| e.is_err()).await?;
    assert!(
        api.closed_connections() >= 2,
        "closed {}",
        api.closed_connections()
    );
    let down = cms.get("a").await;
    assert!(
        matches!(down, Err(ref e) if !matches!(e, kube::Error::Api(_))),
        "a request while down fails at the connection: {down:?}"
    );
    assert!(api.refused_connections() >= 1);
    // An outage of about two seconds, as the scenario; the watcher retries with back-off.
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.set_available(true);

    assert_eq!(cms.get("a").await?.name_any(), "a");
    api.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "after", "namespace": "default"}}))?;
    w.until("a change after the outage", |e| {
        applied(e, "after").is_some()
    })
    .await?;
    Ok(())
}

fn deployment(name: &str, replicas: i32, port: u16) -> anyhow::Result<Deployment> {
    object(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "zenvoy-echo",
                                         "ports": [{"name": "tcp", "containerPort": port}]}]},
            },
        },
    }))
}

#[tokio::test]
async fn scale_subresource() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let deployments: Api<Deployment> = Api::namespaced(api.client("replica-b").await?, "apps");
    let d = deployments
        .create(&PostParams::default(), &deployment("web", 1, 7000)?)
        .await?;
    assert_eq!(d.metadata.generation, Some(1));
    let mut changes = api.changes();

    let scale = deployments.get_scale("web").await?;
    assert_eq!(scale.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(
        scale.status.as_ref().and_then(|s| s.selector.as_deref()),
        Some("app=web")
    );
    assert_eq!(scale.metadata.resource_version, d.metadata.resource_version);

    let pp = PatchParams::default();
    let scaled = deployments
        .patch_scale("web", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await?;
    assert_eq!(scaled.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let d2 = deployments.get("web").await?;
    assert_eq!(d2.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(d2.metadata.generation, Some(2));
    assert_eq!(
        scaled.metadata.resource_version,
        d2.metadata.resource_version
    );
    let change = tokio::time::timeout(WAIT, changes.recv()).await??;
    assert!(change.is("apps/v1", "Deployment") && change.name() == "web");

    // A Scale from before the patch is stale.
    assert_eq!(
        api_error(
            deployments
                .replace_scale("web", &PostParams::default(), &scale)
                .await
        ),
        (409, "Conflict".into())
    );
    let scale_writes = api.writes_to("/scale");
    assert_eq!(scale_writes.len(), 2);
    assert!(scale_writes
        .iter()
        .all(|r| r.token.as_deref() == Some("replica-b")));
    assert_eq!(
        scale_writes[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        scale_writes[0].path,
        "/apis/apps/v1/namespaces/apps/deployments/web/scale"
    );
    Ok(())
}

#[tokio::test]
async fn lease_replace_from_a_stale_read_conflicts() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let leases: Api<Lease> = Api::default_namespaced(api.client("replica-a").await?);
    let lease: Lease = object(json!({
        "metadata": {"name": "zenvoy-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))?;
    let created = leases.create(&PostParams::default(), &lease).await?;

    let mut renewed = created.clone();
    if let Some(spec) = renewed.spec.as_mut() {
        spec.lease_transitions = Some(1);
    }
    let renewed = leases
        .replace("zenvoy-controller", &PostParams::default(), &renewed)
        .await?;
    assert_ne!(renewed.resource_version(), created.resource_version());

    // Another replica acting on its older read loses.
    let mut takeover = created.clone();
    if let Some(spec) = takeover.spec.as_mut() {
        spec.holder_identity = Some("b".into());
    }
    assert_eq!(
        api_error(
            leases
                .replace("zenvoy-controller", &PostParams::default(), &takeover)
                .await
        ),
        (409, "Conflict".into())
    );
    // Leases may not be replaced unconditionally.
    takeover.metadata.resource_version = None;
    assert_eq!(
        api_error(
            leases
                .replace("zenvoy-controller", &PostParams::default(), &takeover)
                .await
        )
        .0,
        422
    );
    let stored = leases.get("zenvoy-controller").await?;
    assert_eq!(
        stored.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("a")
    );
    Ok(())
}

#[tokio::test]
async fn recorder_publishes_events() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let client = api.client("replica-a").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "apps");
    let d = deployments
        .create(&PostParams::default(), &deployment("web", 0, 7000)?)
        .await?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "zenvoy-controller".into(),
            instance: Some("replica-a".into()),
        },
    );
    let event = RecordedEvent {
        type_: EventType::Normal,
        reason: "Woken".into(),
        note: Some("a connection arrived at zero".into()),
        action: "Scale".into(),
        secondary: None,
    };
    let reference = d.object_ref(&());
    recorder.publish(&event, &reference).await?;
    // The same event again becomes a series, patched onto the first.
    recorder.publish(&event, &reference).await?;

    let events: Api<K8sEvent> = Api::namespaced(client, "apps");
    let list = events.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1, "{list:?}");
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("Woken"));
    assert_eq!(e.reporting_controller.as_deref(), Some("zenvoy-controller"));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web")
    );
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    let writes: Vec<String> = api
        .writes_to("")
        .iter()
        .filter(|r| r.path.contains("/apis/events.k8s.io/v1/"))
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(writes, ["POST", "PATCH"]);
    Ok(())
}

/// Echo `ping` through `addr`.
async fn echo(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await?;
    anyhow::ensure!(&buf == b"ping", "{addr} echoed {buf:?}");
    Ok(())
}

/// The addresses of ready endpoints in the slice, once there are exactly `n` of them and
/// no others.
fn ready_endpoints(api: &FakeApi, ns: &str, slice: &str, n: usize) -> Option<Vec<String>> {
    let s = api.get("discovery.k8s.io/v1", "EndpointSlice", ns, slice)?;
    let eps = s["endpoints"].as_array()?;
    let ready: Vec<String> = eps
        .iter()
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
        .collect();
    (eps.len() == n && ready.len() == n).then_some(ready)
}

#[tokio::test]
async fn kubelet_runs_a_process_per_replica() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let kubelet = Kubelet::start(&api, KubeletOptions::echo()?);
    let client = api.client("replica-a").await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "apps");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "apps");
    services
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": "echo"},
                           "spec": {"selector": {"app": "echo"},
                                    "ports": [{"name": "tcp", "port": 80, "targetPort": "tcp"}]}}))?,
        )
        .await?;
    deployments
        .create(&PostParams::default(), &deployment("echo", 0, 7000)?)
        .await?;
    api.wait_until("an empty slice for the service", WAIT, |a| {
        ready_endpoints(a, "apps", "echo-fake", 0)
    })
    .await?;

    deployments
        .patch_scale(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    let addrs = api
        .wait_until("two ready endpoints", WAIT, |a| {
            ready_endpoints(a, "apps", "echo-fake", 2)
        })
        .await?;
    let net = api.pod_network().octets();
    for ip in &addrs {
        let ip: std::net::Ipv4Addr = ip.parse()?;
        assert_eq!(
            ip.octets()[..3],
            net[..3],
            "pod address {ip} in the fake's block"
        );
        echo(SocketAddr::new(ip.into(), 7000)).await?;
    }
    assert_eq!(kubelet.running("apps", "echo"), 2);
    assert_eq!(kubelet.pod_starts(), 2);

    let slice = Api::<EndpointSlice>::namespaced(client.clone(), "apps")
        .get("echo-fake")
        .await?;
    assert_eq!(
        slice
            .labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str),
        Some("echo")
    );
    let port = slice
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .cloned()
        .unwrap_or_default();
    assert_eq!((port.name.as_deref(), port.port), (Some("tcp"), Some(7000)));
    let d = api
        .wait_until("status with two ready replicas", WAIT, |a| {
            let d = a.get("apps/v1", "Deployment", "apps", "echo")?;
            (d["status"]["readyReplicas"] == 2).then_some(d)
        })
        .await?;
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );

    deployments
        .patch_scale(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    kubelet
        .wait_until("both pods stopped", WAIT, |k| {
            k.pods("apps", "echo").is_empty().then_some(())
        })
        .await?;
    assert_eq!(kubelet.running("apps", "echo"), 0);
    assert_eq!(kubelet.pod_stops(), 2);
    api.wait_until("an empty slice again", WAIT, |a| {
        ready_endpoints(a, "apps", "echo-fake", 0)
    })
    .await?;
    for ip in &addrs {
        let addr = SocketAddr::new(ip.parse::<std::net::IpAddr>()?, 7000);
        assert!(
            echo(addr).await.is_err(),
            "{addr} still answers after scale-down"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kubelet_starts_statefulset_pods_in_order() -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let kubelet = Kubelet::start(&api, KubeletOptions::echo()?);
    let sts: StatefulSet = object(json!({
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "main", "ports": [{"containerPort": 7001}]}]},
            },
        },
    }))?;
    let sets: Api<StatefulSet> = Api::default_namespaced(api.client("t").await?);
    sets.create(&PostParams::default(), &sts).await?;
    // OrderedReady: db-1 is only created once db-0 is ready.
    let mut out_of_order = Vec::new();
    let pods = kubelet
        .wait_until("two ready pods", WAIT, |k| {
            let pods = k.pods("default", "db");
            if pods.len() == 2 && !pods[0].ready {
                out_of_order.push(pods.clone());
            }
            (pods.len() == 2 && pods.iter().all(|p| p.ready)).then_some(pods)
        })
        .await?;
    assert!(
        out_of_order.is_empty(),
        "db-1 before db-0 was ready: {out_of_order:?}"
    );
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["db-0", "db-1"]);
    let status = api
        .wait_until("statefulset status", WAIT, |a| {
            let s = a.get("apps/v1", "StatefulSet", "default", "db")?;
            (s["status"]["readyReplicas"] == 2).then_some(s)
        })
        .await?;
    assert_eq!(status["status"]["replicas"], 2);
    Ok(())
}
