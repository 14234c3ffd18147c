//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), the two patch formats the fake
//! applies itself. Pure.

use serde_json::{Map, Value};

/// Apply an RFC 7386 merge patch: objects merge key by key, `null` deletes a key, anything
/// else (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Apply an RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`) to
/// `doc`. All or nothing: on error `doc` is unchanged.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or_else(|| "a JSON patch must be an array of operations".to_string())?;
    let mut work = doc.clone();
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut work, op).map_err(|e| format!("operation {i}: {e}"))?;
    }
    *doc = work;
    Ok(())
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), String> {
    let field = |name: &str| {
        op.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing string field {name:?}"))
    };
    let path = pointer(field("path")?)?;
    match field("op")? {
        "add" => add(doc, &path, value_of(op)?),
        "remove" => remove(doc, &path).map(drop),
        "replace" => {
            let slot = lookup_mut(doc, &path).ok_or_else(|| missing(&path))?;
            *slot = value_of(op)?;
            Ok(())
        }
        "move" => {
            let from = pointer(field("from")?)?;
            if path.len() > from.len() && path[..from.len()] == from[..] {
                return Err("cannot move a value into one of its children".into());
            }
            let v = remove(doc, &from)?;
            add(doc, &path, v)
        }
        "copy" => {
            let from = pointer(field("from")?)?;
            let v = lookup_mut(doc, &from)
                .ok_or_else(|| missing(&from))?
                .clone();
            add(doc, &path, v)
        }
        "test" => {
            let have = lookup_mut(doc, &path).ok_or_else(|| missing(&path))?;
            if *have == value_of(op)? {
                Ok(())
            } else {
                Err(format!("test failed at {}", path.join("/")))
            }
        }
        other => Err(format!("unknown operation {other:?}")),
    }
}

fn value_of(op: &Value) -> Result<Value, String> {
    op.get("value")
        .cloned()
        .ok_or_else(|| "missing field \"value\"".to_string())
}

fn missing(path: &[String]) -> String {
    format!("no value at /{}", path.join("/"))
}

/// Split a JSON pointer into unescaped tokens (`~1` is `/`, `~0` is `~`).
fn pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {p:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let i: usize = token
        .parse()
        .map_err(|_| format!("invalid array index {token:?}"))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if (allow_end && i <= max) || (!allow_end && i < len) {
        Ok(i)
    } else {
        Err(format!("array index {i} out of bounds"))
    }
}

fn lookup_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = doc;
    for t in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(t)?,
            Value::Array(a) => {
                let i = index(t, a.len(), false).ok()?;
                a.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

fn add(doc: &mut Value, path: &[String], v: Value) -> Result<(), String> {
    let Some((last, parent)) = path.split_last() else {
        *doc = v;
        return Ok(());
    };
    match lookup_mut(doc, parent).ok_or_else(|| missing(parent))? {
        Value::Object(m) => {
            m.insert(last.clone(), v);
            Ok(())
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true)?;
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!(
            "cannot add below a scalar at /{}",
            parent.join("/")
        )),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let (last, parent) = path
        .split_last()
        .ok_or_else(|| "cannot remove the whole document".to_string())?;
    match lookup_mut(doc, parent).ok_or_else(|| missing(parent))? {
        Value::Object(m) => m.remove(last).ok_or_else(|| missing(path)),
        Value::Array(a) => {
            let i = index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(missing(path)),
    }
}
