//! The db agents' timing margins, derived from `[db]`'s `ttl`, `loop_wait` and
//! `retry_timeout` (and `[etcd]`'s `election_ms`), and the rules that refuse a topology
//! whose margins cannot fence a primary before etcd expires its lease. Pure.
//!
//! On a primary, measured from the start of its last successful lease renewal `r`:
//!
//! ```text
//! r + primary_renew_period   the next renewal starts (one retry_timeout attempt still
//!                            ends before the demotion deadline)
//! r + ttl - DEMOTE_MARGIN    the agent demotes itself (stops taking writes)
//! r + ttl - KERNEL_MARGIN    latest expiry of a kernel watchdog pinged after r
//! r + ttl - WATCHDOG_MARGIN  the watchdog process kills the postmaster
//! r + ttl                    earliest moment etcd can expire the lease
//! ```
//!
//! The lease keeper renews only while the agent's loop showed a sign of life within
//! `loop_stale_after` (`ttl / 2`): a loop stuck longer stops renewing and the fence acts.

use std::time::Duration;

/// Time a primary keeps between its own demotion deadline and the lease expiry in etcd.
pub const DEMOTE_MARGIN: Duration = Duration::from_secs(1);
/// The watchdog process kills the postmaster this long before etcd can expire the lease.
pub const WATCHDOG_MARGIN: Duration = Duration::from_millis(300);
/// A kernel watchdog pinged after a renewal expires at the latest this long before etcd
/// can expire the lease (time for the reset to take the node down).
pub const KERNEL_MARGIN: Duration = Duration::from_millis(500);
/// A renewal is started this much earlier than the last moment that would do.
pub const RENEW_SLACK: Duration = Duration::from_millis(50);
/// The shortest timeout a kernel watchdog device supports (whole seconds).
pub const KERNEL_MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The three durations of `[db]` every margin derives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
}

/// Which setting a violated rule is about (where the error points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Ttl,
    RetryTimeout,
    Watchdog,
    EtcdElection,
}

/// A rule the timings break: what is expected, with the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: Field,
    pub message: String,
}

impl Timings {
    /// After a renewal started, the primary demotes itself at this offset.
    pub fn demote_after(&self) -> Duration {
        self.ttl.saturating_sub(DEMOTE_MARGIN)
    }

    /// ... and its watchdog process kills the postmaster at this one.
    pub fn fence_after(&self) -> Duration {
        self.ttl.saturating_sub(WATCHDOG_MARGIN)
    }

    /// A primary renews as late as one full `retry_timeout` attempt still ends before its
    /// demotion deadline (a dead primary's key then expires as early as possible), and at
    /// least every `loop_wait`. Other nodes renew every `loop_wait`.
    pub fn primary_renew_period(&self) -> Duration {
        self.ttl
            .saturating_sub(DEMOTE_MARGIN + self.retry_timeout + RENEW_SLACK)
            .max(self.loop_wait)
    }

    /// The loop counts as alive this long after its last sign of life: the lease keeper
    /// renews no longer (Patroni's rule: only a live loop keeps the leader key).
    pub fn loop_stale_after(&self) -> Duration {
        self.ttl / 2
    }

    /// The deadline of one PostgreSQL call of the agent.
    pub fn pg_call_timeout(&self) -> Duration {
        self.retry_timeout.max(Duration::from_secs(1))
    }

    /// The longest kernel watchdog timeout that still fires before etcd can expire the
    /// lease when pinged right after a renewal that took a whole `retry_timeout`.
    pub fn kernel_timeout_max(&self) -> Duration {
        self.ttl.saturating_sub(self.retry_timeout + KERNEL_MARGIN)
    }

    /// May a kernel watchdog with this `timeout` be pinged `since` the start of the last
    /// successful renewal? Only if the reset it postpones to still comes `KERNEL_MARGIN`
    /// before etcd can expire the lease.
    pub fn kernel_ping_allowed(&self, since: Duration, timeout: Duration) -> bool {
        since + timeout + KERNEL_MARGIN <= self.ttl
    }

    /// The rules. `kernel_required`: `watchdog = "required"` somewhere; `etcd_election`:
    /// the election timeout of the etcd members the topology declares.
    pub fn check(&self, kernel_required: bool, etcd_election: Option<Duration>) -> Vec<Violation> {
        let mut v = Vec::new();
        let min_ttl = self.loop_wait + self.retry_timeout + DEMOTE_MARGIN;
        if self.ttl < min_ttl {
            v.push(Violation {
                field: Field::Ttl,
                message: format!(
                    "ttl ({:?}) must be at least loop_wait ({:?}) + retry_timeout ({:?}) + {:?} = {:?}, \
                     so a primary can renew its lease once and still demote before etcd expires it",
                    self.ttl, self.loop_wait, self.retry_timeout, DEMOTE_MARGIN, min_ttl
                ),
            });
        }
        if self.pg_call_timeout() > self.loop_stale_after() {
            v.push(Violation {
                field: Field::RetryTimeout,
                message: format!(
                    "retry_timeout ({:?}; PostgreSQL calls get at least 1s) must be at most ttl / 2 ({:?}): \
                     the lease is renewed only while the agent's loop showed life within ttl / 2, \
                     and one call may take that long; expected ttl >= {:?}",
                    self.retry_timeout,
                    self.loop_stale_after(),
                    self.pg_call_timeout() * 2
                ),
            });
        }
        if kernel_required && self.kernel_timeout_max() < KERNEL_MIN_TIMEOUT {
            v.push(Violation {
                field: Field::Watchdog,
                message: format!(
                    "watchdog = \"required\" cannot fence in time: a kernel watchdog (at least {:?}) must \
                     expire before etcd can expire the lease, i.e. within ttl - retry_timeout - {:?} = {:?}; \
                     expected ttl >= {:?}",
                    KERNEL_MIN_TIMEOUT,
                    KERNEL_MARGIN,
                    self.kernel_timeout_max(),
                    KERNEL_MIN_TIMEOUT + self.retry_timeout + KERNEL_MARGIN
                ),
            });
        }
        if let Some(e) = etcd_election {
            if self.retry_timeout < e {
                v.push(Violation {
                    field: Field::EtcdElection,
                    message: format!(
                        "[etcd] election_ms ({:?}) must be at most [db] retry_timeout ({:?}): a primary's \
                         lease renewal has one retry_timeout before it must demote, and an etcd leader \
                         election stalls it for up to an election timeout",
                        e, self.retry_timeout
                    ),
                });
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ttl_ms: u64, loop_ms: u64, retry_ms: u64) -> Timings {
        Timings {
            ttl: Duration::from_millis(ttl_ms),
            loop_wait: Duration::from_millis(loop_ms),
            retry_timeout: Duration::from_millis(retry_ms),
        }
    }

    #[test]
    fn the_fence_comes_after_the_demotion_and_before_the_expiry() {
        for tm in [
            t(3000, 500, 1000),
            t(30000, 10000, 10000),
            t(2000, 500, 500),
        ] {
            assert!(tm.check(false, None).is_empty(), "{tm:?}");
            assert!(tm.demote_after() < tm.fence_after());
            assert!(tm.fence_after() < tm.ttl);
            // A renewal started when due ends before the demotion deadline.
            assert!(tm.primary_renew_period() + tm.retry_timeout <= tm.demote_after());
        }
    }

    #[test]
    fn a_lease_too_short_for_one_renewal_is_refused() {
        let v = t(2000, 500, 1000).check(false, None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, Field::Ttl);
        assert!(v[0].message.contains("= 2.5s"), "{}", v[0].message);
    }

    #[test]
    fn a_call_longer_than_half_the_lease_is_refused() {
        // ttl 4 s >= 0.5 + 2.5 + 1, but one call of 2.5 s outlasts the loop's ttl / 2.
        let v = t(4000, 500, 2500).check(false, None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, Field::RetryTimeout);
        assert!(
            v[0].message.contains("expected ttl >= 5s"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn a_required_kernel_watchdog_must_fit_before_the_expiry() {
        // 2 - 1 - 0.5 = 0.5 s: no kernel watchdog (1 s at least) fires in time.
        let tm = t(2000, 0, 1000);
        assert!(tm.check(false, None).is_empty());
        let v = tm.check(true, None);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].field, Field::Watchdog);
        assert!(
            v[0].message.contains("expected ttl >= 2.5s"),
            "{}",
            v[0].message
        );
        // The default timings allow a 1 s kernel watchdog.
        assert!(t(3000, 500, 1000).check(true, None).is_empty());
        assert_eq!(
            t(3000, 500, 1000).kernel_timeout_max(),
            Duration::from_millis(1500)
        );
    }

    /// Pinged only while allowed, a kernel watchdog fires before the lease can expire,
    /// and never on a primary whose renewals succeed (the next one completes before the
    /// last allowed ping's reset), for any timings the rules accept.
    #[test]
    fn a_kernel_watchdog_fires_in_time_and_never_on_a_healthy_primary() {
        let mut checked = 0;
        for ttl_s in 2..=30u64 {
            for loop_ms in (100..=10_000u64).step_by(700) {
                for retry_ms in (100..=10_000u64).step_by(450) {
                    let tm = t(ttl_s * 1000, loop_ms, retry_ms);
                    if !tm.check(true, None).is_empty() {
                        continue;
                    }
                    // The device's timeout: whole seconds, at most the bound.
                    let timeout = Duration::from_secs(tm.kernel_timeout_max().as_secs());
                    assert!(timeout >= KERNEL_MIN_TIMEOUT, "{tm:?}");
                    // A renewal that took a whole retry_timeout still allows one ping.
                    assert!(tm.kernel_ping_allowed(tm.retry_timeout, timeout), "{tm:?}");
                    // The last allowed ping's reset precedes the expiry...
                    let last_ping = tm.ttl - KERNEL_MARGIN - timeout;
                    assert!(tm.kernel_ping_allowed(last_ping, timeout));
                    assert!(last_ping + timeout < tm.ttl);
                    // ... and comes after the next renewal has completed.
                    assert!(
                        tm.primary_renew_period() + tm.retry_timeout < last_ping + timeout,
                        "{tm:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
    }

    #[test]
    fn an_etcd_election_longer_than_one_attempt_is_refused() {
        let tm = t(3000, 500, 1000);
        assert!(tm
            .check(false, Some(Duration::from_millis(1000)))
            .is_empty());
        let v = tm.check(false, Some(Duration::from_millis(1500)));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, Field::EtcdElection);
    }
}
