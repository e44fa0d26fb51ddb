//! `rampart db`: an agent that owns one PostgreSQL node and coordinates failover
//! through etcd (via `rampart-coord`, the only crate that speaks etcd).
//!
//! - [`decide`]: the HA decision, a pure function of observed state (property-tested);
//! - [`pg`]: the local PostgreSQL (the only code that runs initdb, postgres, pg_rewind...);
//! - [`statements`]: the node's slowest statements (`pg_stat_statements`) for `/metrics`;
//! - [`timeline`]: which timeline a replica is on (history files; pure);
//! - [`agent`]: the loop that observes, decides, acts and publishes;
//! - [`watchdog`]: the fence that kills a primary whose agent froze before its lease ends;
//! - [`kwatchdog`]: the kernel watchdog (`/dev/watchdog`), `watchdog = "automatic"|"required"`;
//! - [`api`]: Patroni's REST API (`/primary`, `/replica`, `/sync`, `/health`, `/cluster`,
//!   `POST /switchover`, ...) and `/metrics`;
//! - [`leader_keys`]: `/sync` and the other leader-only keys, written only under the
//!   leader key's revision (an etcd transaction);
//! - [`ops`]: `list`, `switchover`, `failover`, `pause`, `resume`.

pub mod agent;
pub mod api;
pub mod dcs;
pub mod decide;
pub mod error;
pub mod kwatchdog;
pub mod leader_keys;
pub mod metrics;
pub mod node_ops;
pub mod ops;
pub mod pg;
pub mod statements;
pub mod timeline;
pub mod watchdog;

use std::sync::{Arc, Mutex};

pub use error::DbError;
use rampart_topology::db::DbConfig;

/// Run the agent for `node` until SIGINT/SIGTERM; then stop PostgreSQL and release the lease.
/// SIGHUP (and `POST /reload`) re-reads `config_path` and applies its `[db.parameters]`.
pub async fn run_agent(
    cfg: DbConfig,
    node: &str,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), DbError> {
    // SIGHUP reloads: handled from the start, before anything can see this process
    // running (its default action would end it).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let shared: agent::Shared = Arc::new(Mutex::new(agent::Snapshot::default()));
    let me = cfg
        .node(node)
        .ok_or_else(|| DbError::Config(format!("node \"{node}\" is not in [[db.nodes]]")))?;
    let api_addr = me.api;
    // `/metrics` reads pg_stat_statements on a connection of its own.
    let metrics = Arc::new(metrics::Metrics::new().with_statements(pg::PgConn::new(
        pg::conninfo(&me.host, me.port, &cfg.superuser_password),
        std::time::Duration::from_secs(1),
    )));
    let listener_shared = shared.clone();
    let listener_metrics = metrics.clone();
    // Refuse to start when the API address is taken: load balancers depend on it.
    let listener = tokio::net::TcpListener::bind(api_addr).await.map_err(|e| {
        DbError::Config(format!("cannot listen on the api address {api_addr}: {e}"))
    })?;
    let (ops_tx, ops_rx) = tokio::sync::mpsc::channel(4);
    let admin = api::AdminCtx {
        access: api::admin::Access {
            allow: cfg.api_access.allow.clone(),
            token: read_token(cfg.api_access.token.as_ref())?,
        },
        cfg: cfg.clone(),
        agent: ops_tx,
    };
    let mut a = agent::Agent::new(cfg, node, shared, metrics).await?;
    if let Some(p) = config_path {
        a = a.with_config_path(p);
    }
    let api = tokio::spawn(async move {
        if let Err(e) = api::serve(listener, listener_shared, listener_metrics, admin).await {
            tracing::error!(addr = %api_addr, error = %e, "db agent API failed");
        }
    });
    let stop = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let r = a.run(stop, ops_rx, hangup).await;
    api.abort();
    r
}

/// The write endpoints' token, read once at start-up (never logged).
pub(crate) fn read_token(
    src: Option<&rampart_topology::lb::TokenSource>,
) -> Result<Option<String>, DbError> {
    use rampart_topology::lb::TokenSource;
    let t = match src {
        None => return Ok(None),
        Some(TokenSource::File(p)) => std::fs::read_to_string(p).map_err(|e| {
            DbError::Config(format!("cannot read api_token_file {}: {e}", p.display()))
        })?,
        Some(TokenSource::Env(v)) => std::env::var(v)
            .map_err(|_| DbError::Config(format!("api_token_env: ${v} is not set")))?,
    };
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(DbError::Config("the api token is empty".into()));
    }
    Ok(Some(t))
}
