//! `cargo fuzz run postmaster_pid_file` (from `core/`): the `postgres` check's reading of
//! a `postmaster.pid` never panics, and it calls a server ready only when the file's
//! status line says `ready` or `standby` and its pid is alive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenvoy_core::postmaster::{parse, ready, Status};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = parse(&text) else {
        return;
    };
    assert!(ready(&file, 5432, false).is_err(), "a dead pid is never ready");
    let port = file.port.unwrap_or(5432);
    let verdict = ready(&file, port, true).is_ok();
    let says = matches!(file.status, Some(Status::Ready | Status::Standby));
    assert_eq!(verdict, says, "{file:?}");
});
