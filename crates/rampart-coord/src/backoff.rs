//! Retry delays: exponential with a cap and deterministic jitter. Pure: no clock, no I/O.

use std::time::Duration;

/// Exponential backoff between `base` and `cap`; `next()` returns the next delay,
/// `reset()` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The delay before the next attempt: `base * 2^attempt`, capped, minus up to 25 %
    /// jitter so that many clients cut off together do not retry in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.cap);
        // xorshift for the jitter: deterministic per instance, no global RNG needed.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter_permille = self.seed % 250;
        raw - raw.mul_f64(jitter_permille as f64 / 1000.0)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_stay_within_bounds_and_grow(base_ms in 1u64..500, cap_ms in 1u64..10_000, n in 1usize..40) {
            let base = Duration::from_millis(base_ms);
            let cap = Duration::from_millis(cap_ms).max(base);
            let mut b = Backoff::new(base, cap);
            let mut prev_raw_ceiling = Duration::ZERO;
            for i in 0..n {
                let d = b.next_delay();
                prop_assert!(d <= cap, "delay {d:?} above cap {cap:?}");
                prop_assert!(d >= base.mul_f64(0.75) .min(cap.mul_f64(0.75)), "delay {d:?} below 75% of base");
                let ceiling = base.saturating_mul(1u32 << (i as u32).min(20)).min(cap);
                prop_assert!(d <= ceiling);
                prop_assert!(ceiling >= prev_raw_ceiling);
                prev_raw_ceiling = ceiling;
            }
            b.reset();
            prop_assert!(b.next_delay() <= base);
        }
    }
}
