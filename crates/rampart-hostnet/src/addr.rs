//! Adding and removing an interface address by rtnetlink, as `ip addr add|del` does.
//!
//! One request per call on a fresh `NETLINK_ROUTE` socket, acknowledged by the kernel
//! (`NLM_F_ACK`) within a second. Adding an address that is already there and removing
//! one that is gone both succeed: the caller states what it wants held, not a change.

use std::io::Read;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::NetError;

/// An address with its prefix length, as on an interface (`10.0.0.100/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfAddr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for IfAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl std::str::FromStr for IfAddr {
    type Err = String;

    /// `ADDR/PREFIX`, or a bare address (a host prefix: /32 or /128).
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address (expected e.g. 10.0.0.100/24)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(IfAddr { ip, prefix })
    }
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;

static SEQ: AtomicU32 = AtomicU32::new(1);

/// Add `a` to the interface with index `index` (already there: fine).
pub fn add(index: u32, a: IfAddr) -> Result<(), NetError> {
    request(
        RTM_NEWADDR,
        NLM_F_CREATE | NLM_F_REPLACE,
        index,
        a,
        libc::EEXIST,
    )
    .map_err(|source| NetError::Netlink {
        what: format!("add {a} to interface {index}"),
        source,
    })
}

/// Remove `a` from the interface with index `index` (already gone: fine).
pub fn remove(index: u32, a: IfAddr) -> Result<(), NetError> {
    request(RTM_DELADDR, 0, index, a, libc::EADDRNOTAVAIL).map_err(|source| NetError::Netlink {
        what: format!("remove {a} from interface {index}"),
        source,
    })
}

/// Whether `ip` is on the interface named `name` now.
pub fn present(name: &str, ip: IpAddr) -> bool {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.into_iter().any(|a| {
        a.interface_name == name
            && a.address.as_ref().is_some_and(|s| {
                s.as_sockaddr_in().map(|v| IpAddr::V4(v.ip())) == Some(ip)
                    || s.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())) == Some(ip)
            })
    })
}

/// The request's bytes: `nlmsghdr`, `ifaddrmsg`, then `IFA_LOCAL` and `IFA_ADDRESS`.
fn message(kind: u16, flags: u16, seq: u32, index: u32, a: IfAddr) -> Vec<u8> {
    let (family, octets, ifa_flags): (u8, Vec<u8>, u8) = match a.ip {
        IpAddr::V4(v) => (libc::AF_INET as u8, v.octets().to_vec(), 0),
        // No duplicate address detection: the address must answer at once on takeover.
        IpAddr::V6(v) => (libc::AF_INET6 as u8, v.octets().to_vec(), IFA_F_NODAD),
    };
    let attr_len = 4 + octets.len(); // already a multiple of 4
    let len = 16 + 8 + 2 * attr_len;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, a.prefix, ifa_flags, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    for t in [IFA_LOCAL, IFA_ADDRESS] {
        m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        m.extend_from_slice(&t.to_ne_bytes());
        m.extend_from_slice(&octets);
    }
    m
}

/// The errno of the kernel's acknowledgement of `seq` (0 = done), if `buf` holds it.
fn ack_errno(buf: &[u8], seq: u32) -> Option<i32> {
    let mut at = 0;
    while buf.len() >= at + 16 {
        let word = |o: usize| -> Option<[u8; 4]> { buf.get(at + o..at + o + 4)?.try_into().ok() };
        let len = u32::from_ne_bytes(word(0)?) as usize;
        let kind = u16::from_ne_bytes(buf.get(at + 4..at + 6)?.try_into().ok()?);
        let s = u32::from_ne_bytes(word(8)?);
        if len < 16 {
            return None;
        }
        if kind == NLMSG_ERROR && s == seq {
            return Some(-i32::from_ne_bytes(word(16)?));
        }
        at += (len + 3) & !3;
    }
    None
}

fn request(kind: u16, flags: u16, index: u32, a: IfAddr, benign: i32) -> std::io::Result<()> {
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    // No destination: a netlink socket that names none sends to the kernel.
    sock.send(&message(kind, flags, seq, index, a))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = (&sock).read(&mut buf)?;
        match ack_errno(&buf[..n], seq) {
            Some(0) => return Ok(()),
            Some(e) if e == benign => return Ok(()),
            Some(e) => return Err(std::io::Error::from_raw_os_error(e)),
            None => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_prefix() {
        let a: IfAddr = "10.0.0.100/24".parse().expect("v4");
        assert_eq!((a.ip.to_string(), a.prefix), ("10.0.0.100".into(), 24));
        let b: IfAddr = "10.0.0.100".parse().expect("bare");
        assert_eq!(b.prefix, 32);
        let c: IfAddr = "fd00::1/64".parse().expect("v6");
        assert_eq!(c.prefix, 64);
        assert!("10.0.0.100/33".parse::<IfAddr>().is_err());
        assert!("nonsense/24".parse::<IfAddr>().is_err());
        assert_eq!(a.to_string(), "10.0.0.100/24");
    }

    #[test]
    fn the_request_is_laid_out_as_the_kernel_reads_it() {
        let m = message(
            RTM_NEWADDR,
            NLM_F_CREATE,
            7,
            3,
            "10.1.2.3/24".parse().expect("a"),
        );
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().expect("len")), 40);
        assert_eq!(
            u16::from_ne_bytes(m[4..6].try_into().expect("type")),
            RTM_NEWADDR
        );
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(u32::from_ne_bytes(m[20..24].try_into().expect("index")), 3);
        assert_eq!(&m[28..32], &[10, 1, 2, 3]);
        assert_eq!(&m[36..40], &[10, 1, 2, 3]);
    }

    #[test]
    fn acknowledgements_are_found_by_sequence() {
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&9u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        assert_eq!(ack_errno(&ack, 9), Some(libc::EEXIST));
        assert_eq!(ack_errno(&ack, 8), None);
        assert_eq!(ack_errno(&ack[..10], 9), None, "truncated");
    }
}
