//! rampart's VRRP against keepalived's on the same link (the anchor implementation): they
//! agree on the master both ways, over IPv4 and IPv6.

use super::*;

/// keepalived (Debian's) as the peer in lb2's host, VRRP version 3 at the same interval.
fn keepalived_conf(dir: &Path, priority: u8, vip: &str) -> std::path::PathBuf {
    let prefix = if vip.contains(':') { 64 } else { 24 };
    let p = dir.join("keepalived.conf");
    std::fs::write(
        &p,
        format!(
            "global_defs {{\n  vrrp_version 3\n  vrrp_garp_master_delay 0\n  enable_script_security\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  priority {priority}\n  advert_int 0.05\n  virtual_ipaddress {{\n    {vip}/{prefix}\n  }}\n}}\n"
        ),
    )
    .expect("write keepalived.conf");
    p
}

fn start_keepalived(s: &Stack, priority: u8) -> Proc {
    start_keepalived_on(s, priority, VIP)
}

fn start_keepalived_on(s: &Stack, priority: u8, vip: &str) -> Proc {
    let ka = rampart_testkit::find_program("keepalived", &["/usr/sbin"])
        .expect("keepalived (Debian package keepalived; scripts/deps.sh installs it)");
    let conf = keepalived_conf(s.dir.path(), priority, vip);
    let d = s.dir.path();
    let mut cmd = s.lab.command("lb2", ka);
    cmd.args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
        .arg(&conf)
        .arg("--pid")
        .arg(d.join(format!("ka-{priority}.pid")))
        .arg("--vrrp_pid")
        .arg(d.join(format!("ka-vrrp-{priority}.pid")));
    Proc::spawn("keepalived", cmd, &d.join("keepalived.log"))
}

fn keepalived_log(s: &Stack) -> String {
    std::fs::read_to_string(s.dir.path().join("keepalived.log")).unwrap_or_default()
}

#[test]
fn a_rampart_balancer_and_keepalived_agree_on_the_master_both_ways() {
    // rampart (150) master, keepalived (100) backup.
    let mut s = Stack::new(
        "vka",
        vec![vec![Vr {
            vrid: 51,
            vip: VIP,
            priority: 150,
            preempt: true,
        }]],
        "50ms",
    );
    s.lab.host("lb2", "10.77.0.12/24");
    let mut ka = start_keepalived(&s, 100);
    assert!(
        wait_until(Duration::from_secs(5), || keepalived_log(&s)
            .contains("Entering BACKUP STATE")),
        "{}",
        keepalived_log(&s)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        holds(&s.lab, "lb1", VIP) && !holds(&s.lab, "lb2", VIP),
        "keepalived took the address from a higher-priority rampart master:\n{}",
        keepalived_log(&s)
    );
    assert!(!keepalived_log(&s).contains("Entering MASTER STATE"));
    // rampart dies: keepalived takes over; rampart returns and preempts it back.
    s.lb(1).crash();
    assert!(
        wait_until(Duration::from_secs(5), || holds(&s.lab, "lb2", VIP)
            && !holds(&s.lab, "lb1", VIP)),
        "keepalived did not take over from a dead rampart:\n{}",
        keepalived_log(&s)
    );
    s.start_lb(1);
    assert!(
        wait_until(Duration::from_secs(5), || holds(&s.lab, "lb1", VIP)
            && !holds(&s.lab, "lb2", VIP)),
        "rampart (150) did not preempt keepalived (100):\n{}\n{}",
        s.log(1),
        keepalived_log(&s)
    );
    assert!(
        keepalived_log(&s).contains("higher priority 150"),
        "{}",
        keepalived_log(&s)
    );
    ka.kill();
    s.lb(1).crash();
    // keepalived (200) master, rampart (150) backup: rampart defers, then takes over when
    // keepalived stops cleanly (priority 0).
    let _ = std::fs::remove_file(s.dir.path().join("keepalived.log"));
    let ka = start_keepalived(&s, 200);
    assert!(
        wait_until(Duration::from_secs(5), || holds(&s.lab, "lb2", VIP)),
        "{}",
        keepalived_log(&s)
    );
    s.start_lb(1);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        holds(&s.lab, "lb2", VIP) && !holds(&s.lab, "lb1", VIP),
        "rampart took the address from a higher-priority keepalived master:\n{}",
        s.log(1)
    );
    assert!(s.log(1).contains("to=\"backup\""), "{}", s.log(1));
    // (No balancer listens on keepalived's host, so the site answers only through rampart.)
    ka.signal(Signal::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || holds(&s.lab, "lb1", VIP)
            && !holds(&s.lab, "lb2", VIP)),
        "rampart did not take over from a stopping keepalived:\n{}\n{}",
        s.log(1),
        keepalived_log(&s)
    );
    let probe = Probe::start(&s.lab, VIP);
    assert!(
        wait_until(Duration::from_secs(5), || probe.ok_count() > 10),
        "the site does not answer through rampart after the takeover"
    );
    probe.finish();
}

// ---- IPv6: the same pair on fd77::100, adverts from link-local addresses to ff02::12,
// unsolicited neighbour advertisements instead of gratuitous ARP.

#[test]
fn ipv6_a_rampart_balancer_and_keepalived_agree_on_the_master() {
    let mut s = Stack::new(
        "v6ka",
        vec![vec![Vr {
            vrid: 51,
            vip: VIP6,
            priority: 150,
            preempt: true,
        }]],
        "50ms",
    );
    s.lab.host("lb2", "10.77.0.12/24");
    add_v6(&s.lab, "lb2", "fd77::12/64");
    let _ka = start_keepalived_on(&s, 100, VIP6);
    assert!(
        wait_until(Duration::from_secs(5), || keepalived_log(&s)
            .contains("Entering BACKUP STATE")),
        "{}",
        keepalived_log(&s)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        holds(&s.lab, "lb1", VIP6) && !holds(&s.lab, "lb2", VIP6),
        "keepalived took {VIP6} from a higher-priority rampart master:\n{}\n{}",
        keepalived_log(&s),
        s.log(1)
    );
    assert!(!keepalived_log(&s).contains("Entering MASTER STATE"));
    // rampart stops cleanly (priority 0): keepalived takes over at once.
    s.lb(1).signal(Signal::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || holds(&s.lab, "lb2", VIP6)
            && !holds(&s.lab, "lb1", VIP6)),
        "keepalived did not take over {VIP6} from a stopping rampart:\n{}\n{}",
        keepalived_log(&s),
        s.log(1)
    );
    // And rampart, back with the higher priority, preempts keepalived.
    s.start_lb(1);
    assert!(
        wait_until(Duration::from_secs(5), || holds(&s.lab, "lb1", VIP6)
            && !holds(&s.lab, "lb2", VIP6)),
        "rampart (150) did not preempt keepalived (100) on IPv6:\n{}\n{}",
        s.log(1),
        keepalived_log(&s)
    );
}
