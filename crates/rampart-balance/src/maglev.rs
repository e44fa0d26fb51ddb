//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), with the weighting of
//! Envoy's `MaglevTable`: in every round of the table fill, a server of weight `w` takes
//! its next preferred free slot only on the rounds where `round * w` has caught up with its
//! running target, so over the fill it takes slots in proportion `w / max_weight`.
//!
//! The table maps `key % size` to a server. Its size is a prime so that every server's
//! permutation (`offset + j * skip mod size`, `1 <= skip < size`) visits every slot.

use crate::{fmix64, hash_key, ServerSet};

/// Default table size: a prime, > 100 × servers for pools of up to 655 servers.
pub(crate) const DEFAULT_TABLE_SIZE: u64 = 65_537;

/// Salt separating a server's `skip` hash from its `offset` hash.
const SKIP_SALT: u64 = 0x5bd1_e995_6a09_e667;

/// How many following table slots a stale lookup probes before falling back to
/// weighted rendezvous hashing over the eligible servers.
const STALE_PROBES: usize = 32;

#[derive(Debug)]
struct Backend {
    /// Index in the `ServerSet` at build time.
    index: usize,
    /// Its id at build time: a lookup only trusts the index while the id still matches.
    id: Box<str>,
}

/// A built lookup table. Immutable; `rebuild` swaps in a new one.
#[derive(Debug)]
pub(crate) struct Table {
    size: u64,
    /// Slot -> position in `backends`. Empty when no server was eligible at build time.
    slots: Vec<u32>,
    backends: Vec<Backend>,
}

impl Table {
    /// An empty table: every lookup falls back to rendezvous hashing.
    pub(crate) fn empty() -> Self {
        Table {
            size: 0,
            slots: Vec::new(),
            backends: Vec::new(),
        }
    }

    /// Build from the eligible (weight > 0) servers of `servers`, each weighted by its
    /// `table_weight`. `min_size` is rounded up to a prime and to at least 100 × the number
    /// of eligible servers.
    pub(crate) fn build<S: ServerSet + ?Sized>(servers: &S, min_size: u64) -> Self {
        struct Build {
            offset: u64,
            skip: u64,
            next: u64,
            weight: u64,
            target: u64,
        }
        let mut backends = Vec::new();
        let mut weights = Vec::new();
        for i in 0..servers.len() {
            let w = servers.weight(i);
            if w > 0 {
                backends.push(Backend {
                    index: i,
                    id: servers.id(i).into(),
                });
                weights.push(u64::from(servers.table_weight(i).max(1)));
            }
        }
        if backends.is_empty() {
            return Table::empty();
        }
        let size = next_prime(min_size.max(100 * backends.len() as u64).max(3));
        let max_weight = weights.iter().copied().max().unwrap_or(1);
        let mut build: Vec<Build> = backends
            .iter()
            .zip(&weights)
            .map(|(b, &weight)| {
                let h = hash_key(b.id.as_bytes());
                Build {
                    offset: h % size,
                    skip: fmix64(h ^ SKIP_SALT) % (size - 1) + 1,
                    next: 0,
                    weight,
                    target: 0,
                }
            })
            .collect();
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        let mut slots = vec![u32::MAX; len];
        let mut filled = 0usize;
        let mut round: u64 = 1;
        'fill: loop {
            for (pos, e) in build.iter_mut().enumerate() {
                if round * e.weight < e.target {
                    continue;
                }
                e.target += max_weight;
                loop {
                    let c = ((e.offset + e.next * e.skip) % size) as usize;
                    e.next += 1;
                    if slots[c] == u32::MAX {
                        slots[c] = pos as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == len {
                    break 'fill;
                }
            }
            round += 1;
        }
        Table {
            size,
            slots,
            backends,
        }
    }

    /// Table size (a prime), 0 for an empty table.
    #[cfg(test)]
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether server `i` (by index and id) has slots in this table. `O(log n)`.
    pub(crate) fn holds<S: ServerSet + ?Sized>(&self, servers: &S, i: usize) -> bool {
        // Backends are in index order (built by one pass over the set).
        match self.backends.binary_search_by_key(&i, |b| b.index) {
            Ok(p) => servers.id(i) == &*self.backends[p].id,
            Err(_) => false,
        }
    }

    /// The server for `key`: the table's choice while it is still eligible; otherwise the
    /// next slots' choices; otherwise weighted rendezvous hashing over the eligible servers.
    /// Deterministic for a given table and server view.
    ///
    /// A table entry names its server by index and id. If the index no longer holds that id
    /// (servers were added or removed before `rebuild`), the server is looked up by id, so
    /// clients stay on their server across a reordering: `O(n)` string compares, on this
    /// stale path only.
    pub(crate) fn lookup<S: ServerSet + ?Sized>(&self, servers: &S, key: u64) -> Option<usize> {
        if self.size > 0 {
            let start = (key % self.size) as usize;
            for probe in 0..STALE_PROBES.min(self.slots.len()) {
                let slot = (start + probe) % self.slots.len();
                let b = &self.backends[self.slots[slot] as usize];
                if let Some(i) = resolve(servers, b) {
                    if servers.weight(i) > 0 {
                        return Some(i);
                    }
                }
            }
        }
        rendezvous(servers, key)
    }
}

/// The current index of backend `b`: its index at build time if that still holds its id,
/// else the first server with its id.
fn resolve<S: ServerSet + ?Sized>(servers: &S, b: &Backend) -> Option<usize> {
    if b.index < servers.len() && servers.id(b.index) == &*b.id {
        return Some(b.index);
    }
    (0..servers.len()).find(|&i| servers.id(i) == &*b.id)
}

/// Weighted rendezvous (highest random weight) hashing: each eligible server scores
/// `-ln(u) / w` with `u` uniform in (0, 1) from hashing (key, id); the lowest score wins.
/// Consistent (removing a server moves only its keys), weighted, allocation-free, `O(n)`.
pub(crate) fn rendezvous<S: ServerSet + ?Sized>(servers: &S, key: u64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for i in 0..servers.len() {
        let w = servers.weight(i);
        if w == 0 {
            continue;
        }
        let h = fmix64(key ^ hash_key(servers.id(i).as_bytes()));
        // 53 random bits, shifted off 0 so that ln() is finite.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -u.ln() / f64::from(w);
        if best.is_none_or(|(_, s)| score < s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Smallest prime >= n (n >= 2). Trial division: called only on rebuild, for n ~ 10^5.
pub(crate) fn next_prime(n: u64) -> u64 {
    let mut c = n.max(2);
    loop {
        if is_prime(c) {
            return c;
        }
        c += 1;
    }
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testset::TestSet;
    use proptest::prelude::*;

    const SIZE: u64 = 10_007;

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| hash_key(&i.to_be_bytes()))
    }

    fn shares(t: &Table, s: &TestSet) -> Vec<f64> {
        let mut c = vec![0u64; s.len()];
        for &slot in &t.slots {
            c[t.backends[slot as usize].index] += 1;
        }
        c.iter().map(|&x| x as f64 / t.slots.len() as f64).collect()
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(10_000), 10_007);
        assert_eq!(next_prime(1), 2);
        assert!(!is_prime(65_535));
        assert!(is_prime(1_000_003));
    }

    #[test]
    fn table_is_full_and_size_prime() {
        let s = TestSet::with_weights(&[1, 1, 1]);
        let t = Table::build(&s, 1000);
        assert_eq!(t.size(), 1009);
        assert!(t.slots.iter().all(|&b| (b as usize) < t.backends.len()));
        // 100 x servers lower bound.
        let s = TestSet::with_weights(&[1; 20]);
        assert!(Table::build(&s, 7).size() >= 2000);
    }

    #[test]
    fn equal_weights_share_evenly() {
        let s = TestSet::with_weights(&[1, 1, 1, 1, 1]);
        let t = Table::build(&s, SIZE);
        for sh in shares(&t, &s) {
            assert!((sh - 0.2).abs() < 0.01, "{sh}");
        }
    }

    #[test]
    fn table_shares_follow_table_weight_not_slow_start() {
        // Server 0 is in slow start (weight 1 of 10): eligible, but its table share follows
        // its configured weight, so the table need not be rebuilt as it ramps up.
        let mut s = TestSet::with_weights(&[1, 10, 0]);
        s.table = Some(vec![10, 10, 10]);
        let t = Table::build(&s, SIZE);
        let sh = shares(&t, &s);
        assert!((sh[0] - 0.5).abs() < 0.01, "{sh:?}");
        assert_eq!(
            sh[2], 0.0,
            "weight 0 means no slot whatever table_weight says"
        );
        s.table = Some(vec![0, 3, 0]); // 0 is taken as 1
        let sh = shares(&Table::build(&s, SIZE), &s);
        assert!((sh[0] - 0.25).abs() < 0.01, "{sh:?}");
    }

    #[test]
    fn ineligible_servers_get_no_slot() {
        let s = TestSet::with_weights(&[1, 0, 1]);
        let t = Table::build(&s, SIZE);
        let sh = shares(&t, &s);
        assert_eq!(sh[1], 0.0);
        assert!(Table::build(&TestSet::with_weights(&[0, 0]), SIZE).size() == 0);
    }

    #[test]
    fn stale_table_never_returns_ineligible() {
        let mut s = TestSet::with_weights(&[1, 1, 1, 1]);
        let t = Table::build(&s, SIZE);
        s.weights[2] = 0;
        s.weights.truncate(3); // server 3 removed, 2 went down
        s.ids.truncate(3);
        for k in keys(20_000) {
            let i = t.lookup(&s, k).expect("0 and 1 are eligible");
            assert!(i < 2, "{i}");
        }
        s.weights = vec![0, 0, 0];
        assert_eq!(t.lookup(&s, 42), None);
    }

    #[test]
    fn stale_table_follows_servers_by_id() {
        // Server 0 removed without a rebuild: the others shift down one index. Every client
        // of a remaining server must stay on it (by id); server 0's clients spread.
        let s = TestSet::with_weights(&[1, 1, 1, 1]);
        let t = Table::build(&s, SIZE);
        let mut s2 = s.clone();
        s2.weights.remove(0);
        s2.ids.remove(0);
        let mut moved = [0u32; 3];
        for k in keys(8_000) {
            let before = &s.ids[t.lookup(&s, k).unwrap()];
            let after = &s2.ids[t.lookup(&s2, k).unwrap()];
            if before == &s.ids[0] {
                moved[s2.ids.iter().position(|x| x == after).unwrap()] += 1;
            } else {
                assert_eq!(before, after, "key {k} left its server");
            }
        }
        // The removed server's ~2000 clients go to all three others.
        for m in moved {
            assert!(m > 400, "{moved:?}");
        }
    }

    #[test]
    fn rendezvous_is_weighted_and_consistent() {
        let s = TestSet::with_weights(&[1, 3]);
        let mut c = [0u32; 2];
        for k in keys(40_000) {
            c[rendezvous(&s, k).unwrap()] += 1;
        }
        let share = f64::from(c[1]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.02, "{c:?}");
        let mut s3 = TestSet::with_weights(&[1, 1, 1]);
        let before: Vec<_> = keys(10_000).map(|k| rendezvous(&s3, k).unwrap()).collect();
        s3.weights[1] = 0;
        for (k, b) in keys(10_000).zip(before) {
            if b != 1 {
                assert_eq!(rendezvous(&s3, k), Some(b));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Weighted shares of table slots follow the weights.
        #[test]
        fn weighted_shares(weights in prop::collection::vec(1u32..=8, 1..8)) {
            let s = TestSet::with_weights(&weights);
            let t = Table::build(&s, SIZE);
            let total: u32 = weights.iter().sum();
            for (i, sh) in shares(&t, &s).into_iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                prop_assert!((sh - want).abs() <= 0.02 + want * 0.1,
                    "server {} share {} want {} weights {:?}", i, sh, want, weights);
            }
        }

        /// Removing one of N servers: keys of the other servers mostly stay, the removed
        /// server's keys all move, and at most 1/N + 0.1 of all keys move.
        #[test]
        fn removal_remaps_about_one_nth(n in 3usize..10, removed_seed in 0usize..100) {
            let removed = removed_seed % n;
            let mut s = TestSet::with_weights(&vec![1; n]);
            let before = Table::build(&s, SIZE);
            s.weights[removed] = 0;
            let after = Table::build(&s, SIZE);
            let total = 20_000u64;
            let mut moved = 0u64;
            for k in keys(total) {
                let a = before.lookup(&s, k).unwrap(); // stale view: fallback path
                prop_assert_ne!(a, removed);
                let old = before.slots[(k % before.size) as usize];
                let old = before.backends[old as usize].index;
                let new = after.lookup(&s, k).unwrap();
                prop_assert_ne!(new, removed);
                if old != new {
                    moved += 1;
                }
            }
            let frac = moved as f64 / total as f64;
            prop_assert!(frac >= 1.0 / n as f64 - 0.03, "moved {} of n={}", frac, n);
            prop_assert!(frac <= 1.0 / n as f64 + 0.1, "moved {} of n={}", frac, n);
        }

        /// While membership is unchanged the same key maps to the same server, also across
        /// independent builds (two balancers in front of the same pool agree).
        #[test]
        fn sticky_and_reproducible(weights in prop::collection::vec(0u32..=4, 1..8), key: u64) {
            let s = TestSet::with_weights(&weights);
            let a = Table::build(&s, SIZE);
            let b = Table::build(&s, SIZE);
            let x = a.lookup(&s, key);
            prop_assert_eq!(x, b.lookup(&s, key));
            prop_assert_eq!(x, a.lookup(&s, key));
            match x {
                Some(i) => prop_assert!(weights[i] > 0),
                None => prop_assert!(weights.iter().all(|&w| w == 0)),
            }
        }
    }
}
