//! VRRPv3 advertisements (RFC 5798 section 5) and the few frames a master sends.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |            IPvX Address(es): 4 or 16 bytes each               |
//! ```
//!
//! The checksum is the 16-bit one's complement of the one's complement sum of the VRRP
//! message *and* an IP pseudo-header, for IPv4 as for IPv6 (RFC 5798 section 5.2.8): source,
//! destination, protocol 112 and the VRRP length. That is what keepalived 2.2 sends for
//! version 3, so the `src` and `dst` given to [`Advert::encode`] and [`Advert::decode`] must
//! be the addresses of the IP header the message travels in (for multicast, `dst` is
//! [`GROUP_V4`] or [`GROUP_V6`]; for unicast peers, the peer's address).
//!
//! What this module does not check, because it is not in the VRRP message: the IP TTL /
//! hop limit must be 255 ([`TTL`], RFC 5798 section 7.1; [`parse_ipv4`] hands the IPv4 TTL
//! over, an IPv6 receiver reads the hop limit from ancillary data), and the IP protocol /
//! next header must be [`IPPROTO_VRRP`]. RFC 5798 also wants the first IPv6 address to be
//! the link-local one; neither side enforces that here (rampart's virtual addresses are
//! service addresses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

mod frames;
#[cfg(test)]
mod tests;

pub use frames::{
    garp_ipv4, icmpv6_checksum, parse_ipv4, unsolicited_na, Ipv4View, GARP_LEN, NA_LEN,
};

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The VRRP version this crate speaks.
pub const VERSION: u8 = 3;
/// The only VRRP message type.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// TTL / hop limit every VRRP packet is sent with and must arrive with.
pub const TTL: u8 = 255;
/// IPv4 multicast group of VRRP (224.0.0.18).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group of VRRP (ff02::12).
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Length of the fixed part of an advertisement.
pub const HEADER_LEN: usize = 8;
/// Largest Max Advertise Interval (12 bits of centiseconds: 40.95 s).
pub const MAX_INTERVAL_CS: u16 = 0x0fff;
/// Most addresses one advertisement carries (the count is one byte).
pub const MAX_ADDRS: usize = 255;
/// Longest possible advertisement (255 IPv6 addresses).
pub const MAX_LEN: usize = HEADER_LEN + MAX_ADDRS * 16;

/// Why a message could not be encoded or decoded. Every decode error means "drop the
/// packet" (RFC 5798 section 7.1); the variants are for the log and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than the header, or than the addresses the count announces.
    #[error("message of {len} bytes is shorter than the {need} bytes it needs")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// More bytes than 255 addresses of the family can take.
    #[error("message of {len} bytes is longer than the largest possible ({max})")]
    TooLong {
        /// Bytes received.
        len: usize,
        /// Longest valid message of that family.
        max: usize,
    },
    /// The version nibble is not 3.
    #[error("VRRP version {0}, expected 3")]
    BadVersion(u8),
    /// The type nibble is not 1 (advertisement).
    #[error("VRRP message type {0}, expected 1 (advertisement)")]
    BadType(u8),
    /// Virtual router id 0 (valid ids are 1-255).
    #[error("virtual router id 0 is not valid (1-255)")]
    ZeroVrid,
    /// A Max Advertise Interval of 0.
    #[error("max advertise interval of 0 is not valid")]
    ZeroInterval,
    /// A Max Advertise Interval that does not fit 12 bits (encode only).
    #[error("max advertise interval of {0} cs does not fit 12 bits (at most 4095 cs)")]
    IntervalTooLong(u16),
    /// An address count of 0.
    #[error("advertisement with no address")]
    NoAddresses,
    /// More than 255 addresses (encode only).
    #[error("{0} addresses, at most 255 fit an advertisement")]
    TooManyAddresses(usize),
    /// Bytes left after the addresses the count announces.
    #[error("address count {count} makes {need} bytes, the message has {len}")]
    CountMismatch {
        /// The count field.
        count: u8,
        /// Length that count makes.
        need: usize,
        /// Bytes received.
        len: usize,
    },
    /// Source, destination and advertised addresses are not all IPv4 or all IPv6.
    #[error("IPv4 and IPv6 mixed: source, destination and addresses must share one family")]
    MixedFamilies,
    /// The checksum does not match the message and its pseudo-header.
    #[error("bad checksum {found:#06x}, computed {computed:#06x}")]
    BadChecksum {
        /// Checksum field of the message.
        found: u16,
        /// Checksum the message should carry.
        computed: u16,
    },
    /// [`parse_ipv4`]: the version nibble is not 4.
    #[error("IP version {0}, expected 4")]
    NotIpv4(u8),
    /// [`parse_ipv4`]: an IHL below 5 words.
    #[error("IPv4 header length of {0} words is not valid (at least 5)")]
    BadHeaderLength(u8),
    /// [`parse_ipv4`]: the total length is shorter than the header or longer than the
    /// bytes received.
    #[error("IPv4 total length {total} does not fit the header and the {len} bytes received")]
    BadTotalLength {
        /// Total length field.
        total: usize,
        /// Bytes received.
        len: usize,
    },
}

/// One VRRPv3 advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id, 1-255.
    pub vrid: u8,
    /// Sender's priority: 0 = the master is leaving, 255 = the address owner.
    pub priority: u8,
    /// Max Advertise Interval in centiseconds, 1-4095.
    pub interval_cs: u16,
    /// The virtual addresses, 1-255, all of the family of the IP header.
    pub addrs: Vec<IpAddr>,
}

impl Advert {
    /// The Max Advertise Interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_cs) * 10)
    }

    /// Length of the encoded message (header plus addresses of their own family; `addrs`
    /// of mixed families fail to encode anyway).
    pub fn encoded_len(&self) -> usize {
        let first = self.addrs.first().map_or(4, |a| family_len(*a));
        HEADER_LEN + self.addrs.len() * first
    }

    /// The message sent from `src` to `dst`, checksum included.
    pub fn encode(&self, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, PacketError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(src, dst, &mut out)?;
        Ok(out)
    }

    /// Like [`Advert::encode`] into `out`, whose contents are replaced (so a caller can
    /// reuse one buffer and not allocate per advertisement). On error `out` is empty.
    pub fn encode_into(
        &self,
        src: IpAddr,
        dst: IpAddr,
        out: &mut Vec<u8>,
    ) -> Result<(), PacketError> {
        out.clear();
        let alen = same_family(src, dst)?;
        if self.vrid == 0 {
            return Err(PacketError::ZeroVrid);
        }
        if self.interval_cs == 0 {
            return Err(PacketError::ZeroInterval);
        }
        if self.interval_cs > MAX_INTERVAL_CS {
            return Err(PacketError::IntervalTooLong(self.interval_cs));
        }
        if self.addrs.is_empty() {
            return Err(PacketError::NoAddresses);
        }
        let count = u8::try_from(self.addrs.len())
            .map_err(|_| PacketError::TooManyAddresses(self.addrs.len()))?;
        if self.addrs.iter().any(|a| family_len(*a) != alen) {
            return Err(PacketError::MixedFamilies);
        }
        out.reserve(HEADER_LEN + self.addrs.len() * alen);
        out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(count);
        out.extend_from_slice(&self.interval_cs.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for addr in &self.addrs {
            match addr {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        let sum = fold(sum_words(
            pseudo_sum(src, dst, IPPROTO_VRRP, out.len()),
            out,
        ));
        let check = !sum;
        out[6..8].copy_from_slice(&check.to_be_bytes());
        Ok(())
    }

    /// Parses and verifies the VRRP message `payload` that came from `src` to `dst` (the
    /// addresses of its IP header, which the checksum covers). Never panics.
    ///
    /// Rejects: `src`/`dst` of different families, fewer than 8 bytes, a version other than
    /// 3, a type other than 1, more bytes than 255 addresses, a count of 0, fewer or more
    /// bytes than the count announces, a bad checksum, VRID 0, an interval of 0. The four
    /// reserved bits are ignored, as the RFC says.
    pub fn decode(payload: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advert, PacketError> {
        let alen = same_family(src, dst)?;
        let len = payload.len();
        let (b0, vrid, priority, count, iv) = match payload {
            [b0, vrid, priority, count, i0, i1, _, _, ..] => (
                *b0,
                *vrid,
                *priority,
                *count,
                u16::from_be_bytes([*i0, *i1]),
            ),
            _ => {
                return Err(PacketError::Truncated {
                    len,
                    need: HEADER_LEN,
                })
            }
        };
        if b0 >> 4 != VERSION {
            return Err(PacketError::BadVersion(b0 >> 4));
        }
        if b0 & 0x0f != TYPE_ADVERTISEMENT {
            return Err(PacketError::BadType(b0 & 0x0f));
        }
        let max = HEADER_LEN + MAX_ADDRS * alen;
        if len > max {
            return Err(PacketError::TooLong { len, max });
        }
        if count == 0 {
            return Err(PacketError::NoAddresses);
        }
        let need = HEADER_LEN + usize::from(count) * alen;
        if len < need {
            return Err(PacketError::Truncated { len, need });
        }
        if len > need {
            return Err(PacketError::CountMismatch { count, need, len });
        }
        let total = fold(sum_words(pseudo_sum(src, dst, IPPROTO_VRRP, len), payload));
        if total != 0xffff {
            let found = u16::from_be_bytes([payload[6], payload[7]]);
            // The sum without the checksum field, for the log.
            let computed = !fold(u64::from(total) + u64::from(!found));
            return Err(PacketError::BadChecksum { found, computed });
        }
        if vrid == 0 {
            return Err(PacketError::ZeroVrid);
        }
        let interval_cs = iv & MAX_INTERVAL_CS;
        if interval_cs == 0 {
            return Err(PacketError::ZeroInterval);
        }
        let body = &payload[HEADER_LEN..];
        let addrs = if alen == 4 {
            body.chunks_exact(4)
                .map(|c| IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])))
                .collect()
        } else {
            body.chunks_exact(16)
                .map(|c| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(o))
                })
                .collect()
        };
        Ok(Advert {
            vrid,
            priority,
            interval_cs,
            addrs,
        })
    }
}

/// Bytes of one address of `a`'s family.
fn family_len(a: IpAddr) -> usize {
    match a {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    }
}

/// The address length of the family `src` and `dst` share.
fn same_family(src: IpAddr, dst: IpAddr) -> Result<usize, PacketError> {
    let alen = family_len(src);
    if family_len(dst) != alen {
        return Err(PacketError::MixedFamilies);
    }
    Ok(alen)
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `acc`.
/// A u64 cannot overflow for any slice that fits in memory.
pub(crate) fn sum_words(mut acc: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits with end-around carry (not complemented).
pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Sum of the pseudo-header of an upper-layer message of `len` bytes. For IPv4 (RFC 768):
/// source, destination, zero, protocol, 16-bit length; for IPv6 (RFC 8200 section 8.1):
/// source, destination, 32-bit length, three zero bytes, next header. Families that differ
/// are refused by the callers before.
pub(crate) fn pseudo_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u64 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum_words(acc, &s.octets());
            acc = sum_words(acc, &d.octets());
            acc = sum_words(acc, &[0, protocol]);
            acc = sum_words(acc, &(len as u16).to_be_bytes());
        }
        (s, d) => {
            acc = sum_words(acc, &v6_octets(s));
            acc = sum_words(acc, &v6_octets(d));
            acc = sum_words(acc, &(len as u32).to_be_bytes());
            acc = sum_words(acc, &[0, 0, 0, protocol]);
        }
    }
    acc
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}
