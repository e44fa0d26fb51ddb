//! Topology sources: probing a static list of nodes with SQL, or reading the db agents'
//! `/cluster` document.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::plan::{NodeState, Role, Topology};
use crate::pool::NodePool;
use crate::token::{parse_pg_lsn, timeline_of_walfile};

/// One probe query: role, position and timeline of a node in one round trip.
/// On a replica the timeline is the one its WAL receiver is streaming (NULL when the
/// receiver is not running: such a replica then serves no token-bearing read).
pub(crate) const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text, \
     CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver)::text \
          ELSE substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) END";

/// What one probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    pub in_recovery: bool,
    pub lsn: Option<u64>,
    pub timeline: Option<u32>,
}

pub(crate) async fn probe(client: &tokio_postgres::Client) -> Result<Probe, tokio_postgres::Error> {
    let row = client.query_one(PROBE_SQL, &[]).await?;
    let in_recovery: bool = row.try_get(0)?;
    let lsn: Option<String> = row.try_get(1)?;
    let tl: Option<String> = row.try_get(2)?;
    let timeline = tl.and_then(|t| {
        if in_recovery {
            t.parse::<u32>().ok()
        } else {
            timeline_of_walfile(&format!("{t:0<24}"))
        }
    });
    Ok(Probe {
        in_recovery,
        lsn: lsn.as_deref().and_then(parse_pg_lsn),
        timeline,
    })
}

type ProbedNode = (
    Arc<NodePool>,
    String,
    u16,
    tokio::sync::Mutex<Option<tokio_postgres::Client>>,
);

/// Probe every node of a static list once (concurrently), each on its own long-lived
/// probe connection (reconnected on failure), and build the topology from what answered.
pub(crate) struct StaticProber {
    nodes: Vec<ProbedNode>,
    timeout: Duration,
}

impl StaticProber {
    pub(crate) fn new(nodes: Vec<(Arc<NodePool>, String, u16)>, timeout: Duration) -> Self {
        StaticProber {
            nodes: nodes
                .into_iter()
                .map(|(p, h, port)| (p, h, port, tokio::sync::Mutex::new(None)))
                .collect(),
            timeout,
        }
    }

    pub(crate) async fn observe(&self) -> Topology {
        let futs = self
            .nodes
            .iter()
            .map(|(pool, host, port, slot)| async move {
                let mut slot = slot.lock().await;
                let result = tokio::time::timeout(self.timeout, async {
                    if slot.as_ref().is_none_or(|c| c.is_closed()) {
                        *slot = Some(pool.connect().await?);
                    }
                    match slot.as_ref() {
                        Some(c) => probe(c).await.map_err(crate::RouteError::from),
                        None => Err(crate::RouteError::NoPrimary),
                    }
                })
                .await;
                let observed = match result {
                    Ok(Ok(p)) => Some(p),
                    Ok(Err(e)) => {
                        tracing::debug!(node = %pool.name, error = %e, "database probe failed");
                        *slot = None;
                        None
                    }
                    Err(_) => {
                        tracing::debug!(node = %pool.name, "database probe timed out");
                        *slot = None;
                        None
                    }
                };
                (pool.name.clone(), host.clone(), *port, observed)
            });
        let seen = futures_util::future::join_all(futs).await;
        let primary_lsn = {
            let prim: Vec<_> = seen
                .iter()
                .filter_map(|(_, _, _, p)| p.filter(|p| !p.in_recovery))
                .collect();
            if prim.len() == 1 {
                prim[0].lsn
            } else {
                None
            }
        };
        Topology {
            nodes: seen
                .into_iter()
                .map(|(name, host, port, p)| match p {
                    Some(p) => NodeState {
                        name,
                        host,
                        port,
                        role: if p.in_recovery {
                            Role::Replica
                        } else {
                            Role::Primary
                        },
                        timeline: p.timeline,
                        lsn: p.lsn,
                        lag_bytes: if p.in_recovery {
                            match (primary_lsn, p.lsn) {
                                (Some(pl), Some(rl)) => Some(pl.saturating_sub(rl)),
                                _ => None,
                            }
                        } else {
                            Some(0)
                        },
                    },
                    None => NodeState {
                        name,
                        host,
                        port,
                        role: Role::Unavailable,
                        timeline: None,
                        lsn: None,
                        lag_bytes: None,
                    },
                })
                .collect(),
        }
    }
}

/// The db agents' `/cluster` document (see the db agent's HTTP API).
#[derive(Debug, Deserialize)]
pub(crate) struct ClusterDoc {
    #[serde(default)]
    pub members: Vec<MemberDoc>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MemberDoc {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub state: Option<String>,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub timeline: Option<u32>,
    #[serde(default)]
    pub lsn: Option<u64>,
    #[serde(default)]
    pub lag_bytes: Option<u64>,
}

/// Turn a `/cluster` document into a topology (pure).
pub(crate) fn topology_from_cluster(doc: &ClusterDoc) -> Topology {
    topology_from_cluster_members(&doc.members)
}

fn topology_from_cluster_members(members: &[MemberDoc]) -> Topology {
    Topology {
        nodes: members
            .iter()
            .map(|m| {
                let running = m
                    .state
                    .as_deref()
                    .is_none_or(|s| matches!(s, "running" | "streaming"));
                let role = match (m.role.as_str(), running) {
                    ("primary", true) => Role::Primary,
                    ("replica", true) => Role::Replica,
                    _ => Role::Unavailable,
                };
                NodeState {
                    name: m.name.clone(),
                    host: m.host.clone(),
                    port: m.port,
                    role,
                    timeline: m.timeline,
                    lsn: m.lsn,
                    lag_bytes: m.lag_bytes,
                }
            })
            .collect(),
    }
}

/// Polls the db agents' `/cluster` endpoints; the first agent that answers wins.
pub(crate) struct AgentSource {
    urls: Vec<String>,
    client: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl AgentSource {
    pub(crate) fn new(urls: Vec<String>, timeout: Duration) -> Self {
        let client = HttpClient::builder(TokioExecutor::new()).build_http();
        AgentSource {
            urls,
            client,
            timeout,
        }
    }

    pub(crate) async fn observe(&self) -> Option<Topology> {
        for base in &self.urls {
            let url = format!("{}/cluster", base.trim_end_matches('/'));
            match tokio::time::timeout(self.timeout, self.fetch(&url)).await {
                Ok(Ok(doc)) => return Some(topology_from_cluster(&doc)),
                Ok(Err(e)) => tracing::debug!(url = %url, error = %e, "db agent unreachable"),
                Err(_) => tracing::debug!(url = %url, "db agent timed out"),
            }
        }
        None
    }

    async fn fetch(&self, url: &str) -> Result<ClusterDoc, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
        let resp = self.client.get(uri).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("bad /cluster json: {e}"))
    }
}

/// Reads the db agents' member records from etcd (`/rampart/<cluster>/db/members/<node>`,
/// the same JSON as a `/cluster` member) and the leader key. Only the member that holds
/// the leader key counts as primary: a node that still claims the role without the lease
/// (a stale or split-brain record) gets no traffic.
pub(crate) struct EtcdSource {
    endpoints: Vec<String>,
    cluster: String,
    coord: tokio::sync::Mutex<Option<rampart_coord::Coord>>,
}

impl EtcdSource {
    pub(crate) fn new(endpoints: Vec<String>, cluster: String) -> Self {
        EtcdSource {
            endpoints,
            cluster,
            coord: tokio::sync::Mutex::new(None),
        }
    }

    async fn coord(&self) -> Option<rampart_coord::Coord> {
        let mut slot = self.coord.lock().await;
        if slot.is_none() {
            let opts = rampart_coord::CoordOptions::new(self.endpoints.iter().cloned());
            match rampart_coord::Coord::connect(opts).await {
                Ok(c) => *slot = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "etcd unreachable");
                    return None;
                }
            }
        }
        slot.clone()
    }

    fn prefix(&self) -> String {
        format!("/rampart/{}/db/", self.cluster)
    }

    /// One read of the whole prefix (the fallback when the watch is quiet).
    pub(crate) async fn observe(&self) -> Option<Topology> {
        let coord = self.coord().await?;
        match coord.get_prefix(&self.prefix()).await {
            Ok((kvs, _rev)) => Some(topology_from_kvs(&self.prefix(), kvs.iter())),
            Err(e) => {
                tracing::debug!(error = %e, "reading the db members from etcd failed");
                None
            }
        }
    }

    /// Watch the prefix and call `seen` with the topology after every batch of changes,
    /// until `seen` returns false. Reconnection and resync are the watcher's
    /// (`rampart-coord`); starting the watch is retried here with backoff.
    pub(crate) async fn watch(&self, mut seen: impl FnMut(Topology) -> bool) {
        use rampart_coord::WatchEvent;
        let prefix = self.prefix();
        let mut backoff = rampart_coord::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(2),
        );
        loop {
            let rx = match self.coord().await {
                Some(c) => c.watch_prefix(&prefix, 0).await,
                None => Err(rampart_coord::CoordError::Config("no etcd client".into())),
            };
            let mut rx = match rx {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch the db records in etcd; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            let mut view: std::collections::BTreeMap<String, rampart_coord::KeyValue> =
                std::collections::BTreeMap::new();
            while let Some(ev) = rx.recv().await {
                let mut ev = Some(ev);
                // Apply everything already queued, then publish once.
                while let Some(e) = ev.take() {
                    match e {
                        WatchEvent::Resync(kvs) => {
                            view = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                        }
                        WatchEvent::Put(kv) => {
                            view.insert(kv.key.clone(), kv);
                        }
                        WatchEvent::Delete { key, .. } => {
                            view.remove(&key);
                        }
                    }
                    ev = rx.try_recv().ok();
                }
                if !seen(topology_from_kvs(&prefix, view.values())) {
                    return;
                }
            }
            // The watcher gave up (it only does when we stop listening): start again.
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// The topology from the records under `/rampart/<cluster>/db/` (pure).
pub(crate) fn topology_from_kvs<'a>(
    prefix: &str,
    kvs: impl Iterator<Item = &'a rampart_coord::KeyValue>,
) -> Topology {
    let leader_key = format!("{prefix}leader");
    let members_prefix = format!("{prefix}members/");
    let mut leader = None;
    let mut members = Vec::new();
    for kv in kvs {
        if kv.key == leader_key {
            leader = Some(kv.value_str().trim().to_string());
        } else if kv.key.starts_with(&members_prefix) {
            match serde_json::from_slice::<MemberDoc>(&kv.value) {
                Ok(m) => members.push(m),
                Err(e) => tracing::debug!(key = %kv.key, error = %e, "bad member record"),
            }
        }
    }
    topology_from_members(&members, leader.as_deref())
}

/// Members plus the leader key's holder (pure). Only the holder is the primary: a stale
/// record that still says primary gets no traffic. The holder counts as the primary as
/// soon as it holds the key, even while its record still says replica (it is promoting:
/// its agent posts the new role one loop later): writes verify `pg_is_in_recovery()` on
/// every checkout and retry every 50 ms, so they land within one retry of the promotion
/// instead of one agent loop plus one watch/poll later.
pub(crate) fn topology_from_members(members: &[MemberDoc], leader: Option<&str>) -> Topology {
    let mut t = topology_from_cluster_members(members);
    for (n, m) in t.nodes.iter_mut().zip(members) {
        let holder = Some(n.name.as_str()) == leader;
        let pg_up = m.state.as_deref().is_none_or(|s| {
            ["running", "streaming", "not streaming"]
                .iter()
                .any(|up| s.starts_with(up))
        });
        if holder && pg_up && matches!(m.role.as_str(), "primary" | "replica") {
            n.role = Role::Primary;
            n.lag_bytes = Some(0);
        } else if n.role == Role::Primary && !holder {
            n.role = Role::Unavailable;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_doc_maps_roles_and_states() {
        let doc: ClusterDoc = serde_json::from_str(
            r#"{ "cluster": "main", "leader": "db1", "paused": false,
  "members": [
    { "name": "db1", "role": "primary", "state": "running",
      "host": "127.0.0.1", "port": 5433, "api_url": "http://127.0.0.1:8008",
      "timeline": 2, "lsn": 50331744, "lag_bytes": 0, "lag_seconds": 0.0,
      "sync_standby": false, "nofailover": false, "lease_age_seconds": 0.4 },
    { "name": "db2", "role": "replica", "state": "streaming", "host": "127.0.0.1", "port": 5434,
      "api_url": "http://127.0.0.1:8009", "timeline": 2, "lsn": 50331744,
      "lag_bytes": 0, "lag_seconds": 0.0, "sync_standby": true, "nofailover": false,
      "lease_age_seconds": null },
    { "name": "db3", "role": "demoted", "state": "running", "host": "127.0.0.1", "port": 5435 },
    { "name": "db4", "role": "replica", "state": "starting", "host": "127.0.0.1", "port": 5436 } ] }"#,
        )
        .expect("parse");
        let t = topology_from_cluster(&doc);
        let roles: Vec<Role> = t.nodes.iter().map(|n| n.role).collect();
        assert_eq!(
            roles,
            vec![
                Role::Primary,
                Role::Replica,
                Role::Unavailable,
                Role::Unavailable
            ]
        );
        assert_eq!(t.nodes[1].lsn, Some(50331744));
        assert_eq!(t.nodes[1].timeline, Some(2));
        // From etcd: only the leader key's holder is the primary.
        let t = topology_from_members(&doc.members, Some("db1"));
        assert_eq!(t.primary(), Some(0));
        // The new holder, still posting "replica" while it promotes, is the write target
        // (writes verify pg_is_in_recovery()); a demoted or starting holder is not.
        let t = topology_from_members(&doc.members, Some("db2"));
        assert_eq!(t.nodes[0].role, Role::Unavailable);
        assert_eq!(t.primary(), Some(1));
        assert_eq!(
            topology_from_members(&doc.members, Some("db3")).primary(),
            None
        );
        assert_eq!(
            topology_from_members(&doc.members, Some("db4")).primary(),
            None
        );
        assert_eq!(topology_from_members(&doc.members, None).primary(), None);
    }

    #[test]
    fn etcd_records_make_the_topology() {
        let kv = |key: &str, value: &str| rampart_coord::KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let m = |name: &str, role: &str, port: u16| {
            format!(
                r#"{{"name":"{name}","role":"{role}","state":"running","host":"127.0.0.1","port":{port}}}"#
            )
        };
        let p = "/rampart/c/db/";
        let kvs = [
            kv("/rampart/c/db/leader", "db2\n"),
            kv("/rampart/c/db/members/db1", &m("db1", "primary", 1)),
            kv("/rampart/c/db/members/db2", &m("db2", "primary", 2)),
            kv("/rampart/c/db/members/bad", "{not json"),
            kv("/rampart/c/db/sync", "{}"),
        ];
        let t = topology_from_kvs(p, kvs.iter());
        assert_eq!(t.nodes.len(), 2, "{t:?}");
        assert_eq!(t.primary().map(|i| t.nodes[i].port), Some(2));
    }
}
