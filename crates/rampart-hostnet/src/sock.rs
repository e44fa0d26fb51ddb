//! Raw sockets for VRRP (IP protocol 112) over IPv4.
//!
//! Two sockets per virtual router: one receives (bound to the interface, joined to
//! 224.0.0.18, unbound to any address so that both the group's and unicast adverts
//! arrive; an IPv4 raw socket delivers the IP header, whose TTL the caller checks), one
//! sends (bound to the interface's primary address, so that address is the source the
//! checksum's pseudo-header names, TTL 255, multicast loop off). They are wrapped as
//! tokio UDP sockets: `recvfrom`/`sendto` are the same calls for a raw socket.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use crate::iface::Interface;
use crate::NetError;

/// IP protocol number of VRRP.
pub const VRRP_PROTO: i32 = 112;
/// The IPv4 multicast group of VRRP adverts.
pub const VRRP_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

/// A virtual router's VRRP sockets on one interface.
pub struct VrrpSocket {
    recv: tokio::net::UdpSocket,
    send: tokio::net::UdpSocket,
    source: Ipv4Addr,
}

impl VrrpSocket {
    /// Open both sockets on `iface`, sending from `source` (an address of that interface).
    /// Must be called inside a tokio runtime.
    pub fn open_v4(iface: &Interface, source: Ipv4Addr) -> Result<VrrpSocket, NetError> {
        let raw = || {
            Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(VRRP_PROTO)))
                .map_err(NetError::io("open a raw VRRP socket (needs CAP_NET_RAW)"))
        };
        let r = raw()?;
        r.bind_device(Some(iface.name.as_bytes()))
            .map_err(NetError::io(format!(
                "bind the VRRP socket to {}",
                iface.name
            )))?;
        r.join_multicast_v4_n(&VRRP_GROUP_V4, &InterfaceIndexOrAddress::Index(iface.index))
            .map_err(NetError::io(format!(
                "join {VRRP_GROUP_V4} on {}",
                iface.name
            )))?;
        r.set_recv_buffer_size(256 * 1024)
            .map_err(NetError::io("size the VRRP receive buffer"))?;
        r.set_nonblocking(true)
            .map_err(NetError::io("make the VRRP socket non-blocking"))?;

        let s = raw()?;
        s.bind_device(Some(iface.name.as_bytes()))
            .map_err(NetError::io(format!(
                "bind the VRRP socket to {}",
                iface.name
            )))?;
        s.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into())
            .map_err(NetError::io(format!("send VRRP from {source}")))?;
        s.set_multicast_if_v4(&source)
            .map_err(NetError::io("choose the multicast interface"))?;
        s.set_multicast_ttl_v4(255)
            .map_err(NetError::io("set the multicast TTL"))?;
        s.set_ttl(255).map_err(NetError::io("set the TTL"))?;
        s.set_multicast_loop_v4(false)
            .map_err(NetError::io("turn multicast loop off"))?;
        // It also receives the unicast adverts sent to `source`; nobody reads them here.
        s.set_recv_buffer_size(4096)
            .map_err(NetError::io("size the send socket's receive buffer"))?;
        s.set_nonblocking(true)
            .map_err(NetError::io("make the VRRP socket non-blocking"))?;

        let wrap = |s: Socket| {
            tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s))
                .map_err(NetError::io("register the VRRP socket with the runtime"))
        };
        Ok(VrrpSocket {
            recv: wrap(r)?,
            send: wrap(s)?,
            source,
        })
    }

    /// The address adverts are sent from.
    pub fn source(&self) -> Ipv4Addr {
        self.source
    }

    /// The next VRRP datagram, IP header included, and its sender.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<(usize, Ipv4Addr)> {
        let (n, from) = self.recv.recv_from(buf).await?;
        let ip = match from {
            SocketAddr::V4(v) => *v.ip(),
            SocketAddr::V6(v) => v.ip().to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
        };
        Ok((n, ip))
    }

    /// Send one VRRP message (without IP header) to `dst` (the group or a peer).
    pub async fn send(&self, payload: &[u8], dst: Ipv4Addr) -> std::io::Result<()> {
        self.send
            .send_to(payload, SocketAddr::V4(SocketAddrV4::new(dst, 0)))
            .await
            .map(|_| ())
    }
}
