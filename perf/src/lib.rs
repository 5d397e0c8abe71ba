//! wshub's perf suite: a load generator with its own minimal WebSocket client, `/proc`
//! readers and the result format. See `perf/README.md`.
//!
//! The load generator runs on one thread (a `current_thread` runtime and a `LocalSet`), so its
//! shared state is plain `Cell`s; it records its own CPU time and says when it was the
//! bottleneck.

pub mod load;
pub mod procfs;
pub mod report;
pub mod ws;
