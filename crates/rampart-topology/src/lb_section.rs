//! `[lb]`: the load balancer nodes of the topology and the listeners and pools they
//! share. Listeners and pools are the lb file's own model (`lb.rs`: `RawListener`,
//! `RawPool`, validated by [`LbConfig::validate`]), so both files read the same.
//!
//! ```toml
//! [[lb.nodes]]
//! name = "lb1"
//! address = "127.0.0.1:8091"       # this node's own entry (first listener's pool), for checks and drills
//!
//! [[lb.listener]]                  # bound by EVERY lb node: the virtual address of the site
//! name = "site"
//! address = "127.0.0.1:8080"
//! pool = "web"
//!
//! [[lb.pool]]
//! name = "web"
//! servers = [{ name = "web1", address = "127.0.0.1:8101" }]   # names are [[web.node]] names
//! ```
//!
//! On one machine every lb node binds the listener addresses with `SO_REUSEPORT`, so
//! the kernel spreads connections over the live nodes (active-active) and a dead node's
//! share moves to the others. Across machines the listener address is a virtual IP
//! that a VRRP daemon moves between the nodes.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostic, Source};
use crate::lb::{
    LbConfig, Mode, RawForwarded, RawLbFile, RawLimits, RawListener, RawPool, RedirectHttps,
};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LbSection {
    #[serde(default)]
    pub nodes: Vec<Spanned<RawLbNode>>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub pool: Vec<RawPool>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub forwarded: Option<RawForwarded>,
    /// Virtual IPs the lb nodes share by VRRP (each node runs a virtual router per entry).
    #[serde(default)]
    pub vip: Vec<RawLbVip>,
}

/// `[[lb.vip]]`: one virtual IP of the site, moved between the lb nodes by VRRP.
///
/// ```toml
/// [[lb.vip]]
/// address = "10.0.0.100/24"
/// master = "lb1"              # priority 150 there, 100 on the other nodes (default: the first node)
/// vrid = 51                   # default 50 + position
/// interface = "eth0"          # default eth0
/// advert_interval = "50ms"
/// preempt = true
/// unicast = false             # true: adverts to the other nodes' addresses, not 224.0.0.18
/// ```
/// Two entries with different masters make the pair active-active (announce both
/// addresses, e.g. DNS round robin); the survivor of a failure holds both.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLbVip {
    pub address: Spanned<String>,
    #[serde(default)]
    pub master: Option<Spanned<String>>,
    #[serde(default)]
    pub vrid: Option<Spanned<i64>>,
    #[serde(default)]
    pub interface: Option<Spanned<String>>,
    #[serde(default)]
    pub advert_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub preempt: Option<bool>,
    #[serde(default)]
    pub unicast: Option<bool>,
}

/// Priority of a virtual IP's master node, and of the other nodes.
pub const VIP_MASTER_PRIORITY: u8 = 150;
pub const VIP_BACKUP_PRIORITY: u8 = 100;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLbNode {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    /// Worker threads of this node (default 1: local stacks share the machine).
    #[serde(default)]
    pub threads: Option<Spanned<i64>>,
    /// This node's admin API (state, /stats, /metrics, control): loopback clients only,
    /// or any client with the token of `admin_token_file` (required off loopback).
    #[serde(default)]
    pub admin: Option<Spanned<String>>,
    #[serde(default)]
    pub admin_token_file: Option<Spanned<String>>,
}

/// A validated `[lb]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LbTopology {
    pub nodes: Vec<LbNode>,
    /// Listeners and pools every node runs.
    pub config: LbConfig,
    /// Each node's virtual routers (`[[lb.vip]]`), by node name, in node order.
    pub vrrp: Vec<(String, Vec<crate::vrrp::VrrpInstance>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbNode {
    pub name: String,
    pub address: SocketAddr,
    pub threads: usize,
    pub admin: Option<SocketAddr>,
    /// The admin's bearer token file (absolute), when it has one.
    pub admin_token_file: Option<std::path::PathBuf>,
}

impl LbTopology {
    /// The `[lb]` section of a topology file alone, validated (what `rampart lb --node`
    /// needs; `rampart up` and `rampart audit` validate the whole file). `None` without one.
    pub fn load(path: &std::path::Path) -> Result<Option<LbTopology>, crate::diag::ConfigError> {
        let src = Source::read(path)?;
        let file = crate::topology::TopologyFile::parse(&src)?;
        let Some(section) = &file.lb else {
            return Ok(None);
        };
        let mut errs = Vec::new();
        let upstream = web_upstream(&src, &file);
        let t = validate(
            &src,
            section,
            redirect_http(&file),
            upstream.as_ref(),
            &mut errs,
        );
        if !errs.is_empty() {
            return Err(crate::diag::ConfigError { diagnostics: errs });
        }
        Ok(t)
    }

    pub fn node(&self, name: &str) -> Option<&LbNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The configuration node `node` runs (`rampart lb --config TOPOLOGY --node NAME`):
    /// every listener of the section, plus `direct`, the node's own address, in front of
    /// the first listener's pool; the node's admin address when it has one. `direct` is
    /// always plain HTTP that forwards (never TLS, never a redirect): it is the node's
    /// internal entry on a loopback or cluster address, for health checks, not the site.
    pub fn node_config(&self, node: &LbNode) -> LbConfig {
        let mut c = self.config.clone();
        if let Some(first) = c.listeners.first().cloned() {
            c.listeners.push(crate::lb::Listener {
                name: "direct".into(),
                address: node.address,
                tls: None,
                redirect_https: None,
                // Internal (health checks, the operator): not the site's edge.
                firewall: None,
                ..first
            });
        }
        c.admin = node.admin.map(|a| match &node.admin_token_file {
            Some(f) => crate::lb::AdminConfig::with_token_file(a, f.clone()),
            None => crate::lb::AdminConfig::local(a),
        });
        c.vrrp = self.node_vrrp(&node.name).to_vec();
        c
    }

    /// Node `name`'s virtual routers.
    pub fn node_vrrp(&self, name: &str) -> &[crate::vrrp::VrrpInstance] {
        self.vrrp
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    /// The virtual IPs (`[[lb.vip]]`), in file order.
    pub fn vips(&self) -> Vec<std::net::IpAddr> {
        self.vrrp
            .first()
            .map(|(_, v)| {
                v.iter()
                    .flat_map(|i| i.addresses.iter().map(|a| a.ip))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Whether the file's `[tls] redirect_http` applies: a `[tls]` section that does not set
/// it to false.
pub(crate) fn redirect_http(file: &crate::topology::TopologyFile) -> bool {
    file.tls.as_ref().is_some_and(|t| {
        t.redirect_http
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(true)
    })
}

/// `[tls] redirect_http = true`: every plain-HTTP listener (no tls, not already a
/// redirect) answers with a 308 redirect to the HTTPS listener, the first one on the same
/// IP, else the first one. Without any HTTPS listener nothing changes (`rampart up` and
/// `rampart audit` say that HTTPS is not served).
pub fn apply_redirect_http(c: &mut LbConfig) {
    let https: Vec<SocketAddr> = c
        .listeners
        .iter()
        .filter(|l| l.mode == Mode::Http && l.tls.is_some())
        .map(|l| l.address)
        .collect();
    let Some(first) = https.first().copied() else {
        return;
    };
    for l in &mut c.listeners {
        if l.mode == Mode::Http && l.tls.is_none() && l.redirect_https.is_none() {
            let to = https
                .iter()
                .find(|a| a.ip() == l.address.ip())
                .copied()
                .unwrap_or(first);
            l.redirect_https = Some(RedirectHttps {
                port: to.port(),
                status: 308,
            });
        }
    }
}

/// `[tls] upstream = true`: the CA every pool of web nodes verifies them with, and which
/// servers are web nodes (the `[[web.node]]` names, and the pool the web nodes register
/// in for discovery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebUpstream {
    pub ca: std::path::PathBuf,
    pub web_nodes: Vec<String>,
    pub web_pool: String,
}

/// The file's [`WebUpstream`], when `[tls] upstream` is on.
pub(crate) fn web_upstream(
    src: &Source,
    file: &crate::topology::TopologyFile,
) -> Option<WebUpstream> {
    let tls = crate::web::upstream_tls(src, file)?;
    let web = file.web.as_ref()?;
    Some(WebUpstream {
        ca: tls.trust_file(),
        web_nodes: web.node.iter().map(|n| n.name.get_ref().clone()).collect(),
        web_pool: web
            .pool
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_else(|| "web".into()),
    })
}

/// `[tls] upstream`: every pool without a `tls` of its own whose servers are all web nodes
/// (or that discovers the web nodes' registrations) gets `tls = { ca = <the stack's CA> }`:
/// the server's certificate must be valid for its IP address, and the health checks go
/// over TLS as the requests do.
pub fn apply_web_upstream(c: &mut LbConfig, u: &WebUpstream) {
    for p in &mut c.pools {
        if p.tls.is_some() {
            continue;
        }
        let static_web =
            !p.servers.is_empty() && p.servers.iter().all(|s| u.web_nodes.contains(&s.name));
        let discovered_web = p
            .discovery
            .as_ref()
            .is_some_and(|d| d.service == u.web_pool);
        if static_web || discovered_web {
            p.tls = Some(crate::lb::PoolTls {
                ca: u.ca.clone(),
                server_name: None,
                client_cert: None,
                alpn: vec!["http/1.1".to_string()],
            });
        }
    }
}

pub(crate) fn validate(
    src: &Source,
    s: &LbSection,
    redirect_http: bool,
    upstream: Option<&WebUpstream>,
    errs: &mut Vec<Diagnostic>,
) -> Option<LbTopology> {
    let raw = RawLbFile {
        listener: s.listener.clone(),
        pool: s.pool.clone(),
        limits: s.limits.clone(),
        forwarded: s.forwarded.clone(),
        ..Default::default()
    };
    let config = match LbConfig::validate(src, &raw) {
        Ok(mut c) => {
            if redirect_http {
                apply_redirect_http(&mut c);
            }
            if let Some(u) = upstream {
                apply_web_upstream(&mut c, u);
            }
            Some(c)
        }
        Err(e) => {
            errs.extend(e.diagnostics.into_iter().map(|mut d| {
                // The lb file's own wording names top-level tables; here they live under [lb].
                d.message = d
                    .message
                    .replace("[[listener]]", "[[lb.listener]]")
                    .replace("[[pool]]", "[[lb.pool]]");
                d
            }));
            None
        }
    };
    if s.nodes.is_empty() {
        errs.push(src.error("[lb] needs at least one [[lb.nodes]] entry"));
    }
    let mut nodes = Vec::new();
    for n in &s.nodes {
        let raw = n.get_ref();
        let name = raw.name.get_ref();
        if name.is_empty() {
            errs.push(src.error_at(raw.name.span(), "lb node name must not be empty"));
        }
        if name == "direct" || s.listener.iter().any(|l| l.name.get_ref() == "direct") {
            // "direct" is the generated per-node listener.
            if let Some(l) = s.listener.iter().find(|l| l.name.get_ref() == "direct") {
                errs.push(src.error_at(
                    l.name.span(),
                    "listener name \"direct\" is reserved for each lb node's own address",
                ));
            }
        }
        let address = match raw.address.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                errs.push(src.error_at(
                    raw.address.span(),
                    format!(
                        "lb node address \"{}\" must be IP:PORT, e.g. \"127.0.0.1:8091\"",
                        raw.address.get_ref()
                    ),
                ));
                None
            }
        };
        let threads = match &raw.threads {
            None => 1,
            Some(t) if (1..=256).contains(t.get_ref()) => *t.get_ref() as usize,
            Some(t) => {
                errs.push(src.error_at(t.span(), "threads must be between 1 and 256"));
                1
            }
        };
        let admin_token_file = raw
            .admin_token_file
            .as_ref()
            .map(|f| crate::lb::resolve_path(src, f.get_ref()));
        let admin = match &raw.admin {
            None => None,
            Some(a) => match a.get_ref().parse::<SocketAddr>() {
                Ok(x) if x.ip().is_loopback() || admin_token_file.is_some() => Some(x),
                Ok(_) => {
                    errs.push(src.error_at(
                        a.span(),
                        format!(
                            "lb node admin address \"{}\" is not loopback: set admin_token_file (every call then needs the token), or use a loopback IP:PORT, e.g. \"127.0.0.1:9191\"",
                            a.get_ref()
                        ),
                    ));
                    None
                }
                Err(_) => {
                    errs.push(src.error_at(
                        a.span(),
                        format!(
                            "lb node admin address \"{}\" must be IP:PORT, e.g. \"127.0.0.1:9191\"",
                            a.get_ref()
                        ),
                    ));
                    None
                }
            },
        };
        if let Some(address) = address {
            nodes.push(LbNode {
                name: name.clone(),
                address,
                threads,
                admin,
                admin_token_file,
            });
        }
    }
    let vrrp = validate_vips(src, s, &nodes, config.as_ref(), errs);
    config.map(|config| LbTopology {
        nodes,
        config,
        vrrp,
    })
}

/// `[[lb.vip]]` into each node's `[[vrrp]]` instances (validated by the lb file's rules,
/// so a mistake is named at the vip's own position).
fn validate_vips(
    src: &Source,
    s: &LbSection,
    nodes: &[LbNode],
    config: Option<&LbConfig>,
    errs: &mut Vec<Diagnostic>,
) -> Vec<(String, Vec<crate::vrrp::VrrpInstance>)> {
    if s.vip.is_empty() {
        return Vec::new();
    }
    for v in &s.vip {
        if let Some(m) = &v.master {
            if !s
                .nodes
                .iter()
                .any(|n| n.get_ref().name.get_ref() == m.get_ref())
            {
                errs.push(src.error_at(
                    m.span(),
                    format!(
                        "master \"{}\" is not an [[lb.nodes]] name (nodes: {})",
                        m.get_ref(),
                        nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    let mut listeners: Vec<&str> = config
        .map(|c| c.listeners.iter().map(|l| l.name.as_str()).collect())
        .unwrap_or_default();
    listeners.push("direct");
    let first = nodes.first().map(|n| n.name.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let raw: Vec<crate::vrrp::RawVrrp> = s
            .vip
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let master = v
                    .master
                    .as_ref()
                    .map(|m| m.get_ref().clone())
                    .unwrap_or_else(|| first.clone());
                let priority = if master == node.name {
                    VIP_MASTER_PRIORITY
                } else {
                    VIP_BACKUP_PRIORITY
                };
                let at = v.address.span();
                let peers = if v.unicast.unwrap_or(false) {
                    nodes
                        .iter()
                        .filter(|n| n.name != node.name)
                        .map(|n| Spanned::new(at.clone(), n.address.ip().to_string()))
                        .collect()
                } else {
                    Vec::new()
                };
                crate::vrrp::RawVrrp {
                    name: Some(Spanned::new(at.clone(), format!("vip{}", i + 1))),
                    interface: v
                        .interface
                        .clone()
                        .unwrap_or_else(|| Spanned::new(at.clone(), "eth0".to_string())),
                    vrid: v
                        .vrid
                        .clone()
                        .unwrap_or_else(|| Spanned::new(at.clone(), 51 + i as i64)),
                    priority: Some(Spanned::new(at.clone(), i64::from(priority))),
                    advert_interval: v.advert_interval.clone(),
                    preempt: v.preempt,
                    preempt_delay: None,
                    addresses: Spanned::new(at.clone(), vec![v.address.clone()]),
                    unicast_peers: peers,
                    track: None,
                }
            })
            .collect();
        // Report problems once (the first node's pass), not once per node.
        let mut node_errs = Vec::new();
        let inst = crate::vrrp::validate(src, &raw, &listeners, &mut node_errs);
        if k == 0 {
            errs.extend(node_errs);
        }
        out.push((node.name.clone(), inst));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rendered_node_file_validates_back_into_the_same_pools() {
        let text = r#"
[[nodes]]
name = "lb1"
address = "127.0.0.1:8091"
[[listener]]
name = "site"
address = "127.0.0.1:8080"
pool = "web"
[[pool]]
name = "web"
algorithm = "least-connections"
servers = [{ name = "w1", address = "127.0.0.1:9001", weight = 3 }, { name = "w2", address = "127.0.0.1:9002" }]
slow_start = "1.5s"
health_check = { kind = "http", path = "/health", interval = "250ms" }
passive_failures = 5
panic_threshold = 40
outlier = { interval = "2s", min_requests = 7, failure_percent = 60, margin_percent = 25, max_ejection_percent = 34, base_ejection_time = "1m", max_ejection_time = "10m" }
"#;
        let src = Source::new("t.toml", text);
        let s: LbSection = src.parse().unwrap();
        let mut errs = Vec::new();
        // [tls] upstream: the pool of web nodes verifies them against the stack's CA.
        let up = WebUpstream {
            ca: "/x/ca.crt".into(),
            web_nodes: vec!["w1".into(), "w2".into()],
            web_pool: "web".into(),
        };
        let t = validate(&src, &s, false, Some(&up), &mut errs).unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        let pt = t.config.pools[0].tls.as_ref().expect("upstream tls");
        assert_eq!(
            (pt.ca.to_str(), &pt.server_name, &pt.alpn[..]),
            (Some("/x/ca.crt"), &None, &["http/1.1".to_string()][..])
        );
        // A pool with a server that is not a web node is left alone.
        let mut other = up.clone();
        other.web_nodes.pop();
        let t2 = validate(&src, &s, false, Some(&other), &mut errs).unwrap();
        assert_eq!(t2.config.pools[0].tls, None);
        assert_eq!(t.config.pools[0].panic_threshold, 40);
        assert_eq!(t.config.pools[0].outlier.max_ejection_percent, 34);
        // The node's config as `rampart lb --node` builds it: the section's pools, its
        // listeners and `direct`, the node's own entry in front of the first pool.
        let direct = t.node_config(&t.nodes[0]);
        assert_eq!(direct.pools, t.config.pools);
        assert_eq!(direct.listeners.len(), 2);
        assert_eq!(direct.listeners[1].name, "direct");
        assert_eq!(
            direct.listeners[1].address,
            "127.0.0.1:8091".parse().unwrap()
        );
        assert_eq!(direct.listeners[1].pool, direct.listeners[0].pool);
        assert_eq!(direct.admin, None);
    }

    #[test]
    fn routes_of_the_section_reach_every_node_and_its_direct_entry() {
        let text = r#"
[[nodes]]
name = "lb1"
address = "127.0.0.1:8091"
[[listener]]
name = "site"
address = "127.0.0.1:8080"
pool = "web"
[[listener.route]]
path_prefix = "/api/"
pool = "api"
[[pool]]
name = "web"
servers = [{ name = "w1", address = "127.0.0.1:9001" }]
[[pool]]
name = "api"
servers = [{ name = "a1", address = "127.0.0.1:9002" }]
"#;
        let src = Source::new("t.toml", text);
        let s: LbSection = src.parse().unwrap();
        let mut errs = Vec::new();
        let t = validate(&src, &s, false, None, &mut errs).unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        let c = t.node_config(&t.nodes[0]);
        for l in &c.listeners {
            assert_eq!(l.routes.len(), 1, "{}", l.name);
            assert_eq!(c.pools[l.routes[0].pool().expect("a pool")].name, "api");
        }
        // Its errors name the section's tables.
        let bad = text.replace("pool = \"api\"\n[[pool]]", "pool = \"apy\"\n[[pool]]");
        let src = Source::new("t.toml", bad);
        let s: LbSection = src.parse().unwrap();
        let mut errs = Vec::new();
        assert!(validate(&src, &s, false, None, &mut errs).is_none());
        assert_eq!((errs[0].line, errs[0].col), (11, 8), "{errs:?}");
        assert!(errs[0].message.contains("unknown pool \"apy\""), "{errs:?}");
    }

    #[test]
    fn redirect_http_turns_plain_listeners_into_redirects_but_not_the_direct_entry() {
        let text = r#"
[[nodes]]
name = "lb1"
address = "127.0.0.1:8091"
[[listener]]
name = "site"
address = "127.0.0.1:8080"
pool = "web"
[[listener]]
name = "site-https"
address = "127.0.0.1:8081"
tls = { cert = "c.pem", key = "k.pem", hsts = "1d" }
pool = "web"
[[listener]]
name = "raw"
address = "127.0.0.1:8082"
mode = "tcp"
pool = "web"
[[pool]]
name = "web"
servers = [{ name = "w1", address = "127.0.0.1:9001" }]
"#;
        let src = Source::new("t.toml", text);
        let s: LbSection = src.parse().unwrap();
        let mut errs = Vec::new();
        let plain = validate(&src, &s, false, None, &mut errs).unwrap();
        assert!(plain
            .config
            .listeners
            .iter()
            .all(|l| l.redirect_https.is_none()));
        let t = validate(&src, &s, true, None, &mut errs).unwrap();
        assert!(errs.is_empty(), "{errs:?}");
        let by = |n: &str| t.config.listeners.iter().find(|l| l.name == n).unwrap();
        assert_eq!(
            by("site").redirect_https,
            Some(RedirectHttps {
                port: 8081,
                status: 308
            })
        );
        assert_eq!(by("site-https").redirect_https, None);
        assert_eq!(
            by("raw").redirect_https,
            None,
            "tcp listeners are left alone"
        );
        // The node's own entry forwards in plain HTTP, whatever the first listener does.
        let c = t.node_config(&t.nodes[0]);
        let direct = c.listeners.iter().find(|l| l.name == "direct").unwrap();
        assert_eq!(direct.redirect_https, None);
        assert_eq!(direct.tls, None);
        assert_eq!(direct.address, "127.0.0.1:8091".parse().unwrap());
    }
}
