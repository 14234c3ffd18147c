//! The Prometheus text lines zenvoy reads, parsed in place. Pure.
//!
//! Why not prometheus-parse alone: it runs a regex and builds a `HashMap` of owned labels
//! for every line, ~1.5 µs a line. A 10,000-cluster Envoy page is 60,000 lines that zenvoy
//! needs (the bootstrap's stats matcher keeps only those), ~100 ms per scrape for the
//! parse alone. Those lines have one plain shape, `name{k="v",...} value [timestamp]`;
//! [`sample`] reads exactly that shape and says `None` for anything else (escapes in a
//! label value, odd spacing, more labels than it keeps), which then goes to
//! prometheus-parse. Lines whose metric zenvoy does not read go nowhere.

/// At most this many labels are kept per line by the fast path; a line with more goes
/// to prometheus-parse.
const MAX_LABELS: usize = 4;

/// One sample line, borrowed from the page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    labels: [(&'a str, &'a str); MAX_LABELS],
    n_labels: usize,
    pub value: f64,
}

impl<'a> Sample<'a> {
    pub fn label(&self, name: &str) -> Option<&'a str> {
        self.labels[..self.n_labels]
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }
}

/// The metric name a sample line starts with (the whole line for a malformed one).
pub fn metric_name(line: &str) -> &str {
    let end = line
        .bytes()
        .position(|b| matches!(b, b'{' | b' ' | b'\t'))
        .unwrap_or(line.len());
    &line[..end]
}

/// Read a sample line of the plain shape; None when it has another shape.
pub fn sample(line: &str) -> Option<Sample<'_>> {
    let name = metric_name(line);
    let mut rest = &line[name.len()..];
    let mut labels = [("", ""); MAX_LABELS];
    let mut n_labels = 0;
    if let Some(body) = rest.strip_prefix('{') {
        let close = body.find('}')?;
        let (mut inner, after) = (&body[..close], &body[close + 1..]);
        while !inner.is_empty() {
            let (key, tail) = inner.split_once("=\"")?;
            let end = tail.find('"')?;
            let value = &tail[..end];
            if value.contains('\\') || n_labels == MAX_LABELS || !is_name(key) {
                return None;
            }
            labels[n_labels] = (key, value);
            n_labels += 1;
            inner = &tail[end + 1..];
            inner = match inner.strip_prefix(',') {
                Some(more) => more,
                None if inner.is_empty() => inner,
                None => return None,
            };
        }
        rest = after;
    }
    let mut fields = rest.strip_prefix(' ')?.split(' ');
    let value: f64 = fields.next()?.parse().ok()?;
    match (fields.next(), fields.next()) {
        (None, _) => {}
        (Some(ts), None) if ts.parse::<i64>().is_ok() => {}
        _ => return None,
    }
    if name.is_empty() || !is_name(name) {
        return None;
    }
    Some(Sample {
        name,
        labels,
        n_labels,
        value,
    })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_envoy_and_holder_lines() {
        let s = sample(r#"envoy_cluster_upstream_cx_total{envoy_cluster_name="pg.db"} 17"#)
            .expect("plain");
        assert_eq!(s.name, "envoy_cluster_upstream_cx_total");
        assert_eq!(s.label("envoy_cluster_name"), Some("pg.db"));
        assert_eq!(s.label("other"), None);
        assert_eq!(s.value, 17.0);
        let s = sample(r#"zenvoy_holder_pending{service="svc-1"} 3"#).expect("plain");
        assert_eq!((s.label("service"), s.value), (Some("svc-1"), 3.0));
        let s = sample(r#"a{x="1",y="2",} 1.5e3 1700000000000"#).expect("trailing comma, ts");
        assert_eq!((s.label("y"), s.value), (Some("2"), 1500.0));
        assert_eq!(sample("up 1").map(|s| s.value), Some(1.0));
        assert_eq!(sample("up{} 1").map(|s| s.value), Some(1.0));
        assert!(sample("x +Inf").is_some_and(|s| s.value == f64::INFINITY));
        assert!(sample("x NaN").is_some_and(|s| s.value.is_nan()));
    }

    #[test]
    fn other_shapes_are_left_to_prometheus_parse() {
        for line in [
            r#"a{x="with \"quote\""} 1"#,
            r#"a{x="1" , y="2"} 1"#,
            r#"a{x="1"}  1"#,
            r#"a{x="1"} 1 2 3"#,
            r#"a{x="1"} one"#,
            r#"a{x="1" 1"#,
            r#"a{a="1",b="2",c="3",d="4",e="5"} 1"#,
            r#"a{x=1} 1"#,
            "a\t1",
            "",
            "{} 1",
        ] {
            assert_eq!(sample(line), None, "{line:?}");
        }
    }

    #[test]
    fn agrees_with_prometheus_parse_where_it_answers() {
        let page = [
            r#"envoy_cluster_upstream_cx_total{envoy_cluster_name="a"} 1"#,
            r#"envoy_cluster_upstream_cx_active{envoy_cluster_name="b",zone="z"} 2.5"#,
            r#"zenvoy_holder_pending{service="c"} 7 1700000000000"#,
        ];
        let parsed = prometheus_parse::Scrape::parse(page.iter().map(|l| Ok(l.to_string())))
            .expect("parses");
        for (line, theirs) in page.iter().zip(&parsed.samples) {
            let ours = sample(line).expect("plain shape");
            assert_eq!(ours.name, theirs.metric);
            let v = match theirs.value {
                prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{other:?}"),
            };
            assert_eq!(ours.value, v);
            for (k, v) in theirs.labels.iter() {
                assert_eq!(ours.label(k), Some(v.as_str()));
            }
        }
    }
}
