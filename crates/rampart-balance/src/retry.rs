//! A retry budget (Finagle's `RetryBudget`, linkerd's retry budget).

use std::sync::atomic::{AtomicU64, Ordering};

/// Number of buckets the sliding window is split into.
const BUCKETS: usize = 10;

/// A retry budget (linkerd/finagle style): retries allowed = min_per_sec * window +
/// ratio * requests seen in the last window.
///
/// The window slides in steps of `window_ns / 10`: requests and retries are counted in ten
/// buckets, and a bucket older than the window is cleared when reused. Retries are not
/// requests: the caller reports each original request with [`on_request`](Self::on_request)
/// and asks [`try_retry`](Self::try_retry) before each retry, which records the retry when it
/// allows it. So with `ratio = 0.2` at least 80 % of the upstream traffic is first attempts,
/// and a dead pool cannot be hammered with retries; `min_per_sec` lets a quiet service retry.
///
/// Lock-free: atomics only, no allocation. Concurrent callers crossing a bucket boundary may
/// lose a count or two, which a budget tolerates.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_retries: f64,
    bucket_ns: u64,
    buckets: [Bucket; BUCKETS],
}

#[derive(Debug, Default)]
struct Bucket {
    /// Index of the time slice (`now / bucket_ns`) this bucket counts, plus 1 (0 = unused).
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// `ratio`: retries allowed per request (e.g. 0.2); `min_per_sec`: retries always allowed
    /// per second on top; `window_ns`: the sliding window (e.g. 10 s; at least 10 ns).
    pub fn new(ratio: f64, min_per_sec: u32, window_ns: u64) -> Self {
        let window_ns = window_ns.max(BUCKETS as u64);
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio
        } else {
            0.0
        };
        RetryBudget {
            ratio,
            min_retries: f64::from(min_per_sec) * window_ns as f64 / 1e9,
            bucket_ns: window_ns / BUCKETS as u64,
            buckets: Default::default(),
        }
    }

    /// Count one request (a first attempt) at `now_ns`.
    pub fn on_request(&self, now_ns: u64) {
        self.bucket(now_ns).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one retry at `now_ns` fits the budget; if so it is counted.
    pub fn try_retry(&self, now_ns: u64) -> bool {
        let (requests, retries) = self.totals(now_ns);
        let allowed = self.min_retries + self.ratio * requests as f64;
        if (retries as f64) + 1.0 <= allowed {
            self.bucket(now_ns).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// The bucket for `now_ns`, cleared if it last counted an older slice.
    fn bucket(&self, now_ns: u64) -> &Bucket {
        let epoch = now_ns / self.bucket_ns + 1;
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen < epoch
            && b.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Requests and retries in the window ending at `now_ns` (the current slice and the nine
    /// before it).
    fn totals(&self, now_ns: u64) -> (u64, u64) {
        let epoch = now_ns / self.bucket_ns + 1;
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        let mut req = 0;
        let mut ret = 0;
        for b in &self.buckets {
            let e = b.epoch.load(Ordering::Acquire);
            if e >= oldest && e <= epoch {
                req += b.requests.load(Ordering::Relaxed);
                ret += b.retries.load(Ordering::Relaxed);
            }
        }
        (req, ret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn drain(b: &RetryBudget, now: u64) -> u32 {
        let mut n = 0;
        while b.try_retry(now) {
            n += 1;
            assert!(n < 1_000_000);
        }
        n
    }

    #[test]
    fn ratio_of_requests() {
        let b = RetryBudget::new(0.2, 0, 10 * S);
        assert!(!b.try_retry(0), "no requests, no minimum: no retry");
        for _ in 0..100 {
            b.on_request(S);
        }
        assert_eq!(drain(&b, 2 * S), 20);
        for _ in 0..10 {
            b.on_request(3 * S);
        }
        assert_eq!(drain(&b, 3 * S), 2);
    }

    #[test]
    fn minimum_per_second() {
        let b = RetryBudget::new(0.0, 3, 10 * S);
        assert_eq!(drain(&b, 0), 30);
        let b = RetryBudget::new(0.1, 1, 2 * S);
        for _ in 0..30 {
            b.on_request(0);
        }
        assert_eq!(drain(&b, 0), 2 + 3);
    }

    #[test]
    fn window_slides() {
        let b = RetryBudget::new(0.5, 0, 10 * S);
        for _ in 0..10 {
            b.on_request(0);
        }
        assert_eq!(drain(&b, 0), 5);
        // 9.5 s later the requests and the retries still count: nothing new.
        assert_eq!(drain(&b, 9 * S + S / 2), 0);
        // Past the window both are forgotten.
        for _ in 0..4 {
            b.on_request(11 * S);
        }
        assert_eq!(drain(&b, 11 * S), 2);
        // Long after, everything is clear again: buckets reused from old epochs reset.
        assert!(!b.try_retry(1_000 * S));
        b.on_request(1_000 * S);
        b.on_request(1_000 * S);
        assert_eq!(drain(&b, 1_000 * S), 1);
    }

    proptest! {
        /// A retry is granted exactly when, counting it, the retries in the budget's window
        /// (bucket-aligned: the current slice and the nine before) fit
        /// `min * window + ratio * requests` in that window.
        #[test]
        fn grants_exactly_the_budget(ratio in 0.0f64..1.0, min in 0u32..3,
                                     events in prop::collection::vec((any::<bool>(), 0u64..S / 2), 1..300)) {
            let window = 10 * S;
            let b = RetryBudget::new(ratio, min, window);
            let mut now = 0;
            let mut log: Vec<(u64, bool)> = Vec::new(); // (time, is a granted retry)
            for (is_retry, dt) in events {
                now += dt;
                if !is_retry {
                    b.on_request(now);
                    log.push((now, false));
                    continue;
                }
                let bucket = window / 10;
                let from = (now / bucket).saturating_sub(9) * bucket;
                let req = log.iter().filter(|&&(t, r)| !r && t >= from).count() as f64;
                let ret = log.iter().filter(|&&(t, r)| r && t >= from).count() as f64;
                let budget = f64::from(min) * 10.0 + ratio * req;
                if b.try_retry(now) {
                    log.push((now, true));
                    prop_assert!(ret + 1.0 <= budget + 1e-9, "granted: {} retries, {} requests", ret, req);
                } else {
                    prop_assert!(ret + 1.0 > budget - 1e-9, "refused: {} retries, {} requests", ret, req);
                }
            }
        }
    }
}
