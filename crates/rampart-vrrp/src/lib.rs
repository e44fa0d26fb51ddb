//! The protocol core of VRRP version 3 (RFC 5798), with which `rampart lb` shares virtual
//! addresses between balancers (keepalived's job). Pure code: no I/O, no clock reads, no
//! threads; time is an [`std::time::Instant`] the caller passes in.
//!
//! * [`packet`]: advertisements encoded and decoded for IPv4 and IPv6 (checksum over the
//!   IP pseudo-header, as RFC 5798 and keepalived 2.2 do), the IPv4 header a raw socket
//!   delivers, and the announcement frames (gratuitous ARP, unsolicited neighbour
//!   advertisement).
//! * [`machine`]: the state machine of one virtual router ([`Router`]): Init, Backup,
//!   Master, Stopping (the clean-stop sub-state of Master), Fault. Its methods return the
//!   [`Action`]s the caller performs (send, add or remove the addresses, announce them).
//!
//! The I/O side (raw sockets, netlink, packet sockets) lives in the balancer: it decodes
//! what arrives, checks the TTL is 255, feeds [`Router::on_advert`], sleeps until
//! [`Router::next_deadline`] and calls [`Router::on_timer`].

#![forbid(unsafe_code)]
// Tests may unwrap: a panic there is a failed test, not a crash on input.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod machine;
pub mod packet;

pub use machine::{Action, Actions, Cause, ConfigError, Router, RouterConfig, State};
pub use packet::{Advert, PacketError};
