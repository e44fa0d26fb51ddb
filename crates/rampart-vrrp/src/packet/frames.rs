//! The IPv4 header a raw socket hands over, and the announcements a new master sends:
//! gratuitous ARP for IPv4, unsolicited neighbour advertisements for IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{fold, pseudo_sum, sum_words, PacketError};

/// Length of the ARP payload [`garp_ipv4`] builds.
pub const GARP_LEN: usize = 28;
/// Length of the ICMPv6 message [`unsolicited_na`] builds.
pub const NA_LEN: usize = 32;

/// The parts of an IPv4 datagram a VRRP receiver needs (an `AF_INET`/`SOCK_RAW` socket
/// of protocol 112 delivers the IP header in front of the VRRP message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4View<'a> {
    /// Source address: give it to [`super::Advert::decode`] and to the state machine.
    pub src: Ipv4Addr,
    /// Destination address (224.0.0.18, or ours for unicast).
    pub dst: Ipv4Addr,
    /// Must be 255 ([`super::TTL`]) for a VRRP packet to be accepted.
    pub ttl: u8,
    /// IP protocol (112 for VRRP).
    pub protocol: u8,
    /// The bytes after the header (options skipped) up to the total length.
    pub payload: &'a [u8],
}

/// Splits an IPv4 datagram as a raw socket delivers it (header, options, payload). The
/// header length comes from IHL, so options are skipped; the payload ends at the total
/// length, so trailing bytes (padding) are not part of it. The header checksum is not
/// verified: the kernel drops datagrams with a bad one before any socket sees them.
/// Never panics.
pub fn parse_ipv4(datagram: &[u8]) -> Result<Ipv4View<'_>, PacketError> {
    let len = datagram.len();
    let head = match datagram.get(..20) {
        Some(h) => h,
        None => return Err(PacketError::Truncated { len, need: 20 }),
    };
    let version = head[0] >> 4;
    if version != 4 {
        return Err(PacketError::NotIpv4(version));
    }
    let ihl = head[0] & 0x0f;
    if ihl < 5 {
        return Err(PacketError::BadHeaderLength(ihl));
    }
    let hlen = usize::from(ihl) * 4;
    if len < hlen {
        return Err(PacketError::Truncated { len, need: hlen });
    }
    let total = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let payload = match datagram.get(hlen..total) {
        Some(p) => p,
        None => return Err(PacketError::BadTotalLength { total, len }),
    };
    Ok(Ipv4View {
        src: Ipv4Addr::new(head[12], head[13], head[14], head[15]),
        dst: Ipv4Addr::new(head[16], head[17], head[18], head[19]),
        ttl: head[8],
        protocol: head[9],
        payload,
    })
}

/// The ARP payload of a gratuitous ARP request announcing that `ip` is at `sender_mac`:
/// hardware type 1 (Ethernet), protocol type 0x0800, lengths 6 and 4, operation 1
/// (request), sender = (`sender_mac`, `ip`), target = (00:00:00:00:00:00, `ip`).
///
/// Send it on an `AF_PACKET`/`SOCK_DGRAM` socket of protocol `ETH_P_ARP` (0x0806) to the
/// broadcast address ff:ff:ff:ff:ff:ff; the kernel adds the Ethernet header.
pub fn garp_ipv4(sender_mac: [u8; 6], ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut f = [0u8; GARP_LEN];
    f[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    f[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype: IPv4
    f[4] = 6; // hlen
    f[5] = 4; // plen
    f[6..8].copy_from_slice(&1u16.to_be_bytes()); // op: request
    f[8..14].copy_from_slice(&sender_mac);
    f[14..18].copy_from_slice(&ip.octets());
    // f[18..24]: target hardware address, zero
    f[24..28].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited ICMPv6 neighbour advertisement (RFC 4861 section 4.4, type 136) saying
/// that `target` is at `mac`: Override flag set, Solicited and Router flags clear (a
/// rampart virtual address is a service address, not a router; claiming Router would make
/// hosts that later see it cleared drop it from their default-router list), then a Target
/// Link-Layer Address option (type 2, length 1) with `mac`. 32 bytes.
///
/// The checksum field (bytes 2-3) is left 0: send it on an `AF_INET6`/`SOCK_RAW` socket of
/// protocol `IPPROTO_ICMPV6`, for which the kernel always computes the ICMPv6 checksum, from
/// a link-local source to ff02::1 with hop limit 255 (receivers drop a neighbour
/// advertisement with any other hop limit). Whoever sends it another way fills the field
/// with [`icmpv6_checksum`].
pub fn unsolicited_na(target: Ipv6Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NA_LEN);
    m.push(136); // type: neighbour advertisement
    m.push(0); // code
    m.extend_from_slice(&[0, 0]); // checksum: the kernel fills it
    m.extend_from_slice(&[0x20, 0, 0, 0]); // R=0 S=0 O=1, reserved
    m.extend_from_slice(&target.octets());
    m.push(2); // option: target link-layer address
    m.push(1); // option length in units of 8 bytes
    m.extend_from_slice(&mac);
    m
}

/// The ICMPv6 checksum of `msg` sent from `src` to `dst` (pseudo-header with next header
/// 58), computed as if bytes 2-3 (the checksum field) were zero. Write it big-endian into
/// bytes 2-3. A message shorter than 4 bytes is summed as it is.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut acc = pseudo_sum(IpAddr::V6(src), IpAddr::V6(dst), 58, msg.len());
    match (msg.get(..2), msg.get(4..)) {
        (Some(head), Some(rest)) => {
            acc = sum_words(acc, head);
            acc = sum_words(acc, rest);
        }
        _ => acc = sum_words(acc, msg),
    }
    !fold(acc)
}
