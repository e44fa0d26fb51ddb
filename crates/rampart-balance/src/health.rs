//! One server's health state machine: active checks with rise/fall, passive failures.
//!
//! Rules (HAProxy's semantics, plus the passive mark-down of issue 2):
//!
//! * An up server goes down after `fall` consecutive failed active checks, or at once after
//!   `passive_failures` consecutive passive failures (connect failures, 5xx).
//! * A down server comes up only after `rise` consecutive successful active checks,
//!   counted from the moment it went down: successes seen before a passive mark-down do
//!   not count, and passive successes never bring a server up. That is what prevents
//!   flapping: one lucky request cannot put a failing server back into rotation.
//! * A failed check resets the success streak and vice versa.
//!
//! `rise`, `fall` of 0 act as 1; `passive_failures == 0` disables passive mark-down.

/// Thresholds of the state machine.
#[derive(Clone, Copy, Debug)]
pub struct HealthPolicy {
    /// Consecutive successful active checks that bring a down server up.
    pub rise: u32,
    /// Consecutive failed active checks that take an up server down.
    pub fall: u32,
    /// Consecutive passive failures that take an up server down at once (0: never).
    pub passive_failures: u32,
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
    /// Consecutive passive failures.
    passive: u32,
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
            passive: 0,
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
                self.passive = 0;
                return Some(Transition::WentUp);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.policy.fall.max(1) {
                self.go_down();
                return Some(Transition::WentDown);
            }
        }
        None
    }

    /// A passive failure (connect failure or 5xx): `passive_failures` consecutive ones
    /// mark the server down at once. Only an active check (rise) brings it back.
    pub fn on_passive_failure(&mut self) -> Option<Transition> {
        if !self.up || self.policy.passive_failures == 0 {
            return None;
        }
        self.passive = self.passive.saturating_add(1);
        if self.passive >= self.policy.passive_failures {
            self.go_down();
            return Some(Transition::WentDown);
        }
        None
    }

    /// A passive success: resets the consecutive passive failure count.
    pub fn on_passive_success(&mut self) {
        self.passive = 0;
    }

    fn go_down(&mut self) {
        self.up = false;
        self.successes = 0;
        self.failures = 0;
        self.passive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Transition::*;

    const P: HealthPolicy = HealthPolicy {
        rise: 2,
        fall: 3,
        passive_failures: 2,
    };

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
    fn passive_marks_down_and_only_active_rise_brings_back() {
        let mut h = HealthState::new(P, true);
        h.on_check(true); // one success before the trouble
        assert_eq!(h.on_passive_failure(), None);
        h.on_passive_success();
        assert_eq!(h.on_passive_failure(), None, "success reset the count");
        assert_eq!(h.on_passive_failure(), Some(WentDown));
        assert_eq!(h.on_passive_failure(), None, "already down");
        h.on_passive_success();
        assert!(!h.is_up(), "passive success never brings a server up");
        // The success before the mark-down does not count: rise = 2 fresh ones.
        assert_eq!(h.on_check(true), None);
        assert_eq!(h.on_check(true), Some(WentUp));
        // The passive count restarted when it came up.
        assert_eq!(h.on_passive_failure(), None);
    }

    #[test]
    fn zero_thresholds() {
        let p = HealthPolicy {
            rise: 0,
            fall: 0,
            passive_failures: 0,
        };
        let mut h = HealthState::new(p, true);
        for _ in 0..10 {
            assert_eq!(h.on_passive_failure(), None);
        }
        assert_eq!(h.on_check(false), Some(WentDown));
        assert_eq!(h.on_check(true), Some(WentUp));
    }

    #[derive(Clone, Copy, Debug)]
    enum Ev {
        Check(bool),
        PassiveFail,
        PassiveOk,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            any::<bool>().prop_map(Ev::Check),
            Just(Ev::PassiveFail),
            Just(Ev::PassiveOk)
        ]
    }

    proptest! {
        /// Against a reference model: every WentUp is preceded, since the last WentDown, by
        /// at least `rise` consecutive successful checks at its end; every WentDown by `fall`
        /// failed checks or `passive_failures` passive failures in a row; transitions
        /// alternate and match is_up().
        #[test]
        fn no_flapping(rise in 1u32..5, fall in 1u32..5, pf in 0u32..4, up: bool,
                       evs in prop::collection::vec(ev(), 0..200)) {
            let p = HealthPolicy { rise, fall, passive_failures: pf };
            let mut h = HealthState::new(p, up);
            let mut was_up = up;
            let mut ok_run = 0u32; // consecutive successful checks since last down
            let mut fail_run = 0u32;
            let mut pf_run = 0u32;
            for e in evs {
                let t = match e {
                    Ev::Check(true) => { ok_run += 1; fail_run = 0; h.on_check(true) }
                    Ev::Check(false) => { ok_run = 0; fail_run += 1; h.on_check(false) }
                    Ev::PassiveFail => { pf_run += 1; h.on_passive_failure() }
                    Ev::PassiveOk => { pf_run = 0; h.on_passive_success(); None }
                };
                match t {
                    Some(Transition::WentUp) => {
                        prop_assert!(!was_up);
                        prop_assert!(ok_run >= rise, "up after {} successes", ok_run);
                        was_up = true;
                        pf_run = 0;
                    }
                    Some(Transition::WentDown) => {
                        prop_assert!(was_up);
                        prop_assert!(fail_run >= fall || (pf > 0 && pf_run >= pf));
                        was_up = false;
                        ok_run = 0; fail_run = 0; pf_run = 0;
                    }
                    None => {
                        // No transition although the model says one is due?
                        if was_up {
                            prop_assert!(fail_run < fall || !matches!(e, Ev::Check(false)));
                        } else {
                            prop_assert!(ok_run < rise || !matches!(e, Ev::Check(true)));
                            if !matches!(e, Ev::Check(_)) { prop_assert!(!h.is_up()); }
                        }
                    }
                }
                if !was_up { pf_run = 0; }
                prop_assert_eq!(h.is_up(), was_up);
            }
        }
    }
}
