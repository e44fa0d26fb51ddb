//! What the monitor scrapes, from the topology (pure).

use std::net::SocketAddr;

use rampart_topology::Topology;
use serde::Serialize;

/// How a target is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `GET path` returns Prometheus text.
    Metrics,
    /// `GET path` answering 200 is all there is (no metrics endpoint).
    Probe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// `etcd`, `db`, `web`, `lb`, `monitor`.
    pub job: String,
    /// The node's name in the topology.
    pub instance: String,
    pub addr: SocketAddr,
    pub path: String,
    pub mode: Mode,
    /// Sent as `Authorization: Bearer` (an lb admin's token); never shown.
    #[serde(skip)]
    pub bearer: Option<String>,
}

impl Target {
    fn new(job: &str, instance: &str, addr: SocketAddr, path: &str, mode: Mode) -> Target {
        Target {
            job: job.into(),
            instance: instance.into(),
            addr,
            path: path.into(),
            mode,
            bearer: None,
        }
    }

    /// An lb node's admin `/metrics`, read with its token when it has one.
    pub fn lb_admin(node: &str, admin: SocketAddr, token: Option<String>) -> Target {
        Target {
            bearer: token,
            ..Target::new("lb", node, admin, "/metrics", Mode::Metrics)
        }
    }

    /// Metric families kept from this target (exporters like etcd's expose hundreds;
    /// a monitor on a small machine keeps what its rules and dashboard use).
    pub fn keeps(&self, name: &str) -> bool {
        match self.job.as_str() {
            "etcd" => {
                name.starts_with("etcd_server_")
                    || name == "etcd_mvcc_db_total_size_in_bytes"
                    || name == "process_resident_memory_bytes"
            }
            _ => true,
        }
    }
}

/// Every node of the topology as a scrape target (the monitor itself excluded).
pub fn targets(t: &Topology) -> Vec<Target> {
    let mut out = Vec::new();
    for m in t.etcd.iter().flat_map(|e| &e.members) {
        out.push(Target::new(
            "etcd",
            &m.name,
            m.client,
            "/metrics",
            Mode::Metrics,
        ));
    }
    for n in t.db.iter().flat_map(|d| &d.nodes) {
        out.push(Target::new("db", &n.name, n.api, "/metrics", Mode::Metrics));
    }
    for w in &t.web {
        out.push(Target::new(
            "web",
            &w.name,
            w.listen,
            "/metrics",
            Mode::Metrics,
        ));
    }
    for n in t.lb.iter().flat_map(|l| &l.nodes) {
        out.push(lb_target(n));
    }
    out
}

/// An lb node: `/metrics` of its admin listener when the topology gives it one (`[[lb.nodes]]
/// admin`), else a probe of its own entry (`/healthz` through the pool).
fn lb_target(n: &rampart_topology::lb_section::LbNode) -> Target {
    match n.admin {
        Some(admin) => Target::lb_admin(&n.name, admin, None),
        None => Target::new("lb", &n.name, n.address, "/healthz", Mode::Probe),
    }
}

/// Where the db cluster's view (`/cluster`) can be read: every agent, in order.
pub fn db_agents(t: &Topology) -> Vec<SocketAddr> {
    t.db.iter().flat_map(|d| &d.nodes).map(|n| n.api).collect()
}
