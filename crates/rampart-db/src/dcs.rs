//! The db agent's keys in etcd and their JSON values.
//!
//! Layout under `/rampart/<cluster>/db/`: `initialize` (the bootstrap race), `leader`
//! (node name, attached to the leader's lease), `members/<node>` (a [`Member`], attached to
//! the node's lease), `sync` ([`SyncValue`]), `failover` ([`FailoverValue`]), `pause`,
//! `timeline` ([`TimelineValue`], no lease: it outlives the leader that wrote it).

use serde::{Deserialize, Serialize};

pub fn prefix(cluster: &str) -> String {
    format!("/rampart/{cluster}/db/")
}
pub fn key(cluster: &str, name: &str) -> String {
    format!("/rampart/{cluster}/db/{name}")
}
pub fn member_key(cluster: &str, node: &str) -> String {
    format!("/rampart/{cluster}/db/members/{node}")
}

/// One member as posted in etcd and served in `/cluster` (see notes/db-cluster-json.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// "primary", "replica", "demoted", "starting", "stopped", "unknown".
    pub role: String,
    /// Free text: "running", "streaming", "not streaming", "disk full", ...
    pub state: String,
    pub host: String,
    pub port: u16,
    pub api_url: String,
    pub timeline: u32,
    /// `timeline` is exact; false: only a lower bound (the last checkpoint's), e.g. right
    /// after PostgreSQL started, before the agent read its replay timeline.
    #[serde(default = "yes")]
    pub timeline_known: bool,
    pub lsn: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub sync_standby: bool,
    pub nofailover: bool,
    pub lease_age_seconds: Option<f64>,
    /// Last received WAL byte (replicas), used to pick the healthiest candidate.
    #[serde(default)]
    pub receive_lsn: u64,
    #[serde(default)]
    pub streaming: bool,
    /// What the agent did or waits for in its last loop.
    #[serde(default)]
    pub action: String,
    /// A changed setting waits for PostgreSQL's restart (Patroni's `pending_restart`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
}

fn yes() -> bool {
    true
}

/// `/sync`: the standby that has every acknowledged commit of `leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncValue {
    pub leader: String,
    pub sync_standby: Option<String>,
}

/// `/timeline`: the newest timeline a leader of this cluster ran on. Written by the
/// leader (compare-and-set, only upwards); a replica on an older timeline never promotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineValue {
    pub timeline: u32,
    pub leader: String,
}

/// One change of leader that moved the cluster to a new timeline, as `/history` keeps
/// them (no lease: the record outlives the leaders), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The timeline the new leader runs on.
    pub timeline: u32,
    pub leader: String,
    /// When the new leader recorded it (Unix ms).
    pub at_ms: u64,
}

/// `/history` keeps at most this many changes (the newest).
pub const HISTORY_KEPT: usize = 100;

/// `/failover`: an operator's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverValue {
    pub from: Option<String>,
    pub to: Option<String>,
    #[serde(default)]
    pub forced: bool,
    /// Set by the old primary once stopped: the end of its WAL.
    #[serde(default)]
    pub min_lsn: Option<u64>,
    /// Unix time (ms) of the request.
    pub requested_at_ms: u64,
    /// A scheduled switchover (Patroni's `scheduled_at`): Unix time (ms) before which the
    /// request is not acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at_ms: Option<u64>,
}

impl FailoverValue {
    /// A scheduled switchover is not a request before its time (wall clock: the time
    /// an operator gave). Otherwise a request's age is not read from clocks: it lives
    /// under an etcd lease (see [`crate::ops::put_request`]) and agents count its age
    /// on their own monotonic clocks from when they first saw it due.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.scheduled_at_ms.is_none_or(|t| t <= now_ms)
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `/cluster` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub cluster: String,
    pub leader: Option<String>,
    /// The cluster's timeline as recorded in `/timeline`.
    #[serde(default)]
    pub timeline: Option<u32>,
    pub paused: bool,
    pub members: Vec<Member>,
}
