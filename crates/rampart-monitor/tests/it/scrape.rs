//! The monitor scrapes real nodes; an alert fires when a node dies and resolves when it
//! returns, and the webhook route receives both; the dashboard answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_testkit::etcd::Etcd;
use rampart_testkit::{free_port, http_get, rampart_bin, wait_until, Proc, TempDir};
use serde_json::Value;

/// A webhook receiver: every POST body, as JSON.
struct Hook {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Value>>>,
}

impl Hook {
    fn start() -> Hook {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind hook");
        let addr = l.local_addr().expect("hook addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut r = BufReader::new(&s);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        g.lock().expect("hook lock").push(v);
                    }
                }
                let _ = (&s).write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Hook { addr, got }
    }

    fn has(&self, status: &str, alert: &str, instance: &str) -> bool {
        self.got.lock().expect("hook lock").iter().any(|v| {
            v["status"] == status
                && v["alerts"][0]["labels"]["alertname"] == alert
                && v["alerts"][0]["labels"]["instance"] == instance
        })
    }
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let r = http_get(addr, path).ok()?;
    (r.status == 200)
        .then(|| serde_json::from_str(&r.text()).ok())
        .flatten()
}

fn alert_state(mon: SocketAddr, name: &str, instance: &str) -> Option<String> {
    let v = get_json(mon, "/api/alerts")?;
    v["alerts"].as_array()?.iter().find_map(|a| {
        (a["name"] == name && a["labels"]["instance"] == instance)
            .then(|| a["state"].as_str().unwrap_or("").to_string())
    })
}

struct Stack {
    dir: TempDir,
    config: std::path::PathBuf,
    web: SocketAddr,
    db_api: SocketAddr,
    mon: SocketAddr,
    // Dropped (killed) before etcd and the folder.
    procs: Vec<Proc>,
    _etcd: Etcd,
}

impl Stack {
    fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(rampart_bin());
        cmd.args(args).arg("--config").arg(&self.config);
        cmd.env("RUST_LOG", "info");
        Proc::spawn(name, cmd, &self.dir.path().join(format!("{name}.log")))
    }

    fn start(hook: SocketAddr) -> Stack {
        let etcd = Etcd::start();
        let dir = tempfile::Builder::new()
            .prefix("rampart-monitor-it-")
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
        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let db_api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mon = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let text = format!(
            r#"[cluster]
name = "monit"
etcd = ["{etcd_url}"]

[etcd]
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
# Dynamic shared memory in the data directory (mmap), not /dev/shm: the stack is killed
# at the end, and a segment no live process has mapped could not be found to be removed.
parameters = {{ dynamic_shared_memory_type = "mmap" }}

[[db.nodes]]
name = "db1"
port = {pg}
api = "{db_api}"

[web]
root = "site"
drain_seconds = 0.2

[[web.node]]
name = "web1"
listen = "{web}"

[monitor]
listen = "{mon}"
scrape_interval = "300ms"
allow = ["127.0.0.0/8"]

[[monitor.alerts]]
name = "hook"
kind = "webhook"
url = "http://{hook}/alerts"

[[monitor.alerts]]
name = "console"
kind = "log"

[[monitor.rules]]
name = "EtcdSlowCommits"
series = "etcd_server_slow_apply_total"
reduce = "rate"
window = "5s"
op = ">"
threshold = 1000
"#,
            etcd_url = etcd.client_url(0),
            etcd_addr = etcd.client_addr(0),
            peer = free_port(),
            data = dir.path().join("data").display(),
            pg = free_port(),
        );
        let config = dir.path().join("topology.toml");
        std::fs::write(&config, text).expect("write topology");
        let mut s = Stack {
            dir,
            config,
            web,
            db_api,
            mon,
            procs: Vec::new(),
            _etcd: etcd,
        };
        s.procs.push(s.spawn("db1", &["db", "--node", "db1"]));
        s.procs.push(s.spawn("web1", &["web", "--node", "web1"]));
        s.procs
            .push(s.spawn("monitor", &["monitor", "--node", "monitor"]));
        s
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("---- {} ----\n{}", p.name, p.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[test]
fn scrapes_real_nodes_alerts_on_a_dead_one_and_resolves_when_it_returns() {
    let hook = Hook::start();
    let mut s = Stack::start(hook.addr);
    let all_up = wait_until(Duration::from_secs(90), || {
        get_json(s.mon, "/api/targets").is_some_and(|v| {
            v["targets"]
                .as_array()
                .is_some_and(|ts| ts.len() == 3 && ts.iter().all(|t| t["up"] == true))
        }) && get_json(s.db_api, "/cluster").is_some_and(|c| c["leader"] == "db1")
    });
    assert!(all_up, "targets never all up\n{}", s.logs());

    // Series from each kind of node, labelled with job and instance.
    let q = |sel: &str| {
        let enc: String = sel
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        get_json(s.mon, &format!("/api/query?series={enc}")).expect("query")["series"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(20), || {
            q("rampart_db_leader").iter().any(|x| {
                x["labels"]["instance"] == "db1"
                    && x["points"]
                        .as_array()
                        .and_then(|p| p.last())
                        .is_some_and(|p| p[1] == 1.0)
            })
        }),
        "db1 never seen as the leader\n{}",
        s.logs()
    );
    let has_leader = q("etcd_server_has_leader");
    assert_eq!(has_leader.len(), 1, "{has_leader:?}");
    assert_eq!(has_leader[0]["labels"]["job"], "etcd");
    for _ in 0..20 {
        let _ = http_get(s.web, "/index.html");
    }
    assert!(wait_until(Duration::from_secs(5), || {
        q("rampart_web_requests_total{kind=\"Static\"}")
            .iter()
            .any(|x| {
                x["points"]
                    .as_array()
                    .and_then(|p| p.last())
                    .is_some_and(|p| p[1].as_f64().unwrap_or(0.0) >= 20.0)
            })
    }));
    for _ in 0..5 {
        let _ = http_get(s.web, "/index.html");
    }
    // The overview shows the last scrape; one scrape of db1 that missed its
    // 240 ms timeout on a loaded CI host shows role null until the next one.
    let db1 = || {
        get_json(s.mon, "/api/overview").and_then(|ov| {
            ov["nodes"]
                .as_array()?
                .iter()
                .find(|n| n["instance"] == "db1")
                .cloned()
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || db1()
            .is_some_and(|n| n["role"] == "primary")),
        "db1 never shown as primary: {:?}",
        db1()
    );
    let web_rate_drawn = |ov: &Value| {
        ov["charts"]["rps"]
            .as_array()
            .expect("rps")
            .iter()
            .any(|c| {
                c["name"] == "web1"
                    && c["points"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|x| x[1].as_f64().unwrap_or(0.0) > 0.0))
            })
    };
    assert!(
        wait_until(Duration::from_secs(5), || get_json(s.mon, "/api/overview")
            .is_some_and(|v| web_rate_drawn(&v))),
        "{}",
        get_json(s.mon, "/api/overview").expect("overview")["charts"]
    );
    let alerts = get_json(s.mon, "/api/alerts").expect("alerts");
    assert!(
        alerts["alerts"]
            .as_array()
            .expect("list")
            .iter()
            .all(|a| a["state"] != "firing"),
        "nothing fires on a healthy stack: {}",
        alerts["alerts"]
    );

    // Kill the web node: NodeDown fires (after `for` = 2 intervals) and reaches the webhook.
    let web_idx = s.procs.iter().position(|p| p.name == "web1").expect("web1");
    s.procs[web_idx].kill();
    assert!(
        wait_until(Duration::from_secs(15), || alert_state(
            s.mon, "NodeDown", "web1"
        )
        .as_deref()
            == Some("firing")),
        "NodeDown never fired: {:?}\n{}",
        get_json(s.mon, "/api/alerts"),
        s.logs()
    );
    assert!(
        wait_until(Duration::from_secs(10), || hook
            .has("firing", "NodeDown", "web1")),
        "webhook got {:?}",
        hook.got.lock().expect("lock")
    );

    // Bring it back: resolved, and the webhook hears it.
    let p = s.spawn("web1", &["web", "--node", "web1"]);
    s.procs[web_idx] = p;
    assert!(
        wait_until(Duration::from_secs(20), || alert_state(
            s.mon, "NodeDown", "web1"
        )
        .as_deref()
            == Some("resolved")),
        "NodeDown never resolved: {:?}\n{}",
        get_json(s.mon, "/api/alerts"),
        s.logs()
    );
    assert!(wait_until(Duration::from_secs(10), || hook
        .has("resolved", "NodeDown", "web1")));
    // The monitor records a delivery once the webhook has answered, a moment after the
    // hook saw the request.
    let notifications = || {
        get_json(s.mon, "/api/alerts").expect("alerts")["notifications"]
            .as_array()
            .expect("n")
            .len()
    };
    assert!(
        wait_until(Duration::from_secs(10), || notifications() >= 4),
        "firing and resolved, each to two routes: {}",
        notifications()
    );
    let log = s
        .procs
        .iter()
        .find(|p| p.name == "monitor")
        .expect("monitor")
        .log_text();
    assert!(
        log.contains("alert firing") && log.contains("NodeDown"),
        "{log}"
    );

    dashboard_smoke(s.mon, s.dir.path());
}

/// The dashboard page, its data, /metrics and /healthz answer; a headless Chromium
/// screenshot when one is installed.
fn dashboard_smoke(mon: SocketAddr, dir: &std::path::Path) {
    let page = http_get(mon, "/").expect("dashboard");
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(
        html.contains("<svg") && html.contains("/api/overview"),
        "{html}"
    );
    let metrics = http_get(mon, "/metrics").expect("metrics").text();
    assert!(
        metrics.contains("rampart_monitor_targets_up 3"),
        "{metrics}"
    );
    assert_eq!(http_get(mon, "/healthz").expect("healthz").status, 200);
    assert_eq!(
        http_get(mon, "/api/query?series=1bad").expect("q").status,
        400
    );
    assert_eq!(http_get(mon, "/nope").expect("404").status, 404);

    let Some(chromium) = crate::cdp::chromium() else {
        eprintln!("no chromium: dashboard screenshot skipped");
        return;
    };
    // The page in real time over DevTools (every call has a deadline): the command line's
    // --virtual-time-budget could hang with a page that keeps polling.
    let out = rampart_testkit::target_dir().join("monitor-dashboard.png");
    let _ = std::fs::remove_file(&out);
    let mut b = crate::cdp::Browser::open(&chromium, &format!("http://{mon}/"), dir, (1400, 1100));
    let drawn = wait_until(Duration::from_secs(20), || {
        b.eval("Number(document.body ? document.body.dataset.diagramUpdates || 0 : 0)")
            .is_ok_and(|v| v.as_u64() >= Some(1))
    });
    assert!(drawn, "the dashboard drew nothing\n{}", b.log_text());
    let png = b.screenshot().expect("screenshot");
    std::fs::write(&out, &png).expect("write screenshot");
    assert!(
        png.len() > 20_000,
        "screenshot {} is {} bytes",
        out.display(),
        png.len()
    );
    eprintln!("dashboard screenshot: {}", out.display());
}
