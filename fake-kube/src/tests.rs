//! Unit tests of the fake's pure parts: selectors, patches, the store's write semantics.

use serde_json::{json, Value};

use super::patch::{json_patch, merge_patch};
use super::resources::{CONFIGMAPS, DEPLOYMENTS, LEASES};
use super::selector::{selector_string, FieldSelector, LabelSelector};
use super::store::{rfc3339, ChangeKind, Mode, PatchKind, Store};

fn labels(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn label_selector_operators() {
    let l = labels(json!({"app": "web", "tier": "front"}));
    let yes = [
        "",
        "app=web",
        "app==web",
        "app!=db",
        "missing!=x",
        "app",
        "!missing",
        "app=web,tier=front",
        "app in (db,web)",
        "app notin (db)",
        "missing notin (x)",
        " app = web , tier ",
    ];
    let no = [
        "app=db",
        "app!=web",
        "missing",
        "!app",
        "app=web,tier=back",
        "app in (db)",
        "missing in (x)",
        "app notin (web,db)",
    ];
    for s in yes {
        let sel = LabelSelector::parse(s).expect(s);
        assert!(sel.matches(Some(&l)), "{s:?} should match");
    }
    for s in no {
        let sel = LabelSelector::parse(s).expect(s);
        assert!(!sel.matches(Some(&l)), "{s:?} should not match");
    }
    assert!(LabelSelector::parse("!app").expect("!app").matches(None));
    assert!(!LabelSelector::parse("app").expect("app").matches(None));
    for bad in ["app=we b", "a,,b", "app in db", "x>1", "=v"] {
        assert!(
            LabelSelector::parse(bad).is_err(),
            "{bad:?} should not parse"
        );
    }
}

#[test]
fn field_selector_name_and_namespace_only() {
    let obj = json!({"metadata": {"name": "a", "namespace": "ns"}});
    let m = |s: &str| FieldSelector::parse(s).expect(s).matches(&obj);
    assert!(m("metadata.name=a"));
    assert!(m("metadata.name==a,metadata.namespace=ns"));
    assert!(m("metadata.name!=b"));
    assert!(!m("metadata.namespace=other"));
    assert!(FieldSelector::parse("spec.nodeName=x").is_err());
}

#[test]
fn scale_selector_string_is_sorted() {
    let sel = json!({"matchLabels": {"b": "2", "a": "1"},
                     "matchExpressions": [{"key": "c", "operator": "In", "values": ["x", "y"]}]});
    assert_eq!(selector_string(Some(&sel)), "a=1,b=2,c in (x,y)");
    assert_eq!(selector_string(None), "");
}

#[test]
fn merge_patch_follows_rfc7386() {
    // The RFC's appendix A examples.
    let cases = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
        (json!({"a": "b"}), json!(["c"]), json!(["c"])),
        (json!({"a": "foo"}), json!(null), json!(null)),
        (json!({"a": "foo"}), json!("bar"), json!("bar")),
        (
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        ),
        (
            json!([1, 2]),
            json!({"a": "b", "c": null}),
            json!({"a": "b"}),
        ),
        (
            json!({}),
            json!({"a": {"bb": {"ccc": null}}}),
            json!({"a": {"bb": {}}}),
        ),
    ];
    for (target, patch, want) in cases {
        let mut got = target.clone();
        merge_patch(&mut got, &patch);
        assert_eq!(got, want, "{target} + {patch}");
    }
}

#[test]
fn json_patch_basic_ops() {
    let mut doc = json!({"a": {"b": [1, 2]}, "c": "x"});
    json_patch(
        &mut doc,
        &json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "test", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e~1f"},
            {"op": "remove", "path": "/a/b/1"},
        ]),
    )
    .expect("patch applies");
    assert_eq!(doc, json!({"a": {"b": [0, 2, 3]}, "c": "y", "e/f": "y"}));

    // All or nothing: a failing test leaves the document as it was.
    let before = doc.clone();
    let err = json_patch(
        &mut doc,
        &json!([{"op": "remove", "path": "/c"}, {"op": "test", "path": "/e~1f", "value": "z"}]),
    );
    assert!(err.is_err());
    assert_eq!(doc, before);
    assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    assert!(json_patch(&mut doc, &json!({"op": "add"})).is_err());
}

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "namespace": "ns"},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
           "status": {"replicas": 7}})
}

#[test]
fn create_sets_server_fields_and_conflicts() {
    let mut s = Store::new(1);
    let d = s
        .create(&DEPLOYMENTS, "ns", deployment("web", 2), Mode::Main, "T")
        .expect("create");
    assert_eq!(d["metadata"]["resourceVersion"], "2");
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["metadata"]["creationTimestamp"], "T");
    assert_eq!(d["status"], json!({}), "create clears status");
    assert!(d["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));

    let again = s.create(&DEPLOYMENTS, "ns", deployment("web", 2), Mode::Main, "T");
    assert_eq!(
        again.map_err(|e| (e.code, e.reason)),
        Err((409, "AlreadyExists"))
    );
    let with_rv = json!({"metadata": {"name": "x", "resourceVersion": "5"}});
    assert_eq!(
        s.create(&CONFIGMAPS, "ns", with_rv, Mode::Main, "T")
            .map_err(|e| e.code),
        Err(400)
    );
    let wrong_ns = json!({"metadata": {"name": "x", "namespace": "other"}});
    assert_eq!(
        s.create(&CONFIGMAPS, "ns", wrong_ns, Mode::Main, "T")
            .map_err(|e| e.code),
        Err(400)
    );
    let bad_name = json!({"metadata": {"name": "Upper"}});
    assert_eq!(
        s.create(&CONFIGMAPS, "ns", bad_name, Mode::Main, "T")
            .map_err(|e| e.code),
        Err(422)
    );
    let generated = s
        .create(
            &CONFIGMAPS,
            "ns",
            json!({"metadata": {"generateName": "cm-"}}),
            Mode::Main,
            "T",
        )
        .expect("generateName");
    assert!(generated["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.len() == 8));
}

#[test]
fn update_preconditions_generation_and_noop() {
    let mut s = Store::new(1);
    let d = s
        .create(&DEPLOYMENTS, "ns", deployment("web", 1), Mode::Main, "T")
        .expect("create");
    let rv = s.resource_version();

    // Same object back: nothing written.
    let (same, _) = s
        .update(&DEPLOYMENTS, "ns", "web", d.clone(), Mode::Main, "T")
        .expect("no-op");
    assert_eq!(same, d);
    assert_eq!(s.resource_version(), rv);

    // Metadata-only change: new rv, same generation; status is not writable here.
    let mut labelled = d.clone();
    labelled["metadata"]["labels"] = json!({"x": "y"});
    labelled["status"] = json!({"replicas": 9});
    let (l, _) = s
        .update(&DEPLOYMENTS, "ns", "web", labelled, Mode::Main, "T")
        .expect("label");
    assert_eq!(l["metadata"]["generation"], 1);
    assert_eq!(l["status"], json!({}));
    assert_eq!(l["metadata"]["uid"], d["metadata"]["uid"]);

    // A stale resourceVersion is a conflict.
    let mut stale = d.clone();
    stale["spec"]["replicas"] = json!(3);
    let err = s.update(&DEPLOYMENTS, "ns", "web", stale, Mode::Main, "T");
    assert_eq!(err.map_err(|e| (e.code, e.reason)), Err((409, "Conflict")));

    // Spec change through a patch bumps generation.
    let p = s
        .patch(
            &DEPLOYMENTS,
            "ns",
            "web",
            PatchKind::Merge,
            &json!({"spec": {"replicas": 3}}),
            Mode::Main,
        )
        .expect("patch");
    assert_eq!(p["metadata"]["generation"], 2);
    assert_eq!(p["spec"]["replicas"], 3);

    // /status writes only status.
    let st = s
        .patch(
            &DEPLOYMENTS,
            "ns",
            "web",
            PatchKind::Merge,
            &json!({"spec": {"replicas": 0}, "status": {"readyReplicas": 3}}),
            Mode::Status,
        )
        .expect("status");
    assert_eq!(st["spec"]["replicas"], 3);
    assert_eq!(st["status"]["readyReplicas"], 3);
    assert_eq!(st["metadata"]["generation"], 2);
}

#[test]
fn leases_need_a_resource_version_and_put_creates_them() {
    let mut s = Store::new(1);
    let lease = json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}});
    let (l, created) = s
        .update(&LEASES, "ns", "leader", lease.clone(), Mode::Main, "T")
        .expect("create on update");
    assert!(created);
    assert_eq!(
        s.update(&LEASES, "ns", "leader", lease, Mode::Main, "T")
            .map_err(|e| e.code),
        Err(422)
    );
    let (_, created) = s
        .update(&LEASES, "ns", "leader", l, Mode::Main, "T")
        .expect("conditional update");
    assert!(!created);
    assert_eq!(
        s.update(
            &CONFIGMAPS,
            "ns",
            "nope",
            json!({"metadata": {"name": "nope"}}),
            Mode::Main,
            "T"
        )
        .map_err(|e| e.code),
        Err(404)
    );
}

#[test]
fn scale_subresource_writes_the_parent() {
    let mut s = Store::new(1);
    s.create(&DEPLOYMENTS, "ns", deployment("web", 1), Mode::Main, "T")
        .expect("create");
    let scale = s.scale(&DEPLOYMENTS, "ns", "web").expect("scale");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 1);
    assert_eq!(scale["status"]["selector"], "app=web");
    let scaled = s
        .patch_scale(
            &DEPLOYMENTS,
            "ns",
            "web",
            PatchKind::Merge,
            &json!({"spec": {"replicas": 0}}),
        )
        .expect("patch scale");
    assert_eq!(
        scaled["spec"],
        json!({}),
        "zero replicas is omitted, as omitempty does"
    );
    let parent = s.get(&DEPLOYMENTS, "ns", "web").expect("parent");
    assert_eq!(parent["spec"]["replicas"], 0);
    assert_eq!(parent["metadata"]["generation"], 2);
    let mut stale = scale;
    stale["spec"]["replicas"] = json!(4);
    assert_eq!(
        s.update_scale(&DEPLOYMENTS, "ns", "web", stale)
            .map_err(|e| e.code),
        Err(409)
    );
}

#[test]
fn history_is_replayed_until_compacted() {
    let mut s = Store::new(1);
    s.create(
        &CONFIGMAPS,
        "ns",
        json!({"metadata": {"name": "a"}}),
        Mode::Main,
        "T",
    )
    .expect("a");
    s.delete(&CONFIGMAPS, "ns", "a", &Value::Null)
        .expect("delete");
    let changes = s.history_after(1).expect("history");
    let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::Added, ChangeKind::Deleted]);
    assert_eq!(changes[1].object["metadata"]["resourceVersion"], "3");
    assert_eq!(s.take_changes().len(), 2);
    s.compact();
    assert_eq!(s.history_after(2).err().map(|e| e.code), Some(410));
    assert!(s.history_after(3).expect("from now").is_empty());
}

#[test]
fn delete_preconditions() {
    let mut s = Store::new(1);
    s.create(
        &CONFIGMAPS,
        "ns",
        json!({"metadata": {"name": "a"}}),
        Mode::Main,
        "T",
    )
    .expect("a");
    let pre = json!({"preconditions": {"resourceVersion": "99"}});
    assert_eq!(
        s.delete(&CONFIGMAPS, "ns", "a", &pre).map_err(|e| e.code),
        Err(409)
    );
    assert!(s.delete(&CONFIGMAPS, "ns", "a", &Value::Null).is_ok());
    assert_eq!(
        s.delete(&CONFIGMAPS, "ns", "a", &Value::Null)
            .map_err(|e| e.code),
        Err(404)
    );
}
