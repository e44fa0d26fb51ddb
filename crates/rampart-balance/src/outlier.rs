//! Outlier detection: which servers passive evidence (what real requests got) may take out
//! of rotation, for how long, and how many at once. Envoy's outlier detection, narrowed to
//! evidence a client cannot turn against the whole pool.
//!
//! A client chooses its requests: one URL that fails on every server, or a slow endpoint
//! that times out everywhere, makes every server answer 5xx. Counting such answers per
//! server with no bound (the old passive mark-down) let one bad URL empty the pool. So:
//!
//! * **Failure ratio, relative to the peers.** Every `interval` the detector looks at the
//!   window that just ended. A server that is not ejected and took at least `min_requests`
//!   requests in it is *judged* by its failure ratio (failed requests over requests; the
//!   caller decides what fails: 5xx answers, response timeouts, connections lost before
//!   the answer, connect failures). It is an outlier when its ratio is at least
//!   `failure_percent` (an absolute floor) **and** more than `margin_percent` points above
//!   the mean ratio of the *other* judged servers (the outlier does not pull its own
//!   reference up). A lone judged server has no peer and is never an outlier; servers
//!   that fail alike are never outliers, whatever their ratio. Ratios are compared in
//!   exact integer arithmetic (parts per million), so "alike" means equal, not close.
//! * **Connect failures, absolute.** `connect_failures` consecutive failures to connect
//!   (refused, timed out, unreachable: nothing a client's request can cause) eject at
//!   once. Any connection made resets the count.
//! * **Bound.** At most [`max_ejected`]`(n, max_ejection_percent)` servers of a pool of `n`
//!   are ejected at once: `floor(n * percent / 100)`, rounded *down* so the share is never
//!   exceeded (at 50 %: 1 of 2 or 3, 2 of 4 or 5, none of 1). An ejection the bound refuses
//!   is reported as [`Event::Refused`] and the server stays in rotation. Outliers of one
//!   window are ejected worst first.
//! * **Duration.** The k-th ejection of a server lasts `base_ejection * k`, capped at
//!   `max_ejection` (Envoy's rule). k drops by one for every `interval` the server then
//!   spends back in rotation, so a server that behaved for a while starts again at `base`.
//! * **Return.** At the end of its ejection time (at the caller's next [`Detector::tick`]).
//!   A server ejected for connect failures also returns as soon as `rise` consecutive
//!   active checks pass after the ejection ([`ServerOutlier::on_check`]): a passing check
//!   is the same evidence, a connection made. A failure-ratio ejection ends only with its
//!   time: a health check that passes says nothing about what real requests get.
//! * **Panic** ([`in_panic`]): when the share of available servers (healthy, not ejected)
//!   falls below a threshold, the caller balances over all of them.
//!
//! Pure: no clock, no I/O. Time is `now_ns`, nanoseconds since any fixed origin. The
//! caller keeps one [`ServerOutlier`] per server and one [`Detector`] per pool, passes
//! the servers as a slice in pool order (`servers[i]`, `samples[i]` and the indices in
//! [`Event`]s all mean the same server), and applies the returned events.

use std::ops::{Deref, DerefMut};

/// Parts per million: the fixed-point scale of failure ratios.
const PPM: u64 = 1_000_000;

/// The detector's settings (validated by the caller; see each field for edge values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Consecutive connect failures that eject a server (0: never).
    pub connect_failures: u32,
    /// Length of a failure-ratio window, and the unit of the ejection count's decay
    /// (0 acts as 1 ns).
    pub interval_ns: u64,
    /// Requests a server needs in a window to be judged (0 acts as 1).
    pub min_requests: u64,
    /// The failure ratio (percent) a server must reach to be an outlier; 0 turns
    /// failure-ratio detection off. Above 100 acts as 100.
    pub failure_percent: u32,
    /// An outlier's ratio must exceed the mean of its peers' by more than this (percent
    /// points).
    pub margin_percent: u32,
    /// Most servers ejected at once, in percent of the pool (rounded down; 0: none).
    pub max_ejection_percent: u32,
    /// Duration of a first ejection.
    pub base_ejection_ns: u64,
    /// Longest ejection (a value below `base_ejection_ns` acts as `base_ejection_ns`).
    pub max_ejection_ns: u64,
}

/// Why a server was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `connect_failures` consecutive connect failures.
    ConnectFailures,
    /// A failure ratio markedly above its peers'.
    FailureRatio,
}

impl Reason {
    /// Every reason, in index order (`as usize`).
    pub const ALL: [Reason; 2] = [Reason::ConnectFailures, Reason::FailureRatio];

    /// The name used in logs, the admin API and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectFailures => "connect_failures",
            Reason::FailureRatio => "failure_ratio",
        }
    }
}

/// One ejection of one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    pub reason: Reason,
    pub since_ns: u64,
    /// The server returns at this time (or earlier after passing checks, for
    /// [`Reason::ConnectFailures`]).
    pub until_ns: u64,
    /// k: the ejection multiplier this ejection used (1 for a first one).
    pub count: u32,
}

/// A server's cumulative counters, read by the caller at a tick (they only grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Requests sent to the server.
    pub requests: u64,
    /// Of those, failed ones.
    pub failures: u64,
}

/// What a tick or a connect failure decided, for the caller to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `servers[server]` is out of rotation until `ejection.until_ns`.
    Ejected { server: usize, ejection: Ejection },
    /// `servers[server]` is back (its time ran out, or `by_check`: it passed `rise` checks).
    Returned {
        server: usize,
        reason: Reason,
        by_check: bool,
    },
    /// `servers[server]` qualified for ejection but `max_ejection_percent` was reached.
    Refused { server: usize, reason: Reason },
}

/// One server's outlier state. Starts in rotation, counters at zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerOutlier {
    ejection: Option<Ejection>,
    /// The multiplier of the last ejection (decays while in rotation).
    ejections: u32,
    /// When the server last returned (start of the decay).
    back_ns: u64,
    connect_streak: u32,
    /// Consecutive passing checks since a connect-failure ejection.
    check_streak: u32,
    /// The counters at the start of the current window.
    base: Sample,
}

impl ServerOutlier {
    /// The current ejection, if any.
    pub fn ejection(&self) -> Option<Ejection> {
        self.ejection
    }

    pub fn is_ejected(&self) -> bool {
        self.ejection.is_some()
    }

    /// Consecutive connect failures counted so far.
    pub fn connect_streak(&self) -> u32 {
        self.connect_streak
    }

    /// A connection was made (any answer, even a 5xx): the connect failure count restarts.
    pub fn on_connected(&mut self) {
        self.connect_streak = 0;
    }

    /// An active check result. A server ejected for connect failures returns after `rise`
    /// consecutive passing checks (0 acts as 1); returns whether it did. Other servers
    /// are not affected.
    pub fn on_check(&mut self, ok: bool, rise: u32, now_ns: u64) -> bool {
        match self.ejection {
            Some(e) if e.reason == Reason::ConnectFailures => {
                if !ok {
                    self.check_streak = 0;
                    return false;
                }
                self.check_streak = self.check_streak.saturating_add(1);
                if self.check_streak >= rise.max(1) {
                    self.come_back(now_ns);
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    fn come_back(&mut self, now_ns: u64) {
        self.ejection = None;
        self.back_ns = now_ns;
        self.check_streak = 0;
        self.connect_streak = 0;
    }

    fn eject(&mut self, p: &OutlierPolicy, reason: Reason, now_ns: u64) -> Ejection {
        let decayed = if self.ejections == 0 {
            0
        } else {
            let clean = now_ns.saturating_sub(self.back_ns) / p.interval_ns.max(1);
            self.ejections
                .saturating_sub(u32::try_from(clean).unwrap_or(u32::MAX))
        };
        let count = decayed.saturating_add(1);
        self.ejections = count;
        let e = Ejection {
            reason,
            since_ns: now_ns,
            until_ns: now_ns.saturating_add(ejection_ns(p, count)),
            count,
        };
        self.ejection = Some(e);
        self.connect_streak = 0;
        self.check_streak = 0;
        e
    }
}

/// Duration of the `count`-th ejection: `base * count`, capped at `max` (never below base).
pub fn ejection_ns(p: &OutlierPolicy, count: u32) -> u64 {
    p.base_ejection_ns
        .saturating_mul(u64::from(count.max(1)))
        .min(p.max_ejection_ns.max(p.base_ejection_ns))
}

/// Most servers of a pool of `n` that may be ejected at once: `floor(n * percent / 100)`.
pub fn max_ejected(n: usize, max_ejection_percent: u32) -> usize {
    let pct = u128::from(max_ejection_percent.min(100));
    (n as u128 * pct / 100) as usize
}

/// Whether a pool is in panic: fewer than `threshold_percent` of its `in_service` servers
/// (ready, weight above 0) are `available` (also healthy and not ejected). In panic the
/// caller balances over every in-service server, healthy or not: some answers beat none.
/// A threshold of 0 never panics; an empty pool never does either.
pub fn in_panic(available: usize, in_service: usize, threshold_percent: u32) -> bool {
    in_service > 0
        && (available as u128) * 100 < u128::from(threshold_percent.min(100)) * in_service as u128
}

/// A pool's detector: the current failure-ratio window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detector {
    window_start_ns: u64,
}

impl Detector {
    /// A detector whose first window starts at `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Detector {
            window_start_ns: now_ns,
        }
    }

    /// When [`Detector::tick`] next has something to do: the end of the window or the
    /// end of the earliest ejection.
    pub fn next_due_ns<S: Deref<Target = ServerOutlier>>(
        &self,
        p: &OutlierPolicy,
        servers: &[S],
    ) -> u64 {
        servers
            .iter()
            .filter_map(|s| s.ejection.map(|e| e.until_ns))
            .fold(self.window_end(p), u64::min)
    }

    fn window_end(&self, p: &OutlierPolicy) -> u64 {
        self.window_start_ns.saturating_add(p.interval_ns.max(1))
    }

    /// Return the servers whose ejection time ran out; if the window has ended, judge it
    /// (`samples[i]`: the cumulative counters of `servers[i]` now) and start the next.
    /// Events go to `out` (returns first, then ejections and refusals, worst first).
    pub fn tick<S: DerefMut<Target = ServerOutlier>>(
        &mut self,
        p: &OutlierPolicy,
        servers: &mut [S],
        samples: &[Sample],
        now_ns: u64,
        out: &mut Vec<Event>,
    ) {
        // Servers back from an ejection in this tick are not judged on the window they
        // spent (mostly) out.
        let mut back = vec![false; servers.len()];
        for (i, s) in servers.iter_mut().enumerate() {
            if let Some(e) = s.ejection {
                if now_ns >= e.until_ns {
                    s.come_back(now_ns);
                    back[i] = true;
                    out.push(Event::Returned {
                        server: i,
                        reason: e.reason,
                        by_check: false,
                    });
                }
            }
        }
        if now_ns < self.window_end(p) {
            return;
        }
        self.window_start_ns = now_ns;
        // (server, failure ratio in ppm) of the judged servers.
        let mut judged: Vec<(usize, u64)> = Vec::new();
        for (i, (s, now)) in servers.iter_mut().zip(samples).enumerate() {
            let requests = now.requests.saturating_sub(s.base.requests);
            let failures = now.failures.saturating_sub(s.base.failures);
            s.base = *now;
            if s.ejection.is_none() && !back[i] && requests >= p.min_requests.max(1) {
                // Failures are counted when they end, requests when they start: clamp.
                let ppm =
                    u128::from(failures.min(requests)) * u128::from(PPM) / u128::from(requests);
                judged.push((i, ppm as u64));
            }
        }
        if p.failure_percent == 0 || judged.len() < 2 {
            return;
        }
        let m = judged.len() as u128;
        let sum: u128 = judged.iter().map(|&(_, r)| u128::from(r)).sum();
        let floor = u128::from(p.failure_percent.min(100)) * u128::from(PPM) / 100;
        let margin = u128::from(p.margin_percent) * u128::from(PPM) / 100;
        let mut outliers: Vec<(usize, u64)> = judged
            .iter()
            .copied()
            .filter(|&(_, r)| {
                let r = u128::from(r);
                // r - mean(peers) > margin, with mean(peers) = (sum - r) / (m - 1).
                r >= floor && r * (m - 1) > (sum - r) + margin * (m - 1)
            })
            .collect();
        outliers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (i, _) in outliers {
            out.push(try_eject(p, servers, i, Reason::FailureRatio, now_ns));
        }
    }

    /// A connect failure on `servers[i]`: the `connect_failures`-th in a row ejects it if
    /// the bound allows. `None` when nothing happened (below the threshold, already
    /// ejected, detection off, or a refusal already reported for this streak).
    pub fn on_connect_failure<S: DerefMut<Target = ServerOutlier>>(
        &mut self,
        p: &OutlierPolicy,
        servers: &mut [S],
        i: usize,
        now_ns: u64,
    ) -> Option<Event> {
        let s = servers.get_mut(i)?;
        if p.connect_failures == 0 || s.ejection.is_some() {
            return None;
        }
        s.connect_streak = s.connect_streak.saturating_add(1);
        if s.connect_streak < p.connect_failures {
            return None;
        }
        let first = s.connect_streak == p.connect_failures;
        match try_eject(p, servers, i, Reason::ConnectFailures, now_ns) {
            e @ Event::Ejected { .. } => Some(e),
            refused => first.then_some(refused),
        }
    }
}

/// Eject `servers[i]` if the bound allows.
fn try_eject<S: DerefMut<Target = ServerOutlier>>(
    p: &OutlierPolicy,
    servers: &mut [S],
    i: usize,
    reason: Reason,
    now_ns: u64,
) -> Event {
    let ejected = servers.iter().filter(|s| s.ejection.is_some()).count();
    if ejected >= max_ejected(servers.len(), p.max_ejection_percent) {
        return Event::Refused { server: i, reason };
    }
    let ejection = servers[i].eject(p, reason, now_ns);
    Event::Ejected {
        server: i,
        ejection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    const P: OutlierPolicy = OutlierPolicy {
        connect_failures: 3,
        interval_ns: 10 * S,
        min_requests: 20,
        failure_percent: 50,
        margin_percent: 30,
        max_ejection_percent: 50,
        base_ejection_ns: 30 * S,
        max_ejection_ns: 300 * S,
    };

    fn servers(n: usize) -> Vec<ServerOutlier> {
        vec![ServerOutlier::default(); n]
    }

    fn refs(v: &mut [ServerOutlier]) -> Vec<&mut ServerOutlier> {
        v.iter_mut().collect()
    }

    /// One window: `(requests, failures)` per server, added to running totals.
    fn window(
        d: &mut Detector,
        v: &mut [ServerOutlier],
        totals: &mut [Sample],
        counts: &[(u64, u64)],
        now: u64,
    ) -> Vec<Event> {
        for (t, &(r, f)) in totals.iter_mut().zip(counts) {
            t.requests += r;
            t.failures += f;
        }
        let mut out = Vec::new();
        d.tick(&P, &mut refs(v), totals, now, &mut out);
        out
    }

    fn ejected(ev: &[Event]) -> Vec<usize> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Ejected { server, .. } => Some(*server),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bound_rounds_down() {
        assert_eq!(max_ejected(1, 50), 0);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(9, 10), 0);
        assert_eq!(max_ejected(3, 100), 3);
        assert_eq!(max_ejected(3, 250), 3);
        assert_eq!(max_ejected(5, 0), 0);
    }

    #[test]
    fn panic_below_the_threshold_only() {
        assert!(!in_panic(0, 3, 0), "0 is off");
        assert!(in_panic(0, 3, 1));
        assert!(in_panic(1, 3, 50));
        assert!(
            !in_panic(2, 4, 50),
            "exactly at the threshold is not below it"
        );
        assert!(in_panic(1, 4, 50));
        assert!(
            !in_panic(0, 0, 100),
            "no server in service: nothing to spread over"
        );
        assert!(in_panic(2, 3, 100));
        assert!(!in_panic(3, 3, 100));
    }

    #[test]
    fn one_url_failing_everywhere_ejects_nobody() {
        let mut v = servers(3);
        let mut t = vec![Sample::default(); 3];
        let mut d = Detector::new(0);
        // Every request fails on every server.
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(50, 50), (50, 50), (50, 50)],
            10 * S,
        );
        assert!(ev.is_empty(), "{ev:?}");
        // Mixed with good traffic, shares slightly uneven: still alike within the margin.
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(60, 40), (50, 30), (55, 30)],
            20 * S,
        );
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn a_server_failing_alone_is_ejected_worst_first_within_the_bound() {
        let mut v = servers(4);
        let mut t = vec![Sample::default(); 4];
        let mut d = Detector::new(0);
        // Too few requests: nobody judged.
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(19, 19), (19, 0), (19, 0), (19, 0)],
            10 * S,
        );
        assert!(ev.is_empty(), "{ev:?}");
        // Two servers fail, 2 of 4 may go: both, the worse first.
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(40, 30), (40, 40), (40, 0), (40, 1)],
            20 * S,
        );
        assert_eq!(ejected(&ev), vec![1, 0], "{ev:?}");
        let e = v[1].ejection().unwrap();
        assert_eq!(e.reason, Reason::FailureRatio);
        assert_eq!((e.since_ns, e.until_ns, e.count), (20 * S, 50 * S, 1));
        // Below the floor: 40 % failures with peers at 0 % is not an outlier.
        let mut v = servers(3);
        let mut t = vec![Sample::default(); 3];
        let mut d = Detector::new(0);
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(100, 40), (100, 0), (100, 0)],
            10 * S,
        );
        assert!(ev.is_empty(), "{ev:?}");
        // Above the floor but within the margin of the peers' mean: not an outlier.
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(100, 70), (100, 45), (100, 45)],
            20 * S,
        );
        assert!(ev.is_empty(), "{ev:?}");
        // Two of three fail: only one may go (50 % of 3 rounds down to 1).
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(100, 100), (100, 90), (100, 0)],
            30 * S,
        );
        assert_eq!(
            ev,
            vec![
                Event::Ejected {
                    server: 0,
                    ejection: v[0].ejection().unwrap()
                },
                Event::Refused {
                    server: 1,
                    reason: Reason::FailureRatio
                }
            ]
        );
    }

    #[test]
    fn two_servers_one_failing() {
        let mut v = servers(2);
        let mut t = vec![Sample::default(); 2];
        let mut d = Detector::new(0);
        let ev = window(&mut d, &mut v, &mut t, &[(30, 30), (30, 0)], 10 * S);
        assert_eq!(ejected(&ev), vec![0]);
    }

    #[test]
    fn connect_failures_eject_after_a_streak_within_the_bound() {
        let mut v = servers(3);
        let mut d = Detector::new(0);
        let mut r = refs(&mut v);
        assert_eq!(d.on_connect_failure(&P, &mut r, 0, 1), None);
        assert_eq!(d.on_connect_failure(&P, &mut r, 0, 2), None);
        r[0].on_connected();
        assert_eq!(d.on_connect_failure(&P, &mut r, 0, 3), None, "reset");
        assert_eq!(d.on_connect_failure(&P, &mut r, 0, 4), None);
        let e = d.on_connect_failure(&P, &mut r, 0, 5);
        assert!(matches!(e, Some(Event::Ejected { server: 0, .. })), "{e:?}");
        assert_eq!(d.on_connect_failure(&P, &mut r, 0, 6), None, "already out");
        // A second server: the bound (1 of 3) refuses, once per streak.
        for t in 0..2 {
            assert_eq!(d.on_connect_failure(&P, &mut r, 1, 10 + t), None);
        }
        assert_eq!(
            d.on_connect_failure(&P, &mut r, 1, 20),
            Some(Event::Refused {
                server: 1,
                reason: Reason::ConnectFailures
            })
        );
        assert_eq!(d.on_connect_failure(&P, &mut r, 1, 21), None);
        assert!(!r[1].is_ejected());
        // Off.
        let off = OutlierPolicy {
            connect_failures: 0,
            ..P
        };
        for t in 0..10 {
            assert_eq!(d.on_connect_failure(&off, &mut r, 2, 30 + t), None);
        }
    }

    #[test]
    fn ejection_time_grows_caps_and_decays() {
        let mut v = servers(2);
        let mut d = Detector::new(0);
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..12 {
            let mut r = refs(&mut v);
            let mut e = None;
            for _ in 0..3 {
                now += 1;
                e = d.on_connect_failure(&P, &mut r, 0, now);
            }
            let Some(Event::Ejected { ejection, .. }) = e else {
                panic!("{e:?}")
            };
            lengths.push((ejection.until_ns - ejection.since_ns) / S);
            // Its time runs out; it returns and fails again at once.
            now = ejection.until_ns;
            let mut out = Vec::new();
            d.tick(&P, &mut r, &[Sample::default(); 2], now, &mut out);
            assert!(out.contains(&Event::Returned {
                server: 0,
                reason: Reason::ConnectFailures,
                by_check: false
            }));
        }
        assert_eq!(
            lengths,
            vec![30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
        // Twenty quiet intervals later, k has decayed back to 0: base again.
        now += 20 * P.interval_ns;
        let mut r = refs(&mut v);
        let mut e = None;
        for _ in 0..3 {
            e = d.on_connect_failure(&P, &mut r, 0, now);
        }
        let Some(Event::Ejected { ejection, .. }) = e else {
            panic!("{e:?}")
        };
        assert_eq!(ejection.count, 1);
        assert_eq!(ejection.until_ns - ejection.since_ns, 30 * S);
    }

    #[test]
    fn checks_end_connect_ejections_only() {
        let mut v = servers(4);
        let mut d = Detector::new(0);
        let mut r = refs(&mut v);
        for t in 0..3 {
            d.on_connect_failure(&P, &mut r, 0, t);
        }
        assert!(r[0].is_ejected());
        assert!(!r[0].on_check(true, 2, 10));
        assert!(!r[0].on_check(false, 2, 11), "a failed check resets");
        assert!(!r[0].on_check(true, 2, 12));
        assert!(r[0].on_check(true, 2, 13));
        assert!(!r[0].is_ejected());
        // A failure-ratio ejection ignores checks.
        let mut t = vec![Sample::default(); 4];
        let ev = window(
            &mut d,
            &mut v,
            &mut t,
            &[(50, 50), (50, 0), (50, 0), (50, 0)],
            10 * S,
        );
        assert_eq!(ejected(&ev), vec![0]);
        for k in 0..10 {
            assert!(!v[0].on_check(true, 1, 11 * S + k));
        }
        assert!(v[0].is_ejected());
    }

    #[test]
    fn next_due_is_the_window_end_or_the_earliest_return() {
        let mut v = servers(2);
        let mut d = Detector::new(5);
        assert_eq!(d.next_due_ns(&P, &refs(&mut v)), 5 + P.interval_ns);
        let mut r = refs(&mut v);
        for t in 0..3 {
            d.on_connect_failure(&P, &mut r, 1, t);
        }
        // Ejected at 2 for 30 s: returns after the 10 s window ends.
        assert_eq!(d.next_due_ns(&P, &r), 5 + P.interval_ns);
        let mut out = Vec::new();
        d.tick(&P, &mut r, &[Sample::default(); 2], 10 * S + 5, &mut out);
        d.tick(&P, &mut r, &[Sample::default(); 2], 20 * S + 5, &mut out);
        assert!(out.is_empty());
        // The window now ends at 30 s + 5: the return comes first.
        assert_eq!(d.next_due_ns(&P, &r), 2 + 30 * S);
        d.tick(&P, &mut r, &[Sample::default(); 2], 30 * S + 2, &mut out);
        assert_eq!(
            out,
            vec![Event::Returned {
                server: 1,
                reason: Reason::ConnectFailures,
                by_check: false
            }]
        );
        assert_eq!(d.next_due_ns(&P, &r), 5 + 30 * S);
    }

    /// What a property test feeds the detector.
    #[derive(Clone, Debug)]
    enum Op {
        /// Time passes (ns).
        Wait(u64),
        ConnectFail(usize),
        Connected(usize),
        Check(usize, bool),
        /// A window's requests/failures on one server.
        Traffic(usize, u64, u64),
        Tick,
    }

    fn op(n: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..40 * S).prop_map(Op::Wait),
            (0..n).prop_map(Op::ConnectFail),
            (0..n).prop_map(Op::Connected),
            ((0..n), any::<bool>()).prop_map(|(i, ok)| Op::Check(i, ok)),
            ((0..n), 0u64..100, 0u64..100).prop_map(|(i, r, f)| Op::Traffic(i, r, f.min(r))),
            Just(Op::Tick),
        ]
    }

    fn policy() -> impl Strategy<Value = OutlierPolicy> {
        (
            0u32..5,
            1u64..20,
            0u64..30,
            0u32..=100,
            0u32..60,
            0u32..=100,
            1u64..60,
            0u64..400,
        )
            .prop_map(|(cf, iv, mr, fp, mp, me, base, max)| OutlierPolicy {
                connect_failures: cf,
                interval_ns: iv * S,
                min_requests: mr,
                failure_percent: fp,
                margin_percent: mp,
                max_ejection_percent: me,
                base_ejection_ns: base * S,
                max_ejection_ns: max * S,
            })
    }

    proptest! {
        /// Whatever happens: never more than max_ejected servers out; every ejection lasts
        /// base * k capped; a server returns only when its time ran out, or by checks
        /// after a connect-failure ejection; events match the state.
        #[test]
        fn invariants(p in policy(), n in 1usize..7, rise in 1u32..4,
                      ops in prop::collection::vec(op(6), 0..300)) {
            let mut v = servers(n);
            let mut totals = vec![Sample::default(); n];
            let mut d = Detector::new(0);
            let mut now = 0u64;
            let max = max_ejected(n, p.max_ejection_percent);
            for o in ops {
                let mut events = Vec::new();
                let before: Vec<Option<Ejection>> = v.iter().map(|s| s.ejection()).collect();
                match o {
                    Op::Wait(t) => now += t,
                    Op::ConnectFail(i) if i < n => {
                        events.extend(d.on_connect_failure(&p, &mut refs(&mut v), i, now));
                    }
                    Op::Connected(i) if i < n => v[i].on_connected(),
                    Op::Check(i, ok) if i < n => {
                        let was = v[i].ejection();
                        if v[i].on_check(ok, rise, now) {
                            prop_assert!(ok);
                            prop_assert_eq!(was.map(|e| e.reason), Some(Reason::ConnectFailures));
                        }
                    }
                    Op::Traffic(i, r, f) if i < n => {
                        totals[i].requests += r;
                        totals[i].failures += f;
                    }
                    Op::Tick => d.tick(&p, &mut refs(&mut v), &totals, now, &mut events),
                    _ => {}
                }
                let out = v.iter().filter(|s| s.is_ejected()).count();
                prop_assert!(out <= max, "{} ejected, at most {}", out, max);
                for e in &events {
                    match *e {
                        Event::Ejected { server, ejection } => {
                            prop_assert_eq!(before[server], None);
                            prop_assert_eq!(v[server].ejection(), Some(ejection));
                            prop_assert!(ejection.count >= 1);
                            prop_assert_eq!(ejection.since_ns, now);
                            prop_assert_eq!(ejection.until_ns - now, ejection_ns(&p, ejection.count));
                            prop_assert!(ejection.until_ns - now >= p.base_ejection_ns);
                            prop_assert!(ejection.until_ns - now <= p.max_ejection_ns.max(p.base_ejection_ns));
                        }
                        Event::Returned { server, by_check, .. } => {
                            prop_assert!(!by_check);
                            let e = before[server].unwrap();
                            prop_assert!(now >= e.until_ns, "returned early");
                        }
                        Event::Refused { server, .. } => {
                            prop_assert!(!v[server].is_ejected());
                            prop_assert_eq!(out, max);
                        }
                    }
                }
                // No server left rotation without an event saying so.
                for (i, s) in v.iter().enumerate() {
                    if before[i].is_none() && s.is_ejected() {
                        let said = events.iter().any(|e| matches!(e, Event::Ejected { server, .. } if *server == i));
                        prop_assert!(said);
                    }
                }
            }
        }

        /// Servers that fail alike are never ejected by the failure ratio, whatever the
        /// ratio, the policy or the number of windows.
        #[test]
        fn alike_servers_are_never_outliers(p in policy(), n in 1usize..8,
                                            windows in prop::collection::vec((0u64..200, 0u64..200), 1..20)) {
            let mut v = servers(n);
            let mut totals = vec![Sample::default(); n];
            let mut d = Detector::new(0);
            let mut now = 0;
            for (r, f) in windows {
                for t in totals.iter_mut() {
                    t.requests += r;
                    t.failures += f.min(r);
                }
                now += p.interval_ns;
                let mut out = Vec::new();
                d.tick(&p, &mut refs(&mut v), &totals, now, &mut out);
                prop_assert!(out.is_empty(), "{:?}", out);
            }
        }

        /// A failure-ratio ejection needs enough requests, the floor and the margin above
        /// the peers' mean; with no bound, every judged server at least as bad as an
        /// ejected one is ejected too.
        #[test]
        fn ratio_ejections_are_justified(n in 2usize..7,
                                         counts in prop::collection::vec((0u64..100, 0u64..100), 7)) {
            let p = OutlierPolicy { max_ejection_percent: 100, ..P };
            let mut v = servers(n);
            let samples: Vec<Sample> = counts[..n].iter()
                .map(|&(r, f)| Sample { requests: r, failures: f.min(r) }).collect();
            let mut d = Detector::new(0);
            let mut out = Vec::new();
            d.tick(&p, &mut refs(&mut v), &samples, p.interval_ns, &mut out);
            let ratio = |s: &Sample| s.failures as f64 / s.requests as f64;
            let judged: Vec<usize> = (0..n).filter(|&i| samples[i].requests >= p.min_requests).collect();
            for i in ejected(&out) {
                prop_assert!(judged.contains(&i));
                let r = ratio(&samples[i]);
                prop_assert!(r >= 0.5);
                let peers: Vec<f64> = judged.iter().filter(|&&j| j != i).map(|&j| ratio(&samples[j])).collect();
                let mean = peers.iter().sum::<f64>() / peers.len() as f64;
                // (Ratios are compared in ppm, truncated: allow for that.)
                prop_assert!(r - mean > 0.3 - 1e-5, "r {} mean {}", r, mean);
                for &j in &judged {
                    if !v[j].is_ejected() {
                        prop_assert!(ratio(&samples[j]) < r, "{} left in, {} out", j, i);
                    }
                }
            }
        }
    }
}
