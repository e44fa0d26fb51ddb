//! Samples in memory: a bounded ring per series, and a bound on the number of series.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Label name → value, sorted (so a label set has one spelling).
pub type Labels = BTreeMap<String, String>;

/// One series: a metric name and its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub name: String,
    pub labels: Labels,
}

impl SeriesKey {
    pub fn new(name: impl Into<String>, labels: Labels) -> SeriesKey {
        SeriesKey {
            name: name.into(),
            labels,
        }
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(
                    f,
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\").replace('"', "\\\"")
                )?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// One sample: time in milliseconds, value.
pub type Sample = (u64, f64);

/// The samples of every series, each in a ring of at most `per_series` samples.
#[derive(Debug, Clone)]
pub struct Store {
    series: BTreeMap<SeriesKey, VecDeque<Sample>>,
    per_series: usize,
    max_series: usize,
    dropped: u64,
}

impl Store {
    /// `per_series` samples kept per series (at least 2), at most `max_series` series.
    pub fn new(per_series: usize, max_series: usize) -> Store {
        Store {
            series: BTreeMap::new(),
            per_series: per_series.max(2),
            max_series,
            dropped: 0,
        }
    }

    /// Append a sample. A sample older than the series' last one is ignored; a new
    /// series beyond `max_series` is dropped (counted in [`Store::dropped`]).
    /// Returns whether the sample was kept.
    pub fn push(&mut self, key: &SeriesKey, t: u64, v: f64) -> bool {
        if let Some(ring) = self.series.get_mut(key) {
            if ring.back().is_some_and(|&(last, _)| t < last) {
                return false;
            }
            if ring.back().is_some_and(|&(last, _)| t == last) {
                ring.pop_back();
            }
            if ring.len() >= self.per_series {
                ring.pop_front();
            } else if ring.len() == ring.capacity() {
                // Grow by doubling, but never past `per_series` (a full ring of 1800
                // samples would otherwise take room for 2048).
                let want = (ring.capacity() * 2).max(4).min(self.per_series);
                ring.reserve_exact(want - ring.len());
            }
            ring.push_back((t, v));
            return true;
        }
        if self.series.len() >= self.max_series {
            self.dropped += 1;
            return false;
        }
        let mut ring = VecDeque::with_capacity(self.per_series.min(64));
        ring.push_back((t, v));
        self.series.insert(key.clone(), ring);
        true
    }

    /// Forget series whose last sample is older than `before`.
    pub fn prune(&mut self, before: u64) {
        self.series
            .retain(|_, r| r.back().is_some_and(|&(t, _)| t >= before));
    }

    /// Every series and its samples (oldest first).
    pub fn iter(&self) -> impl Iterator<Item = (&SeriesKey, &VecDeque<Sample>)> {
        self.series.iter()
    }

    /// The series a selector picks.
    pub fn select<'a>(
        &'a self,
        sel: &'a crate::Selector,
    ) -> impl Iterator<Item = (&'a SeriesKey, &'a VecDeque<Sample>)> + 'a {
        let start = SeriesKey::new(sel.name.clone(), Labels::new());
        self.series
            .range(start..)
            .take_while(move |(k, _)| k.name == sel.name)
            .filter(move |(k, _)| sel.matches(k))
    }

    pub fn samples(&self, key: &SeriesKey) -> Option<&VecDeque<Sample>> {
        self.series.get(key)
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Samples refused because the store was full of series.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn per_series(&self) -> usize {
        self.per_series
    }

    /// Samples held, over every series.
    pub fn samples_held(&self) -> usize {
        self.series.values().map(VecDeque::len).sum()
    }

    /// An estimate of the heap the store holds: each ring by capacity, each key's strings
    /// by capacity, and the nodes of the series map and of each label map (see
    /// `btree_bytes`). Within some percent of what the allocator hands out (it rounds
    /// sizes up); the rings are most of it once full.
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        let label_kv = 2 * size_of::<String>();
        let series_kv = size_of::<SeriesKey>() + size_of::<VecDeque<Sample>>();
        btree_bytes(self.series.len(), series_kv)
            + self
                .series
                .iter()
                .map(|(k, ring)| {
                    k.name.capacity()
                        + btree_bytes(k.labels.len(), label_kv)
                        + k.labels
                            .iter()
                            .map(|(n, v)| n.capacity() + v.capacity())
                            .sum::<usize>()
                        + ring.capacity() * size_of::<Sample>()
                })
                .sum::<usize>()
    }
}

/// The nodes of a `BTreeMap` of `n` entries of `kv` bytes each: a node has room for 11
/// entries plus 16 bytes of its own, and a map of up to 11 entries is one node; a bigger
/// map's nodes are between half and entirely full, counted as 8 entries each (the few
/// internal nodes' edges left out).
fn btree_bytes(n: usize, kv: usize) -> usize {
    const CAP: usize = 11;
    let nodes = match n {
        0 => 0,
        1..=CAP => 1,
        _ => n.div_ceil(8),
    };
    nodes * (CAP * kv + 16)
}

/// Build a label set from pairs (tests and callers with fixed labels).
pub fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rings_are_bounded_and_series_are_capped() {
        let mut s = Store::new(3, 2);
        let a = SeriesKey::new("a", labels([("instance", "x")]));
        for t in 0..10 {
            assert!(s.push(&a, t, t as f64));
        }
        let r: Vec<u64> = s.samples(&a).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(r, vec![7, 8, 9]);
        assert!(!s.push(&a, 5, 0.0), "older than the last sample");
        assert!(s.push(&SeriesKey::new("b", Labels::new()), 1, 1.0));
        assert!(!s.push(&SeriesKey::new("c", Labels::new()), 1, 1.0));
        assert_eq!((s.len(), s.dropped()), (2, 1));
        s.prune(5);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_ring_holds_room_for_its_samples_only() {
        let mut s = Store::new(1800, 10);
        let k = SeriesKey::new("m", labels([("instance", "x")]));
        for t in 0..5000 {
            s.push(&k, t, 1.0);
        }
        let ring = s.samples(&k).unwrap();
        assert_eq!(ring.len(), 1800);
        assert!(ring.capacity() < 1900, "{}", ring.capacity());
        assert_eq!(s.samples_held(), 1800);
        // The ring, the series map's one node, the key's name and its label map's node.
        let b = s.approx_bytes();
        assert_eq!(b, 1800 * 16 + (11 * 80 + 16) + 1 + (11 * 48 + 16) + 8 + 1);
        assert_eq!(btree_bytes(0, 48), 0);
        assert_eq!(btree_bytes(12, 48), 2 * (11 * 48 + 16));
        assert_eq!(btree_bytes(1000, 80), 125 * (11 * 80 + 16));
    }

    #[test]
    fn display_is_prometheus_like() {
        let k = SeriesKey::new("up", labels([("job", "web"), ("instance", "a\"b")]));
        assert_eq!(k.to_string(), "up{instance=\"a\\\"b\",job=\"web\"}");
    }

    proptest! {
        #[test]
        fn never_more_than_per_series_samples_and_always_in_time_order(
            cap in 2usize..20,
            ts in proptest::collection::vec(0u64..1000, 0..200),
        ) {
            let mut s = Store::new(cap, 10);
            let k = SeriesKey::new("m", Labels::new());
            for t in ts {
                s.push(&k, t, 1.0);
                let r = s.samples(&k).unwrap();
                prop_assert!(r.len() <= cap);
                prop_assert!(r.iter().zip(r.iter().skip(1)).all(|(a, b)| a.0 < b.0));
            }
        }
    }
}
