//! One server's health state machine: active checks with rise/fall (HAProxy's semantics).
//!
//! * An up server goes down after `fall` consecutive failed active checks.
//! * A down server comes up only after `rise` consecutive successful active checks,
//!   counted from the moment it went down. That is what prevents flapping.
//! * A failed check resets the success streak and vice versa.
//!
//! `rise`, `fall` of 0 act as 1. Passive evidence (what real requests get) never marks a
//! server down here: a client chooses its requests and could take every server down with
//! one URL that fails everywhere. It goes to [`crate::outlier`] instead, which ejects a
//! server only when it fails more than its peers (or cannot be connected to), for a
//! bounded time and a bounded share of the pool.

/// Thresholds of the state machine.
#[derive(Clone, Copy, Debug)]
pub struct HealthPolicy {
    /// Consecutive successful active checks that bring a down server up.
    pub rise: u32,
    /// Consecutive failed active checks that take an up server down.
    pub fall: u32,
}

/// A change of state reported by [`HealthState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The server is eligible again.
    WentUp,
    /// The server must get no new requests.
    WentDown,
}

/// One server's health state machine. `&mut` methods (the lb wraps it in a Mutex).
#[derive(Clone, Debug)]
pub struct HealthState {
    policy: HealthPolicy,
    up: bool,
    /// Consecutive successful active checks.
    successes: u32,
    /// Consecutive failed active checks.
    failures: u32,
}

impl HealthState {
    /// A server in state `initially_up` (HAProxy starts servers up; an lb may prefer down
    /// until the first `rise` checks pass).
    pub fn new(policy: HealthPolicy, initially_up: bool) -> Self {
        HealthState {
            policy,
            up: initially_up,
            successes: 0,
            failures: 0,
        }
    }

    /// Whether the server may get new requests.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The policy this state machine follows.
    pub fn policy(&self) -> HealthPolicy {
        self.policy
    }

    /// An active check result: `fall` consecutive failures take an up server down,
    /// `rise` consecutive successes bring a down server up.
    pub fn on_check(&mut self, ok: bool) -> Option<Transition> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.policy.rise.max(1) {
                self.up = true;
                return Some(Transition::WentUp);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.policy.fall.max(1) {
                self.up = false;
                self.successes = 0;
                self.failures = 0;
                return Some(Transition::WentDown);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Transition::*;

    const P: HealthPolicy = HealthPolicy { rise: 2, fall: 3 };

    fn checks(h: &mut HealthState, seq: &str) -> Vec<Option<Transition>> {
        seq.chars().map(|c| h.on_check(c == '+')).collect()
    }

    #[test]
    fn fall_then_rise() {
        let mut h = HealthState::new(P, true);
        assert_eq!(checks(&mut h, "--+--"), vec![None; 5]);
        assert!(h.is_up(), "failures must be consecutive");
        assert_eq!(h.on_check(false), Some(WentDown));
        assert!(!h.is_up());
        assert_eq!(checks(&mut h, "+-+"), vec![None; 3]);
        assert_eq!(h.on_check(true), Some(WentUp));
        assert_eq!(checks(&mut h, "++++"), vec![None; 4]);
    }

    #[test]
    fn initially_down_needs_rise() {
        let mut h = HealthState::new(P, false);
        assert!(!h.is_up());
        assert_eq!(checks(&mut h, "++"), vec![None, Some(WentUp)]);
    }

    #[test]
    fn successes_before_going_down_do_not_count() {
        let mut h = HealthState::new(P, true);
        assert_eq!(
            checks(&mut h, "+---"),
            vec![None, None, None, Some(WentDown)]
        );
        assert_eq!(h.on_check(true), None);
        assert_eq!(h.on_check(true), Some(WentUp));
    }

    #[test]
    fn zero_thresholds() {
        let p = HealthPolicy { rise: 0, fall: 0 };
        let mut h = HealthState::new(p, true);
        assert_eq!(h.on_check(false), Some(WentDown));
        assert_eq!(h.on_check(true), Some(WentUp));
    }

    proptest! {
        /// Against a reference model: every WentUp is preceded, since the last WentDown, by
        /// at least `rise` consecutive successful checks at its end; every WentDown by `fall`
        /// failed checks in a row; transitions alternate and match is_up().
        #[test]
        fn no_flapping(rise in 1u32..5, fall in 1u32..5, up: bool,
                       evs in prop::collection::vec(any::<bool>(), 0..200)) {
            let p = HealthPolicy { rise, fall };
            let mut h = HealthState::new(p, up);
            let mut was_up = up;
            let mut ok_run = 0u32; // consecutive successful checks since last down
            let mut fail_run = 0u32;
            for ok in evs {
                if ok { ok_run += 1; fail_run = 0; } else { ok_run = 0; fail_run += 1; }
                match h.on_check(ok) {
                    Some(Transition::WentUp) => {
                        prop_assert!(!was_up);
                        prop_assert!(ok_run >= rise, "up after {} successes", ok_run);
                        was_up = true;
                    }
                    Some(Transition::WentDown) => {
                        prop_assert!(was_up);
                        prop_assert!(fail_run >= fall);
                        was_up = false;
                        ok_run = 0; fail_run = 0;
                    }
                    None => {
                        if was_up {
                            prop_assert!(fail_run < fall || ok);
                        } else {
                            prop_assert!(ok_run < rise || !ok);
                        }
                    }
                }
                prop_assert_eq!(h.is_up(), was_up);
            }
        }
    }
}
