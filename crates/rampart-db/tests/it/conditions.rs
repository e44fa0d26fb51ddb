//! Bad conditions: etcd unreachable, maintenance pause.

use std::time::{Duration, Instant};

use crate::harness::{connect, Cluster, Opts};

/// Is any node a writable primary (not in recovery)? Returns its index.
pub(crate) async fn any_not_in_recovery(c: &Cluster) -> Option<usize> {
    for (i, n) in c.nodes.iter().enumerate() {
        if let Ok(Some(cl)) =
            tokio::time::timeout(Duration::from_millis(800), connect(n.pg_port)).await
        {
            if let Ok(Ok(rows)) = tokio::time::timeout(
                Duration::from_millis(800),
                cl.query("SELECT pg_is_in_recovery()", &[]),
            )
            .await
            {
                if rows.first().is_some_and(|r| !r.get::<_, bool>(0)) {
                    return Some(i);
                }
            }
        }
    }
    None
}

/// etcd stops answering (SIGSTOP): the primary cannot renew its lease and demotes itself
/// within the TTL; no replica promotes while etcd is unreachable; every agent shows the
/// condition. When etcd is back, a primary is elected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_primary_demotes_and_nobody_promotes() {
    let c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    c.etcd().freeze(0);
    let frozen_at = Instant::now();
    // Default ttl 3 s: the primary must be read-only well before etcd could expire the lease.
    let demoted = loop {
        if any_not_in_recovery(&c).await.is_none() {
            break frozen_at.elapsed();
        }
        assert!(
            frozen_at.elapsed() < Duration::from_secs(4),
            "primary still writable {:?} after etcd froze",
            frozen_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("primary read-only {demoted:?} after etcd froze");
    assert_eq!(c.api(p, "/primary").map(|r| r.0), Some(503));
    // Nobody promotes while etcd is unreachable.
    while frozen_at.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            any_not_in_recovery(&c).await,
            None,
            "a node promoted without etcd"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let v = c.cluster_json(i).expect("/cluster while etcd is down");
        let me = v["members"]
            .as_array()
            .and_then(|m| {
                m.iter()
                    .find(|m| m["name"] == c.nodes[i].name.as_str())
                    .cloned()
            })
            .expect("own member");
        assert!(
            me["state"]
                .as_str()
                .is_some_and(|s| s.contains("etcd unreachable")),
            "{me}"
        );
    }
    assert!(c.agent_log(p).contains("demoting"), "no demotion log line");
    c.etcd().thaw(0);
    let np = c.wait_primary(Duration::from_secs(30));
    eprintln!("after etcd came back: {} is primary", c.nodes[np].name);
    for i in (0..3).filter(|&i| i != np) {
        c.wait_replica(i, Duration::from_secs(60));
    }
}

/// `rampart db pause` stops automatic failover: a killed primary is not replaced until
/// `rampart db resume`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_failover_until_resume() {
    let mut c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    assert!(rampart_testkit::wait_until(Duration::from_secs(20), || c
        .sync_standby(p)
        .is_some()));
    let (ok, out) = c.run_cli(&["pause"]);
    assert!(ok, "{out}");
    assert!(rampart_testkit::wait_until(Duration::from_secs(5), || c
        .cluster_json(p)
        .is_some_and(|v| v["paused"] == true)));
    assert!(c.list().contains("PAUSED"));
    c.kill_node(p);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(7) {
        assert_eq!(any_not_in_recovery(&c).await, None, "promoted while paused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out) = c.run_cli(&["resume"]);
    assert!(ok, "{out}");
    let np = c.wait_primary(Duration::from_secs(20));
    assert_ne!(np, p);
}

/// A replica down while the primary recycles the WAL it would need (small
/// max_slot_wal_keep_size): when it comes back it cannot stream, rewinding does not help,
/// and the agent re-clones it from the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_down_past_retained_wal_is_recloned() {
    let mut c = Cluster::start(Opts {
        synchronous: false,
        extra_db: "parameters = { wal_keep_size = \"0\", max_slot_wal_keep_size = \"32MB\" }"
            .into(),
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    let r = (0..3).find(|&i| i != p).expect("a replica");
    c.kill_node(r);
    let pc = connect(c.nodes[p].pg_port)
        .await
        .expect("connect to primary");
    pc.batch_execute("CREATE TABLE filler (id int, pad text)")
        .await
        .expect("create");
    // Churn WAL until the dead replica's slot has lost its WAL (or the agent already
    // recreated the slot after it was lost).
    let mut rounds = 0i64;
    let mut outrun = false;
    for round in 0..20 {
        pc.batch_execute(&format!(
            "INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g; SELECT pg_switch_wal(); CHECKPOINT; -- {round}"
        ))
        .await
        .expect("generate WAL");
        rounds += 1;
        let slot = pc
            .query(
                "SELECT COALESCE(wal_status, ''), COALESCE(pg_wal_lsn_diff(restart_lsn, '0/0')::int8, -1), pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&c.nodes[r].name],
            )
            .await
            .expect("slots");
        // No row: the primary's agent is dropping and recreating the slot right now (it
        // saw the slot lose its WAL); the next round sees the new one.
        let Some((status, restart, now)) = slot
            .first()
            .map(|row| -> (String, i64, i64) { (row.get(0), row.get(1), row.get(2)) })
        else {
            continue;
        };
        if round >= 4 && (status == "lost" || (restart >= 0 && now - restart < 32 << 20)) {
            eprintln!(
                "slot of {} after {rounds} rounds: {status} restart={restart} now={now}",
                c.nodes[r].name
            );
            outrun = true;
            break;
        }
    }
    assert!(outrun, "the WAL churn did not outrun the slot");
    c.start_agent(r);
    c.wait_replica(r, Duration::from_secs(90));
    assert!(
        crate::harness::wait_rows(
            c.nodes[r].pg_port,
            "SELECT count(*) FROM filler",
            rounds * 20_000,
            Duration::from_secs(30)
        )
        .await,
        "re-cloned replica lacks the rows"
    );
    let log = c.agent_log(r);
    assert!(log.contains("re-cloning"), "no re-clone in the agent log");
}

/// Strict synchronous mode: with its only standby gone the primary refuses to
/// acknowledge writes (they wait); when the standby is back they complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_synchronous_mode_refuses_writes_without_a_standby() {
    let mut c = Cluster::start(Opts {
        nodes: 2,
        extra_db: "synchronous_strict = true".into(),
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let r = 1 - p;
    c.wait_replica(r, Duration::from_secs(60));
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(20), || c.sync_standby(p).is_some()),
        "{}",
        c.list()
    );
    let pc = connect(c.nodes[p].pg_port).await.expect("connect");
    pc.batch_execute("CREATE TABLE s (id int)")
        .await
        .expect("write with a standby");
    c.kill_node(r);
    // Give the primary a few loops to notice; the write must not be acknowledged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let w = tokio::time::timeout(
        Duration::from_secs(3),
        pc.execute("INSERT INTO s VALUES (1)", &[]),
    )
    .await;
    assert!(
        w.is_err(),
        "strict mode acknowledged a write without a synchronous standby: {w:?}"
    );
    // The standby comes back: the waiting write completes.
    c.start_agent(r);
    let pc2 = connect(c.nodes[p].pg_port).await.expect("connect");
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        pc2.execute("INSERT INTO s VALUES (2)", &[]),
    )
    .await;
    assert!(
        matches!(done, Ok(Ok(1))),
        "write not acknowledged after the standby returned: {done:?}\n{}",
        c.list()
    );
}

/// `rampart db failover --to NODE` (forced) promotes the named replica even when it is
/// not the synchronous standby; the old primary steps down and follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_failover_to_a_named_replica() {
    let c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    assert!(rampart_testkit::wait_until(Duration::from_secs(20), || c
        .sync_standby(p)
        .is_some()));
    let sync = c.sync_standby(p).expect("sync standby");
    let target = (0..3)
        .find(|&i| i != p && c.nodes[i].name != sync)
        .expect("a non-sync replica");
    let (ok, out) = c.run_cli(&["failover", "--to", &c.nodes[target].name]);
    assert!(ok, "{out}\n{}", c.list());
    assert_eq!(c.wait_primary(Duration::from_secs(20)), target);
    c.wait_replica(p, Duration::from_secs(60));
    // Asking for an unknown node is refused.
    let (ok, out) = c.run_cli(&["switchover", "--to", "nope"]);
    assert!(!ok && out.contains("no member named"), "{out}");
}

/// The primary's disk fills up: PostgreSQL stops and cannot come back, the agent says so
/// (state "disk full") and gives up the leader key, and the synchronous standby takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_with_a_full_disk_hands_over() {
    let c = Cluster::start(Opts {
        nodes: 2,
        tmpfs_mb: Some(256),
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let r = 1 - p;
    c.wait_replica(r, Duration::from_secs(60));
    assert!(rampart_testkit::wait_until(Duration::from_secs(20), || c
        .sync_standby(p)
        .is_some()));
    let pc = connect(c.nodes[p].pg_port).await.expect("connect");
    pc.batch_execute("CREATE TABLE big (pad text)")
        .await
        .expect("create");
    crate::harness::fill_disk(&c.mounts[p]);
    // Writes now fail (PostgreSQL cannot extend its WAL): keep writing until they do.
    let t = Instant::now();
    let mut failed = false;
    while t.elapsed() < Duration::from_secs(30) {
        let w = tokio::time::timeout(
            Duration::from_secs(5),
            pc.execute(
                "INSERT INTO big SELECT repeat('x', 1000) FROM generate_series(1, 2000)",
                &[],
            ),
        )
        .await;
        if !matches!(w, Ok(Ok(_))) {
            failed = true;
            break;
        }
    }
    assert!(failed, "writes kept succeeding on a full disk");
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(60), || c.primary() == Some(r)),
        "the standby did not take over:\n{}",
        c.list()
    );
    let listed = c.list();
    let line = listed
        .lines()
        .find(|l| l.starts_with(&c.nodes[p].name))
        .unwrap_or("")
        .to_string();
    assert!(
        line.contains("disk full"),
        "old primary not shown as disk full:\n{listed}"
    );
    assert!(
        c.agent_log(p).contains("disk nearly full"),
        "no disk-full log line"
    );
}

/// A member as node `via` shows it in `/cluster`.
pub(crate) fn member(c: &Cluster, via: usize, name: &str) -> Option<serde_json::Value> {
    c.cluster_json(via)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// Asynchronous mode, `max_lag` 1 MB, four nodes: db1 primary; db2 with its replay paused
/// (`pg_wal_replay_pause()`: it still receives every byte but replays none of the last
/// 5 MB); db3 healthy; db4 `nofailover`. Kill db1: db3 is promoted, not db2 (which would
/// win the tie on received WAL by name) nor db4. Kill db3 too: the two left may not
/// promote, so nobody does however long it takes; db3 restarted takes the lead again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_and_nofailover_replicas_are_never_promoted() {
    let mut c = Cluster::start(Opts {
        nodes: 4,
        synchronous: false,
        extra_db: "max_lag = \"1MB\"".into(),
        first_alone: true,
        node_extra: vec![(3, "nofailover = true".into())],
        ..Opts::default()
    });
    for i in 1..4 {
        c.wait_replica(i, Duration::from_secs(90));
    }
    let port = |i: usize| c.nodes[i].pg_port;
    let pc = connect(port(0)).await.expect("connect to db1");
    pc.batch_execute("CREATE TABLE big (id int, pad text)")
        .await
        .expect("create");
    assert!(
        crate::harness::wait_rows(
            port(1),
            "SELECT count(*) FROM pg_class WHERE relname = 'big'",
            1,
            Duration::from_secs(15)
        )
        .await
    );
    let r2 = connect(port(1)).await.expect("connect to db2");
    r2.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay on db2");
    pc.batch_execute("INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        .await
        .expect("write 5 MB of WAL");
    for i in [2, 3] {
        assert!(
            crate::harness::wait_rows(
                port(i),
                "SELECT count(*) FROM big",
                20000,
                Duration::from_secs(30)
            )
            .await,
            "{} did not replay the rows",
            c.nodes[i].name
        );
    }
    // db2 received everything (it streams) but its own view shows it lagging.
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(15), || member(&c, 1, "db2")
            .is_some_and(|m| m["state"]
                .as_str()
                .is_some_and(|s| s.contains("lagging beyond max_lag"))
                && m["streaming"] == true)),
        "db2 not shown as lagging: {:?}\n{}",
        member(&c, 1, "db2"),
        c.list()
    );

    c.kill_node(0);
    let np = c.wait_primary(Duration::from_secs(30));
    assert_eq!(
        np,
        2,
        "db3 (caught up, failover allowed) must be promoted:\n{}",
        c.list()
    );
    for i in [1, 3] {
        let log = c.agent_log(i);
        assert!(
            !log.contains("took the leader key"),
            "{} took the key:\n{log}",
            c.nodes[i].name
        );
    }

    // db4 follows db3; then db3 dies as well. db2 still lags (replay paused) and db4 may
    // not promote: the cluster must stay without a primary, not pick one of them.
    c.wait_replica(3, Duration::from_secs(30));
    c.kill_node(2);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(9) {
        assert_eq!(
            any_not_in_recovery(&c).await,
            None,
            "a lagging or nofailover replica was promoted:\n{}",
            c.list()
        );
        assert_eq!(c.primary(), None, "{}", c.list());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db4 = member(&c, 3, "db4").expect("db4 member");
    assert!(
        db4["action"]
            .as_str()
            .is_some_and(|a| a.contains("nofailover")),
        "{db4}"
    );
    // db2 replayed nothing of timeline 2 (its paused startup process never even asked db3
    // for WAL, so it has not seen timeline 2's history): the timeline rule, checked before
    // the lag rule, excludes it as well.
    assert!(
        member(&c, 1, "db2").is_some_and(|m| m["action"]
            .as_str()
            .is_some_and(|a| a.contains("too far behind") || a.contains("older timeline"))),
        "{:?}",
        member(&c, 1, "db2")
    );

    // An eligible node comes back: it leads again.
    c.start_agent(2);
    assert_eq!(c.wait_primary(Duration::from_secs(60)), 2, "{}", c.list());
}
