//! Prometheus's reload: the monitor re-reads its topology on SIGHUP and `POST /-/reload`
//! and applies its alert rules without a restart; an alert of a rule that stays keeps its
//! state; a broken file changes nothing and the answer says where.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use rampart_testkit::{free_port, http_get, http_request, rampart_bin, wait_until, Proc};
use serde_json::Value;

fn topology(mon: SocketAddr, web: u16, rules: &str) -> String {
    format!(
        r#"[cluster]
name = "reload"

[web]
root = "site"

[[web.node]]
name = "web1"
listen = "127.0.0.1:{web}"

[monitor]
listen = "{mon}"
scrape_interval = "200ms"
{rules}
"#
    )
}

/// A rule on the down web node's `up` series, pending for an hour once it holds.
fn rule(name: &str, summary: &str) -> String {
    format!(
        "\n[[monitor.rules]]\nname = \"{name}\"\nseries = \"up\"\nop = \"==\"\nthreshold = 0\nfor = \"1h\"\nsummary = \"{summary}\"\n"
    )
}

fn alerts(mon: SocketAddr) -> Value {
    http_get(mon, "/api/alerts")
        .ok()
        .and_then(|r| serde_json::from_str(&r.text()).ok())
        .unwrap_or(Value::Null)
}

fn rule_names(v: &Value) -> Vec<String> {
    v["rules"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The alert of rule `name` on web1: (state, active since).
fn alert(v: &Value, name: &str) -> Option<(String, u64)> {
    v["alerts"].as_array()?.iter().find_map(|a| {
        (a["name"] == name && a["labels"]["instance"] == "web1").then(|| {
            (
                a["state"].as_str().unwrap_or("").to_string(),
                a["active_since_ms"].as_u64().unwrap_or(0),
            )
        })
    })
}

#[test]
fn rules_reload_on_sighup_and_post_keeping_alert_state_and_refusing_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    let mon = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let web = free_port(); // nothing listens: web1 is down, `up` is 0
    let config = dir.path().join("topology.toml");
    std::fs::write(&config, topology(mon, web, &rule("WebGone", "first"))).unwrap();
    let mut cmd = Command::new(rampart_bin());
    cmd.args(["monitor", "--node", "monitor", "--config"])
        .arg(&config);
    let p = Proc::spawn("monitor", cmd, &dir.path().join("monitor.log"));

    assert!(
        wait_until(Duration::from_secs(20), || alert(&alerts(mon), "WebGone")
            .is_some_and(|(s, _)| s == "pending")),
        "WebGone pending: {}\n{}",
        alerts(mon),
        p.log_text()
    );
    let (_, since) = alert(&alerts(mon), "WebGone").unwrap();

    // SIGHUP: WebGone edited, a rule added; WebGone stays pending since the same moment.
    let two = format!(
        "{}{}",
        rule("WebGone", "edited"),
        rule("WebStillGone", "new")
    );
    std::fs::write(&config, topology(mon, web, &two)).unwrap();
    p.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let v = alerts(mon);
            rule_names(&v).contains(&"WebStillGone".to_string())
                && alert(&v, "WebStillGone").is_some()
        }),
        "the new rule applied: {}\n{}",
        alerts(mon),
        p.log_text()
    );
    let v = alerts(mon);
    assert_eq!(alert(&v, "WebGone"), Some(("pending".into(), since)), "{v}");
    let edited = v["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "WebGone" && a["summary"] == "edited");
    assert!(edited, "the edited summary is in use: {v}");
    assert!(p.log_text().contains("configuration reloaded (SIGHUP)"));

    // A broken file: 500 naming the file and line; nothing changes; SIGHUP the same.
    std::fs::write(&config, format!("{two}\n[monitor\n")).unwrap();
    let r = http_request(mon, "POST", "/-/reload", &[], b"").unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains(&format!("{}:", config.display())),
        "names the file: {text}"
    );
    assert!(text.contains("the running rules stay"), "{text}");
    p.signal(Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || p
            .log_text()
            .contains("configuration reload refused (SIGHUP)")),
        "{}",
        p.log_text()
    );
    let v = alerts(mon);
    assert!(rule_names(&v).contains(&"WebStillGone".to_string()), "{v}");
    assert_eq!(alert(&v, "WebGone"), Some(("pending".into(), since)), "{v}");

    // POST /-/reload: WebStillGone removed, its alert with it.
    std::fs::write(&config, topology(mon, web, &rule("WebGone", "edited"))).unwrap();
    let r = http_request(mon, "POST", "/-/reload", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("rules applied"), "{}", r.text());
    let v = alerts(mon);
    assert!(!rule_names(&v).contains(&"WebStillGone".to_string()), "{v}");
    assert_eq!(alert(&v, "WebStillGone"), None, "{v}");
    assert_eq!(alert(&v, "WebGone"), Some(("pending".into(), since)), "{v}");
}
