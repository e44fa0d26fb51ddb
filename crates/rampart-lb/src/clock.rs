//! The one clock of the data path: nanoseconds since the process started.

use std::sync::OnceLock;
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call (monotonic).
pub fn now_ns() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `t` on the same scale as [`now_ns`] (no clock read).
pub fn ns_at(t: Instant) -> u64 {
    t.saturating_duration_since(*ORIGIN.get_or_init(Instant::now))
        .as_nanos() as u64
}
