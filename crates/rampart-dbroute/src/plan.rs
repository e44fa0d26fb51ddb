//! The routing decisions, as pure functions of an observed topology (no I/O, no clock).

use crate::token::Token;

/// What a node was last seen doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Replica,
    /// Unreachable, stopping, demoted, or anything that must get no traffic.
    Unavailable,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unavailable => "unavailable",
        }
    }
}

/// One database node as last observed by the topology source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// Stable name (the db agent's member name, or `host:port` for a static list).
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: Role,
    /// Current timeline (primary) or the timeline being received (replica), when known.
    pub timeline: Option<u32>,
    /// Primary: current WAL position. Replica: last replayed position.
    pub lsn: Option<u64>,
    /// Bytes behind the primary, when known.
    pub lag_bytes: Option<u64>,
}

/// The whole cluster as last observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub nodes: Vec<NodeState>,
}

impl Topology {
    /// The one primary, if exactly one node claims the role. Two primaries (a split brain
    /// seen mid-failover) give none: writes wait for the source to settle.
    pub fn primary(&self) -> Option<usize> {
        let mut it = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Primary);
        let first = it.next()?.0;
        if it.next().is_some() {
            return None;
        }
        Some(first)
    }

    /// Replicas that may take token-less reads: streaming and within the lag bound.
    /// An unknown lag counts as within the bound only when no primary is known (reads
    /// stay available while the primary is down).
    pub fn readable_replicas(&self, max_lag_bytes: u64) -> Vec<usize> {
        let have_primary = self.primary().is_some();
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Replica)
            .filter(|(_, n)| match n.lag_bytes {
                Some(l) => l <= max_lag_bytes,
                None => !have_primary,
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// Where a read should go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// Replicas already known to have the token's write (or any readable replica when the
    /// read has no token), best first. Served without a live check.
    pub fresh: Vec<usize>,
    /// Replicas on the token's timeline that were behind it when last observed, best first:
    /// each needs a live check of its replay position (and may be waited for).
    pub to_check: Vec<usize>,
    /// The primary, the last resort.
    pub primary: Option<usize>,
}

/// Plan a read. `in_flight[i]` is the number of checked-out connections to node i, used
/// to spread reads (fewest first); `rotate` breaks ties so equal replicas alternate.
pub fn plan_read(
    topo: &Topology,
    token: Option<Token>,
    max_lag_bytes: u64,
    in_flight: &[u32],
    rotate: u64,
) -> ReadPlan {
    let readable = topo.readable_replicas(max_lag_bytes);
    let mut fresh = Vec::new();
    let mut to_check = Vec::new();
    for i in readable {
        let n = &topo.nodes[i];
        match token {
            None => fresh.push(i),
            Some(t) => {
                if n.timeline != Some(t.timeline) {
                    // Another (or unknown) timeline: the replica's history may not contain
                    // the write at that position. Only the primary is safe.
                    continue;
                }
                match n.lsn {
                    Some(l) if l >= t.lsn => fresh.push(i),
                    _ => to_check.push(i),
                }
            }
        }
    }
    let len = topo.nodes.len().max(1) as u64;
    let key = |i: &usize| {
        let load = in_flight.get(*i).copied().unwrap_or(0);
        // Rotation order among equals: distance from the rotating start.
        let pos = ((*i as u64) + len - (rotate % len)) % len;
        (load, pos)
    };
    fresh.sort_by_key(key);
    to_check.sort_by_key(key);
    ReadPlan {
        fresh,
        to_check,
        primary: topo.primary(),
    }
}

/// May a replica observed live at (`timeline`, `replay_lsn`) serve a read holding `token`?
pub fn replica_has(token: Token, timeline: Option<u32>, replay_lsn: Option<u64>) -> bool {
    timeline == Some(token.timeline) && replay_lsn.is_some_and(|l| l >= token.lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str, role: Role, tl: u32, lsn: u64, lag: Option<u64>) -> NodeState {
        NodeState {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            role,
            timeline: Some(tl),
            lsn: Some(lsn),
            lag_bytes: lag,
        }
    }

    fn topo() -> Topology {
        Topology {
            nodes: vec![
                node("p", Role::Primary, 2, 1000, Some(0)),
                node("r1", Role::Replica, 2, 900, Some(100)),
                node("r2", Role::Replica, 2, 1000, Some(0)),
                node("r3", Role::Replica, 1, 5000, Some(0)),
                node("lagging", Role::Replica, 2, 10, Some(990)),
                node("down", Role::Unavailable, 2, 1000, None),
            ],
        }
    }

    #[test]
    fn tokenless_reads_use_replicas_within_lag() {
        let p = plan_read(&topo(), None, 500, &[0; 6], 0);
        assert_eq!(p.primary, Some(0));
        let mut f = p.fresh.clone();
        f.sort();
        assert_eq!(f, vec![1, 2, 3]);
        assert!(p.to_check.is_empty());
    }

    #[test]
    fn token_reads_need_the_timeline_and_position() {
        let t = Token {
            timeline: 2,
            lsn: 950,
        };
        let p = plan_read(&topo(), Some(t), 500, &[0; 6], 0);
        assert_eq!(p.fresh, vec![2]);
        assert_eq!(p.to_check, vec![1]);
    }

    #[test]
    fn fewest_in_flight_first_and_rotation_among_equals() {
        let p = plan_read(&topo(), None, 500, &[0, 3, 1, 1, 0, 0], 0);
        assert_eq!(p.fresh, vec![2, 3, 1]);
        let a = plan_read(&topo(), None, 500, &[0; 6], 1).fresh[0];
        let b = plan_read(&topo(), None, 500, &[0; 6], 2).fresh[0];
        let c = plan_read(&topo(), None, 500, &[0; 6], 3).fresh[0];
        assert_ne!(a, b);
        assert_ne!(b, c);
    }

    #[test]
    fn two_primaries_mean_none() {
        let mut t = topo();
        t.nodes[2].role = Role::Primary;
        assert_eq!(t.primary(), None);
    }

    #[test]
    fn unknown_lag_is_readable_only_without_primary() {
        let mut t = Topology {
            nodes: vec![
                node("p", Role::Primary, 1, 10, Some(0)),
                node("r", Role::Replica, 1, 10, None),
            ],
        };
        assert!(t.readable_replicas(0).is_empty());
        t.nodes[0].role = Role::Unavailable;
        assert_eq!(t.readable_replicas(0), vec![1]);
    }

    fn arb_node() -> impl Strategy<Value = NodeState> {
        (
            prop_oneof![
                Just(Role::Primary),
                Just(Role::Replica),
                Just(Role::Unavailable)
            ],
            proptest::option::of(1u32..4),
            proptest::option::of(0u64..2000),
            proptest::option::of(0u64..2000),
        )
            .prop_map(|(role, timeline, lsn, lag_bytes)| NodeState {
                name: "n".into(),
                host: "h".into(),
                port: 1,
                role,
                timeline,
                lsn,
                lag_bytes,
            })
    }

    proptest! {
        /// The safety property of read-your-writes: a replica served without a live check
        /// has, by its last observation, replayed the token's position on its timeline;
        /// and no plan ever sends a read to a node that is not a replica within the bound.
        #[test]
        fn fresh_replicas_hold_the_token(
            nodes in proptest::collection::vec(arb_node(), 0..7),
            tl in 1u32..4, lsn in 0u64..2000, max_lag in 0u64..2000,
            loads in proptest::collection::vec(0u32..5, 7), rotate: u64,
        ) {
            let topo = Topology { nodes };
            let token = Token { timeline: tl, lsn };
            let p = plan_read(&topo, Some(token), max_lag, &loads, rotate);
            for &i in &p.fresh {
                let n = &topo.nodes[i];
                prop_assert!(replica_has(token, n.timeline, n.lsn));
            }
            for &i in p.fresh.iter().chain(&p.to_check) {
                let n = &topo.nodes[i];
                prop_assert_eq!(n.role, Role::Replica);
                prop_assert_eq!(n.timeline, Some(tl));
                prop_assert!(topo.readable_replicas(max_lag).contains(&i));
            }
            if let Some(pi) = p.primary {
                prop_assert_eq!(topo.nodes[pi].role, Role::Primary);
            }
            // No node appears twice.
            let mut all: Vec<usize> = p.fresh.iter().chain(&p.to_check).copied().collect();
            let before = all.len();
            all.sort();
            all.dedup();
            prop_assert_eq!(all.len(), before);
        }
    }
}
