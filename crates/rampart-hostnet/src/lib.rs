//! The host's network as rampart's balancers touch it, for VRRP:
//! - [`iface`]: an interface's index, hardware address and primary IPv4 address;
//! - [`addr`]: adding and removing an address on an interface by rtnetlink
//!   (`RTM_NEWADDR`/`RTM_DELADDR`), as `ip addr add/del` does, without a child process;
//! - [`VrrpSocket`]: raw IP protocol 112 sockets, joined to 224.0.0.18 on one interface,
//!   sending with TTL 255 from the interface's primary address, to the group or to
//!   unicast peers;
//! - [`garp`]: gratuitous ARP requests from a packet socket;
//! - [`sock6`]: the same over IPv6: raw sockets joined to ff02::12 that report each
//!   advert's hop limit and destination, and unsolicited neighbour advertisements.
//!
//! The protocol itself (packets, the state machine) is `rampart-vrrp`'s, pure; this crate
//! only moves bytes. Everything here needs `CAP_NET_RAW`/`CAP_NET_ADMIN` (root).

pub mod addr;
pub mod garp;
pub mod iface;
mod sock;
pub mod sock6;

pub use sock::{VrrpSocket, VRRP_GROUP_V4, VRRP_PROTO};

/// Why a host network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("interface {name}: {why}")]
    Interface { name: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        source: std::io::Error,
    },
}

impl NetError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Io { what, source }
    }
}
