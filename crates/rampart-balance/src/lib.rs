//! Backend selection algorithms for rampart. Pure code: no I/O, no clocks, no threads;
//! time is passed in by the caller as nanoseconds since any fixed origin (`now_ns`).
//!
//! The contract with the load balancer is written down in `notes/balance-api.md`:
//!
//! * [`Balancer`] picks a server from a [`ServerSet`] (the lb's live view over its atomics)
//!   with one of the five [`Algorithm`]s.
//! * [`PeakEwma`] estimates a server's response time for least-response-time from what
//!   each [`Attempt`] came to: the server's wait for an answer, or a penalty for a failure.
//! * [`health::HealthState`] is one server's up/down state machine (active checks: rise, fall).
//! * [`outlier`] decides which servers passive evidence ejects (failure ratio against the
//!   peers, consecutive connect failures), how long, how many at once, and when a pool
//!   panics (balances over every server).
//! * [`slow_start_weight`] ramps a recovered server's weight up.
//! * [`RetryBudget`] bounds retries to a fraction of the traffic.
//! * [`hash_key`] turns a client address into the key source-IP hash expects.
//!
//! # Cost of a pick
//!
//! `pick()` never allocates and its cost does not grow with the pool (a unit test counts
//! the servers a pick reads: the same bound at 2 and at 10,000 servers). Per algorithm:
//!
//! * round robin (**exact**): WF2Q's schedule over two indexed heaps (`wrr.rs`), `O(log n)`
//!   in one short `Mutex` critical section, or, while all weights are equal, the same
//!   schedule as a rotation over a two-level bit set, `O(1)`; exact weighted shares over
//!   every cycle of `sum(weights)` picks from a rebuild, never a whole pick ahead of the ideal
//!   share nor two behind (interleaved like nginx's smooth round robin, not the same
//!   sequence);
//! * least connections (**exact**, for weights up to 65,535): an indexed heap keyed by
//!   `(in_flight + 1) / weight` in 32.32 fixed point (`leastconn.rs`), turns among ties;
//!   `O(log n)` per pick and per [`Balancer::load_changed`] (the caller reports each
//!   request's end), under a `Mutex`; while all weights are equal, the same order as one
//!   first-come-first-served list per load (`levels.rs`), `O(1)` per pick and per end;
//! * least response time, random two choices (**approximate** by design: power of two
//!   choices): lock-free; one atomic add on the random state and, while most servers are
//!   eligible, `O(1)` reads of two servers;
//! * source-IP hash: one uncontended `RwLock` read and one table lookup; the table itself is
//!   built (allocating, `O(table size)`) in [`Balancer::rebuild`], and on
//!   [`Balancer::update`] only when a server joins (one that leaves keeps its slots: its
//!   clients go to the next slot's server and come back when it does).
//!
//! One server going up, down or changing weight is `O(log n)` through [`Balancer::update`]
//! for round robin and least connections (no rebuild).
//!
//! `examples/pick_cost.rs` measures ns per pick by pool size (one thread, 64 requests in
//! flight); on the 2-core dev machine, busy with other builds: round robin (equal weights)
//! 30-90 ns at 2, 1,000 and 10,000 servers; least connections (equal weights) 47 ns at
//! each of them (the heap alone: 49, 115 and 135 ns); the others 20-250 ns at every size.

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed test, not a crash on user input.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod ewma;
pub mod health;
mod heap;
mod leastconn;
mod levels;
mod maglev;
pub mod outlier;
mod retry;
mod rng;
mod select;
mod slow_start;
mod wrr;

#[cfg(test)]
mod testset;

pub use ewma::{Attempt, PeakEwma};
pub use retry::RetryBudget;
pub use select::Balancer;
pub use slow_start::slow_start_weight;

use std::fmt;
use std::str::FromStr;

/// Algorithm names as used in config and CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Smooth weighted round robin (nginx's algorithm).
    RoundRobin,
    /// Fewest in-flight requests (or connections) per unit of weight.
    LeastConnections,
    /// Power of two choices over Peak-EWMA latency times load.
    LeastResponseTime,
    /// Weighted Maglev consistent hashing of the client address.
    SourceIpHash,
    /// Power of two random choices over in-flight load.
    RandomTwoChoices,
}

impl Algorithm {
    /// Every algorithm, in documentation order.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::LeastResponseTime,
        Algorithm::SourceIpHash,
        Algorithm::RandomTwoChoices,
    ];

    /// The name used in config files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConnections => "least-connections",
            Algorithm::LeastResponseTime => "least-response-time",
            Algorithm::SourceIpHash => "source-ip-hash",
            Algorithm::RandomTwoChoices => "random-two-choices",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An algorithm name that is not one of [`Algorithm::ALL`]. Its `Display` lists the valid names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownAlgorithm {
    /// The name that was given.
    pub name: String,
}

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown algorithm `{}`, expected one of: ", self.name)?;
        for (i, a) in Algorithm::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(a.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownAlgorithm {}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAlgorithm { name: s.to_owned() })
    }
}

/// The live view of a pool's servers that the lb implements over its atomics.
///
/// Implementations must be cheap: `pick()` calls these methods `O(n)` times and must not
/// allocate, so neither should they.
pub trait ServerSet {
    /// Number of servers; valid indices are `0..len()`.
    fn len(&self) -> usize;
    /// Whether there are no servers at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Effective weight for NEW requests right now. 0 = not eligible (down, draining,
    /// maintenance, already tried in this request, or full). Slow start is already applied.
    fn weight(&self, i: usize) -> u32;
    /// Weight of server i for building the source-IP-hash (Maglev) table in
    /// [`Balancer::rebuild`]: its configured weight, without slow start. Only servers with
    /// `weight(i) > 0` get table slots; this sets their share (0 is taken as 1).
    ///
    /// Defaults to `weight(i)`. Override it when `weight` includes slow start: the table is
    /// only rebuilt on membership changes, so a table built while a server ramps up would
    /// keep its reduced share until the next change (and hashing clients should not move
    /// twice anyway).
    fn table_weight(&self, i: usize) -> u32 {
        self.weight(i)
    }
    /// Requests (HTTP) or connections (TCP) in flight on server i.
    fn in_flight(&self, i: usize) -> u32;
    /// Peak-EWMA latency estimate of server i in nanoseconds (see [`PeakEwma::get`]).
    fn latency_ns(&self, i: usize) -> f64;
    /// Stable identity of server i for consistent hashing (e.g. its name or address).
    fn id(&self, i: usize) -> &str;
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hash a client IP (or any bytes) to the u64 key [`Algorithm::SourceIpHash`] expects.
///
/// The function is fixed forever (it decides which server a client sticks to, also across
/// restarts and across several balancers in front of the same pool): 64-bit FNV-1a over
/// the bytes, followed by the MurmurHash3 `fmix64` finalizer so that every output bit
/// depends on every input bit (plain FNV-1a is weak in its high bits for short inputs such
/// as 4-byte IPv4 addresses). It is not keyed, so it is not DoS-resistant; that is fine for
/// choosing among a handful of servers, where an attacker gains nothing by colliding.
///
/// Pass the address octets (`Ipv4Addr::octets()`, `Ipv6Addr::octets()`), not their text.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
pub(crate) fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
        }
    }

    #[test]
    fn unknown_algorithm_lists_valid_names() {
        let err = "roundrobin".parse::<Algorithm>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`roundrobin`"), "{msg}");
        for a in Algorithm::ALL {
            assert!(msg.contains(a.as_str()), "{msg} lacks {a}");
        }
    }

    #[test]
    fn hash_key_is_stable_and_spreads() {
        // Pinned values: a change here would move every client to another server.
        assert_eq!(hash_key(b""), fmix64(FNV_OFFSET));
        let a = hash_key(&[127, 0, 0, 1]);
        assert_eq!(a, hash_key(&[127, 0, 0, 1]));
        assert_ne!(a, hash_key(&[127, 0, 0, 2]));
        // Known FNV-1a 64 vector: fnv1a64("a") = 0xaf63dc4c8601ec8c.
        assert_eq!(hash_key(b"a"), fmix64(0xaf63_dc4c_8601_ec8c));
        // Adjacent IPv4 addresses spread over the high bits too.
        let mut buckets = [0u32; 16];
        for i in 0..=255u8 {
            for j in 0..16u8 {
                buckets[(hash_key(&[10, 0, j, i]) >> 60) as usize] += 1;
            }
        }
        for b in buckets {
            assert!((200..=320).contains(&b), "{buckets:?}");
        }
    }
}
