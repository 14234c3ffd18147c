//! The HTTP side of the fake: an accept loop with the availability switch, path routing,
//! the verb handlers and watch streams.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Query;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::resources::{self, ResourceDef, RESOURCES};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{meta_str, ApiError, Change, ChangeKind, Mode, PatchKind};
use super::{AuditRecord, Availability, Inner};

/// The apiserver's request body limit.
const BODY_LIMIT: usize = 3 * 1024 * 1024;
/// Watches without `timeoutSeconds` (or with 0) end after this (the real server picks
/// 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Accept connections until the fake is dropped. While it is down, every new connection
/// is reset as soon as it is accepted; open ones are closed when it goes down.
pub(crate) async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    let mut state = inner.state.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = state.wait_for(|s| s.availability == Availability::Stopped) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (up, epoch) = {
            let s = inner.state.borrow();
            (s.availability == Availability::Up, s.outages)
        };
        if !up {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            inner.refused.fetch_add(1, Relaxed);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let mut state = inner.state.subscribe();
            let for_service = inner.clone();
            let service = hyper::service::service_fn(move |req| {
                let inner = for_service.clone();
                async move { Ok::<_, Infallible>(handle(inner, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = state.wait_for(|s| s.outages != epoch || s.availability != Availability::Up) => {
                    // Dropping the connection closes the socket mid-request or mid-watch.
                    inner.closed.fetch_add(1, Relaxed);
                }
            }
        });
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let header = |h: &HeaderMap, name| {
        h.get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let headers = req.headers();
    let token = header(headers, AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    let mut record = AuditRecord {
        token,
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        content_type: header(headers, CONTENT_TYPE),
        status: 0,
    };
    let response = route(&inner, req, record.token.is_some()).await;
    record.status = response.status().as_u16();
    inner.audit(record);
    response
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

enum Reply {
    Json(u16, Value),
    Watch(Body),
}

async fn route(inner: &Arc<Inner>, req: Request<Incoming>, authenticated: bool) -> Response<Body> {
    let path = req.uri().path().to_string();
    if req.method() == Method::GET {
        match path.as_str() {
            "/version" => return json_response(200, &version()),
            "/healthz" | "/livez" | "/readyz" => {
                return Response::new(Body::from("ok"));
            }
            _ => {}
        }
    }
    if !authenticated {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    }
    let target = match parse_path(&path, inner) {
        Ok(Route::Discovery(doc)) if req.method() == Method::GET => {
            return json_response(200, &doc)
        }
        Ok(Route::Discovery(_)) => return error_response(&method_not_allowed()),
        Ok(Route::Resource(t)) => t,
        Err(e) => return error_response(&e),
    };
    let params = match Query::<Vec<(String, String)>>::try_from_uri(req.uri()) {
        Ok(Query(p)) => Params(p),
        Err(e) => return error_response(&ApiError::bad_request(format!("query: {e}"))),
    };
    let partial = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=PartialObjectMetadata"));
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
    let method = req.method().clone();
    let body = match axum::body::to_bytes(Body::new(req.into_body()), BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body is too large or could not be read",
            ))
        }
    };
    let call = Call {
        inner,
        params,
        content_type,
        body,
        partial,
    };
    match call.dispatch(&method, target) {
        Ok(Reply::Json(code, v)) => json_response(code, &call.view(v)),
        Ok(Reply::Watch(body)) => {
            let mut r = Response::new(body);
            r.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => error_response(&e),
    }
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

fn not_found_path() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    Main,
    Status,
    Scale,
}

enum Target {
    Collection {
        def: &'static ResourceDef,
        ns: Option<String>,
    },
    Object {
        def: &'static ResourceDef,
        ns: String,
        name: String,
        sub: Sub,
    },
}

enum Route {
    Discovery(Value),
    Resource(Target),
}

fn parse_path(path: &str, inner: &Inner) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(Route::Discovery(api_versions(inner))),
        ["apis"] => return Ok(Route::Discovery(api_groups())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found_path()),
    };
    let def = |plural: &str| resources::by_path(group, version, plural).ok_or_else(not_found_path);
    let target = match rest {
        [] => {
            return resource_list(group, version)
                .map(Route::Discovery)
                .ok_or_else(not_found_path)
        }
        [plural] => Target::Collection {
            def: def(plural)?,
            ns: None,
        },
        ["namespaces", ns, plural] => Target::Collection {
            def: def(plural)?,
            ns: Some(ns.to_string()),
        },
        ["namespaces", ns, plural, name, sub @ ..] => {
            let def = def(plural)?;
            let sub = match sub {
                [] => Sub::Main,
                ["status"] if def.status_subresource => Sub::Status,
                ["scale"] if def.scale_subresource => Sub::Scale,
                _ => return Err(not_found_path()),
            };
            Target::Object {
                def,
                ns: ns.to_string(),
                name: name.to_string(),
                sub,
            }
        }
        _ => return Err(not_found_path()),
    };
    Ok(Route::Resource(target))
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ApiError> {
        let labels = LabelSelector::parse(self.get("labelSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(self.get("fieldSelector").unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        Ok((labels, fields))
    }
}

/// A write against the store, answering a status code and a body.
type WriteFn<'a> = dyn Fn(&mut super::store::Store, &str) -> Result<(u16, Value), ApiError> + 'a;

struct Call<'a> {
    inner: &'a Arc<Inner>,
    params: Params,
    content_type: Option<String>,
    body: Bytes,
    partial: bool,
}

impl Call<'_> {
    fn dispatch(&self, method: &Method, target: Target) -> Result<Reply, ApiError> {
        let dry_run = self.params.get("dryRun").is_some();
        let write = |f: &WriteFn| self.inner.write(dry_run, f).map(|(c, v)| Reply::Json(c, v));
        match target {
            Target::Collection { def, ns } => match *method {
                Method::GET if self.params.flag("watch") => {
                    Ok(Reply::Watch(self.watch(def, ns.as_deref())?))
                }
                Method::GET => Ok(Reply::Json(200, self.list(def, ns.as_deref())?)),
                Method::POST => {
                    let ns = ns.ok_or_else(method_not_allowed)?;
                    let body = self.json_body()?;
                    write(&|s, now| {
                        let o = s.create(def, &ns, body.clone(), Mode::Main, now)?;
                        Ok((201, o))
                    })
                }
                _ => Err(method_not_allowed()),
            },
            Target::Object { def, ns, name, sub } => match (method.clone(), sub) {
                (Method::GET, Sub::Main | Sub::Status) => {
                    let store = self.inner.lock();
                    let o = store
                        .get(def, &ns, &name)
                        .ok_or_else(|| ApiError::not_found(def, &name))?;
                    Ok(Reply::Json(200, o.clone()))
                }
                (Method::PUT, Sub::Main | Sub::Status) => {
                    let body = self.json_body()?;
                    let mode = if sub == Sub::Status {
                        Mode::Status
                    } else {
                        Mode::Main
                    };
                    write(&|s, now| {
                        let (o, created) = s.update(def, &ns, &name, body.clone(), mode, now)?;
                        Ok((if created { 201 } else { 200 }, o))
                    })
                }
                (Method::PATCH, Sub::Main | Sub::Status) => {
                    let (kind, patch) = self.patch_body()?;
                    let mode = if sub == Sub::Status {
                        Mode::Status
                    } else {
                        Mode::Main
                    };
                    write(&|s, _| Ok((200, s.patch(def, &ns, &name, kind, &patch, mode)?)))
                }
                (Method::DELETE, Sub::Main) => {
                    let options = if self.body.is_empty() {
                        Value::Null
                    } else {
                        self.json_body()?
                    };
                    write(&|s, _| {
                        let o = s.delete(def, &ns, &name, &options)?;
                        if def.delete_returns_object {
                            return Ok((200, o));
                        }
                        let mut details = json!({
                            "name": name,
                            "kind": def.plural,
                            "uid": meta_str(&o, "uid").unwrap_or(""),
                        });
                        if !def.group.is_empty() {
                            details["group"] = json!(def.group);
                        }
                        Ok((
                            200,
                            json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                   "status": "Success", "details": details}),
                        ))
                    })
                }
                (Method::GET, Sub::Scale) => {
                    Ok(Reply::Json(200, self.inner.lock().scale(def, &ns, &name)?))
                }
                (Method::PUT, Sub::Scale) => {
                    let body = self.json_body()?;
                    write(&|s, _| Ok((200, s.update_scale(def, &ns, &name, body.clone())?)))
                }
                (Method::PATCH, Sub::Scale) => {
                    let (kind, patch) = self.patch_body()?;
                    write(&|s, _| Ok((200, s.patch_scale(def, &ns, &name, kind, &patch)?)))
                }
                _ => Err(method_not_allowed()),
            },
        }
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        if let Some(ct) = &self.content_type {
            if ct != "application/json" && ct != "*/*" {
                return Err(unsupported(ct));
            }
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the body: {e}")))
    }

    fn patch_body(&self) -> Result<(PatchKind, Value), ApiError> {
        let kind = match self.content_type.as_deref() {
            Some("application/merge-patch+json") => PatchKind::Merge,
            Some("application/strategic-merge-patch+json") => PatchKind::Strategic,
            Some("application/json-patch+json") => PatchKind::Json,
            Some(ct @ ("application/apply-patch+yaml" | "application/apply-patch+cbor")) => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("{ct}: server-side apply is not implemented by the fake apiserver"),
                ))
            }
            other => return Err(unsupported(other.unwrap_or(""))),
        };
        let patch = serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the patch: {e}")))?;
        Ok((kind, patch))
    }

    /// An object as this request wants it: whole, or as PartialObjectMetadata. Lists,
    /// Statuses and Scales pass through.
    fn view(&self, obj: Value) -> Value {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let resource = RESOURCES.iter().any(|d| d.kind == kind);
        if self.partial && resource {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": obj["metadata"]})
        } else {
            obj
        }
    }

    fn list(&self, def: &'static ResourceDef, ns: Option<&str>) -> Result<Value, ApiError> {
        let (labels, fields) = self.params.selectors()?;
        let store = self.inner.lock();
        let rv = store.resource_version();
        if self.params.get("resourceVersionMatch") == Some("Exact")
            && self.params.get("resourceVersion") != Some(rv.to_string().as_str())
        {
            // Only the latest state is kept.
            return Err(ApiError::gone(
                "the fake apiserver keeps no snapshots: only the latest resourceVersion can be listed exactly",
            ));
        }
        let items: Vec<Value> = store
            .list(def, ns)
            .filter(|o| labels.matches(labels_of(o)) && fields.matches(o))
            .map(|o| {
                if self.partial {
                    self.view(o.clone())
                } else {
                    // List items carry no apiVersion and kind, as from the real server.
                    let mut o = o.clone();
                    if let Some(m) = o.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                    }
                    o
                }
            })
            .collect();
        let (api_version, kind) = if self.partial {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadataList".to_string(),
            )
        } else {
            (def.api_version(), format!("{}List", def.kind))
        };
        Ok(json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }))
    }

    fn watch(&self, def: &'static ResourceDef, ns: Option<&str>) -> Result<Body, ApiError> {
        let (labels, fields) = self.params.selectors()?;
        let timeout = self
            .params
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            // Bounded so the deadline cannot overflow.
            .map_or(DEFAULT_WATCH_TIMEOUT, |t| {
                Duration::from_secs(t.min(86_400))
            });
        let every = self.inner.bookmark_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The snapshot (or replay) and the subscription are taken under one lock, and
        // writers broadcast under it too: no change is missed or sent twice.
        let store = self.inner.lock();
        let mut w = WatchStream {
            def,
            ns: ns.map(str::to_string),
            labels,
            fields,
            partial: self.partial,
            pending: VecDeque::new(),
            rx: self.inner.changes.subscribe(),
            last_rv: 0,
            bookmarks: self.params.flag("allowWatchBookmarks"),
            tick,
            deadline: Instant::now() + timeout,
            done: false,
        };
        w.last_rv = store.resource_version();
        match self.params.get("resourceVersion").unwrap_or("") {
            "" | "0" => {
                if self.params.get("sendInitialEvents") != Some("false") {
                    let initial: Vec<Value> = store
                        .list(def, ns)
                        .filter(|o| w.selects(o))
                        .cloned()
                        .collect();
                    for o in initial {
                        let line = w.line("ADDED", o);
                        w.pending.push_back(line);
                    }
                }
                if self.params.flag("sendInitialEvents") {
                    let end = w.bookmark(Some(("k8s.io/initial-events-end", "true")));
                    w.pending.push_back(end);
                }
            }
            rv => {
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version {rv:?}"))
                })?;
                match store.history_after(rv) {
                    Ok(changes) => {
                        for c in changes {
                            if let Some(line) = w.render(&c) {
                                w.pending.push_back(line);
                            }
                        }
                    }
                    Err(e) => {
                        let line = event_line("ERROR", &e.status());
                        w.pending.push_back(line);
                        w.done = true;
                    }
                }
            }
        }
        drop(store);
        Ok(Body::from_stream(futures::stream::unfold(w, next_chunk)))
    }
}

fn unsupported(ct: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format ({ct}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"),
    )
}

fn labels_of(o: &Value) -> Option<&serde_json::Map<String, Value>> {
    o.get("metadata")?.get("labels")?.as_object()
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": obj}).to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

struct WatchStream {
    def: &'static ResourceDef,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    partial: bool,
    /// Lines ready to send, oldest first.
    pending: VecDeque<Bytes>,
    rx: broadcast::Receiver<Arc<Change>>,
    /// The resourceVersion of the last change this stream has taken from the broadcast:
    /// a bookmark never claims more than it has seen.
    last_rv: u64,
    bookmarks: bool,
    tick: Interval,
    deadline: Instant,
    done: bool,
}

impl WatchStream {
    fn selects(&self, o: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|ns| meta_str(o, "namespace") == Some(ns))
            && self.labels.matches(labels_of(o))
            && self.fields.matches(o)
    }

    fn line(&self, ty: &str, obj: Value) -> Bytes {
        let obj = if self.partial {
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                   "metadata": obj["metadata"]})
        } else {
            obj
        };
        event_line(ty, &obj)
    }

    fn bookmark(&self, annotation: Option<(&str, &str)>) -> Bytes {
        let (api_version, kind) = if self.partial {
            ("meta.k8s.io/v1".to_string(), "PartialObjectMetadata")
        } else {
            (self.def.api_version(), self.def.kind)
        };
        let mut obj = json!({"kind": kind, "apiVersion": api_version,
                             "metadata": {"resourceVersion": self.last_rv.to_string()}});
        if let Some((k, v)) = annotation {
            obj["metadata"]["annotations"] = json!({ k: v });
        }
        event_line("BOOKMARK", &obj)
    }

    /// The event this watch sees for a change, as the watch cache filters it: an object
    /// that stops matching the selectors is DELETED, one that starts matching is ADDED.
    fn render(&self, c: &Change) -> Option<Bytes> {
        if !c.resource.same(self.def) {
            return None;
        }
        let now = self.selects(&c.object);
        let before = c.previous.as_ref().is_some_and(|p| self.selects(p));
        let (ty, obj) = match (c.kind, before, now) {
            (ChangeKind::Added, _, true) => ("ADDED", c.object.clone()),
            (ChangeKind::Modified, true, true) => ("MODIFIED", c.object.clone()),
            (ChangeKind::Modified, false, true) => ("ADDED", c.object.clone()),
            (ChangeKind::Modified, true, false) => {
                let mut o = c.previous.clone()?;
                o["metadata"]["resourceVersion"] = json!(c.resource_version.to_string());
                ("DELETED", o)
            }
            (ChangeKind::Deleted, _, true) => ("DELETED", c.object.clone()),
            _ => return None,
        };
        Some(self.line(ty, obj))
    }
}

async fn next_chunk(mut w: WatchStream) -> Option<(Result<Bytes, Infallible>, WatchStream)> {
    loop {
        if let Some(line) = w.pending.pop_front() {
            return Some((Ok(line), w));
        }
        if w.done {
            return None;
        }
        tokio::select! {
            // Changes first: a bookmark is only sent once every change before it is out.
            biased;
            r = w.rx.recv() => match r {
                Ok(c) => {
                    w.last_rv = c.resource_version;
                    if let Some(line) = w.render(&c) {
                        w.pending.push_back(line);
                    }
                }
                // Lagged: the watch cache closes a watcher that cannot keep up, and the
                // client resumes from its last resourceVersion.
                Err(_) => w.done = true,
            },
            _ = tokio::time::sleep_until(w.deadline) => w.done = true,
            _ = w.tick.tick(), if w.bookmarks => {
                let b = w.bookmark(None);
                w.pending.push_back(b);
            }
        }
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake.zenvoy",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_versions(inner: &Inner) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}
        ],
    })
}

fn api_groups() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for d in RESOURCES.iter().filter(|d| !d.group.is_empty()) {
        if groups.iter().any(|g| g["name"] == d.group) {
            continue;
        }
        let gv = json!({"groupVersion": d.api_version(), "version": d.version});
        groups.push(json!({"name": d.group, "versions": [gv], "preferredVersion": gv}));
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .copied()
        .filter(|d| d.group == group && d.version == version)
        .collect();
    let first = defs.first()?;
    let mut list = Vec::new();
    for d in &defs {
        list.push(json!({
            "name": d.plural, "singularName": d.kind.to_lowercase(), "namespaced": true,
            "kind": d.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if d.status_subresource {
            list.push(
                json!({"name": format!("{}/status", d.plural), "singularName": "",
                             "namespaced": true, "kind": d.kind,
                             "verbs": ["get", "patch", "update"]}),
            );
        }
        if d.scale_subresource {
            list.push(
                json!({"name": format!("{}/scale", d.plural), "singularName": "",
                             "namespaced": true, "group": "autoscaling", "version": "v1",
                             "kind": "Scale", "verbs": ["get", "patch", "update"]}),
            );
        }
    }
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": first.api_version(), "resources": list}))
}
