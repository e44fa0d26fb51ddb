use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().unwrap())
}

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse().unwrap())
}

/// Built by hand from the RFC 5798 section 5.1 layout: 192.168.1.10 advertises VRID 51,
/// priority 100, 1 s (100 cs), one address 192.168.1.100, to 224.0.0.18.
///
/// Checksum, 16-bit words:
///   pseudo-header  c0a8 + 010a (src) + e000 + 0012 (dst) + 0070 (0, 112) + 000c (len 12)
///                  = 0x1a240
///   message        3133 + 6401 + 0064 + 0000 (checksum) + c0a8 + 0164 = 0x157a4
///   sum 0x2f9e4 -> fold 0xf9e4 + 0x2 = 0xf9e6 -> complement 0x0619
const V4_VECTOR: [u8; 12] = [
    0x31, // version 3, type 1
    0x33, // VRID 51
    0x64, // priority 100
    0x01, // one address
    0x00, 0x64, // reserved 0, interval 100 cs
    0x06, 0x19, // checksum
    192, 168, 1, 100,
];

/// fe80::1 advertises VRID 51, priority 200, 1 s, fe80::100 and 2001:db8::100 to ff02::12.
/// The checksum was computed with an independent implementation (Python: RFC 8200
/// pseudo-header + RFC 1071 sum).
const V6_VECTOR: [u8; 40] = [
    0x31, 0x33, 0xc8, 0x02, 0x00, 0x64, 0xd9, 0xfc, // header, checksum 0xd9fc
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, // fe80::100
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, // 2001:db8::100
];

#[test]
fn ipv4_vector_decodes_and_round_trips() {
    let (src, dst) = (v4("192.168.1.10"), IpAddr::V4(GROUP_V4));
    let ad = Advert::decode(&V4_VECTOR, src, dst).unwrap();
    assert_eq!(
        ad,
        Advert {
            vrid: 51,
            priority: 100,
            interval_cs: 100,
            addrs: vec![v4("192.168.1.100")],
        }
    );
    assert_eq!(ad.interval(), std::time::Duration::from_secs(1));
    assert_eq!(ad.encode(src, dst).unwrap(), V4_VECTOR);
    assert_eq!(ad.encoded_len(), V4_VECTOR.len());
}

#[test]
fn ipv6_vector_decodes_and_round_trips() {
    let (src, dst) = (v6("fe80::1"), IpAddr::V6(GROUP_V6));
    let ad = Advert::decode(&V6_VECTOR, src, dst).unwrap();
    assert_eq!(ad.priority, 200);
    assert_eq!(ad.addrs, vec![v6("fe80::100"), v6("2001:db8::100")]);
    assert_eq!(ad.encode(src, dst).unwrap(), V6_VECTOR);
}

#[test]
fn checksum_covers_the_pseudo_header() {
    let dst = IpAddr::V4(GROUP_V4);
    // Another source or destination makes the same bytes invalid (the IPv4 checksum of
    // VRRPv2 covered the message only; version 3 covers the addresses too).
    let err = Advert::decode(&V4_VECTOR, v4("192.168.1.11"), dst).unwrap_err();
    assert!(matches!(
        err,
        PacketError::BadChecksum { found: 0x0619, .. }
    ));
    let err = Advert::decode(&V4_VECTOR, v4("192.168.1.10"), v4("192.168.1.2")).unwrap_err();
    assert!(matches!(err, PacketError::BadChecksum { .. }));
    // The error names the checksum the message should have carried.
    let mut bad = V4_VECTOR;
    bad[7] ^= 0xff;
    let err = Advert::decode(&bad, v4("192.168.1.10"), dst).unwrap_err();
    assert_eq!(
        err,
        PacketError::BadChecksum {
            found: 0x06e6,
            computed: 0x0619
        }
    );
}

#[test]
fn reserved_bits_are_ignored_but_checksummed() {
    let (src, dst) = (v4("192.168.1.10"), IpAddr::V4(GROUP_V4));
    let mut m = V4_VECTOR.to_vec();
    m[4] |= 0xf0;
    // Keep the checksum right: the word 0x0064 became 0xf064.
    let c = u16::from_be_bytes([m[6], m[7]]);
    let fixed = !fold(u64::from(!c) + 0xf000);
    m[6..8].copy_from_slice(&fixed.to_be_bytes());
    let ad = Advert::decode(&m, src, dst).unwrap();
    assert_eq!(ad.interval_cs, 100);
}

fn resum(m: &mut [u8], src: IpAddr, dst: IpAddr) {
    m[6] = 0;
    m[7] = 0;
    let c = !fold(sum_words(pseudo_sum(src, dst, IPPROTO_VRRP, m.len()), m));
    m[6..8].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn decode_rejects_malformed_messages() {
    let (src, dst) = (v4("192.168.1.10"), IpAddr::V4(GROUP_V4));
    let dec = |m: &[u8]| Advert::decode(m, src, dst).unwrap_err();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut m = V4_VECTOR.to_vec();
        f(&mut m);
        resum(&mut m, src, dst);
        m
    };
    assert_eq!(dec(&[]), PacketError::Truncated { len: 0, need: 8 });
    assert_eq!(
        dec(&V4_VECTOR[..7]),
        PacketError::Truncated { len: 7, need: 8 }
    );
    assert_eq!(dec(&with(&|m| m[0] = 0x21)), PacketError::BadVersion(2));
    assert_eq!(dec(&with(&|m| m[0] = 0x32)), PacketError::BadType(2));
    assert_eq!(dec(&with(&|m| m[1] = 0)), PacketError::ZeroVrid);
    assert_eq!(dec(&with(&|m| m[5] = 0)), PacketError::ZeroInterval);
    assert_eq!(dec(&with(&|m| m[3] = 0)), PacketError::NoAddresses);
    // The count says 2 addresses, 1 is there.
    assert_eq!(
        dec(&with(&|m| m[3] = 2)),
        PacketError::Truncated { len: 12, need: 16 }
    );
    // Trailing bytes after the announced addresses.
    assert_eq!(
        dec(&with(&|m| m.extend_from_slice(&[10, 0, 0, 1]))),
        PacketError::CountMismatch {
            count: 1,
            need: 12,
            len: 16
        }
    );
    // The address part is not a whole number of addresses either.
    assert_eq!(
        dec(&with(&|m| m.push(1))),
        PacketError::CountMismatch {
            count: 1,
            need: 12,
            len: 13
        }
    );
    let huge = with(&|m| m.resize(MAX_LEN, 0));
    assert_eq!(
        dec(&huge),
        PacketError::TooLong {
            len: MAX_LEN,
            max: 8 + 255 * 4
        }
    );
    // IPv4 source, IPv6 destination.
    assert_eq!(
        Advert::decode(&V4_VECTOR, src, IpAddr::V6(GROUP_V6)).unwrap_err(),
        PacketError::MixedFamilies
    );
    // An IPv4 message read as IPv6: 4 bytes of addresses cannot be one IPv6 address.
    assert_eq!(
        Advert::decode(&V4_VECTOR, v6("fe80::1"), IpAddr::V6(GROUP_V6)).unwrap_err(),
        PacketError::Truncated { len: 12, need: 24 }
    );
}

#[test]
fn encode_rejects_what_cannot_be_sent() {
    let (src, dst) = (v4("10.0.0.1"), IpAddr::V4(GROUP_V4));
    let good = Advert {
        vrid: 7,
        priority: 0,
        interval_cs: MAX_INTERVAL_CS,
        addrs: vec![v4("10.0.0.100")],
    };
    assert!(
        good.encode(src, dst).is_ok(),
        "priority 0 and 40.95 s are valid"
    );
    let enc = |f: &dyn Fn(&mut Advert)| {
        let mut a = good.clone();
        f(&mut a);
        a.encode(src, dst).unwrap_err()
    };
    assert_eq!(enc(&|a| a.vrid = 0), PacketError::ZeroVrid);
    assert_eq!(enc(&|a| a.interval_cs = 0), PacketError::ZeroInterval);
    assert_eq!(
        enc(&|a| a.interval_cs = 4096),
        PacketError::IntervalTooLong(4096)
    );
    assert_eq!(enc(&|a| a.addrs.clear()), PacketError::NoAddresses);
    assert_eq!(
        enc(&|a| a.addrs = vec![v4("10.0.0.100"); 256]),
        PacketError::TooManyAddresses(256)
    );
    assert_eq!(
        enc(&|a| a.addrs.push(v6("2001:db8::1"))),
        PacketError::MixedFamilies
    );
    assert_eq!(
        good.encode(src, IpAddr::V6(GROUP_V6)).unwrap_err(),
        PacketError::MixedFamilies
    );
    // The reused buffer is left empty on error.
    let mut buf = vec![1, 2, 3];
    let mut bad = good.clone();
    bad.vrid = 0;
    assert!(bad.encode_into(src, dst, &mut buf).is_err());
    assert!(buf.is_empty());
    good.encode_into(src, dst, &mut buf).unwrap();
    assert_eq!(buf, good.encode(src, dst).unwrap());
}

#[test]
fn parse_ipv4_skips_options_and_padding() {
    // IHL 6 (one option word: NOP NOP NOP EOL), total length 24 + 12, two bytes of padding.
    let mut d = vec![
        0x46, 0xc0, 0, 36, 0, 0, 0, 0, 255, 112, 0, 0, 192, 168, 1, 10, 224, 0, 0, 18, 1, 1, 1, 0,
    ];
    d.extend_from_slice(&V4_VECTOR);
    d.extend_from_slice(&[0xee, 0xee]);
    let v = parse_ipv4(&d).unwrap();
    assert_eq!(v.src, Ipv4Addr::new(192, 168, 1, 10));
    assert_eq!(v.dst, GROUP_V4);
    assert_eq!((v.ttl, v.protocol), (255, IPPROTO_VRRP));
    assert_eq!(v.payload, V4_VECTOR);
    let ad = Advert::decode(v.payload, IpAddr::V4(v.src), IpAddr::V4(v.dst)).unwrap();
    assert_eq!(ad.vrid, 51);

    assert_eq!(
        parse_ipv4(&d[..19]).unwrap_err(),
        PacketError::Truncated { len: 19, need: 20 }
    );
    let mut e = d.clone();
    e[0] = 0x65;
    assert_eq!(parse_ipv4(&e).unwrap_err(), PacketError::NotIpv4(6));
    e[0] = 0x44;
    assert_eq!(parse_ipv4(&e).unwrap_err(), PacketError::BadHeaderLength(4));
    e[0] = 0x4f;
    assert_eq!(
        parse_ipv4(&e).unwrap_err(),
        PacketError::Truncated { len: 38, need: 60 }
    );
    let mut e = d.clone();
    e[3] = 200;
    assert_eq!(
        parse_ipv4(&e).unwrap_err(),
        PacketError::BadTotalLength {
            total: 200,
            len: 38
        }
    );
    e[3] = 20; // shorter than the 24-byte header
    assert!(matches!(
        parse_ipv4(&e),
        Err(PacketError::BadTotalLength { total: 20, .. })
    ));
}

#[test]
fn gratuitous_arp_layout() {
    let mac = [0x02, 0, 0, 0, 0, 0x01];
    let f = garp_ipv4(mac, Ipv4Addr::new(192, 168, 1, 100));
    assert_eq!(
        f,
        [
            0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, 6, 4, request
            2, 0, 0, 0, 0, 1, 192, 168, 1, 100, // sender: our MAC, the VIP
            0, 0, 0, 0, 0, 0, 192, 168, 1, 100, // target: zero MAC, the VIP
        ]
    );
}

#[test]
fn unsolicited_na_layout_and_checksum() {
    let mac = [0x02, 0, 0, 0, 0, 0x01];
    let target: Ipv6Addr = "2001:db8::100".parse().unwrap();
    let m = unsolicited_na(target, mac);
    assert_eq!(m.len(), NA_LEN);
    let mut want = vec![136, 0, 0, 0, 0x20, 0, 0, 0];
    want.extend_from_slice(&target.octets());
    want.extend_from_slice(&[2, 1, 2, 0, 0, 0, 0, 1]);
    assert_eq!(m, want);
    // Computed with an independent implementation (Python) for fe80::1 -> ff02::1.
    let (src, dst) = ("fe80::1".parse().unwrap(), "ff02::1".parse().unwrap());
    let c = icmpv6_checksum(src, dst, &m);
    assert_eq!(c, 0x2764);
    // Filled in, the whole message sums to 0xffff with its pseudo-header, and the
    // function still gives the same value (it skips the field).
    let mut filled = m.clone();
    filled[2..4].copy_from_slice(&c.to_be_bytes());
    let s = fold(sum_words(
        pseudo_sum(IpAddr::V6(src), IpAddr::V6(dst), 58, filled.len()),
        &filled,
    ));
    assert_eq!(s, 0xffff);
    assert_eq!(icmpv6_checksum(src, dst, &filled), c);
}

fn any_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn valid_advert() -> impl Strategy<Value = (Advert, IpAddr, IpAddr)> {
    (
        any::<bool>(),
        1u8..,
        any::<u8>(),
        1u16..=MAX_INTERVAL_CS,
        1usize..=8,
    )
        .prop_flat_map(|(is_v4, vrid, priority, interval_cs, n)| {
            let addr = if is_v4 {
                any::<[u8; 4]>()
                    .prop_map(|o| IpAddr::V4(Ipv4Addr::from(o)))
                    .boxed()
            } else {
                any::<[u8; 16]>()
                    .prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)))
                    .boxed()
            };
            (
                proptest::collection::vec(addr.clone(), n),
                addr.clone(),
                addr,
            )
                .prop_map(move |(addrs, src, dst)| {
                    let ad = Advert {
                        vrid,
                        priority,
                        interval_cs,
                        addrs,
                    };
                    (ad, src, dst)
                })
        })
}

proptest! {
    #[test]
    fn decode_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        src in any_addr(),
        dst in any_addr(),
    ) {
        let _ = Advert::decode(&bytes, src, dst);
        let _ = parse_ipv4(&bytes);
    }

    #[test]
    fn decode_never_panics_on_near_valid_headers(
        head in (0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255),
        tail in proptest::collection::vec(any::<u8>(), 0..80),
        v6hdr in any::<bool>(),
    ) {
        let mut m = vec![0x31, head.0, head.1, head.2, head.3, head.4, head.5, 0];
        m.extend_from_slice(&tail);
        let (src, dst) = if v6hdr {
            (v6("fe80::1"), IpAddr::V6(GROUP_V6))
        } else {
            (v4("10.0.0.1"), IpAddr::V4(GROUP_V4))
        };
        if m.len() >= 8 {
            resum(&mut m, src, dst);
        }
        let _ = Advert::decode(&m, src, dst);
        // And as an IPv4 datagram with a plausible first byte.
        let mut d = m.clone();
        d[0] = 0x40 | (head.0 & 0x0f);
        let _ = parse_ipv4(&d);
    }

    #[test]
    fn round_trip((ad, src, dst) in valid_advert()) {
        let bytes = ad.encode(src, dst).unwrap();
        prop_assert_eq!(bytes.len(), ad.encoded_len());
        prop_assert_eq!(Advert::decode(&bytes, src, dst).unwrap(), ad);
    }

    #[test]
    fn any_single_bit_flip_is_rejected((ad, src, dst) in valid_advert(), bit in any::<usize>()) {
        let mut bytes = ad.encode(src, dst).unwrap();
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Advert::decode(&bytes, src, dst).is_err());
    }
}
