//! `cargo fuzz run postgres_answer` (from `core/`): the `postgres` ready check's reading
//! of a server's first answer never panics, and reading more bytes never turns a
//! decided answer into another one (a prefix decided is decided for good).
#![no_main]

use libfuzzer_sys::fuzz_target;
use zenvoy_core::ready::pgwire::{answer, Answer};

fuzz_target!(|data: &[u8]| {
    let whole = answer(data);
    for cut in 0..data.len() {
        let part = answer(&data[..cut]);
        if part != Answer::Incomplete {
            assert_eq!(part, whole, "decided at {cut} bytes, then changed");
        }
    }
});
