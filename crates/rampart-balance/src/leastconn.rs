//! Exact weighted least connections in `O(log n)` per pick: the servers sit in an indexed
//! min-heap keyed by `(in_flight + 1) / weight`, then by when the key was last set, so
//! servers that tie for the minimum take turns (HAProxy's leastconn tree does the same).
//! While every server has the same weight (the usual pool) the same order is kept in `O(1)`
//! instead: one first-come-first-served list per load ([`Levels`]), so a request's start
//! and end each move one server between two lists rather than sifting it through the
//! heap's levels. A weight change that makes the weights differ (or equal again), or a
//! server past [`MAX_LEVEL`] requests in flight, switches between the two (`O(n log n)`,
//! only on that change). The caller keeps keys true: a pick charges the chosen server one request (the
//! caller takes the slot right after), [`LeastConn::refresh`] re-reads a server when its
//! load ends or its eligibility changes. Keys that went stale anyway (a missed update, a
//! race between workers) are caught by re-reading the chosen server before answering and by
//! re-reading one more server in rotation every [`SWEEP_PICKS`] picks, so every key is
//! re-read at least every `SWEEP_PICKS * n` picks.

use std::collections::BTreeMap;

use crate::heap::IndexedHeap;
use crate::levels::{Levels, MAX_LEVEL};
use crate::ServerSet;

/// How many servers in ascending order a pick considers before scanning all of them
/// (the first ones may be ineligible for this request: already tried, or full).
const CANDIDATES: usize = 8;

/// Picks between two re-reads of a server in rotation. A re-read touches a server that may
/// have had no request for a long time (with a thousand servers, out of the CPU's caches:
/// about one cache miss); one every eight picks keeps that to an eighth of a miss per pick,
/// and a stale key still lasts at most `8 n` picks.
const SWEEP_PICKS: usize = 8;

/// `cost << 64 | seq`: the cost first, then when the key was set (older first among equal
/// costs), compared as one integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u128);

impl Key {
    #[inline]
    fn new(cost: u64, seq: u64) -> Key {
        Key(u128::from(cost) << 64 | u128::from(seq))
    }
    #[inline]
    fn cost(self) -> u64 {
        (self.0 >> 64) as u64
    }
    #[inline]
    fn seq(self) -> u64 {
        self.0 as u64
    }
}

#[derive(Debug)]
pub(crate) struct LeastConn {
    /// The order while the weights differ.
    heap: IndexedHeap<Key>,
    /// The order while they are all the same (`leveled`), filed by load.
    levels: Levels<Key>,
    leveled: bool,
    /// Weight each server was filed with (0: not filed).
    w: Vec<u32>,
    /// How many filed servers have each weight.
    classes: BTreeMap<u32, usize>,
    seq: u64,
    sweep: usize,
    /// False only in tests that compare the levels with the heap.
    levels_allowed: bool,
}

/// The most weight the cost tells apart exactly.
const MAX_EXACT_WEIGHT: u64 = 0xffff;

/// `in_flight + 1`, the load a cost is made of.
#[inline]
fn load(in_flight: u32) -> u64 {
    (u64::from(in_flight) + 1).min(u64::from(u32::MAX))
}

/// `load / weight` in 32.32 fixed point. Exact as an order: two different ratios with
/// weights up to 65,535 differ by at least `2^-32`, so their fixed-point values differ
/// (greater weights count as 65,535; the lb's are at most 256).
#[inline]
fn cost(load: u64, w: u32) -> u64 {
    (load << 32) / u64::from(w).clamp(1, MAX_EXACT_WEIGHT)
}

impl LeastConn {
    pub(crate) fn new() -> Self {
        LeastConn {
            heap: IndexedHeap::new(),
            levels: Levels::new(),
            leveled: false,
            w: Vec::new(),
            classes: BTreeMap::new(),
            seq: 0,
            sweep: 0,
            levels_allowed: true,
        }
    }

    /// Always the heap, never the levels (to check one against the other).
    #[cfg(test)]
    fn heap_only() -> Self {
        LeastConn {
            levels_allowed: false,
            ..LeastConn::new()
        }
    }

    #[inline]
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// How many server indices the order is sized for.
    fn servers(&self) -> usize {
        self.w.len()
    }

    #[inline]
    fn key(&self, i: usize) -> Option<Key> {
        if self.leveled {
            self.levels.key(i)
        } else {
            self.heap.key(i)
        }
    }

    /// The cost part of a key: the load itself in the levels (every weight is the same, so
    /// it orders as the cost does, and needs no division), else [`cost`].
    #[inline]
    fn key_cost(&self, load: u64, w: u32) -> u64 {
        if self.leveled {
            load
        } else {
            cost(load, w)
        }
    }

    /// File `i` with a fresh turn at `load`.
    #[inline]
    fn file(&mut self, i: usize, load: u64) {
        let key = Key::new(self.key_cost(load, self.w[i]), self.next_seq());
        if self.leveled {
            self.levels.push(i, key, load as u32);
        } else {
            self.heap.set(i, key);
        }
    }

    /// Every server with `weight > 0` keyed afresh. `O(n)`.
    pub(crate) fn rebuild<S: ServerSet + ?Sized>(&mut self, servers: &S) {
        let n = servers.len();
        self.w.clear();
        self.w.resize(n, 0);
        self.classes.clear();
        for i in 0..n {
            let w = servers.weight(i);
            if w > 0 {
                self.w[i] = w;
                *self.classes.entry(w).or_insert(0) += 1;
            }
        }
        self.refile(servers, (0..n).filter(|&i| self.w[i] > 0).collect(), true);
    }

    /// File `members` (in this order of turns) afresh from their live loads: in the levels
    /// when `levels` allows, the weights are all the same and no load is past
    /// [`MAX_LEVEL`], else in the heap.
    fn refile<S: ServerSet + ?Sized>(&mut self, servers: &S, members: Vec<usize>, levels: bool) {
        let n = servers.len();
        let mut loads = Vec::with_capacity(members.len());
        for i in members {
            if i < n {
                loads.push((i, load(servers.in_flight(i))));
            } else {
                self.set_weight(i, 0);
            }
        }
        self.leveled = levels
            && self.levels_allowed
            && self.classes.len() <= 1
            && loads.iter().all(|&(_, l)| l <= u64::from(MAX_LEVEL));
        self.levels.clear();
        self.heap.build(std::iter::empty());
        let size = self.w.len();
        if self.leveled {
            self.levels.reserve_servers(size);
        } else {
            self.heap.reserve_servers(size);
        }
        let mut items = Vec::with_capacity(if self.leveled { 0 } else { loads.len() });
        for (i, l) in loads {
            let key = Key::new(self.key_cost(l, self.w[i]), self.next_seq());
            if self.leveled {
                self.levels.push(i, key, l as u32);
            } else {
                items.push((key, i));
            }
        }
        if !self.leveled {
            self.heap.build(items);
        }
    }

    /// Refile every filed server, keeping their turns, after the kind of order changed.
    fn reorder<S: ServerSet + ?Sized>(&mut self, servers: &S, levels: bool) {
        let mut members: Vec<(u64, usize)> = (0..self.w.len())
            .filter(|&i| self.w[i] > 0)
            .map(|i| (self.key(i).map_or(u64::MAX, Key::seq), i))
            .collect();
        members.sort_unstable();
        self.refile(
            servers,
            members.into_iter().map(|(_, i)| i).collect(),
            levels,
        );
    }

    /// Record that `i` is filed with weight `w` (0: not filed); true when the kind of order
    /// must change (the weights became equal, or stopped being).
    #[inline]
    fn set_weight(&mut self, i: usize, w: u32) -> bool {
        if i >= self.w.len() {
            if w == 0 {
                return false;
            }
            self.w.resize(i + 1, 0);
        }
        let old = self.w[i];
        if old == w {
            return false;
        }
        if old > 0 {
            if let Some(c) = self.classes.get_mut(&old) {
                *c -= 1;
                if *c == 0 {
                    self.classes.remove(&old);
                }
            }
        }
        if w > 0 {
            *self.classes.entry(w).or_insert(0) += 1;
        }
        self.w[i] = w;
        (self.classes.len() <= 1) != self.leveled
    }

    /// Take server `i` out of the order.
    fn take_out<S: ServerSet + ?Sized>(&mut self, servers: &S, i: usize) {
        let change = self.set_weight(i, 0);
        self.levels.remove(i);
        self.heap.remove(i);
        if change {
            self.reorder(servers, true);
        }
    }

    /// Server `i`'s eligibility (weight 0: out) or load changed: re-key it. `O(log n)`, or
    /// `O(1)` in the levels.
    pub(crate) fn update<S: ServerSet + ?Sized>(&mut self, servers: &S, i: usize) {
        let w = if i < servers.len() {
            servers.weight(i)
        } else {
            0
        };
        if w == 0 {
            self.take_out(servers, i);
        } else {
            self.rekey(servers, i, servers.in_flight(i), w);
        }
    }

    /// Server `i`'s load changed: re-key it if it is filed and eligible now (never takes a
    /// server out: a weight of 0 here may only mean "already tried" or "full").
    pub(crate) fn refresh<S: ServerSet + ?Sized>(&mut self, servers: &S, i: usize) {
        if i >= servers.len() {
            self.take_out(servers, i);
            return;
        }
        let w = servers.weight(i);
        if w > 0 {
            self.rekey(servers, i, servers.in_flight(i), w);
        }
    }

    /// Set `i`'s weight and load; a new turn only when its cost changed.
    fn rekey<S: ServerSet + ?Sized>(&mut self, servers: &S, i: usize, in_flight: u32, w: u32) {
        if self.set_weight(i, w) {
            self.reorder(servers, true);
        }
        let l = load(in_flight);
        if self.leveled && l > u64::from(MAX_LEVEL) {
            // Too busy to file by load: the heap, until the weights next change.
            self.reorder(servers, false);
        }
        match self.key(i) {
            Some(k) if k.cost() == self.key_cost(l, w) => {}
            _ => self.file(i, l),
        }
    }

    /// The eligible server of least cost (turns among ties), charged one request.
    pub(crate) fn pick<S: ServerSet + ?Sized>(&mut self, servers: &S) -> Option<usize> {
        let n = servers.len();
        if self.servers() != n {
            self.rebuild(servers);
        }
        self.sweep = self.sweep.wrapping_add(1);
        if n > 0 && self.sweep % SWEEP_PICKS == 0 {
            // Keep every key honest within SWEEP_PICKS * n picks.
            let j = (self.sweep / SWEEP_PICKS) % n;
            let w = servers.weight(j);
            if w > 0 {
                self.rekey(servers, j, servers.in_flight(j), w);
            }
        }
        let mut chosen = None;
        for _ in 0..2 {
            let mut stale = None;
            let leveled = self.leveled;
            let visit = |k: Key, i: usize| {
                if i >= n {
                    return false;
                }
                let w = servers.weight(i);
                if w == 0 {
                    return false;
                }
                let f = servers.in_flight(i);
                let c = if leveled { load(f) } else { cost(load(f), w) };
                if c != k.cost() {
                    stale = Some((i, f, w));
                }
                true
            };
            chosen = if self.leveled {
                self.levels.find_ascending(CANDIDATES, visit)
            } else {
                self.heap.find_ascending(CANDIDATES, visit)
            };
            match stale {
                // The least key was stale: fix it and look again.
                Some((i, f, w)) if chosen == Some(i) => {
                    self.rekey(servers, i, f, w);
                    chosen = None;
                }
                _ => break,
            }
        }
        let i = match chosen {
            Some(i) => i,
            None => self.scan(servers)?,
        };
        // The caller takes a slot on it now.
        let w = servers.weight(i);
        self.rekey(servers, i, servers.in_flight(i).saturating_add(1), w);
        Some(i)
    }

    /// The exact answer the slow way: every server's live cost, `O(n)`; ties go to the
    /// oldest key.
    fn scan<S: ServerSet + ?Sized>(&self, servers: &S) -> Option<usize> {
        let mut best: Option<(u64, u64, usize)> = None;
        for i in 0..servers.len() {
            let w = servers.weight(i);
            if w == 0 {
                continue;
            }
            let c = cost(load(servers.in_flight(i)), w);
            let seq = self.key(i).map_or(u64::MAX, Key::seq);
            if best.is_none_or(|(bc, bs, _)| (c, seq) < (bc, bs)) {
                best = Some((c, seq, i));
            }
        }
        best.map(|(_, _, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testset::TestSet;
    use proptest::prelude::*;

    /// Start (`None`) or end (`Some(k)`: the k-th running request) requests on both and
    /// compare the picks.
    fn drive(
        a: &mut LeastConn,
        b: &mut LeastConn,
        s: &mut TestSet,
        ops: &[Option<usize>],
    ) -> Result<(), TestCaseError> {
        let mut running = Vec::new();
        for op in ops {
            match *op {
                None => {
                    let i = a.pick(&*s);
                    prop_assert_eq!(i, b.pick(&*s), "in flight {:?}", s.in_flight);
                    if let Some(i) = i {
                        s.in_flight[i] += 1;
                        running.push(i);
                    }
                }
                Some(k) if !running.is_empty() => {
                    let i = running.swap_remove(k % running.len());
                    s.in_flight[i] -= 1;
                    a.refresh(&*s, i);
                    b.refresh(&*s, i);
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    proptest! {
        /// With equal weights the levels choose exactly what the heap chooses, turns among
        /// ties included, through any order of request starts and ends.
        #[test]
        fn levels_choose_what_the_heap_chooses(
            n in 1usize..12,
            w in 1u32..4,
            ops in prop::collection::vec(prop::option::weighted(0.4, 0usize..64), 1..400),
        ) {
            let mut s = TestSet::with_weights(&vec![w; n]);
            let mut levels = LeastConn::new();
            let mut heap = LeastConn::heap_only();
            levels.rebuild(&s);
            heap.rebuild(&s);
            prop_assert!(levels.leveled && !heap.leveled);
            drive(&mut levels, &mut heap, &mut s, &ops)?;
            prop_assert!(levels.leveled);
        }
    }

    #[test]
    fn weights_that_differ_leave_the_levels_and_equal_ones_return() {
        let mut s = TestSet::with_weights(&[2, 2, 2]);
        let mut lc = LeastConn::new();
        lc.rebuild(&s);
        assert!(lc.leveled);
        s.weights[1] = 1;
        lc.update(&s, 1);
        assert!(!lc.leveled);
        // Server 1 (weight 1) holds one request: cost 2/1 against 1/2 for the others.
        s.in_flight[1] = 1;
        lc.refresh(&s, 1);
        let picks: Vec<usize> = (0..4)
            .map(|_| {
                let i = lc.pick(&s).unwrap();
                s.in_flight[i] += 1;
                i
            })
            .collect();
        assert_eq!(picks, [0, 2, 0, 2]);
        s.weights[1] = 2;
        lc.update(&s, 1);
        assert!(lc.leveled);
        // Loads 2, 1, 2 at equal weights: server 1, then turns (it was served last).
        let picks: Vec<usize> = (0..5)
            .map(|_| {
                let i = lc.pick(&s).unwrap();
                s.in_flight[i] += 1;
                i
            })
            .collect();
        assert_eq!(picks, [1, 0, 2, 1, 0]);
        // A server taken out and back.
        s.weights[0] = 0;
        lc.update(&s, 0);
        assert!(lc.leveled);
        assert_eq!(lc.key(0), None);
    }

    /// Loads past what the levels file move the order to the heap and it stays exact.
    #[test]
    fn a_load_past_the_levels_is_still_least_connections() {
        let n = 3;
        let mut s = TestSet::with_weights(&vec![1; n]);
        let mut lc = LeastConn::new();
        lc.rebuild(&s);
        let mut running = Vec::new();
        let check = |s: &TestSet, i: usize| {
            let least = s.in_flight.iter().min().copied().unwrap_or(0);
            assert_eq!(s.in_flight[i], least, "picked {i} of {:?}", s.in_flight);
        };
        for _ in 0..(MAX_LEVEL as usize + 100) * n {
            let i = lc.pick(&s).unwrap();
            check(&s, i);
            s.in_flight[i] += 1;
            running.push(i);
        }
        assert!(!lc.leveled);
        // End them in a scattered order, starting a new one now and then.
        let mut k = 7;
        while let Some(i) = (!running.is_empty()).then(|| running.swap_remove(k % running.len())) {
            s.in_flight[i] -= 1;
            lc.refresh(&s, i);
            k = (k * 31 + 3) % 1_000_003;
            if k % 5 == 0 {
                let j = lc.pick(&s).unwrap();
                check(&s, j);
                s.in_flight[j] += 1;
                running.push(j);
            }
        }
        assert_eq!(s.in_flight, vec![0; n]);
        s.weights[0] = 0;
        lc.update(&s, 0);
        s.weights[0] = 1;
        lc.update(&s, 0);
        assert!(
            lc.leveled,
            "equal weights again, loads low: back in the levels"
        );
    }

    /// A request end the balancer never reported leaves its server's key too busy; the
    /// rotation re-reads it within `SWEEP_PICKS * n` picks, long before the others would
    /// catch up with the stale load.
    #[test]
    fn a_missed_end_is_caught_by_the_rotation() {
        for weights in [vec![1; 5], vec![1, 2, 3, 1, 2]] {
            let n = weights.len();
            let mut s = TestSet::with_weights(&weights);
            let mut lc = LeastConn::new();
            assert!(lc.pick(&s).is_some());
            s.in_flight[0] = 1000;
            lc.refresh(&s, 0);
            // The thousand end without a refresh.
            s.in_flight[0] = 0;
            let mut picks = 0;
            loop {
                let i = lc.pick(&s).unwrap();
                picks += 1;
                if i == 0 {
                    break;
                }
                s.in_flight[i] += 1;
                assert!(
                    picks <= SWEEP_PICKS * (n + 1),
                    "server 0 not picked after {picks} picks ({weights:?})"
                );
            }
        }
    }
}
