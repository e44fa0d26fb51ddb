//! The monitor as Prometheus users expect it, against real Prometheus tools and the
//! default stack under `rampart up`:
//!
//! - `rampart monitor export prometheus` writes a configuration `promtool check config`
//!   accepts and rules `promtool check rules` accepts;
//! - every role's `/metrics` answers the classic text format that `promtool check
//!   metrics` accepts to a scraper asking for it (or asking nothing), and OpenMetrics to
//!   one asking for that;
//! - a real Prometheus with the exported configuration scrapes every node (all targets
//!   up, lb2's admin the one `rampart up` gives it, read with the token file the export
//!   names), evaluates every rule without error, runs every Grafana panel's query, and
//!   every metric the rules and the dashboard read is one the stack exports;
//! - a real Alertmanager receives NodeDown when a web server is killed (and kept down),
//!   although it started only after the monitor's first POSTs failed, gets it again every
//!   `resend` while it fires, and the alert ends when the server is back.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rampart_testkit::{
    find_program, free_port, http_get, http_request, rampart_bin, wait_until, Proc,
};
use serde_json::Value;

use crate::up_drills::{free_port_base, rampart, Leftovers};

/// The Prometheus tools (Debian: prometheus, prometheus-alertmanager), or why not.
fn tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let find = |n: &str| find_program(n, &["/usr/bin"]);
    Some((
        find("promtool")?,
        find("prometheus")?,
        find("prometheus-alertmanager").or_else(|| find("alertmanager"))?,
    ))
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let r = http_get(addr, path).ok()?;
    (r.status == 200)
        .then(|| serde_json::from_str(&r.text()).ok())
        .flatten()
}

/// Runs `promtool args...` with `stdin`, panicking with its output when it fails.
fn promtool(promtool: &Path, args: &[&str], stdin: Option<&str>) {
    let mut c = Command::new(promtool);
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run promtool");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("feed promtool");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every PromQL expression of the Grafana dashboard.
fn dashboard_exprs(d: &Value) -> Vec<String> {
    d["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The expressions of a rules file written by the export (`expr: "..."` lines).
fn rule_exprs(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(|q| serde_json::from_str::<String>(q).expect("a JSON-quoted expr"))
        .collect()
}

/// An instant query to Prometheus' HTTP API.
fn query(prom: SocketAddr, q: &str) -> Value {
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    get_json(prom, &format!("/api/v1/query?query={enc}")).unwrap_or(Value::Null)
}

/// Whether the monitor recorded a notification of NodeDown for web1 to the route "am" with
/// this status and outcome.
fn notified(alerts: &Value, status: &str, ok: bool) -> bool {
    alerts["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| {
            n["route"] == "am"
                && n["alert"] == "NodeDown"
                && n["labels"]["instance"] == "web1"
                && n["status"] == status
                && n["ok"] == ok
        })
}

fn pid_of(data: &Path, node: &str) -> Option<i32> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("up.json")).ok()?).ok()?;
    v["nodes"].as_array()?.iter().find(|n| n["name"] == node)?["pid"]
        .as_i64()
        .map(|p| p as i32)
}

/// Alertmanager's alerts named `name` for `instance` (active ones: resolved alerts are
/// not listed).
fn am_alerts(am: SocketAddr, name: &str, instance: &str) -> Vec<Value> {
    get_json(am, "/api/v2/alerts")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == name && a["labels"]["instance"] == instance)
        .collect()
}

#[test]
fn prometheus_scrapes_the_stack_with_the_export_and_alertmanager_gets_its_alerts() {
    let Some((promtool_bin, prometheus_bin, am_bin)) = tools() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool, prometheus, prometheus-alertmanager are missing: scripts/deps.sh installs them"
        );
        eprintln!(
            "SKIPPED: the Prometheus tools are not installed (scripts/deps.sh installs them)"
        );
        return;
    };
    let t0 = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("rampart-prometheus-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path().to_path_buf();
    // PostgreSQL runs as the postgres user when the tests run as root: it must reach its data.
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let config = root.join("rampart.toml");
    let data = root.join(".rampart/main");
    let cfg = config.to_str().expect("utf-8 path");
    let _leftovers = Leftovers {
        data_dir: data.clone(),
        root: root.clone(),
    };

    // The Alertmanager's address; it starts only once the monitor failed to reach it.
    let am = SocketAddr::from(([127, 0, 0, 1], free_port()));

    let base = free_port_base();
    let out = rampart(&["init", cfg, "--port-base", &base.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // lb2 without an admin: `rampart up` gives it one guarded by a token file, which the
    // export reads from up.json and names in the configuration.
    let text = std::fs::read_to_string(&config).expect("read topology");
    let lb2_admin = format!("admin = \"127.0.0.1:{}\"\n", base + 192);
    assert!(text.contains(&lb2_admin), "{text}");
    let mut text = text.replacen(&lb2_admin, "", 1);
    text.push_str(&format!(
        "\n[[monitor.alerts]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"http://{am}\"\nresend = \"2s\"\n"
    ));
    std::fs::write(&config, text).expect("write topology");

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

    // (a) The export, checked by promtool.
    let export = root.join("prom");
    let out = rampart(&[
        "monitor",
        "export",
        "prometheus",
        "--config",
        cfg,
        "--out",
        export.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules_yml = std::fs::read_to_string(export.join("rules.yml")).expect("rules.yml");
    let prom_yml = std::fs::read_to_string(export.join("prometheus.yml")).expect("prometheus.yml");
    assert!(
        !prom_yml.contains("credentials:"),
        "no secret inline: {prom_yml}"
    );
    let token_file = data.join("lb/lb2.admin-token");
    assert!(
        prom_yml.contains(&format!("credentials_file: \"{}\"", token_file.display())),
        "lb2's token by file: {prom_yml}"
    );
    promtool(
        &promtool_bin,
        &[
            "check",
            "rules",
            export.join("rules.yml").to_str().unwrap_or(""),
        ],
        None,
    );
    promtool(
        &promtool_bin,
        &[
            "check",
            "config",
            export.join("prometheus.yml").to_str().unwrap_or(""),
        ],
        None,
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(export.join("grafana-rampart.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");

    // (b) Every role's /metrics in both formats.
    let roles = [
        ("lb", SocketAddr::from(([127, 0, 0, 1], base + 191))),
        ("web", SocketAddr::from(([127, 0, 0, 1], base + 101))),
        ("db", SocketAddr::from(([127, 0, 0, 1], base + 201))),
        ("monitor", SocketAddr::from(([127, 0, 0, 1], base + 90))),
    ];
    for (role, addr) in roles {
        for accept in [Some("text/plain;version=0.0.4"), None] {
            let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept", *a)).collect();
            let r = http_request(addr, "GET", "/metrics", &headers, b"").expect("GET /metrics");
            assert_eq!(r.status, 200, "{role}");
            assert_eq!(
                r.header("content-type"),
                Some("text/plain; version=0.0.4; charset=utf-8"),
                "{role} {accept:?}"
            );
            let body = r.text();
            assert!(!body.contains("# EOF"), "{role}: {body}");
            promtool(&promtool_bin, &["check", "metrics"], Some(&body));
        }
        let r = http_request(
            addr,
            "GET",
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
            b"",
        )
        .expect("GET /metrics");
        assert_eq!(
            r.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{role}"
        );
        assert!(r.text().ends_with("# EOF\n"), "{role}");
    }
    eprintln!("formats checked after {:.1}s", t0.elapsed().as_secs_f64());

    // (c) A real Prometheus with the exported configuration.
    let prom = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut c = Command::new(&prometheus_bin);
    c.arg(format!(
        "--config.file={}",
        export.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        root.join("prom-data").display()
    ))
    .arg(format!("--web.listen-address={prom}"));
    let prometheus = Proc::spawn("prometheus", c, &root.join("prometheus.log"));
    let mut targets = Value::Null;
    let all_up = wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(250));
        targets = get_json(prom, "/api/v1/targets").unwrap_or(Value::Null);
        let active = targets["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        active.len() == 12 && active.iter().all(|t| t["health"] == "up")
    });
    assert!(
        all_up,
        "not every target is up: {targets:#}\n{}",
        prometheus.log_text()
    );
    let jobs: std::collections::BTreeSet<String> = targets["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["labels"]["job"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        jobs.into_iter().collect::<Vec<_>>(),
        ["db", "etcd", "lb", "monitor", "web"],
        "one job per role"
    );
    eprintln!("all targets up after {:.1}s", t0.elapsed().as_secs_f64());
    // Every rule evaluates without error, and reads metrics the stack exports.
    let mut rules = Value::Null;
    let evaluated = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(250));
        rules = get_json(prom, "/api/v1/rules").unwrap_or(Value::Null);
        let rs: Vec<Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        !rs.is_empty()
            && rs.iter().all(|r| {
                r["health"] == "ok"
                    && r["lastEvaluation"]
                        .as_str()
                        .is_some_and(|t| !t.starts_with("0001"))
            })
    });
    assert!(evaluated, "rules not evaluated cleanly: {rules:#}");
    let mut names = std::collections::BTreeSet::new();
    let mut exported = std::collections::BTreeSet::new();
    let all_names = wait_until(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(250));
        exported = get_json(prom, "/api/v1/label/__name__/values")
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        // What Prometheus makes itself: ALERTS only exists while an alert is active.
        exported.insert("ALERTS".to_string());
        names = rule_exprs(&rules_yml)
            .iter()
            .chain(dashboard_exprs(&dashboard).iter())
            .flat_map(|e| rampart_monitor::prometheus::metric_names(e))
            .collect();
        names.is_subset(&exported)
    });
    assert!(
        all_names,
        "the rules and the dashboard read metrics nobody exports: {:?}",
        names.difference(&exported).collect::<Vec<_>>()
    );
    eprintln!(
        "{} metric names of rules and dashboard all exported",
        names.len()
    );
    // Every panel's query is PromQL Prometheus runs (Grafana's variables filled in), and
    // the targets' labels are the roles' own where they overlap (honor_labels).
    for e in dashboard_exprs(&dashboard) {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$cluster", "main");
        let v = query(prom, &q);
        assert_eq!(v["status"], "success", "{q}: {v}");
    }
    let v = query(
        prom,
        "count(rampart_db_role{role=\"primary\",cluster=\"main\"} == 1)",
    );
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{v}");
    let v = query(
        prom,
        "count(up{role=\"web\",node=~\"web.\",cluster=\"main\"})",
    );
    assert_eq!(v["data"]["result"][0]["value"][1], "3", "{v}");

    // (d) web1 killed and kept down (its port held): NodeDown reaches Alertmanager.
    let web1 = SocketAddr::from(([127, 0, 0, 1], base + 101));
    let pid = pid_of(&data, "web1").expect("web1's pid in up.json");
    let killed = Instant::now();
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let mut hold = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            hold = TcpListener::bind(web1).ok();
            hold.is_some()
        }),
        "web1's port was never free"
    );
    // No Alertmanager yet: the monitor's POSTs fail (retried with backoff, then recorded).
    let mon = SocketAddr::from(([127, 0, 0, 1], base + 90));
    let mut alerts = Value::Null;
    let failed = wait_until(Duration::from_secs(40), || {
        std::thread::sleep(Duration::from_millis(250));
        alerts = get_json(mon, "/api/alerts").unwrap_or(Value::Null);
        notified(&alerts, "firing", false)
    });
    assert!(
        failed,
        "no failed notification to the absent Alertmanager: {alerts:#}"
    );
    eprintln!(
        "delivery failed {:.1}s after the kill; starting Alertmanager",
        killed.elapsed().as_secs_f64()
    );
    // A real Alertmanager, alone (no cluster gossip), alerts going nowhere further.
    std::fs::create_dir_all(root.join("am")).expect("am dir");
    std::fs::write(
        root.join("am/alertmanager.yml"),
        "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
    )
    .expect("write alertmanager.yml");
    let mut c = Command::new(&am_bin);
    c.arg(format!(
        "--config.file={}",
        root.join("am/alertmanager.yml").display()
    ))
    .arg(format!("--storage.path={}", root.join("am/data").display()))
    .arg(format!("--web.listen-address={am}"))
    .arg("--cluster.listen-address=");
    let alertmanager = Proc::spawn("alertmanager", c, &root.join("alertmanager.log"));
    let mut got = Vec::new();
    let fired = wait_until(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        got = am_alerts(am, "NodeDown", "web1");
        !got.is_empty()
    });
    assert!(
        fired,
        "Alertmanager never got NodeDown for web1:\n{}\n{}",
        up.log_text(),
        alertmanager.log_text()
    );
    eprintln!(
        "NodeDown at Alertmanager {:.1}s after the kill: {}",
        killed.elapsed().as_secs_f64(),
        got[0]
    );
    let a = &got[0];
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["cluster"], "main");
    assert_eq!(a["labels"]["job"], "web");
    assert_eq!(a["status"]["state"], "active");
    assert_eq!(a["annotations"]["summary"], "web node web1 does not answer");
    assert_eq!(
        a["generatorURL"],
        format!("http://127.0.0.1:{}/", base + 90)
    );
    assert!(
        a["startsAt"].as_str().is_some_and(|s| s.starts_with("20")),
        "{a}"
    );
    // Sent again while it fires (every `resend`, 2 s here): a later endsAt.
    let first_end = a["endsAt"].clone();
    let mut now_end = Value::Null;
    let resent = wait_until(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(200));
        now_end = am_alerts(am, "NodeDown", "web1")
            .first()
            .map(|a| a["endsAt"].clone())
            .unwrap_or(Value::Null);
        !now_end.is_null() && now_end != first_end
    });
    assert!(
        resent,
        "NodeDown not sent again: endsAt {first_end} then {now_end}"
    );
    // Back: the monitor sends it resolved (endsAt), and Alertmanager lists it no more.
    drop(hold);
    let back = Instant::now();
    let ended = wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        am_alerts(am, "NodeDown", "web1").is_empty()
    });
    assert!(
        ended,
        "NodeDown for web1 never ended at Alertmanager:\n{}",
        up.log_text()
    );
    let alerts = get_json(mon, "/api/alerts").unwrap_or(Value::Null);
    assert!(
        notified(&alerts, "resolved", true),
        "the end came without the monitor's resolved notice: {alerts:#}"
    );
    eprintln!(
        "resolved at Alertmanager {:.1}s after the port was freed",
        back.elapsed().as_secs_f64()
    );

    drop(prometheus);
    drop(alertmanager);
    up.signal(Signal::SIGINT);
    let code = up.wait_exit(Duration::from_secs(60)).expect("up stops");
    assert_eq!(code, Some(0), "{}", up.log_text());
    eprintln!("whole test {:.1}s", t0.elapsed().as_secs_f64());
}
