//! Servers filed by a small integer level (least connections: the load, `in_flight + 1`,
//! while every weight is the same), first come first served within a level: one intrusive
//! doubly linked list per level over per-server nodes. Moving a server to another level is
//! `O(1)` and touches its node, its two neighbours and the new level's tail; the first entry
//! in ascending order is the head of the lowest non-empty level, kept in `min`.
//!
//! The order is `(level, when filed)`. The caller gives each entry a key that sorts the
//! same way (least connections: `(cost of the level, a sequence number that only grows)`),
//! so [`Levels::find_ascending`] sees what the indexed heap would.

/// "No server" in a link.
const NIL: u32 = u32::MAX;

/// The highest level filed. Least connections leaves the levels for its heap when a server
/// has more requests in flight than this (`lists` stays at most 8 KiB).
pub(crate) const MAX_LEVEL: u32 = 1024;

#[derive(Clone, Copy, Debug)]
struct Node<K> {
    key: K,
    prev: u32,
    next: u32,
    /// 0: not filed.
    level: u32,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
};

#[derive(Debug)]
pub(crate) struct Levels<K> {
    /// Per server.
    nodes: Vec<Node<K>>,
    /// Per level (index 0 unused).
    lists: Vec<List>,
    /// Every level below `min` is empty.
    min: usize,
    len: usize,
}

impl<K: Copy + Default> Levels<K> {
    pub(crate) fn new() -> Self {
        Levels {
            nodes: Vec::new(),
            lists: Vec::new(),
            min: 1,
            len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Servers `0..n` can be filed (grows only).
    pub(crate) fn reserve_servers(&mut self, n: usize) {
        if self.nodes.len() < n {
            self.nodes.resize(
                n,
                Node {
                    key: K::default(),
                    prev: NIL,
                    next: NIL,
                    level: 0,
                },
            );
        }
    }

    /// Take every server out. `O(servers + levels)`.
    pub(crate) fn clear(&mut self) {
        self.nodes.iter_mut().for_each(|n| n.level = 0);
        self.lists.iter_mut().for_each(|l| *l = EMPTY);
        self.min = 1;
        self.len = 0;
    }

    #[inline]
    pub(crate) fn key(&self, s: usize) -> Option<K> {
        self.nodes.get(s).filter(|n| n.level > 0).map(|n| n.key)
    }

    /// File server `s` last at `level` (`1..=MAX_LEVEL`) with `key`, taking it from where it
    /// was. The caller's keys must sort like `(level, when filed)`.
    #[inline]
    pub(crate) fn push(&mut self, s: usize, key: K, level: u32) {
        debug_assert!((1..=MAX_LEVEL).contains(&level));
        let level = level.clamp(1, MAX_LEVEL);
        self.reserve_servers(s + 1);
        self.remove(s);
        let l = level as usize;
        if self.lists.len() <= l {
            self.lists.resize(l + 1, EMPTY);
        }
        let tail = self.lists[l].tail;
        self.nodes[s] = Node {
            key,
            prev: tail,
            next: NIL,
            level,
        };
        if tail == NIL {
            self.lists[l].head = s as u32;
        } else {
            self.nodes[tail as usize].next = s as u32;
        }
        self.lists[l].tail = s as u32;
        self.min = self.min.min(l);
        self.len += 1;
    }

    /// Take server `s` out; its key if it was filed.
    #[inline]
    pub(crate) fn remove(&mut self, s: usize) -> Option<K> {
        let n = *self.nodes.get(s)?;
        if n.level == 0 {
            return None;
        }
        let l = n.level as usize;
        if n.prev == NIL {
            self.lists[l].head = n.next;
        } else {
            self.nodes[n.prev as usize].next = n.next;
        }
        if n.next == NIL {
            self.lists[l].tail = n.prev;
        } else {
            self.nodes[n.next as usize].prev = n.prev;
        }
        self.nodes[s].level = 0;
        self.len -= 1;
        if l == self.min {
            while self.min < self.lists.len() && self.lists[self.min].head == NIL {
                self.min += 1;
            }
        }
        Some(n.key)
    }

    /// Visit entries in ascending order, at most `limit` of them, until `f` returns true;
    /// returns that entry's server. Passes over empty levels between the filled ones
    /// (at most [`MAX_LEVEL`]).
    #[inline]
    pub(crate) fn find_ascending(
        &self,
        limit: usize,
        mut f: impl FnMut(K, usize) -> bool,
    ) -> Option<usize> {
        let mut left = limit;
        for list in self.lists.iter().skip(self.min) {
            let mut s = list.head;
            while s != NIL {
                if left == 0 {
                    return None;
                }
                left -= 1;
                let n = &self.nodes[s as usize];
                if f(n.key, s as usize) {
                    return Some(s as usize);
                }
                s = n.next;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// The levels agree with a model ordered by `(level, when filed)` through any mix of
        /// pushes and removals.
        #[test]
        fn levels_match_a_model(ops in prop::collection::vec((0u8..3, 0usize..40, 1u32..8), 1..300)) {
            let mut l: Levels<u64> = Levels::new();
            // server -> (level, stamp); the stamp doubles as the key.
            let mut model: BTreeMap<usize, (u32, u64)> = BTreeMap::new();
            let mut stamp = 0u64;
            for (op, s, level) in ops {
                if op < 2 {
                    stamp += 1;
                    l.push(s, stamp, level);
                    model.insert(s, (level, stamp));
                } else {
                    prop_assert_eq!(l.remove(s), model.remove(&s).map(|(_, k)| k));
                }
                prop_assert_eq!(l.len(), model.len());
                for (&s, &(_, k)) in &model {
                    prop_assert_eq!(l.key(s), Some(k));
                }
                let mut want: Vec<((u32, u64), usize)> = model.iter().map(|(&s, &lk)| (lk, s)).collect();
                want.sort();
                let want: Vec<(u64, usize)> = want.into_iter().map(|((_, k), s)| (k, s)).collect();
                let mut seen = Vec::new();
                l.find_ascending(usize::MAX, |k, s| { seen.push((k, s)); false });
                prop_assert_eq!(&seen, &want);
                // A limit stops the visit.
                let mut n = 0;
                l.find_ascending(3, |_, _| { n += 1; false });
                prop_assert_eq!(n, want.len().min(3));
            }
            l.clear();
            prop_assert_eq!(l.len(), 0);
            prop_assert_eq!(l.find_ascending(usize::MAX, |_, _| true), None);
        }
    }
}
