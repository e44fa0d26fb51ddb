//! The built-in default topology: the seed's design with its weak points fixed, on
//! one machine. Two load balancers, three web servers, a PostgreSQL primary with two
//! synchronous-capable replicas and automatic failover, three etcd members, a monitor,
//! HTTPS and a firewall; loopback addresses and distinct ports.
//!
//! Ports are `port_base + offset` (default base 8000): site 8080 (HTTPS 8081), monitor 8090, lb nodes
//! 8091-8092 (their admin APIs 8191-8192), web 8101-8103, db agents' api 8201-8203, PostgreSQL 8301-8303, etcd
//! 8401-8406 (client, peer pairs). A second stack on the same machine takes another base.

use std::path::Path;

/// Choices the default topology leaves open.
#[derive(Debug, Clone)]
pub struct DefaultOptions<'a> {
    pub cluster: &'a str,
    /// Folder holding every node's data (`<data_dir>/db/<node>`, `<data_dir>/etcd/<member>`);
    /// a relative one is relative to the topology file's folder.
    pub data_dir: &'a Path,
    pub port_base: u16,
}

/// An environment variable a topology's `[web.database] password_env` may name for the
/// guestbook's password (the default topology names none: the web nodes use `[db]
/// superuser_password`, and `rampart up` exports it under the name a file gives).
pub const DB_PASSWORD_ENV: &str = "RAMPART_DB_PASSWORD";

/// Lowest and highest accepted `port_base` (every port stays within 1024..=65535).
pub const PORT_BASE_RANGE: (u16, u16) = (1024, 65000);

/// The default topology as a commented TOML file (what `rampart init` writes).
pub fn render(o: &DefaultOptions<'_>) -> String {
    let b = u32::from(o.port_base);
    let p = |off: u32| b + off;
    let data = o
        .data_dir
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    let etcd_clients: Vec<String> = (0..3)
        .map(|i| format!("\"http://127.0.0.1:{}\"", p(401 + 2 * i)))
        .collect();
    let agents: Vec<String> = (0..3)
        .map(|i| format!("\"http://127.0.0.1:{}\"", p(201 + i)))
        .collect();
    let mut s = String::new();
    s.push_str(&format!(
        r#"# rampart topology: the single source of truth for every role.
# Each role runs as `rampart <role> --config THIS_FILE --node NAME`;
# `rampart up --config THIS_FILE` runs them all on this machine.
# `rampart audit --config THIS_FILE` reviews the design (SPOFs, security, monitoring).
# Addresses are loopback for a local stack; use real host addresses for a deployment.

[cluster]
name = "{cluster}"
# Every role finds etcd here: the client addresses of the [[etcd.members]] below.
etcd = [{etcd}]

# ---------------------------------------------------------------------------------
# etcd: the consensus store behind failover and discovery. Three members survive the
# loss of one (an odd count: an even one adds no tolerance).
[etcd]
heartbeat_ms = 50      # raft heartbeat (fast: loopback)
election_ms = 500      # raft election timeout (at least 5 heartbeats)
data_dir = "{data}/etcd"
"#,
        cluster = o.cluster,
        etcd = etcd_clients.join(", "),
    ));
    for i in 0..3u32 {
        s.push_str(&format!(
            "\n[[etcd.members]]\nname = \"etcd{n}\"\nclient = \"127.0.0.1:{c}\"\npeer = \"127.0.0.1:{pe}\"\n",
            n = i + 1,
            c = p(401 + 2 * i),
            pe = p(402 + 2 * i),
        ));
    }
    s.push_str(&format!(
        r#"
# ---------------------------------------------------------------------------------
# PostgreSQL: one primary and two replicas, each run by a `rampart db` agent that holds
# a leader lease in etcd and fails over automatically. Synchronous replication: a
# commit is acknowledged only once a replica has it, so a failover loses no
# acknowledged write.
[db]
data_dir = "{data}/db"
synchronous = true
ttl = "3s"            # leader lease
loop_wait = "500ms"   # agent loop
retry_timeout = "1s"  # deadline of one etcd/PostgreSQL call
max_lag = "16MB"      # a replica further behind never promotes
"#
    ));
    for i in 0..3u32 {
        s.push_str(&format!(
            "\n[[db.nodes]]\nname = \"db{n}\"\nhost = \"127.0.0.1\"\nport = {pg}\napi = \"127.0.0.1:{api}\"   # agent API: /primary, /replica, /cluster (loopback only)\n",
            n = i + 1,
            pg = p(301 + i),
            api = p(201 + i),
        ));
    }
    s.push_str(&format!(
        r#"
# ---------------------------------------------------------------------------------
# Web servers: static files from `root` and the guestbook on the database above.
[web]
root = "site"          # relative to this file
pool = "web"
drain_seconds = 1.0

[web.database]
agents = [{agents}]
user = "postgres"
# password: [db] superuser_password (or the variable `password_env = "NAME"` names)
"#,
        agents = agents.join(", "),
    ));
    for i in 0..3u32 {
        s.push_str(&format!(
            "\n[[web.node]]\nname = \"web{n}\"\nlisten = \"127.0.0.1:{port}\"\n",
            n = i + 1,
            port = p(101 + i),
        ));
    }
    s.push_str(&format!(
        r#"
# ---------------------------------------------------------------------------------
# Load balancers: two nodes, both serving the site's address (on one machine they
# share it with SO_REUSEPORT: active-active; across machines it is a virtual IP).
[[lb.nodes]]
name = "lb1"
address = "127.0.0.1:{lb1}"   # this node's own entry, for health checks and drills
admin = "127.0.0.1:{lb1a}"     # admin API: /stats page, /metrics (the monitor scrapes it), control

[[lb.nodes]]
name = "lb2"
address = "127.0.0.1:{lb2}"
admin = "127.0.0.1:{lb2a}"

# Plain HTTP: with [tls] redirect_http = true (below) every request here gets a 308
# redirect to the HTTPS listener; nothing is served in plain text. Health checks and
# drills use each node's own entry (address above, loopback) or HTTPS.
[[lb.listener]]
name = "site"
address = "127.0.0.1:{site}"
pool = "web"

# The site over HTTPS, with HSTS. With [tls] self_signed, rampart up writes a certificate
# for localhost/127.0.0.1 signed by the stack's own CA (<dir>/ca.crt: what clients trust)
# to these paths when they are missing (openssl CLI).
[[lb.listener]]
name = "site-https"
address = "127.0.0.1:{https}"
tls = {{ cert = "{data}/tls/site.crt", key = "{data}/tls/site.key", hsts = "1d" }}
pool = "web"

[[lb.pool]]
name = "web"
algorithm = "least-response-time"
servers = [
  {{ name = "web1", address = "127.0.0.1:{w1}" }},
  {{ name = "web2", address = "127.0.0.1:{w2}" }},
  {{ name = "web3", address = "127.0.0.1:{w3}" }},
]
health_check = {{ kind = "http", path = "/readyz", interval = "500ms", timeout = "400ms", rise = 2, fall = 2 }}
retries = {{ attempts = 2 }}

# ---------------------------------------------------------------------------------
# Monitoring: dashboard and metrics of every node, alerts to the routes below.
[monitor]
name = "monitor"
listen = "127.0.0.1:{mon}"
scrape_interval = "1s"    # the dashboard draws what each scrape sees: a drill shows as it happens
allow = ["127.0.0.1/32"]

[[monitor.alerts]]
name = "console"
kind = "log"

# ---------------------------------------------------------------------------------
# HTTPS for the site, TLS for replication.
[tls]
self_signed = true      # or cert = "PATH", key = "PATH" (and ca = "PATH", its CA)
dir = "{data}/tls"      # self_signed: the stack's CA (ca.crt) and certificates
redirect_http = true    # plain-HTTP listeners answer 308 to the HTTPS one
replication = true      # PostgreSQL: ssl = on, replication over hostssl only, replicas verify-ca
# upstream = true       # balancers -> web nodes over HTTPS, each web node a certificate of the
                        # CA (default: on with `rampart up --hosts netns`, off on loopback)

# ---------------------------------------------------------------------------------
# Firewall: drop what is not allowed. Only the site is open; every other port is
# reachable from this machine only.
[firewall]
policy = "drop"
allow = [
  {{ port = {site}, from = "0.0.0.0/0" }},
  {{ port = {https}, from = "0.0.0.0/0" }},
]
"#,
        lb1 = p(91),
        lb2 = p(92),
        lb1a = p(191),
        lb2a = p(192),
        site = p(80),
        https = p(81),
        w1 = p(101),
        w2 = p(102),
        w3 = p(103),
        mon = p(90),
    ));
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Source, Topology};

    #[test]
    fn default_topology_validates_with_the_expected_shape() {
        std::env::set_var(DB_PASSWORD_ENV, "test");
        let dir = std::env::temp_dir().join(format!("rampart-default-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("site")).unwrap();
        for base in [8000u16, 1024, 65000] {
            let text = render(&DefaultOptions {
                cluster: "main",
                data_dir: &dir.join("data"),
                port_base: base,
            });
            let t = Topology::from_source(&Source::new(dir.join("rampart.toml"), text.clone()))
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let nodes = t.nodes();
            let count = |k| nodes.iter().filter(|n| n.kind == k).count();
            use crate::NodeKind::*;
            assert_eq!(
                (
                    count(Lb),
                    count(Web),
                    count(Db),
                    count(Etcd),
                    count(Monitor)
                ),
                (2, 3, 3, 3, 1)
            );
            assert!(t.db.as_ref().unwrap().synchronous);
            assert_eq!(t.site_addresses()[0].port(), base + 80);
            // [tls] redirect_http: the plain site listener redirects to the HTTPS one.
            let listeners = &t.lb.as_ref().unwrap().config.listeners;
            let site = listeners.iter().find(|l| l.name == "site").unwrap();
            assert_eq!(site.redirect_https.map(|r| r.port), Some(base + 81));
            // [tls] replication: the db nodes get the stack's pair and CA.
            let tls = t.db.as_ref().unwrap().replication_tls.clone().unwrap();
            assert_eq!(tls.ca, dir.join("data/tls/ca.crt"));
            assert_eq!(tls.key, dir.join("data/tls/db.key"));
            // ... and the guestbook connects to them over TLS, verified against that CA.
            for w in &t.web {
                let db = w.database.as_ref().unwrap();
                assert_eq!(db.tls_ca.as_deref(), Some(tls.ca.as_path()), "{}", w.name);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
