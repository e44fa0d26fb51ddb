//! The HA loop: observe, [`decide`], act, publish — once per `loop_wait`.

mod act;
mod fence;
mod leading;
mod lease;
mod operate;
mod postgres;
mod publish;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_coord::{Coord, CoordOptions, KeyValue, LeaseId};
use rampart_topology::db::{DbConfig, DbNode, DEMOTE_MARGIN};
use tokio::process::Child;

use crate::dcs::{self, ClusterView, FailoverValue, Member, SyncValue, TimelineValue};
use crate::decide::{
    self, decide, Action, FailoverReq, Observed, Peer, Pg, PgRunning, StopMode, SyncKey, SyncStep,
};
use crate::error::DbError;
use crate::metrics::Metrics;
use crate::pg::{self, ConfSpec, PgConn, PgCtl, PgStatus};
use crate::watchdog::Watchdog;
use lease::Fence;
pub use operate::{LocalOp, LocalRequest};
use postgres::{
    check_parent_access, disk_nearly_full, diverged_in_log, find_pg_bin, last_problem,
    stuck_at_timeline_end,
};

/// A replica whose PostgreSQL, pointed at the leader, does not answer (reach a consistent
/// state) for this long is repaired: rewound, or re-cloned.
const UNREADY_REPLICA_TIMEOUT: Duration = Duration::from_secs(60);
/// ... or for this long when its log shows that it diverged from the leader's timeline.
const UNREADY_DIVERGED_AFTER: Duration = Duration::from_secs(5);

/// What the HTTP API serves; refreshed every loop.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub view: Option<ClusterView>,
    pub me: Option<Member>,
    /// Running primary, holder of the key, lease valid.
    pub writable_leader: bool,
    /// ... until this local deadline (the demotion deadline): `/primary` turns 503 then
    /// even if the loop is late.
    pub writable_until: Option<Instant>,
    pub pg_running: bool,
    pub replica_streaming: bool,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// What Patroni's health checks look at (see [`crate::api::patroni`]).
    pub node: Option<crate::api::patroni::NodeView>,
    /// `/history`: the timeline switches in the history file of the node's timeline.
    pub history: Vec<serde_json::Value>,
}

pub type Shared = Arc<Mutex<Snapshot>>;

/// The cluster keys as read in one loop.
#[derive(Debug, Default)]
struct Keys {
    initialized: bool,
    leader: Option<KeyValue>,
    members: Vec<Member>,
    sync: Option<SyncValue>,
    failover: Option<(FailoverValue, i64)>,
    /// `/failover`'s create_revision (the request's identity) and lease.
    failover_key: Option<(i64, i64)>,
    paused: bool,
    /// `/timeline` and its mod_revision.
    timeline: Option<(TimelineValue, i64)>,
    /// `/history` and its mod_revision.
    history: Option<(Vec<dcs::HistoryEntry>, i64)>,
}

fn parse_keys(cluster: &str, kvs: &[KeyValue]) -> Keys {
    let p = dcs::prefix(cluster);
    let mut k = Keys::default();
    for kv in kvs {
        let Some(rest) = kv.key.strip_prefix(&p) else {
            continue;
        };
        match rest {
            "initialize" => k.initialized = true,
            "leader" => k.leader = Some(kv.clone()),
            "sync" => k.sync = serde_json::from_slice(&kv.value).ok(),
            "failover" => {
                k.failover = serde_json::from_slice(&kv.value)
                    .ok()
                    .map(|f| (f, kv.mod_revision));
                k.failover_key = Some((kv.create_revision, kv.lease));
            }
            "pause" => k.paused = true,
            "timeline" => {
                k.timeline = serde_json::from_slice(&kv.value)
                    .ok()
                    .map(|t| (t, kv.mod_revision))
            }
            "history" => {
                k.history = serde_json::from_slice(&kv.value)
                    .ok()
                    .map(|h| (h, kv.mod_revision))
            }
            r if r.starts_with("members/") => {
                if let Ok(m) = serde_json::from_slice::<Member>(&kv.value) {
                    k.members.push(m);
                }
            }
            _ => {}
        }
    }
    k
}

pub struct Agent {
    cfg: DbConfig,
    node: DbNode,
    ctl: PgCtl,
    conn: PgConn,
    coord: Coord,
    shared: Shared,
    metrics: Arc<Metrics>,
    /// The watchdog process, the kernel watchdog, the lease and its last renewal, shared
    /// with the lease keeper ([`lease`]).
    fence: Fence,
    timings: rampart_topology::db_timing::Timings,
    /// Test only (`RAMPART_DB_TEST_STALL_FILE`, read at start): while this file exists the
    /// loop stops at the start of its turn, as a loop stuck in a call would.
    stall_file: Option<std::path::PathBuf>,
    child: Option<Child>,
    epoch: Instant,
    /// Standby named in synchronous_standby_names (None: empty / '*' in strict mode).
    sync_configured: Option<String>,
    sync_mark: u64,
    following: Option<Option<String>>,
    /// When PostgreSQL was (re)started or re-pointed to follow the leader it follows.
    pointed_at_leader_since: Option<Instant>,
    last_leader: Option<String>,
    last_leader_lsn: Option<u64>,
    /// The timeline this agent last saw the leader run on (besides `/timeline`).
    leader_timeline_seen: Option<u32>,
    /// The local timeline this loop: (timeline, known exactly).
    local_timeline: Option<(u32, bool)>,
    /// `IDENTIFY_SYSTEM`'s replay timeline, for (replay LSN, postgres start): it cannot
    /// change without replay progress.
    replay_tl_cache: Option<(u64, Option<Instant>, u32)>,
    /// The timeline verdict and the IDENTIFY_SYSTEM error last logged (changes only).
    timeline_logged: Option<String>,
    timeline_error: Option<String>,
    /// The cluster's timeline as this loop saw it.
    cluster_tl: Option<u32>,
    /// While the leader key is vacant: when this agent first saw each other member.
    peer_seen: std::collections::HashMap<String, Instant>,
    not_streaming_since: Option<Instant>,
    pg_down_since: Option<Instant>,
    demoted: bool,
    last_action: String,
    disk_full: bool,
    loops: u64,
    start_failures: u32,
    stuck_rewinds: u32,
    bootstrapping: bool,
    started_at: Option<Instant>,
    /// This turn created `/leader` (the keys read at its start are stale).
    took_key: bool,
    /// Unix seconds of the last successful read of the cluster keys.
    dcs_last_seen: Option<u64>,
    /// `/history` lines for this timeline (read once per timeline).
    history: (u32, Vec<serde_json::Value>),
    /// `mod_revision` of the leader key this node created, while it holds it: every
    /// leader-only write is guarded by it ([`crate::leader_keys`]).
    leader_rev: Option<i64>,
    /// `synchronous_standby_names` was changed and PostgreSQL has not confirmed it yet:
    /// no WAL mark, so no standby is published as synchronous.
    sync_unconfirmed: bool,
    /// The `/failover` request (by create_revision) and when this agent first saw it due:
    /// its age, on this host's monotonic clock.
    failover_due: Option<(i64, Instant)>,
    /// The watchdog process runs (checked, and restarted if it died, every loop), and
    /// with `watchdog = "required"` the kernel watchdog is usable.
    fence_ok: bool,
    /// Why the kernel watchdog is unavailable, as last logged.
    kernel_logged: Option<String>,
    /// The topology file this agent was started from (re-read by a reload).
    config_path: Option<std::path::PathBuf>,
    /// Settings PostgreSQL changed that wait for its restart (`pg_settings.pending_restart`).
    pending_restart: Vec<String>,
    /// Read `pending_restart` again once PostgreSQL answers (after a start or a reload)...
    check_pending: bool,
    /// ... and every turn until then (a reload reaches our backend late).
    check_pending_until: Option<Instant>,
    /// An operator's restart, answered once PostgreSQL answers again.
    restart_reply: Option<(
        tokio::sync::oneshot::Sender<Result<String, String>>,
        Instant,
    )>,
}

impl Agent {
    pub async fn new(
        cfg: DbConfig,
        node_name: &str,
        shared: Shared,
        metrics: Arc<Metrics>,
    ) -> Result<Agent, DbError> {
        let node = cfg.node(node_name).cloned().ok_or_else(|| {
            DbError::Config(format!("node \"{node_name}\" is not in [[db.nodes]]"))
        })?;
        let bin_dir = match &cfg.pg_bin_dir {
            Some(d) => d.clone(),
            None => find_pg_bin().ok_or_else(|| {
                DbError::Config("PostgreSQL binaries not found (set [db] pg_bin_dir)".into())
            })?,
        };
        let run_as = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .map_err(|e| DbError::Config(format!("look up the postgres user: {e}")))?
                .ok_or_else(|| {
                    DbError::Config(
                        "running as root but there is no `postgres` OS user to run PostgreSQL as"
                            .into(),
                    )
                })?;
            Some((u.uid, u.gid))
        } else {
            None
        };
        let ctl = PgCtl {
            bin_dir,
            data_dir: node.data_dir.clone(),
            host: node.host.clone(),
            port: node.port,
            name: node.name.clone(),
            superuser_password: cfg.superuser_password.clone(),
            replication_password: cfg.replication_password.clone(),
            run_as,
            tls: cfg.replication_tls.clone(),
        };
        check_parent_access(&ctl)?;
        let coord = Coord::connect(CoordOptions {
            endpoints: cfg.etcd.clone(),
            op_timeout: cfg.retry_timeout,
            connect_timeout: cfg.retry_timeout,
        })
        .await?;
        let conn = PgConn::new(
            ctl.conninfo(),
            cfg.retry_timeout.max(Duration::from_secs(1)),
        );
        Ok(Agent {
            fence: Fence::new(Watchdog::spawn()?),
            timings: cfg.timings(),
            stall_file: std::env::var_os("RAMPART_DB_TEST_STALL_FILE").map(Into::into),
            cfg,
            node,
            ctl,
            conn,
            coord,
            shared,
            metrics,
            child: None,
            epoch: Instant::now(),
            sync_configured: None,
            sync_mark: 0,
            following: None,
            pointed_at_leader_since: None,
            last_leader: None,
            last_leader_lsn: None,
            leader_timeline_seen: None,
            local_timeline: None,
            replay_tl_cache: None,
            timeline_logged: None,
            timeline_error: None,
            cluster_tl: None,
            peer_seen: std::collections::HashMap::new(),
            not_streaming_since: None,
            pg_down_since: Some(Instant::now()),
            demoted: false,
            last_action: String::new(),
            disk_full: false,
            loops: 0,
            start_failures: 0,
            stuck_rewinds: 0,
            bootstrapping: false,
            started_at: None,
            took_key: false,
            dcs_last_seen: None,
            history: (0, Vec::new()),
            leader_rev: None,
            sync_unconfirmed: false,
            failover_due: None,
            fence_ok: true,
            kernel_logged: None,
            config_path: None,
            pending_restart: Vec::new(),
            check_pending: true,
            check_pending_until: None,
            restart_reply: None,
        })
    }

    /// The topology file a reload re-reads.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Agent {
        self.config_path = Some(path);
        self
    }

    /// Run a long operation (initdb, pg_basebackup, pg_rewind: never on a running primary)
    /// as a live loop: the lease keeper keeps our lease, and so our member key, alive.
    fn long<F: std::future::Future>(&self, op: F) -> impl std::future::Future<Output = F::Output> {
        let fence = self.fence.clone();
        let period = self.timings.loop_stale_after() / 4;
        async move {
            let beat = async move {
                loop {
                    fence.beat();
                    tokio::time::sleep(period).await;
                }
            };
            tokio::select! {
                r = op => r,
                _ = beat => unreachable!("the beat loop never ends"),
            }
        }
    }

    fn key(&self, k: &str) -> String {
        dcs::key(&self.cfg.cluster, k)
    }

    fn valid_until(&self) -> Option<Instant> {
        self.fence
            .renewed_at()
            .map(|t| t + self.cfg.ttl - DEMOTE_MARGIN)
    }

    fn lease_ok(&self) -> bool {
        self.valid_until().is_some_and(|t| Instant::now() < t)
    }

    /// Run until `stop` resolves; then stop PostgreSQL and give the lease back.
    /// Run until `stop`, serving operators' requests from `ops` (and a reload on each
    /// signal of `hangup`, SIGHUP) between turns.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
        mut ops: tokio::sync::mpsc::Receiver<LocalRequest>,
        mut hangup: Option<tokio::signal::unix::Signal>,
    ) -> Result<(), DbError> {
        tracing::info!(node = %self.node.name, cluster = %self.cfg.cluster, data_dir = %self.ctl.data_dir.display(),
            ttl = ?self.cfg.ttl, loop_wait = ?self.cfg.loop_wait, synchronous = self.cfg.synchronous, "rampart db agent starting");
        tokio::pin!(stop);
        if let Some(pid) = self.ctl.orphan_postmaster() {
            // Its agent (and watchdog) died: it runs unsupervised, maybe as a primary
            // whose lease is gone. Stop it cleanly; the loop starts it again under this
            // agent, in whatever role the cluster gives it.
            tracing::warn!(pid, "a postgres is already running in the data directory without its agent: stopping it (fast shutdown) before taking over");
            pg::stop_orphan(pid, Duration::from_secs(30)).await;
            tracing::info!(pid, "the orphaned postgres stopped");
        }
        let keeper = tokio::spawn(lease::keep(
            self.fence.clone(),
            self.coord.clone(),
            self.timings,
            self.shared.clone(),
        ));
        let pinger = tokio::spawn(lease::ping_kernel(self.fence.clone(), self.timings));
        let wake = Arc::new(tokio::sync::Notify::new());
        let watcher = tokio::spawn(watch_for_changes(
            self.coord.clone(),
            self.cfg.cluster.clone(),
            wake.clone(),
        ));
        loop {
            let started = Instant::now();
            self.turn().await;
            let mut wait = self.cfg.loop_wait.saturating_sub(started.elapsed());
            if self.is_primary_running() {
                if let Some(t) = self.valid_until() {
                    wait = wait.min(t.saturating_duration_since(Instant::now()));
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(wait.max(Duration::from_millis(20))) => {}
                // The leader key vanished or an operator asked for something: act now.
                _ = wake.notified() => {}
                Some(r) = ops.recv() => self.serve_op(r).await,
                Some(()) = operate::hangup(&mut hangup) => {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    self.serve_op(LocalRequest { op: LocalOp::Reload, reply }).await;
                }
            }
        }
        watcher.abort();
        tracing::info!("stopping: shutting postgres down and releasing the lease");
        // Renewed while postgres stops (a shutdown checkpoint can take a while). Once it
        // has the fast-shutdown signal it takes no more writes, so the fence is disarmed
        // then: a shutdown checkpoint slowed by a busy machine past the lease deadline must
        // not end in the watchdog's SIGKILL (which leaves PostgreSQL's shared memory behind).
        if let Some(mut c) = self.child.take() {
            pg::begin_fast_stop(&c);
            self.fence.lock().unwatch();
            self.long(pg::stop_child(&mut c, false, Duration::from_secs(20)))
                .await;
        }
        keeper.abort();
        pinger.abort();
        self.fence.lock().unwatch();
        if let Some(l) = self.fence.lease() {
            let _ = self.coord.revoke(l).await;
        }
        Ok(())
    }

    /// Test only: stop here while the stall file exists (no sign of life meanwhile).
    async fn stall_for_tests(&self) {
        let Some(p) = &self.stall_file else { return };
        if !p.exists() {
            return;
        }
        tracing::warn!(file = %p.display(), "test stall file present: the loop stops until it is removed");
        while p.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("test stall file removed: the loop goes on");
    }

    fn is_primary_running(&self) -> bool {
        self.child.is_some() && !self.ctl.is_standby()
    }

    async fn turn(&mut self) {
        self.stall_for_tests().await;
        self.fence.beat();
        self.loops += 1;
        // 1. Our child postgres.
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                if self
                    .started_at
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(30))
                {
                    // Died right after starting (e.g. "requested timeline is not a child of
                    // this server's history"): counts towards rewinding / re-cloning.
                    self.start_failures += 1;
                }
                tracing::warn!(status = %st, postgres_says = %last_problem(&self.ctl.log_path()), "postgres exited; it will be restarted");
                self.child = None;
                self.conn.reset();
                self.fence.lock().unwatch();
                self.pg_down_since = Some(Instant::now());
            }
        }
        let status = if self.child.is_some() {
            self.conn.status().await.ok()
        } else {
            None
        };
        // Our own position and timeline are read before the cluster keys: whatever WAL we
        // received from a member was sent after that member published itself (it says
        // "starting" before its PostgreSQL starts), so the keys read next show it.
        self.local_timeline = match status.as_ref() {
            Some(s) => Some(self.find_timeline(s).await),
            None => None,
        };
        if self.child.is_some() && status.is_none() && self.is_primary_running() && !self.lease_ok()
        {
            // A primary that does not answer and whose lease ran out: fence it now.
            tracing::warn!("primary not answering and lease not renewable: stopping it");
            self.kill_postgres().await;
        }

        // 2. The lease (keeps our member key and, on the primary, the leader key): renewed
        // by the keeper while this loop beats; granted here.
        self.fence.beat();
        let dcs_up = self.renew_lease().await;
        self.fence.beat();

        // 3. The cluster keys.
        let keys = if dcs_up {
            match self.coord.get_prefix(&dcs::prefix(&self.cfg.cluster)).await {
                Ok((kvs, _)) => Some(parse_keys(&self.cfg.cluster, &kvs)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster state from etcd");
                    None
                }
            }
        } else {
            None
        };
        let dcs_ok = keys.is_some();
        let mut keys = keys.unwrap_or_default();
        if dcs_ok {
            self.adopt_leader_key(&mut keys).await;
        }
        let leader_name = keys.leader.as_ref().map(|kv| kv.value_str());
        if dcs_ok {
            let due = keys
                .failover
                .as_ref()
                .filter(|(f, _)| f.is_due(dcs::unix_ms()))
                .and(keys.failover_key);
            self.failover_due = match (due, self.failover_due) {
                (Some((id, _)), Some((seen, at))) if id == seen => Some((seen, at)),
                (Some((id, _)), _) => Some((id, Instant::now())),
                (None, _) => None,
            };
            // The key as this node holds it (also one it took in an earlier run of the
            // agent, while that lease lives), or none: no leader-only write then.
            self.leader_rev = keys
                .leader
                .as_ref()
                .filter(|kv| kv.value_str() == self.node.name)
                .map(|kv| kv.mod_revision);
        }
        if dcs_ok {
            match &leader_name {
                Some(l) => {
                    self.peer_seen.clear();
                    self.last_leader = Some(l.clone());
                    if let Some(m) = keys.members.iter().find(|m| &m.name == l) {
                        self.last_leader_lsn = Some(m.lsn);
                        if m.role == "primary" && m.timeline > 0 {
                            self.leader_timeline_seen = Some(m.timeline);
                        }
                    }
                }
                None => {
                    let now = Instant::now();
                    // Each member counts from when this agent first saw it during the
                    // vacancy (and keeps that if it leaves and returns): the grace of
                    // decide::PEER_GRACE is given once.
                    for m in keys.members.iter().filter(|m| m.name != self.node.name) {
                        self.peer_seen.entry(m.name.clone()).or_insert(now);
                    }
                }
            }
        }
        let full = disk_nearly_full(&self.ctl.data_dir);
        if full != self.disk_full {
            if full {
                tracing::error!(data_dir = %self.ctl.data_dir.display(), "disk nearly full (under 64 MB, or 1% up to 1 GB, free): PostgreSQL may stop; a primary that cannot restart gives up the leader key");
            } else {
                tracing::info!("disk space available again");
            }
        }
        self.disk_full = full;

        // 4. Decide.
        self.fence_ok = self.supervise_watchdog();
        self.cluster_tl = self.cluster_timeline(&keys);
        let obs = self.observe(&keys, dcs_ok, status.as_ref());
        self.log_timeline_verdict(&obs);
        let action = if self.child.is_some() && status.is_none() {
            self.repoint_unready_replica(&keys, dcs_ok);
            match self.unready_replica_gives_up(&keys) {
                Some(leader) => Action::Rewind { from: leader },
                None => Action::Wait("postgres starting or not answering"),
            }
        } else {
            decide(&obs)
        };
        let text = format!("{action:?}");
        if text != self.last_action {
            match &action {
                Action::Wait(why) => tracing::info!(reason = why, "waiting"),
                Action::LeadRenew => tracing::info!("leading: holding the leader lease"),
                Action::Follow { leader } => tracing::info!(leader = ?leader, "following"),
                a => tracing::info!(action = ?a, "acting"),
            }
            self.last_action = text;
        }

        self.fence.beat();
        // 5. Act. Starting PostgreSQL waits until it answers, and it may serve WAL (to a
        // replica still pointed at it) before that: say "starting" first, so that nobody
        // sees its WAL before its member record (decide::PEER_GRACE).
        if matches!(action, Action::Start { .. }) && dcs_ok {
            self.publish(&keys, dcs_ok, None, &action).await;
        }
        if let Err(e) = self.act(&action, &keys, &obs).await {
            tracing::warn!(action = ?action, error = %e, "action failed; retrying next loop");
        }

        // 6. Publish.
        self.fence.beat();
        let status = if self.child.is_some() {
            self.conn.status().await.ok()
        } else {
            None
        };
        if status.is_some() {
            self.read_pending_restart().await;
        }
        self.answer_restart(status.is_some());
        if let (None, Some(s)) = (self.local_timeline, status.as_ref()) {
            // PostgreSQL (re)started this loop: publish its exact timeline now, not the
            // last checkpoint's, which lags a promotion and would make this node look
            // worse placed to the others than it is.
            self.local_timeline = Some(self.find_timeline(s).await);
        }
        // Keys read before we took the leader key say nobody holds it: read them again,
        // or `/primary` would stay 503 until the next loop.
        let keys = if self.took_key {
            self.took_key = false;
            match self.coord.get_prefix(&dcs::prefix(&self.cfg.cluster)).await {
                Ok((kvs, _)) => parse_keys(&self.cfg.cluster, &kvs),
                Err(_) => keys,
            }
        } else {
            keys
        };
        self.publish(&keys, dcs_ok, status.as_ref(), &action).await;
    }

    fn observe(&self, keys: &Keys, dcs_ok: bool, st: Option<&PgStatus>) -> Observed {
        let now = Instant::now();
        let pg = if !self.ctl.has_data() {
            Pg::NoData
        } else if let Some(s) = st {
            let (timeline, timeline_known) = self.local_timeline.unwrap_or((s.timeline, false));
            Pg::Running(PgRunning {
                in_recovery: s.in_recovery,
                timeline,
                timeline_known,
                wal_lsn: if s.in_recovery {
                    s.receive_lsn.max(s.lsn)
                } else {
                    s.lsn
                },
                replay_lsn: s.lsn,
                streaming: s.streaming,
                not_streaming_for: self
                    .not_streaming_since
                    .map(|t| now - t)
                    .unwrap_or_default(),
                diverged: s.in_recovery && !s.streaming && diverged_in_log(&self.ctl.log_path()),
            })
        } else {
            Pg::Stopped {
                was_primary: !self.ctl.is_standby(),
                down_for: self.pg_down_since.map(|t| now - t).unwrap_or_default(),
            }
        };
        let peers = keys
            .members
            .iter()
            .filter(|m| m.name != self.node.name)
            .map(|m| Peer {
                name: m.name.clone(),
                running: m.role == "primary" || m.role == "replica",
                in_recovery: m.role == "replica",
                streaming: m.streaming,
                timeline: m.timeline,
                timeline_known: m.timeline_known,
                wal_lsn: m.receive_lsn.max(m.lsn),
                replay_lsn: m.lsn,
                nofailover: m.nofailover,
                starting: m.role == "starting",
                seen_for: self
                    .peer_seen
                    .get(&m.name)
                    .map(|t| now - *t)
                    .unwrap_or_default(),
            })
            .collect();
        Observed {
            me: self.node.name.clone(),
            nofailover: self.node.nofailover,
            synchronous: self.cfg.synchronous,
            max_lag_bytes: self.cfg.max_lag_bytes,
            dcs_ok,
            initialized: keys.initialized,
            leader: keys.leader.as_ref().map(|kv| kv.value_str()),
            lease_valid_until: self
                .valid_until()
                .map(|t| t.saturating_duration_since(self.epoch)),
            now: now - self.epoch,
            pg,
            peers,
            sync: keys.sync.as_ref().map(|s| SyncKey {
                leader: s.leader.clone(),
                sync_standby: s.sync_standby.clone(),
            }),
            // A switchover scheduled later is not a request yet.
            failover: keys.failover.as_ref().and_then(|(f, _)| {
                Some(FailoverReq {
                    from: f.from.clone(),
                    to: f.to.clone(),
                    forced: f.forced,
                    min_lsn: f.min_lsn,
                    age: now.saturating_duration_since(self.failover_due?.1),
                })
            }),
            paused: keys.paused,
            disk_full: self.disk_full,
            // Longer than a lease: a replica of a dead leader must not "repair" anything
            // before the leader's key has expired.
            stuck_after: decide::STUCK_REPLICA_TIMEOUT.max(self.cfg.ttl * 2 + self.cfg.loop_wait),
            last_leader_lsn: self.last_leader_lsn,
            cluster_timeline: self.cluster_tl,
            fence_ok: self.fence_ok,
        }
    }

    /// The cluster's current timeline: `/timeline`, or the last leader's as this agent saw
    /// it when that is newer (the leader records its timeline a loop after promoting).
    fn cluster_timeline(&self, keys: &Keys) -> Option<u32> {
        keys.timeline
            .as_ref()
            .map(|(t, _)| t.timeline)
            .max(self.leader_timeline_seen)
    }

    /// Which timeline the local PostgreSQL is on, and whether exactly (see
    /// [`crate::timeline`]): never `pg_control_checkpoint()`'s unless nothing else answers,
    /// since it lags a timeline switch until the next restartpoint.
    async fn find_timeline(&mut self, s: &PgStatus) -> (u32, bool) {
        if !s.in_recovery {
            // pg_walfile_name(pg_current_wal_lsn()): the primary's own.
            return (s.timeline, true);
        }
        if let Some(t) = s.received_tli {
            return (t, true);
        }
        let cached = self
            .replay_tl_cache
            .filter(|(lsn, started, _)| *lsn == s.lsn && *started == self.started_at)
            .map(|(_, _, t)| t);
        let replay_tli = match cached {
            Some(t) => Ok(t),
            None => self.ctl.replay_timeline().await,
        };
        match replay_tli {
            Ok(t) => {
                if self.timeline_error.take().is_some() {
                    tracing::info!(timeline = t, "replay timeline readable again");
                }
                self.replay_tl_cache = Some((s.lsn, self.started_at, t));
                let target = crate::timeline::Target::parse(&s.recovery_target_timeline);
                let follows = crate::timeline::follows(t, s.lsn, target, &self.ctl.histories());
                (follows, true)
            }
            Err(e) => {
                let e = e.to_string();
                if self.timeline_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, checkpoint_timeline = s.timeline,
                        "cannot read the replay timeline (IDENTIFY_SYSTEM): only the last checkpoint's is known, which lags a timeline switch");
                    self.timeline_error = Some(e);
                }
                (s.timeline, false)
            }
        }
    }

    fn log_timeline_verdict(&mut self, obs: &Observed) {
        let behind = match (&obs.pg, obs.cluster_timeline) {
            (Pg::Running(pg), Some(c)) if pg.timeline < c => {
                Some((pg.timeline, pg.timeline_known, c))
            }
            _ => None,
        };
        let text = behind.map(|b| format!("{b:?} leader: {}", obs.leader.is_some()));
        if text == self.timeline_logged {
            return;
        }
        match behind {
            // With a leader to follow this is the normal moment before catching up.
            Some((t, known, c)) if obs.leader.is_some() => tracing::info!(timeline = t, exact = known, cluster_timeline = c,
                "on an older timeline than the cluster's: following the leader onto it"),
            Some((t, known, c)) => tracing::warn!(timeline = t, exact = known, cluster_timeline = c,
                "on an older timeline than the cluster's: this node will not be promoted (its WAL lacks the newer timeline's writes or diverged from them; `rampart db failover --to` forces it)"),
            None if self.timeline_logged.is_some() => tracing::info!("on the cluster's timeline"),
            None => {}
        }
        self.timeline_logged = text;
    }

    fn node_addr(&self, name: &str) -> Result<(String, u16), DbError> {
        self.cfg
            .node(name)
            .map(|n| (n.host.clone(), n.port))
            .ok_or_else(|| DbError::Other(format!("leader \"{name}\" is not a configured node")))
    }

    fn sync_names(&self) -> String {
        if !self.cfg.synchronous || self.bootstrapping {
            // No standby can exist before the bootstrap has created the replication user.
            return String::new();
        }
        match &self.sync_configured {
            Some(n) => format!("FIRST 1 (\"{n}\")"),
            None if self.cfg.synchronous_strict => "*".to_string(),
            None => String::new(),
        }
    }

    fn conf(&self, follow: Option<&str>) -> Result<ConfSpec, DbError> {
        Ok(ConfSpec {
            follow: follow.map(|l| self.node_addr(l)).transpose()?,
            sync_names: self.sync_names(),
            extra: self.cfg.parameters.clone(),
        })
    }

    /// A replica whose PostgreSQL runs but does not answer yet (it has not reached a
    /// consistent state: say after a pg_rewind cut short, it needs WAL up to its minimum
    /// recovery point) may have been started following nobody, during a vacancy: point it
    /// at the leader once there is one, by SIGHUP (`primary_conninfo` is reloadable), or
    /// it would wait for WAL forever.
    fn repoint_unready_replica(&mut self, keys: &Keys, dcs_ok: bool) {
        let Some(leader) = keys.leader.as_ref().map(|kv| kv.value_str()) else {
            return;
        };
        if !dcs_ok || leader == self.node.name || !self.ctl.is_standby() {
            return;
        }
        if self.following.as_ref() == Some(&Some(leader.clone())) {
            return;
        }
        let Some(pid) = self.child.as_ref().and_then(|c| c.id()) else {
            return;
        };
        let conf = match self.conf(Some(&leader)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the replica configuration");
                return;
            }
        };
        if let Err(e) = self.ctl.write_conf(&conf) {
            tracing::warn!(error = %e, "cannot write the replica configuration");
            return;
        }
        if pg::reload_by_signal(pid as i32) {
            tracing::info!(leader = %leader, "postgres not answering yet: pointing its replication at the leader (SIGHUP)");
            self.following = Some(Some(leader));
            self.pointed_at_leader_since = Some(Instant::now());
            self.not_streaming_since = None;
        }
    }

    /// A replica pointed at the leader that still does not answer after
    /// `UNREADY_REPLICA_TIMEOUT` will not get consistent (its data is broken): the leader
    /// to rewind from, or re-clone (what `Rewind` falls back to).
    fn unready_replica_gives_up(&self, keys: &Keys) -> Option<String> {
        let leader = keys.leader.as_ref().map(|kv| kv.value_str())?;
        let since = self.pointed_at_leader_since?;
        (leader != self.node.name
            && self.ctl.is_standby()
            && self.following.as_ref() == Some(&Some(leader.clone()))
            && (since.elapsed() > UNREADY_REPLICA_TIMEOUT
                || (since.elapsed() > UNREADY_DIVERGED_AFTER
                    && (diverged_in_log(&self.ctl.log_path())
                        || stuck_at_timeline_end(&self.ctl.log_path())))))
            .then(|| {
                tracing::warn!(leader = %leader, postgres_says = %last_problem(&self.ctl.log_path()),
                    "replica postgres still not answering though pointed at the leader: repairing it");
                leader
            })
    }
}

/// Wake the loop as soon as `/leader` is deleted or `/failover` or `/pause` changes, so
/// that a failover does not wait for the next `loop_wait` tick.
async fn watch_for_changes(coord: Coord, cluster: String, wake: Arc<tokio::sync::Notify>) {
    let prefix = dcs::prefix(&cluster);
    let interesting = |key: &str| {
        key.strip_prefix(&prefix)
            .is_some_and(|k| k == "leader" || k == "failover" || k == "pause")
    };
    loop {
        match coord.watch_prefix(&prefix, 0).await {
            Ok(mut rx) => {
                while let Some(ev) = rx.recv().await {
                    let hit = match &ev {
                        rampart_coord::WatchEvent::Delete { key, .. } => interesting(key),
                        rampart_coord::WatchEvent::Put(kv) => {
                            interesting(&kv.key) && !kv.key.ends_with("/leader")
                        }
                        rampart_coord::WatchEvent::Resync(_) => false,
                    };
                    if hit {
                        wake.notify_one();
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the cluster keys; retrying");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn log_with(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("postgres.log");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn a_replica_waiting_past_the_end_of_its_timeline_is_seen_stuck() {
        // What a replica left half-rewound printed, pointed at the new leader (PG 15).
        let stuck = "LOG:  starting PostgreSQL 15.14\n\
            LOG:  entering standby mode\n\
            LOG:  waiting for WAL to become available at 0/4002000\n\
            LOG:  restarted WAL streaming at 0/4000000 on timeline 19\n\
            LOG:  replication terminated by primary server\n\
            DETAIL:  End of WAL reached on timeline 19 at 0/403B198.\n\
            LOG:  waiting for WAL to become available at 0/403B1B0\n";
        let (_d, p) = log_with(stuck);
        assert!(stuck_at_timeline_end(&p));
        // A replica that switched to the new timeline is not.
        let switched = format!("{stuck}LOG:  new target timeline is 20\nLOG:  restarted WAL streaming at 0/4000000 on timeline 20\n");
        let (_d, p) = log_with(&switched);
        assert!(!stuck_at_timeline_end(&p));
        // The other way PostgreSQL says it (the leader has nothing newer on that timeline).
        let (_d, p) = log_with(
            "LOG:  starting PostgreSQL 15.14\n\
            LOG:  primary server contains no more WAL on requested timeline 35\n\
            LOG:  waiting for WAL to become available at 0/D000040\n",
        );
        assert!(stuck_at_timeline_end(&p));
        // Nor one still replaying before any end of timeline, nor a restarted one.
        let (_d, p) = log_with("LOG:  starting PostgreSQL 15.14\nLOG:  waiting for WAL to become available at 0/4002000\n");
        assert!(!stuck_at_timeline_end(&p));
        let (_d, p) = log_with(&format!(
            "{stuck}LOG:  starting PostgreSQL 15.14\nLOG:  entering standby mode\n"
        ));
        assert!(!stuck_at_timeline_end(&p));
    }
}
