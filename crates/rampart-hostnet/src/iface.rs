//! What VRRP needs to know of an interface, read from the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::NetError;

/// One interface as VRRP uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// Hardware (MAC) address; all zero for interfaces without one (loopback).
    pub mac: [u8; 6],
}

impl Interface {
    /// Look `name` up: its index and hardware address.
    pub fn lookup(name: &str) -> Result<Interface, NetError> {
        let err = |why: String| NetError::Interface {
            name: name.to_string(),
            why,
        };
        if name.is_empty() || name.len() > 15 || name.contains('/') {
            return Err(err("not an interface name".into()));
        }
        let index = nix::net::if_::if_nametoindex(name)
            .map_err(|e| err(format!("no such interface ({e})")))?;
        // From getifaddrs (the link-layer entry), not /sys/class/net: sysfs shows the
        // namespace of whoever mounted it, getifaddrs the caller's own.
        let addrs =
            nix::ifaddrs::getifaddrs().map_err(|e| err(format!("cannot list interfaces ({e})")))?;
        let mac = addrs
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.as_ref()?.as_link_addr()?.addr())
            .unwrap_or([0; 6]);
        Ok(Interface {
            name: name.to_string(),
            index,
            mac,
        })
    }

    /// The interface's first IPv4 address that is not one of `exclude` (the virtual
    /// addresses): the source of VRRP adverts and the tie breaker between routers.
    pub fn primary_v4(&self, exclude: &[IpAddr]) -> Result<Ipv4Addr, NetError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| NetError::Interface {
            name: self.name.clone(),
            why: format!("cannot list addresses ({e})"),
        })?;
        for a in addrs {
            if a.interface_name != self.name {
                continue;
            }
            let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
                continue;
            };
            let ip = sin.ip();
            if !exclude.contains(&IpAddr::V4(ip)) {
                return Ok(ip);
            }
        }
        Err(NetError::Interface {
            name: self.name.clone(),
            why: "has no IPv4 address of its own (VRRP sends from it)".into(),
        })
    }

    /// The interface's IPv6 link-local address (fe80::/10): the source of VRRP adverts
    /// over IPv6 (RFC 5798 section 5.1.2.1) and the tie breaker between routers.
    pub fn link_local_v6(&self) -> Result<Ipv6Addr, NetError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| NetError::Interface {
            name: self.name.clone(),
            why: format!("cannot list addresses ({e})"),
        })?;
        for a in addrs {
            if a.interface_name != self.name {
                continue;
            }
            let Some(sin6) = a.address.as_ref().and_then(|s| s.as_sockaddr_in6()) else {
                continue;
            };
            let ip = sin6.ip();
            if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                return Ok(ip);
            }
        }
        Err(NetError::Interface {
            name: self.name.clone(),
            why: "has no IPv6 link-local address (VRRP over IPv6 sends from it; is IPv6 disabled on it?)".into(),
        })
    }

    /// Whether the interface is up and running (`IFF_UP` and `IFF_RUNNING`: administratively
    /// up with a carrier).
    pub fn is_up(&self) -> bool {
        use nix::net::if_::InterfaceFlags as F;
        nix::ifaddrs::getifaddrs()
            .map(|mut all| {
                all.any(|a| {
                    a.interface_name == self.name && a.flags.contains(F::IFF_UP | F::IFF_RUNNING)
                })
            })
            .unwrap_or(false)
    }
}

/// `aa:bb:cc:dd:ee:ff` to bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_garbage_does_not() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        assert_eq!(parse_mac("02:42:ac:11:00"), None);
        assert_eq!(parse_mac("02:42:ac:11:00:02:03"), None);
        assert_eq!(parse_mac("zz:42:ac:11:00:02"), None);
    }

    #[test]
    fn loopback_is_found_and_a_missing_interface_is_named() {
        let lo = Interface::lookup("lo").expect("lo");
        assert!(lo.index > 0);
        assert_eq!(lo.mac, [0; 6]);
        assert_eq!(lo.primary_v4(&[]).expect("127.0.0.1"), Ipv4Addr::LOCALHOST);
        let e = Interface::lookup("nosuch0").expect_err("missing");
        assert!(e.to_string().contains("nosuch0"), "{e}");
    }
}
