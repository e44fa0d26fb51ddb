//! Raw sockets for VRRP over IPv6 (RFC 5798 section 5.1.2), and the unsolicited
//! neighbour advertisements a new IPv6 master sends.
//!
//! An `AF_INET6` raw socket never hands over the IP header, so what VRRP must check of it
//! comes as ancillary data: the hop limit (`IPV6_RECVHOPLIMIT`; an advert with any other
//! than 255 was sent from off the link) and the destination (`IPV6_RECVPKTINFO`; the
//! checksum's pseudo-header names it: ff02::12, or our link-local address for unicast).
//! Adverts are sent from the interface's link-local address, with hop limit 255, to
//! ff02::12 or to unicast peers. One socket does both: it is bound to the interface, not
//! to an address, joined to the group, and names its source per datagram by binding the
//! sending half separately (as for IPv4, two sockets).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, MaybeUninitSlice, MsgHdrMut, Protocol, SockAddr, SockRef, Socket, Type};
use tokio::io::Interest;

use crate::iface::Interface;
use crate::sock::VRRP_PROTO;
use crate::NetError;

/// The IPv6 multicast group of VRRP adverts.
pub const VRRP_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// All nodes on the link: where unsolicited neighbour advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// What arrived on the receiving socket, beside its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received6 {
    /// Length of the VRRP message (no IP header on IPv6).
    pub len: usize,
    pub src: Ipv6Addr,
    /// The destination (the group or our address); unspecified when the kernel did not
    /// say, which fails the advert's checksum.
    pub dst: Ipv6Addr,
    /// The hop limit the datagram arrived with; 0 when the kernel did not say.
    pub hop_limit: u8,
}

/// A virtual router's VRRP sockets on one interface, IPv6.
pub struct VrrpSocket6 {
    recv: tokio::net::UdpSocket,
    send: tokio::net::UdpSocket,
    source: Ipv6Addr,
    index: u32,
    /// Receive buffers, zeroed once (see [`VrrpSocket6::recv`]).
    data: Vec<MaybeUninit<u8>>,
    control: Vec<MaybeUninit<u8>>,
}

fn raw6(proto: i32) -> Result<Socket, NetError> {
    Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(proto)))
        .map_err(NetError::io("open a raw IPv6 socket (needs CAP_NET_RAW)"))
}

impl VrrpSocket6 {
    /// Open both sockets on `iface`, sending from `source` (the interface's link-local
    /// address). Must be called inside a tokio runtime.
    pub fn open(iface: &Interface, source: Ipv6Addr) -> Result<VrrpSocket6, NetError> {
        let r = raw6(VRRP_PROTO)?;
        r.bind_device(Some(iface.name.as_bytes()))
            .map_err(NetError::io(format!(
                "bind the VRRP socket to {}",
                iface.name
            )))?;
        r.join_multicast_v6(&VRRP_GROUP_V6, iface.index)
            .map_err(NetError::io(format!(
                "join {VRRP_GROUP_V6} on {}",
                iface.name
            )))?;
        r.set_recv_hoplimit_v6(true)
            .map_err(NetError::io("ask for the hop limit of each VRRP packet"))?;
        nix::sys::socket::setsockopt(&r, nix::sys::socket::sockopt::Ipv6RecvPacketInfo, &true)
            .map_err(|e| NetError::Io {
                what: "ask for the destination of each VRRP packet".into(),
                source: e.into(),
            })?;
        r.set_recv_buffer_size(256 * 1024)
            .map_err(NetError::io("size the VRRP receive buffer"))?;
        r.set_nonblocking(true)
            .map_err(NetError::io("make the VRRP socket non-blocking"))?;

        let s = raw6(VRRP_PROTO)?;
        s.bind_device(Some(iface.name.as_bytes()))
            .map_err(NetError::io(format!(
                "bind the VRRP socket to {}",
                iface.name
            )))?;
        s.bind(&SocketAddr::V6(SocketAddrV6::new(source, 0, 0, iface.index)).into())
            .map_err(NetError::io(format!(
                "send VRRP from {source}%{} (a link-local address still in duplicate address detection cannot be used yet)",
                iface.name
            )))?;
        s.set_multicast_if_v6(iface.index)
            .map_err(NetError::io("choose the multicast interface"))?;
        s.set_multicast_hops_v6(255)
            .map_err(NetError::io("set the multicast hop limit"))?;
        s.set_unicast_hops_v6(255)
            .map_err(NetError::io("set the hop limit"))?;
        s.set_multicast_loop_v6(false)
            .map_err(NetError::io("turn multicast loop off"))?;
        s.set_recv_buffer_size(4096)
            .map_err(NetError::io("size the send socket's receive buffer"))?;
        s.set_nonblocking(true)
            .map_err(NetError::io("make the VRRP socket non-blocking"))?;

        Ok(VrrpSocket6 {
            recv: tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(r))
                .map_err(NetError::io("register the VRRP socket with the runtime"))?,
            send: tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s))
                .map_err(NetError::io("register the VRRP socket with the runtime"))?,
            source,
            index: iface.index,
            data: vec![MaybeUninit::new(0); 2048],
            control: vec![MaybeUninit::new(0); 256],
        })
    }

    /// The address adverts are sent from.
    pub fn source(&self) -> Ipv6Addr {
        self.source
    }

    /// The next VRRP message (its bytes are `self.message(len)`) and what the kernel said
    /// of it.
    pub async fn recv(&mut self) -> io::Result<Received6> {
        loop {
            self.recv.readable().await?;
            let sock = &self.recv;
            let data = &mut self.data;
            let control = &mut self.control;
            // A raw socket through tokio's readiness, read with recvmsg for its
            // ancillary data (what `recv_from` cannot return).
            let got = sock.try_io(Interest::READABLE, || {
                let mut from = SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
                let mut bufs = [MaybeUninitSlice::new(data.as_mut_slice())];
                let mut msg = MsgHdrMut::new()
                    .with_addr(&mut from)
                    .with_buffers(&mut bufs)
                    .with_control(control.as_mut_slice());
                let n = SockRef::from(sock).recvmsg(&mut msg, 0)?;
                let clen = msg.control_len();
                Ok((n, clen, from.as_socket_ipv6()))
            });
            let (n, clen, from) = match got {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let control = init_bytes(&self.control, clen);
            let (dst, hop_limit) = parse_cmsgs(control);
            return Ok(Received6 {
                len: n.min(self.data.len()),
                src: from.map_or(Ipv6Addr::UNSPECIFIED, |a| *a.ip()),
                dst: dst.unwrap_or(Ipv6Addr::UNSPECIFIED),
                hop_limit: hop_limit.unwrap_or(0),
            });
        }
    }

    /// The first `len` bytes of the last message [`VrrpSocket6::recv`] returned.
    pub fn message(&self, len: usize) -> &[u8] {
        init_bytes(&self.data, len)
    }

    /// Send one VRRP message to `dst` (the group or a peer; link-scoped destinations
    /// leave through this socket's interface).
    pub async fn send(&self, payload: &[u8], dst: Ipv6Addr) -> io::Result<()> {
        let scope = if link_scoped(dst) { self.index } else { 0 };
        self.send
            .send_to(payload, SocketAddr::V6(SocketAddrV6::new(dst, 0, 0, scope)))
            .await
            .map(|_| ())
    }
}

/// Whether `ip` needs an interface to be reached (link-local unicast or multicast of
/// link or interface scope).
pub fn link_scoped(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    (s[0] & 0xffc0) == 0xfe80 || (ip.is_multicast() && matches!(s[0] & 0x000f, 1 | 2))
}

/// The first `len` bytes of `buf` as initialised bytes.
fn init_bytes(buf: &[MaybeUninit<u8>], len: usize) -> &[u8] {
    let part = &buf[..len.min(buf.len())];
    #[allow(unsafe_code)]
    // SAFETY: both receive buffers are created with every element `MaybeUninit::new(0)`,
    // and only the kernel writes into them afterwards (through recvmsg), which writes
    // plain bytes; so every element of `part` is initialised. `MaybeUninit<u8>` has the
    // size, alignment and layout of `u8`, and the returned slice borrows `buf`, so it
    // cannot outlive or alias a later write.
    unsafe {
        std::slice::from_raw_parts(part.as_ptr().cast::<u8>(), part.len())
    }
}

const IPV6_PKTINFO: i32 = libc::IPV6_PKTINFO;
const IPV6_HOPLIMIT: i32 = libc::IPV6_HOPLIMIT;

/// The destination (`IPV6_PKTINFO`) and hop limit (`IPV6_HOPLIMIT`) in a control buffer
/// as Linux lays it out: each `cmsghdr` is a `size_t` length (header included), an `int`
/// level and an `int` type, its data aligned to `size_t`, the next header at the length
/// rounded up to `size_t`. Malformed or truncated entries end the walk; never panics.
pub fn parse_cmsgs(buf: &[u8]) -> (Option<Ipv6Addr>, Option<u8>) {
    let word = std::mem::size_of::<usize>();
    let align = |n: usize| n.div_ceil(word) * word;
    let head = align(word + 8);
    let mut dst = None;
    let mut hop = None;
    let mut at = 0usize;
    while let Some(h) = buf.get(at..at + head) {
        let mut len_bytes = [0u8; 8];
        len_bytes[..word].copy_from_slice(&h[..word]);
        let len = usize::try_from(u64::from_ne_bytes(len_bytes)).unwrap_or(usize::MAX);
        let level = i32::from_ne_bytes([h[word], h[word + 1], h[word + 2], h[word + 3]]);
        let kind = i32::from_ne_bytes([h[word + 4], h[word + 5], h[word + 6], h[word + 7]]);
        if len < head {
            break;
        }
        let Some(data) = buf.get(at + head..at + len) else {
            break;
        };
        if level == libc::IPPROTO_IPV6 {
            match kind {
                IPV6_PKTINFO if data.len() >= 16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&data[..16]);
                    dst = Some(Ipv6Addr::from(a));
                }
                IPV6_HOPLIMIT if data.len() >= 4 => {
                    let v = i32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
                    hop = u8::try_from(v).ok();
                }
                _ => {}
            }
        }
        at += align(len);
    }
    (dst, hop)
}

/// An ICMPv6 raw socket for unsolicited neighbour advertisements on one interface (the
/// IPv6 gratuitous ARP). The kernel fills the ICMPv6 checksum; the hop limit is 255, as
/// receivers require of neighbour discovery.
pub struct Advertiser {
    sock: Socket,
    to: SockAddr,
}

impl Advertiser {
    pub fn open(iface: &Interface) -> Result<Advertiser, NetError> {
        let sock = raw6(libc::IPPROTO_ICMPV6)?;
        sock.bind_device(Some(iface.name.as_bytes()))
            .map_err(NetError::io(format!(
                "bind the neighbour advertisement socket to {}",
                iface.name
            )))?;
        sock.set_multicast_if_v6(iface.index)
            .map_err(NetError::io("choose the multicast interface"))?;
        sock.set_multicast_hops_v6(255)
            .map_err(NetError::io("set the multicast hop limit"))?;
        sock.set_multicast_loop_v6(false)
            .map_err(NetError::io("turn multicast loop off"))?;
        sock.set_nonblocking(true)
            .map_err(NetError::io("make the ICMPv6 socket non-blocking"))?;
        // Only written to: the smallest receive buffer keeps the link's ICMPv6 from
        // queueing up in it.
        sock.set_recv_buffer_size(0)
            .map_err(NetError::io("size the ICMPv6 socket's receive buffer"))?;
        let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, iface.index));
        Ok(Advertiser { sock, to })
    }

    /// Send one ICMPv6 message (an unsolicited neighbour advertisement) to all nodes.
    pub fn send(&self, msg: &[u8]) -> Result<(), NetError> {
        self.sock
            .send_to(msg, &self.to)
            .map(|_| ())
            .map_err(NetError::io("send an unsolicited neighbour advertisement"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let word = std::mem::size_of::<usize>();
        let head = (word + 8).div_ceil(word) * word;
        let len = head + data.len();
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.resize(head, 0);
        v.extend_from_slice(data);
        v.resize(len.div_ceil(word) * word, 0);
        v
    }

    #[test]
    fn destination_and_hop_limit_are_read_from_control_messages() {
        let mut info = VRRP_GROUP_V6.octets().to_vec();
        info.extend_from_slice(&3u32.to_ne_bytes());
        let mut buf = cmsg(libc::IPPROTO_IPV6, IPV6_PKTINFO, &info);
        buf.extend(cmsg(
            libc::IPPROTO_IPV6,
            IPV6_HOPLIMIT,
            &255i32.to_ne_bytes(),
        ));
        assert_eq!(parse_cmsgs(&buf), (Some(VRRP_GROUP_V6), Some(255)));
        // Order does not matter, other levels are skipped.
        let mut buf = cmsg(libc::SOL_SOCKET, 1, &[1, 2, 3]);
        buf.extend(cmsg(
            libc::IPPROTO_IPV6,
            IPV6_HOPLIMIT,
            &64i32.to_ne_bytes(),
        ));
        assert_eq!(parse_cmsgs(&buf), (None, Some(64)));
    }

    #[test]
    fn garbage_control_data_never_panics() {
        assert_eq!(parse_cmsgs(&[]), (None, None));
        assert_eq!(parse_cmsgs(&[0xff; 7]), (None, None));
        // A length past the buffer, and a length shorter than a header.
        let mut buf = cmsg(libc::IPPROTO_IPV6, IPV6_HOPLIMIT, &255i32.to_ne_bytes());
        buf[0] = 200;
        assert_eq!(parse_cmsgs(&buf), (None, None));
        let mut buf = cmsg(libc::IPPROTO_IPV6, IPV6_HOPLIMIT, &255i32.to_ne_bytes());
        buf[0] = 3;
        assert_eq!(parse_cmsgs(&buf), (None, None));
        for n in 0..64u8 {
            let b: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let _ = parse_cmsgs(&b);
        }
    }

    #[test]
    fn link_scope_is_recognised() {
        assert!(link_scoped("fe80::1".parse().expect("ip")));
        assert!(link_scoped(VRRP_GROUP_V6));
        assert!(link_scoped(ALL_NODES));
        assert!(!link_scoped("fd00::1".parse().expect("ip")));
        assert!(!link_scoped("ff05::2".parse().expect("ip")));
    }
}
