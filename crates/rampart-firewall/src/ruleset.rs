//! Per-node rulesets from the topology (pure).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rampart_topology::lb::Cidr;
use rampart_topology::security::Policy;
use rampart_topology::{NodeKind, Topology};

/// A source network, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Net {
    Any,
    V4(Ipv4Addr, u8),
    V6(Ipv6Addr, u8),
}

impl Net {
    pub fn host(ip: IpAddr) -> Net {
        match ip {
            IpAddr::V4(v4) => Net::V4(v4, 32),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Net::V4(v4, 32),
                None => Net::V6(v6, 128),
            },
        }
    }

    pub fn from_cidr(c: &Cidr) -> Net {
        // Cidr keeps its fields private; its text form is "addr/prefix".
        let text = c.to_string();
        let (a, p) = text.split_once('/').unwrap_or((text.as_str(), ""));
        match (a.parse::<IpAddr>(), p.parse::<u8>()) {
            (Ok(IpAddr::V4(v4)), Ok(0)) if v4.is_unspecified() => Net::Any,
            (Ok(IpAddr::V6(v6)), Ok(0)) if v6.is_unspecified() => Net::Any,
            (Ok(IpAddr::V4(v4)), Ok(p)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(p.min(32))).unwrap_or(0);
                Net::V4(Ipv4Addr::from(u32::from(v4) & mask), p.min(32))
            }
            (Ok(IpAddr::V6(v6)), Ok(p)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(p.min(128)))
                    .unwrap_or(0);
                Net::V6(Ipv6Addr::from(u128::from(v6) & mask), p.min(128))
            }
            _ => Net::Any,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Net::Any => f.write_str("any"),
            Net::V4(a, 32) => write!(f, "{a}"),
            Net::V6(a, 128) => write!(f, "{a}"),
            Net::V4(a, p) => write!(f, "{a}/{p}"),
            Net::V6(a, p) => write!(f, "{a}/{p}"),
        }
    }
}

/// One opening: a TCP port and who may reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub port: u16,
    /// Sources; [`Net::Any`] among them means everyone.
    pub from: BTreeSet<Net>,
    /// Why (a comment in the script): which node and service.
    pub why: String,
}

impl PortRule {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let host = Net::host(ip);
        self.from.iter().any(|n| match (n, host) {
            (Net::Any, _) => true,
            (Net::V4(net, p), Net::V4(h, _)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*p)).unwrap_or(0);
                u32::from(*net) == u32::from(h) & mask
            }
            (Net::V6(net, p), Net::V6(h, _)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*p)).unwrap_or(0);
                u128::from(*net) == u128::from(h) & mask
            }
            _ => false,
        })
    }
}

/// What one machine (one or more nodes of the topology) accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub cluster: String,
    pub nodes: Vec<(String, NodeKind)>,
    pub policy: Policy,
    pub rules: Vec<PortRule>,
    /// What could not be turned into a rule (a host name, a wildcard peer), for the
    /// operator to read.
    pub notes: Vec<String>,
    /// VRRP adverts (IP protocol 112) are accepted from these: the other lb nodes, when
    /// this machine runs a balancer with virtual IPs.
    pub vrrp_from: BTreeSet<Net>,
    /// `[firewall] trusted`: everything from these is accepted.
    pub trusted: BTreeSet<Net>,
}

impl Ruleset {
    /// Whether a TCP connection from `ip` to `port` is accepted (loopback aside).
    pub fn allows(&self, port: u16, ip: IpAddr) -> bool {
        let named = self.rules.iter().filter(|r| r.port == port);
        let mut any_rule = false;
        for r in named {
            any_rule = true;
            if r.allows(ip) {
                return true;
            }
        }
        !any_rule && self.policy == Policy::Accept
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesetError {
    #[error("no node named \"{0}\" in the topology (its nodes: {1})")]
    UnknownNode(String, String),
}

/// Sources by role, from the addresses the topology gives each node.
struct Peers {
    lb: BTreeSet<Net>,
    web: BTreeSet<Net>,
    db: BTreeSet<Net>,
    etcd: BTreeSet<Net>,
    monitor: BTreeSet<Net>,
    admin: BTreeSet<Net>,
    notes: Vec<String>,
}

impl Peers {
    fn of(t: &Topology) -> Peers {
        let mut p = Peers {
            lb: BTreeSet::new(),
            web: BTreeSet::new(),
            db: BTreeSet::new(),
            etcd: BTreeSet::new(),
            monitor: BTreeSet::new(),
            admin: t
                .firewall
                .iter()
                .flat_map(|f| &f.admin)
                .map(Net::from_cidr)
                .collect(),
            notes: Vec::new(),
        };
        let mut add = |set: &mut BTreeSet<Net>, who: &str, ip: Option<IpAddr>, text: &str| {
            match ip {
            Some(ip) if ip.is_unspecified() => p.notes.push(format!(
                "{who} binds {text} (every address): its source address is unknown, so no rule names it; give it its host's address"
            )),
            Some(ip) => {
                set.insert(Net::host(ip));
            }
            None => p.notes.push(format!(
                "{who}'s host \"{text}\" is not an IP address: nftables rules need addresses; write the address in the topology"
            )),
        }
        };
        for n in t.lb.iter().flat_map(|l| &l.nodes) {
            add(
                &mut p.lb,
                &n.name,
                Some(n.address.ip()),
                &n.address.to_string(),
            );
        }
        for w in &t.web {
            add(
                &mut p.web,
                &w.name,
                Some(w.listen.ip()),
                &w.listen.to_string(),
            );
        }
        for n in t.db.iter().flat_map(|d| &d.nodes) {
            add(&mut p.db, &n.name, n.host.parse().ok(), &n.host);
            add(&mut p.db, &n.name, Some(n.api.ip()), &n.api.to_string());
        }
        for m in t.etcd.iter().flat_map(|e| &e.members) {
            add(
                &mut p.etcd,
                &m.name,
                Some(m.client.ip()),
                &m.client.to_string(),
            );
            add(&mut p.etcd, &m.name, Some(m.peer.ip()), &m.peer.to_string());
        }
        if let Some(m) = &t.monitor {
            add(
                &mut p.monitor,
                &m.name,
                Some(m.listen.ip()),
                &m.listen.to_string(),
            );
        }
        p
    }
}

fn union<'a>(sets: impl IntoIterator<Item = &'a BTreeSet<Net>>) -> BTreeSet<Net> {
    sets.into_iter().flatten().copied().collect()
}

fn port_rule(rules: &mut Vec<PortRule>, addr: SocketAddr, from: BTreeSet<Net>, why: String) {
    rules.push(PortRule {
        port: addr.port(),
        from,
        why,
    });
}

/// The ruleset of the machine running `nodes` (names from the topology).
pub fn ruleset(t: &Topology, nodes: &[&str]) -> Result<Ruleset, RulesetError> {
    let p = Peers::of(t);
    let all = t.nodes();
    let mut rules = Vec::new();
    let mut found = Vec::new();
    let mut vrrp_from = BTreeSet::new();
    for &name in nodes {
        let Some(n) = all.iter().find(|n| n.name == name) else {
            let names: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
            return Err(RulesetError::UnknownNode(name.into(), names.join(", ")));
        };
        found.push((n.name.clone(), n.kind));
        match n.kind {
            NodeKind::Lb => {
                let lb = t.lb.as_ref();
                for l in lb.iter().flat_map(|l| &l.config.listeners) {
                    port_rule(
                        &mut rules,
                        l.address,
                        [Net::Any].into(),
                        format!("{name}: listener {} (the site), from anywhere", l.name),
                    );
                }
                if let Some(me) = lb.and_then(|l| l.node(name)) {
                    port_rule(
                        &mut rules,
                        me.address,
                        union([&p.monitor, &p.admin]),
                        format!("{name}: this balancer's own entry, from the monitor and admin networks"),
                    );
                    if let Some(a) = me.admin {
                        port_rule(
                            &mut rules,
                            a,
                            union([&p.monitor, &p.admin]),
                            format!(
                                "{name}: admin API (token), from the monitor and admin networks"
                            ),
                        );
                    }
                }
                if let Some(l) = lb.filter(|l| !l.node_vrrp(name).is_empty()) {
                    for other in l.nodes.iter().filter(|o| o.name != name) {
                        vrrp_from.insert(Net::host(other.address.ip()));
                    }
                }
            }
            NodeKind::Web => {
                if let Some(w) = t.web.iter().find(|w| w.name == name) {
                    port_rule(
                        &mut rules,
                        w.listen,
                        union([&p.lb, &p.monitor]),
                        format!("{name}: web listener, from the balancers and the monitor"),
                    );
                }
            }
            NodeKind::Db => {
                if let Some(d) = t.db.iter().flat_map(|d| &d.nodes).find(|d| d.name == name) {
                    rules.push(PortRule {
                        port: d.port,
                        from: union([&p.web, &p.db, &p.monitor]),
                        why: format!("{name}: PostgreSQL, from web nodes, db peers (replication) and the monitor"),
                    });
                    port_rule(
                        &mut rules,
                        d.api,
                        union([&p.web, &p.db, &p.monitor, &p.admin]),
                        format!("{name}: db agent API, from web nodes, db peers, the monitor and admin networks"),
                    );
                }
            }
            NodeKind::Etcd => {
                if let Some(m) = t
                    .etcd
                    .iter()
                    .flat_map(|e| &e.members)
                    .find(|m| m.name == name)
                {
                    port_rule(
                        &mut rules,
                        m.client,
                        union([&p.etcd, &p.db, &p.web, &p.lb, &p.monitor, &p.admin]),
                        format!("{name}: etcd clients: members, db agents, web nodes (registration), balancers (discovery), the monitor (metrics), admin networks"),
                    );
                    port_rule(
                        &mut rules,
                        m.peer,
                        p.etcd.clone(),
                        format!("{name}: etcd peers (raft), from members only"),
                    );
                }
            }
            NodeKind::Monitor => {
                if let Some(m) = &t.monitor {
                    let mut from: BTreeSet<Net> = m.allow.iter().map(Net::from_cidr).collect();
                    from.extend(p.admin.iter().copied());
                    port_rule(
                        &mut rules,
                        m.listen,
                        from,
                        format!(
                            "{name}: monitor dashboard, from [monitor] allow and admin networks"
                        ),
                    );
                }
            }
        }
    }
    let mut policy = Policy::Drop;
    if let Some(fw) = &t.firewall {
        policy = fw.policy;
        if let Some(ssh) = fw.ssh {
            // Never lock the operator out: without admin networks, ssh stays open.
            let (from, why) = if p.admin.is_empty() {
                (
                    [Net::Any].into(),
                    "ssh, from anywhere: [firewall] admin names no network (set admin = [\"YOUR/NET\"] to close it)",
                )
            } else {
                (p.admin.clone(), "ssh, from admin networks")
            };
            rules.push(PortRule {
                port: ssh,
                from,
                why: why.into(),
            });
        }
        for a in &fw.allow {
            rules.push(PortRule {
                port: a.port,
                from: [Net::from_cidr(&a.from)].into(),
                why: "[firewall] allow".into(),
            });
        }
    }
    let mut notes = p.notes;
    for r in &rules {
        if r.from.is_empty() {
            notes.push(format!(
                "port {} ({}): no source is allowed (only this machine reaches it)",
                r.port, r.why
            ));
        }
    }
    notes.sort();
    notes.dedup();
    Ok(Ruleset {
        cluster: t.cluster.clone(),
        nodes: found,
        policy,
        rules,
        notes,
        vrrp_from,
        trusted: t
            .firewall
            .iter()
            .flat_map(|f| &f.trusted)
            .map(Net::from_cidr)
            .collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use rampart_topology::Source;

    pub(crate) fn topology() -> Topology {
        let text = r#"
[cluster]
name = "prod"
etcd = ["http://10.0.3.1:2379"]

[[etcd.members]]
name = "etcd1"
client = "10.0.3.1:2379"
peer = "10.0.3.1:2380"

[[etcd.members]]
name = "etcd2"
client = "10.0.3.2:2379"
peer = "10.0.3.2:2380"

[[etcd.members]]
name = "etcd3"
client = "10.0.3.3:2379"
peer = "10.0.3.3:2380"

[db]
superuser_password = "x"
[[db.nodes]]
name = "db1"
host = "10.0.2.1"
port = 5432
api = "10.0.2.1:8008"
[[db.nodes]]
name = "db2"
host = "10.0.2.2"
port = 5432
api = "10.0.2.2:8008"

[web]
root = "/tmp"
[web.database]
agents = ["http://10.0.2.1:8008", "http://10.0.2.2:8008"]
[[web.node]]
name = "web1"
listen = "10.0.1.1:8080"
[[web.node]]
name = "web2"
listen = "10.0.1.2:8080"

[[lb.nodes]]
name = "lb1"
address = "10.0.0.1:8091"
[[lb.nodes]]
name = "lb2"
address = "10.0.0.2:8091"
[[lb.listener]]
name = "site"
address = "0.0.0.0:80"
pool = "web"
[[lb.pool]]
name = "web"
servers = [{ name = "web1", address = "10.0.1.1:8080" }, { name = "web2", address = "10.0.1.2:8080" }]

[monitor]
listen = "10.0.9.1:9090"
allow = ["192.168.7.0/24"]

[firewall]
admin = ["10.9.0.7/16"]
"#;
        Topology::from_source(&Source::new("prod.toml", text.to_string())).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    proptest::proptest! {
        /// Whatever address knocks: a web node's port opens only to the balancers and the
        /// monitor, PostgreSQL only to web, db and monitor hosts, etcd's peer port only to
        /// members; the site only on the balancers, to everyone.
        #[test]
        fn no_address_outside_a_role_s_clients_gets_in(a in 0u8..16, b in 0u8..4, c in 0u8..12, d in 0u8..4) {
            let t = topology();
            let ip = IpAddr::from([10, a, b, c.saturating_sub(1) + d]);
            let web = ruleset(&t, &["web1"]).unwrap();
            let lb_or_monitor = ["10.0.0.1", "10.0.0.2", "10.0.9.1"].map(|s| s.parse::<IpAddr>().unwrap());
            proptest::prop_assert_eq!(web.allows(8080, ip), lb_or_monitor.contains(&ip));
            let db = ruleset(&t, &["db1"]).unwrap();
            let pg_clients = ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.2.2", "10.0.9.1"].map(|s| s.parse::<IpAddr>().unwrap());
            proptest::prop_assert_eq!(db.allows(5432, ip), pg_clients.contains(&ip));
            let etcd = ruleset(&t, &["etcd2"]).unwrap();
            let members = ["10.0.3.1", "10.0.3.2", "10.0.3.3"].map(|s| s.parse::<IpAddr>().unwrap());
            proptest::prop_assert_eq!(etcd.allows(2380, ip), members.contains(&ip));
            proptest::prop_assert!(ruleset(&t, &["lb2"]).unwrap().allows(80, ip));
            proptest::prop_assert!(!web.allows(80, ip) && !db.allows(80, ip));
        }
    }

    #[test]
    fn each_role_accepts_only_its_clients() {
        let t = topology();
        let lb = ruleset(&t, &["lb1"]).unwrap();
        assert!(lb.allows(80, ip("203.0.113.9")), "the site from anywhere");
        assert!(lb.allows(8091, ip("10.0.9.1")) && !lb.allows(8091, ip("203.0.113.9")));
        assert!(lb.allows(22, ip("10.9.200.1")) && !lb.allows(22, ip("10.0.1.1")));
        assert!(
            !lb.allows(5432, ip("10.0.1.1")),
            "policy drop: nothing else"
        );

        let web = ruleset(&t, &["web1"]).unwrap();
        assert!(web.allows(8080, ip("10.0.0.1")) && web.allows(8080, ip("10.0.0.2")));
        assert!(web.allows(8080, ip("10.0.9.1")), "the monitor scrapes");
        assert!(!web.allows(8080, ip("10.0.1.2")) && !web.allows(8080, ip("203.0.113.9")));

        let db = ruleset(&t, &["db1"]).unwrap();
        for ok in ["10.0.1.1", "10.0.1.2", "10.0.2.2", "10.0.9.1"] {
            assert!(db.allows(5432, ip(ok)), "{ok}");
        }
        assert!(
            !db.allows(5432, ip("10.0.0.1")),
            "balancers never reach PostgreSQL"
        );
        assert!(
            !db.allows(5432, ip("10.9.0.1")),
            "admins use the API, not PostgreSQL"
        );
        assert!(db.allows(8008, ip("10.9.0.1")));

        let etcd = ruleset(&t, &["etcd1"]).unwrap();
        assert!(etcd.allows(2380, ip("10.0.3.2")) && !etcd.allows(2380, ip("10.0.2.1")));
        assert!(etcd.allows(2379, ip("10.0.2.1")) && !etcd.allows(2379, ip("203.0.113.9")));

        let mon = ruleset(&t, &["monitor"]).unwrap();
        assert!(mon.allows(9090, ip("192.168.7.33")) && mon.allows(9090, ip("10.9.1.1")));
        assert!(!mon.allows(9090, ip("10.0.1.1")));

        let both = ruleset(&t, &["web2", "db2"]).unwrap();
        assert!(both.allows(8080, ip("10.0.0.1")) && both.allows(5432, ip("10.0.1.1")));
        assert_eq!(
            ruleset(&t, &["nope"])
                .unwrap_err()
                .to_string()
                .split(" (")
                .next()
                .unwrap(),
            "no node named \"nope\" in the topology"
        );
        assert_eq!(
            Net::from_cidr(&"10.9.0.7/16".parse().unwrap()).to_string(),
            "10.9.0.0/16"
        );
    }
}
