//! Restart delays of crashed roles (pure).

use std::time::Duration;

/// Exponential backoff: `base`, `2 base`, `4 base`, ... capped at `max`. A process that
/// ran at least `reset_after` before it died starts again from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before restart number `crashes` (1 = the first crash in a row).
    pub fn delay(&self, crashes: u32) -> Duration {
        let shift = crashes.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The crash count after a crash of a process that ran for `uptime`.
    pub fn next_count(&self, previous: u32, uptime: Duration) -> u32 {
        if uptime >= self.reset_after {
            1
        } else {
            previous.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_and_resets_after_a_long_run() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_millis(500));
        assert_eq!(b.delay(2), Duration::from_secs(1));
        assert_eq!(b.delay(4), Duration::from_secs(4));
        assert_eq!(b.delay(10), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
        assert_eq!(b.next_count(3, Duration::from_secs(1)), 4);
        assert_eq!(b.next_count(3, Duration::from_secs(31)), 1);
        // Never shorter than the previous delay while crashes go on.
        for n in 1..40 {
            assert!(b.delay(n + 1) >= b.delay(n));
        }
    }
}
