//! A set of networks answering "does it hold this address" in O(log n): each network is
//! an address range, the ranges sorted and merged, one binary search per lookup (IPv4
//! and IPv6 apart; an IPv4-mapped IPv6 address is looked up as IPv4). Pure.

use std::net::IpAddr;

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Copy + Ord>(mut r: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    r.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1 || next(last.1) == Some(a) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn find<T: Copy + Ord>(r: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x.
    let i = r.partition_point(|(a, _)| *a <= x);
    i > 0 && r[i - 1].1 >= x
}

impl CidrSet {
    /// From (network address, prefix length) pairs; host bits are ignored, prefixes past
    /// the family's width are taken as full length.
    pub fn new(nets: impl IntoIterator<Item = (IpAddr, u8)>) -> CidrSet {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (ip, prefix) in nets {
            match canonical(ip) {
                IpAddr::V4(a) => {
                    // A mapped v6 network's prefix counts the 96 bits in front.
                    let p = if ip.is_ipv6() {
                        prefix.saturating_sub(96)
                    } else {
                        prefix
                    }
                    .min(32);
                    let mask = u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0);
                    let lo = u32::from(a) & mask;
                    v4.push((lo, lo | !mask));
                }
                IpAddr::V6(a) => {
                    let p = prefix.min(128);
                    let mask = u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0);
                    let lo = u128::from(a) & mask;
                    v6.push((lo, lo | !mask));
                }
            }
        }
        CidrSet {
            v4: merge(v4, |x: u32| x.checked_add(1)),
            v6: merge(v6, |x: u128| x.checked_add(1)),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => find(&self.v6, u128::from(a)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Ranges kept after merging.
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn naive(nets: &[(IpAddr, u8)], ip: IpAddr) -> bool {
        let ip = canonical(ip);
        nets.iter().any(|(n, p)| {
            let (n, p) = match canonical(*n) {
                IpAddr::V4(a) if n.is_ipv6() => (IpAddr::V4(a), p.saturating_sub(96)),
                x => (x, *p),
            };
            match (n, ip) {
                (IpAddr::V4(n), IpAddr::V4(i)) => {
                    let p = u32::from(p.min(32));
                    p == 0 || (u32::from(n) >> (32 - p)) == (u32::from(i) >> (32 - p))
                }
                (IpAddr::V6(n), IpAddr::V6(i)) => {
                    let p = u32::from(p.min(128));
                    p == 0 || (u128::from(n) >> (128 - p)) == (u128::from(i) >> (128 - p))
                }
                _ => false,
            }
        })
    }

    #[test]
    fn networks_and_hosts_of_both_families() {
        let set = CidrSet::new([
            ("10.0.0.0".parse().unwrap(), 8),
            ("192.168.1.7".parse().unwrap(), 32),
            ("2001:db8::".parse().unwrap(), 32),
        ]);
        assert!(set.contains("10.255.0.1".parse().unwrap()));
        assert!(!set.contains("11.0.0.0".parse().unwrap()));
        assert!(set.contains("192.168.1.7".parse().unwrap()));
        assert!(!set.contains("192.168.1.8".parse().unwrap()));
        assert!(set.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!set.contains("2001:db9::".parse().unwrap()));
        // A dual-stack socket's view of an IPv4 client.
        assert!(set.contains("::ffff:10.1.2.3".parse().unwrap()));
        // Adjacent and overlapping networks merge.
        let m = CidrSet::new([
            ("10.0.0.0".parse().unwrap(), 25),
            ("10.0.0.128".parse().unwrap(), 25),
            ("10.0.0.5".parse().unwrap(), 32),
        ]);
        assert_eq!(m.ranges(), 1);
        assert!(
            CidrSet::new([("0.0.0.0".parse().unwrap(), 0)]).contains("8.8.8.8".parse().unwrap())
        );
        assert!(!CidrSet::default().contains("8.8.8.8".parse().unwrap()));
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            // Few distinct high bits, so random networks and addresses meet.
            (0u32..4, any::<u32>())
                .prop_map(|(h, l)| IpAddr::V4(Ipv4Addr::from((h << 30) | (l >> 2)))),
            (0u128..4, any::<u128>())
                .prop_map(|(h, l)| IpAddr::V6(Ipv6Addr::from((h << 126) | (l >> 2)))),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn lookups_agree_with_checking_every_network(
            nets in proptest::collection::vec((arb_ip(), 0u8..=128), 0..40),
            probes in proptest::collection::vec(arb_ip(), 1..40),
        ) {
            let set = CidrSet::new(nets.iter().copied());
            for ip in probes {
                prop_assert_eq!(set.contains(ip), naive(&nets, ip), "{:?} in {:?}", ip, nets);
            }
            // Every network's own address is in the set.
            for (n, _) in &nets {
                prop_assert!(set.contains(*n));
            }
        }
    }
}
