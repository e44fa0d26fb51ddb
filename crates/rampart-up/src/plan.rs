//! What `rampart up` runs for a topology (pure: no I/O).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_topology::{NodeKind, Topology};

/// How to tell that a node is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// etcd's `/health` says `"health":"true"` (the member sees a leader).
    Etcd(SocketAddr),
    /// An HTTP GET answers 200.
    Http { addr: SocketAddr, path: String },
}

/// One process to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSpec {
    pub name: String,
    pub kind: NodeKind,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub probe: Probe,
    /// Time allowed to stop after SIGTERM before SIGKILL.
    pub grace: Duration,
    /// A file the supervisor writes before starting (path, contents).
    pub file: Option<(PathBuf, String)>,
    /// The network namespace (host) it runs in, in the separate-hosts rehearsal.
    pub netns: Option<String>,
}

/// A node of the topology that this binary cannot run (its role is not built yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub name: String,
    pub kind: NodeKind,
    pub why: String,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// In start order: etcd, db, web, lb.
    pub procs: Vec<ProcSpec>,
    pub unavailable: Vec<Unavailable>,
}

/// Inputs of [`plan`] found on the machine.
#[derive(Clone)]
pub struct Tools<'a> {
    pub rampart: &'a Path,
    pub etcd: &'a Path,
    /// Roles (`rampart <role>`) this binary has.
    pub has_role: &'a dyn Fn(NodeKind) -> bool,
}

pub fn plan(t: &Topology, topology_file: &Path, data_dir: &Path, tools: &Tools<'_>) -> Plan {
    let mut p = Plan::default();
    let rampart = tools.rampart.to_path_buf();
    let cfg = topology_file.display().to_string();
    let add_role = |p: &mut Plan, kind: NodeKind, name: &str, spec: ProcSpec| {
        if (tools.has_role)(kind) {
            p.procs.push(spec);
        } else {
            p.unavailable.push(Unavailable {
                name: name.to_string(),
                kind,
                why: format!("this rampart binary has no `rampart {kind}` role yet"),
            });
        }
    };
    if let Some(e) = &t.etcd {
        let base = e.data_dir.clone().unwrap_or_else(|| data_dir.join("etcd"));
        for m in &e.members {
            let args = vec![
                "--name".into(),
                m.name.clone(),
                "--data-dir".into(),
                base.join(&m.name).display().to_string(),
                "--listen-client-urls".into(),
                m.client_url(),
                "--advertise-client-urls".into(),
                m.client_url(),
                "--listen-peer-urls".into(),
                m.peer_url(),
                "--initial-advertise-peer-urls".into(),
                m.peer_url(),
                "--initial-cluster".into(),
                e.initial_cluster(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                format!("rampart-{}", t.cluster),
                "--heartbeat-interval".into(),
                e.heartbeat_ms.to_string(),
                "--election-timeout".into(),
                e.election_ms.to_string(),
                "--logger".into(),
                "zap".into(),
                "--log-outputs".into(),
                "stderr".into(),
            ];
            p.procs.push(ProcSpec {
                name: m.name.clone(),
                kind: NodeKind::Etcd,
                program: tools.etcd.to_path_buf(),
                args,
                probe: Probe::Etcd(m.client),
                grace: Duration::from_secs(5),
                file: None,
                netns: None,
            });
        }
    }
    for n in t.db.iter().flat_map(|d| &d.nodes) {
        let spec = ProcSpec {
            name: n.name.clone(),
            kind: NodeKind::Db,
            program: rampart.clone(),
            args: vec![
                "db".into(),
                "--config".into(),
                cfg.clone(),
                "--node".into(),
                n.name.clone(),
            ],
            probe: Probe::Http {
                addr: n.api,
                path: "/health".into(),
            },
            grace: Duration::from_secs(15),
            file: None,
            netns: None,
        };
        add_role(&mut p, NodeKind::Db, &n.name, spec);
    }
    for w in &t.web {
        let spec = ProcSpec {
            name: w.name.clone(),
            kind: NodeKind::Web,
            program: rampart.clone(),
            args: vec![
                "web".into(),
                "--config".into(),
                cfg.clone(),
                "--node".into(),
                w.name.clone(),
            ],
            probe: Probe::Http {
                addr: w.listen,
                path: "/readyz".into(),
            },
            grace: Duration::from_secs(10),
            file: None,
            netns: None,
        };
        add_role(&mut p, NodeKind::Web, &w.name, spec);
    }
    if let Some(lb) = &t.lb {
        for n in &lb.nodes {
            let spec = ProcSpec {
                name: n.name.clone(),
                kind: NodeKind::Lb,
                program: rampart.clone(),
                // The node's threads and admin address come from its [[lb.nodes]] entry.
                args: vec![
                    "lb".into(),
                    "--config".into(),
                    cfg.clone(),
                    "--node".into(),
                    n.name.clone(),
                ],
                // Through the node's own entry to the site's pool: healthy when it forwards.
                probe: Probe::Http {
                    addr: n.address,
                    path: "/healthz".into(),
                },
                grace: Duration::from_secs(5),
                file: None,
                netns: None,
            };
            add_role(&mut p, NodeKind::Lb, &n.name, spec);
        }
    }
    if let Some(m) = &t.monitor {
        let spec = ProcSpec {
            name: m.name.clone(),
            kind: NodeKind::Monitor,
            program: rampart.clone(),
            args: vec![
                "monitor".into(),
                "--config".into(),
                cfg.clone(),
                "--node".into(),
                m.name.clone(),
            ],
            probe: Probe::Http {
                addr: m.listen,
                path: "/healthz".into(),
            },
            grace: Duration::from_secs(5),
            file: None,
            netns: None,
        };
        add_role(&mut p, NodeKind::Monitor, &m.name, spec);
    }
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_topology::default::{render, DefaultOptions, DB_PASSWORD_ENV};
    use rampart_topology::Source;

    #[test]
    fn default_topology_plans_every_role_in_dependency_order() {
        std::env::set_var(DB_PASSWORD_ENV, "x");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("site")).unwrap();
        let file = dir.path().join("t.toml");
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: dir.path(),
            port_base: 8000,
        });
        let t = Topology::from_source(&Source::new(&file, text)).unwrap();
        let no_monitor = |k: NodeKind| k != NodeKind::Monitor;
        let p = plan(
            &t,
            &file,
            dir.path(),
            &Tools {
                rampart: Path::new("/r"),
                etcd: Path::new("/e"),
                has_role: &no_monitor,
            },
        );
        let kinds: Vec<NodeKind> = p.procs.iter().map(|s| s.kind).collect();
        use NodeKind::*;
        assert_eq!(
            kinds,
            vec![Etcd, Etcd, Etcd, Db, Db, Db, Web, Web, Web, Lb, Lb]
        );
        assert_eq!(p.unavailable.len(), 1);
        assert_eq!(p.unavailable[0].kind, Monitor);
        let etcd1 = &p.procs[0];
        assert!(etcd1.args.join(" ").contains("--initial-cluster etcd1=http://127.0.0.1:8402,etcd2=http://127.0.0.1:8404,etcd3=http://127.0.0.1:8406"));
        let lb1 = &p.procs[9];
        assert_eq!(
            lb1.args,
            vec![
                "lb",
                "--config",
                &file.display().to_string(),
                "--node",
                "lb1"
            ]
        );
    }
}
