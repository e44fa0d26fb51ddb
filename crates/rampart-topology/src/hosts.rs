//! The separate-hosts rehearsal of a topology (`rampart up --hosts netns`): every node
//! on a host of its own (a network namespace with one address on a shared bridge), the
//! site reached through virtual IPs that the lb nodes move between them by VRRP. What
//! runs is the same topology, rewritten as it would be written for machines:
//!
//! - each node gets the next address of the subnet (`.10` on, in node order: etcd, db,
//!   web, lb, monitor); every `127.0.0.1:PORT` the file gives is the address of the node
//!   that binds PORT (ports are distinct across a topology, so PORT names its node);
//! - the lb listeners bind `0.0.0.0:PORT` on every balancer (the virtual IPs arrive and
//!   leave); without `[[lb.vip]]`, two are added: `.100` mastered by the first lb node
//!   and `.101` by the second (active-active), or one with a single lb node;
//! - each lb node's admin API moves to its own address, guarded by a token file;
//! - this machine (`.1`, the bridge) is the operator: `[firewall] admin` and the
//!   monitor's `allow` name it; a client host (`.250`) reaches only what the firewall
//!   lets anyone reach;
//! - with `[tls] self_signed` and no `upstream` setting, `upstream = true`: traffic from
//!   the balancers to the web nodes crosses the network, so it goes over TLS (each web
//!   node a certificate of the stack's CA for its address);
//! - data paths under the stack's data folder move to its `hosts/` subfolder (etcd and
//!   PostgreSQL remember their addresses: the rehearsal keeps its own data).
//!
//! Pure: text in, text out.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostic, Source};

/// `[hosts]` in a topology: where `rampart up` runs the nodes.
///
/// ```toml
/// [hosts]
/// mode = "netns"            # or "loopback" (the default): one machine's loopback
/// subnet = "10.213.0.0/24"  # netns: this machine .1, nodes .10 on, virtual IPs .100 on, client .250
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsSection {
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub subnet: Option<Spanned<String>>,
}

/// Default subnet of the rehearsal.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/24";

/// `[hosts]`: the rehearsal's subnet when `mode = "netns"`, None for loopback.
pub fn validate(src: &Source, h: &HostsSection, errs: &mut Vec<Diagnostic>) -> Option<Ipv4Addr> {
    let subnet = match &h.subnet {
        Some(s) => match parse_subnet(s.get_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                errs.push(src.error_at(s.span(), e));
                None
            }
        },
        None => parse_subnet(DEFAULT_SUBNET).ok(),
    };
    match h.mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("loopback") => None,
        Some("netns") => subnet,
        Some(other) => {
            if let Some(m) = &h.mode {
                errs.push(src.error_at(
                    m.span(),
                    format!(
                        "hosts mode \"{other}\" is unknown; expected \"loopback\" or \"netns\""
                    ),
                ));
            }
            None
        }
    }
}
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::{NodeKind, Topology};

/// A node's host in the rehearsal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub kind: NodeKind,
    pub ip: Ipv4Addr,
}

/// Where everything is in the rehearsal's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The /24's network address.
    pub subnet: Ipv4Addr,
    /// This machine on the bridge (`.1`).
    pub operator: Ipv4Addr,
    /// The client host (`.250`).
    pub client: Ipv4Addr,
    pub hosts: Vec<Host>,
    pub vips: Vec<Ipv4Addr>,
}

impl Layout {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

fn nth(subnet: Ipv4Addr, i: u8) -> Ipv4Addr {
    let o = subnet.octets();
    Ipv4Addr::new(o[0], o[1], o[2], i)
}

/// Parse a `/24` subnet, e.g. `10.213.0.0/24` (only /24: `.1`, `.10`-`.99`, `.100`-`.109`
/// and `.250` have fixed roles).
pub fn parse_subnet(s: &str) -> Result<Ipv4Addr, String> {
    let (a, p) = s.split_once('/').unwrap_or((s, "24"));
    let ip: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("subnet \"{s}\" is not an IPv4 /24, e.g. 10.213.0.0/24"))?;
    if p != "24" || ip.octets()[3] != 0 {
        return Err(format!(
            "subnet \"{s}\" must be a /24 network address, e.g. 10.213.0.0/24"
        ));
    }
    if ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() {
        return Err(format!("subnet \"{s}\" cannot be used for hosts"));
    }
    Ok(ip)
}

/// Every port a node binds, with the node's name.
fn ports(t: &Topology) -> HashMap<u16, String> {
    let mut m = HashMap::new();
    for e in t.etcd.iter().flat_map(|e| &e.members) {
        m.insert(e.client.port(), e.name.clone());
        m.insert(e.peer.port(), e.name.clone());
    }
    for n in t.db.iter().flat_map(|d| &d.nodes) {
        m.insert(n.port, n.name.clone());
        m.insert(n.api.port(), n.name.clone());
    }
    for w in &t.web {
        m.insert(w.listen.port(), w.name.clone());
    }
    if let Some(lb) = &t.lb {
        for n in &lb.nodes {
            m.insert(n.address.port(), n.name.clone());
            if let Some(a) = n.admin {
                m.insert(a.port(), n.name.clone());
            }
        }
    }
    if let Some(mon) = &t.monitor {
        m.insert(mon.listen.port(), mon.name.clone());
    }
    m
}

/// Which table a line opens (`[[lb.nodes]]` -> `lb.nodes`), if it opens one.
fn table_of(line: &str) -> Option<&str> {
    let l = line.trim();
    let inner = l
        .strip_prefix("[[")
        .and_then(|r| r.split_once("]]"))
        .or_else(|| l.strip_prefix('[').and_then(|r| r.split_once(']')))?;
    Some(inner.0.trim())
}

/// The rehearsal's topology text and layout; `data` is the stack's data folder (paths
/// under it move to `data/hosts`). Errors say what cannot be rehearsed.
pub fn rehearsal(
    text: &str,
    t: &Topology,
    subnet: Ipv4Addr,
    data: &Path,
) -> Result<(String, Layout), String> {
    let mut hosts = Vec::new();
    for (i, n) in t.nodes().iter().enumerate() {
        let last = 10 + i;
        if last > 99 {
            return Err("more than 90 nodes do not fit the rehearsal's /24".into());
        }
        hosts.push(Host {
            name: n.name.clone(),
            kind: n.kind,
            ip: nth(subnet, last as u8),
        });
    }
    let ip_of: HashMap<&str, Ipv4Addr> = hosts.iter().map(|h| (h.name.as_str(), h.ip)).collect();
    let ports = ports(t);
    let lb = t.lb.as_ref();
    let listener_ports: Vec<u16> = lb
        .map(|l| {
            l.config
                .listeners
                .iter()
                .map(|x| x.address.port())
                .collect()
        })
        .unwrap_or_default();
    let operator = nth(subnet, 1);
    let client = nth(subnet, 250);
    let lb_nodes: Vec<&str> = lb
        .map(|l| l.nodes.iter().map(|n| n.name.as_str()).collect())
        .unwrap_or_default();
    let mut vips: Vec<Ipv4Addr> = lb
        .map(|l| {
            l.vips()
                .into_iter()
                .filter_map(|v| match v {
                    IpAddr::V4(x) => Some(x),
                    IpAddr::V6(_) => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let add_vips = vips.is_empty() && !lb_nodes.is_empty();
    if add_vips {
        vips.push(nth(subnet, 100));
        if lb_nodes.len() > 1 {
            vips.push(nth(subnet, 101));
        }
    }
    let data_from = format!("{}/", data.display());
    let data_to = format!("{}/hosts/", data.display());
    // The same folder written relative to the topology file (what `rampart init` writes).
    let relative = t
        .file
        .parent()
        .and_then(|d| data.strip_prefix(d).ok())
        .filter(|r| !r.as_os_str().is_empty())
        .map(|r| {
            (
                format!("\"{}/", r.display()),
                format!("\"{}/hosts/", r.display()),
            )
        });
    let token_dir = data.join("hosts").join("lb");

    // `[tls] upstream` on unless the file says otherwise (self-signed: up issues the pairs).
    let upstream_unset = {
        let mut tb = String::new();
        let mut set = false;
        for line in text.lines() {
            if let Some(x) = table_of(line) {
                tb = x.to_string();
            } else if tb == "tls" && line.trim_start().starts_with("upstream") {
                set = true;
            }
        }
        !set
    };
    let add_upstream = upstream_unset
        && t.tls
            .as_ref()
            .is_some_and(|c| c.certificate == crate::security::Certificate::SelfSigned);
    let mut out = String::with_capacity(text.len() + 1024);
    let mut table = String::new();
    let lines = text.lines();
    // Each [[lb.nodes]]/[[db.nodes]] block, so its name is known for its other lines.
    let mut block: Vec<String> = Vec::new();
    let flush = |block: &mut Vec<String>, table: &str, out: &mut String| -> Result<(), String> {
        let name = block
            .iter()
            .find_map(|l| {
                let l = l.trim();
                let v = l.strip_prefix("name")?.trim_start().strip_prefix('=')?;
                Some(v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_default();
        for l in block.drain(..) {
            let trimmed = l.trim_start();
            if table == "lb.nodes" && trimmed.starts_with("admin") && !trimmed.starts_with("admin_")
            {
                let ip = ip_of.get(name.as_str()).copied().unwrap_or(operator);
                let port = l
                    .split('"')
                    .nth(1)
                    .and_then(|v| v.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok());
                let Some(port) = port else {
                    out.push_str(&l);
                    out.push('\n');
                    continue;
                };
                out.push_str(&format!(
                    "admin = \"{ip}:{port}\"   # the rehearsal: on the node's own address, token required\nadmin_token_file = \"{}\"\n",
                    token_dir.join(format!("{name}.admin-token")).display()
                ));
                continue;
            }
            if table == "db.nodes" && trimmed.starts_with("host") {
                if let Some(ip) = ip_of.get(name.as_str()) {
                    out.push_str(&format!("host = \"{ip}\"\n"));
                    continue;
                }
            }
            out.push_str(&l);
            out.push('\n');
        }
        Ok(())
    };
    for line in lines {
        if let Some(tb) = table_of(line) {
            flush(&mut block, &table, &mut out)?;
            table = tb.to_string();
        }
        let mut l = line.replace(&data_from, &data_to);
        if let Some((from, to)) = &relative {
            l = l.replace(from.as_str(), to);
        }
        // Every 127.0.0.1:PORT: the node binding PORT, or 0.0.0.0 for the lb listeners.
        let mut rewritten = String::with_capacity(l.len());
        let mut rest = l.as_str();
        while let Some(at) = rest.find("127.0.0.1:") {
            rewritten.push_str(&rest[..at]);
            let after = &rest[at + "127.0.0.1:".len()..];
            let digits: String = after.chars().take_while(|c| c.is_ascii_digit()).collect();
            let port = digits.parse::<u16>().ok();
            let ip = match port {
                Some(p) if listener_ports.contains(&p) => Some("0.0.0.0".to_string()),
                Some(p) => ports
                    .get(&p)
                    .and_then(|n| ip_of.get(n.as_str()))
                    .map(|ip| ip.to_string()),
                None => None,
            };
            rewritten.push_str(&ip.unwrap_or_else(|| "127.0.0.1".to_string()));
            rewritten.push(':');
            rest = after;
        }
        rewritten.push_str(rest);
        l = rewritten;
        if table == "monitor" && l.trim_start().starts_with("allow") {
            l = format!(
                "allow = [\"127.0.0.1/32\", \"{operator}/32\"]   # the rehearsal's operator"
            );
        }
        if table == "firewall" && l.trim_start().starts_with("admin") {
            // Replaced below, with the operator.
            continue;
        }
        if add_upstream && table == "tls" && table_of(&l) == Some("tls") {
            out.push_str(&l);
            out.push_str("\nupstream = true   # the rehearsal: balancers -> web nodes cross the network, over TLS\n");
            continue;
        }
        if table == "firewall" && (l.trim() == "[firewall]") {
            out.push_str(&l);
            out.push('\n');
            out.push_str(&format!(
                "admin = [\"{operator}/32\"]   # the rehearsal's operator: this machine on the bridge\ntrusted = [\"{operator}/32\"]   # ... which runs the health checks of rampart up\n"
            ));
            continue;
        }
        if table == "lb.nodes" || table == "db.nodes" {
            block.push(l);
        } else {
            out.push_str(&l);
            out.push('\n');
        }
    }
    flush(&mut block, &table, &mut out)?;
    if add_vips {
        for (i, v) in vips.iter().enumerate() {
            let master = lb_nodes.get(i).copied().unwrap_or(lb_nodes[0]);
            out.push_str(&format!(
                "\n[[lb.vip]]   # added by the rehearsal\naddress = \"{v}/24\"\nmaster = \"{master}\"\n"
            ));
        }
    }
    if t.firewall.is_none() {
        out.push_str(&format!(
            "\n[firewall]   # added by the rehearsal\npolicy = \"drop\"\nadmin = [\"{operator}/32\"]\ntrusted = [\"{operator}/32\"]\n"
        ));
    }
    Ok((
        out,
        Layout {
            subnet,
            operator,
            client,
            hosts,
            vips,
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::default::{render, DefaultOptions};
    use crate::Source;

    #[test]
    fn the_default_topology_is_rehearsed_on_hosts_with_two_virtual_ips() {
        std::env::set_var(crate::default::DB_PASSWORD_ENV, "test");
        let dir = std::env::temp_dir().join(format!("rampart-hosts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("site")).unwrap();
        let data = dir.join("data");
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: &data,
            port_base: 8000,
        });
        let file = dir.join("rampart.toml");
        let t = Topology::from_source(&Source::new(&file, text.clone())).unwrap();
        let subnet = parse_subnet("10.213.0.0/24").unwrap();
        let (out, layout) = rehearsal(&text, &t, subnet, &data).unwrap();
        let r = Topology::from_source(&Source::new(&file, out.clone()))
            .unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert!(
            !out.contains("127.0.0.1:8"),
            "a node address kept loopback:\n{out}"
        );
        assert_eq!(layout.hosts.len(), 12);
        assert_eq!(
            layout.host("etcd1").unwrap().ip,
            Ipv4Addr::new(10, 213, 0, 10)
        );
        let db1 =
            r.db.as_ref()
                .unwrap()
                .nodes
                .iter()
                .find(|n| n.name == "db1")
                .unwrap();
        assert_eq!(db1.host, layout.host("db1").unwrap().ip.to_string());
        let lb = r.lb.as_ref().unwrap();
        // Both balancers run both virtual routers, each mastering one address.
        assert_eq!(
            layout.vips,
            vec![
                Ipv4Addr::new(10, 213, 0, 100),
                Ipv4Addr::new(10, 213, 0, 101)
            ]
        );
        assert_eq!(lb.node_vrrp("lb1")[0].priority, 150);
        assert_eq!(lb.node_vrrp("lb1")[1].priority, 100);
        assert_eq!(lb.node_vrrp("lb2")[1].priority, 150);
        assert!(lb
            .config
            .listeners
            .iter()
            .all(|l| l.address.ip().is_unspecified()));
        let lb1 = lb.node("lb1").unwrap();
        assert_eq!(
            lb1.admin.unwrap().ip(),
            IpAddr::V4(layout.host("lb1").unwrap().ip)
        );
        assert!(lb1.admin_token_file.is_some());
        // Pools reach the web hosts; etcd clients reach the members.
        let servers = &lb.config.pools[0].servers;
        assert_eq!(
            servers[0].address.ip(),
            IpAddr::V4(layout.host("web1").unwrap().ip)
        );
        assert!(
            out.contains(&format!("{}/hosts/db", data.display())),
            "{out}"
        );
        let fw = r.firewall.as_ref().unwrap();
        assert_eq!(fw.admin.len(), 1, "{out}");
        // Balancers -> web nodes over TLS: each web node serves its own pair of the
        // stack's CA, and the pool (requests and health checks) verifies it by the
        // server's address, against that CA.
        let tls = r.tls.as_ref().unwrap();
        assert!(tls.upstream, "{out}");
        assert!(
            !t.tls.as_ref().unwrap().upstream,
            "loopback keeps plain HTTP"
        );
        assert!(t.web.iter().all(|w| w.tls.is_none()));
        for w in &r.web {
            let (cert, key) = tls.web_pair(&w.name);
            assert_eq!(w.tls, Some(crate::web::WebTls { cert, key }), "{}", w.name);
        }
        let pt = lb.config.pools[0].tls.as_ref().expect("pool tls");
        assert_eq!(pt.ca, tls.trust_file());
        assert_eq!(pt.server_name, None, "verified by the server's IP");
        assert_eq!(t.lb.as_ref().unwrap().config.pools[0].tls, None);
        // The lb process reads the [lb] section alone: the same pool tls.
        let hosts_file = dir.join("rampart.hosts.toml");
        std::fs::write(&hosts_file, &out).unwrap();
        let alone = crate::lb_section::LbTopology::load(&hosts_file)
            .unwrap()
            .unwrap();
        assert_eq!(alone.config.pools[0].tls.as_ref(), Some(pt));
        // An explicit choice is kept.
        let off = text.replace("[tls]\n", "[tls]\nupstream = false\n");
        assert_ne!(off, text);
        let t_off = Topology::from_source(&Source::new(&file, off.clone())).unwrap();
        let (out_off, _) = rehearsal(&off, &t_off, subnet, &data).unwrap();
        let r_off = Topology::from_source(&Source::new(&file, out_off)).unwrap();
        assert!(!r_off.tls.as_ref().unwrap().upstream);
        assert!(r_off.web.iter().all(|w| w.tls.is_none()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hosts_section_chooses_the_mode_and_names_its_mistakes() {
        let check = |text: &str| {
            let src = Source::new("t.toml", text);
            #[derive(serde::Deserialize)]
            struct F {
                hosts: HostsSection,
            }
            let f: F = src.parse().unwrap();
            let mut errs = Vec::new();
            let r = validate(&src, &f.hosts, &mut errs);
            (r, errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            check("[hosts]\nmode = \"netns\"\n").0,
            Some(Ipv4Addr::new(10, 213, 0, 0))
        );
        assert_eq!(
            check("[hosts]\nmode = \"netns\"\nsubnet = \"10.9.8.0/24\"\n").0,
            Some(Ipv4Addr::new(10, 9, 8, 0))
        );
        assert_eq!(check("[hosts]\nmode = \"loopback\"\n").0, None);
        let (_, e) = check("[hosts]\nmode = \"vm\"\nsubnet = \"10.9.8.1/16\"\n");
        assert!(
            e.iter()
                .any(|m| m.contains("t.toml:2:8: hosts mode \"vm\" is unknown")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("t.toml:3:10:")), "{e:?}");
    }

    #[test]
    fn subnets_are_checked() {
        assert!(parse_subnet("10.213.0.0/24").is_ok());
        assert!(parse_subnet("10.213.0.5/24").is_err());
        assert!(parse_subnet("10.213.0.0/16").is_err());
        assert!(parse_subnet("127.0.0.0/24").is_err());
        assert!(parse_subnet("nonsense").is_err());
    }
}
