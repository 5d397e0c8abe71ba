//! An arbitrary sequence of hub operations against a simple model; see `checks/hub_ops.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/hub_ops.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
