//! The pair over an IPv6 virtual address (VRRPv3 on IPv6): failover each way, and adverts
//! from off the link (hop limit below 255) dropped while a valid higher one wins.

use super::*;

#[test]
fn ipv6_sigkill_of_the_master_moves_the_virtual_ip_and_the_client_follows() {
    let (s, (_, _, gap)) = failover_on("v6k", VIP6, |s| s.lb(1).crash());
    assert!(
        wait_until(Duration::from_secs(2), || !holds(&s.lab, "lb1", VIP6)),
        "the killed master's host still holds {VIP6}"
    );
    // The client's neighbour cache pointed at lb1: only lb2's unsolicited neighbour
    // advertisement (override flag) moves it this fast; without it the client waits for
    // neighbour unreachability detection (5 s and more).
    assert!(
        gap < Duration::from_millis(1500),
        "gap {gap:?}:\n{}",
        s.logs()
    );
    assert!(s.log(2).contains("VRRP transition"), "{}", s.logs());
}

#[test]
fn ipv6_a_clean_stop_hands_the_virtual_ip_over_before_letting_go() {
    let (mut s, (probes, failed, gap)) =
        failover_on("v6s", VIP6, |s| s.lb(1).signal(Signal::SIGTERM));
    assert_eq!(
        s.lb(1).wait_exit(Duration::from_secs(10)),
        Ok(Some(0)),
        "lb1 did not stop cleanly:\n{}",
        s.log(1)
    );
    assert!(
        wait_until(Duration::from_secs(2), || !holds(&s.lab, "lb1", VIP6)),
        "the stopped master's host still holds {VIP6}"
    );
    assert!(
        failed <= 1,
        "{failed} of {probes} probes failed (gap {gap:?}):\n{}",
        s.logs()
    );
}

/// A higher-priority IPv6 advert from the client's host, sent with `hops` as its hop limit.
fn spoof_v6_advert(lab: &Lab, hops: u32) {
    lab.run_in("client", move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let src: std::net::Ipv6Addr = "fd77::31".parse().expect("ip");
        let group = rampart_vrrp::packet::GROUP_V6;
        let ad = rampart_vrrp::Advert {
            vrid: 51,
            priority: 254,
            interval_cs: 5,
            addrs: vec![VIP6.parse().expect("vip")],
        };
        let msg = ad
            .encode(std::net::IpAddr::V6(src), std::net::IpAddr::V6(group))
            .expect("encode");
        let sock =
            Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(112))).expect("raw socket");
        let index = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        sock.bind(&std::net::SocketAddr::V6(std::net::SocketAddrV6::new(src, 0, 0, 0)).into())
            .expect("bind");
        sock.set_multicast_if_v6(index).expect("multicast if");
        sock.set_multicast_hops_v6(hops).expect("hops");
        let to = std::net::SocketAddr::V6(std::net::SocketAddrV6::new(group, 0, 0, index));
        for _ in 0..10 {
            sock.send_to(&msg, &to.into()).expect("send the advert");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .expect("spoofing thread");
}

#[test]
fn ipv6_adverts_from_off_the_link_are_dropped_and_a_valid_higher_one_wins() {
    let s = pair_on("v6h", VIP6, true);
    assert!(
        s.wait_sole_holder(1, VIP6, Duration::from_secs(5)),
        "{}",
        s.logs()
    );
    let state = |host: &str| {
        s.lab
            .run_in(host, move || {
                rampart_testkit::http_get("127.0.0.1:9000".parse().expect("admin"), "/api/state")
                    .map(|r| r.text())
                    .unwrap_or_default()
            })
            .join()
            .expect("admin thread")
    };
    // lb2 names lb1's link-local address as its master: adverts go link-local to link-local.
    assert!(
        wait_until(Duration::from_secs(5), || state("lb2")
            .contains("\"address\":\"fe80::")),
        "{}",
        state("lb2")
    );
    // Hop limit 64: routed from elsewhere as far as VRRP can tell. Dropped and counted;
    // lb1 stays master.
    spoof_v6_advert(&s.lab, 64);
    assert!(
        wait_until(Duration::from_secs(2), || state("lb1")
            .contains("\"adverts_dropped\":")
            && !state("lb1").contains("\"adverts_dropped\":0")),
        "lb1 did not count the off-link adverts as dropped:\n{}",
        state("lb1")
    );
    assert!(
        state("lb1").contains("\"state\":\"master\""),
        "an off-link advert deposed lb1:\n{}\n{}",
        state("lb1"),
        s.log(1)
    );
    // The same advert with hop limit 255 is a real higher-priority router on the link:
    // lb1 defers to it (it is the receive path that is tested, not a rule against
    // everything).
    spoof_v6_advert(&s.lab, 255);
    assert!(
        wait_until(Duration::from_secs(2), || state("lb1")
            .contains("\"state\":\"backup\"")),
        "lb1 ignored a valid higher-priority advert:\n{}\n{}",
        state("lb1"),
        s.log(1)
    );
}
