//! Peak-EWMA response-time estimation (Finagle's `PeakEwma`, as in tower and linkerd2).

use std::sync::Mutex;

/// Peak-EWMA response-time estimator: jumps up to a new peak at once, decays toward lower
/// observations with time constant `decay_ns`, and, between observations, decays toward 0.
///
/// * `observe(rtt, now)`: with `d = exp(-(now - last) / decay_ns)` and `e = est * d` the
///   estimate decayed to `now`, the estimate becomes `rtt` if `rtt > e` (a peak counts at
///   once), else `e + rtt * (1 - d)`: the usual EWMA `est * d + rtt * (1 - d)`.
/// * `get(now)`: `est * exp(-(now - last) / decay_ns)`. The decay toward 0 while a server
///   receives no traffic is what lets least-response-time try a server again after it was
///   slow: its cost falls until it wins a comparison, and the next observation shows whether
///   it recovered (it keeps the traffic) or not (its estimate jumps back to the peak).
///
/// Before the first observation the estimate is `initial_ns` and does not decay; the first
/// observation replaces it. `decay_ns == 0` keeps only the last observation.
///
/// Cost: one short uncontended `Mutex` section per call, no allocation.
#[derive(Debug)]
pub struct PeakEwma {
    decay_ns: f64,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    est: f64,
    /// Time of the last observation; None before the first.
    at: Option<u64>,
}

impl PeakEwma {
    /// An estimator with time constant `decay_ns` (linkerd uses 10 s) and a prior of
    /// `initial_ns` for a server not measured yet.
    pub fn new(decay_ns: u64, initial_ns: f64) -> Self {
        let initial = if initial_ns.is_finite() && initial_ns > 0.0 {
            initial_ns
        } else {
            0.0
        };
        PeakEwma {
            decay_ns: decay_ns as f64,
            state: Mutex::new(State {
                est: initial,
                at: None,
            }),
        }
    }

    /// Record a response time `rtt_ns` measured at `now_ns`. An observation older than the
    /// last one (clock readings from several threads) counts as made at the last one's time.
    pub fn observe(&self, rtt_ns: u64, now_ns: u64) {
        let rtt = rtt_ns as f64;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.at {
            None => {
                s.est = rtt;
                s.at = Some(now_ns);
            }
            Some(at) => {
                let now = now_ns.max(at);
                let d = self.decay(now - at);
                let current = s.est * d;
                s.est = if rtt > current {
                    rtt
                } else {
                    current + rtt * (1.0 - d)
                };
                s.at = Some(now);
            }
        }
    }

    /// The estimate at `now_ns`, in nanoseconds.
    pub fn get(&self, now_ns: u64) -> f64 {
        let s = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.at {
            None => s.est,
            Some(at) => s.est * self.decay(now_ns.saturating_sub(at)),
        }
    }

    /// `exp(-elapsed / decay)`; with no decay constant only the last observation counts.
    fn decay(&self, elapsed_ns: u64) -> f64 {
        if self.decay_ns <= 0.0 {
            return if elapsed_ns == 0 { 1.0 } else { 0.0 };
        }
        (-(elapsed_ns as f64) / self.decay_ns).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn prior_until_first_observation() {
        let e = PeakEwma::new(10 * S, 5.0 * MS as f64);
        assert_eq!(e.get(0), 5e6);
        assert_eq!(e.get(100 * S), 5e6);
        e.observe(MS, 100 * S);
        assert_eq!(e.get(100 * S), 1e6);
    }

    #[test]
    fn peak_jumps_at_once_then_decays() {
        let e = PeakEwma::new(S, 0.0);
        e.observe(MS, 0);
        e.observe(50 * MS, 1_000);
        assert_eq!(e.get(1_000), 50e6, "a peak is taken at once");
        // One lower observation a time constant later: the EWMA blend.
        e.observe(10 * MS, 1_000 + S);
        let d = (-1.0f64).exp();
        assert!(close(e.get(1_000 + S), 50e6 * d + 10e6 * (1.0 - d)));
    }

    #[test]
    fn decays_with_time_constant_under_steady_traffic() {
        // 50 ms peak, then 1 ms answers every ms: the excess falls by e^-1 per second.
        let e = PeakEwma::new(S, 0.0);
        e.observe(50 * MS, 0);
        for k in 1..=1000 {
            e.observe(MS, k * MS);
        }
        let want = 1e6 + 49e6 * (-1.0f64).exp();
        let v = e.get(S);
        assert!((v - want).abs() < 1e3, "{v} vs {want}");
        for k in 1001..=5000 {
            e.observe(MS, k * MS);
        }
        let v = e.get(5 * S);
        assert!(v < 1.4e6 && v > 1e6, "{v}");
    }

    #[test]
    fn steady_sparse_traffic_settles_on_the_rtt() {
        // Observations one time constant apart: the estimate decays below the rtt between
        // them, so each one resets it to the rtt exactly.
        let e = PeakEwma::new(S, 0.0);
        e.observe(30 * MS, 0);
        for k in 1..=10 {
            e.observe(MS, k * S);
        }
        assert_eq!(e.get(10 * S), 1e6);
    }

    #[test]
    fn idle_estimate_decays_toward_zero() {
        let e = PeakEwma::new(S, 0.0);
        e.observe(50 * MS, 0);
        assert!(close(e.get(S), 50e6 * (-1.0f64).exp()));
        assert!(e.get(10 * S) < 50e6 * 1e-4);
        // get does not change the state.
        assert!(close(e.get(S), 50e6 * (-1.0f64).exp()));
    }

    #[test]
    fn out_of_order_and_zero_decay() {
        let e = PeakEwma::new(S, 0.0);
        e.observe(10 * MS, 5 * S);
        e.observe(MS, 4 * S); // older clock reading: counts as at 5 s, d = 1
        assert_eq!(e.get(5 * S), 10e6);
        let z = PeakEwma::new(0, 0.0);
        z.observe(10 * MS, 1);
        z.observe(MS, 2);
        assert_eq!(z.get(2), 1e6);
    }

    proptest! {
        /// A value above the current estimate is adopted exactly; otherwise the new estimate
        /// lies between the observation and the estimate at the previous observation, and
        /// never below the current (decayed) estimate.
        #[test]
        fn peak_or_blend(obs in prop::collection::vec((0u64..100_000_000, 0u64..2_000_000_000), 1..50)) {
            let e = PeakEwma::new(S, 0.0);
            let mut now = 0;
            let mut prev: Option<f64> = None;
            for (rtt, dt) in obs {
                now += dt;
                let before = e.get(now);
                e.observe(rtt, now);
                let v = e.get(now);
                let r = rtt as f64;
                match prev {
                    Some(p) if r <= before => {
                        prop_assert!(v >= before - 1e-6, "{} < {}", v, before);
                        prop_assert!(v >= r - 1e-6 && v <= p.max(r) + 1e-6, "{} not in [{}, {}]", v, r, p);
                    }
                    _ => prop_assert_eq!(v, r),
                }
                prev = Some(v);
            }
        }
    }
}
