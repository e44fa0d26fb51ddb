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
