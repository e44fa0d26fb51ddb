//! Against the real kernel, in a network namespace of the test's own (a thread that
//! `unshare(CLONE_NEWNET)`s: the namespace dies with the thread, nothing of the host's
//! network is touched). Needs root; without it the tests say so and pass nothing off
//! as checked: they fail.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use rampart_hostnet::addr::{self, IfAddr};
use rampart_hostnet::iface::Interface;

/// Run `f` on a thread in a new network namespace.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): the tests need root");
        f()
    })
    .join()
    .expect("the namespaced thread panicked")
}

/// `ip ARGS` in the calling thread's namespace (a child inherits it).
fn ip(args: &str) {
    let st = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("run ip");
    assert!(st.success(), "ip {args} failed");
}

#[test]
fn addresses_are_added_and_removed_by_netlink_idempotently() {
    in_new_netns(|| {
        ip("link add d0 type veth peer name d1");
        ip("link set d1 up");
        ip("link set d0 up");
        ip("addr add 10.9.0.1/24 dev d0");
        let d0 = Interface::lookup("d0").expect("d0");
        assert_ne!(d0.mac, [0; 6], "a veth has a hardware address");
        assert!(d0.is_up());
        assert_eq!(
            d0.primary_v4(&[]).expect("primary"),
            Ipv4Addr::new(10, 9, 0, 1)
        );
        let vip: IfAddr = "10.9.0.100/24".parse().expect("vip");
        assert!(!addr::present("d0", vip.ip));
        addr::add(d0.index, vip).expect("add");
        assert!(addr::present("d0", vip.ip));
        addr::add(d0.index, vip).expect("adding what is there is fine");
        // The virtual address is never taken for the primary one.
        assert_eq!(
            d0.primary_v4(&[vip.ip]).expect("primary"),
            Ipv4Addr::new(10, 9, 0, 1)
        );
        addr::remove(d0.index, vip).expect("remove");
        assert!(!addr::present("d0", vip.ip));
        addr::remove(d0.index, vip).expect("removing what is gone is fine");
        let v6: IfAddr = "fd00:9::100/64".parse().expect("v6");
        addr::add(d0.index, v6).expect("add v6");
        assert!(addr::present("d0", v6.ip));
        addr::remove(d0.index, v6).expect("remove v6");
        let e = addr::add(9999, vip).expect_err("no such interface");
        assert!(e.to_string().contains("9999"), "{e}");
        assert!(!addr::present(
            "d0",
            IpAddr::V4(Ipv4Addr::new(10, 9, 0, 100))
        ));
    });
}
