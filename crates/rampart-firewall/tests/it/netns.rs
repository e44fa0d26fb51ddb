//! A web node's firewall, applied by `rampart firewall --apply` inside a network
//! namespace: its port answers the balancer's address and not another address of the
//! same peer; applying twice changes nothing; `--remove` opens it again.

use std::process::{Command, Output};
use std::time::Duration;

use rampart_testkit::{rampart_bin, wait_until, Proc};

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

fn ok(args: &[&str]) {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two namespaces joined by a veth pair; deleted on drop (their processes first).
struct Net {
    server: String,
    client: String,
    procs: Vec<Proc>,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = run(&["ip", "netns", "del", &self.server]);
        let _ = run(&["ip", "netns", "del", &self.client]);
    }
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let n = Net {
            server: format!("rfw-s-{id}"),
            client: format!("rfw-c-{id}"),
            procs: Vec::new(),
        };
        let (vs, vc) = (format!("rfs{id}"), format!("rfc{id}"));
        ok(&["ip", "netns", "add", &n.server]);
        ok(&["ip", "netns", "add", &n.client]);
        ok(&[
            "ip", "link", "add", &vs, "type", "veth", "peer", "name", &vc,
        ]);
        ok(&["ip", "link", "set", &vs, "netns", &n.server]);
        ok(&["ip", "link", "set", &vc, "netns", &n.client]);
        for (ns, dev, addrs) in [
            (&n.server, &vs, vec!["10.77.0.1/24"]),
            (&n.client, &vc, vec!["10.77.0.2/24", "10.77.0.3/24"]),
        ] {
            for a in addrs {
                ok(&["ip", "-n", ns, "addr", "add", a, "dev", dev]);
            }
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        n
    }

    /// curl from the client namespace with this source address: the HTTP status, or
    /// None when no connection was made within 1.5 s.
    fn get_from(&self, src: &str, url: &str) -> Option<u16> {
        let o = run(&[
            "ip",
            "netns",
            "exec",
            &self.client,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--connect-timeout",
            "1.5",
            "--interface",
            src,
            url,
        ]);
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|c| *c != 0)
    }

    fn firewall(&self, config: &std::path::Path, extra: &[&str]) -> Output {
        let bin = rampart_bin();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server])
            .arg(bin)
            .arg("firewall")
            .arg("--config")
            .arg(config)
            .args(extra);
        cmd.output().expect("run rampart firewall")
    }

    fn table(&self) -> String {
        String::from_utf8_lossy(
            &run(&[
                "ip",
                "netns",
                "exec",
                &self.server,
                "nft",
                "list",
                "ruleset",
            ])
            .stdout,
        )
        .into_owned()
    }
}

fn have(tool: &str) -> bool {
    rampart_testkit::find_program(tool, &["/usr/sbin", "/sbin", "/usr/bin"]).is_some()
}

#[test]
fn a_web_node_answers_its_balancer_and_nobody_else() {
    if !nix::unistd::Uid::effective().is_root() || !["ip", "nft", "curl"].iter().all(|t| have(t)) {
        eprintln!("skipped: needs root, ip, nft and curl (network namespaces)");
        return;
    }
    let mut net = Net::new();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("site")).expect("site");
    std::fs::write(dir.path().join("site/index.html"), "hi").expect("index");
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        r#"[cluster]
name = "fw"

[web]
root = "site"

[[web.node]]
name = "web1"
listen = "10.77.0.1:8101"

[[lb.nodes]]
name = "lb1"
address = "10.77.0.2:8091"

[[lb.listener]]
name = "site"
address = "10.77.0.2:8080"
pool = "web"

[[lb.pool]]
name = "web"
servers = [{ name = "web1", address = "10.77.0.1:8101" }]

[firewall]
policy = "drop"
"#,
    )
    .expect("write topology");

    // A real web node in the server namespace.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.server])
        .arg(rampart_bin())
        .args(["web", "--node", "web1", "--config"])
        .arg(&config);
    net.procs
        .push(Proc::spawn("web1", cmd, &dir.path().join("web1.log")));
    let url = "http://10.77.0.1:8101/index.html";
    assert!(
        wait_until(Duration::from_secs(15), || net.get_from("10.77.0.3", url)
            == Some(200)),
        "the web node never answered (before any firewall): {}",
        net.procs[0].log_text()
    );

    let o = net.firewall(&config, &["--node", "web1", "--apply"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        net.get_from("10.77.0.2", url),
        Some(200),
        "the balancer's address is allowed"
    );
    assert_eq!(
        net.get_from("10.77.0.3", url),
        None,
        "another address is dropped"
    );

    // Idempotent: a second apply leaves the same single table.
    let first = net.table();
    let o = net.firewall(&config, &["--node", "web1", "--apply"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(net.table(), first);
    assert_eq!(first.matches("table inet rampart").count(), 1, "{first}");
    assert!(
        first.contains("tcp dport 8101 ip saddr 10.77.0.2 accept"),
        "{first}"
    );

    let o = net.firewall(&config, &["--remove"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!net.table().contains("rampart"));
    assert_eq!(
        net.get_from("10.77.0.3", url),
        Some(200),
        "open again after --remove"
    );
    let o = net.firewall(&config, &["--remove"]);
    assert!(
        o.status.success(),
        "removing twice is fine: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
