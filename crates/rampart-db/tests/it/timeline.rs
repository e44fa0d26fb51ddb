//! The timeline rule: a replica on an older timeline than the cluster's never promotes,
//! and one that follows the current timeline is never held back by a stale checkpoint.

use std::time::{Duration, Instant};

use crate::conditions::{any_not_in_recovery, member};
use crate::harness::{connect, wait_rows, Cluster, Opts};

/// The timeline node `i` publishes for itself.
fn tl(c: &Cluster, i: usize) -> Option<u64> {
    member(c, i, &c.nodes[i].name).and_then(|m| m["timeline"].as_u64())
}

async fn query_i64(port: u16, sql: &str) -> Option<i64> {
    let c = connect(port).await?;
    let rows = c.query(sql, &[]).await.ok()?;
    rows.first()?.try_get::<_, i64>(0).ok()
}

/// Asynchronous mode, four nodes, db1 the first primary. db3 is stopped while the cluster
/// is on timeline 1. db1 is killed: db2 or db4 (X) is promoted onto timeline 2 and the
/// other (Y) follows it by streaming — its last checkpoint still says timeline 1 (no
/// restartpoint for minutes). X is killed: Y must be promoted (a guard reading
/// `pg_control_checkpoint()` would block it). Y is killed too and db3 comes back alone on
/// timeline 1: without the rule it would promote (the only candidate, no lag reference
/// since its agent never saw a leader); with it, it never does and says why. Y restarted:
/// one of the two leads, the other follows, and no row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_on_an_older_timeline_is_never_promoted() {
    let mut c = Cluster::start(Opts {
        nodes: 4,
        synchronous: false,
        first_alone: true,
        ..Opts::default()
    });
    for i in 1..4 {
        c.wait_replica(i, Duration::from_secs(90));
    }
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.pg_port).collect();
    let port = |i: usize| ports[i];
    let p1 = connect(port(0)).await.expect("connect to db1");
    p1.batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
        .await
        .expect("write on db1");
    for i in 1..4 {
        assert!(
            wait_rows(
                port(i),
                "SELECT count(*) FROM t",
                100,
                Duration::from_secs(20)
            )
            .await,
            "{} did not replay the rows",
            c.nodes[i].name
        );
    }
    drop(p1);

    // db3 stays behind on timeline 1.
    c.kill_node(2);
    c.kill_node(0);
    let x = c.wait_primary(Duration::from_secs(30));
    assert!(x == 1 || x == 3, "{}", c.list());
    let y = if x == 1 { 3 } else { 1 };
    c.wait_replica(y, Duration::from_secs(60));
    let px = connect(port(x)).await.expect("connect to X");
    px.batch_execute("INSERT INTO t SELECT generate_series(101, 200)")
        .await
        .expect("write on X");
    drop(px);
    assert!(
        wait_rows(
            port(y),
            "SELECT count(*) FROM t",
            200,
            Duration::from_secs(20)
        )
        .await,
        "Y did not replay X's rows"
    );
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(15), || tl(&c, y) == Some(2)),
        "Y not shown on timeline 2:\n{}",
        c.list()
    );
    // The trap: Y's last checkpoint still names timeline 1.
    let cp = query_i64(
        port(y),
        "SELECT timeline_id::int8 FROM pg_control_checkpoint()",
    )
    .await;
    assert_eq!(
        cp,
        Some(1),
        "Y's checkpoint already moved to the new timeline: the test would not show the lag"
    );

    c.kill_node(x);
    let np = c.wait_primary(Duration::from_secs(30));
    assert_eq!(
        np,
        y,
        "the replica on the cluster's timeline must be promoted:\n{}",
        c.list()
    );
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(15), || tl(&c, y) == Some(3)),
        "new primary not on timeline 3:\n{}",
        c.list()
    );
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(15), || c.list().contains("timeline: 3")),
        "/timeline not recorded:\n{}",
        c.list()
    );
    let py = connect(port(y)).await.expect("connect to Y");
    py.batch_execute("INSERT INTO t SELECT generate_series(201, 300)")
        .await
        .expect("write on Y");
    drop(py);

    // Y dies too; db3 comes back alone, on timeline 1.
    c.kill_node(y);
    c.start_agent(2);
    let shown = rampart_testkit::wait_until(Duration::from_secs(60), || {
        member(&c, 2, "db3").is_some_and(|m| {
            m["role"] == "replica"
                && m["timeline"] == 1
                && m["state"]
                    .as_str()
                    .is_some_and(|s| s.contains("behind the cluster timeline"))
                && m["action"]
                    .as_str()
                    .is_some_and(|a| a.contains("older timeline"))
        })
    });
    assert!(
        shown,
        "db3 not shown behind the timeline: {:?}\n{}",
        member(&c, 2, "db3"),
        c.list()
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            any_not_in_recovery(&c).await,
            None,
            "the replica on timeline 1 was promoted:\n{}",
            c.list()
        );
        assert_eq!(c.primary(), None, "{}", c.list());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = c.list();
    assert!(list.contains("behind the cluster timeline"), "{list}");
    let log = c.agent_log(2);
    assert!(!log.contains("took the leader key"), "{log}");
    assert!(log.contains("will not be promoted"), "{log}");

    // Y comes back. db3, still configured to follow Y, streams from Y's PostgreSQL as soon
    // as it is up, learns the newer timelines and receives Y's WAL: whichever of the two
    // then leads (Y, or db3 once it has everything Y has - a tie goes to the smaller
    // name), the other follows it and nothing written on timeline 3 is lost.
    c.start_agent(y);
    let leader = c.wait_primary(Duration::from_secs(60));
    assert!(leader == y || leader == 2, "{}", c.list());
    let other = if leader == y { 2 } else { y };
    c.wait_replica(other, Duration::from_secs(90));
    for i in [leader, other] {
        assert!(
            wait_rows(
                port(i),
                "SELECT count(*) FROM t",
                300,
                Duration::from_secs(30)
            )
            .await,
            "{} lacks rows of the newest timeline (leader {}):\n{}",
            c.nodes[i].name,
            c.nodes[leader].name,
            c.list()
        );
    }
}
