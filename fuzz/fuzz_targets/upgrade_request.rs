//! Our own parsing on the HTTP upgrade path (query, cookies, bearer token, Origin allow-list)
//! against RFC-based references; see `checks/upgrade_request.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/upgrade_request.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
