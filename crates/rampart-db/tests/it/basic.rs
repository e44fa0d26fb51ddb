//! Bootstrap, replication, health endpoints, metrics and `list`.

use std::time::Duration;

use crate::harness::{connect, wait_rows, Cluster, Opts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_replicate_and_report() {
    let c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
        assert_eq!(
            c.api(i, "/primary").map(|r| r.0),
            Some(503),
            "a replica must not answer /primary"
        );
    }
    assert_eq!(
        c.api(p, "/replica").map(|r| r.0),
        Some(503),
        "the primary is not a replica"
    );
    for i in 0..3 {
        assert_eq!(c.api(i, "/health").map(|r| r.0), Some(200));
    }

    // Writes on the primary are visible on both replicas.
    let pc = connect(c.nodes[p].pg_port)
        .await
        .expect("connect to primary");
    pc.batch_execute("CREATE TABLE t (id int primary key, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g")
        .await
        .expect("write on primary");
    for i in (0..3).filter(|&i| i != p) {
        assert!(
            wait_rows(
                c.nodes[i].pg_port,
                "SELECT count(*) FROM t",
                100,
                Duration::from_secs(15)
            )
            .await,
            "rows not replicated to {}",
            c.nodes[i].name
        );
        let rc = connect(c.nodes[i].pg_port)
            .await
            .expect("connect to replica");
        let err = rc.execute("INSERT INTO t VALUES (1000, 'no')", &[]).await;
        assert!(err.is_err(), "a replica accepted a write");
    }

    // Synchronous mode (the default): one standby gets published as synchronous.
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(20), || c.sync_standby(p).is_some()),
        "no synchronous standby published:\n{}",
        c.list()
    );

    // /cluster follows the contract.
    let v = c.cluster_json(p).expect("/cluster");
    assert_eq!(v["cluster"], "it");
    assert_eq!(v["leader"], c.nodes[p].name.as_str());
    assert_eq!(v["paused"], false);
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{v}");
    for m in members {
        for k in [
            "name",
            "role",
            "state",
            "host",
            "port",
            "api_url",
            "timeline",
            "lsn",
            "lag_bytes",
            "lag_seconds",
            "sync_standby",
            "nofailover",
            "lease_age_seconds",
        ] {
            assert!(m.get(k).is_some(), "member lacks {k}: {m}");
        }
        let role = m["role"].as_str().unwrap_or("");
        if m["name"] == c.nodes[p].name.as_str() {
            assert_eq!(role, "primary");
            assert!(
                m["lease_age_seconds"].as_f64().is_some_and(|a| a < 3.0),
                "{m}"
            );
        } else {
            assert_eq!(role, "replica");
            assert!(m["lease_age_seconds"].is_null());
        }
    }

    // /replica?lag= bounds; a malformed bound is a 400.
    let r = (0..3).find(|&i| i != p).expect("a replica");
    assert_eq!(c.api(r, "/replica?lag=16MB").map(|x| x.0), Some(200));
    assert_eq!(c.api(r, "/replica?lag=30s").map(|x| x.0), Some(200));
    assert_eq!(c.api(r, "/replica?lag=lots").map(|x| x.0), Some(400));

    // Metrics.
    let (s, m) = c.api(p, "/metrics").expect("/metrics");
    assert_eq!(s, 200);
    assert!(m.contains("rampart_db_role{role=\"primary\"} 1"), "{m}");
    assert!(m.contains("rampart_db_leader 1"), "{m}");
    assert!(m.contains("rampart_db_xact_commit_total"), "{m}");
    let (_, m) = c.api(r, "/metrics").expect("/metrics");
    assert!(m.contains("rampart_db_role{role=\"replica\"} 1"), "{m}");

    // Slow statements, each node its own: pg_stat_statements is preloaded, the primary's
    // first scrape created the extension (replicated), the top statements are series.
    for _ in 0..3 {
        pc.batch_execute("SELECT pg_sleep(0.2)")
            .await
            .expect("sleep on the primary");
    }
    let slow = slow_statement(&c, p, "SELECT pg_sleep($1)");
    assert!(slow.0 >= 0.2, "mean {} s", slow.0);
    assert!(
        slow.1 >= 3.0 && slow.2 >= 0.6,
        "calls {} total {} s",
        slow.1,
        slow.2
    );
    // The classic text format (what a scraper asking nothing gets) with the statements in
    // it passes `promtool check metrics` (Debian's prometheus package).
    let (_, m) = c.api(p, "/metrics").expect("/metrics");
    assert!(m.contains("rampart_db_statement_calls_total{"), "{m}");
    promtool_check_metrics(&m);

    assert!(
        wait_rows(
            c.nodes[r].pg_port,
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'",
            1,
            Duration::from_secs(15)
        )
        .await,
        "the extension did not reach the replica"
    );
    let rc = connect(c.nodes[r].pg_port)
        .await
        .expect("connect to replica");
    for _ in 0..2 {
        rc.batch_execute("SELECT pg_sleep(0.25), 1")
            .await
            .expect("sleep on a replica");
    }
    let slow = slow_statement(&c, r, "SELECT pg_sleep($1), $2");
    assert!(slow.0 >= 0.25 && slow.1 == 2.0, "replica: {slow:?}");

    // `rampart db list`.
    let out = c.list();
    for n in &c.nodes {
        assert!(out.contains(&n.name), "{out}");
    }
    assert!(
        out.contains("leader") && out.contains("sync") && out.contains("LAG_BYTES"),
        "{out}"
    );
}

/// (mean s, calls, total s) of the statement with this normalized text in node `i`'s
/// `/metrics`, waited for; also checks every `query` label is short and one line.
fn slow_statement(c: &Cluster, i: usize, text: &str) -> (f64, f64, f64) {
    let label = format!(",query=\"{text}\"}} ");
    let mut last = String::new();
    let found = rampart_testkit::wait_until(Duration::from_secs(15), || {
        last = c.api(i, "/metrics").map(|r| r.1).unwrap_or_default();
        last.contains(&label)
    });
    assert!(
        found,
        "{text} not in /metrics of {}:\n{last}",
        c.nodes[i].name
    );
    let series: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("rampart_db_statement_mean_seconds{"))
        .collect();
    assert!((1..=10).contains(&series.len()), "{series:#?}");
    let line = series
        .iter()
        .find(|l| l.contains(&label))
        .expect("the series");
    let id = line
        .split("queryid=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("queryid");
    let value = |name: &str, sel: &str| -> f64 {
        last.lines()
            .find(|l| l.starts_with(&format!("{name}{sel}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let by_id = format!("{{queryid=\"{id}\"}} ");
    (
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0),
        value("rampart_db_statement_calls_total", &by_id),
        value("rampart_db_statement_total_seconds", &by_id),
    )
}

/// `promtool check metrics` on `text` (lint included), when promtool is installed; on CI
/// it must be.
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Some(promtool) = rampart_testkit::find_program("promtool", &["/usr/bin"]) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing: scripts/deps.sh installs it"
        );
        eprintln!("SKIPPED promtool check metrics: promtool is not installed");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}\n{}\non:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bad topology is refused before anything starts, naming file:line:col.
#[test]
fn bad_config_is_refused_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"x\"\netcd = [\"http://127.0.0.1:1\"]\n\n[db]\nttl = \"2s\"\n\n[[db.nodes]]\nname = \"db1\"\nport = 5999\napi = \"127.0.0.1:1\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(rampart_testkit::rampart_bin())
        .args(["db", "--node", "db1", "--config"])
        .arg(&path)
        .output()
        .expect("run rampart db");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml:6:7"), "{err}");
    assert!(err.contains("loop_wait"), "{err}");
}
