//! Label and field selectors as the apiserver parses them from `labelSelector` and
//! `fieldSelector` (`k8s.io/apimachinery/pkg/labels`, `.../fields`). Pure.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`: every requirement must hold (comma is AND). The empty
/// selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parse `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, joined by
    /// commas. The error reads like the apiserver's 400 message.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(format!("unable to parse requirement: empty term in {s:?}"));
            }
            reqs.push(parse_requirement(term)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Does an object with these `metadata.labels` (None: no labels) match?
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|have| vs.iter().any(|v| v == have)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Split on commas that are not inside `( )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    let bad = |why: &str| format!("unable to parse requirement: {why}: {term:?}");
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(
            key_ok(key.trim()).map_err(|e| bad(&e))?,
        ));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEq(
            key_ok(k.trim()).map_err(|e| bad(&e))?,
            value_ok(v.trim()).map_err(|e| bad(&e))?,
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Eq(
            key_ok(k.trim()).map_err(|e| bad(&e))?,
            value_ok(v.trim()).map_err(|e| bad(&e))?,
        ));
    }
    for (op, negate) in [(" notin ", true), (" in ", false)] {
        if let Some((k, set)) = term.split_once(op) {
            let set = set.trim();
            let inner = set
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad("expected a parenthesised set"))?;
            let values = inner
                .split(',')
                .map(|v| value_ok(v.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(&e))?;
            let key = key_ok(k.trim()).map_err(|e| bad(&e))?;
            return Ok(if negate {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            });
        }
    }
    if term.contains(['<', '>', '(', ')', ' ']) {
        return Err(bad("unsupported operator"));
    }
    Ok(Requirement::Exists(key_ok(term).map_err(|e| bad(&e))?))
}

/// A label key: `[prefix/]name`, name 1..=63 of alphanumerics, `-`, `_`, `.`.
fn key_ok(k: &str) -> Result<String, String> {
    let name = k.rsplit('/').next().unwrap_or(k);
    let ok = !name.is_empty()
        && name.len() <= 63
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(k.to_string())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

/// A label value: empty, or up to 63 alphanumerics, `-`, `_`, `.`.
fn value_ok(v: &str) -> Result<String, String> {
    let ok = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

/// A parsed `fieldSelector`. Only the fields every resource supports are known
/// (`metadata.name`, `metadata.namespace`); any other is a 400, as the apiserver answers
/// for fields a type does not index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                ));
            };
            let field = field.trim();
            if !matches!(field, "metadata.name" | "metadata.namespace") {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let key = field.trim_start_matches("metadata.");
            let have = obj
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .unwrap_or("");
            (have == value) == *equal
        })
    }
}

/// The string form of a `metav1.LabelSelector` (`matchLabels` and `matchExpressions`),
/// requirements sorted by key, as `Scale.status.selector` carries it.
pub fn selector_string(sel: Option<&Value>) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(labels) = sel
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
    {
        for (k, v) in labels {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or(""))));
        }
    }
    if let Some(exprs) = sel
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
    {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|vs| vs.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let text = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => format!("{key} in ({})", values.join(",")),
                "NotIn" => format!("{key} notin ({})", values.join(",")),
                "Exists" => key.to_string(),
                "DoesNotExist" => format!("!{key}"),
                _ => continue,
            };
            reqs.push((key.to_string(), text));
        }
    }
    reqs.sort();
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// Does a map-style selector (a Service's `spec.selector`) match these labels? An empty
/// selector matches nothing, as for Services.
pub fn map_selects(selector: &Map<String, Value>, labels: Option<&Map<String, Value>>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}
