//! Replica-aware PostgreSQL routing with read-your-writes, for any tokio application.
//!
//! * Writes and transactions go to the current primary ([`Router::write`]); every checkout
//!   verifies `pg_is_in_recovery()` is false on that very connection, so a connection to a
//!   demoted node is never used for a write.
//! * Reads go to a replica within the lag bound, fewest checked-out connections first
//!   ([`Router::read`]); with a [`Token`] only to a replica that has replayed the token's
//!   position on its timeline (checked live when the last observation is older), waiting
//!   up to `read_wait`, else to the primary.
//! * The topology comes from a watch on the db agents' records in etcd (with polling of
//!   their `/cluster` as the fallback), from polling `/cluster`, or from probing a static
//!   list of nodes, every `poll_interval` and at once after a failed write checkout.
//! * Every call on a checked-out connection, the checkout's own `pg_is_in_recovery()`
//!   and connecting are bounded by [`ConnParams::call_timeout`] / `connect_timeout`: a
//!   frozen server (TCP open, nothing answering) costs one bound; the connection is then
//!   discarded, the outcome unknown ([`RouteError::Timeout`], retryable).
//!
//! The decisions themselves are pure functions in [`plan`], property-tested.

pub mod plan;
mod pool;
mod source;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

pub use plan::{NodeState, Role, Topology};
pub use pool::{CallBound, Pooled};
pub use token::{BadToken, Token};

use pool::NodePool;
use source::{AgentSource, StaticProber};

/// Where the router learns the cluster's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologySource {
    /// PostgreSQL nodes as `host:port`, probed with SQL.
    Static(Vec<String>),
    /// rampart db agents' HTTP API base URLs (`http://127.0.0.1:8008`), read at `/cluster`.
    Agents(Vec<String>),
    /// The agents' member records and leader key in etcd, for cluster `cluster`, followed
    /// by a watch (changes arrive as soon as etcd has them). While the watch is quiet
    /// (no record changed for [`WATCH_QUIET`]: the agents re-post theirs every loop, so
    /// etcd is probably unreachable) the router polls the agents' `/cluster` (`agents`,
    /// when given) or reads the prefix from etcd every `poll_interval`.
    Etcd {
        endpoints: Vec<String>,
        cluster: String,
        agents: Vec<String>,
    },
}

/// With an etcd source: how long without any watch event before polling as well.
pub const WATCH_QUIET: Duration = Duration::from_secs(3);

/// How to log in to every node.
#[derive(Clone, Debug)]
pub struct ConnParams {
    pub user: String,
    pub dbname: String,
    pub password: Option<String>,
    pub application_name: String,
    /// Bounds connecting, start-up and authentication included.
    pub connect_timeout: Duration,
    /// Bounds every call on a checked-out connection (queries, the checkout's health
    /// check): past it the server is taken as gone, the connection discarded. Well over
    /// any query the application makes, well under how long it holds a write.
    pub call_timeout: Duration,
    /// Connect over TLS (sslmode=require, the server verified against this CA: chain and
    /// host name); plain TCP when `None`.
    pub tls: Option<tls::MakeRustls>,
}

impl Default for ConnParams {
    fn default() -> Self {
        ConnParams {
            user: "postgres".into(),
            dbname: "postgres".into(),
            password: None,
            application_name: "rampart".into(),
            connect_timeout: Duration::from_secs(2),
            call_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// Router settings.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub source: TopologySource,
    pub conn: ConnParams,
    /// Replicas further behind the primary than this get no reads.
    pub max_lag_bytes: u64,
    /// How long a token-bearing read waits for a replica to catch up before going to the primary.
    pub read_wait: Duration,
    /// How long a write waits for a primary to appear (covers a failover).
    pub primary_wait: Duration,
    /// Topology refresh period.
    pub poll_interval: Duration,
    /// Connections per node.
    pub pool_size: usize,
}

impl RouterConfig {
    pub fn new(source: TopologySource) -> Self {
        RouterConfig {
            source,
            conn: ConnParams::default(),
            max_lag_bytes: 16 * 1024 * 1024,
            read_wait: Duration::from_millis(200),
            primary_wait: Duration::from_secs(5),
            poll_interval: Duration::from_millis(250),
            pool_size: 16,
        }
    }
}

/// What went wrong routing a query.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No writable primary was found within `primary_wait`. Retryable later.
    #[error("no writable primary is available")]
    NoPrimary,
    /// No node at all can take the read.
    #[error("no database node is available for reads")]
    NoNode,
    #[error("connecting to database node {node}: {reason}")]
    Connect { node: String, reason: String },
    #[error("timed out waiting for a free connection to {node}")]
    PoolTimeout { node: String },
    /// A call got no answer within the call timeout (the server frozen or cut off): the
    /// connection was discarded and whether the call took effect is unknown.
    #[error("database node {node} did not answer within {after:?}")]
    Timeout { node: String, after: Duration },
    /// The node a call went to stopped being the primary while the call was in flight
    /// (a failover finished, or its lease lapsed): the call was given up, its outcome
    /// unknown.
    #[error("{node} stopped being the primary while a call to it was in flight")]
    PrimaryChanged { node: String },
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl RouteError {
    /// True when the same request may succeed shortly (no primary yet, node unreachable).
    pub fn is_unavailable(&self) -> bool {
        match self {
            RouteError::NoPrimary
            | RouteError::NoNode
            | RouteError::Connect { .. }
            | RouteError::PoolTimeout { .. }
            | RouteError::Timeout { .. }
            | RouteError::PrimaryChanged { .. } => true,
            RouteError::Db(e) => e.is_closed() || e.code().is_none(),
        }
    }
}

/// A connection to the verified primary, for writes and transactions.
pub struct WriteConn {
    conn: Pooled,
    node: String,
}

impl WriteConn {
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The read-your-writes token for everything committed on this connection so far:
    /// the timeline and `pg_current_wal_insert_lsn()` read after the commit (the insert
    /// position is past the commit record even with `synchronous_commit = off`).
    pub async fn token(&self) -> Result<Token, RouteError> {
        let row = self
            .conn
            .query_one(
                "SELECT pg_current_wal_insert_lsn()::text, substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8)",
                &[],
            )
            .await?;
        let lsn: String = row.try_get(0)?;
        let tl: String = row.try_get(1)?;
        match (
            token::parse_pg_lsn(&lsn),
            token::timeline_of_walfile(&format!("{tl:0<24}")),
        ) {
            (Some(lsn), Some(timeline)) => Ok(Token { timeline, lsn }),
            _ => Err(RouteError::NoPrimary),
        }
    }

    /// Never reuse this connection (call after an error that leaves its state in doubt).
    pub fn discard(&mut self) {
        self.conn.discard();
    }
}

/// The bounded calls of [`Pooled`] (`query`, `execute`, ...), then the client itself.
impl std::ops::Deref for WriteConn {
    type Target = Pooled;
    fn deref(&self) -> &Pooled {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut Pooled {
        &mut self.conn
    }
}

/// A connection chosen for a read.
pub struct ReadConn {
    conn: Pooled,
    node: String,
    role: Role,
}

impl ReadConn {
    pub fn node(&self) -> &str {
        &self.node
    }
    pub fn role(&self) -> Role {
        self.role
    }
}

impl std::ops::Deref for ReadConn {
    type Target = Pooled;
    fn deref(&self) -> &Pooled {
        &self.conn
    }
}

impl std::ops::DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut Pooled {
        &mut self.conn
    }
}

/// Counters the router keeps (read them for metrics).
#[derive(Debug, Default)]
pub struct RouterStats {
    pub reads_replica: AtomicU64,
    pub reads_primary: AtomicU64,
    pub reads_waited: AtomicU64,
    pub writes: AtomicU64,
    pub write_checkout_retries: AtomicU64,
}

struct Inner {
    cfg: RouterConfig,
    topo: ArcSwap<Topology>,
    pools: Mutex<HashMap<(String, String, u16), Arc<NodePool>>>,
    changed: Notify,
    refresh: Arc<Notify>,
    rotate: AtomicU64,
    stats: RouterStats,
    /// When the etcd watch last delivered anything.
    watch_heard: Mutex<Option<Instant>>,
}

/// The router; cheap to clone. The topology poller stops when the last clone is dropped.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Router {
    /// Start the router and its topology poller (must be called inside a tokio runtime).
    /// Returns at once; the first observation arrives within one poll.
    pub fn start(cfg: RouterConfig) -> Router {
        let inner = Arc::new(Inner {
            cfg,
            topo: ArcSwap::from_pointee(Topology::default()),
            pools: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            refresh: Arc::new(Notify::new()),
            rotate: AtomicU64::new(0),
            stats: RouterStats::default(),
            watch_heard: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(poll_loop(weak));
        Router { inner }
    }

    /// The last observed topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.inner.topo.load_full()
    }

    pub fn stats(&self) -> &RouterStats {
        &self.inner.stats
    }

    /// Ask the poller to look again now.
    pub fn refresh(&self) {
        self.inner.refresh.notify_one();
    }

    /// Wait until the topology shows a primary (start-up helper).
    pub async fn wait_for_primary(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            if self.topology().primary().is_some() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// The name of the primary the last observed topology shows, if any.
    pub fn primary_name(&self) -> Option<String> {
        let topo = self.topology();
        topo.primary().map(|i| topo.nodes[i].name.clone())
    }

    /// Resolves as soon as the topology no longer shows `node` as the primary (its lease
    /// lapsed, or another node holds it). Raced against a write on `node`, it ends a call
    /// stuck on a frozen primary at the failover itself rather than at the call bound.
    pub async fn primary_leaves(&self, node: &str) {
        loop {
            let notified = self.inner.changed.notified();
            let topo = self.topology();
            if topo.primary().is_none_or(|i| topo.nodes[i].name != node) {
                return;
            }
            notified.await;
        }
    }

    /// `call` (a write's attempt on the primary), given up with
    /// [`RouteError::PrimaryChanged`] if the primary it went to stops being the primary
    /// before it finishes: its connection is then discarded (a call dropped half-way
    /// never returns to the pool) and the outcome unknown, so only a call that is safe to
    /// send again (idempotent, or under an idempotency key) belongs here.
    pub async fn on_current_primary<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RouteError>>,
    ) -> Result<T, RouteError> {
        let Some(node) = self.primary_name() else {
            return call.await;
        };
        tokio::select! {
            r = call => r,
            () = self.primary_leaves(&node) => Err(RouteError::PrimaryChanged { node }),
        }
    }

    fn pool_for(&self, n: &NodeState) -> Arc<NodePool> {
        let key = (n.name.clone(), n.host.clone(), n.port);
        let mut pools = self.inner.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(key)
            .or_insert_with(|| {
                Arc::new(NodePool::new(
                    &n.name,
                    &n.host,
                    n.port,
                    &self.inner.cfg.conn,
                    self.inner.cfg.pool_size,
                ))
            })
            .clone()
    }

    fn in_flight(&self, topo: &Topology) -> Vec<u32> {
        topo.nodes
            .iter()
            .map(|n| {
                let pools = self.inner.pools.lock().unwrap_or_else(|e| e.into_inner());
                pools
                    .get(&(n.name.clone(), n.host.clone(), n.port))
                    .map(|p| p.in_flight())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// A connection to the primary, verified writable on this very connection.
    /// Waits up to `primary_wait` across a failover, refreshing the topology at once
    /// whenever the believed primary turns out not to be one.
    pub async fn write(&self) -> Result<WriteConn, RouteError> {
        let deadline = Instant::now() + self.inner.cfg.primary_wait;
        let mut last_err = RouteError::NoPrimary;
        loop {
            let notified = self.inner.changed.notified();
            let topo = self.topology();
            if let Some(pi) = topo.primary() {
                let node = &topo.nodes[pi];
                match self.checkout_writable(node).await {
                    Ok(w) => {
                        self.inner.stats.writes.fetch_add(1, Ordering::Relaxed);
                        return Ok(w);
                    }
                    Err(e) => {
                        tracing::info!(node = %node.name, error = %e, "primary not writable; refreshing topology");
                        self.inner
                            .stats
                            .write_checkout_retries
                            .fetch_add(1, Ordering::Relaxed);
                        last_err = e;
                        self.refresh();
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(last_err);
            }
            // Wake on the next observation, but re-check at least every 50 ms.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }

    async fn checkout_writable(&self, node: &NodeState) -> Result<WriteConn, RouteError> {
        let pool = self.pool_for(node);
        let mut conn = pool.get().await?;
        // Bounded like every call: an idle connection to a frozen primary fails here.
        match conn.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) => {
                let in_recovery: bool = row.try_get(0)?;
                if in_recovery {
                    conn.discard();
                    pool.clear_idle();
                    return Err(RouteError::NoPrimary);
                }
                Ok(WriteConn {
                    conn,
                    node: node.name.clone(),
                })
            }
            Err(e) => {
                conn.discard();
                Err(e)
            }
        }
    }

    /// A connection for a read. Without a token: a replica within the lag bound, else
    /// the primary. With a token: a replica that has replayed it (waiting up to
    /// `read_wait`), else the verified primary.
    pub async fn read(&self, token: Option<Token>) -> Result<ReadConn, RouteError> {
        let topo = self.topology();
        let loads = self.in_flight(&topo);
        let rotate = self.inner.rotate.fetch_add(1, Ordering::Relaxed);
        let plan = plan::plan_read(&topo, token, self.inner.cfg.max_lag_bytes, &loads, rotate);
        for &i in &plan.fresh {
            let node = &topo.nodes[i];
            match self.pool_for(node).get().await {
                Ok(conn) => {
                    self.inner
                        .stats
                        .reads_replica
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(ReadConn {
                        conn,
                        node: node.name.clone(),
                        role: Role::Replica,
                    });
                }
                Err(e) => tracing::debug!(node = %node.name, error = %e, "replica checkout failed"),
            }
        }
        if let Some(t) = token {
            if let Some(r) = self.read_waiting(&topo, &plan.to_check, t).await {
                return Ok(r);
            }
            // Nobody has the write yet: the primary does (verified not demoted).
            let w = self.write_checkout_for_read().await?;
            self.inner
                .stats
                .reads_primary
                .fetch_add(1, Ordering::Relaxed);
            return Ok(ReadConn {
                node: w.node,
                conn: w.conn,
                role: Role::Primary,
            });
        }
        match plan.primary {
            Some(pi) => {
                let node = &topo.nodes[pi];
                let conn = self.pool_for(node).get().await?;
                self.inner
                    .stats
                    .reads_primary
                    .fetch_add(1, Ordering::Relaxed);
                Ok(ReadConn {
                    conn,
                    node: node.name.clone(),
                    role: Role::Primary,
                })
            }
            None => Err(RouteError::NoNode),
        }
    }

    /// A read on the verified primary (for reads that must not see any replica lag,
    /// e.g. right after a schema change).
    pub async fn read_primary(&self) -> Result<ReadConn, RouteError> {
        let w = self.write_checkout_for_read().await?;
        self.inner
            .stats
            .reads_primary
            .fetch_add(1, Ordering::Relaxed);
        Ok(ReadConn {
            node: w.node,
            conn: w.conn,
            role: Role::Primary,
        })
    }

    async fn write_checkout_for_read(&self) -> Result<WriteConn, RouteError> {
        let deadline = Instant::now() + self.inner.cfg.primary_wait;
        loop {
            let notified = self.inner.changed.notified();
            let topo = self.topology();
            if let Some(pi) = topo.primary() {
                match self.checkout_writable(&topo.nodes[pi]).await {
                    Ok(w) => return Ok(w),
                    Err(_) => self.refresh(),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RouteError::NoPrimary);
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }

    /// Check the replicas behind the token live, polling their replay position until one
    /// has it or `read_wait` passes.
    async fn read_waiting(
        &self,
        topo: &Topology,
        candidates: &[usize],
        t: Token,
    ) -> Option<ReadConn> {
        let deadline = Instant::now() + self.inner.cfg.read_wait;
        let mut conns = Vec::new();
        for &i in candidates {
            let node = &topo.nodes[i];
            if let Ok(c) = self.pool_for(node).get().await {
                conns.push((node.name.clone(), c));
            }
        }
        if conns.is_empty() {
            return None;
        }
        let mut first = true;
        loop {
            let mut idx = 0;
            while idx < conns.len() {
                let c = &conns[idx].1;
                let ok = match c.bound().call(source::probe(c)).await {
                    Ok(p) => p.in_recovery && plan::replica_has(t, p.timeline, p.lsn),
                    Err(_) => {
                        conns[idx].1.discard();
                        conns.remove(idx);
                        continue;
                    }
                };
                if ok {
                    let (node, conn) = conns.swap_remove(idx);
                    let stat = if first {
                        &self.inner.stats.reads_replica
                    } else {
                        self.inner
                            .stats
                            .reads_waited
                            .fetch_add(1, Ordering::Relaxed);
                        &self.inner.stats.reads_replica
                    };
                    stat.fetch_add(1, Ordering::Relaxed);
                    return Some(ReadConn {
                        conn,
                        node,
                        role: Role::Replica,
                    });
                }
                idx += 1;
            }
            first = false;
            if conns.is_empty() || Instant::now() + Duration::from_millis(2) > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Store a new observation (when it differs) and wake the waiters.
fn apply(inner: &Inner, t: Topology) {
    let old = inner.topo.load();
    if **old != t {
        log_changes(&old, &t);
        // Nodes whose role changed keep no idle connections from before.
        for n in &t.nodes {
            let was = old.nodes.iter().find(|o| o.name == n.name).map(|o| o.role);
            if was.is_some() && was != Some(n.role) {
                let pools = inner.pools.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = pools.get(&(n.name.clone(), n.host.clone(), n.port)) {
                    p.clear_idle();
                }
            }
        }
        inner.topo.store(Arc::new(t));
    }
    inner.changed.notify_waiters();
}

/// Aborts a task when dropped (the watch ends with the poller).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn poll_loop(weak: Weak<Inner>) {
    enum Src {
        Static(StaticProber),
        Agents(Box<AgentSource>),
        Etcd(Arc<source::EtcdSource>, Option<Box<AgentSource>>),
    }
    let (src, interval, refresh) = {
        let Some(inner) = weak.upgrade() else { return };
        let probe_timeout = inner.cfg.conn.connect_timeout.min(Duration::from_secs(1));
        let src = match &inner.cfg.source {
            TopologySource::Static(addrs) => {
                let router = Router {
                    inner: inner.clone(),
                };
                let nodes = addrs
                    .iter()
                    .map(|a| {
                        let (host, port) = split_host_port(a);
                        let n = NodeState {
                            name: a.clone(),
                            host: host.clone(),
                            port,
                            role: Role::Unavailable,
                            timeline: None,
                            lsn: None,
                            lag_bytes: None,
                        };
                        (router.pool_for(&n), host, port)
                    })
                    .collect();
                Src::Static(StaticProber::new(nodes, probe_timeout))
            }
            TopologySource::Etcd {
                endpoints,
                cluster,
                agents,
            } => Src::Etcd(
                Arc::new(source::EtcdSource::new(endpoints.clone(), cluster.clone())),
                (!agents.is_empty())
                    .then(|| Box::new(AgentSource::new(agents.clone(), probe_timeout))),
            ),
            TopologySource::Agents(urls) => {
                Src::Agents(Box::new(AgentSource::new(urls.clone(), probe_timeout)))
            }
        };
        (src, inner.cfg.poll_interval, inner.refresh.clone())
    };
    let _watch = match &src {
        Src::Etcd(etcd, _) => {
            let (etcd, weak) = (etcd.clone(), weak.clone());
            Some(AbortOnDrop(tokio::spawn(async move {
                etcd.watch(|t| {
                    let Some(inner) = weak.upgrade() else {
                        return false;
                    };
                    *inner.watch_heard.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now());
                    apply(&inner, t);
                    true
                })
                .await
            })))
        }
        _ => None,
    };
    loop {
        let observed = match &src {
            Src::Static(p) => Some(p.observe().await),
            Src::Agents(a) => a.observe().await,
            Src::Etcd(etcd, agents) => {
                let quiet = {
                    let Some(inner) = weak.upgrade() else { return };
                    let heard = *inner.watch_heard.lock().unwrap_or_else(|e| e.into_inner());
                    heard.is_none_or(|h| h.elapsed() > WATCH_QUIET)
                };
                if !quiet {
                    None
                } else {
                    let from_agents = match agents {
                        Some(a) => a.observe().await,
                        None => None,
                    };
                    match from_agents {
                        Some(t) => Some(t),
                        None => etcd.observe().await,
                    }
                }
            }
        };
        let Some(inner) = weak.upgrade() else { return };
        if let Some(t) = observed {
            apply(&inner, t);
        }
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = refresh.notified() => {}
        }
    }
}

fn log_changes(old: &Topology, new: &Topology) {
    for n in &new.nodes {
        let was = old.nodes.iter().find(|o| o.name == n.name).map(|o| o.role);
        if was != Some(n.role) {
            tracing::info!(node = %n.name, role = n.role.as_str(), was = was.map(|r| r.as_str()).unwrap_or("absent"), "database node role");
        }
    }
}

fn split_host_port(a: &str) -> (String, u16) {
    match a.rsplit_once(':') {
        Some((h, p)) => match p.parse() {
            Ok(port) => (h.trim_matches(['[', ']']).to_string(), port),
            Err(_) => (a.to_string(), 5432),
        },
        None => (a.to_string(), 5432),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split() {
        assert_eq!(
            split_host_port("127.0.0.1:5433"),
            ("127.0.0.1".into(), 5433)
        );
        assert_eq!(split_host_port("db.local"), ("db.local".into(), 5432));
        assert_eq!(split_host_port("[::1]:5"), ("::1".into(), 5));
    }
}
