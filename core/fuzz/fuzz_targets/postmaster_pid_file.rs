//! `cargo fuzz run postmaster_pid_file` (from `core/`): the `postgres` check's reading of
//! a `postmaster.pid` never panics, and it calls a server ready only when the file's
//! status line says `ready` and, for a server this wake started, the file is no older
//! than that start.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenvoy_core::ready::postmaster::{parse, ready, Status, START_SLACK_SECS};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = parse(&text) else {
        return;
    };
    let says = matches!(file.status, Some(Status::Ready));
    assert_eq!(ready(&file, None).is_ok(), says, "{file:?}");
    if let Some(t) = file.started {
        assert_eq!(ready(&file, Some(t)).is_ok(), says, "{file:?}");
        let later = t.saturating_add(START_SLACK_SECS).saturating_add(1);
        if later > t.saturating_add(START_SLACK_SECS) {
            assert!(ready(&file, Some(later)).is_err(), "stale: {file:?}");
        }
    } else {
        assert!(ready(&file, Some(0)).is_err(), "no start time: {file:?}");
    }
});
