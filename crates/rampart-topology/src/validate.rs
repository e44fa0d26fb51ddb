//! The whole topology, validated: every section through its own validator, then the
//! rules that span sections. Every problem is reported, each with `file:line:col`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::db::DbConfig;
use crate::diag::{ConfigError, Diagnostic, Source};
use crate::etcd::EtcdConfig;
use crate::lb_section::LbTopology;
use crate::monitor::MonitorConfig;
use crate::security::{FirewallConfig, TlsConfig};
use crate::topology::TopologyFile;
use crate::web::WebConfig;

/// A whole, valid topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The file it was read from (roles are started with `--config <file>`).
    pub file: PathBuf,
    pub cluster: String,
    /// `[cluster] etcd`: the endpoints every role connects to.
    pub etcd_endpoints: Vec<String>,
    pub etcd: Option<EtcdConfig>,
    pub lb: Option<LbTopology>,
    pub web: Vec<WebConfig>,
    pub db: Option<DbConfig>,
    pub monitor: Option<MonitorConfig>,
    pub tls: Option<TlsConfig>,
    pub firewall: Option<FirewallConfig>,
    /// `[hosts]`: the separate-hosts rehearsal's subnet when `mode = "netns"`.
    pub hosts: Option<std::net::Ipv4Addr>,
}

/// What a node of the topology is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    Etcd,
    Db,
    Web,
    Lb,
    Monitor,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Etcd => "etcd",
            NodeKind::Db => "db",
            NodeKind::Web => "web",
            NodeKind::Lb => "lb",
            NodeKind::Monitor => "monitor",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node of the topology: a process `rampart up` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// The node's main address (lb: its own entry; db: PostgreSQL; etcd: client).
    pub address: String,
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let src = Source::read(path)?;
        Topology::from_source(&src)
    }

    /// Parse and validate a whole topology file.
    pub fn from_source(src: &Source) -> Result<Topology, ConfigError> {
        let file = TopologyFile::parse(src)?;
        Topology::validate(src, &file)
    }

    pub fn validate(src: &Source, file: &TopologyFile) -> Result<Topology, ConfigError> {
        let mut errs: Vec<Diagnostic> = Vec::new();
        let cluster = file.cluster.name.get_ref().clone();
        if cluster.is_empty()
            || !cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(src.error_at(
                file.cluster.name.span(),
                "cluster name must be non-empty and use only letters, digits, '-' and '_'",
            ));
        }
        for e in &file.cluster.etcd {
            let v = e.get_ref();
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                errs.push(src.error_at(
                    e.span(),
                    format!("etcd endpoint \"{v}\" must start with http:// or https://"),
                ));
            }
        }
        let etcd = file
            .etcd
            .as_ref()
            .and_then(|s| crate::etcd::validate(src, s, &mut errs));
        let lb = file.lb.as_ref().and_then(|s| {
            let redirect = crate::lb_section::redirect_http(file);
            let upstream = crate::lb_section::web_upstream(src, file);
            crate::lb_section::validate(src, s, redirect, upstream.as_ref(), &mut errs)
        });
        let db = match &file.db {
            None => None,
            Some(_) => match DbConfig::validate(src, file) {
                Ok(c) => Some(c),
                Err(e) => {
                    errs.extend(e.diagnostics);
                    None
                }
            },
        };
        let mut web = Vec::new();
        if let Some(w) = &file.web {
            if w.node.is_empty() {
                errs.push(src.error("[web] needs at least one [[web.node]] entry"));
            }
            for n in &w.node {
                match WebConfig::from_source(src, n.name.get_ref()) {
                    Ok(c) => web.push(c),
                    Err(e) => errs.extend(e.diagnostics),
                }
            }
        }
        let monitor = file
            .monitor
            .as_ref()
            .and_then(|s| crate::monitor::validate(src, s, &mut errs));
        let tls = file
            .tls
            .as_ref()
            .and_then(|s| crate::security::validate_tls(src, &cluster, s, &mut errs));
        let hosts = file
            .hosts
            .as_ref()
            .and_then(|h| crate::hosts::validate(src, h, &mut errs));
        let firewall = file
            .firewall
            .as_ref()
            .and_then(|s| crate::security::validate_firewall(src, s, &mut errs));

        cross_checks(src, file, &mut errs);

        // Sections re-validated per node (web) report shared problems once.
        let mut seen = HashSet::new();
        errs.retain(|d| seen.insert((d.line, d.col, d.message.clone())));
        // Two rules on one spot (a section's own and a cross-section one): keep the first.
        let mut at = HashSet::new();
        errs.retain(|d| d.line == 0 || at.insert((d.line, d.col)));
        // In file order (sections validated for several roles, e.g. [tls] for lb and db,
        // report in the order of the file); errors without a position last.
        errs.sort_by_key(|d| (d.line == 0, d.line, d.col));
        if !errs.is_empty() {
            return Err(ConfigError { diagnostics: errs });
        }
        Ok(Topology {
            file: src.file.clone(),
            cluster,
            etcd_endpoints: file
                .cluster
                .etcd
                .iter()
                .map(|e| e.get_ref().clone())
                .collect(),
            etcd,
            lb,
            web,
            db,
            monitor,
            tls,
            firewall,
            hosts,
        })
    }

    /// Every node, in start order: etcd, db, web, lb, monitor.
    pub fn nodes(&self) -> Vec<Node> {
        let mut out = Vec::new();
        for m in self.etcd.iter().flat_map(|e| &e.members) {
            out.push(Node {
                name: m.name.clone(),
                kind: NodeKind::Etcd,
                address: m.client.to_string(),
            });
        }
        for n in self.db.iter().flat_map(|d| &d.nodes) {
            out.push(Node {
                name: n.name.clone(),
                kind: NodeKind::Db,
                address: format!("{}:{}", n.host, n.port),
            });
        }
        for w in &self.web {
            out.push(Node {
                name: w.name.clone(),
                kind: NodeKind::Web,
                address: w.listen.to_string(),
            });
        }
        for n in self.lb.iter().flat_map(|l| &l.nodes) {
            out.push(Node {
                name: n.name.clone(),
                kind: NodeKind::Lb,
                address: n.address.to_string(),
            });
        }
        if let Some(m) = &self.monitor {
            out.push(Node {
                name: m.name.clone(),
                kind: NodeKind::Monitor,
                address: m.listen.to_string(),
            });
        }
        out
    }

    /// The addresses the site is served on (the lb listeners: virtual addresses).
    pub fn site_addresses(&self) -> Vec<SocketAddr> {
        self.lb
            .iter()
            .flat_map(|l| l.config.listeners.iter())
            .filter(|l| l.mode == crate::lb::Mode::Http)
            .map(|l| l.address)
            .collect()
    }
}

/// An address a node binds, for the port-clash rule.
struct Bound {
    host: String,
    port: u16,
    span: Range<usize>,
    owner: String,
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some((a.ip().to_string(), a.port()));
    }
    let (h, p) = s.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

fn is_wildcard(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

fn hosts_overlap(a: &str, b: &str) -> bool {
    a == b || is_wildcard(a) || is_wildcard(b)
}

fn cross_checks(src: &Source, file: &TopologyFile, errs: &mut Vec<Diagnostic>) {
    // ---- names unique across roles -------------------------------------------------
    let mut names: Vec<(String, Range<usize>, String)> = Vec::new();
    if let Some(e) = &file.etcd {
        for m in &e.members {
            let m = m.get_ref();
            names.push((
                m.name.get_ref().clone(),
                m.name.span(),
                "etcd member".into(),
            ));
        }
    }
    if let Some(d) = &file.db {
        for n in &d.nodes {
            let n = n.get_ref();
            names.push((n.name.get_ref().clone(), n.name.span(), "db node".into()));
        }
    }
    if let Some(w) = &file.web {
        for n in &w.node {
            names.push((n.name.get_ref().clone(), n.name.span(), "web node".into()));
        }
    }
    if let Some(l) = &file.lb {
        for n in &l.nodes {
            let n = n.get_ref();
            names.push((n.name.get_ref().clone(), n.name.span(), "lb node".into()));
        }
    }
    if let Some(m) = &file.monitor {
        let (n, span) = match &m.name {
            Some(n) => (n.get_ref().clone(), n.span()),
            None => ("monitor".to_string(), m.listen.span()),
        };
        names.push((n, span, "monitor".into()));
    }
    for (i, (name, span, what)) in names.iter().enumerate() {
        if let Some((_, first, first_what)) = names[..i].iter().find(|(n, _, _)| n == name) {
            let (l, c) = src.position(first.start);
            errs.push(src.error_at(
                span.clone(),
                format!(
                    "{what} name \"{name}\" is already used by the {first_what} at {l}:{c}; node names are unique across roles"
                ),
            ));
        }
    }

    // ---- addresses and ports unique across roles -----------------------------------
    let mut bound: Vec<Bound> = Vec::new();
    let mut push = |v: &toml::Spanned<String>, owner: String| {
        if let Some((host, port)) = split_host_port(v.get_ref()) {
            bound.push(Bound {
                host,
                port,
                span: v.span(),
                owner,
            });
        }
    };
    if let Some(e) = &file.etcd {
        for m in &e.members {
            let m = m.get_ref();
            push(
                &m.client,
                format!("etcd member {} (client)", m.name.get_ref()),
            );
            push(&m.peer, format!("etcd member {} (peer)", m.name.get_ref()));
        }
    }
    if let Some(d) = &file.db {
        for n in &d.nodes {
            let n = n.get_ref();
            let host = n
                .host
                .as_ref()
                .map(|h| h.get_ref().clone())
                .unwrap_or_else(|| "127.0.0.1".into());
            let pg = toml::Spanned::new(
                n.port.span(),
                format!("{host}:{}", u16::try_from(*n.port.get_ref()).unwrap_or(0)),
            );
            push(&pg, format!("db node {} (PostgreSQL)", n.name.get_ref()));
            push(&n.api, format!("db node {} (api)", n.name.get_ref()));
        }
    }
    if let Some(w) = &file.web {
        for n in &w.node {
            push(&n.listen, format!("web node {}", n.name.get_ref()));
        }
    }
    if let Some(l) = &file.lb {
        // Listener addresses are bound by every lb node (shared on purpose), once here.
        for li in &l.listener {
            push(&li.address, format!("lb listener {}", li.name.get_ref()));
        }
        for n in &l.nodes {
            let n = n.get_ref();
            push(&n.address, format!("lb node {}", n.name.get_ref()));
        }
    }
    if let Some(m) = &file.monitor {
        push(&m.listen, "monitor".to_string());
    }
    for (i, b) in bound.iter().enumerate() {
        if b.port == 0 {
            continue;
        }
        if let Some(first) = bound[..i]
            .iter()
            .find(|f| f.port == b.port && hosts_overlap(&f.host, &b.host))
        {
            let (l, c) = src.position(first.span.start);
            errs.push(src.error_at(
                b.span.clone(),
                format!(
                    "{} wants {}:{}, already used by {} at {l}:{c}",
                    b.owner, b.host, b.port, first.owner
                ),
            ));
        }
    }

    // ---- pools name known servers, at their addresses --------------------------------
    if let Some(l) = &file.lb {
        let mut known: Vec<(String, String)> = Vec::new(); // (name, address)
        if let Some(w) = &file.web {
            for n in &w.node {
                known.push((n.name.get_ref().clone(), n.listen.get_ref().clone()));
            }
        }
        if let Some(d) = &file.db {
            for n in &d.nodes {
                let n = n.get_ref();
                let host = n
                    .host
                    .as_ref()
                    .map(|h| h.get_ref().clone())
                    .unwrap_or_else(|| "127.0.0.1".into());
                known.push((
                    n.name.get_ref().clone(),
                    format!("{host}:{}", n.port.get_ref()),
                ));
            }
        }
        for p in &l.pool {
            for s in p.servers.get_ref() {
                let Some(name) = &s.name else { continue };
                match known.iter().find(|(n, _)| n == name.get_ref()) {
                    None => {
                        let list: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
                        errs.push(src.error_at(
                            name.span(),
                            format!(
                                "pool \"{}\" names unknown server \"{}\"; servers of the topology: {}",
                                p.name.get_ref(),
                                name.get_ref(),
                                if list.is_empty() { "none".to_string() } else { list.join(", ") }
                            ),
                        ));
                    }
                    Some((_, addr)) => {
                        let same =
                            match (split_host_port(addr), split_host_port(s.address.get_ref())) {
                                (Some(a), Some(b)) => a == b,
                                _ => true, // bad addresses are reported by their own section
                            };
                        if !same {
                            errs.push(src.error_at(
                                s.address.span(),
                                format!(
                                    "server \"{}\" is at {addr} in the topology, not {}",
                                    name.get_ref(),
                                    s.address.get_ref()
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }

    // ---- etcd endpoints are served by the declared members ---------------------------
    if let Some(e) = &file.etcd {
        let clients: Vec<String> = e
            .members
            .iter()
            .map(|m| format!("http://{}", m.get_ref().client.get_ref()))
            .collect();
        for ep in &file.cluster.etcd {
            let v = ep.get_ref().trim_end_matches('/');
            if !clients.iter().any(|c| c == v) {
                errs.push(src.error_at(
                    ep.span(),
                    format!(
                        "etcd endpoint \"{v}\" is not the client address of any [[etcd.members]] ({})",
                        clients.join(", ")
                    ),
                ));
            }
        }
        if file.cluster.etcd.is_empty() && !e.members.is_empty() {
            errs.push(src.error_at(
                file.cluster.name.span(),
                format!(
                    "[cluster] etcd is empty; list the members' client URLs: etcd = [{}]",
                    clients
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }

    // ---- synchronous replication needs a replica that can acknowledge ----------------
    if let Some(d) = &file.db {
        let replicas = d.nodes.len().saturating_sub(1);
        let wants_sync = [&d.synchronous, &d.synchronous_strict]
            .into_iter()
            .flatten()
            .find(|b| *b.get_ref());
        if let Some(flag) = wants_sync {
            if replicas == 0 {
                errs.push(src.error_at(
                    flag.span(),
                    format!(
                        "synchronous replication needs at least one replica to acknowledge commits, \
                         but [db] has {} node; add a [[db.nodes]] entry or set synchronous = false",
                        d.nodes.len()
                    ),
                ));
            }
        }
    }

    // ---- the guestbook's db agents are the db nodes' APIs ---------------------------
    if let (Some(w), Some(d)) = (&file.web, &file.db) {
        if let Some(dbs) = &w.database {
            let apis: Vec<String> = d
                .nodes
                .iter()
                .map(|n| format!("http://{}", n.get_ref().api.get_ref()))
                .collect();
            for a in &dbs.agents {
                let v = a.get_ref().trim_end_matches('/');
                if !apis.iter().any(|x| x == v) {
                    errs.push(src.error_at(
                        a.span(),
                        format!(
                            "db agent \"{v}\" is not the api of any [[db.nodes]] ({})",
                            apis.join(", ")
                        ),
                    ));
                }
            }
        }
    }
}
