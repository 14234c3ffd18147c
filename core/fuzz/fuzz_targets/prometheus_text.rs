//! `cargo fuzz run prometheus_text` (from `core/`): the in-place line reader never
//! panics, and a line it accepts reads the same as prometheus-parse reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenvoy_core::stats::text;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Some(ours) = text::sample(line) else {
        return;
    };
    let theirs = prometheus_parse_line(line);
    if let Some((name, value)) = theirs {
        assert_eq!(ours.name, name);
        assert!(ours.value == value || (ours.value.is_nan() && value.is_nan()));
    }
});

fn prometheus_parse_line(line: &str) -> Option<(String, f64)> {
    let scrape =
        prometheus_parse::Scrape::parse(std::iter::once(Ok(line.replacen("{} ", " ", 1)))).ok()?;
    let s = scrape.samples.into_iter().next()?;
    match s.value {
        prometheus_parse::Value::Untyped(v) => Some((s.metric, v)),
        _ => None,
    }
}
