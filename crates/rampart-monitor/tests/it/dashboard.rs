//! The dashboard draws the seed's diagram, live, in a real browser: a stack of real nodes
//! (etcd, a PostgreSQL primary and its replica under `rampart db`, two `rampart web` with
//! the guestbook, two `rampart lb` sharing the site's address, `rampart monitor`), traffic
//! through the site, headless Chromium on the dashboard. Every node of the topology is a box
//! with its state and the arrows join them; a web server killed turns its box down on the
//! page that is already open (no reload), the balancers' arrows to it too, and an event
//! says so; then the primary is killed and the page shows the failover.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_testkit::etcd::Etcd;
use rampart_testkit::{free_port, http_get, http_request, rampart_bin, wait_until, Proc, TempDir};
use serde_json::Value;

use crate::cdp::{chromium, Browser};

/// Requests through the site until dropped: page reads and guestbook writes.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(site: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let r = if i % 4 == 0 {
                    let body = format!("{{\"author\":\"dash\",\"text\":\"message {i}\"}}");
                    http_request(
                        site,
                        "POST",
                        "/api/messages",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    )
                } else {
                    http_get(site, "/api/messages?limit=5")
                };
                if r.is_ok_and(|r| r.status < 500) {
                    o.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Traffic {
            stop,
            ok,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Stack {
    dir: TempDir,
    config: std::path::PathBuf,
    site: SocketAddr,
    mon: SocketAddr,
    // Dropped (killed) before etcd and the folder.
    procs: Vec<Proc>,
    _etcd: Etcd,
}

impl Stack {
    fn spawn(&mut self, name: &str, args: &[&str]) {
        let mut cmd = Command::new(rampart_bin());
        cmd.args(args).arg("--config").arg(&self.config);
        cmd.env("RUST_LOG", "info");
        let p = Proc::spawn(name, cmd, &self.dir.path().join(format!("{name}.log")));
        self.procs.push(p);
    }

    fn kill(&mut self, name: &str) {
        let p = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        p.kill();
    }

    fn start() -> Stack {
        let etcd = Etcd::start();
        let dir = tempfile::Builder::new()
            .prefix("rampart-dashboard-it-")
            .tempdir()
            .expect("temp dir");
        {
            // PostgreSQL runs as the postgres user: it must reach its data directory.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        std::fs::create_dir_all(dir.path().join("site")).expect("site");
        std::fs::write(dir.path().join("site/index.html"), "hello").expect("index");
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (site, mon) = (port(), port());
        let (db1, db2) = (port(), port());
        let text = format!(
            r#"[cluster]
name = "dash"
etcd = ["{etcd_url}"]

[[etcd.members]]
name = "etcd1"
client = "{etcd_addr}"
peer = "127.0.0.1:{peer}"

[db]
data_dir = "{data}"
synchronous = false
ttl = "3s"
loop_wait = "500ms"
retry_timeout = "1s"
parameters = {{ dynamic_shared_memory_type = "mmap" }}

[[db.nodes]]
name = "db1"
port = {pg1}
api = "{db1}"

[[db.nodes]]
name = "db2"
port = {pg2}
api = "{db2}"

[web]
root = "site"
drain_seconds = 0.2

[web.database]
agents = ["http://{db1}", "http://{db2}"]
user = "postgres"

[[web.node]]
name = "web1"
listen = "{web1}"

[[web.node]]
name = "web2"
listen = "{web2}"

[[lb.nodes]]
name = "lb1"
address = "{lb1}"
admin = "{lb1a}"

[[lb.nodes]]
name = "lb2"
address = "{lb2}"
admin = "{lb2a}"

[[lb.listener]]
name = "site"
address = "{site}"
pool = "web"

[[lb.pool]]
name = "web"
servers = [{{ name = "web1", address = "{web1}" }}, {{ name = "web2", address = "{web2}" }}]
health_check = {{ kind = "http", path = "/readyz", interval = "300ms", timeout = "1s", rise = 2, fall = 2 }}
retries = {{ attempts = 2 }}

[monitor]
listen = "{mon}"
scrape_interval = "400ms"
allow = ["127.0.0.0/8"]
"#,
            etcd_url = etcd.client_url(0),
            etcd_addr = etcd.client_addr(0),
            peer = free_port(),
            data = dir.path().join("data").display(),
            pg1 = free_port(),
            pg2 = free_port(),
            web1 = port(),
            web2 = port(),
            lb1 = port(),
            lb1a = port(),
            lb2 = port(),
            lb2a = port(),
        );
        let config = dir.path().join("topology.toml");
        std::fs::write(&config, text).expect("write topology");
        let mut s = Stack {
            dir,
            config,
            site,
            mon,
            procs: Vec::new(),
            _etcd: etcd,
        };
        s.spawn("db1", &["db", "--node", "db1"]);
        s.spawn("monitor", &["monitor", "--node", "monitor"]);
        for n in ["lb1", "lb2"] {
            s.spawn(n, &["lb", "--node", n]);
        }
        for n in ["web1", "web2"] {
            s.spawn(n, &["web", "--node", n]);
        }
        s
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("---- {} ----\n{}", p.name, p.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn diagram(&self) -> Option<Value> {
        let r = http_get(self.mon, "/api/diagram").ok()?;
        (r.status == 200)
            .then(|| serde_json::from_str(&r.text()).ok())
            .flatten()
    }
}

/// What the page has drawn: its boxes and arrows as the SVG carries them, its update
/// counter and load id, and the events listed beside the diagram.
const READ_PAGE: &str = r##"(document.readyState === "loading" || !document.getElementById("events")) ? "null" : JSON.stringify({
  load: document.body.dataset.loadId || null,
  updates: Number(document.body.dataset.diagramUpdates || 0),
  boxes: Object.fromEntries([...document.querySelectorAll("#diagram g.box")].map(g => [g.dataset.id, g.dataset.state])),
  arrows: [...document.querySelectorAll("#diagram g.arrow")].map(g => ({from: g.dataset.from, to: g.dataset.to, kind: g.dataset.kind, state: g.dataset.state, rate: g.dataset.rate === "" ? null : Number(g.dataset.rate)})),
  events: [...document.querySelectorAll("#events li[data-kind]")].map(li => ({kind: li.dataset.kind, subject: li.dataset.subject, text: li.textContent})),
})"##;

fn read_page(b: &mut Browser) -> Value {
    let text = b.eval(READ_PAGE).expect("read the page");
    serde_json::from_str(text.as_str().unwrap_or("null")).expect("page JSON")
}

fn arrow<'a>(page: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    page["arrows"]
        .as_array()?
        .iter()
        .find(|a| a["from"] == from && a["to"] == to)
}

/// A screenshot into the test's folder, and into `$RAMPART_DASHBOARD_SHOTS/` when set
/// (how docs/dashboard.png is made).
fn save(path: &std::path::Path, png: &[u8]) {
    std::fs::write(path, png).expect("write screenshot");
    if let Some(dir) = std::env::var_os("RAMPART_DASHBOARD_SHOTS") {
        let name = path.file_name().expect("file name");
        std::fs::write(std::path::Path::new(&dir).join(name), png).expect("copy screenshot");
    }
}

fn primary_of(page: &Value) -> Option<&'static str> {
    ["db1", "db2"]
        .into_iter()
        .find(|d| page["boxes"][format!("db:{d}")] == "primary")
}

#[test]
fn the_dashboard_draws_the_stack_live_and_shows_a_dead_web_server_without_a_reload() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: scripts/deps.sh installs it"
        );
        eprintln!("SKIPPED: chromium is not installed (scripts/deps.sh installs it)");
        return;
    };
    let t0 = Instant::now();
    let mut s = Stack::start();
    // db1 first, so it is the primary; then db2 clones it and replicates.
    assert!(
        wait_until(Duration::from_secs(60), || s.diagram().is_some_and(|d| {
            d["boxes"].as_array().is_some_and(|b| {
                b.iter()
                    .any(|b| b["id"] == "db:db1" && b["state"] == "primary")
            })
        })),
        "db1 never primary: {:?}\n{}",
        s.diagram(),
        s.logs()
    );
    s.spawn("db2", &["db", "--node", "db2"]);
    let traffic = Traffic::start(s.site);
    let ready = |d: &Value| {
        let state = |id: &str| {
            d["boxes"]
                .as_array()
                .and_then(|b| b.iter().find(|b| b["id"] == id))
                .map(|b| b["state"].as_str().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let rates = d["arrows"].as_array().is_some_and(|a| {
            a.iter().any(|a| {
                a["from"] == "lb:lb1" && a["to"] == "web:web1" && a["rate"].as_f64() > Some(0.0)
            })
        });
        state("db:db1") == "primary"
            && state("db:db2") == "replica"
            && ["web:web1", "web:web2", "lb:lb1", "lb:lb2", "addr:site"]
                .iter()
                .all(|b| state(b) == "up")
            && state("etcd:etcd1") == "leader"
            && rates
    };
    assert!(
        wait_until(Duration::from_secs(90), || s
            .diagram()
            .is_some_and(|d| ready(&d))),
        "the stack never got all up with traffic: {:#?}\n{}",
        s.diagram(),
        s.logs()
    );
    assert!(traffic.ok.load(Ordering::Relaxed) > 0);
    eprintln!(
        "stack up with traffic after {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // The browser opens the dashboard and draws every node with its state.
    let mut b = Browser::open(
        &chromium,
        &format!("http://{}/", s.mon),
        s.dir.path(),
        (1440, 1500),
    );
    let mut want_arrows = vec![("clients", "addr:site", "request")];
    for lb in ["lb:lb1", "lb:lb2"] {
        want_arrows.push(("addr:site", lb, "vip"));
        for w in ["web:web1", "web:web2"] {
            want_arrows.push((lb, w, "request"));
        }
    }
    for w in ["web:web1", "web:web2"] {
        want_arrows.push((w, "db:db1", "sql"));
    }
    want_arrows.push(("db:db1", "db:db2", "replication"));
    let want_boxes = [
        ("clients", "up"),
        ("addr:site", "up"),
        ("lb:lb1", "up"),
        ("lb:lb2", "up"),
        ("web:web1", "up"),
        ("web:web2", "up"),
        ("db:db1", "primary"),
        ("db:db2", "replica"),
        ("etcd:etcd1", "leader"),
    ];
    let healthy = |page: &Value| {
        want_boxes.iter().all(|(id, st)| page["boxes"][id] == *st)
            && want_arrows.iter().all(|(f, t, k)| {
                arrow(page, f, t).is_some_and(|a| a["kind"] == *k && a["state"] != "down")
            })
    };
    // On a busy machine a health check may miss once: wait for the page to show the
    // stack whole (what the API showed), then check it in detail.
    let mut page = Value::Null;
    let drawn = wait_until(Duration::from_secs(30), || {
        page = read_page(&mut b);
        page["updates"].as_u64() >= Some(2) && healthy(&page)
    });
    let load_id = page["load"].clone();
    assert!(load_id.is_string(), "{page:#}\n{}", b.log_text());
    for (id, want) in want_boxes {
        assert_eq!(page["boxes"][id], want, "{id}: {page:#}");
    }
    assert_eq!(
        page["boxes"].as_object().map(|o| o.len()),
        Some(9),
        "{page:#}"
    );
    for (from, to, kind) in &want_arrows {
        let a =
            arrow(&page, from, to).unwrap_or_else(|| panic!("no arrow {from} -> {to}: {page:#}"));
        assert_eq!(a["kind"], *kind, "{a}");
        assert_ne!(a["state"], "down", "{a}");
    }
    assert!(drawn, "{page:#}");
    assert_eq!(
        page["arrows"].as_array().map(Vec::len),
        Some(want_arrows.len())
    );
    assert_eq!(
        arrow(&page, "db:db1", "db:db2").unwrap()["state"],
        "streaming"
    );
    // Requests flow: the site's arrow carries a rate.
    assert!(
        arrow(&page, "clients", "addr:site").unwrap()["rate"].as_f64() > Some(0.0),
        "{page:#}"
    );

    // Kill web1: the open page turns its box down, and the balancers' arrows to it.
    let before = page["updates"].as_u64().unwrap_or(0);
    let killed = Instant::now();
    s.kill("web1");
    let seen = wait_until(Duration::from_secs(15), || {
        page = read_page(&mut b);
        page["boxes"]["web:web1"] == "down"
            && ["lb:lb1", "lb:lb2"].iter().all(|lb| {
                // Out of rotation: health checks, or outlier detection first.
                arrow(&page, lb, "web:web1")
                    .is_some_and(|a| a["state"] == "down" || a["state"] == "ejected")
            })
            && page["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["kind"] == "down" && e["subject"] == "web1")
            })
    });
    assert!(seen, "web1 never shown down: {page:#}\n{}", s.logs());
    eprintln!(
        "web1 shown down {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(page["load"], load_id, "the page was reloaded");
    assert!(page["updates"].as_u64() > Some(before), "{page:#}");
    assert_eq!(page["boxes"]["web:web2"], "up", "{page:#}");
    assert!(
        page["events"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e["kind"] == "ejected" && e["subject"] == "web1")),
        "the balancers' view of web1 is an event: {page:#}"
    );
    let png = b.screenshot().expect("screenshot");
    let shot = s.dir.path().join("dashboard-web1-down.png");
    save(&shot, &png);
    assert!(
        png.len() > 30_000 && png.starts_with(b"\x89PNG"),
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    let png = b
        .screenshot_of("section")
        .expect("screenshot of the diagram");
    assert!(png.starts_with(b"\x89PNG"), "{} bytes", png.len());
    save(&s.dir.path().join("dashboard.png"), &png);

    // Kill the primary: the page shows db2 promoted and the failover event.
    s.kill("db1");
    let failover = wait_until(Duration::from_secs(30), || {
        page = read_page(&mut b);
        primary_of(&page) == Some("db2")
            && page["boxes"]["db:db1"] == "down"
            && page["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["kind"] == "failover" && e["subject"] == "db2")
            })
    });
    assert!(failover, "no failover shown: {page:#}\n{}", s.logs());
    assert_eq!(page["load"], load_id, "the page was reloaded");
    assert!(
        arrow(&page, "web:web2", "db:db2").is_some_and(|a| a["kind"] == "sql"),
        "{page:#}"
    );
    let png = b.screenshot().expect("screenshot");
    let shot = s.dir.path().join("dashboard-failover.png");
    save(&shot, &png);
    eprintln!(
        "screenshot: {} (whole test {:.1}s)",
        shot.display(),
        t0.elapsed().as_secs_f64()
    );
    drop(b);
}
