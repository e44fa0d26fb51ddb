//! Slow start: a server that just came up gets a reduced weight that ramps up linearly.

/// Effective weight during slow start: ramps linearly from ~weight/10 (at least 1) to weight
/// over `window_ns` after the server came up. window_ns == 0 disables slow start; a weight
/// of 0 stays 0.
///
/// With `start = max(weight / 10, 1)`, the result is
/// `start + (weight - start) * since_up_ns / window_ns` (rounded down), and `weight` from
/// `since_up_ns >= window_ns` on. Monotonic in `since_up_ns`.
pub fn slow_start_weight(weight: u32, since_up_ns: u64, window_ns: u64) -> u32 {
    if weight == 0 || window_ns == 0 || since_up_ns >= window_ns {
        return weight;
    }
    let start = (weight / 10).max(1);
    let ramp = u128::from(weight - start) * u128::from(since_up_ns) / u128::from(window_ns);
    // ramp < weight - start because since_up_ns < window_ns.
    start + ramp as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ramps_linearly() {
        assert_eq!(slow_start_weight(100, 0, 1000), 10);
        assert_eq!(slow_start_weight(100, 500, 1000), 55);
        assert_eq!(slow_start_weight(100, 999, 1000), 99);
        assert_eq!(slow_start_weight(100, 1000, 1000), 100);
        assert_eq!(slow_start_weight(100, u64::MAX, 1000), 100);
        assert_eq!(slow_start_weight(1, 0, 1000), 1);
        assert_eq!(slow_start_weight(5, 0, 1000), 1);
        assert_eq!(slow_start_weight(0, 0, 1000), 0);
        assert_eq!(slow_start_weight(7, 0, 0), 7);
        assert_eq!(
            slow_start_weight(u32::MAX, u64::MAX - 1, u64::MAX),
            u32::MAX - 1
        );
    }

    proptest! {
        #[test]
        fn monotonic_and_bounded(w in 0u32..=u32::MAX, a in 0u64..10_000, b in 0u64..10_000, win in 0u64..10_000) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let x = slow_start_weight(w, lo, win);
            let y = slow_start_weight(w, hi, win);
            prop_assert!(x <= y);
            prop_assert!(y <= w);
            if w > 0 {
                prop_assert!(x >= 1);
                prop_assert!(x >= (w / 10).max(1));
            }
        }
    }
}
