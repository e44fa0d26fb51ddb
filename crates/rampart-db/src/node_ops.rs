//! Operator commands that each agent serves for its own node, through its API (Patroni's
//! `patronictl reload`, `restart`, `reinit` and `history`): `rampart db reload`, `restart`,
//! `reinit`, `history`. The
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

/// `rampart db history` (patronictl history): the cluster's timeline switches, each with
/// when and to which new leader when `/history` recorded it, read from the first agent
/// whose API answers (the leader's first).
pub async fn history(cfg: &DbConfig) -> Result<String, DbError> {
    let leader = crate::ops::read_view(cfg).await.ok().and_then(|v| v.leader);
    let mut nodes: Vec<DbNode> = cfg.nodes.clone();
    nodes.sort_by_key(|n| leader.as_deref() != Some(n.name.as_str()));
    let mut last_err = String::from("no db node in the topology");
    for n in nodes {
        let api = n.api;
        let r = tokio::task::spawn_blocking(move || {
            rampart_http1::get(api, "/history", Duration::from_secs(3))
        })
        .await
        .map_err(|e| DbError::Other(format!("the request task failed: {e}")))?;
        match r {
            Ok(resp) if resp.status == 200 => {
                let lines: Vec<serde_json::Value> = serde_json::from_slice(&resp.body)
                    .map_err(|e| DbError::Other(format!("{}'s /history: {e}", n.name)))?;
                return Ok(render_history(&lines));
            }
            Ok(resp) => last_err = format!("{}: /history answered {}", n.name, resp.status),
            Err(e) => last_err = format!("{}: cannot reach its API at {}: {e}", n.name, n.api),
        }
    }
    Err(DbError::Other(last_err))
}

/// The table of [`history`]: one row per switch, `-` where nothing was recorded.
pub fn render_history(lines: &[serde_json::Value]) -> String {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut rows = vec![[
        "TL".to_string(),
        "LSN".into(),
        "REASON".into(),
        "TIMESTAMP".into(),
        "NEW LEADER".into(),
    ]];
    for l in lines {
        let lsn = l[1]
            .as_u64()
            .map(|x| format!("{:X}/{:X}", x >> 32, x & 0xffff_ffff))
            .unwrap_or_else(|| cell(&l[1]));
        rows.push([cell(&l[0]), lsn, cell(&l[2]), cell(&l[3]), cell(&l[4])]);
    }
    if lines.is_empty() {
        return "no timeline switch yet: the cluster runs on its first timeline\n".into();
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_table_shows_what_was_recorded_and_dashes_for_the_rest() {
        let t = render_history(&[
            serde_json::json!([
                1,
                0x3000060u64,
                "no recovery target specified",
                "2026-12-07T16:09:14.123+00:00",
                "db2"
            ]),
            serde_json::json!([2, 0x4000000u64, "x"]),
        ]);
        let rows: Vec<&str> = t.lines().collect();
        assert!(rows[0].starts_with("TL  LSN"), "{t}");
        assert!(
            rows[1].contains("0/3000060") && rows[1].ends_with("db2"),
            "{t}"
        );
        assert!(
            rows[2].contains("0/4000000") && rows[2].ends_with('-'),
            "{t}"
        );
        assert!(render_history(&[]).contains("first timeline"));
    }
}
