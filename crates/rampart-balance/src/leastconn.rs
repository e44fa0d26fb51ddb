//! Exact weighted least connections in `O(log n)` per pick: the servers sit in an indexed
//! min-heap keyed by `(in_flight + 1) / weight`, then by when the key was last set, so servers that tie for the minimum take turns (HAProxy's leastconn tree does
//! the same). The caller keeps keys true: a pick charges the chosen server one request (the
//! caller takes the slot right after), [`LeastConn::refresh`] re-reads a server when its
//! load ends or its eligibility changes. Keys that went stale anyway (a missed update, a
//! race between workers) are caught by re-reading the chosen server before answering and by
//! re-reading one more server per pick in rotation, so every key is re-read at least every
//! `n` picks.

use crate::heap::IndexedHeap;
use crate::ServerSet;

/// How many servers in ascending order a pick considers before scanning all of them
/// (the first ones may be ineligible for this request: already tried, or full).
const CANDIDATES: usize = 8;

/// `cost << 64 | seq`: the cost first, then when the key was set (older first among equal
/// costs), compared as one integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key(u128);

impl Key {
    fn new(cost: u64, seq: u64) -> Key {
        Key(u128::from(cost) << 64 | u128::from(seq))
    }
    fn cost(self) -> u64 {
        (self.0 >> 64) as u64
    }
    fn seq(self) -> u64 {
        self.0 as u64
    }
}

#[derive(Debug)]
pub(crate) struct LeastConn {
    heap: IndexedHeap<Key>,
    seq: u64,
    sweep: usize,
}

/// The most weight the cost tells apart exactly.
const MAX_EXACT_WEIGHT: u64 = 0xffff;

/// `(in_flight + 1) / weight` in 32.32 fixed point. Exact as an order: two different ratios
/// with weights up to 65,535 differ by at least `2^-32`, so their fixed-point values differ
/// (greater weights count as 65,535; the lb's are at most 256).
fn cost(in_flight: u32, w: u32) -> u64 {
    let load = (u64::from(in_flight) + 1).min(u64::from(u32::MAX));
    (load << 32) / u64::from(w).clamp(1, MAX_EXACT_WEIGHT)
}

impl LeastConn {
    pub(crate) fn new() -> Self {
        LeastConn {
            heap: IndexedHeap::new(),
            seq: 0,
            sweep: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Every server with `weight > 0` keyed afresh. `O(n)`.
    pub(crate) fn rebuild<S: ServerSet + ?Sized>(&mut self, servers: &S) {
        let n = servers.len();
        self.heap.reserve_servers(n);
        let mut items = Vec::with_capacity(n);
        for i in 0..n {
            let w = servers.weight(i);
            if w > 0 {
                let seq = self.next_seq();
                items.push((Key::new(cost(servers.in_flight(i), w), seq), i));
            }
        }
        self.heap.build(items);
    }

    /// Server `i`'s eligibility (weight 0: out) or load changed: re-key it. `O(log n)`.
    pub(crate) fn update<S: ServerSet + ?Sized>(&mut self, servers: &S, i: usize) {
        if i >= servers.len() {
            self.heap.remove(i);
            return;
        }
        let w = servers.weight(i);
        if w == 0 {
            self.heap.remove(i);
        } else {
            self.rekey(i, cost(servers.in_flight(i), w));
        }
    }

    /// Server `i`'s load changed: re-key it if it is in the heap and eligible now (never
    /// takes a server out: a weight of 0 here may only mean "already tried" or "full").
    pub(crate) fn refresh<S: ServerSet + ?Sized>(&mut self, servers: &S, i: usize) {
        if i >= servers.len() {
            self.heap.remove(i);
            return;
        }
        let w = servers.weight(i);
        if w > 0 {
            self.rekey(i, cost(servers.in_flight(i), w));
        }
    }

    /// Set `i`'s cost; a new turn (seq) only when the cost changed.
    fn rekey(&mut self, i: usize, c: u64) {
        match self.heap.key(i) {
            Some(k) if k.cost() == c => {}
            _ => {
                let seq = self.next_seq();
                self.heap.set(i, Key::new(c, seq));
            }
        }
    }

    /// The eligible server of least cost (turns among ties), charged one request.
    pub(crate) fn pick<S: ServerSet + ?Sized>(&mut self, servers: &S) -> Option<usize> {
        let n = servers.len();
        if self.heap.servers() != n {
            self.rebuild(servers);
        }
        if n > 0 {
            // Keep every key honest within n picks.
            let j = self.sweep % n;
            self.sweep = self.sweep.wrapping_add(1);
            if servers.weight(j) > 0 {
                self.rekey(j, cost(servers.in_flight(j), servers.weight(j)));
            }
        }
        let mut chosen = None;
        for _ in 0..2 {
            let mut stale = None;
            chosen = self.heap.find_ascending(CANDIDATES, |k, i| {
                if i >= n {
                    return false;
                }
                let w = servers.weight(i);
                if w == 0 {
                    return false;
                }
                let c = cost(servers.in_flight(i), w);
                if c != k.cost() {
                    stale = Some((i, c));
                }
                true
            });
            match stale {
                // The least key was stale: fix it and look again.
                Some((i, c)) if chosen == Some(i) => {
                    self.rekey(i, c);
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
        self.rekey(i, cost(servers.in_flight(i).saturating_add(1), w));
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
            let c = cost(servers.in_flight(i), w);
            let seq = self.heap.key(i).map_or(u64::MAX, Key::seq);
            if best.is_none_or(|(bc, bs, _)| (c, seq) < (bc, bs)) {
                best = Some((c, seq, i));
            }
        }
        best.map(|(_, _, i)| i)
    }
}
