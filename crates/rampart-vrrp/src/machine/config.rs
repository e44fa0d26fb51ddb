//! Configuration of one virtual router and its validation.

use std::net::IpAddr;
use std::time::Duration;

use crate::packet::{MAX_ADDRS, MAX_INTERVAL_CS};

/// One virtual router as the balancer runs it. Build it with [`RouterConfig::new`] (RFC
/// defaults) and adjust the public fields; [`crate::machine::Router::new`] validates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Virtual router id, 1-255, shared by every router of the group.
    pub vrid: u8,
    /// Our priority: 1-254, or 255 on the router that owns the addresses (it takes the
    /// master role at once on start). 0 is what a leaving master advertises.
    pub priority: u8,
    /// Advertisement interval: 10 ms to 40.95 s in whole centiseconds (it travels as 12
    /// bits of centiseconds).
    pub interval: Duration,
    /// Whether a backup with a higher priority than the master takes over (RFC default on).
    pub preempt: bool,
    /// How long a backup keeps accepting a lower-priority master, counted from the first
    /// advertisement it heard from one, before it preempts (0: at once).
    pub preempt_delay: Duration,
    /// The virtual addresses, 1-255, all of the family of `primary`.
    pub addrs: Vec<IpAddr>,
    /// Our own address on the link: the source of our advertisements, and the tie-breaker
    /// between equal priorities (the higher address wins).
    pub primary: IpAddr,
    /// A new master announces its addresses (gratuitous ARP / unsolicited NA) on taking
    /// over and once more this long after (keepalived's garp refresh); zero: no repeat.
    pub announce_repeat: Duration,
}

impl RouterConfig {
    /// The advertisement interval when none is configured (RFC 5798: 1 s).
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
    /// The default delay of the second announcement.
    pub const DEFAULT_ANNOUNCE_REPEAT: Duration = Duration::from_secs(1);
    /// Shortest interval (one centisecond).
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
    /// Longest interval (4095 centiseconds).
    pub const MAX_INTERVAL: Duration = Duration::from_millis(MAX_INTERVAL_CS as u64 * 10);

    /// A configuration with the defaults: 1 s interval, preempt on without delay, the
    /// announcement repeated after 1 s.
    pub fn new(vrid: u8, priority: u8, primary: IpAddr, addrs: Vec<IpAddr>) -> Self {
        RouterConfig {
            vrid,
            priority,
            interval: Self::DEFAULT_INTERVAL,
            preempt: true,
            preempt_delay: Duration::ZERO,
            addrs,
            primary,
            announce_repeat: Self::DEFAULT_ANNOUNCE_REPEAT,
        }
    }

    /// The interval in centiseconds, as advertised (exact once validated; an invalid
    /// interval is clamped to 1-4095).
    pub fn interval_cs(&self) -> u16 {
        let cs = self.interval.as_millis() / 10;
        u16::try_from(cs)
            .unwrap_or(MAX_INTERVAL_CS)
            .clamp(1, MAX_INTERVAL_CS)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vrid == 0 {
            return Err(ConfigError::ZeroVrid);
        }
        if self.priority == 0 {
            return Err(ConfigError::ZeroPriority);
        }
        if self.interval < Self::MIN_INTERVAL || self.interval > Self::MAX_INTERVAL {
            return Err(ConfigError::IntervalOutOfRange(self.interval));
        }
        if self.interval.as_nanos() % 10_000_000 != 0 {
            return Err(ConfigError::IntervalNotCentiseconds(self.interval));
        }
        if !usable(self.primary) {
            return Err(ConfigError::InvalidPrimary(self.primary));
        }
        if self.addrs.is_empty() {
            return Err(ConfigError::NoAddresses);
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(ConfigError::TooManyAddresses(self.addrs.len()));
        }
        for (i, &addr) in self.addrs.iter().enumerate() {
            if addr.is_ipv4() != self.primary.is_ipv4() {
                return Err(ConfigError::MixedFamilies {
                    addr,
                    primary: self.primary,
                });
            }
            if !usable(addr) {
                return Err(ConfigError::InvalidAddress(addr));
            }
            if self.addrs[..i].contains(&addr) {
                return Err(ConfigError::DuplicateAddress(addr));
            }
        }
        Ok(())
    }
}

/// Neither unspecified, nor multicast, nor broadcast.
fn usable(a: IpAddr) -> bool {
    !a.is_unspecified() && !a.is_multicast() && !matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
}

/// A configuration [`crate::machine::Router::new`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// VRID 0.
    #[error("virtual router id must be 1-255, got 0")]
    ZeroVrid,
    /// Priority 0.
    #[error(
        "priority must be 1-254 (255 only on the router that owns the addresses), got 0: \
         priority 0 is what a leaving master advertises"
    )]
    ZeroPriority,
    /// An interval outside 10 ms - 40.95 s.
    #[error("advertisement interval must be between 10 ms and 40.95 s, got {0:?}")]
    IntervalOutOfRange(Duration),
    /// An interval that is not a whole number of centiseconds.
    #[error(
        "advertisement interval must be a whole number of centiseconds (10 ms steps: VRRP \
         sends it in centiseconds), got {0:?}"
    )]
    IntervalNotCentiseconds(Duration),
    /// No virtual address.
    #[error("a virtual router needs at least one virtual address")]
    NoAddresses,
    /// More than 255 virtual addresses.
    #[error("{0} virtual addresses, at most 255 fit an advertisement")]
    TooManyAddresses(usize),
    /// A virtual address of the other family than the primary address.
    #[error(
        "virtual address {addr} and primary address {primary} are of different families \
         (IPv4 and IPv6 need one virtual router each)"
    )]
    MixedFamilies {
        /// The offending virtual address.
        addr: IpAddr,
        /// Our primary address.
        primary: IpAddr,
    },
    /// A virtual address listed twice.
    #[error("virtual address {0} is listed twice")]
    DuplicateAddress(IpAddr),
    /// An unspecified, multicast or broadcast virtual address.
    #[error("virtual address {0} is unspecified, multicast or broadcast")]
    InvalidAddress(IpAddr),
    /// An unspecified, multicast or broadcast primary address.
    #[error("primary address {0} is unspecified, multicast or broadcast")]
    InvalidPrimary(IpAddr),
}
