//! Each fuzz target's check of one input, here rather than in its `fuzz_targets/` file so
//! that `tests/corpus.rs` replays the seed corpus through the same checks on stable Rust
//! (CI), without libFuzzer.

pub mod chunked;
pub mod head_scan;
pub mod request_differential;
pub mod request_head;
pub mod response_head;
pub mod topology;
