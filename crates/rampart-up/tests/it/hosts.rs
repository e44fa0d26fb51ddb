//! Issue 11's separate-hosts rehearsal, end to end: `rampart up --hosts netns` runs the
//! default topology with every node in a network namespace of its own, the site on two
//! virtual IPs moved by the balancers' VRRP, each node's firewall applied; a client host
//! reaches the site through either virtual IP and nothing else; the balancer drills keep
//! the site reachable; the primary database's host cut off fails over with never two
//! writable primaries and no acknowledged write lost; the balancers reach the web nodes
//! over TLS (issue 15); SIGINT leaves no namespace, bridge
//! or process behind.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::{rampart_bin, wait_until, Proc, TempDir};
use rampart_topology::Topology;
use rampart_up::site::Site;
use serde_json::Value;

fn rampart(args: &[&str]) -> std::process::Output {
    Command::new(rampart_bin())
        .args(args)
        .output()
        .expect("run rampart")
}

/// A /24 no route of this machine covers.
fn free_subnet() -> String {
    for i in 0..200u32 {
        let third = (std::process::id() + i * 7) % 200 + 20;
        let net = format!("10.214.{third}.0/24");
        let out = Command::new("ip")
            .args(["-4", "route", "show", "match", &net])
            .output()
            .expect("ip route");
        // `match` also lists the routes that cover it (the default route): only a
        // route of the subnet itself, or a narrower one, is a clash.
        if !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| !l.starts_with("default") && !l.trim().is_empty())
        {
            return net;
        }
    }
    panic!("no free subnet");
}

/// Whether a TCP connection from inside namespace `ns` to `addr` is accepted.
fn reaches(ns: &str, addr: SocketAddr) -> bool {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        rampart_up::hostnet::enter(&ns).expect("enter the namespace");
        TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
    })
    .join()
    .expect("thread")
}

/// GET / on the site through `vip`, from the client host.
fn site_from_client(client_ns: &str, site: &Site) -> Option<u16> {
    site_from_client_or_why(client_ns, site).ok()
}

/// [`site_from_client`], with the error when there is no answer.
fn site_from_client_or_why(client_ns: &str, site: &Site) -> Result<u16, String> {
    let (ns, site) = (client_ns.to_string(), site.clone());
    std::thread::spawn(move || {
        rampart_up::hostnet::enter(&ns).expect("enter the client host");
        site.get("/", Duration::from_secs(5))
            .map(|r| r.status)
            .map_err(|e| format!("{e} ({:?})", e.kind()))
    })
    .join()
    .expect("thread")
}

/// Whether the PostgreSQL at `addr` accepts writes (`pg_is_in_recovery()` false), asked
/// by psql from inside its own host `ns` (a cut of the host does not hide it from
/// itself). `None` when it does not answer within 2 s.
fn is_primary(ns: &str, addr: SocketAddr, password: &str) -> Option<bool> {
    let psql = rampart_testkit::pg_bin_dir().join("psql");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(psql)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-tAc"])
        .arg("SELECT pg_is_in_recovery()")
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let out = child.wait_with_output().ok()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "f" => Some(true),
        "t" => Some(false),
        _ => None,
    }
}

fn netns_left(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_stack_on_separate_hosts_serves_through_virtual_ips_behind_each_hosts_firewall() {
    if let Err(e) = rampart_testkit::netns::available() {
        panic!("{e}: the separate-hosts test needs them");
    }
    let dir = TempDir::new().expect("tempdir");
    let root = dir.path();
    let cluster = format!("h{}", std::process::id());
    let config = root.join("rampart.toml");
    let out = rampart(&["init", config.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A cluster name of its own: namespaces are named after it.
    let text = std::fs::read_to_string(&config).expect("read").replacen(
        "name = \"main\"",
        &format!("name = \"{cluster}\""),
        1,
    );
    std::fs::write(&config, text).expect("write");
    let subnet = free_subnet();
    let log = root.join("up.log");
    let mut cmd = Command::new(rampart_bin());
    cmd.args(["up", "--config"])
        .arg(&config)
        .args(["--hosts", "netns", "--subnet", &subnet]);
    let mut up = Proc::spawn("up", cmd, &log);
    let prefix = format!("rp-{cluster}-");
    // Whatever happens, the hosts go.
    struct Heal(String);
    impl Drop for Heal {
        fn drop(&mut self) {
            for ns in netns_left(&self.0) {
                let ns = ns.split_whitespace().next().unwrap_or_default().to_string();
                let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            }
        }
    }
    let _heal = Heal(prefix.clone());
    assert!(
        wait_until(Duration::from_secs(180), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("stack healthy"))
            || !up.is_running()),
        "the stack did not come up"
    );
    let up_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(up_log.contains("stack healthy"), "{up_log}");
    let rehearsal = root.join("rampart.hosts.toml");
    let t = Topology::load(&rehearsal).expect("the rehearsal topology");
    let vips = t.lb.as_ref().expect("lb").vips();
    assert_eq!(vips.len(), 2, "two virtual IPs, one per balancer");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join(format!(".rampart/{cluster}/up.json")))
            .expect("up.json"),
    )
    .expect("json");
    // Every node runs in its own cgroup on its host too (a freeze drill freezes the whole
    // cgroup, a stop kills what is left in it): it enters the cgroup before the
    // namespace, whose /sys has no cgroup2 hierarchy mounted.
    let stack_cgroup = state["cgroup"].as_str().map(Path::new);
    if let (Some(dir), Some(mount)) = (stack_cgroup, rampart_up::cgroup::cgroup2_mount()) {
        for n in state["nodes"].as_array().expect("nodes") {
            let (name, pid) = (n["name"].as_str().expect("name"), &n["pid"]);
            let Some(pid) = pid.as_u64() else { continue };
            let cg = rampart_up::cgroup::of_pid(pid as u32).unwrap_or_default();
            assert_eq!(
                mount.join(cg.trim_start_matches('/')),
                dir.join(name),
                "{name} (pid {pid}) is not in its cgroup"
            );
        }
    }
    let hosts = &state["hosts"];
    let client_ns = hosts["client"]["netns"]
        .as_str()
        .expect("client")
        .to_string();
    let host_ip = |node: &str| -> std::net::IpAddr {
        hosts["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["node"] == node)
            .and_then(|h| h["ip"].as_str())
            .expect("host ip")
            .parse()
            .expect("ip")
    };

    // The site over HTTPS through either virtual IP, from the client host, at once: `up`
    // reports healthy only once each virtual IP has one master (a balancer answers on its
    // own address a master-down interval before it takes an address).
    assert!(up_log.contains("virtual IPs held"), "{up_log}");
    let site = Site::of(&t).expect("site");
    let first = site_from_client_or_why(&client_ns, &site);
    if first != Ok(200) {
        // Failed once in CI (2026-12-07, no answer within 5 s right after "virtual IPs held
        // after 0.0s"): say why, and whether and when the site answers after all, so the
        // next failure tells a virtual IP taken late from one never reachable.
        let since = Instant::now();
        let later = loop {
            let r = site_from_client_or_why(&client_ns, &site);
            if r == Ok(200) || since.elapsed() > Duration::from_secs(15) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let logs = root.join(format!(".rampart/{cluster}/logs"));
        let tail = |node: &str| {
            let text =
                std::fs::read_to_string(logs.join(format!("{node}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        panic!(
            "site from the client host: {first:?}; then {later:?} after {:?}\n{up_log}\n-- lb1 --\n{}\n-- lb2 --\n{}",
            since.elapsed(),
            tail("lb1"),
            tail("lb2")
        );
    }
    let mut t2 = t.clone();
    if let Some(lb) = t2.lb.as_mut() {
        lb.vrrp.iter_mut().for_each(|(_, v)| v.swap(0, 1));
    }
    let site2 = Site::of(&t2).expect("site through the second VIP");
    assert_ne!(site.url(), site2.url());
    assert_eq!(site_from_client(&client_ns, &site2), Some(200));

    // The firewall: the client reaches neither a web server, nor PostgreSQL, nor an
    // agent's API, nor a balancer's admin; a web host reaches PostgreSQL.
    let db = t.db.as_ref().expect("db");
    let web1 = &t.web[0];
    let lb1 = t.lb.as_ref().expect("lb").node("lb1").expect("lb1");
    let pg1 = SocketAddr::new(host_ip("db1"), db.nodes[0].port);
    for (what, addr) in [
        ("web1", web1.listen),
        ("db1's PostgreSQL", pg1),
        ("db1's agent API", db.nodes[0].api),
        ("lb1's admin", lb1.admin.expect("admin")),
    ] {
        assert!(
            !reaches(&client_ns, addr),
            "the client host reaches {what} ({addr})"
        );
    }
    assert!(
        reaches(&format!("{prefix}web1"), pg1),
        "web1 does not reach db1's PostgreSQL"
    );

    // Balancers -> web nodes cross the bridge over TLS (`[tls] upstream`, on by default
    // on separate hosts): each pool of web nodes verifies them against the stack's CA,
    // each web node serves its own certificate of that CA for its address. The site's
    // page answered above went that way: in plain HTTP a web node serves only the health
    // and metrics paths (400 for the rest), and every web node counts TLS connections
    // (the balancers' health checks and requests), none that failed its handshake.
    let tls = t.tls.as_ref().expect("[tls]");
    assert!(tls.upstream, "upstream TLS is on in the rehearsal");
    for p in &t.lb.as_ref().expect("lb").config.pools {
        let pt = p
            .tls
            .as_ref()
            .expect("the pool speaks TLS to the web nodes");
        assert_eq!(pt.ca, tls.trust_file());
    }
    for w in &t.web {
        let mut direct = site.clone();
        direct.addr = w.listen;
        let r = direct
            .get("/healthz", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("HTTPS to {} verified by the stack's CA: {e}", w.name));
        assert_eq!(r.status, 200, "{}", w.name);
        let plain = rampart_testkit::http_get(w.listen, "/").expect("plain GET /");
        assert_eq!(plain.status, 400, "{} served its page in clear", w.name);
        let metrics = rampart_testkit::http_get(w.listen, "/metrics")
            .expect("metrics")
            .text();
        let tls_conns: f64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("rampart_web_connections_total{transport=\"tls\"}")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0);
        assert!(tls_conns >= 2.0, "{}: {tls_conns} TLS connections", w.name);
    }

    // The monitor, in a host of its own, scrapes every node across the bridge and
    // through each node's firewall: every target up.
    let mon = t.monitor.as_ref().expect("a monitor").listen;
    let mut targets = Value::Null;
    let all_up = wait_until(Duration::from_secs(30), || {
        targets = rampart_testkit::http_get(mon, "/api/targets")
            .ok()
            .and_then(|r| serde_json::from_str(&r.text()).ok())
            .unwrap_or(Value::Null);
        targets["targets"]
            .as_array()
            .is_some_and(|a| a.len() >= 10 && a.iter().all(|t| t["up"] == true))
    });
    assert!(
        all_up,
        "the monitor does not scrape every node: {targets:#}"
    );

    // status: each balancer masters one virtual IP and backs up the other.
    let out = rampart(&[
        "status",
        "--config",
        config.to_str().expect("utf-8"),
        "--json",
    ]);
    let st: Value = serde_json::from_slice(&out.stdout).expect("status json");
    for n in st.as_array().expect("list") {
        assert_eq!(n["healthy"], true, "{n}");
        if n["kind"] == "lb" {
            assert_eq!(n["role"], "master+backup", "{n}");
        }
    }

    // Drills: SIGKILL of the master of the first virtual IP, then a partition of it.
    for drill in [&["kill-lb"][..], &["partition", "lb1", "--for", "3"][..]] {
        let mut args = vec!["chaos"];
        args.extend_from_slice(drill);
        args.extend_from_slice(&[
            "--observe",
            "8",
            "--json",
            "--config",
            config.to_str().expect("utf-8"),
        ]);
        let out = rampart(&args);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{drill:?}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        eprintln!("{drill:?}: {report}");
        assert_eq!(report["writes_lost"], 0, "{report}");
        let gap = report["longest_gap_ms"].as_u64().expect("a probe gap");
        // The goal is 300 ms at the default 50 ms adverts; a loaded CI machine gets slack.
        assert!(
            gap < 2000,
            "{drill:?}: the client lost the site for {gap} ms: {report}"
        );
        // lb1 comes back (up restarts it / the cut heals) before the next drill.
        assert!(wait_until(Duration::from_secs(20), || {
            let out = rampart(&[
                "status",
                "--config",
                config.to_str().expect("utf-8"),
                "--json",
            ]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["kind"] == "lb")
                    .all(|n| n["healthy"] == true && n["role"] == "master+backup")
            })
        }));
    }

    // The primary database's host cut off the network (frames dropped at its device):
    // its agent cannot renew the lease and demotes it, a replica takes over, and a
    // writer connected to every PostgreSQL from its own host sees at no moment two that
    // accept writes; no acknowledged write is lost; after the heal it rejoins.
    let status = || -> Vec<Value> {
        let out = rampart(&[
            "status",
            "--config",
            config.to_str().expect("utf-8"),
            "--json",
        ]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    };
    let primary_of = |st: &[Value]| -> Option<String> {
        let p: Vec<String> = st
            .iter()
            .filter(|n| n["kind"] == "db" && n["role"] == "primary")
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect();
        (p.len() == 1).then(|| p[0].clone())
    };
    let mut old = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            old = primary_of(&status());
            old.is_some()
        }),
        "no single primary: {:#?}",
        status()
    );
    let old = old.expect("a primary");
    let pw = db.superuser_password.clone();
    let dbs: Vec<(String, String, SocketAddr)> = db
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                format!("{prefix}{}", n.name),
                SocketAddr::new(host_ip(&n.name), n.port),
            )
        })
        .collect();
    let mut drill = Command::new(rampart_bin())
        .args(["chaos", "partition", &old, "--for", "10", "--observe", "25"])
        .args(["--json", "--config", config.to_str().expect("utf-8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the drill");
    let t0 = Instant::now();
    let mut old_demoted_at = None;
    let mut new_primary: Option<(String, Duration)> = None;
    let mut rounds = 0;
    while drill.try_wait().expect("drill").is_none() && t0.elapsed() < Duration::from_secs(90) {
        let primaries: Vec<&str> = dbs
            .iter()
            .filter(|(_, ns, addr)| is_primary(ns, *addr, &pw) == Some(true))
            .map(|(n, _, _)| n.as_str())
            .collect();
        rounds += 1;
        assert!(
            primaries.len() <= 1,
            "two writable primaries {:?} into the partition: {primaries:?}",
            t0.elapsed()
        );
        if old_demoted_at.is_none() && !primaries.contains(&old.as_str()) {
            old_demoted_at = Some(t0.elapsed());
        }
        if let Some(n) = primaries.iter().find(|n| **n != old) {
            if new_primary.is_none() {
                new_primary = Some((n.to_string(), t0.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = drill.wait_with_output().expect("the drill's report");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "partition {old}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("partition {old}: {report}");
    let (new, promoted_at) =
        new_primary.unwrap_or_else(|| panic!("no replica took over from {old}: {report}"));
    let demoted_at = old_demoted_at.expect("the old primary never stopped accepting writes");
    eprintln!(
        "partition {old}: it stopped accepting writes {demoted_at:?} after the drill began, {new} began {promoted_at:?} after ({rounds} rounds of checks)"
    );
    assert!(demoted_at <= promoted_at, "two writable primaries");
    assert_eq!(report["writes_lost"], 0, "{report}");
    assert!(
        report["writes_acked"].as_u64().unwrap_or(0) > 50,
        "{report}"
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            let st = status();
            st.iter().any(|n| {
                n["name"] == old.as_str() && n["role"] == "replica" && n["healthy"] == true
            }) && primary_of(&st).is_some()
        }),
        "{old} did not rejoin as a replica: {:#?}",
        status()
    );

    // Ctrl-C: everything goes, the hosts too.
    up.signal(Signal::SIGINT);
    assert_eq!(
        up.wait_exit(Duration::from_secs(60)),
        Ok(Some(0)),
        "up did not stop"
    );
    assert!(
        netns_left(&prefix).is_empty(),
        "namespaces left: {:?}",
        netns_left(&prefix)
    );
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let bridge = hosts["bridge"].as_str().expect("bridge");
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(bridge),
        "bridge {bridge} left"
    );
    let _ = Path::new(&rehearsal);
}
