//! Peak-EWMA response-time estimation (Finagle's `PeakEwma`, as in tower and linkerd2).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// What one attempt on a server tells least response time. The time that counts is the
/// server's: from the request's last byte sent to the answer's first byte, so a slow upload
/// (or time spent queueing or connecting) is not charged to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The server answered: the request's last byte went out at `sent_ns`, the first byte
    /// of the answer came back at `first_byte_ns` (same clock as `now_ns`).
    Answered { sent_ns: u64, first_byte_ns: u64 },
    /// No answer: connect refused or timed out, response timeout, connection lost before
    /// the answer. Counts as the penalty, so a server that fails fast never looks fast.
    Failed,
}

impl Attempt {
    /// The response time to record: the server's wait, or `penalty_ns` for a failure.
    pub fn sample_ns(self, penalty_ns: u64) -> u64 {
        match self {
            Attempt::Answered {
                sent_ns,
                first_byte_ns,
            } => first_byte_ns.saturating_sub(sent_ns),
            Attempt::Failed => penalty_ns,
        }
    }
}

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
/// The time constant can change while the estimate lives ([`PeakEwma::set_decay_ns`]: a
/// reload of the pool's `lrt_decay`); it applies from the next call on.
///
/// Cost: one short uncontended `Mutex` section per call, no allocation.
#[derive(Debug)]
pub struct PeakEwma {
    /// The time constant in ns.
    decay_ns: AtomicU64,
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
            decay_ns: AtomicU64::new(decay_ns),
            state: Mutex::new(State {
                est: initial,
                at: None,
            }),
        }
    }

    /// Change the time constant (from the next call on).
    pub fn set_decay_ns(&self, decay_ns: u64) {
        self.decay_ns.store(decay_ns, Ordering::Relaxed);
    }

    /// The time constant in ns.
    pub fn decay_ns(&self) -> u64 {
        self.decay_ns.load(Ordering::Relaxed)
    }

    /// Record what one attempt came to at `now_ns`: an answer's wait
    /// ([`Attempt::sample_ns`]), or for a failure `penalty_ns`, which the estimate never
    /// stays below: a failure never makes a server look faster than it was.
    pub fn record(&self, attempt: Attempt, penalty_ns: u64, now_ns: u64) {
        match attempt {
            Attempt::Answered { .. } => self.observe(attempt.sample_ns(penalty_ns), now_ns),
            Attempt::Failed => {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = s.at.map_or(now_ns, |at| now_ns.max(at));
                let current = match s.at {
                    None => s.est,
                    Some(at) => s.est * self.decay(now - at),
                };
                s.est = current.max(penalty_ns as f64);
                s.at = Some(now);
            }
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
        let decay_ns = self.decay_ns();
        if decay_ns == 0 {
            return if elapsed_ns == 0 { 1.0 } else { 0.0 };
        }
        (-(elapsed_ns as f64) / decay_ns as f64).exp()
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

    #[test]
    fn the_server_wait_counts_not_the_upload() {
        // A 30 s upload ending at 40 s, answered 2 ms later: 2 ms.
        let a = Attempt::Answered {
            sent_ns: 40 * S,
            first_byte_ns: 40 * S + 2 * MS,
        };
        assert_eq!(a.sample_ns(S), 2 * MS);
        // Clock readings out of order never underflow.
        let odd = Attempt::Answered {
            sent_ns: 5,
            first_byte_ns: 4,
        };
        assert_eq!(odd.sample_ns(S), 0);
        assert_eq!(Attempt::Failed.sample_ns(7 * S), 7 * S);
        let e = PeakEwma::new(10 * S, 1e6);
        e.record(a, S, 40 * S + 2 * MS);
        assert_eq!(e.get(40 * S + 2 * MS), 2e6);
    }

    #[test]
    fn a_failure_costs_the_penalty_and_decays_with_the_configured_constant() {
        let e = PeakEwma::new(S, 1e6);
        // Before any answer (the prior does not hold it down) and after one.
        e.record(Attempt::Failed, 500 * MS, 0);
        assert_eq!(e.get(0), 500e6);
        assert!(close(e.get(S), 500e6 * (-1.0f64).exp()));
        // A failure above the penalty already: kept, not lowered.
        e.observe(900 * MS, S);
        e.record(Attempt::Failed, 500 * MS, S);
        assert_eq!(e.get(S), 900e6);
        // A longer time constant (a reload) applies from now on.
        e.set_decay_ns(10 * S);
        assert_eq!(e.decay_ns(), 10 * S);
        assert!(close(e.get(11 * S), 900e6 * (-1.0f64).exp()));
    }

    proptest! {
        /// Whatever came before, a failure leaves the estimate at least the penalty and
        /// never below what it was; a server that only fails always costs more than one
        /// that answers within the penalty, over any history.
        #[test]
        fn failures_never_look_fast(
            steps in prop::collection::vec((any::<bool>(), 0u64..1_000_000_000, 0u64..3_000_000_000), 1..60),
            decay in 1u64..20_000_000_000,
        ) {
            let penalty = 1_000_000_000u64;
            let mixed = PeakEwma::new(decay, 1e6);
            let failing = PeakEwma::new(decay, 1e6);
            let answering = PeakEwma::new(decay, 1e6);
            let mut now = 0u64;
            for (fails, rtt, dt) in steps {
                now += dt;
                let before = mixed.get(now);
                let a = if fails {
                    Attempt::Failed
                } else {
                    Attempt::Answered { sent_ns: now - rtt.min(now), first_byte_ns: now }
                };
                mixed.record(a, penalty, now);
                if fails {
                    prop_assert!(mixed.get(now) >= penalty as f64);
                    prop_assert!(mixed.get(now) >= before);
                }
                failing.record(Attempt::Failed, penalty, now);
                answering.record(Attempt::Answered { sent_ns: now - rtt.min(now), first_byte_ns: now }, penalty, now);
                prop_assert!(failing.get(now) >= answering.get(now), "{} < {}", failing.get(now), answering.get(now));
                prop_assert!(failing.get(now + dt) >= answering.get(now + dt));
            }
        }

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
