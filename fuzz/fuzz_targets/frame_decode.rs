//! Arbitrary bytes through the sans-IO frame decoder, in arbitrary chunkings, against a
//! whole-buffer reference, with a counting allocator; see `checks/frame_decode.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/frame_decode.rs"]
mod check;
#[path = "../checks/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::Counting = counting_alloc::Counting;

fuzz_target!(|data: &[u8]| {
    check::check(data, Some(&counting_alloc::Probe));
});
