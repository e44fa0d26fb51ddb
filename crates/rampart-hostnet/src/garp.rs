//! Gratuitous ARP: after taking a virtual address, tell the link that it now lives at
//! this interface's hardware address, so hosts and switches stop sending to the
//! previous holder. Sent from an `AF_PACKET`/`SOCK_DGRAM` socket to the broadcast
//! address; the kernel writes the Ethernet header. The ARP body itself is built by the
//! caller (`rampart_vrrp::packet::garp_ipv4`).

use std::mem::size_of;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::iface::Interface;
use crate::NetError;

const ETH_P_ARP: u16 = 0x0806;

/// A packet socket for ARP on one interface.
pub struct Announcer {
    sock: Socket,
    to: SockAddr,
}

impl Announcer {
    pub fn open(iface: &Interface) -> Result<Announcer, NetError> {
        let sock = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
        )
        .map_err(NetError::io(
            "open a packet socket for ARP (needs CAP_NET_RAW)",
        ))?;
        sock.set_nonblocking(true)
            .map_err(NetError::io("make the ARP socket non-blocking"))?;
        // The socket is only written to: a zero-length receive buffer keeps the ARP
        // traffic of the link from queueing up in it.
        sock.set_recv_buffer_size(0)
            .map_err(NetError::io("size the ARP socket's receive buffer"))?;
        let to = broadcast_to(iface.index)?;
        Ok(Announcer { sock, to })
    }

    /// Send one ARP body (28 bytes for IPv4) to the link's broadcast address.
    pub fn send(&self, arp: &[u8]) -> Result<(), NetError> {
        self.sock
            .send_to(arp, &self.to)
            .map(|_| ())
            .map_err(NetError::io("send a gratuitous ARP"))
    }
}

/// `sockaddr_ll` for the Ethernet broadcast address on interface `index`.
fn broadcast_to(index: u32) -> Result<SockAddr, NetError> {
    let ifindex = i32::try_from(index).map_err(|_| NetError::Interface {
        name: index.to_string(),
        why: "interface index out of range".into(),
    })?;
    #[allow(unsafe_code)]
    // SAFETY: `try_init` hands the closure a zeroed `sockaddr_storage` (128 bytes, aligned
    // for every sockaddr type) and a pointer to its length. We write one `sockaddr_ll`
    // (20 bytes, which fits and whose alignment the storage meets) at its start and set
    // the length to that size, which is what `try_init` requires of the closure before
    // it builds the `SockAddr`. No pointer outlives the call.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            let ll = storage.cast::<libc::sockaddr_ll>();
            ll.write(libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as u16,
                sll_protocol: ETH_P_ARP.to_be(),
                sll_ifindex: ifindex,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 6,
                sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
            });
            *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }
    .map_err(NetError::io("build the broadcast link address"))?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_address_is_a_packet_address_of_the_right_size() {
        let a = broadcast_to(3).expect("sockaddr_ll");
        assert_eq!(a.family(), libc::AF_PACKET as libc::sa_family_t);
        assert_eq!(a.len() as usize, size_of::<libc::sockaddr_ll>());
    }
}
