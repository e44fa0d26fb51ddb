//! The default topology under `rampart up`, its dashboard open in headless Chromium: the
//! page draws every node of the real stack (two site listeners, two balancers, three web
//! servers, a primary and two replicas, three etcd members) and each `rampart chaos` drill
//! (kill-web, kill-lb, kill-primary) shows on the open page as it happens, although `up`
//! restarts what dies within a second.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::{kill_all, rampart_bin, wait_until, Proc};
use serde_json::Value;

use crate::cdp::{chromium, Browser};

/// Offsets of the default topology's ports from its base (see rampart init --help).
const OFFSETS: [u16; 22] = [
    80, 81, 90, 91, 92, 101, 102, 103, 191, 192, 201, 202, 203, 301, 302, 303, 401, 402, 403, 404,
    405, 406,
];

/// A block of ports for the stack, never one another test of this binary was given.
pub(crate) fn free_port_base() -> u16 {
    rampart_testkit::port_block(&OFFSETS)
}

/// Kills whatever the stack left if the test fails half-way: the process groups `up`
/// recorded, then any process whose command line names the test's folder (through the
/// testkit, which removes the shared memory of a postmaster killed so).
pub(crate) struct Leftovers {
    pub(crate) data_dir: PathBuf,
    pub(crate) root: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let pids: Vec<i32> = std::fs::read_to_string(self.data_dir.join("up.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| {
                v["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n["pid"].as_i64().map(|p| p as i32))
                    .collect()
            })
            .unwrap_or_default();
        kill_all(&pids, &[]);
        let needle = self.root.display().to_string();
        let mut left = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
                if String::from_utf8_lossy(&raw).contains(&needle) {
                    left.push(pid);
                }
            }
        }
        kill_all(&[], &left);
    }
}

pub(crate) fn rampart(args: &[&str]) -> std::process::Output {
    Command::new(rampart_bin())
        .args(args)
        .output()
        .expect("run rampart")
}

fn drill(config: &Path, args: &[&str]) -> Value {
    let mut a = vec!["chaos"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--config", config.to_str().expect("utf-8 path"), "--json"]);
    let out = rampart(&a);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "chaos {args:?} printed no report: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

const READ_PAGE: &str = r##"(document.readyState === "loading" || !document.getElementById("events")) ? "null" : JSON.stringify({
  load: document.body.dataset.loadId || null,
  updates: Number(document.body.dataset.diagramUpdates || 0),
  boxes: Object.fromEntries([...document.querySelectorAll("#diagram g.box")].map(g => [g.dataset.id, g.dataset.state])),
  arrows: [...document.querySelectorAll("#diagram g.arrow")].map(g => ({from: g.dataset.from, to: g.dataset.to, kind: g.dataset.kind, state: g.dataset.state})),
  events: [...document.querySelectorAll("#events li[data-kind]")].map(li => ({seq: Number(li.dataset.seq), kind: li.dataset.kind, subject: li.dataset.subject, text: li.textContent})),
})"##;

fn read_page(b: &mut Browser) -> Value {
    let text = b.eval(READ_PAGE).expect("read the page");
    serde_json::from_str(text.as_str().unwrap_or("null")).expect("page JSON")
}

fn max_seq(page: &Value) -> u64 {
    page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Events newer than `after` about `subject`, of one of `kinds`.
fn new_events<'a>(page: &'a Value, after: u64, subject: &str, kinds: &[&str]) -> Vec<&'a Value> {
    page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["seq"].as_u64() > Some(after)
                && e["subject"] == subject
                && kinds.iter().any(|k| e["kind"] == *k)
        })
        .collect()
}

fn count(page: &Value, tier: &str, state: &str) -> usize {
    page["boxes"].as_object().map_or(0, |o| {
        o.iter()
            .filter(|(id, s)| id.starts_with(&format!("{tier}:")) && *s == state)
            .count()
    })
}

#[test]
fn the_default_stack_is_drawn_and_each_drill_shows_on_the_open_page() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: scripts/deps.sh installs it"
        );
        eprintln!("SKIPPED: chromium is not installed (scripts/deps.sh installs it)");
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("rampart-dashboard-up-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path().to_path_buf();
    // PostgreSQL runs as the postgres user when the tests run as root: it must reach its data.
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let config = root.join("rampart.toml");
    let data = root.join(".rampart/main");
    let base = free_port_base();
    let cfg = config.to_str().expect("utf-8 path");
    let out = rampart(&["init", cfg, "--port-base", &base.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Dynamic shared memory in the data dirs: the drills SIGKILL a postmaster, whose posix
    // segments would stay in /dev/shm. lb2 without an admin: up gives it one with a token.
    let text = std::fs::read_to_string(&config).expect("read topology");
    let lb2_admin = format!("admin = \"127.0.0.1:{}\"\n", base + 192);
    assert!(
        text.contains("\n[db]\n") && text.contains(&lb2_admin),
        "{text}"
    );
    std::fs::write(
        &config,
        text.replacen(
            "\n[db]\n",
            "\n[db]\nparameters = { dynamic_shared_memory_type = \"mmap\" }\n",
            1,
        )
        .replacen(&lb2_admin, "", 1),
    )
    .expect("write topology");
    let _leftovers = Leftovers {
        data_dir: data.clone(),
        root: root.clone(),
    };
    let mut cmd = Command::new(rampart_bin());
    cmd.args(["up", "--config", cfg]);
    let mut up = Proc::spawn("rampart up", cmd, &root.join("up.log"));
    assert!(
        wait_until(Duration::from_secs(150), || up
            .log_text()
            .contains("stack healthy in")),
        "the stack did not become healthy:\n{}",
        up.log_text()
    );
    eprintln!("stack healthy after {:.1}s", t0.elapsed().as_secs_f64());

    let mon = SocketAddr::from(([127, 0, 0, 1], base + 90));
    let mut b = Browser::open(&chromium, &format!("http://{mon}/"), &root, (1440, 1300));
    let mut page = Value::Null;
    let all_drawn = wait_until(Duration::from_secs(30), || {
        page = read_page(&mut b);
        count(&page, "db", "primary") == 1
            && count(&page, "db", "replica") == 2
            && count(&page, "web", "up") == 3
            && count(&page, "lb", "up") == 2
            && count(&page, "addr", "up") == 2
            && count(&page, "etcd", "leader") == 1
            && count(&page, "etcd", "follower") == 2
            && page["arrows"]
                .as_array()
                .is_some_and(|a| a.iter().all(|a| a["state"] != "down"))
    });
    assert!(
        all_drawn,
        "the page never drew the whole stack up: {page:#}\n{}",
        b.log_text()
    );
    assert_eq!(
        page["boxes"].as_object().map(|o| o.len()),
        Some(14),
        "{page:#}"
    );
    // clients -> 2 addresses -> 2 balancers each -> 3 web servers each -> the primary -> 2 replicas.
    let arrows = page["arrows"].as_array().cloned().unwrap_or_default();
    let n = |kind: &str| arrows.iter().filter(|a| a["kind"] == kind).count();
    assert_eq!(
        (n("request"), n("vip"), n("sql"), n("replication")),
        (2 + 6, 4, 3, 2),
        "{page:#}"
    );
    assert!(arrows.iter().all(|a| a["state"] != "down"), "{page:#}");
    let load = page["load"].clone();
    eprintln!("stack drawn after {:.1}s", t0.elapsed().as_secs_f64());

    // Each drill shows on the page that is open.
    let primary = page["boxes"]
        .as_object()
        .and_then(|o| o.iter().find(|(_, s)| *s == "primary"))
        .map(|(id, _)| id.trim_start_matches("db:").to_string())
        .expect("a primary");
    for (args, subject, kinds) in [
        (
            vec!["kill-web", "web1", "--observe", "3"],
            "web1".to_string(),
            &["down", "restart", "ejected"][..],
        ),
        (
            vec!["kill-lb", "lb1", "--observe", "3"],
            "lb1".to_string(),
            &["down", "restart"][..],
        ),
        (
            vec!["kill-primary", "--observe", "6"],
            primary.clone(),
            &["down", "restart", "failover", "state"][..],
        ),
    ] {
        let after = max_seq(&read_page(&mut b));
        let started = Instant::now();
        // What the drill's client saw is rampart-up's tests' business; here the drill
        // only has to happen.
        let r = drill(&config, &args);
        eprintln!("{} report: {r}", args[0]);
        let seen = wait_until(Duration::from_secs(15), || {
            page = read_page(&mut b);
            !new_events(&page, after, &subject, kinds).is_empty()
                || (args[0] == "kill-primary"
                    && page["events"].as_array().is_some_and(|e| {
                        e.iter()
                            .any(|e| e["seq"].as_u64() > Some(after) && e["kind"] == "failover")
                    }))
        });
        assert!(seen, "{args:?} not shown: {page:#}\n{}", up.log_text());
        assert_eq!(page["load"], load, "the page was reloaded");
        let shown: Vec<String> = page["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["seq"].as_u64() > Some(after))
            .map(|e| e["text"].as_str().unwrap_or("").to_string())
            .collect();
        eprintln!(
            "{} shown within {:.1}s of its start: {shown:?}",
            args[0],
            started.elapsed().as_secs_f64()
        );
    }
    let png = b.screenshot().expect("screenshot");
    std::fs::write(root.join("dashboard-after-drills.png"), &png).expect("write screenshot");
    drop(b);

    up.signal(Signal::SIGINT);
    let code = up.wait_exit(Duration::from_secs(60)).expect("up stops");
    assert_eq!(code, Some(0), "{}", up.log_text());
    eprintln!("whole test {:.1}s", t0.elapsed().as_secs_f64());
}
