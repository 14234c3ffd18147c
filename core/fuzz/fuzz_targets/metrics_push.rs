//! `cargo fuzz run metrics_push` (from `core/`): reading a `metrics_service` push
//! in place never panics, whatever the bytes, and a service it reports is one it was
//! told about.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenvoy_core::model::Protocol;
use zenvoy_core::stats::{families::Collector, push};

fuzz_target!(|data: &[u8]| {
    let known = |s: &str| s.starts_with("svc").then_some(Protocol::Tcp);
    let mut c = Collector::new(known);
    if push::read(data, &mut c).is_ok() {
        for (service, _) in c.finish() {
            assert!(service.starts_with("svc"), "reported unknown service {service:?}");
        }
    }
});
