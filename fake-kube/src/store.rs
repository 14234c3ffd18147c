//! The object store behind the fake: objects keyed by resource, namespace and name, one
//! global resourceVersion counter, a bounded event history for resuming watches, and the
//! write semantics of the real registry: preconditions, defaulting, generation, the status
//! and scale subresources, no-op updates. Pure: the caller passes the clock reading and
//! broadcasts the changes it takes out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::patch;
use super::resources::{self, Generation, ResourceDef};
use super::selector;

/// Events kept for watch resumption; a watch from before the oldest is answered 410.
pub(crate) const HISTORY_LIMIT: usize = 4096;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    /// The object after the write (for a delete: its last state), with `apiVersion`,
    /// `kind` and the write's `metadata.resourceVersion`.
    pub object: Value,
    /// The object before the write (None for a create).
    pub previous: Option<Value>,
    pub resource_version: u64,
    pub(crate) resource: &'static ResourceDef,
}

impl Change {
    /// Is this a change to an object of this `apiVersion` and `kind`?
    pub fn is(&self, api_version: &str, kind: &str) -> bool {
        self.resource.kind == kind && self.resource.api_version() == api_version
    }

    pub fn namespace(&self) -> &str {
        meta_str(&self.object, "namespace").unwrap_or("")
    }

    pub fn name(&self) -> &str {
        meta_str(&self.object, "name").unwrap_or("")
    }
}

/// A failed request, rendered as a `metav1.Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, def: &ResourceDef, name: &str) -> ApiError {
        let mut d = json!({"name": name, "kind": def.plural});
        if !def.group.is_empty() {
            d["group"] = json!(def.group);
        }
        self.details = Some(d);
        self
    }

    /// The `metav1.Status` body.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", msg)
    }

    pub(crate) fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", def.qualified()),
        )
        .about(def, name)
    }

    fn already_exists(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", def.qualified()),
        )
        .about(def, name)
    }

    fn conflict(def: &ResourceDef, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                def.qualified()
            ),
        )
        .about(def, name)
    }

    fn modified(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::conflict(
            def,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    fn invalid(def: &ResourceDef, name: &str, why: &str) -> ApiError {
        ApiError::new(
            422,
            "Invalid",
            format!("{} {name:?} is invalid: {why}", def.kind),
        )
        .about(def, name)
    }

    pub fn gone(msg: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", msg)
    }
}

/// Who is writing, which decides what part of the object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The main resource over HTTP: `status` is kept from the stored object (for types
    /// with a status subresource) and the registry's preconditions apply.
    Main,
    /// The `/status` subresource: only `status` changes.
    Status,
    /// Test setup and the simulated kubelet: the whole object, no preconditions.
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    /// Treated as a merge patch (right for maps; lists are replaced, not merged by key).
    Strategic,
    Json,
}

type Key = (&'static str, &'static str, String, String);

fn key(def: &'static ResourceDef, ns: &str, name: &str) -> Key {
    (def.group, def.plural, ns.to_string(), name.to_string())
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

#[derive(Clone)]
pub(crate) struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this are too old: history after it is complete.
    floor: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    /// Committed but not yet broadcast; the caller drains it with `take_changes`.
    pending: Vec<Arc<Change>>,
    rng: u64,
}

impl Store {
    pub fn new(seed: u64) -> Store {
        // Never "0": that resourceVersion means "any" to list and watch, so a client that
        // lists an empty store must get something it can resume from.
        Store {
            rv: 1,
            floor: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            pending: Vec::new(),
            rng: seed,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, def: &'static ResourceDef, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(def, ns, name))
    }

    /// Objects of one type, in one namespace or all, in key order (namespace, name).
    pub fn list<'a>(
        &'a self,
        def: &'static ResourceDef,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |((g, p, n, _), _)| {
                *g == def.group && *p == def.plural && ns.is_none_or(|ns| ns == n)
            })
            .map(|(_, v)| v)
    }

    pub fn take_changes(&mut self) -> Vec<Arc<Change>> {
        std::mem::take(&mut self.pending)
    }

    /// The changes after `rv`, or 410 Expired when history no longer reaches back to it.
    pub fn history_after(&self, rv: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if rv < self.floor {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                self.floor
            )));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.resource_version > rv)
            .cloned()
            .collect())
    }

    /// Forget all history, as etcd compaction does: a watch must start from now on.
    pub fn compact(&mut self) {
        self.history.clear();
        self.floor = self.rv;
    }

    fn random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uid(&mut self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn commit(
        &mut self,
        def: &'static ResourceDef,
        kind: ChangeKind,
        mut obj: Value,
        previous: Option<Value>,
    ) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let k = key(
            def,
            meta_str(&obj, "namespace").unwrap_or(""),
            meta_str(&obj, "name").unwrap_or(""),
        );
        if kind == ChangeKind::Deleted {
            self.objects.remove(&k);
        } else {
            self.objects.insert(k, obj.clone());
        }
        let change = Arc::new(Change {
            kind,
            object: obj.clone(),
            previous,
            resource_version: self.rv,
            resource: def,
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.resource_version;
            }
        }
        self.pending.push(change);
        obj
    }

    /// POST: create, or 409 AlreadyExists.
    pub fn create(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        body: Value,
        mode: Mode,
        now: &str,
    ) -> Result<Value, ApiError> {
        let mut obj = typed_body(def, ns, body)?;
        if meta_str(&obj, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut name = meta_str(&obj, "name").unwrap_or("").to_string();
        if name.is_empty() {
            let prefix = meta_str(&obj, "generateName").unwrap_or("").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    def,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{prefix}{}", random_suffix(self.random()));
            obj["metadata"]["name"] = json!(name);
        }
        validate_name(def, &name)?;
        if self.get(def, ns, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        obj["metadata"]["uid"] = json!(self.uid());
        obj["metadata"]["creationTimestamp"] = json!(now);
        if def.generation != Generation::Untracked {
            obj["metadata"]["generation"] = json!(1);
        }
        if def.status_subresource && mode != Mode::Direct {
            obj["status"] = json!({});
        }
        apply_defaults(def, &mut obj);
        Ok(self.commit(def, ChangeKind::Added, obj, None))
    }

    /// PUT: replace (or create, for types that allow it). Returns the object and whether it
    /// was created.
    pub fn update(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        body: Value,
        mode: Mode,
        now: &str,
    ) -> Result<(Value, bool), ApiError> {
        let Some(old) = self.get(def, ns, name).cloned() else {
            if def.create_on_update && mode != Mode::Status {
                let mut body = body;
                if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                check_name(def, &body, name)?;
                return Ok((self.create(def, ns, body, mode, now)?, true));
            }
            return Err(ApiError::not_found(def, name));
        };
        if mode != Mode::Direct
            && meta_str(&body, "resourceVersion").is_none_or(str::is_empty)
            && !def.unconditional_update
        {
            return Err(ApiError::invalid(
                def,
                name,
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            ));
        }
        Ok((self.replace(def, ns, name, old, body, mode)?, false))
    }

    /// The shared tail of PUT and PATCH: check preconditions, carry over what the server
    /// owns, bump generation, and commit unless nothing changed.
    fn replace(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        old: Value,
        body: Value,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        let mut new = typed_body(def, ns, body)?;
        check_name(def, &new, name)?;
        if mode != Mode::Direct {
            let stored_rv = meta_str(&old, "resourceVersion").unwrap_or("");
            if let Some(rv) = meta_str(&new, "resourceVersion").filter(|rv| !rv.is_empty()) {
                if rv != stored_rv {
                    return Err(ApiError::modified(def, name));
                }
            }
            let stored_uid = meta_str(&old, "uid").unwrap_or("");
            if let Some(uid) = meta_str(&new, "uid").filter(|u| !u.is_empty()) {
                if uid != stored_uid {
                    return Err(ApiError::conflict(
                        def,
                        name,
                        &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {stored_uid}"),
                    ));
                }
            }
        }
        match mode {
            Mode::Status => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            Mode::Main if def.status_subresource => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            _ => {}
        }
        for field in ["uid", "creationTimestamp", "generation"] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        apply_defaults(def, &mut new);
        let changed = |field: &str| old.get(field) != new.get(field);
        let bump = match def.generation {
            Generation::Untracked => false,
            Generation::Spec => changed("spec"),
            Generation::AllButMetadata => {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("metadata");
                    }
                    v
                };
                strip(&old) != strip(&new)
            }
        };
        if bump {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g.saturating_add(1));
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            // A no-op update: nothing is written, resourceVersion stays, no watch event.
            return Ok(old);
        }
        Ok(self.commit(def, ChangeKind::Modified, new, Some(old)))
    }

    /// PATCH on the main resource or `/status`.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        mode: Mode,
    ) -> Result<Value, ApiError> {
        let old = self.existing(def, ns, name)?;
        let patched = apply_patch(&old, kind, patch)?;
        self.replace(def, ns, name, old, patched, mode)
    }

    /// A copy of the stored object, or 404.
    fn existing(&self, def: &'static ResourceDef, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get(def, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// DELETE, honouring `preconditions` from the DeleteOptions body. Returns the object
    /// as it was.
    pub fn delete(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let old = self.existing(def, ns, name)?;
        let pre = options.get("preconditions");
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = pre.and_then(|p| p.get(field)).and_then(Value::as_str) {
                let have = meta_str(&old, field).unwrap_or("");
                if want != have {
                    return Err(ApiError::conflict(
                        def,
                        name,
                        &format!("Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"),
                    ));
                }
            }
        }
        self.commit(def, ChangeKind::Deleted, old.clone(), Some(old.clone()));
        Ok(old)
    }

    /// GET `/scale`.
    pub fn scale(
        &self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.get(def, ns, name)
            .map(scale_of)
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// PUT `/scale`: set the parent's `spec.replicas`, with the Scale's resourceVersion as
    /// a precondition on the parent.
    pub fn update_scale(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        scale: Value,
    ) -> Result<Value, ApiError> {
        let old = self.existing(def, ns, name)?;
        if !scale.is_object() {
            return Err(ApiError::bad_request(
                "the body must be an autoscaling/v1 Scale",
            ));
        }
        if meta_str(&scale, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&scale, "name").unwrap_or("")
            )));
        }
        if let Some(rv) = meta_str(&scale, "resourceVersion").filter(|rv| !rv.is_empty()) {
            if Some(rv) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::modified(def, name));
            }
        }
        let replicas = match scale.get("spec").and_then(|s| s.get("replicas")) {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_i64()
                .filter(|n| (0..=i64::from(i32::MAX)).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!("Scale {name:?} is invalid: spec.replicas: Invalid value: {v}: must be greater than or equal to 0"),
                    )
                })?,
        };
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        let updated = self.replace(def, ns, name, old, new, Mode::Direct)?;
        Ok(scale_of(&updated))
    }

    /// PATCH `/scale`: the patch applies to the Scale, which then updates the parent.
    pub fn patch_scale(
        &mut self,
        def: &'static ResourceDef,
        ns: &str,
        name: &str,
        kind: PatchKind,
        patch: &Value,
    ) -> Result<Value, ApiError> {
        let current = self.scale(def, ns, name)?;
        let patched = apply_patch(&current, kind, patch)?;
        self.update_scale(def, ns, name, patched)
    }

    /// Create or replace by the object's own `apiVersion`, `kind`, namespace (default
    /// `default`) and name, with no preconditions.
    pub fn put(&mut self, obj: Value, now: &str) -> Result<Value, ApiError> {
        let (def, ns, name) = identify(&obj)?;
        if self.get(def, &ns, &name).is_some() {
            Ok(self.update(def, &ns, &name, obj, Mode::Direct, now)?.0)
        } else {
            self.create(def, &ns, obj, Mode::Direct, now)
        }
    }
}

/// The resource, namespace (default `default`) and name an object names itself by.
pub(crate) fn identify(obj: &Value) -> Result<(&'static ResourceDef, String, String), ApiError> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    let def = resources::by_kind(api_version, kind).ok_or_else(|| {
        ApiError::bad_request(format!("the fake serves no {kind} in {api_version}"))
    })?;
    let ns = meta_str(obj, "namespace").unwrap_or("default").to_string();
    let name = meta_str(obj, "name").unwrap_or("").to_string();
    Ok((def, ns, name))
}

fn apply_patch(old: &Value, kind: PatchKind, patch: &Value) -> Result<Value, ApiError> {
    let mut patched = old.clone();
    match kind {
        PatchKind::Merge => patch::merge_patch(&mut patched, patch),
        PatchKind::Strategic => patch::merge_patch(&mut patched, &strip_directives(patch)),
        PatchKind::Json => patch::json_patch(&mut patched, patch)
            .map_err(|e| ApiError::new(422, "Invalid", format!("json patch: {e}")))?,
    }
    if !patched.is_object() {
        return Err(ApiError::bad_request("the patch did not produce an object"));
    }
    Ok(patched)
}

/// Drop strategic-merge directives (`$patch`, `$setElementOrder/...`, `$retainKeys`),
/// which a plain merge would otherwise write into the object.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Check `apiVersion`, `kind` and namespace against the URL and fill them in.
fn typed_body(def: &'static ResourceDef, ns: &str, body: Value) -> Result<Value, ApiError> {
    let Value::Object(mut obj) = body else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let api_version = def.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != api_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
        _ => {}
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != def.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )))
        }
        _ => {}
    }
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(def.kind));
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    match meta.get("namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != ns => return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {}
    }
    meta.insert("namespace".into(), json!(ns));
    Ok(Value::Object(obj))
}

fn check_name(def: &ResourceDef, obj: &Value, name: &str) -> Result<(), ApiError> {
    let have = meta_str(obj, "name").unwrap_or("");
    if have != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({have}) does not match the name on the URL ({name})"
        )));
    }
    validate_name(def, name)
}

/// A DNS-1123 subdomain, as every type served here requires of `metadata.name`.
fn validate_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && name.starts_with(alnum)
        && name.ends_with(alnum);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            def,
            name,
            &format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ))
    }
}

/// The apiserver's defaulting for the fields tests and the kubelet rely on.
fn apply_defaults(def: &ResourceDef, obj: &mut Value) {
    if std::ptr::eq(def, &resources::DEPLOYMENTS) || std::ptr::eq(def, &resources::STATEFULSETS) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        if obj["spec"].get("replicas").is_none_or(Value::is_null) {
            obj["spec"]["replicas"] = json!(1);
        }
        if std::ptr::eq(def, &resources::STATEFULSETS)
            && obj["spec"].get("podManagementPolicy").is_none()
        {
            obj["spec"]["podManagementPolicy"] = json!("OrderedReady");
        }
    }
    if std::ptr::eq(def, &resources::SERVICES) {
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.entry("type").or_insert_with(|| json!("ClusterIP"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    p.entry("protocol").or_insert_with(|| json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        p.entry("targetPort").or_insert(port);
                    }
                }
            }
        }
    }
    if std::ptr::eq(def, &resources::ENDPOINTSLICES) {
        if let Some(ports) = obj.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert_with(|| json!("TCP"));
            }
        }
    }
}

/// The autoscaling/v1 Scale view of a Deployment or StatefulSet.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let mut scale = json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {},
        "status": {
            "replicas": obj["status"].get("replicas").and_then(Value::as_i64).unwrap_or(0),
        },
    });
    let replicas = obj["spec"]
        .get("replicas")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if replicas != 0 {
        scale["spec"]["replicas"] = json!(replicas);
    }
    let selector = selector::selector_string(obj["spec"].get("selector"));
    if !selector.is_empty() {
        scale["status"]["selector"] = json!(selector);
    }
    scale
}

/// Five characters from the apiserver's generateName alphabet (no vowels).
fn random_suffix(mut r: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (metav1.Time's format).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}
