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
//! Joining, leaving or re-weighting one server is `O(log n)` ([`Wrr::set`]): virtual time
//! stays where it is (re-expressed on the new `W`, rounded up), a joining server starts at
//! the next point of its grid at or after `V`, so it neither bursts nor waits more than a
//! cycle. All arithmetic is exact (integers, rationals compared in `u128`).

use crate::heap::{Frac, IndexedHeap};

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
        let mut items = Vec::new();
        for (i, w) in members {
            if i < n && w > 0 && self.w[i] == 0 {
                self.w[i] = w;
                self.total += w;
                items.push((Frac::new(1, w), i));
            }
        }
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
