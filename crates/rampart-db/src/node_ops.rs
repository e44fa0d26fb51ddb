//! Operator commands that each agent serves for its own node, through its API (Patroni's
//! `patronictl reload`, `restart` and `reinit`): `rampart db reload`, `restart`, `reinit`. The
//! cluster-wide ones (list, switchover, pause) go through etcd instead ([`crate::ops`]).

use std::time::Duration;

use rampart_topology::db::{DbConfig, DbNode};

use crate::error::DbError;

/// What to ask of each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOp {
    Reload,
    Restart {
        pending_only: bool,
    },
    /// Rebuild replicas from a fresh copy of the leader; waits up to `wait` for each to
    /// stream again.
    Reinit {
        wait: Duration,
    },
}

/// How long one node may take to answer: a restart waits for PostgreSQL to answer again
/// (the agent gives up after a minute).
const ANSWER_WAIT: Duration = Duration::from_secs(75);

/// Ask `nodes` (every node when empty) in turn. A restart goes to the replicas first and
/// to the leader last, one at a time, so that at most one node is down at once. Returns
/// one line per node; fails when any node refused or could not be reached (the others
/// were still asked, except that a restart stops at the first failure).
pub async fn run(cfg: &DbConfig, nodes: &[String], op: NodeOp) -> Result<String, DbError> {
    for n in nodes {
        if cfg.node(n).is_none() {
            let known: Vec<&str> = cfg.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(DbError::Other(format!(
                "no node \"{n}\" in [[db.nodes]]; known: {}",
                known.join(", ")
            )));
        }
    }
    if matches!(op, NodeOp::Reinit { .. }) && nodes.is_empty() {
        return Err(DbError::Other(
            "reinit needs --member NODE: it replaces that replica's data".into(),
        ));
    }
    let mut chosen: Vec<DbNode> = cfg
        .nodes
        .iter()
        .filter(|n| nodes.is_empty() || nodes.contains(&n.name))
        .cloned()
        .collect();
    if matches!(op, NodeOp::Restart { .. }) {
        // The leader last (when etcd cannot tell, the configured order).
        let leader = crate::ops::read_view(cfg).await.ok().and_then(|v| v.leader);
        chosen.sort_by_key(|n| leader.as_deref() == Some(n.name.as_str()));
    }
    let token = crate::read_token(cfg.api_access.token.as_ref())?;
    let (path, body) = match op {
        NodeOp::Reload => ("/reload", String::new()),
        NodeOp::Restart { pending_only } => (
            "/restart",
            format!("{{\"restart_pending\": {pending_only}}}"),
        ),
        NodeOp::Reinit { .. } => ("/reinitialize", String::new()),
    };
    let mut lines = Vec::new();
    let mut failed = false;
    for n in chosen {
        let (api, token, body) = (n.api, token.clone(), body.clone());
        let r = tokio::task::spawn_blocking(move || {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = auth.as_deref() {
                headers.push(("Authorization", a));
            }
            let c = rampart_http1::Client {
                connect_timeout: Duration::from_secs(3),
                io_timeout: ANSWER_WAIT,
                max_response: 1 << 20,
            };
            c.request(api, "POST", path, &headers, body.as_bytes())
        })
        .await
        .map_err(|e| DbError::Other(format!("the request task failed: {e}")))?;
        match r {
            Ok(resp) if resp.status == 200 => {
                lines.push(format!("{}: {}", n.name, resp.text().trim()));
                if let NodeOp::Reinit { wait } = op {
                    match wait_streaming(cfg, &n.name, wait).await {
                        Ok(s) => lines.push(format!("{}: streaming again after {s:.1} s", n.name)),
                        Err(e) => {
                            failed = true;
                            lines.push(format!("{}: {e}", n.name));
                        }
                    }
                }
            }
            Ok(resp) => {
                failed = true;
                lines.push(format!(
                    "{}: refused ({}): {}",
                    n.name,
                    resp.status,
                    resp.text().trim()
                ));
            }
            Err(e) => {
                failed = true;
                lines.push(format!(
                    "{}: cannot reach its API at {}: {e}",
                    n.name, n.api
                ));
            }
        }
        if failed && !matches!(op, NodeOp::Reload) {
            lines.push("stopped: the remaining nodes were not asked".into());
            break;
        }
    }
    let text = lines.join("\n");
    if failed {
        Err(DbError::Other(text))
    } else {
        Ok(text)
    }
}

/// Wait until `node` is a streaming replica again (its member key, as `rampart db list`
/// shows it); the seconds it took.
async fn wait_streaming(cfg: &DbConfig, node: &str, wait: Duration) -> Result<f64, String> {
    let t = std::time::Instant::now();
    // The agent stops PostgreSQL first: wait for that before waiting for it to stream.
    tokio::time::sleep(cfg.loop_wait * 2).await;
    loop {
        if let Ok(v) = crate::ops::read_view(cfg).await {
            if v.members
                .iter()
                .any(|m| m.name == node && m.role == "replica" && m.streaming)
            {
                return Ok(t.elapsed().as_secs_f64());
            }
        }
        if t.elapsed() > wait {
            return Err(format!(
                "not streaming after {} s (rampart db list shows where it is)",
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
