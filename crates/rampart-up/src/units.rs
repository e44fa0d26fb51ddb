//! `rampart units`: one systemd unit per node of a topology, for running the same topology
//! file across machines (pure: the binary writes the files).
//!
//! Each node runs as `rampart <role> --config FILE --node NAME` (etcd members run etcd with
//! the flags [`crate::plan`] gives them, the same as under `rampart up`). The units written
//! together are taken to be one machine's: each starts after the units of the roles it
//! needs among them (db after etcd, web after db, lb after web, the monitor last); a role
//! on another machine is reached over the network and needs no ordering.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use rampart_topology::{NodeKind, Topology};

use crate::plan::{plan, ProcSpec, Tools};

/// Why no units could be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitsError {
    #[error("no node \"{name}\" in the topology; known: {}", known.join(", "))]
    UnknownNode { name: String, known: Vec<String> },
    #[error("{what} {value:?} cannot go into a systemd unit ({why})")]
    Unrepresentable {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

/// What [`render`] needs besides the topology.
#[derive(Debug, Clone)]
pub struct UnitOptions<'a> {
    /// The rampart binary on the machines (absolute).
    pub bin: &'a Path,
    /// etcd's binary on the machines (absolute).
    pub etcd: &'a Path,
    /// The topology file on the machines (absolute): every role reads it.
    pub config: &'a Path,
    /// Where `rampart up` would keep data (etcd members' data when `[etcd] data_dir` is unset).
    pub data_dir: &'a Path,
    /// The nodes to write units for; empty: every node.
    pub nodes: &'a [String],
    /// `User=`; `None` runs as root.
    pub user: Option<&'a str>,
}

/// One unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The file name, e.g. `rampart-web-web1.service`.
    pub file_name: String,
    pub node: String,
    pub kind: NodeKind,
    pub text: String,
}

/// Secrets (`token_env`, `password_env`) come from this optional file, one `NAME=value` a line.
pub fn environment_file(cluster: &str) -> String {
    format!("/etc/rampart/{cluster}.env")
}

/// The unit's file name for a node.
pub fn file_name(kind: NodeKind, node: &str) -> String {
    match kind {
        NodeKind::Monitor => "rampart-monitor.service".to_string(),
        k => format!("rampart-{k}-{node}.service"),
    }
}

/// Stop time added to a role's own worst case before systemd kills it.
const STOP_MARGIN: Duration = Duration::from_secs(15);
/// Open files: at least this; an lb gets two per allowed client connection on top.
const NOFILE: usize = 65536;

/// Render the units of `o.nodes` (all when empty), in start order: etcd, db, web, lb, monitor.
pub fn render(t: &Topology, o: &UnitOptions<'_>) -> Result<Vec<Unit>, UnitsError> {
    let all = t.nodes();
    for n in o.nodes {
        if !all.iter().any(|a| &a.name == n) {
            return Err(UnitsError::UnknownNode {
                name: n.clone(),
                known: all.iter().map(|a| a.name.clone()).collect(),
            });
        }
    }
    let chosen = |name: &str| o.nodes.is_empty() || o.nodes.iter().any(|n| n == name);
    let has_role = |_: NodeKind| true;
    let p = plan(
        t,
        o.config,
        o.data_dir,
        &Tools {
            rampart: o.bin,
            etcd: o.etcd,
            has_role: &has_role,
        },
    );
    let procs: Vec<&ProcSpec> = p.procs.iter().filter(|s| chosen(&s.name)).collect();
    let folder = o.config.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for s in &procs {
        // Every unit written here of a role this one needs.
        let after: Vec<String> = procs
            .iter()
            .filter(|d| needs(s.kind, d.kind))
            .map(|d| file_name(d.kind, &d.name))
            .collect();
        let mut text = String::new();
        let _ = writeln!(
            text,
            "# Written by `rampart units` from {} (cluster {}): {} node {}.\n\
             # Change the topology and write the units again rather than editing this file.",
            o.config.display(),
            t.cluster,
            s.kind,
            s.name
        );
        let _ = writeln!(text, "\n[Unit]");
        let _ = writeln!(
            text,
            "Description=rampart {} {} (cluster {})",
            s.kind, s.name, t.cluster
        );
        let _ = writeln!(text, "Wants=network-online.target");
        let _ = writeln!(text, "After=network-online.target");
        for a in &after {
            let _ = writeln!(text, "After={a}");
        }
        let _ = writeln!(text, "\n[Service]");
        let _ = writeln!(text, "Type=exec");
        if let Some(u) = o.user {
            let _ = writeln!(text, "User={}", plain("User", u)?);
        }
        let _ = writeln!(text, "WorkingDirectory={}", path_value(folder)?);
        let _ = writeln!(
            text,
            "EnvironmentFile=-{}",
            path_value(Path::new(&environment_file(&t.cluster)))?
        );
        let mut exec = vec![arg(&s.program.display().to_string())?];
        for a in &s.args {
            exec.push(arg(a)?);
        }
        let _ = writeln!(text, "ExecStart={}", exec.join(" "));
        if s.kind != NodeKind::Etcd {
            // `systemctl reload`: every rampart role re-reads what it can on SIGHUP (the
            // topology for lb, db and monitor; its certificate for web), as Patroni's unit.
            let _ = writeln!(text, "ExecReload=/bin/kill -HUP $MAINPID");
        }
        let mut stop = s.grace;
        let mut nofile = NOFILE;
        if s.kind == NodeKind::Lb {
            if let Some((lb, node)) = t.lb.as_ref().and_then(|l| Some((l, l.node(&s.name)?))) {
                let c = lb.node_config(node);
                // The drain, after the virtual routers' hand-over (3 adverts + 1 s each,
                // all at once).
                let handover = c
                    .vrrp
                    .iter()
                    .map(|v| v.advert_interval * 3 + Duration::from_secs(1))
                    .max()
                    .unwrap_or_default();
                stop = c.grace + handover;
                nofile = nofile.max(c.max_connections.saturating_mul(2).saturating_add(1024));
                // A balancer that dies without stopping leaves its virtual IPs to its
                // guard, which the stop's SIGKILL may reach first: remove them after
                // any end (the guard with no input removes them at once).
                let mut by_iface: Vec<(&str, Vec<String>)> = Vec::new();
                for v in &c.vrrp {
                    let addrs = v.addresses.iter().map(|a| a.to_string());
                    match by_iface.iter_mut().find(|(i, _)| *i == v.interface) {
                        Some((_, list)) => list.extend(addrs),
                        None => by_iface.push((&v.interface, addrs.collect())),
                    }
                }
                for (iface, addrs) in by_iface {
                    let mut post = vec![
                        arg(&o.bin.display().to_string())?,
                        "lb".into(),
                        "vip-guard".into(),
                        "--interface".into(),
                        arg(iface)?,
                    ];
                    for a in addrs {
                        post.push("--address".into());
                        post.push(arg(&a)?);
                    }
                    let _ = writeln!(text, "ExecStopPost=-{}", post.join(" "));
                }
            }
        }
        let _ = writeln!(text, "Restart=on-failure");
        let _ = writeln!(text, "RestartSec=1");
        // SIGTERM to the role only (it stops what it started: PostgreSQL, its drain), the
        // rest of the unit's processes killed only after the timeout.
        let _ = writeln!(text, "KillMode=mixed");
        let _ = writeln!(
            text,
            "TimeoutStopSec={}",
            (stop + STOP_MARGIN).as_secs_f64().ceil() as u64
        );
        let _ = writeln!(text, "LimitNOFILE={nofile}");
        if s.kind == NodeKind::Lb && o.user.is_some_and(|u| u != "root") {
            // VRRP: raw socket (adverts), netlink (the addresses), ARP; and ports below 1024.
            let caps = "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE";
            let _ = writeln!(text, "AmbientCapabilities={caps}");
            let _ = writeln!(text, "CapabilityBoundingSet={caps}");
        }
        let _ = writeln!(text, "\n[Install]\nWantedBy=multi-user.target");
        out.push(Unit {
            file_name: file_name(s.kind, &s.name),
            node: s.name.clone(),
            kind: s.kind,
            text,
        });
    }
    Ok(out)
}

/// Whether a node of kind `a` starts after one of kind `b` on the same machine.
fn needs(a: NodeKind, b: NodeKind) -> bool {
    let rank = |k| match k {
        NodeKind::Etcd => 0,
        NodeKind::Db => 1,
        NodeKind::Web => 2,
        NodeKind::Lb => 3,
        NodeKind::Monitor => 4,
    };
    rank(b) < rank(a)
}

fn refuse(what: &'static str, v: &str, why: &'static str) -> UnitsError {
    UnitsError::Unrepresentable {
        what,
        value: v.to_string(),
        why,
    }
}

/// A value systemd takes literally but for its `%` specifiers.
fn plain(what: &'static str, v: &str) -> Result<String, UnitsError> {
    if v.is_empty() || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refuse(what, v, "empty, blank or control characters"));
    }
    Ok(v.replace('%', "%%"))
}

fn path_value(p: &Path) -> Result<String, UnitsError> {
    let s = p.display().to_string();
    if !p.is_absolute() || s.chars().any(char::is_control) {
        return Err(refuse("path", &s, "not absolute, or control characters"));
    }
    Ok(s.replace('%', "%%"))
}

/// One word of a command line: `%` and `$` escaped (specifiers, variables), quoted when it
/// holds blanks, quotes or backslashes.
fn arg(v: &str) -> Result<String, UnitsError> {
    if v.chars().any(char::is_control) {
        return Err(refuse("argument", v, "control characters"));
    }
    let v = v.replace('%', "%%").replace('$', "$$");
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || "\"'\\;".contains(c)) {
        let mut q = String::from("\"");
        for c in v.chars() {
            if c == '"' || c == '\\' {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        Ok(q)
    } else {
        Ok(v)
    }
}

/// Every unit of `units` in a set, for the `systemctl enable --now` line.
pub fn names(units: &[Unit]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    units
        .iter()
        .filter(|u| seen.insert(u.file_name.clone()))
        .map(|u| u.file_name.clone())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_topology::default::{render as default_topology, DefaultOptions};
    use rampart_topology::Source;
    use std::path::PathBuf;

    fn topology(dir: &Path) -> Topology {
        std::fs::create_dir_all(dir.join("site")).unwrap();
        let file = dir.join("rampart.toml");
        let text = default_topology(&DefaultOptions {
            cluster: "main",
            data_dir: &dir.join("data"),
            port_base: 8000,
        });
        Topology::from_source(&Source::new(&file, text)).unwrap()
    }

    fn opts<'a>(config: &'a Path, nodes: &'a [String], user: Option<&'a str>) -> UnitOptions<'a> {
        UnitOptions {
            bin: Path::new("/usr/local/bin/rampart"),
            etcd: Path::new("/usr/bin/etcd"),
            config,
            data_dir: Path::new("/var/lib/rampart"),
            nodes,
            user,
        }
    }

    fn line<'a>(u: &'a Unit, key: &str) -> Vec<&'a str> {
        u.text
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    }

    #[test]
    fn every_node_of_the_default_topology_gets_a_unit_running_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let t = topology(dir.path());
        let config = dir.path().join("rampart.toml");
        let units = render(&t, &opts(&config, &[], None)).unwrap();
        let nodes: Vec<String> = t.nodes().into_iter().map(|n| n.name).collect();
        assert_eq!(
            units.iter().map(|u| u.node.clone()).collect::<Vec<_>>(),
            nodes
        );
        let files: Vec<&str> = units.iter().map(|u| u.file_name.as_str()).collect();
        assert_eq!(
            files,
            [
                "rampart-etcd-etcd1.service",
                "rampart-etcd-etcd2.service",
                "rampart-etcd-etcd3.service",
                "rampart-db-db1.service",
                "rampart-db-db2.service",
                "rampart-db-db3.service",
                "rampart-web-web1.service",
                "rampart-web-web2.service",
                "rampart-web-web3.service",
                "rampart-lb-lb1.service",
                "rampart-lb-lb2.service",
                "rampart-monitor.service",
            ]
        );
        for u in &units {
            let exec = line(u, "ExecStart");
            assert_eq!(exec.len(), 1, "{}", u.text);
            if u.kind == NodeKind::Etcd {
                assert!(exec[0].starts_with("/usr/bin/etcd --name "), "{}", u.text);
                assert!(exec[0].contains(&format!("--name {} ", u.node)));
                assert!(exec[0].contains(&format!(
                    "--data-dir {}",
                    dir.path().join("data/etcd").join(&u.node).display()
                )));
                assert!(exec[0].contains("--initial-cluster etcd1=http://127.0.0.1:8402,"));
            } else {
                assert_eq!(
                    exec[0],
                    format!(
                        "/usr/local/bin/rampart {} --config {} --node {}",
                        u.kind,
                        config.display(),
                        u.node
                    )
                );
            }
            assert_eq!(line(u, "Restart"), ["on-failure"]);
            assert_eq!(line(u, "RestartSec"), ["1"]);
            assert_eq!(line(u, "KillMode"), ["mixed"]);
            if u.kind == NodeKind::Etcd {
                assert_eq!(line(u, "ExecReload"), Vec::<&str>::new());
            } else {
                assert_eq!(line(u, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
            }
            assert_eq!(line(u, "Wants"), ["network-online.target"]);
            assert_eq!(line(u, "User"), Vec::<&str>::new());
            assert_eq!(line(u, "AmbientCapabilities"), Vec::<&str>::new());
            assert_eq!(line(u, "WantedBy"), ["multi-user.target"]);
            assert!(line(u, "LimitNOFILE")[0].parse::<u64>().unwrap() >= 65536);
        }
        let by = |f: &str| units.iter().find(|u| u.file_name == f).unwrap();
        let after = |f: &str| line(by(f), "After");
        assert_eq!(
            after("rampart-etcd-etcd2.service"),
            ["network-online.target"]
        );
        assert!(after("rampart-db-db1.service").contains(&"rampart-etcd-etcd3.service"));
        assert!(!after("rampart-db-db1.service").contains(&"rampart-db-db2.service"));
        assert!(after("rampart-web-web1.service").contains(&"rampart-db-db1.service"));
        assert!(after("rampart-lb-lb1.service").contains(&"rampart-web-web3.service"));
        assert!(!after("rampart-lb-lb1.service").contains(&"rampart-lb-lb2.service"));
        assert!(after("rampart-monitor.service").contains(&"rampart-lb-lb2.service"));
        // The lb's stop waits for its drain (30 s by default).
        let lb_stop: u64 = line(by("rampart-lb-lb1.service"), "TimeoutStopSec")[0]
            .parse()
            .unwrap();
        assert!(lb_stop > 30, "{lb_stop}");
    }

    #[test]
    fn an_unknown_node_is_an_error_naming_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let t = topology(dir.path());
        let config = dir.path().join("rampart.toml");
        let nodes = vec!["web1".to_string(), "web7".to_string()];
        let e = render(&t, &opts(&config, &nodes, None)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("no node \"web7\" in the topology; known: etcd1, etcd2, etcd3, db1,"),
            "{msg}"
        );
        assert!(msg.contains("lb2, monitor"), "{msg}");
    }

    #[test]
    fn one_machine_orders_only_its_own_units_and_an_lb_user_gets_the_network_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let t = topology(dir.path());
        let config = dir.path().join("rampart.toml");
        let nodes = vec!["lb1".to_string(), "web2".to_string()];
        let units = render(&t, &opts(&config, &nodes, Some("rampart"))).unwrap();
        assert_eq!(
            names(&units),
            ["rampart-web-web2.service", "rampart-lb-lb1.service"]
        );
        let web = &units[0];
        assert_eq!(web.node, "web2");
        assert_eq!(line(web, "After"), ["network-online.target"]);
        assert_eq!(line(web, "User"), ["rampart"]);
        assert_eq!(line(web, "AmbientCapabilities"), Vec::<&str>::new());
        let lb = &units[1];
        assert_eq!(
            line(lb, "After"),
            ["network-online.target", "rampart-web-web2.service"]
        );
        assert_eq!(
            line(lb, "AmbientCapabilities"),
            ["CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"]
        );
        // As root nothing is added.
        let root = render(&t, &opts(&config, &nodes, Some("root"))).unwrap();
        assert_eq!(line(&root[1], "AmbientCapabilities"), Vec::<&str>::new());
    }

    #[test]
    fn a_balancer_with_virtual_ips_waits_for_the_handover_and_removes_them_after_any_end() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("site")).unwrap();
        let file = dir.path().join("rampart.toml");
        let text = default_topology(&DefaultOptions {
            cluster: "main",
            data_dir: &dir.path().join("data"),
            port_base: 8000,
        }) + "\n[[lb.vip]]\naddress = \"10.0.0.51/24\"\ninterface = \"eth1\"\nadvert_interval = \"2s\"\n";
        let t = match Topology::from_source(&Source::new(&file, text)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIPPED: this topology has no [[lb.vip]]: {e}");
                return;
            }
        };
        let nodes = vec!["lb1".to_string(), "web1".to_string()];
        let units = render(&t, &opts(&file, &nodes, None)).unwrap();
        let lb = &units[1];
        assert_eq!(
            line(lb, "ExecStopPost"),
            ["-/usr/local/bin/rampart lb vip-guard --interface eth1 --address 10.0.0.51/24"]
        );
        // 30 s of drain after 3 adverts + 1 s of hand-over, and the margin.
        let stop: u64 = line(lb, "TimeoutStopSec")[0].parse().unwrap();
        assert_eq!(stop, 30 + 7 + 15);
        assert_eq!(line(&units[0], "ExecStopPost"), Vec::<&str>::new());
    }

    #[test]
    fn command_words_are_escaped_for_systemd() {
        assert_eq!(arg("/a/b").unwrap(), "/a/b");
        assert_eq!(arg("a b").unwrap(), "\"a b\"");
        assert_eq!(arg("50%$x").unwrap(), "50%%$$x");
        assert_eq!(arg("q\"\\").unwrap(), "\"q\\\"\\\\\"");
        assert!(arg("a\nb").is_err());
        assert!(path_value(&PathBuf::from("rel/x")).is_err());
        assert_eq!(
            file_name(NodeKind::Monitor, "mon"),
            "rampart-monitor.service"
        );
    }
}
