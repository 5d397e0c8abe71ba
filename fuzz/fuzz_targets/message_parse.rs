//! The inbound request parser and the Go canonicalizer against serde_json references; see
//! `checks/message_parse.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/message_parse.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    check::check(data);
});
