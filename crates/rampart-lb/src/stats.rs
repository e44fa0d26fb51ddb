//! Traffic counters of listeners, pools and servers, cheap enough for the data path.
//!
//! Every counter set is sharded by thread: each worker thread writes only its own
//! cache-line-aligned shard (relaxed atomic adds, no locks, no allocation), and readers
//! (the admin API, `/metrics`) sum the shards. A thread learns its shard index once, at
//! start-up ([`set_thread_shard`]); threads that never set one (health checks, admin) use
//! shard 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Make the calling thread write to shard `i` (worker `w` uses `w + 1`).
pub fn set_thread_shard(i: usize) {
    SHARD.with(|c| c.set(i));
}

/// Latency buckets: two per power of two of microseconds, from 1 µs to ~67 s, the last
/// one open.
pub const LAT_BUCKETS: usize = 54;

/// Why a request failed, for the "errors by kind" counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connecting to the server failed or timed out.
    Connect = 0,
    /// The server failed (reset, closed) after the request was sent, before any answer.
    Upstream = 1,
    /// No response head within the response timeout.
    Timeout = 2,
    /// The server answered 5xx.
    Status5xx = 3,
    /// Every eligible server was full and the queue was full.
    QueueFull = 4,
    /// Waited in the queue past its timeout.
    QueueTimeout = 5,
    /// No healthy (ready) server.
    NoServer = 6,
}

pub const ERROR_KINDS: [ErrorKind; 7] = [
    ErrorKind::Connect,
    ErrorKind::Upstream,
    ErrorKind::Timeout,
    ErrorKind::Status5xx,
    ErrorKind::QueueFull,
    ErrorKind::QueueTimeout,
    ErrorKind::NoServer,
];

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status5xx => "status_5xx",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::QueueTimeout => "queue_timeout",
            ErrorKind::NoServer => "no_server",
        }
    }
}

/// One thread's counters (its own cache lines). What every response writes (its class,
/// the bytes sent back, the latency sum) shares the first line, so that a response costs
/// two lines (that one and its latency bucket's): with a large pool a server's counters
/// are mostly out of the CPU's caches when its next request comes.
#[repr(C, align(64))]
struct Shard {
    /// Responses by status class: index 1..=5 for 1xx..5xx, 0 for anything else.
    class: [AtomicU64; 6],
    bytes_out: AtomicU64,
    lat_sum_ns: AtomicU64,
    bytes_in: AtomicU64,
    errors: [AtomicU64; 7],
    retries: AtomicU64,
    lat: [AtomicU64; LAT_BUCKETS],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            class: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: Default::default(),
            retries: AtomicU64::new(0),
            lat: std::array::from_fn(|_| AtomicU64::new(0)),
            lat_sum_ns: AtomicU64::new(0),
        }
    }
}

/// A sharded counter set (one per listener, pool and server).
pub struct Counters {
    shards: Box<[Shard]>,
}

impl Counters {
    /// Counters for `threads` writer threads (plus shard 0 for the others).
    pub fn new(threads: usize) -> Counters {
        Counters {
            shards: (0..threads + 1).map(|_| Shard::default()).collect(),
        }
    }

    #[inline]
    fn shard(&self) -> &Shard {
        let i = SHARD.with(|c| c.get());
        match self.shards.get(i) {
            Some(s) => s,
            None => &self.shards[0],
        }
    }

    /// A response with `status`, its head `ns` nanoseconds after the request was sent.
    #[inline]
    pub fn response(&self, status: u16, ns: u64) {
        let s = self.shard();
        let c = match status / 100 {
            c @ 1..=5 => c as usize,
            _ => 0,
        };
        s.class[c].fetch_add(1, Ordering::Relaxed);
        s.lat[lat_bucket(ns)].fetch_add(1, Ordering::Relaxed);
        s.lat_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    #[inline]
    pub fn error(&self, kind: ErrorKind) {
        self.shard().errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn retry(&self) {
        self.shard().retries.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn bytes_out(&self, n: usize) {
        self.shard()
            .bytes_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    #[inline]
    pub fn bytes_in(&self, n: usize) {
        self.shard().bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The sum over all shards.
    pub fn snapshot(&self) -> Snapshot {
        let mut o = Snapshot::default();
        for s in self.shards.iter() {
            for (a, b) in o.class.iter_mut().zip(&s.class) {
                *a += b.load(Ordering::Relaxed);
            }
            for (a, b) in o.errors.iter_mut().zip(&s.errors) {
                *a += b.load(Ordering::Relaxed);
            }
            for (a, b) in o.lat.iter_mut().zip(&s.lat) {
                *a += b.load(Ordering::Relaxed);
            }
            o.bytes_in += s.bytes_in.load(Ordering::Relaxed);
            o.bytes_out += s.bytes_out.load(Ordering::Relaxed);
            o.retries += s.retries.load(Ordering::Relaxed);
            o.lat_sum_ns += s.lat_sum_ns.load(Ordering::Relaxed);
        }
        o
    }
}

/// Summed counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub class: [u64; 6],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: [u64; 7],
    pub retries: u64,
    pub lat: [u64; LAT_BUCKETS],
    pub lat_sum_ns: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            class: [0; 6],
            bytes_in: 0,
            bytes_out: 0,
            errors: [0; 7],
            retries: 0,
            lat: [0; LAT_BUCKETS],
            lat_sum_ns: 0,
        }
    }
}

impl Snapshot {
    /// Responses counted (every class).
    pub fn responses(&self) -> u64 {
        self.class.iter().sum()
    }

    /// The latency below which a fraction `q` of responses fell, in seconds (the upper
    /// bound of its bucket); `None` without responses.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.lat.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut cum = 0;
        for (i, n) in self.lat.iter().enumerate() {
            cum += n;
            if cum >= want {
                return Some(bucket_upper_us(i).min(1e12) / 1e6);
            }
        }
        None
    }
}

/// The bucket of a latency of `ns` nanoseconds.
#[inline]
pub fn lat_bucket(ns: u64) -> usize {
    let us = ns / 1000;
    if us == 0 {
        return 0;
    }
    let l = 63 - us.leading_zeros() as usize; // floor(log2(us))
    let half = if l == 0 {
        0
    } else {
        ((us >> (l - 1)) & 1) as usize
    };
    (2 * l + 1 + half).min(LAT_BUCKETS - 1)
}

/// The upper bound of bucket `i` in microseconds (infinite for the last one).
pub fn bucket_upper_us(i: usize) -> f64 {
    if i == 0 {
        return 1.0;
    }
    if i >= LAT_BUCKETS - 1 {
        return f64::INFINITY;
    }
    let l = (i - 1) / 2;
    let base = (1u64 << l) as f64;
    if (i - 1).is_multiple_of(2) {
        base * 1.5
    } else {
        base * 2.0
    }
}

/// The snapshot's latencies as a Prometheus histogram: upper bounds in seconds at powers
/// of two of microseconds from 64 µs (per-bucket counts, not cumulative), the last one
/// `f64::MAX` (encoded as `+Inf`).
pub fn prometheus_buckets(s: &Snapshot) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = (6..=26).map(|p| ((1u64 << p) as f64 / 1e6, 0)).collect();
    out.push((f64::MAX, 0));
    for (i, n) in s.lat.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let up = bucket_upper_us(i) / 1e6;
        let slot = out
            .iter()
            .position(|(b, _)| *b >= up)
            .unwrap_or(out.len() - 1);
        out[slot].1 += n;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A response writes its class, the bytes and the latency sum: one cache line (plus
    /// its latency bucket's).
    #[test]
    fn a_response_writes_one_line_besides_its_bucket() {
        use std::mem::offset_of;
        assert!(offset_of!(Shard, class) + 6 * 8 <= 64);
        assert!(offset_of!(Shard, bytes_out) + 8 <= 64);
        assert!(offset_of!(Shard, lat_sum_ns) + 8 <= 64);
    }

    #[test]
    fn buckets_hold_their_values() {
        for ns in [
            0u64,
            999,
            1_000,
            1_499,
            1_500,
            2_000,
            3_000,
            10_000,
            123_456,
            1_000_000,
            49_000_000,
            2_000_000_000,
        ] {
            let i = lat_bucket(ns);
            let us = (ns / 1000) as f64;
            assert!(us < bucket_upper_us(i), "{ns} ns in bucket {i}");
            if i > 0 {
                assert!(us >= bucket_upper_us(i - 1), "{ns} ns in bucket {i}");
            }
        }
        assert_eq!(lat_bucket(u64::MAX), LAT_BUCKETS - 1);
    }

    #[test]
    fn percentiles_and_prometheus_buckets() {
        let c = Counters::new(2);
        set_thread_shard(2);
        for _ in 0..90 {
            c.response(200, 1_000_000); // 1 ms
        }
        set_thread_shard(1);
        for _ in 0..10 {
            c.response(503, 100_000_000); // 100 ms
        }
        c.error(ErrorKind::Connect);
        let s = c.snapshot();
        assert_eq!(s.class[2], 90);
        assert_eq!(s.class[5], 10);
        assert_eq!(s.errors[ErrorKind::Connect as usize], 1);
        let p50 = s.percentile(0.5).unwrap();
        assert!((0.001..=0.0015).contains(&p50), "{p50}");
        let p99 = s.percentile(0.99).unwrap();
        assert!((0.1..=0.15).contains(&p99), "{p99}");
        let b = prometheus_buckets(&s);
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 100);
        // 1 ms lands at or below the 1.024 ms bound; 100 ms at or below 131 ms.
        let le = |secs: f64| b.iter().filter(|x| x.0 <= secs).map(|x| x.1).sum::<u64>();
        assert_eq!(le(0.001024), 90);
        assert_eq!(le(0.131072), 100);
        set_thread_shard(0);
    }
}
