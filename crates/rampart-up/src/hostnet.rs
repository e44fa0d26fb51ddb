//! `rampart up --hosts netns`: the separate-hosts rehearsal's network. Every node of the
//! rehearsal topology (`rampart_topology::hosts`) gets a network namespace
//! `rp-<cluster>-<node>` with one address on `eth0`, a veth to a bridge in this machine's
//! namespace; the bridge holds the operator's address (`.1`), so `rampart up`'s health
//! checks, `status` and the drills reach every node the way an operations host would. A
//! client namespace (`rp-<cluster>-client`, `.250`) reaches what the firewall lets anyone
//! reach: the site's virtual IPs. Each node's nftables ruleset is applied inside its host.
//! No host has a default route: nothing leaves the bridge's subnet.
//! Everything is recorded in `up.json` (`hosts`) and removed when `up` stops; `rampart
//! chaos heal` removes what a killed `up` left.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use rampart_topology::hosts::Layout;
use serde::{Deserialize, Serialize};

use crate::UpError;

/// One node's host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostState {
    pub node: String,
    pub netns: String,
    /// The veth end on the bridge (taken down by `lb-link-down`).
    pub port: String,
    pub ip: Ipv4Addr,
}

/// The rehearsal's network, as recorded in `up.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostsState {
    pub subnet: Ipv4Addr,
    pub bridge: String,
    pub operator: Ipv4Addr,
    pub hosts: Vec<HostState>,
    pub client: HostState,
    pub vips: Vec<Ipv4Addr>,
}

impl HostsState {
    pub fn host(&self, node: &str) -> Option<&HostState> {
        self.hosts.iter().find(|h| h.node == node)
    }

    /// Every namespace, the client's included.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.hosts
            .iter()
            .chain(std::iter::once(&self.client))
            .map(|h| h.netns.as_str())
    }
}

/// A short stable tag of the cluster name for interface names (15 characters at most).
fn tag(cluster: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in cluster.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0x00ff_ffff)
}

pub fn netns_prefix(cluster: &str) -> String {
    format!("rp-{cluster}-")
}

/// The names the network of `layout` will have.
pub fn plan(cluster: &str, layout: &Layout) -> HostsState {
    let t = tag(cluster);
    let host = |i: usize, node: &str, ip: Ipv4Addr| HostState {
        node: node.to_string(),
        netns: format!("{}{node}", netns_prefix(cluster)),
        port: format!("rpv{}{i}", &t[..4]),
        ip,
    };
    let hosts: Vec<HostState> = layout
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| host(i, &h.name, h.ip))
        .collect();
    HostsState {
        subnet: layout.subnet,
        bridge: format!("rpb{t}"),
        operator: layout.operator,
        client: host(hosts.len(), "client", layout.client),
        hosts,
        vips: layout.vips.clone(),
    }
}

fn ip(args: &[&str]) -> Result<(), UpError> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        UpError::Start(format!("run ip {}: {e} (install iproute2)", args.join(" ")))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UpError::Start(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether a route of this machine already covers `subnet` (another network: refuse).
fn subnet_in_use(subnet: Ipv4Addr) -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "match", &format!("{subnet}/24")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| !l.starts_with("default") && !l.trim().is_empty())
        .map(str::to_string)
}

/// Make the network (bridge, namespaces, veths, addresses). On failure, what was made is
/// removed again.
pub fn create(h: &HostsState) -> Result<(), UpError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(UpError::Start(
            "--hosts netns makes network namespaces: run rampart up as root".into(),
        ));
    }
    if let Some(route) = subnet_in_use(h.subnet) {
        return Err(UpError::Start(format!(
            "the rehearsal's subnet {}/24 is already routed here ({route}): choose another with --subnet, or run rampart chaos heal if a killed rampart up left it",
            h.subnet
        )));
    }
    let r = (|| {
        ip(&["link", "add", &h.bridge, "type", "bridge"])?;
        ip(&[
            "link",
            "set",
            &h.bridge,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", h.operator),
            "dev",
            &h.bridge,
        ])?;
        ip(&["link", "set", &h.bridge, "up"])?;
        for host in h.hosts.iter().chain(std::iter::once(&h.client)) {
            ip(&["netns", "add", &host.netns])?;
            ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
            ip(&[
                "link",
                "add",
                &host.port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host.netns,
            ])?;
            ip(&["link", "set", &host.port, "master", &h.bridge])?;
            ip(&["link", "set", &host.port, "up"])?;
            ip(&[
                "-n",
                &host.netns,
                "addr",
                "add",
                &format!("{}/24", host.ip),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    })();
    if r.is_err() {
        remove(h);
    }
    r
}

/// Remove the network (idempotent: what is gone already is skipped).
pub fn remove(h: &HostsState) {
    for ns in h.namespaces() {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
    let _ = Command::new("ip").args(["link", "del", &h.bridge]).output();
}

/// Namespaces of `cluster` left on this machine (a killed `up`), for `chaos heal`.
pub fn leftovers(cluster: &str) -> Vec<String> {
    let prefix = netns_prefix(cluster);
    let out = Command::new("ip").args(["netns", "list"]).output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Remove namespaces and the bridge of `cluster` that no running `up` owns.
pub fn remove_leftovers(cluster: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for ns in leftovers(cluster) {
        if Command::new("ip")
            .args(["netns", "del", &ns])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            removed.push(format!("network namespace {ns}"));
        }
    }
    let bridge = format!("rpb{}", tag(cluster));
    if Command::new("ip")
        .args(["link", "del", &bridge])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        removed.push(format!("bridge {bridge}"));
    }
    removed
}

/// Apply node `node`'s firewall ruleset inside its host.
pub fn apply_firewall(h: &HostState, rampart: &Path, topology: &Path) -> Result<(), UpError> {
    let out = Command::new("ip")
        .args(["netns", "exec", &h.netns])
        .arg(rampart)
        .args(["firewall", "--config"])
        .arg(topology)
        .args(["--node", &h.node, "--apply"])
        .output()
        .map_err(|e| UpError::Start(format!("apply {}'s firewall: {e}", h.node)))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(UpError::Start(format!(
            "apply {}'s firewall: {}",
            h.node,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Join namespace `netns` (this thread only), for a client that must live in a host.
pub fn enter(netns: &str) -> Result<(), UpError> {
    let path = format!("/run/netns/{netns}");
    let f = std::fs::File::open(&path).map_err(crate::io("open", &path))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| UpError::Drill(format!("enter {netns}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit_and_are_stable() {
        let layout = Layout {
            subnet: Ipv4Addr::new(10, 213, 0, 0),
            operator: Ipv4Addr::new(10, 213, 0, 1),
            client: Ipv4Addr::new(10, 213, 0, 250),
            hosts: (0..90)
                .map(|i| rampart_topology::hosts::Host {
                    name: format!("node{i}"),
                    kind: rampart_topology::NodeKind::Web,
                    ip: Ipv4Addr::new(10, 213, 0, 10 + i),
                })
                .collect(),
            vips: vec![],
        };
        let s = plan("a-rather-long-cluster-name", &layout);
        assert!(s.bridge.len() <= 15);
        assert!(s.hosts.iter().all(|h| h.port.len() <= 15));
        assert_eq!(s.client.netns, "rp-a-rather-long-cluster-name-client");
        assert_eq!(plan("a-rather-long-cluster-name", &layout), s);
        assert_ne!(plan("other", &layout).bridge, s.bridge);
    }
}
