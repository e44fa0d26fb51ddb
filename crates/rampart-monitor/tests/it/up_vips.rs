//! The site's virtual IPs on the live diagram: the default topology under `rampart up --hosts
//! netns` (every node on a host of its own, two virtual IPs moved by the balancers' VRRP),
//! the dashboard open in headless Chromium on the operator's side of the bridge. Each
//! address is drawn with the balancer holding it (lb1 the first, lb2 the second); a drill
//! takes lb1's link down: the page shows lb2 holding both, then lb1 taking its own back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::{rampart_bin, wait_until, Proc, TempDir};
use rampart_topology::Topology;
use serde_json::Value;

use crate::cdp::{chromium, Browser};

fn rampart(args: &[&str]) -> std::process::Output {
    Command::new(rampart_bin())
        .args(args)
        .output()
        .expect("run rampart")
}

/// A /24 no route of this machine covers.
fn free_subnet() -> String {
    for i in 0..200u32 {
        let third = (std::process::id() + i * 11) % 200 + 20;
        let net = format!("10.215.{third}.0/24");
        let out = Command::new("ip")
            .args(["-4", "route", "show", "match", &net])
            .output()
            .expect("ip route");
        if !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| !l.starts_with("default") && !l.trim().is_empty())
        {
            return net;
        }
    }
    panic!("no free subnet");
}

/// Whatever happens, the hosts `up` made go (namespaces named after the cluster).
struct Heal(String);

impl Drop for Heal {
    fn drop(&mut self) {
        let out = Command::new("ip").args(["netns", "list"]).output();
        let list = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for ns in list.lines().filter(|l| l.starts_with(&self.0)) {
            let ns = ns.split_whitespace().next().unwrap_or_default();
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

const READ_PAGE: &str = r##"(document.readyState === "loading" || !document.getElementById("events")) ? "null" : JSON.stringify({
  load: document.body.dataset.loadId || null,
  boxes: Object.fromEntries([...document.querySelectorAll("#diagram g.box")].map(g => [g.dataset.id, {state: g.dataset.state, name: g.dataset.name, holder: g.dataset.holder || null}])),
  arrows: [...document.querySelectorAll("#diagram g.arrow")].map(g => ({from: g.dataset.from, to: g.dataset.to, kind: g.dataset.kind, state: g.dataset.state})),
  events: [...document.querySelectorAll("#events li[data-kind]")].map(li => ({seq: Number(li.dataset.seq), kind: li.dataset.kind, subject: li.dataset.subject, text: li.textContent})),
})"##;

fn read_page(b: &mut Browser) -> Value {
    let text = b.eval(READ_PAGE).expect("read the page");
    serde_json::from_str(text.as_str().unwrap_or("null")).expect("page JSON")
}

fn holder(page: &Value, vip: &str) -> Option<String> {
    page["boxes"][format!("vip:{vip}")]["holder"]
        .as_str()
        .map(str::to_string)
}

fn arrow_state(page: &Value, from: &str, to: &str) -> Option<String> {
    page["arrows"]
        .as_array()?
        .iter()
        .find(|a| a["from"] == from && a["to"] == to)
        .and_then(|a| a["state"].as_str())
        .map(str::to_string)
}

fn takeovers(page: &Value, text: &str) -> bool {
    page["events"].as_array().is_some_and(|e| {
        e.iter().any(|e| {
            e["kind"] == "takeover" && e["text"].as_str().is_some_and(|t| t.contains(text))
        })
    })
}

#[test]
fn the_diagram_shows_which_balancer_holds_each_virtual_ip_and_a_takeover() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: scripts/deps.sh installs it"
        );
        eprintln!("SKIPPED: chromium is not installed (scripts/deps.sh installs it)");
        return;
    };
    if let Err(e) = rampart_testkit::netns::available() {
        panic!("{e}: the separate-hosts test needs them");
    }
    let t0 = Instant::now();
    let dir = TempDir::new().expect("tempdir");
    let root = dir.path();
    let cluster = format!("d{}", std::process::id());
    let config = root.join("rampart.toml");
    let cfg = config.to_str().expect("utf-8");
    let out = rampart(&["init", cfg]);
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
    cmd.args([
        "up", "--config", cfg, "--hosts", "netns", "--subnet", &subnet,
    ]);
    let mut up = Proc::spawn("up", cmd, &log);
    let _heal = Heal(format!("rp-{cluster}-"));
    assert!(
        wait_until(Duration::from_secs(180), || up
            .log_text()
            .contains("stack healthy")
            || !up.is_running()),
        "the stack did not come up"
    );
    assert!(up.log_text().contains("stack healthy"), "{}", up.log_text());
    eprintln!("stack healthy after {:.1}s", t0.elapsed().as_secs_f64());
    let t = Topology::load(&root.join("rampart.hosts.toml")).expect("the rehearsal topology");
    let vips = t.lb.as_ref().expect("lb").vips();
    assert_eq!(vips.len(), 2, "two virtual IPs, one per balancer");
    let mon = t.monitor.as_ref().expect("monitor").listen;

    let mut b = Browser::open(&chromium, &format!("http://{mon}/"), root, (1440, 1300));
    let mut page = Value::Null;
    let drawn = wait_until(Duration::from_secs(30), || {
        page = read_page(&mut b);
        holder(&page, "vip1").as_deref() == Some("lb1")
            && holder(&page, "vip2").as_deref() == Some("lb2")
            && page["boxes"]["lb:lb1"]["state"] == "master"
            && page["boxes"]["lb:lb2"]["state"] == "master"
    });
    assert!(drawn, "holders never drawn: {page:#}\n{}", b.log_text());
    assert_eq!(
        page["boxes"]["vip:vip1"]["name"],
        vips[0].to_string(),
        "{page:#}"
    );
    assert_eq!(
        page["boxes"]["vip:vip2"]["name"],
        vips[1].to_string(),
        "{page:#}"
    );
    assert_eq!(
        arrow_state(&page, "vip:vip1", "lb:lb1").as_deref(),
        Some("master")
    );
    assert_eq!(
        arrow_state(&page, "vip:vip1", "lb:lb2").as_deref(),
        Some("backup")
    );
    assert_eq!(
        arrow_state(&page, "vip:vip2", "lb:lb1").as_deref(),
        Some("backup")
    );
    let load = page["load"].clone();
    eprintln!("holders drawn after {:.1}s", t0.elapsed().as_secs_f64());

    // lb1's link goes down for 6 s: lb2 holds both addresses, then lb1 takes its own back.
    let drill = {
        let config = config.clone();
        std::thread::spawn(move || {
            rampart(&[
                "chaos",
                "lb-link-down",
                "lb1",
                "--for",
                "6",
                "--observe",
                "6",
                "--config",
                config.to_str().unwrap_or_default(),
                "--json",
            ])
        })
    };
    let moved = wait_until(Duration::from_secs(20), || {
        page = read_page(&mut b);
        holder(&page, "vip1").as_deref() == Some("lb2")
            && holder(&page, "vip2").as_deref() == Some("lb2")
            && takeovers(&page, &format!("{} moved from lb1 to lb2", vips[0]))
    });
    assert!(moved, "no takeover shown: {page:#}\n{}", up.log_text());
    assert_eq!(page["load"], load, "the page was reloaded");
    let png = b.screenshot().expect("screenshot");
    save(root, "dashboard-vip-takeover.png", &png);
    let png = b
        .screenshot_of("section")
        .expect("screenshot of the diagram");
    save(root, "dashboard-vip-diagram.png", &png);
    let back = wait_until(Duration::from_secs(30), || {
        page = read_page(&mut b);
        holder(&page, "vip1").as_deref() == Some("lb1")
            && takeovers(&page, &format!("{} moved from lb2 to lb1", vips[0]))
    });
    assert!(back, "lb1 never shown back: {page:#}\n{}", up.log_text());
    assert_eq!(page["load"], load, "the page was reloaded");
    // What the drill's client saw is the drill's business (rampart-up's tests check it);
    // here it only moves the address.
    let out = drill.join().expect("drill thread");
    eprintln!(
        "lb-link-down report: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(b);

    up.signal(Signal::SIGINT);
    let code = up.wait_exit(Duration::from_secs(60)).expect("up stops");
    assert_eq!(code, Some(0), "{}", up.log_text());
    eprintln!("whole test {:.1}s", t0.elapsed().as_secs_f64());
}

fn save(dir: &Path, name: &str, png: &[u8]) {
    std::fs::write(dir.join(name), png).expect("write screenshot");
    if let Some(out) = std::env::var_os("RAMPART_DASHBOARD_SHOTS") {
        std::fs::write(Path::new(&out).join(name), png).expect("copy screenshot");
    }
}
