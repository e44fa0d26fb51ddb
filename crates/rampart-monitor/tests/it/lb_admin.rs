//! `rampart monitor --lb-admin NODE=ADDR --lb-admin-token-file NODE=FILE` reads a real
//! `rampart lb`'s admin /metrics, whose every call needs the token (what `rampart up`
//! gives lb nodes the topology gives no admin); without the token the target is down.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use rampart_testkit::{free_port, http_get, rampart_bin, wait_port, wait_until, Proc, TempDir};
use serde_json::Value;

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let r = http_get(addr, path).ok()?;
    (r.status == 200)
        .then(|| serde_json::from_str(&r.text()).ok())
        .flatten()
}

/// The lb1 target as the monitor shows it.
fn lb1(mon: SocketAddr) -> Option<Value> {
    get_json(mon, "/api/targets")?["targets"]
        .as_array()?
        .iter()
        .find(|t| t["instance"] == "lb1")
        .cloned()
}

#[test]
fn the_monitor_scrapes_an_lb_admin_with_its_token() {
    let dir = TempDir::new().expect("temp dir");
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (site, direct, admin, mon, mon2) = (port(), port(), port(), port(), port());
    let topo = dir.path().join("rampart.toml");
    std::fs::write(
        &topo,
        format!(
            r#"[cluster]
name = "lbadmin"

[[lb.nodes]]
name = "lb1"
address = "{direct}"

[[lb.listener]]
name = "site"
address = "{site}"
pool = "web"

[[lb.pool]]
name = "web"
servers = [{{ name = "web1", address = "{web}" }}]
health_check = {{ kind = "tcp", interval = "500ms" }}

[web]
root = "site"

[[web.node]]
name = "web1"
listen = "{web}"

[monitor]
listen = "{mon}"
scrape_interval = "300ms"
"#,
            web = port()
        ),
    )
    .expect("write topology");
    std::fs::create_dir_all(dir.path().join("site")).expect("site");
    let token_file = dir.path().join("lb1.admin-token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").expect("token");
    let wrong_file = dir.path().join("wrong-token");
    std::fs::write(&wrong_file, "not-the-token").expect("token");

    let mut cmd = Command::new(rampart_bin());
    cmd.args(["lb", "--config"])
        .arg(&topo)
        .args(["--node", "lb1", "--admin", &admin.to_string()])
        .arg("--admin-token-file")
        .arg(&token_file);
    let lb = Proc::spawn("lb1", cmd, &dir.path().join("lb1.log"));
    assert!(
        wait_port(admin, Duration::from_secs(10)),
        "{}",
        lb.log_text()
    );
    assert_eq!(
        http_get(admin, "/metrics").expect("metrics").status,
        401,
        "the admin must need the token"
    );

    let monitor = |listen: SocketAddr, token: &std::path::Path, name: &str| {
        let mut cmd = Command::new(rampart_bin());
        cmd.args(["monitor", "--config"])
            .arg(&topo)
            .args(["--listen", &listen.to_string()])
            .args(["--lb-admin", &format!("lb1={admin}")])
            .arg("--lb-admin-token-file")
            .arg(format!("lb1={}", token.display()));
        cmd.env("RUST_LOG", "info");
        Proc::spawn(name, cmd, &dir.path().join(format!("{name}.log")))
    };
    let good = monitor(mon, &token_file, "monitor");
    let bad = monitor(mon2, &wrong_file, "monitor-wrong-token");
    let scraped = wait_until(Duration::from_secs(20), || {
        lb1(mon).is_some_and(|t| t["up"] == true && t["mode"] == "metrics")
    });
    assert!(
        scraped,
        "lb1 not scraped with its token: {:?}\n{}",
        lb1(mon),
        good.log_text()
    );
    let text = http_get(mon, "/api/targets").expect("targets").text();
    assert!(!text.contains("0123456789abcdef"), "token shown: {text}");
    let series = get_json(mon, "/api/query?series=rampart_listener_requests_total").expect("query")
        ["series"]
        .clone();
    assert!(
        series
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x["labels"]["instance"] == "lb1")),
        "{series}"
    );
    // The wrong token: lb1 answers 401, the target is down and says why.
    assert!(
        wait_until(Duration::from_secs(10), || lb1(mon2)
            .is_some_and(
                |t| t["up"] == false && t["error"].to_string().contains("401")
            )),
        "{:?}\n{}",
        lb1(mon2),
        bad.log_text()
    );

    // A token file for a node that has no --lb-admin, or that cannot be read: refused.
    for (arg, why) in [
        (
            "--lb-admin-token-file=lb9=/nonexistent",
            "which has no --lb-admin",
        ),
        ("--lb-admin=lb1", "expected NODE=IP:PORT"),
    ] {
        let out = Command::new(rampart_bin())
            .args(["monitor", "--config"])
            .arg(&topo)
            .arg(arg)
            .output()
            .expect("run monitor");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{arg}: {err}");
    }
    let out = Command::new(rampart_bin())
        .args(["monitor", "--config"])
        .arg(&topo)
        .args(["--lb-admin", "lb7=127.0.0.1:1"])
        .output()
        .expect("run monitor");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an [[lb.nodes]] entry"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop((good, bad, lb));
}

/// `[[lb.nodes]] admin_token_file` (what the separate-hosts rehearsal writes): the monitor
/// reads the admin with that token, no `--lb-admin` needed.
#[test]
fn the_monitor_reads_an_lb_admin_with_the_topologys_token_file() {
    let dir = TempDir::new().expect("temp dir");
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (site, direct, admin, mon) = (port(), port(), port(), port());
    let token_file = dir.path().join("lb1.admin-token");
    std::fs::write(&token_file, "fedcba9876543210fedcba9876543210\n").expect("token");
    std::fs::create_dir_all(dir.path().join("site")).expect("site");
    let topo = dir.path().join("rampart.toml");
    std::fs::write(
        &topo,
        format!(
            r#"[cluster]
name = "lbtoken"

[[lb.nodes]]
name = "lb1"
address = "{direct}"
admin = "{admin}"
admin_token_file = "{token}"

[[lb.listener]]
name = "site"
address = "{site}"
pool = "web"

[[lb.pool]]
name = "web"
servers = [{{ name = "web1", address = "{web}" }}]
health_check = {{ kind = "tcp", interval = "500ms" }}

[web]
root = "site"

[[web.node]]
name = "web1"
listen = "{web}"

[monitor]
listen = "{mon}"
scrape_interval = "300ms"
"#,
            web = port(),
            token = token_file.display(),
        ),
    )
    .expect("write topology");
    let mut cmd = Command::new(rampart_bin());
    cmd.args(["lb", "--config"])
        .arg(&topo)
        .args(["--node", "lb1"]);
    let lb = Proc::spawn("lb1", cmd, &dir.path().join("lb1.log"));
    assert!(
        wait_port(admin, Duration::from_secs(10)),
        "{}",
        lb.log_text()
    );
    assert_eq!(
        http_get(admin, "/metrics").expect("metrics").status,
        401,
        "the admin must need the token"
    );
    let mut cmd = Command::new(rampart_bin());
    cmd.args(["monitor", "--config"])
        .arg(&topo)
        .env("RUST_LOG", "info");
    let monitor = Proc::spawn("monitor", cmd, &dir.path().join("monitor.log"));
    let scraped = wait_until(Duration::from_secs(20), || {
        lb1(mon).is_some_and(|t| t["up"] == true && t["mode"] == "metrics")
    });
    assert!(
        scraped,
        "lb1 not scraped with the topology's token file: {:?}\n{}",
        lb1(mon),
        monitor.log_text()
    );
    let text = http_get(mon, "/api/targets").expect("targets").text();
    assert!(!text.contains("fedcba9876543210"), "token shown: {text}");
    drop((monitor, lb));
}
