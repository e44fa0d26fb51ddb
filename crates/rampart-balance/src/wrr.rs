//! Smooth weighted round robin in `O(log n)` per pick: the schedule of WF2Q (Bennett and
//! Zhang, "Worst-case fair weighted fair queueing", 1996) for servers that always have room.
//!
//! Virtual time `V = t / W` advances by `1 / W` per pick (`W` = the sum of the weights).
//! Server `i` has been picked `n_i` times; its next pick *starts* at `S_i = n_i / w_i` and
//! *finishes* at `F_i = (n_i + 1) / w_i`. A pick takes, among the servers whose start has
//! come (`S_i <= V`), the one that finishes first (ties: lower index). Two indexed heaps
//! hold the servers: `ready` (started, keyed by `F`) and `waiting` (keyed by `S`); a pick
//! moves the servers whose start came from one to the other, `O(log n)` amortized.
//!
//! What it promises (property-tested in `select.rs`), from a [`Wrr::rebuild`]:
//! * exact shares: the picks `k W .. (k + 1) W` give every server exactly `w_i` picks (no
//!   server can start its `w_i + 1`-th pick before `V = 1`, and some server has always
//!   started, so the first `W` picks are exactly the `w_i` first of each; then the state
//!   repeats);
//! * smooth: a server is never a whole pick ahead of its ideal share `t w_i / W`, nor two
//!   behind, so its picks are interleaved with the others' (equal weights: plain rotation in
//!   index order). The sequence is not nginx's (5,1,1 gives `a b a a c a a`, nginx
//!   `a a b a c a a`), the shares and the bound are the same.
//!
//! While every server in the schedule has the same weight (the usual pool), WF2Q's schedule
//! is plain rotation in index order, and that is what runs: the next set bit of a two-level
//! bit set after a cursor, `O(1)` per pick and per change (up to 262,144 servers: one
//! summary word per 4,096). A change that makes the weights differ (or equal again) switches
//! between the two, starting the schedule over (`O(n)`, only on that change).
//!
//! Joining, leaving or re-weighting one server is `O(log n)` ([`Wrr::set`]): virtual time
//! stays where it is (re-expressed on the new `W`, rounded up), a joining server starts at
//! the next point of its grid at or after `V`, so it neither bursts nor waits more than a
//! cycle. All arithmetic is exact (integers, rationals compared in `u128`).

use std::collections::BTreeMap;

use crate::heap::{Frac, IndexedHeap};

/// A bit set over server indices with a summary word per 64 words, for "next member at or
/// after i" in a few word reads.
#[derive(Debug, Default)]
struct Bits {
    words: Vec<u64>,
    summary: Vec<u64>,
}

impl Bits {
    fn with_len(n: usize) -> Bits {
        let words = n.div_ceil(64);
        Bits {
            words: vec![0; words],
            summary: vec![0; words.div_ceil(64)],
        }
    }

    fn insert(&mut self, i: usize) {
        let w = i / 64;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
            self.summary.resize((w + 1).div_ceil(64), 0);
        }
        self.words[w] |= 1 << (i % 64);
        self.summary[w / 64] |= 1 << (w % 64);
    }

    fn remove(&mut self, i: usize) {
        let w = i / 64;
        if let Some(word) = self.words.get_mut(w) {
            *word &= !(1 << (i % 64));
            if *word == 0 {
                self.summary[w / 64] &= !(1 << (w % 64));
            }
        }
    }

    /// The smallest member `>= i`.
    fn next_from(&self, i: usize) -> Option<usize> {
        let w = i / 64;
        let m = self.words.get(w)? & (!0u64 << (i % 64));
        if m != 0 {
            return Some(w * 64 + m.trailing_zeros() as usize);
        }
        // The next non-empty word after w, by the summary.
        let next = w + 1;
        let mut sw = next / 64;
        let mut mask = if next % 64 == 0 {
            !0u64
        } else {
            !0u64 << (next % 64)
        };
        while let Some(&s) = self.summary.get(sw) {
            let m = s & mask;
            if m != 0 {
                let word = sw * 64 + m.trailing_zeros() as usize;
                return Some(word * 64 + self.words[word].trailing_zeros() as usize);
            }
            sw += 1;
            mask = !0;
        }
        None
    }
}

/// Equal weights: rotation in index order over the members.
#[derive(Debug, Default)]
struct Rotation {
    members: Bits,
    /// The next index to consider.
    cursor: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Wrr {
    /// Weight of each server in the schedule; 0: not in it.
    w: Vec<u64>,
    /// Picks so far (the numerator of `S = n / w`).
    n: Vec<u64>,
    /// Started servers keyed by `F`.
    ready: Option<IndexedHeap<Frac>>,
    /// Servers not yet started, keyed by `S`.
    waiting: Option<IndexedHeap<Frac>>,
    /// Sum of `w`.
    total: u64,
    /// Virtual time numerator: `V = t / total`.
    t: u64,
    /// How many servers of the schedule have each weight.
    classes: BTreeMap<u64, usize>,
    /// Some while every weight is the same: the schedule is this rotation, not the heaps.
    rotation: Option<Rotation>,
}

impl Wrr {
    fn heaps(&mut self) -> (&mut IndexedHeap<Frac>, &mut IndexedHeap<Frac>) {
        let r = self.ready.get_or_insert_with(IndexedHeap::new);
        let w = self.waiting.get_or_insert_with(IndexedHeap::new);
        (r, w)
    }

    /// Servers this schedule was sized for.
    pub(crate) fn servers(&self) -> usize {
        self.w.len()
    }

    /// The weight server `i` has in the schedule (0: not in it).
    pub(crate) fn weight(&self, i: usize) -> u64 {
        self.w.get(i).copied().unwrap_or(0)
    }

    /// Start over with these `(server, weight > 0)` members and `n` server slots, all at
    /// virtual time 0. `O(n)`.
    pub(crate) fn rebuild(&mut self, n: usize, members: impl Iterator<Item = (usize, u64)>) {
        self.w.clear();
        self.w.resize(n, 0);
        self.n.clear();
        self.n.resize(n, 0);
        self.total = 0;
        self.t = 0;
        self.classes.clear();
        for (i, w) in members {
            if i < n && w > 0 && self.w[i] == 0 {
                self.w[i] = w;
                self.total += w;
                *self.classes.entry(w).or_insert(0) += 1;
            }
        }
        self.restart();
    }

    /// Start the schedule over from `w` (virtual time 0), as a rotation when the weights
    /// are all the same. `O(n)`.
    fn restart(&mut self) {
        self.t = 0;
        self.n.iter_mut().for_each(|x| *x = 0);
        let n = self.w.len();
        let uniform = self.classes.len() <= 1;
        let mut bits = Bits::with_len(if uniform { n } else { 0 });
        let mut items = Vec::new();
        for (i, &w) in self.w.iter().enumerate() {
            if w > 0 {
                if uniform {
                    bits.insert(i);
                } else {
                    items.push((Frac::new(1, w), i));
                }
            }
        }
        self.rotation = uniform.then_some(Rotation {
            members: bits,
            cursor: 0,
        });
        let (ready, waiting) = self.heaps();
        ready.reserve_servers(n);
        waiting.reserve_servers(n);
        waiting.build(std::iter::empty());
        ready.build(items);
    }

    /// Virtual time has reached `S = k.num / k.den`.
    fn started(&self, k: Frac) -> bool {
        u128::from(k.num) * u128::from(self.total) <= u128::from(self.t) * u128::from(k.den)
    }

    /// `ceil(a * b / c)` saturated to u64 (`c > 0`).
    fn mul_div_ceil(a: u64, b: u64, c: u64) -> u64 {
        let p = u128::from(a) * u128::from(b);
        let c = u128::from(c.max(1));
        u64::try_from(p.div_ceil(c)).unwrap_or(u64::MAX)
    }

    /// Re-express virtual time on a new total weight, rounding up (time never goes back).
    fn retotal(&mut self, new_total: u64) {
        self.t = if self.total == 0 || new_total == 0 {
            0
        } else {
            Self::mul_div_ceil(self.t, new_total, self.total)
        };
        self.total = new_total;
    }

    /// File server `i` under `ready` or `waiting` by its `S`.
    fn file(&mut self, i: usize) {
        let (w, n) = (self.w[i], self.n[i]);
        let s = Frac::new(n, w);
        let started = self.started(s);
        let (ready, waiting) = self.heaps();
        if started {
            ready.set(i, Frac::new(n.saturating_add(1), w));
        } else {
            waiting.set(i, s);
        }
    }

    /// Give server `i` weight `w` (0 takes it out of the schedule). `O(log n)`.
    pub(crate) fn set(&mut self, i: usize, w: u64) {
        if i >= self.w.len() {
            self.w.resize(i + 1, 0);
            self.n.resize(i + 1, 0);
        }
        let old = self.w[i];
        if old == w {
            return;
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
        let uniform = self.classes.len() <= 1;
        if let Some(r) = self.rotation.as_mut().filter(|_| uniform) {
            if w > 0 {
                r.members.insert(i);
            } else {
                r.members.remove(i);
            }
            self.total = self.total - old + w;
            self.w[i] = w;
            return;
        }
        if uniform || self.rotation.is_some() {
            // The weights became all equal, or stopped being: the other schedule, afresh.
            self.total = self.total - old + w;
            self.w[i] = w;
            self.restart();
            return;
        }
        if old > 0 {
            let (ready, waiting) = self.heaps();
            ready.remove(i);
            waiting.remove(i);
        }
        let new_total = self.total - old + w;
        self.retotal(new_total);
        self.w[i] = w;
        if w > 0 {
            // Start at the first point of its grid (multiples of 1/w) at or after V.
            self.n[i] = Self::mul_div_ceil(self.t, w, self.total);
            self.file(i);
        }
    }

    /// The next server of the schedule (and advance it); None when the schedule is empty.
    pub(crate) fn next(&mut self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        if let Some(r) = self.rotation.as_mut() {
            let i = r
                .members
                .next_from(r.cursor)
                .or_else(|| r.members.next_from(0))?;
            r.cursor = i + 1;
            return Some(i);
        }
        loop {
            // Move the servers whose start has come.
            while let Some((s, i)) = self.waiting.as_ref().and_then(IndexedHeap::peek) {
                if !self.started(s) {
                    break;
                }
                let (ready, waiting) = self.heaps();
                waiting.remove(i);
                ready.set(i, Frac::new(s.num.saturating_add(1), s.den));
            }
            if self.ready.as_ref().is_some_and(|r| !r.is_empty()) {
                break;
            }
            // Nobody started (only after membership changes): jump to the earliest start.
            let (s, _) = self.waiting.as_ref().and_then(IndexedHeap::peek)?;
            self.t = Self::mul_div_ceil(s.num, self.total, s.den);
        }
        let (_, i) = self.ready.as_mut().and_then(IndexedHeap::pop)?;
        self.n[i] = self.n[i].saturating_add(1);
        self.t = self.t.saturating_add(1);
        self.file(i);
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(weights: &[u64], picks: usize) -> Vec<usize> {
        let mut s = Wrr::default();
        s.rebuild(weights.len(), weights.iter().copied().enumerate());
        (0..picks).map(|_| s.next().unwrap()).collect()
    }

    #[test]
    fn equal_weights_rotate_and_5_1_1_interleaves() {
        assert_eq!(run(&[1, 1, 1], 6), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(
            run(&[5, 1, 1], 14),
            vec![0, 1, 0, 0, 2, 0, 0, 0, 1, 0, 0, 2, 0, 0]
        );
        assert_eq!(run(&[0, 2, 0], 3), vec![1, 1, 1]);
        let mut s = Wrr::default();
        s.rebuild(3, std::iter::empty());
        assert_eq!(s.next(), None);
    }

    #[test]
    fn heavy_server_among_many_light_ones_is_spread() {
        // nginx-like smoothness for 10 + ten 1s: the heavy one every other pick.
        let mut w = vec![10];
        w.extend([1; 10]);
        let seq = run(&w, 20);
        for pair in seq.chunks(2) {
            assert!(pair.contains(&0), "{seq:?}");
        }
    }

    #[test]
    fn join_and_leave_are_incremental_and_fair() {
        let mut s = Wrr::default();
        s.rebuild(4, [(0, 1), (1, 1)].into_iter());
        for _ in 0..3 {
            s.next();
        }
        s.set(2, 2);
        s.set(0, 0);
        let mut c = [0; 4];
        for _ in 0..300 {
            c[s.next().unwrap()] += 1;
        }
        assert_eq!(c[0] + c[3], 0, "{c:?}");
        assert!((99..=101).contains(&c[1]), "{c:?}");
        assert!((199..=201).contains(&c[2]), "{c:?}");
        s.set(0, 1);
        s.set(1, 0);
        s.set(2, 0);
        assert_eq!(
            (0..5).map(|_| s.next().unwrap()).collect::<Vec<_>>(),
            vec![0; 5]
        );
        s.set(0, 0);
        assert_eq!(s.next(), None);
    }
}

#[cfg(test)]
mod bits_tests {
    use super::Bits;
    use proptest::prelude::*;

    proptest! {
        /// `next_from` is the smallest member at or after i, across words and summary words.
        #[test]
        fn next_from_matches_a_model(
            members in prop::collection::btree_set(0usize..9_000, 0..60),
            removed in prop::collection::vec(0usize..9_000, 0..20),
            probes in prop::collection::vec(0usize..9_100, 1..40),
        ) {
            let mut b = Bits::with_len(9_000);
            let mut model = members.clone();
            for &i in &members {
                b.insert(i);
            }
            for &i in &removed {
                b.remove(i);
                model.remove(&i);
            }
            for &p in &probes {
                prop_assert_eq!(b.next_from(p), model.range(p..).next().copied());
            }
        }
    }
}
