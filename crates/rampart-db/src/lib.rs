//! `rampart db`: an agent that owns one PostgreSQL node and coordinates failover
//! through etcd (via `rampart-coord`, the only crate that speaks etcd).
//!
//! - [`decide`]: the HA decision, a pure function of observed state (property-tested);
//! - [`pg`]: the local PostgreSQL (the only code that runs initdb, postgres, pg_rewind...);
//! - [`timeline`]: which timeline a replica is on (history files; pure);
//! - [`agent`]: the loop that observes, decides, acts and publishes;
//! - [`watchdog`]: the fence that kills a primary whose agent froze before its lease ends;
//! - [`api`]: `/primary`, `/replica`, `/health`, `/cluster`, `/metrics`;
//! - [`ops`]: `list`, `switchover`, `failover`, `pause`, `resume`.

pub mod agent;
pub mod api;
pub mod dcs;
pub mod decide;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod pg;
pub mod timeline;
pub mod watchdog;

use std::sync::{Arc, Mutex};

pub use error::DbError;
use rampart_topology::db::DbConfig;

/// Run the agent for `node` until SIGINT/SIGTERM; then stop PostgreSQL and release the lease.
pub async fn run_agent(cfg: DbConfig, node: &str) -> Result<(), DbError> {
    let shared: agent::Shared = Arc::new(Mutex::new(agent::Snapshot::default()));
    let metrics = Arc::new(metrics::Metrics::new());
    let api_addr = cfg
        .node(node)
        .map(|n| n.api)
        .ok_or_else(|| DbError::Config(format!("node \"{node}\" is not in [[db.nodes]]")))?;
    let listener_shared = shared.clone();
    let listener_metrics = metrics.clone();
    // Refuse to start when the API address is taken: load balancers depend on it.
    let listener = tokio::net::TcpListener::bind(api_addr).await.map_err(|e| {
        DbError::Config(format!("cannot listen on the api address {api_addr}: {e}"))
    })?;
    let a = agent::Agent::new(cfg, node, shared, metrics).await?;
    let api = tokio::spawn(async move {
        if let Err(e) = api::serve(listener, listener_shared, listener_metrics).await {
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
    let r = a.run(stop).await;
    api.abort();
    r
}
