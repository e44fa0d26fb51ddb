//! `rampart audit`: the weak points of a topology, each with a severity and a fix.
//!
//! Pure: a validated [`Topology`] in, findings out. The checks are the seed design's
//! list of issues and their kin: single points of failure, security gaps, missing
//! monitoring. A finding at [`Severity::Error`] means the design loses availability,
//! data or confidentiality on a single fault or by default; `rampart audit` exits
//! non-zero when there is one.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::lb::Cidr;
use crate::security::Policy;
use crate::Topology;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    Availability,
    Security,
    Monitoring,
}

impl Area {
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Availability => "availability",
            Area::Security => "security",
            Area::Monitoring => "monitoring",
        }
    }
}

/// One weak point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub area: Area,
    /// Stable identifier, e.g. `spof-lb` (scripts and tests match on it).
    pub code: &'static str,
    pub message: String,
    pub fix: String,
}

/// True when any finding is at error severity.
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

fn host_is_loopback(host: &str) -> bool {
    let h = host.trim_matches(['[', ']']);
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An address that stands for "anyone on the internet" when tested against an allow list.
fn public_probe() -> IpAddr {
    IpAddr::from([192, 0, 2, 1]) // TEST-NET-1: never contacted, only compared
}

/// Whether the firewall keeps `port` away from the public: the policy drops and no rule
/// opens the port to everyone.
fn firewalled(t: &Topology, port: u16) -> bool {
    match &t.firewall {
        Some(fw) if fw.policy == Policy::Drop => !fw
            .allowed_from(port)
            .iter()
            .any(|c: &Cidr| c.contains(public_probe())),
        _ => false,
    }
}

/// Review a topology.
pub fn audit(t: &Topology) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |severity, area, code, message: String, fix: &str| {
        out.push(Finding {
            severity,
            area,
            code,
            message,
            fix: fix.to_string(),
        })
    };
    use Area::*;
    use Severity::*;

    // ---- single points of failure -------------------------------------------------
    let lbs = t.lb.as_ref().map(|l| l.nodes.len()).unwrap_or(0);
    match lbs {
        0 => add(Error, Availability, "no-lb", "no load balancer: clients reach web servers directly, and a dead server is a dead site for its clients".into(),
            "add an [lb] section with two [[lb.nodes]] in front of the web servers"),
        1 => add(Error, Availability, "spof-lb", "one load balancer: if it fails, the whole site is unreachable".into(),
            "add a second [[lb.nodes]] (active-active on one machine, a virtual IP moved by VRRP across machines)"),
        _ => {}
    }
    let webs = t.web.len();
    match webs {
        0 => {}
        1 => add(
            Error,
            Availability,
            "spof-web",
            "one web server: its failure or a deploy takes the site down".into(),
            "add [[web.node]] entries (at least two) and list them in the lb pool",
        ),
        _ => {}
    }
    if let Some(lb) = &t.lb {
        let served: BTreeSet<&str> = lb
            .config
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(|s| s.name.as_str()))
            .collect();
        for w in &t.web {
            if !served.contains(w.name.as_str()) {
                add(
                    Warning,
                    Availability,
                    "web-not-balanced",
                    format!(
                        "web node {} is in no lb pool: it takes no traffic and adds no redundancy",
                        w.name
                    ),
                    "add it to the servers of the lb pool that serves the site",
                );
            }
        }
    }
    let etcd_members = match &t.etcd {
        Some(e) => e.members.len(),
        None => t.etcd_endpoints.len(),
    };
    let needs_etcd = t.db.is_some() || !t.etcd_endpoints.is_empty();
    if needs_etcd {
        if etcd_members == 1 {
            add(Error, Availability, "spof-etcd", "one etcd member: when it fails, no leader lease can be renewed and the database primary demotes itself".into(),
                "run three (or five) etcd members on separate machines");
        } else if etcd_members > 0 && etcd_members % 2 == 0 {
            add(Warning, Availability, "etcd-even", format!("{etcd_members} etcd members: an even count tolerates no more failures than one member fewer, and a split can leave no majority"),
                "use an odd number of etcd members (3 or 5)");
        }
    }
    if let Some(db) = &t.db {
        let replicas = db.nodes.len().saturating_sub(1);
        let can_lead = db.nodes.iter().filter(|n| !n.nofailover).count();
        if replicas == 0 {
            add(Error, Availability, "no-replica", "one database node: its failure loses every write since the last backup and stops the site's writes".into(),
                "add [[db.nodes]] replicas (two, for synchronous replication that survives one replica's loss)");
        } else if can_lead < 2 {
            add(Error, Availability, "no-failover", "the database has no automatic failover: when the primary fails, writes stop until someone promotes a replica by hand".into(),
                "let at least two nodes lead (remove nofailover = true from the replicas): the db agents then promote a replica through the etcd leader lease");
        }
        if replicas > 0 && !db.synchronous {
            add(Warning, Availability, "async-replication", "asynchronous replication: a failover can lose writes the primary acknowledged but had not yet shipped".into(),
                "set synchronous = true in [db]");
        }
        if db.synchronous && db.synchronous_strict && replicas == 1 {
            add(Warning, Availability, "strict-sync-one-replica", "synchronous_strict with one replica: when that replica fails, the primary refuses every write".into(),
                "add a second replica or set synchronous_strict = false");
        }
    }
    let hosts: BTreeSet<String> = t
        .nodes()
        .iter()
        .filter_map(|n| n.address.rsplit_once(':').map(|(h, _)| h.to_string()))
        .map(|h| {
            if host_is_loopback(&h) {
                "localhost".to_string()
            } else {
                h
            }
        })
        .collect();
    if hosts.len() == 1 && t.nodes().len() > 1 {
        add(Info, Availability, "one-machine", "every node runs on one machine: this survives process failures, not the loss of the machine".into(),
            "for production, put each role's nodes on separate machines (same file, real addresses)");
    }

    // ---- security -------------------------------------------------------------------
    match &t.tls {
        None => add(Error, Security, "no-https", "no HTTPS: every request, password and cookie crosses the network in plain text".into(),
            "add a [tls] section (cert and key, or self_signed = true for a test stack) and serve the site on 443"),
        Some(tls) => {
            let https = t
                .lb
                .iter()
                .flat_map(|l| &l.config.listeners)
                .any(|l| l.tls.is_some());
            if t.lb.is_some() && !https {
                add(Warning, Security, "https-not-served", "[tls] is set, but no load balancer listener terminates TLS: the site is plain HTTP".into(),
                    "add tls = { cert = \"PATH\", key = \"PATH\" } to a [[lb.listener]] (on port 443)");
            } else if !tls.redirect_http {
                add(Warning, Security, "http-not-redirected", "plain HTTP is still served without a redirect to HTTPS".into(),
                    "set redirect_http = true in [tls]");
            }
        }
    }
    match &t.firewall {
        None => add(Error, Security, "no-firewall", "no firewall: every port of every machine (database, etcd, admin APIs) is open to whoever can reach it".into(),
            "add a [firewall] section with policy = \"drop\" and allow only the site's port from everywhere"),
        Some(fw) if fw.policy == Policy::Accept => add(Error, Security, "firewall-accepts", "the firewall's policy accepts what no rule allows: it blocks nothing".into(),
            "set policy = \"drop\" in [firewall] and list what must be reachable under allow"),
        Some(_) => {}
    }
    // Admin and control endpoints.
    if let Some(db) = &t.db {
        for n in &db.nodes {
            let api = n.api;
            if !api.ip().is_loopback() && !firewalled(t, api.port()) {
                add(Error, Security, "admin-exposed", format!("db node {}'s agent API {} (switchover, failover, pause) is reachable beyond this machine with no token", n.name, api),
                    "bind the api to 127.0.0.1, or restrict its port to the cluster's network in [firewall] allow");
            }
            if !host_is_loopback(&n.host) && !firewalled(t, n.port) {
                add(
                    Error,
                    Security,
                    "db-exposed",
                    format!(
                        "db node {}'s PostgreSQL {}:{} is open to everyone",
                        n.name, n.host, n.port
                    ),
                    "restrict the database port to the web servers' network in [firewall] allow",
                );
            }
        }
    }
    if let Some(e) = &t.etcd {
        for m in &e.members {
            if !m.client.ip().is_loopback() && !firewalled(t, m.client.port()) {
                add(Error, Security, "admin-exposed", format!("etcd member {}'s client port {} (the cluster's leader keys) is reachable beyond this machine without authentication", m.name, m.client),
                    "restrict the etcd ports to the cluster's network in [firewall] allow");
            }
        }
    }
    if let Some(m) = &t.monitor {
        let open = !m.listen.ip().is_loopback()
            && m.token_env.is_none()
            && (m.allow.is_empty() || m.allow.iter().any(|c| c.contains(public_probe())));
        if open {
            add(
                Error,
                Security,
                "admin-exposed",
                format!(
                    "the monitor's dashboard {} is public with no token and no allow list",
                    m.listen
                ),
                "set token_env or an allow list of CIDRs in [monitor], or listen on 127.0.0.1",
            );
        }
    }
    if let Some(db) = &t.db {
        let db_hosts: BTreeSet<&str> = db.nodes.iter().map(|n| n.host.as_str()).collect();
        let spans_hosts = db_hosts.len() > 1 && db_hosts.iter().any(|h| !host_is_loopback(h));
        let tls_repl = t.tls.as_ref().is_some_and(|t| t.replication);
        if spans_hosts && !tls_repl {
            add(Error, Security, "plain-replication", "database replication crosses machines in plain text: the WAL stream carries every row written".into(),
                "set replication = true in [tls]: every PostgreSQL serves TLS, replication is accepted over hostssl only and replicas verify the CA");
        }
    }
    if let Some(e) = &t.etcd {
        let peer_hosts: BTreeSet<IpAddr> = e.members.iter().map(|m| m.peer.ip()).collect();
        if peer_hosts.len() > 1 && peer_hosts.iter().any(|ip| !ip.is_loopback()) {
            add(
                Warning,
                Security,
                "plain-etcd-peers",
                "etcd members talk raft over plain HTTP across machines".into(),
                "run etcd peers on a private network only, restricted in [firewall]",
            );
        }
    }

    // ---- monitoring -----------------------------------------------------------------
    match &t.monitor {
        None => add(Error, Monitoring, "no-monitoring", "no monitoring: a failed node, a full disk or a lagging replica goes unnoticed until users notice".into(),
            "add a [monitor] section: it scrapes every node's /metrics and shows the dashboard"),
        Some(m) if m.alerts.is_empty() => add(Warning, Monitoring, "no-alert-routes", "the monitor has no alert route: problems show on the dashboard but nobody is told".into(),
            "add [[monitor.alerts]] (kind = \"alertmanager\" or \"webhook\" with a url, or \"log\")"),
        Some(_) => {}
    }

    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}
