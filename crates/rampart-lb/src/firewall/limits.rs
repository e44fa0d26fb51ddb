//! Per-client state of the L7 firewall: a token bucket of requests and a count of open
//! connections per client address, in a sharded table whose size is bounded (idle
//! clients are forgotten first). Pure: the caller passes the time.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use rampart_topology::lb::firewall::RateLimit;

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    tokens: f64,
    at: Instant,
    conns: u32,
}

/// The table of one listener's clients.
pub struct Clients {
    shards: Box<[Mutex<HashMap<IpAddr, Entry, Fold>>]>,
    per_shard: usize,
}

/// A cheap hash of an address (the table is bounded, so collisions cost little).
#[derive(Clone, Copy, Default)]
pub struct Fold;
pub struct FoldHasher(u64);
impl BuildHasher for Fold {
    type Hasher = FoldHasher;
    fn build_hasher(&self) -> FoldHasher {
        FoldHasher(0xcbf2_9ce4_8422_2325)
    }
}
impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        // Murmur3's finaliser: the low bits pick the shard, the high ones the bucket.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

impl Clients {
    /// A table that remembers at most about `max_clients` addresses.
    pub fn new(max_clients: usize) -> Clients {
        Clients {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Fold)))
                .collect(),
            per_shard: (max_clients / SHARDS).max(16),
        }
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, Entry, Fold>> {
        let h = Fold.hash_one(ip);
        &self.shards[(h as usize) % SHARDS]
    }

    /// One request of `ip` at `now`: allowed, or refused with how long until a token is
    /// back (a `Retry-After`, at least a second).
    pub fn take(&self, ip: IpAddr, now: Instant, rate: RateLimit) -> Result<(), Duration> {
        let Ok(mut m) = self.shard(ip).lock() else {
            return Ok(());
        };
        let burst = f64::from(rate.burst);
        if !m.contains_key(&ip) && m.len() >= self.per_shard {
            evict(&mut m, now, Some(rate), self.per_shard);
        }
        let e = m.entry(ip).or_insert(Entry {
            tokens: burst,
            at: now,
            conns: 0,
        });
        let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
        e.tokens = (e.tokens + elapsed * rate.per_second).min(burst);
        e.at = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - e.tokens) / rate.per_second;
            Err(Duration::from_secs_f64(wait.ceil().max(1.0)))
        }
    }

    /// A new connection of `ip`: admitted while it has fewer than `max` open.
    pub fn connect(&self, ip: IpAddr, now: Instant, max: u32) -> bool {
        let Ok(mut m) = self.shard(ip).lock() else {
            return true;
        };
        if !m.contains_key(&ip) && m.len() >= self.per_shard {
            evict(&mut m, now, None, self.per_shard);
        }
        let e = m.entry(ip).or_insert(Entry {
            tokens: f64::MAX,
            at: now,
            conns: 0,
        });
        if e.conns >= max {
            return false;
        }
        e.conns += 1;
        true
    }

    /// A connection [`Clients::connect`] admitted has closed.
    pub fn disconnect(&self, ip: IpAddr) {
        if let Ok(mut m) = self.shard(ip).lock() {
            if let Some(e) = m.get_mut(&ip) {
                e.conns = e.conns.saturating_sub(1);
            }
        }
    }

    /// Open connections of `ip`.
    pub fn connections(&self, ip: IpAddr) -> u32 {
        self.shard(ip)
            .lock()
            .ok()
            .and_then(|m| m.get(&ip).map(|e| e.conns))
            .unwrap_or(0)
    }

    /// Addresses remembered.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

/// Make room in a full shard: first the clients with no connection whose bucket has
/// refilled (they lose nothing), then, if that is not enough, every client with no
/// connection (a refused client may get a fresh bucket early: memory stays bounded).
fn evict(m: &mut HashMap<IpAddr, Entry, Fold>, now: Instant, rate: Option<RateLimit>, cap: usize) {
    m.retain(|_, e| {
        if e.conns > 0 {
            return true;
        }
        match rate {
            Some(r) => {
                let t = e.tokens + now.saturating_duration_since(e.at).as_secs_f64() * r.per_second;
                t < f64::from(r.burst)
            }
            None => false,
        }
    });
    if m.len() >= cap {
        m.retain(|_, e| e.conns > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn a_bucket_allows_its_burst_then_the_rate_and_says_when_to_retry() {
        let c = Clients::new(1000);
        let r = RateLimit {
            per_second: 2.0,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(c.take(ip(1), t0, r), Ok(()));
        }
        assert_eq!(c.take(ip(1), t0, r), Err(Duration::from_secs(1)));
        // Another client is not affected.
        assert_eq!(c.take(ip(2), t0, r), Ok(()));
        // Half a second later one token is back (2/s).
        assert_eq!(c.take(ip(1), t0 + Duration::from_millis(500), r), Ok(()));
        assert!(c.take(ip(1), t0 + Duration::from_millis(500), r).is_err());
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(c.take(ip(1), later, r), Ok(()));
        }
        assert!(c.take(ip(1), later, r).is_err());
        // A slow rate asks for a longer wait.
        let slow = RateLimit {
            per_second: 0.1,
            burst: 1,
        };
        assert_eq!(c.take(ip(3), t0, slow), Ok(()));
        assert_eq!(c.take(ip(3), t0, slow), Err(Duration::from_secs(10)));
    }

    #[test]
    fn connections_are_capped_per_client_and_freed_on_close() {
        let c = Clients::new(1000);
        let t0 = Instant::now();
        assert!(c.connect(ip(1), t0, 2));
        assert!(c.connect(ip(1), t0, 2));
        assert!(!c.connect(ip(1), t0, 2));
        assert!(c.connect(ip(2), t0, 2));
        c.disconnect(ip(1));
        assert_eq!(c.connections(ip(1)), 1);
        assert!(c.connect(ip(1), t0, 2));
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses_and_keeps_open_connections() {
        let c = Clients::new(64 * 16);
        let t0 = Instant::now();
        let r = RateLimit {
            per_second: 1.0,
            burst: 1,
        };
        assert!(c.connect(ip(7), t0, 1));
        for n in 100..200_000 {
            let _ = c.take(ip(n), t0 + Duration::from_secs(u64::from(n)), r);
        }
        assert!(c.tracked() <= 64 * 16 + 64, "{}", c.tracked());
        // The client with an open connection was never forgotten.
        assert_eq!(c.connections(ip(7)), 1);
        assert!(!c.connect(ip(7), t0, 1));
    }
}
