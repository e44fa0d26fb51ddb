//! The HA decision: a pure function of what one agent observed in one loop.
//!
//! No I/O, no clock: time comes in as `now` (a monotonic offset chosen by the caller).
//! The agent gathers an [`Observed`] (its own PostgreSQL, the etcd keys, its lease
//! timing), calls [`decide`], and carries out the one [`Action`] it returns.
//!
//! Safety rules this module guarantees (property-tested below):
//! - a node promotes only while etcd names it the leader (`Promote` needs the key) and
//!   takes the key only when nobody holds it (`TakeLeader`, an atomic create);
//! - a running primary whose lease cannot be renewed before its local deadline demotes;
//! - a replica cut off from etcd, or without the key, never promotes;
//! - in synchronous mode only the recorded synchronous standby may take the key
//!   (or the target of a switchover once it has all the old primary's WAL);
//! - a replica beyond `max_lag_bytes`, or marked `nofailover`, never takes the key;
//! - a node on an older timeline than the cluster's (the newest one a leader recorded),
//!   or whose timeline it cannot tell, never takes the key (unless an operator forces
//!   a failover to it): its WAL lacks the newer timeline's writes or has diverged from it.

use std::time::Duration;

/// How long a primary whose PostgreSQL cannot be started keeps the leader key.
pub const PRIMARY_START_TIMEOUT: Duration = Duration::from_secs(15);
/// A replica that has not streamed for this long while a leader exists is rewound
/// (or re-cloned when rewinding fails).
pub const STUCK_REPLICA_TIMEOUT: Duration = Duration::from_secs(8);
/// In asynchronous mode a member that may be better placed (more WAL, or still starting
/// and so unknown) gets this long, from the moment this agent sees it during a vacancy,
/// to take the key before the others do. Once per member and vacancy: a member that
/// keeps restarting cannot hold a failover up for longer.
pub const PEER_GRACE: Duration = Duration::from_secs(5);
/// A switchover/failover request older than this is ignored (and removed by the leader).
pub const FAILOVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The local PostgreSQL as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pg {
    /// No data directory (or an empty one).
    NoData,
    /// Data present, server not running. `was_primary`: no standby.signal.
    Stopped {
        was_primary: bool,
        down_for: Duration,
    },
    /// Server up and answering queries.
    Running(PgRunning),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgRunning {
    pub in_recovery: bool,
    /// The timeline it is on: a primary's own; a streaming replica's received one; else
    /// its replay timeline extended by the history files it can follow (see
    /// [`crate::timeline`]), or, when that cannot be read, the last checkpoint's — a lower
    /// bound (a checkpoint lags behind a timeline switch) and `timeline_known` is false.
    pub timeline: u32,
    pub timeline_known: bool,
    /// Primary: current WAL LSN; replica: last received (flushed) LSN, else replay.
    pub wal_lsn: u64,
    /// Replica: last replayed LSN (what its queries see; what `list` calls lag).
    pub replay_lsn: u64,
    /// Replica only: is the WAL receiver streaming from the leader we follow?
    pub streaming: bool,
    /// Replica only: how long it has not been streaming (zero when streaming).
    pub not_streaming_for: Duration,
    /// Replica only: PostgreSQL reported that the leader's timeline forked off before our
    /// own position (our WAL has records the leader never had): only a rewind helps.
    pub diverged: bool,
}

/// Another member as posted in etcd (`/members/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub running: bool,
    pub in_recovery: bool,
    pub streaming: bool,
    pub timeline: u32,
    /// `timeline` is exact, not only a lower bound.
    pub timeline_known: bool,
    pub wal_lsn: u64,
    /// Last replayed LSN (replicas).
    pub replay_lsn: u64,
    pub nofailover: bool,
    /// Its agent is up and its PostgreSQL is starting (not answering yet): it may hold
    /// more WAL than anyone (a former primary restarted), but has not shown it yet.
    pub starting: bool,
    /// How long this agent has seen the member while the leader key is vacant: the whole
    /// vacancy for a member that was there when the key vanished, less for one that
    /// arrived later. Zero while a leader exists.
    pub seen_for: Duration,
}

/// `/sync`: which standby is synchronous for which leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncKey {
    pub leader: String,
    pub sync_standby: Option<String>,
}

/// `/failover`: an operator's switchover or failover request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverReq {
    /// The leader at the time of the request (switchover); `None` for "whoever".
    pub from: Option<String>,
    pub to: Option<String>,
    /// Forced failover: the target promotes without the synchronous-standby rule.
    pub forced: bool,
    /// Set by the old primary after its clean shutdown: the last WAL byte the target must have.
    pub min_lsn: Option<u64>,
    /// How long ago the request was made.
    pub age: Duration,
}

/// Everything one loop observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub me: String,
    pub nofailover: bool,
    pub synchronous: bool,
    pub max_lag_bytes: u64,
    /// This loop read the cluster keys from etcd successfully.
    pub dcs_ok: bool,
    /// `/initialize` exists.
    pub initialized: bool,
    /// Holder of `/leader`, if any.
    pub leader: Option<String>,
    /// Our own lease (member and leader keys are attached to it) is still ours until
    /// this local deadline (already reduced by the demotion margin); `None`: no lease.
    pub lease_valid_until: Option<Duration>,
    pub now: Duration,
    pub pg: Pg,
    pub peers: Vec<Peer>,
    pub sync: Option<SyncKey>,
    pub failover: Option<FailoverReq>,
    pub paused: bool,
    /// The data directory's file system is (nearly) full.
    pub disk_full: bool,
    /// A replica not streaming from a live leader for this long is rewound.
    pub stuck_after: Duration,
    /// The last leader LSN this agent saw while the leader was up (for the lag rule).
    pub last_leader_lsn: Option<u64>,
    /// The cluster's current timeline: the newest a leader recorded in `/timeline` or
    /// this agent saw a leader run on. `None`: none recorded (the rule cannot apply).
    pub cluster_timeline: Option<u32>,
    /// The watchdog process runs: if this agent froze, its primary would be fenced.
    /// Without it the node does not lead (as Patroni's `watchdog: mode: required`).
    pub fence_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Checkpoint and ship all WAL to the standbys first (switchover).
    Fast,
    /// Stop accepting writes at once (lost lease).
    Immediate,
}

/// The one thing the agent does this loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do now (reason for the log and `list`).
    Wait(&'static str),
    /// Race for `/initialize`; the winner runs initdb and becomes primary.
    Bootstrap,
    /// Copy the leader's data with pg_basebackup.
    Clone { from: String },
    /// Start the local PostgreSQL as primary (we still hold the key) or as a replica.
    Start {
        primary: bool,
        follow: Option<String>,
        rewind: bool,
    },
    /// We are the primary and hold the key: renew the lease, manage sync standbys and slots.
    LeadRenew,
    /// Create `/leader` atomically; on success promote.
    TakeLeader { reason: &'static str },
    /// We hold `/leader` but PostgreSQL is in recovery: promote it.
    Promote,
    /// Stop being writable now, then restart as a replica of `follow` (if known).
    Demote {
        mode: StopMode,
        release: bool,
        reason: &'static str,
    },
    /// Replica: make sure we stream from the leader (conninfo, reload).
    Follow { leader: Option<String> },
    /// Replica stuck (diverged or WAL gone): rewind from the leader, re-clone on failure.
    Rewind { from: String },
    /// Give up the key: we cannot run PostgreSQL as primary.
    ReleaseLeader { reason: &'static str },
}

impl Action {
    pub fn is_promotion(&self) -> bool {
        matches!(self, Action::TakeLeader { .. } | Action::Promote)
    }
}

fn lease_ok(o: &Observed) -> bool {
    matches!(o.lease_valid_until, Some(t) if o.now < t)
}

/// Has a replica at `replay_lsn` replayed less than the last leader position minus `max_lag`?
fn lagging(o: &Observed, replay_lsn: u64) -> bool {
    o.last_leader_lsn
        .is_some_and(|l| l.saturating_sub(replay_lsn) > o.max_lag_bytes)
}

/// Is a node on `timeline` (`known`: exact, else a lower bound) on the cluster's
/// current timeline? A node on an older one lacks the newer timeline's writes, or has
/// WAL the cluster never had (diverged), whatever its LSN says: LSNs of different
/// timelines do not compare.
pub fn timeline_ok(o: &Observed, timeline: u32, known: bool) -> Result<(), &'static str> {
    match o.cluster_timeline {
        Some(c) if timeline < c => Err(if known {
            "on an older timeline than the cluster's: never promoted (rampart db failover --to forces it)"
        } else {
            "cannot tell its own timeline (only the last checkpoint's, older than the cluster's): not promoting"
        }),
        _ => Ok(()),
    }
}

/// Is `me` allowed, and the best placed, to take the vacant leader key?
pub fn may_take_leader(o: &Observed) -> Result<&'static str, &'static str> {
    if !o.dcs_ok {
        return Err("etcd unreachable: never promote without the key");
    }
    if o.leader.is_some() {
        return Err("leader key held");
    }
    if !lease_ok(o) {
        return Err("own lease not valid");
    }
    if o.paused {
        return Err("paused: automatic failover disabled");
    }
    let Pg::Running(pg) = &o.pg else {
        return Err("postgres not running");
    };
    // Before any request: not even an operator's forced failover makes a node lead
    // that could not be fenced (Patroni's `watchdog.mode: required`).
    if !o.fence_ok {
        return Err("no watchdog: a primary here could not be fenced");
    }
    let on_timeline = timeline_ok(o, pg.timeline, pg.timeline_known);
    // An operator's request decides who goes first.
    if let Some(f) = o
        .failover
        .as_ref()
        .filter(|f| f.age < FAILOVER_REQUEST_TIMEOUT)
    {
        if let Some(to) = &f.to {
            if to != &o.me {
                return Err("a switchover names another node");
            }
            if let Some(min) = f.min_lsn {
                if pg.wal_lsn < min {
                    return Err("switchover target still receiving the old primary's WAL");
                }
                // LSNs compare only on the same timeline.
                on_timeline?;
                return Ok("switchover target with all the old primary's WAL");
            }
            if f.forced {
                return Ok("forced failover target");
            }
            if f.from.is_some() {
                return Err("switchover: waiting for the old primary's last WAL position");
            }
        }
    }
    if o.failover.as_ref().is_some_and(|f| {
        f.age < FAILOVER_REQUEST_TIMEOUT && f.from.as_deref() == Some(o.me.as_str())
    }) {
        return Err("this node was asked to step down");
    }
    if o.nofailover {
        return Err("nofailover is set on this node");
    }
    if o.disk_full {
        return Err("disk full: this node cannot take writes");
    }
    // Also a primary re-taking its key: one whose key expired while it was frozen must
    // not undo a promotion that happened meanwhile.
    on_timeline?;
    if !pg.in_recovery {
        // A primary whose key vanished while its lease still runs (deleted by hand).
        return Ok("running primary re-taking its key");
    }
    if o.synchronous {
        let why = match &o.sync {
            Some(s) if s.sync_standby.as_deref() == Some(o.me.as_str()) => {
                "synchronous standby: has every acknowledged commit"
            }
            // The last primary recorded in /sync wrote every acknowledged commit itself.
            Some(s) if s.leader == o.me => {
                "former primary recorded in /sync: has every acknowledged commit"
            }
            _ => return Err("synchronous mode: only the synchronous standby may promote"),
        };
        // Both may promote; the one with more WAL goes first (during its grace): the
        // former primary restarted after a clean stop holds its shutdown checkpoint, which
        // the standby may lack, and the other would have to be rewound.
        let eligible = |p: &Peer| {
            o.sync
                .as_ref()
                .is_some_and(|s| s.leader == p.name || s.sync_standby.as_deref() == Some(&p.name))
        };
        let better = o.peers.iter().any(|p| {
            eligible(p)
                && p.name != o.me
                && !p.nofailover
                && p.seen_for < PEER_GRACE
                && p.running
                && p.in_recovery
                && p.timeline_known
                && timeline_ok(o, p.timeline, true).is_ok()
                && (p.timeline, p.wal_lsn, std::cmp::Reverse(&p.name))
                    > (pg.timeline, pg.wal_lsn, std::cmp::Reverse(&o.me))
        });
        if better {
            return Err("the other node that may promote has more WAL: it goes first");
        }
        return Ok(why);
    }
    // Lag is measured on what the replica has *replayed* (what `list` shows): a replica
    // further behind would first have to replay that much before taking writes, and one
    // whose replay an operator paused is held on purpose.
    if lagging(o, pg.replay_lsn) {
        return Err("too far behind the last leader position (max_lag)");
    }
    // Asynchronous: the member on the newest timeline with the most WAL wins; ties go to
    // the smallest name. A better peer gets `PEER_GRACE` (from when this agent first saw
    // it during the vacancy) before the others try too. Peers that may not promote
    // themselves (nofailover, lagging, behind the cluster's timeline) do not count.
    let in_grace = |p: &Peer| p.name != o.me && !p.nofailover && p.seen_for < PEER_GRACE;
    // A peer whose timeline is only a lower bound (just restarted: its last checkpoint
    // may predate a promotion) may be on a newer one than it shows: it counts as better.
    let better = o.peers.iter().any(|p| {
        in_grace(p)
            && p.running
            && p.in_recovery
            && !lagging(o, p.replay_lsn)
            && (!p.timeline_known
                || (timeline_ok(o, p.timeline, true).is_ok()
                    && (p.timeline, p.wal_lsn, std::cmp::Reverse(&p.name))
                        > (pg.timeline, pg.wal_lsn, std::cmp::Reverse(&o.me))))
    });
    if better {
        return Err("a healthier replica goes first");
    }
    // A member whose PostgreSQL is still starting (a former primary restarted, say) may
    // hold writes we lack: let it show its position first.
    if o.peers.iter().any(|p| in_grace(p) && p.starting) {
        return Err("a member is starting its PostgreSQL: waiting to compare WAL positions");
    }
    Ok("healthiest replica")
}

/// The HA decision for one loop.
pub fn decide(o: &Observed) -> Action {
    let holder_is_me = o.leader.as_deref() == Some(o.me.as_str());
    let other_leader = o.leader.as_ref().filter(|l| **l != o.me).cloned();
    match &o.pg {
        Pg::NoData => {
            if !o.dcs_ok {
                return Action::Wait("no data and etcd unreachable");
            }
            if !o.initialized {
                if !o.fence_ok {
                    return Action::Wait(
                        "no watchdog: not bootstrapping a primary that could not be fenced",
                    );
                }
                return Action::Bootstrap;
            }
            match other_leader {
                Some(l) => Action::Clone { from: l },
                None => Action::Wait("no data: waiting for a leader to clone from"),
            }
        }
        Pg::Stopped {
            was_primary,
            down_for,
        } => {
            if holder_is_me && o.dcs_ok && lease_ok(o) {
                if !o.fence_ok && !o.paused {
                    return Action::ReleaseLeader {
                        reason: "no watchdog: not starting postgres as a primary that could not be fenced",
                    };
                }
                if *down_for > PRIMARY_START_TIMEOUT && !o.paused {
                    return Action::ReleaseLeader {
                        reason: "postgres does not come back up on the primary",
                    };
                }
                return Action::Start {
                    primary: true,
                    follow: None,
                    rewind: false,
                };
            }
            if o.paused && holder_is_me {
                return Action::Wait("paused: not restarting postgres");
            }
            if !o.dcs_ok && *was_primary {
                // Cannot know who leads: start read-only, following nobody.
                return Action::Start {
                    primary: false,
                    follow: None,
                    rewind: false,
                };
            }
            Action::Start {
                primary: false,
                rewind: *was_primary && other_leader.is_some(),
                follow: other_leader,
            }
        }
        Pg::Running(pg) if !pg.in_recovery => {
            // A writable primary.
            if !lease_ok(o) {
                if o.paused && o.dcs_ok && holder_is_me {
                    return Action::LeadRenew;
                }
                return Action::Demote {
                    mode: StopMode::Immediate,
                    release: false,
                    reason: "leader lease cannot be renewed in time",
                };
            }
            if !o.dcs_ok {
                // Lease still valid locally: keep trying to renew until the deadline.
                return Action::LeadRenew;
            }
            if other_leader.is_some() {
                return Action::Demote {
                    mode: StopMode::Immediate,
                    release: false,
                    reason: "another node holds the leader key",
                };
            }
            if holder_is_me {
                if !o.fence_ok && !o.paused {
                    return Action::Demote {
                        mode: StopMode::Immediate,
                        release: true,
                        reason: "the watchdog is gone: a primary that cannot be fenced steps down",
                    };
                }
                let healthy_standby = o
                    .peers
                    .iter()
                    .any(|p| p.running && p.in_recovery && p.streaming && !p.nofailover);
                if o.disk_full && healthy_standby && !o.paused {
                    return Action::Demote {
                        mode: StopMode::Immediate,
                        release: true,
                        reason: "disk full: handing over to a healthy standby",
                    };
                }
                if let Some(f) = o
                    .failover
                    .as_ref()
                    .filter(|f| f.age < FAILOVER_REQUEST_TIMEOUT)
                {
                    let for_me = f.from.as_deref().is_none_or(|from| from == o.me);
                    let target_ok = match &f.to {
                        None => true,
                        Some(t) if t == &o.me => false,
                        Some(t) => {
                            f.forced
                                || o.peers
                                    .iter()
                                    .any(|p| &p.name == t && p.running && p.streaming)
                        }
                    };
                    if for_me && target_ok && !o.paused {
                        return Action::Demote {
                            mode: StopMode::Fast,
                            release: true,
                            reason: "switchover requested",
                        };
                    }
                }
                return Action::LeadRenew;
            }
            // Key vanished while our lease is valid (deleted): take it back if allowed.
            match may_take_leader(o) {
                Ok(reason) => Action::TakeLeader { reason },
                Err(_) => Action::Demote {
                    mode: StopMode::Immediate,
                    release: false,
                    reason: "leader key gone and not ours to take",
                },
            }
        }
        Pg::Running(pg) => {
            // A replica.
            if holder_is_me && o.dcs_ok && lease_ok(o) {
                if !o.fence_ok && !o.paused {
                    return Action::ReleaseLeader {
                        reason: "no watchdog: not promoting a primary that could not be fenced",
                    };
                }
                return Action::Promote;
            }
            if !o.dcs_ok {
                return Action::Wait("etcd unreachable: replica keeps following, never promotes");
            }
            if let Some(l) = other_leader {
                if (pg.diverged || pg.not_streaming_for > o.stuck_after) && !o.paused {
                    return Action::Rewind { from: l };
                }
                return Action::Follow { leader: Some(l) };
            }
            if o.leader.is_none() {
                return match may_take_leader(o) {
                    Ok(reason) => Action::TakeLeader { reason },
                    Err(why) => Action::Wait(why),
                };
            }
            Action::Follow { leader: None }
        }
    }
}

/// One row of `pg_stat_replication` on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplRow {
    pub name: String,
    pub streaming: bool,
    /// "sync", "async", "potential", "quorum".
    pub sync_state: String,
    pub flush_lsn: u64,
}

/// What the primary does about synchronous replication this loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStep {
    Nothing,
    /// Write `/sync` (first remove a standby that stopped being synchronous, or record
    /// one that has just caught up under the current `synchronous_standby_names`).
    Publish(Option<String>),
    /// Rewrite `synchronous_standby_names` to name this standby (`None`: empty, or `*`
    /// in strict mode) and reload; remember the WAL position at that moment.
    SetStandby(Option<String>),
}

/// The synchronous-standby state machine of the primary.
///
/// Invariant kept: `/sync` names a standby only while `synchronous_standby_names` names
/// it, it is synchronous, and it confirmed every WAL byte written before it became so
/// (`mark_lsn`). Changes therefore go: un-publish, switch names, wait, publish.
pub fn sync_step(
    me: &str,
    strict: bool,
    published: Option<&SyncKey>,
    configured: Option<&str>,
    mark_lsn: u64,
    rows: &[ReplRow],
    ineligible: &[String],
) -> SyncStep {
    let published_name = published
        .filter(|s| s.leader == me)
        .and_then(|s| s.sync_standby.clone());
    let healthy = |n: &str| rows.iter().any(|r| r.name == n && r.streaming);
    if published.is_none_or(|s| s.leader != me) {
        return SyncStep::Publish(None);
    }
    if let Some(p) = &published_name {
        let ok = configured == Some(p.as_str())
            && rows
                .iter()
                .any(|r| &r.name == p && r.streaming && r.sync_state == "sync");
        if ok {
            return SyncStep::Nothing;
        }
        return SyncStep::Publish(None);
    }
    // Nobody published: pick the best streaming candidate.
    let mut cands: Vec<&ReplRow> = rows
        .iter()
        .filter(|r| r.streaming && !ineligible.contains(&r.name) && r.name != me)
        .collect();
    cands.sort_by(|a, b| b.flush_lsn.cmp(&a.flush_lsn).then(a.name.cmp(&b.name)));
    if let Some(c) = configured {
        if healthy(c) && !ineligible.iter().any(|n| n == c) {
            let caught_up = rows.iter().any(|r| {
                r.name == c && r.streaming && r.sync_state == "sync" && r.flush_lsn >= mark_lsn
            });
            return if caught_up {
                SyncStep::Publish(Some(c.to_string()))
            } else {
                SyncStep::Nothing
            };
        }
    }
    match cands.first() {
        Some(best) => {
            if configured == Some(best.name.as_str()) {
                SyncStep::Nothing
            } else {
                SyncStep::SetStandby(Some(best.name.clone()))
            }
        }
        None => {
            if strict || configured.is_none() {
                SyncStep::Nothing
            } else {
                SyncStep::SetStandby(None)
            }
        }
    }
}

#[cfg(test)]
mod tests;
