//! The lb as the rest of the stack runs it: nodes from the topology file, servers from
//! etcd, the access log, the stats page in a real browser.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lb_nodes_run_from_the_topology_file_and_share_the_site_address() {
    let dir = TempDir::new().unwrap();
    let topo = dir.path().join("rampart.toml");
    let port = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let (site, direct1, direct2, admin) = (port(), port(), port(), port());
    let web1 = Backend::start("web1").await;
    let (web2, web3) = (port(), port()); // nobody listens there
    std::fs::write(
        &topo,
        format!(
            r#"[cluster]
name = "t"

[[lb.nodes]]
name = "lb1"
address = "{direct1}"
admin = "{admin}"

[[lb.nodes]]
name = "lb2"
address = "{direct2}"

[[lb.listener]]
name = "site"
address = "{site}"
pool = "web"

[[lb.pool]]
name = "web"
algorithm = "least-response-time"
servers = [
  {{ name = "web1", address = "{}" }},
  {{ name = "web2", address = "{web2}" }},
  {{ name = "web3", address = "{web3}" }},
]
health_check = {{ kind = "http", path = "/health", interval = "500ms", timeout = "400ms", rise = 2, fall = 2 }}
"#,
            web1.addr
        ),
    )
    .unwrap();
    let mut procs = Vec::new();
    for n in ["lb1", "lb2"] {
        let mut cmd = Command::new(rampart_bin());
        cmd.args(["lb", "--config"]).arg(&topo).args(["--node", n]);
        procs.push(Proc::spawn(n, cmd, &dir.path().join(format!("{n}.log"))));
    }
    let up = tokio::task::spawn_blocking(move || {
        [site, direct1, direct2, admin]
            .iter()
            .all(|a| wait_port(*a, Duration::from_secs(10)))
    })
    .await
    .unwrap();
    assert!(up, "{}\n{}", procs[0].log_text(), procs[1].log_text());
    // web1 becomes healthy (rise 2, every 500 ms); the others are down.
    let mut ok = false;
    for _ in 0..50 {
        if crate::support::get_once(direct1, "/").await == (200, "web1".to_string()) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "{}", procs[0].log_text());
    for a in [site, direct2] {
        assert_eq!(
            crate::support::get_once(a, "/").await,
            (200, "web1".to_string())
        );
    }
    // Servers start up; the dead ones go down after `fall` failed checks.
    let mut st = Value::Null;
    for _ in 0..60 {
        st = tokio::task::spawn_blocking(move || {
            serde_json::from_str::<Value>(
                &http_request(admin, "GET", "/api/state", &[], b"")
                    .unwrap()
                    .text(),
            )
            .unwrap()
        })
        .await
        .unwrap();
        if server(&st, "web", "web3").unwrap()["health"] == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = st["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["site", "direct"]);
    assert_eq!(st["workers"], 1, "the node's threads");
    assert_eq!(server(&st, "web", "web1").unwrap()["health"], "up");
    assert_eq!(
        server(&st, "web", "web3").unwrap()["health"],
        "down",
        "{st}"
    );
    // An unknown node is refused with the known ones.
    let out = Command::new(rampart_bin())
        .args(["lb", "--config"])
        .arg(&topo)
        .args(["--node", "lb9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no lb node \"lb9\" in [[lb.nodes]]; known: lb1, lb2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(web1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_registered_in_etcd_join_within_2_s_and_leave_with_their_lease() {
    use rampart_coord::{register_service, Coord, CoordOptions, ServiceRecord};
    let etcd = tokio::task::spawn_blocking(rampart_testkit::etcd::Etcd::start)
        .await
        .unwrap();
    let url = etcd.client_url(0);
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let body = format!(
        "[admin]\naddress = \"{{ADMIN}}\"\n[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nservers = []\ndiscovery = {{ etcd = [\"{url}\"], cluster = \"t\", service = \"web\" }}\nhealth_check = {{ kind = \"http\", path = \"/health\", interval = \"200ms\" }}\n"
    );
    let lb = OpsLb::start(&body, &[]).await;
    // Nobody registered: 503.
    assert_eq!(crate::support::get_once(lb.addr, "/").await.0, 503);

    let coord = Coord::connect(CoordOptions::new([url.clone()]))
        .await
        .unwrap();
    let rec = |name: &str, b: &Backend| ServiceRecord {
        name: name.into(),
        address: b.addr.to_string(),
        weight: 1,
    };
    let ttl = Duration::from_secs(2);
    let t = Instant::now();
    let reg_a = register_service(&coord, "t", "web", &rec("a", &a), ttl)
        .await
        .unwrap();
    let mut joined = false;
    while t.elapsed() < Duration::from_secs(2) {
        if crate::support::get_once(lb.addr, "/").await == (200, "a".to_string()) {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(joined, "a did not join within 2 s:\n{}", lb.proc.log_text());
    let joined_in = t.elapsed();

    let reg_b = register_service(&coord, "t", "web", &rec("b", &b), ttl)
        .await
        .unwrap();
    // b is in the pool and takes traffic (polled, not a fixed pause) before the split.
    let (st, joined) = lb
        .state_until(&[], Duration::from_secs(5), |st| {
            server(st, "app", "b").is_some_and(|b| b["eligible"] == true)
        })
        .await;
    assert!(joined, "b did not join: {st}\n{}", lb.proc.log_text());
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    assert_eq!((a.hits() - a0, b.hits() - b0), (5, 5));
    let st = lb.state().await;
    assert_eq!(server(&st, "app", "b").unwrap()["discovered"], true, "{st}");

    // b dies without deregistering: its keepalives stop, the lease ends within the TTL,
    // and b leaves the pool.
    drop(reg_b);
    let t = Instant::now();
    let mut left = false;
    while t.elapsed() < ttl + Duration::from_secs(2) {
        if server(&lb.state().await, "app", "b").is_none() {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left, "b still in the pool:\n{}", lb.proc.log_text());
    let left_in = t.elapsed();
    let b0 = b.hits();
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap(), (200, "a".to_string()));
    }
    assert_eq!(b.hits(), b0);
    // A clean deregistration leaves at once: no server, 503.
    reg_a.deregister().await.unwrap();
    let mut gone = false;
    for _ in 0..40 {
        if crate::support::get_once(lb.addr, "/").await.0 == 503 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "{}", lb.proc.log_text());
    eprintln!(
        "joined in {joined_in:?}, left {left_in:?} after its keepalives stopped (ttl {ttl:?})"
    );
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_line_per_request_in_json_or_logfmt() {
    let a = Backend::start("a").await;
    let body = |fmt: &str| {
        config(
            &servers(&[(&a, 1)]),
            &format!("[access_log]\nformat = \"{fmt}\"\npath = \"access.log\"\n"),
        )
    };
    let lb = OpsLb::start(&body("json"), &[]).await;
    let log = lb.dir.path().join("access.log");
    let mut cl = Client::connect(lb.addr).await.unwrap();
    assert_eq!(cl.get("/x?y=1").await.unwrap().0, 200);
    assert_eq!(cl.get("/fail").await.unwrap().0, 500);
    let lines = |n: usize| {
        let log = log.clone();
        move || std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= n)
    };
    assert!(
        wait_for(lines(2), Duration::from_secs(3)).await,
        "{}",
        lb.proc.log_text()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let v: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 2, "{text}");
    assert_eq!(v[0]["path"], "/x?y=1");
    assert_eq!(v[0]["status"], 200);
    assert_eq!(v[0]["server"], "a");
    assert_eq!(v[0]["pool"], "app");
    assert_eq!(v[0]["listener"], "web");
    assert_eq!(v[0]["bytes"], 1);
    assert_eq!(v[0]["retries"], 0);
    assert!(v[0]["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v[0]["total_ms"].as_f64().unwrap() >= v[0]["upstream_ms"].as_f64().unwrap());
    assert_eq!(v[1]["status"], 500);
    // Switch to logfmt by a reload.
    lb.write(&body("logfmt"));
    let (ok, out) = lb.cli(&["reload", "--admin", "{ADMIN}"]).await;
    assert!(ok, "{out}");
    assert_eq!(cl.get("/z").await.unwrap().0, 200);
    assert!(wait_for(lines(3), Duration::from_secs(3)).await);
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().nth(2).unwrap();
    assert!(
        last.contains(" listener=web pool=app server=a method=GET path=/z status=200 bytes=1 "),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_page_renders_the_servers_in_headless_chromium() {
    let Some(chromium) = rampart_testkit::find_program("chromium", &[]) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing: scripts/deps.sh installs it"
        );
        eprintln!("SKIPPED: chromium is not installed (scripts/deps.sh installs it)");
        return;
    };
    let a = Backend::start("alpha").await;
    let b = Backend::start("bravo").await;
    // (A route of the listener, which the page lists under it.)
    let route = "[[listener.route]]\nhost = \"*.example.com\"\npath_prefix = \"/static/\"\npool = \"app\"\n";
    let cfg = config(&servers(&[(&a, 1), (&b, 1)]), "") + route;
    let lb = OpsLb::start(&cfg, &[]).await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    let url = format!("http://{}/stats", lb.admin);
    let shot = rampart_testkit::target_dir().join("lb-stats.png");
    let _ = std::fs::remove_file(&shot);
    let profile = lb.dir.path().join("chromium-profile");
    let run = move |extra: Vec<String>| {
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1500,500",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra);
        cmd.output().unwrap()
    };
    let (dom, png) = tokio::task::spawn_blocking({
        let url = url.clone();
        let shot = shot.clone();
        move || {
            let dom = run(vec!["--dump-dom".into(), url.clone()]);
            let png = run(vec![format!("--screenshot={}", shot.display()), url]);
            (dom, png)
        }
    })
    .await
    .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    // The script fetched /api/state and rendered one row per listener, pool and server.
    for row in [
        "data-name=\"web\"",
        "data-name=\"app\"",
        "data-name=\"alpha\"",
        "data-name=\"bravo\"",
    ] {
        assert!(
            html.contains(row),
            "no {row} row in the rendered page:\n{html}"
        );
    }
    assert!(html.contains(&a.addr.to_string()), "{html}");
    assert!(
        html.contains("\u{2192} app<br>*.example.com/static/ \u{2192} app"),
        "the listener's pool and route are not shown:\n{html}"
    );
    // No virtual routers: no "Virtual IPs" section.
    assert!(html.contains("<div id=\"vrrp\" hidden"), "{html}");
    assert!(
        html.contains("<div id=\"err\"></div>"),
        "the refresh failed:\n{html}"
    );
    assert!(
        png.status.success(),
        "{}",
        String::from_utf8_lossy(&png.stderr)
    );
    let bytes = std::fs::read(&shot).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        bytes.len() > 10_000,
        "a suspiciously small screenshot: {} bytes",
        bytes.len()
    );
    eprintln!("stats page screenshot: {}", shot.display());
}
