//! An operator changes PostgreSQL's settings in the topology file: `rampart db reload`
//! (and SIGHUP, and `POST /reload`) applies them without a restart, names the ones that
//! wait for a restart, refuses a broken file and keeps the running settings; `rampart db
//! restart --pending` restarts the replica first and the leader last, which stays the
//! leader.

use std::time::Duration;

use nix::sys::signal::Signal;
use rampart_testkit::http_request;

use crate::harness::{connect, Cluster, Opts};

async fn show(port: u16, setting: &str) -> Option<String> {
    let c = connect(port).await?;
    let row = c.query_one(&format!("SHOW {setting}"), &[]).await.ok()?;
    row.try_get(0).ok()
}

async fn wait_show(port: u16, setting: &str, want: &str, timeout: Duration) -> Option<String> {
    let until = std::time::Instant::now() + timeout;
    loop {
        let v = show(port, setting).await;
        if v.as_deref() == Some(want) || std::time::Instant::now() > until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rewrite the topology's `[db] parameters` line (the harness writes one).
fn set_parameters(c: &Cluster, params: &str) {
    let text = std::fs::read_to_string(&c.config).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("parameters = {") {
            out.push_str(&format!(
                "parameters = {{ dynamic_shared_memory_type = \"mmap\", {params} }}\n"
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains(params), "no parameters line in\n{text}");
    std::fs::write(&c.config, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_reload_without_a_restart_and_a_rolling_restart_keeps_the_leader() {
    let c = Cluster::start(Opts {
        nodes: 2,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let r = 1 - p;
    c.wait_replica(r, Duration::from_secs(60));
    let ports = [c.nodes[0].pg_port, c.nodes[1].pg_port];
    assert_eq!(show(ports[p], "work_mem").await.as_deref(), Some("4MB"));
    let buffers_before = show(ports[p], "shared_buffers").await.unwrap();
    assert_ne!(buffers_before, "24MB");

    // A broken file: refused with where and why, nothing changes, the agent goes on.
    let good = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(&c.config, format!("{good}\n[db\nwork_mem = 1\n")).unwrap();
    let resp = http_request(c.nodes[p].api, "POST", "/reload", &[], b"").unwrap();
    assert_eq!(resp.status, 500, "{}", resp.text());
    let msg = resp.text();
    let file = c.config.display().to_string();
    assert!(msg.contains(&file), "the refusal names the file: {msg}");
    assert!(msg.contains("stays"), "{msg}");
    let (ok, out) = c.run_cli(&["list"]);
    assert!(!ok, "list reads the same broken file: {out}");
    std::fs::write(&c.config, &good).unwrap();
    assert_eq!(show(ports[p], "work_mem").await.as_deref(), Some("4MB"));
    assert_eq!(c.primary(), Some(p));

    // A reloadable setting and one that needs a restart.
    set_parameters(&c, "work_mem = \"8MB\", shared_buffers = \"24MB\"");
    let (ok, out) = c.run_cli(&["reload"]);
    assert!(ok, "{out}");
    for n in &c.nodes {
        assert!(
            out.contains(&format!("{}: [db.parameters] applied", n.name)),
            "{out}"
        );
    }
    assert!(out.contains("pending restart: shared_buffers"), "{out}");
    for &port in &ports {
        assert_eq!(show(port, "work_mem").await.as_deref(), Some("8MB"));
        assert_eq!(
            show(port, "shared_buffers").await.as_deref(),
            Some(buffers_before.as_str())
        );
    }
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(10), || {
            c.list().matches("pending-restart").count() == 2
        }),
        "both members published as pending a restart:\n{}",
        c.list()
    );
    // Patroni's `/cluster` shows it per member.
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(10), || {
            c.cluster_json(p).is_some_and(|v| {
                v["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().all(|m| m["pending_restart"] == true))
            })
        }),
        "{:?}",
        c.cluster_json(p)
    );

    let (_, metrics) = c.api(r, "/metrics").unwrap();
    assert!(
        metrics.contains("rampart_db_pending_restart 1"),
        "{metrics}"
    );

    // SIGHUP re-reads the file too.
    set_parameters(&c, "work_mem = \"16MB\", shared_buffers = \"24MB\"");
    c.signal_agent(r, Signal::SIGHUP);
    assert_eq!(
        wait_show(ports[r], "work_mem", "16MB", Duration::from_secs(10))
            .await
            .as_deref(),
        Some("16MB")
    );

    // The rolling restart: the replica, then the leader, which stays the leader.
    let writes = connect(ports[p]).await.unwrap();
    writes
        .batch_execute("CREATE TABLE op (id int primary key); INSERT INTO op VALUES (1)")
        .await
        .unwrap();
    let (ok, out) = c.run_cli(&["restart", "--pending"]);
    eprintln!("rampart db restart --pending:\n{out}");
    assert!(ok, "{out}");
    let (rn, pn) = (&c.nodes[r].name, &c.nodes[p].name);
    let (ri, pi) = (
        out.find(&format!("{rn}: postgres restarted")),
        out.find(&format!("{pn}: postgres restarted")),
    );
    assert!(
        ri.is_some() && pi.is_some() && ri < pi,
        "replica first: {out}"
    );
    for &port in &ports {
        assert_eq!(show(port, "shared_buffers").await.as_deref(), Some("24MB"));
    }
    // A restart does not re-read the file: only the node that had the SIGHUP has 16MB.
    assert_eq!(show(ports[r], "work_mem").await.as_deref(), Some("16MB"));
    assert_eq!(show(ports[p], "work_mem").await.as_deref(), Some("8MB"));
    assert_eq!(
        c.primary(),
        Some(p),
        "the leader stays the leader:\n{}",
        c.list()
    );
    let after = connect(ports[p]).await.unwrap();
    after
        .batch_execute("INSERT INTO op VALUES (2)")
        .await
        .unwrap();
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(10), || {
            !c.list().contains("pending-restart")
        }),
        "nothing pending after the restart:\n{}",
        c.list()
    );
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(10), || {
            c.api(r, "/metrics")
                .is_some_and(|(_, m)| m.contains("rampart_db_pending_restart 0"))
        }),
        "the gauge goes back to 0"
    );
    // Nothing pending: nothing done.
    let resp = http_request(
        c.nodes[r].api,
        "POST",
        "/restart",
        &[],
        br#"{"restart_pending": true}"#,
    )
    .unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.text().contains("no restart pending"),
        "{}",
        resp.text()
    );
    assert!(c.agent_log(p).contains("configuration reload refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinit_rebuilds_a_replica_from_the_leader_and_refuses_the_leader() {
    let c = Cluster::start(Opts {
        nodes: 2,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let r = 1 - p;
    c.wait_replica(r, Duration::from_secs(60));
    let pc = connect(c.nodes[p].pg_port).await.unwrap();
    pc.batch_execute(
        "CREATE TABLE re (id int primary key); INSERT INTO re SELECT generate_series(1, 500)",
    )
    .await
    .unwrap();
    // A file in the replica's data directory that no copy of the leader has.
    let data = c.dir.path().join("data").join(&c.nodes[r].name);
    let marker = data.join("rampart-it-marker");
    std::fs::write(&marker, "only here").unwrap();

    // The leader is refused, with Patroni's words, and keeps serving.
    let resp = http_request(c.nodes[p].api, "POST", "/reinitialize", &[], b"").unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("I am the leader"), "{}", resp.text());
    let (ok, out) = c.run_cli(&["reinit"]);
    assert!(
        !ok && out.contains("--member"),
        "reinit names its replica: {out}"
    );

    let (ok, out) = c.run_cli(&["reinit", "--member", &c.nodes[r].name, "--wait", "60"]);
    assert!(ok, "{out}\n{}", c.agent_log(r));
    assert!(out.contains("streaming again after"), "{out}");
    assert!(!marker.exists(), "the data directory is a fresh copy");
    assert_eq!(c.primary(), Some(p), "{}", c.list());
    pc.batch_execute("INSERT INTO re VALUES (501)")
        .await
        .unwrap();
    assert!(
        crate::harness::wait_rows(
            c.nodes[r].pg_port,
            "SELECT count(*) FROM re",
            501,
            Duration::from_secs(15)
        )
        .await,
        "the rebuilt replica has every row and follows again: {:?}\n{}\n{}",
        show(c.nodes[r].pg_port, "transaction_read_only").await,
        c.list(),
        std::fs::read_to_string(
            c.dir
                .path()
                .join("data")
                .join(format!("{}.log", c.nodes[r].name))
        )
        .unwrap_or_default()
    );
    assert!(c
        .agent_log(r)
        .contains("reinitialized: a fresh copy of the leader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_when_and_to_whom_the_leadership_moved() {
    let c = Cluster::start(Opts {
        nodes: 2,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let r = 1 - p;
    c.wait_replica(r, Duration::from_secs(60));
    let (ok, out) = c.run_cli(&["history"]);
    assert!(ok && out.contains("first timeline"), "{out}");

    let before = std::time::SystemTime::now();
    let (ok, out) = c.run_cli(&["switchover", "--to", &c.nodes[r].name]);
    assert!(ok, "{out}\n{}", c.list());
    assert_eq!(c.wait_primary(Duration::from_secs(30)), r);
    // The new leader records the switch once it runs on its new timeline.
    let mut shown = String::new();
    let row = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("1 "))
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
    };
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(20), || {
            let (ok, out) = c.run_cli(&["history"]);
            shown = out;
            ok && row(&shown).is_some_and(|cells| cells.last() == Some(&c.nodes[r].name))
        }),
        "the switch from timeline 1 with its new leader:\n{shown}\n{}",
        c.list()
    );
    let cells = row(&shown).unwrap();
    let ts = cells
        .iter()
        .find(|c| c.contains('T') && c.ends_with("+00:00"))
        .unwrap_or_else(|| panic!("a timestamp in {cells:?}"));
    let today = humantime_date(before);
    assert!(ts.starts_with(&today), "{ts} is today ({today})");
    // Patroni's /history shape, also on the former leader once it follows on the new
    // timeline: [tl, lsn, reason, timestamp, new_leader].
    let mut body = String::new();
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(20), || {
            body = c.api(p, "/history").map(|(_, b)| b).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v[0][0] == 1 && v[0][4] == c.nodes[r].name.as_str())
        }),
        "{body}\n{}",
        c.list()
    );
}

/// `YYYY-MM-DD` of a time, UTC (by `date`, to check the agent's own formatting).
fn humantime_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let o = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
