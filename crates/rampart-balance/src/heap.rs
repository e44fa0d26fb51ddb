//! An indexed binary min-heap over server indices: `O(log n)` push, pop, remove and re-key
//! of any server, `O(1)` peek. Ties between equal keys go to the lower server index, so the
//! order is total and deterministic.
//!
//! Also [`Frac`], an exact non-negative rational used as a key (weights make every key a
//! ratio; comparing by cross-multiplication in `u128` keeps it exact).

use std::cmp::Ordering;

/// Position of a server that is not in the heap.
const ABSENT: u32 = u32::MAX;

/// `num / den`, compared exactly (`den > 0`; `num < 2^64`, `den < 2^64`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frac {
    pub num: u64,
    pub den: u64,
}

impl Frac {
    pub(crate) fn new(num: u64, den: u64) -> Frac {
        Frac {
            num,
            den: den.max(1),
        }
    }
}

impl PartialEq for Frac {
    fn eq(&self, o: &Frac) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Frac {}
impl PartialOrd for Frac {
    fn partial_cmp(&self, o: &Frac) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Frac {
    fn cmp(&self, o: &Frac) -> Ordering {
        (u128::from(self.num) * u128::from(o.den)).cmp(&(u128::from(o.num) * u128::from(self.den)))
    }
}

#[derive(Debug)]
pub(crate) struct IndexedHeap<K> {
    /// `(key, server)`, a binary min-heap on `(key, server)`.
    heap: Vec<(K, u32)>,
    /// Server -> its position in `heap`, [`ABSENT`] when not in it.
    pos: Vec<u32>,
}

impl<K: Ord + Copy> IndexedHeap<K> {
    pub(crate) fn new() -> Self {
        IndexedHeap {
            heap: Vec::new(),
            pos: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Servers `0..n` can be indexed (grows only).
    pub(crate) fn reserve_servers(&mut self, n: usize) {
        if self.pos.len() < n {
            self.pos.resize(n, ABSENT);
        }
    }

    pub(crate) fn key(&self, s: usize) -> Option<K> {
        let p = *self.pos.get(s)?;
        (p != ABSENT).then(|| self.heap[p as usize].0)
    }

    /// The entry at heap position `p` (0 is the minimum; children of `p` are `2p+1`, `2p+2`).
    pub(crate) fn at(&self, p: usize) -> Option<(K, usize)> {
        self.heap.get(p).map(|&(k, s)| (k, s as usize))
    }

    pub(crate) fn peek(&self) -> Option<(K, usize)> {
        self.at(0)
    }

    /// Empty the heap and refill it with `items` in `O(n)` (Floyd's heapify). Servers must be
    /// distinct.
    pub(crate) fn build(&mut self, items: impl IntoIterator<Item = (K, usize)>) {
        for &(_, s) in &self.heap {
            self.pos[s as usize] = ABSENT;
        }
        self.heap.clear();
        for (k, s) in items {
            self.reserve_servers(s + 1);
            debug_assert_eq!(self.pos[s], ABSENT);
            self.pos[s] = self.heap.len() as u32;
            self.heap.push((k, s as u32));
        }
        for p in (0..self.heap.len() / 2).rev() {
            self.sift_down(p);
        }
    }

    /// Insert server `s` with key `k`, or change its key.
    pub(crate) fn set(&mut self, s: usize, k: K) {
        self.reserve_servers(s + 1);
        let p = self.pos[s];
        if p == ABSENT {
            let p = self.heap.len();
            self.heap.push((k, s as u32));
            self.pos[s] = p as u32;
            self.sift_up(p);
        } else {
            let p = p as usize;
            let old = self.heap[p].0;
            self.heap[p].0 = k;
            match k.cmp(&old) {
                Ordering::Less => self.sift_up(p),
                Ordering::Greater => self.sift_down(p),
                Ordering::Equal => {}
            }
        }
    }

    /// Remove server `s`; its key if it was in the heap.
    pub(crate) fn remove(&mut self, s: usize) -> Option<K> {
        let p = *self.pos.get(s)?;
        if p == ABSENT {
            return None;
        }
        let p = p as usize;
        let last = self.heap.len() - 1;
        self.swap(p, last);
        let (k, _) = self.heap.pop()?;
        self.pos[s] = ABSENT;
        if p < self.heap.len() {
            // The moved entry may belong above or below its new place.
            self.sift_up(p);
            self.sift_down(p);
        }
        Some(k)
    }

    pub(crate) fn pop(&mut self) -> Option<(K, usize)> {
        let (k, s) = self.peek()?;
        self.remove(s);
        Some((k, s))
    }

    fn less(&self, a: usize, b: usize) -> bool {
        self.heap[a] < self.heap[b]
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }

    /// Move the entry at `p` up to its place: the entries it passes move down one level
    /// each (one write apiece, no swaps), the entry is written once.
    fn sift_up(&mut self, mut p: usize) {
        let e = self.heap[p];
        while p > 0 {
            let parent = (p - 1) / 2;
            let up = self.heap[parent];
            if e >= up {
                break;
            }
            self.heap[p] = up;
            self.pos[up.1 as usize] = p as u32;
            p = parent;
        }
        self.heap[p] = e;
        self.pos[e.1 as usize] = p as u32;
    }

    /// Move the entry at `p` down to its place (the smaller child moves up each level).
    fn sift_down(&mut self, mut p: usize) {
        let n = self.heap.len();
        let e = self.heap[p];
        loop {
            let l = 2 * p + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.heap[r] < self.heap[l] {
                r
            } else {
                l
            };
            let down = self.heap[c];
            if down >= e {
                break;
            }
            self.heap[p] = down;
            self.pos[down.1 as usize] = p as u32;
            p = c;
        }
        self.heap[p] = e;
        self.pos[e.1 as usize] = p as u32;
    }

    /// Visit entries in ascending order of `(key, server)`, at most `limit` of them, until
    /// `f` returns true; returns that entry's server. `O(limit log limit)`, no allocation
    /// (`limit` is capped at [`MAX_VISIT`]).
    pub(crate) fn find_ascending(
        &self,
        limit: usize,
        mut f: impl FnMut(K, usize) -> bool,
    ) -> Option<usize> {
        let limit = limit.min(MAX_VISIT);
        // Frontier of heap positions whose parents were visited; its minimum comes next.
        let mut frontier = [0usize; 2 * MAX_VISIT + 1];
        let mut len = 0;
        if !self.heap.is_empty() {
            frontier[0] = 0;
            len = 1;
        }
        for _ in 0..limit {
            if len == 0 {
                return None;
            }
            let mut m = 0;
            for j in 1..len {
                if self.less(frontier[j], frontier[m]) {
                    m = j;
                }
            }
            let p = frontier[m];
            len -= 1;
            frontier[m] = frontier[len];
            let (k, s) = self.heap[p];
            if f(k, s as usize) {
                return Some(s as usize);
            }
            for c in [2 * p + 1, 2 * p + 2] {
                if c < self.heap.len() {
                    frontier[len] = c;
                    len += 1;
                }
            }
        }
        None
    }
}

/// The most entries [`IndexedHeap::find_ascending`] visits.
pub(crate) const MAX_VISIT: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frac_compares_exactly() {
        assert_eq!(Frac::new(1, 3), Frac::new(2, 6));
        assert!(Frac::new(1, 3) < Frac::new(1, 2));
        assert!(Frac::new(u64::MAX, u64::MAX - 1) < Frac::new(u64::MAX - 1, u64::MAX - 2));
        assert!(Frac::new(0, 5) < Frac::new(1, u64::MAX));
    }

    proptest! {
        /// The heap agrees with a sorted model through any mix of operations.
        #[test]
        fn heap_matches_a_model(ops in prop::collection::vec((0u8..4, 0usize..40, 0u64..20), 1..300)) {
            let mut h: IndexedHeap<u64> = IndexedHeap::new();
            let mut model: std::collections::BTreeMap<usize, u64> = Default::default();
            for (op, s, k) in ops {
                match op {
                    0 | 1 => { h.set(s, k); model.insert(s, k); }
                    2 => { prop_assert_eq!(h.remove(s), model.remove(&s)); }
                    _ => {
                        let want = model.iter().map(|(&s, &k)| (k, s)).min();
                        let got = h.pop();
                        prop_assert_eq!(got, want);
                        if let Some((_, s)) = got { model.remove(&s); }
                    }
                }
                prop_assert_eq!(h.len(), model.len());
                for (&s, &k) in &model {
                    prop_assert_eq!(h.key(s), Some(k));
                }
                // Ascending visits see the model's order.
                let mut sorted: Vec<(u64, usize)> = model.iter().map(|(&s, &k)| (k, s)).collect();
                sorted.sort();
                let mut seen = Vec::new();
                h.find_ascending(MAX_VISIT, |k, s| { seen.push((k, s)); false });
                prop_assert_eq!(&seen[..], &sorted[..sorted.len().min(MAX_VISIT)]);
            }
            let items: Vec<(u64, usize)> = model.iter().map(|(&s, &k)| (k, s)).collect();
            h.build(items.clone());
            let mut sorted = items;
            sorted.sort();
            let mut out = Vec::new();
            while let Some(e) = h.pop() { out.push(e); }
            prop_assert_eq!(out, sorted);
        }
    }
}
