//! Operator commands: `rampart db list | switchover | failover | pause | resume`.
//! They talk to etcd only (through rampart-coord), never to the agents directly.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rampart_coord::{Coord, CoordOptions};
use rampart_topology::db::DbConfig;

use crate::dcs::{self, ClusterView, FailoverValue, Member};
use crate::error::DbError;

pub(crate) async fn coord(cfg: &DbConfig) -> Result<Coord, DbError> {
    Ok(Coord::connect(CoordOptions {
        endpoints: cfg.etcd.clone(),
        op_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(3),
    })
    .await?)
}

/// The cluster as stored in etcd (members that posted recently, the leader, pause).
pub async fn read_view(cfg: &DbConfig) -> Result<ClusterView, DbError> {
    let c = coord(cfg).await?;
    let (kvs, _) = c.get_prefix(&dcs::prefix(&cfg.cluster)).await?;
    let p = dcs::prefix(&cfg.cluster);
    let mut view = ClusterView {
        cluster: cfg.cluster.clone(),
        leader: None,
        timeline: None,
        paused: false,
        members: vec![],
    };
    for kv in &kvs {
        match kv.key.strip_prefix(&p) {
            Some("leader") => view.leader = Some(kv.value_str()),
            Some("pause") => view.paused = true,
            Some("timeline") => {
                view.timeline = serde_json::from_slice::<crate::dcs::TimelineValue>(&kv.value)
                    .ok()
                    .map(|t| t.timeline)
            }
            Some(r) if r.starts_with("members/") => {
                if let Ok(m) = serde_json::from_slice::<Member>(&kv.value) {
                    view.members.push(m);
                }
            }
            _ => {}
        }
    }
    // Configured nodes that posted nothing are down (their lease expired).
    for n in &cfg.nodes {
        if !view.members.iter().any(|m| m.name == n.name) {
            view.members.push(Member {
                name: n.name.clone(),
                role: "unknown".into(),
                state: "agent down (no member key)".into(),
                host: n.host.clone(),
                port: n.port,
                api_url: format!("http://{}", n.api),
                timeline: 0,
                timeline_known: false,
                lsn: 0,
                lag_bytes: 0,
                lag_seconds: 0.0,
                sync_standby: false,
                nofailover: n.nofailover,
                lease_age_seconds: None,
                receive_lsn: 0,
                streaming: false,
                action: String::new(),
                pending_restart: false,
            });
        }
    }
    view.members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(view)
}

pub(crate) fn fmt_lsn(l: u64) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)
}

/// `rampart db list`: one line per member.
pub fn render_table(v: &ClusterView) -> String {
    let mut rows: Vec<[String; 9]> = vec![[
        "NODE".into(),
        "ROLE".into(),
        "STATE".into(),
        "TL".into(),
        "LSN".into(),
        "LAG_BYTES".into(),
        "LAG_S".into(),
        "LEASE_AGE".into(),
        "TAGS".into(),
    ]];
    for m in &v.members {
        let leader = v.leader.as_deref() == Some(m.name.as_str());
        let mut tags = Vec::new();
        if leader {
            tags.push("leader");
        }
        if m.sync_standby {
            tags.push("sync");
        }
        if m.nofailover {
            tags.push("nofailover");
        }
        if m.pending_restart {
            tags.push("pending-restart");
        }
        rows.push([
            m.name.clone(),
            m.role.clone(),
            m.state.clone(),
            m.timeline.to_string(),
            fmt_lsn(m.lsn),
            m.lag_bytes.to_string(),
            format!("{:.1}", m.lag_seconds),
            m.lease_age_seconds
                .map(|a| format!("{a:.1}s"))
                .unwrap_or_else(|| "-".into()),
            if tags.is_empty() {
                "-".into()
            } else {
                tags.join(",")
            },
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster {} (leader: {}, timeline: {}){}",
        v.cluster,
        v.leader.as_deref().unwrap_or("none"),
        v.timeline
            .map_or_else(|| "-".to_string(), |t| t.to_string()),
        if v.paused { " PAUSED" } else { "" }
    );
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

pub async fn list(cfg: &DbConfig) -> Result<String, DbError> {
    Ok(render_table(&read_view(cfg).await?))
}

/// Ask for a switchover (planned, no lost writes) or a failover (forced) and wait for it.
pub async fn switchover(
    cfg: &DbConfig,
    to: Option<&str>,
    forced: bool,
    wait: Duration,
) -> Result<String, DbError> {
    let view = read_view(cfg).await?;
    if let Some(t) = to {
        let Some(m) = view.members.iter().find(|m| m.name == t) else {
            return Err(DbError::Other(format!("no member named \"{t}\"")));
        };
        if view.leader.as_deref() == Some(t) {
            return Err(DbError::Other(format!("{t} is already the leader")));
        }
        let streaming_replica = m.role == "replica" && m.streaming;
        if !forced && !streaming_replica {
            return Err(DbError::Other(format!(
                "{t} is not a streaming replica ({}, {}): use failover to force it",
                m.role, m.state
            )));
        }
    } else if !forced {
        return Err(DbError::Other("switchover needs --to NODE".into()));
    }
    if !forced && view.leader.is_none() {
        return Err(DbError::Other(
            "there is no leader to switch over from: use failover".into(),
        ));
    }
    let c = coord(cfg).await?;
    let req = FailoverValue {
        from: view.leader.clone(),
        to: to.map(String::from),
        forced,
        min_lsn: None,
        requested_at_ms: dcs::unix_ms(),
        scheduled_at_ms: None,
    };
    put_request(&c, &cfg.cluster, &req).await?;
    let old = view.leader.clone();
    let start = Instant::now();
    while start.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(Some(kv)) = c.get(&dcs::key(&cfg.cluster, "leader")).await else {
            continue;
        };
        let l = kv.value_str();
        let done = match to {
            Some(t) => l == t,
            None => Some(&l) != old.as_ref(),
        };
        if done {
            return Ok(format!(
                "{} is the new leader (after {:.1} s)",
                l,
                start.elapsed().as_secs_f64()
            ));
        }
    }
    Err(DbError::Other(format!(
        "no new leader within {wait:?}: see `rampart db list`"
    )))
}

/// Write `/failover` under a lease of its own that etcd expires
/// `FAILOVER_REQUEST_TIMEOUT` after the request is due: how old a request is never depends
/// on the clocks of the hosts that wrote and read it (only a scheduled time does).
pub async fn put_request(c: &Coord, cluster: &str, req: &FailoverValue) -> Result<(), DbError> {
    let body = serde_json::to_vec(req).map_err(|e| DbError::Other(e.to_string()))?;
    let until_due = req
        .scheduled_at_ms
        .map(|t| Duration::from_millis(t.saturating_sub(dcs::unix_ms())))
        .unwrap_or_default();
    let lease = c
        .grant_lease(crate::decide::FAILOVER_REQUEST_TIMEOUT + until_due)
        .await?;
    c.put(&dcs::key(cluster, "failover"), &body, Some(lease))
        .await?;
    Ok(())
}

pub async fn set_pause(cfg: &DbConfig, paused: bool) -> Result<(), DbError> {
    let c = coord(cfg).await?;
    let k = dcs::key(&cfg.cluster, "pause");
    if paused {
        c.put(&k, b"true", None).await?;
    } else {
        c.delete(&k).await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_has_header_and_tags() {
        let m = Member {
            name: "db1".into(),
            role: "primary".into(),
            state: "running".into(),
            host: "127.0.0.1".into(),
            port: 5433,
            api_url: "http://127.0.0.1:8008".into(),
            timeline: 2,
            timeline_known: true,
            lsn: 0x3000060,
            lag_bytes: 0,
            lag_seconds: 0.0,
            sync_standby: false,
            nofailover: false,
            lease_age_seconds: Some(0.4),
            receive_lsn: 0,
            streaming: false,
            action: String::new(),
            pending_restart: true,
        };
        let v = ClusterView {
            cluster: "main".into(),
            leader: Some("db1".into()),
            timeline: Some(3),
            paused: false,
            members: vec![m],
        };
        let t = render_table(&v);
        assert!(t.contains("timeline: 3"), "{t}");
        assert!(t.contains("NODE"), "{t}");
        assert!(t.contains("0/3000060"), "{t}");
        assert!(t.contains("leader"), "{t}");
        assert!(t.contains("0.4s"), "{t}");
        assert!(t.contains("leader,pending-restart"), "{t}");
    }
}
