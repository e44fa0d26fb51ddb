//! Leader-only keys (`/sync`, `/timeline`, the leader's clean-ups of `/failover`):
//! written only in an etcd transaction that checks, atomically with the write, that the
//! writer still holds the leader key *it took* — the key's `mod_revision` from its own
//! create and its value (the node name). A write delayed past a change of leader — a
//! deposed leader's, or one from an earlier term of the same node (a new term is a new
//! key, so a new revision) — is refused and changes nothing.

use rampart_coord::{Coord, CoordError, Guard, LeaseId};

use crate::dcs;

/// What a leader proves it still leads with: the leader key as it created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderToken {
    pub cluster: String,
    pub name: String,
    /// `mod_revision` of `/leader` as created by this node.
    pub revision: i64,
}

impl LeaderToken {
    fn guards(&self, extra: Option<Guard>) -> Vec<Guard> {
        let leader = dcs::key(&self.cluster, "leader");
        let mut g = vec![
            Guard::ModRevision(leader.clone(), self.revision),
            Guard::Value(leader, self.name.as_bytes().to_vec()),
        ];
        g.extend(extra);
        g
    }
}

/// Write `/<name>` (under `lease`, if any) while `token` still holds the leader key and
/// `extra` holds (e.g. the key's own revision, for a compare-and-set). False: refused,
/// nothing written.
pub async fn put(
    coord: &Coord,
    token: &LeaderToken,
    name: &str,
    value: &[u8],
    extra: Option<Guard>,
    lease: Option<LeaseId>,
) -> Result<bool, CoordError> {
    coord
        .put_guarded(
            &token.guards(extra),
            &dcs::key(&token.cluster, name),
            value,
            lease,
        )
        .await
}

/// Delete `/<name>` while `token` still holds the leader key and `extra` holds.
pub async fn delete(
    coord: &Coord,
    token: &LeaderToken,
    name: &str,
    extra: Option<Guard>,
) -> Result<bool, CoordError> {
    coord
        .delete_guarded(&token.guards(extra), &dcs::key(&token.cluster, name))
        .await
}

/// The guard of a compare-and-set on `/<name>` last seen at `revision` (0: absent).
pub fn unchanged(cluster: &str, name: &str, revision: i64) -> Guard {
    let k = dcs::key(cluster, name);
    if revision == 0 {
        Guard::Absent(k)
    } else {
        Guard::ModRevision(k, revision)
    }
}
