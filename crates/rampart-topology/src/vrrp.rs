//! `[[vrrp]]` in an lb file: the virtual routers a balancer runs to share virtual IPs with
//! its peers (VRRP version 3, RFC 5798; keepalived's `vrrp_instance`).
//!
//! ```toml
//! [[vrrp]]
//! name = "site"                   # default "vrid-<vrid>"
//! interface = "eth0"
//! vrid = 51                       # 1-255, the same on every balancer of the router
//! priority = 150                  # 1-255 (255: the address owner); default 100
//! advert_interval = "50ms"        # 10ms-40.95s, in steps of 10 ms; default 50ms
//! preempt = true                  # default true
//! preempt_delay = "0s"
//! addresses = ["10.0.0.100/24"]   # the virtual IPs: all IPv4, or all IPv6 ("fd00::100/64")
//! unicast_peers = ["10.0.0.2"]    # optional: adverts to these instead of 224.0.0.18
//!                                 # (IPv6: the peers' link-local addresses, fe80::...)
//! track = [{ listener = "site", weight = 100 }]  # default: every listener, weight 100
//! ```
//!
//! A tracked listener counts as failed when its socket is gone or every server of its
//! pool is down; its weight is taken off the priority (0: the balancer gives up
//! mastership altogether while it fails). Defaults: a hard failure costs a client about
//! 3 adverts plus the skew, 150-200 ms at 50 ms adverts.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostic, Source};
use crate::lb::parse_duration;

pub const DEFAULT_PRIORITY: u8 = 100;
pub const DEFAULT_ADVERT_INTERVAL: Duration = Duration::from_millis(50);
pub const DEFAULT_TRACK_WEIGHT: u8 = 100;

/// A virtual address with its prefix length (`10.0.0.100/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VirtualAddress {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for VirtualAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl std::str::FromStr for VirtualAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| {
            format!("\"{s}\" is not an IP address; expected e.g. \"10.0.0.100/24\"")
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("\"{s}\": the prefix length must be 0 to {max}"))?,
        };
        Ok(VirtualAddress { ip, prefix })
    }
}

/// What a virtual router watches to lower its priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// A listener of this balancer, by name.
    pub listener: String,
    /// Taken off the priority while the listener fails; 0 gives up mastership.
    pub weight: u8,
}

/// One validated virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpInstance {
    pub name: String,
    pub interface: String,
    pub vrid: u8,
    pub priority: u8,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub addresses: Vec<VirtualAddress>,
    pub unicast_peers: Vec<IpAddr>,
    /// Empty in the file: every listener at [`DEFAULT_TRACK_WEIGHT`] (filled in by the lb
    /// file's validation, which knows the listeners).
    pub track: Vec<Track>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVrrp {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub interface: Spanned<String>,
    pub vrid: Spanned<i64>,
    #[serde(default)]
    pub priority: Option<Spanned<i64>>,
    #[serde(default)]
    pub advert_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub preempt: Option<bool>,
    #[serde(default)]
    pub preempt_delay: Option<Spanned<String>>,
    pub addresses: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub unicast_peers: Vec<Spanned<String>>,
    #[serde(default)]
    pub track: Option<Vec<Spanned<RawTrack>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrack {
    pub listener: Spanned<String>,
    #[serde(default)]
    pub weight: Option<Spanned<i64>>,
}

/// Validate every `[[vrrp]]`; `listeners` are the file's listener names (for `track`).
pub fn validate(
    src: &Source,
    raw: &[RawVrrp],
    listeners: &[&str],
    errs: &mut Vec<Diagnostic>,
) -> Vec<VrrpInstance> {
    let mut out = Vec::new();
    let mut seen_vrid: HashSet<(String, u8)> = HashSet::new();
    let mut seen_name: HashSet<String> = HashSet::new();
    let mut seen_vip: HashSet<IpAddr> = HashSet::new();
    for r in raw {
        let before = errs.len();
        let mut err = |span: std::ops::Range<usize>, m: String| errs.push(src.error_at(span, m));
        let interface = r.interface.get_ref().clone();
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
            err(
                r.interface.span(),
                format!(
                    "\"{interface}\" is not an interface name (1-15 characters, e.g. \"eth0\")"
                ),
            );
        }
        let vrid_raw = *r.vrid.get_ref();
        let vrid = match u8::try_from(vrid_raw) {
            Ok(v) if v >= 1 => v,
            _ => {
                err(
                    r.vrid.span(),
                    format!("vrid must be between 1 and 255, got {vrid_raw}"),
                );
                1
            }
        };
        if !seen_vrid.insert((interface.clone(), vrid)) {
            err(
                r.vrid.span(),
                format!("vrid {vrid} is used twice on interface {interface}"),
            );
        }
        let name = r
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| format!("vrid-{vrid}"));
        if !seen_name.insert(name.clone()) {
            let span = r.name.as_ref().map_or(r.vrid.span(), |n| n.span());
            err(
                span,
                format!("virtual router name \"{name}\" is used twice"),
            );
        }
        let priority = match &r.priority {
            None => DEFAULT_PRIORITY,
            Some(p) => match u8::try_from(*p.get_ref()) {
                Ok(v) if v >= 1 => v,
                _ => {
                    err(
                        p.span(),
                        format!(
                            "priority must be between 1 and 255 (255: the address owner), got {}",
                            p.get_ref()
                        ),
                    );
                    DEFAULT_PRIORITY
                }
            },
        };
        let advert_interval = match &r.advert_interval {
            None => DEFAULT_ADVERT_INTERVAL,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d)
                    if d >= Duration::from_millis(10)
                        && d <= Duration::from_millis(40_950)
                        && d.as_nanos() % 10_000_000 == 0 =>
                {
                    d
                }
                Ok(_) => {
                    err(
                        s.span(),
                        "advert_interval must be 10ms to 40.95s in steps of 10ms (VRRP counts centiseconds)".into(),
                    );
                    DEFAULT_ADVERT_INTERVAL
                }
                Err(e) => {
                    err(s.span(), e);
                    DEFAULT_ADVERT_INTERVAL
                }
            },
        };
        let preempt_delay = match &r.preempt_delay {
            None => Duration::ZERO,
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) if d <= Duration::from_secs(3600) => d,
                Ok(_) => {
                    err(s.span(), "preempt_delay must be at most 1h".into());
                    Duration::ZERO
                }
                Err(e) => {
                    err(s.span(), e);
                    Duration::ZERO
                }
            },
        };
        let mut addresses = Vec::new();
        if r.addresses.get_ref().is_empty() {
            err(
                r.addresses.span(),
                "addresses must name at least one virtual IP, e.g. [\"10.0.0.100/24\"]".into(),
            );
        }
        let mut family: Option<bool> = None; // Some(true): IPv6
        for a in r.addresses.get_ref() {
            match a.get_ref().parse::<VirtualAddress>() {
                Ok(v) if v.ip.is_loopback() || v.ip.is_multicast() || v.ip.is_unspecified() => err(
                    a.span(),
                    format!("{v} cannot be a virtual address (loopback, multicast or unspecified)"),
                ),
                Ok(v) if family.is_some_and(|six| six != v.ip.is_ipv6()) => err(
                    a.span(),
                    format!(
                        "{v}: a virtual router's addresses are all IPv4 or all IPv6 (RFC 5798); use a second [[vrrp]] with another vrid for the other family"
                    ),
                ),
                Ok(v) => {
                    family = Some(v.ip.is_ipv6());
                    if !seen_vip.insert(v.ip) {
                        err(
                            a.span(),
                            format!("{} is a virtual address of two virtual routers", v.ip),
                        );
                    }
                    addresses.push(v);
                }
                Err(e) => err(a.span(), e),
            }
        }
        if addresses.len() > 255 {
            err(
                r.addresses.span(),
                "at most 255 addresses per virtual router".into(),
            );
        }
        let mut unicast_peers = Vec::new();
        let six = family.unwrap_or(false);
        for p in &r.unicast_peers {
            match p.get_ref().parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if !six && !ip.is_multicast() && !ip.is_unspecified() => {
                    unicast_peers.push(IpAddr::V4(ip))
                }
                Ok(IpAddr::V6(ip)) if six && (ip.segments()[0] & 0xffc0) == 0xfe80 => {
                    unicast_peers.push(IpAddr::V6(ip))
                }
                Ok(IpAddr::V6(_)) if six => err(
                    p.span(),
                    format!(
                        "unicast peer \"{}\" must be the peer's IPv6 link-local address (fe80::/10): VRRP over IPv6 is sent from it",
                        p.get_ref()
                    ),
                ),
                _ => err(
                    p.span(),
                    format!(
                        "unicast peer \"{}\" is not a unicast {} address (the family of this router's addresses)",
                        p.get_ref(),
                        if six { "IPv6" } else { "IPv4" }
                    ),
                ),
            }
        }
        let track = match &r.track {
            None => listeners
                .iter()
                .map(|l| Track {
                    listener: (*l).to_string(),
                    weight: DEFAULT_TRACK_WEIGHT,
                })
                .collect(),
            Some(list) => {
                let mut t = Vec::new();
                for item in list {
                    let item_ref = item.get_ref();
                    let l = item_ref.listener.get_ref();
                    if !listeners.contains(&l.as_str()) {
                        err(
                            item_ref.listener.span(),
                            format!(
                                "track names listener \"{l}\", which this file does not define (listeners: {})",
                                listeners.join(", ")
                            ),
                        );
                    }
                    let weight = match &item_ref.weight {
                        None => DEFAULT_TRACK_WEIGHT,
                        Some(w) => match u8::try_from(*w.get_ref()) {
                            Ok(v) => v,
                            Err(_) => {
                                err(
                                    w.span(),
                                    format!(
                                        "weight must be 0 (give up mastership) to 255, got {}",
                                        w.get_ref()
                                    ),
                                );
                                DEFAULT_TRACK_WEIGHT
                            }
                        },
                    };
                    t.push(Track {
                        listener: l.clone(),
                        weight,
                    });
                }
                t
            }
        };
        if errs.len() == before {
            out.push(VrrpInstance {
                name,
                interface,
                vrid,
                priority,
                advert_interval,
                preempt: r.preempt.unwrap_or(true),
                preempt_delay,
                addresses,
                unicast_peers,
                track,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct F {
        vrrp: Vec<RawVrrp>,
    }

    fn check(text: &str) -> Result<Vec<VrrpInstance>, Vec<String>> {
        let src = Source::new("lb.toml", text);
        let f: F = src.parse().map_err(|e| vec![e.to_string()])?;
        let mut errs = Vec::new();
        let v = validate(&src, &f.vrrp, &["site", "direct"], &mut errs);
        if errs.is_empty() {
            Ok(v)
        } else {
            Err(errs.iter().map(|d| d.to_string()).collect())
        }
    }

    #[test]
    fn defaults_track_every_listener_and_advertise_every_50ms() {
        let v =
            check("[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\naddresses = [\"10.0.0.100/24\"]\n")
                .expect("valid");
        assert_eq!(v[0].name, "vrid-51");
        assert_eq!(v[0].priority, 100);
        assert_eq!(v[0].advert_interval, Duration::from_millis(50));
        assert!(v[0].preempt);
        assert_eq!(v[0].track.len(), 2);
        assert_eq!(v[0].addresses[0].to_string(), "10.0.0.100/24");
    }

    #[test]
    fn every_mistake_is_named_with_its_position() {
        let e = check(
            "[[vrrp]]\ninterface = \"eth0\"\nvrid = 300\npriority = 0\nadvert_interval = \"15ms\"\naddresses = [\"10.0.0.300/24\", \"fd00::1\"]\nunicast_peers = [\"224.0.0.18\"]\ntrack = [{ listener = \"nope\", weight = 300 }]\n",
        )
        .expect_err("invalid");
        let all = e.join("\n");
        for want in [
            "lb.toml:3:8: vrid must be between 1 and 255",
            "lb.toml:4:12: priority must be between 1 and 255",
            "lb.toml:5:19: advert_interval must be 10ms to 40.95s",
            "is not an IP address",
            "unicast peer \"224.0.0.18\"",
            "track names listener \"nope\"",
            "weight must be 0",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn ipv6_routers_are_one_family_and_their_peers_are_link_local() {
        let v = check(
            "[[vrrp]]\ninterface = \"eth0\"\nvrid = 52\naddresses = [\"fd00::100/64\"]\nunicast_peers = [\"fe80::2\"]\n",
        )
        .expect("valid");
        assert!(v[0].addresses[0].ip.is_ipv6());
        assert_eq!(v[0].unicast_peers[0].to_string(), "fe80::2");
        let e = check(
            "[[vrrp]]\ninterface = \"eth0\"\nvrid = 52\naddresses = [\"fd00::100/64\", \"10.0.0.1/24\"]\nunicast_peers = [\"fd00::2\", \"10.0.0.2\"]\n",
        )
        .expect_err("mixed");
        let all = e.join("\n");
        for want in [
            "lb.toml:4:30: 10.0.0.1/24: a virtual router's addresses are all IPv4 or all IPv6",
            "unicast peer \"fd00::2\" must be the peer's IPv6 link-local address",
            "unicast peer \"10.0.0.2\" is not a unicast IPv6 address",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn a_vrid_or_an_address_used_twice_is_refused() {
        let e = check(
            "[[vrrp]]\ninterface = \"eth0\"\nvrid = 5\naddresses = [\"10.0.0.1\"]\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 5\naddresses = [\"10.0.0.1\"]\n",
        )
        .expect_err("duplicates");
        let all = e.join("\n");
        assert!(
            all.contains("vrid 5 is used twice on interface eth0"),
            "{all}"
        );
        assert!(
            all.contains("10.0.0.1 is a virtual address of two"),
            "{all}"
        );
        assert!(
            all.contains("virtual router name \"vrid-5\" is used twice"),
            "{all}"
        );
    }
}
