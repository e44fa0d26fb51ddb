//! The topology from the db agents' records in a real etcd (the layout rampart db writes).

use std::time::{Duration, Instant};

use rampart_coord::{Coord, CoordOptions};
use rampart_dbroute::{Role, Router, RouterConfig, TopologySource};
use rampart_testkit::etcd::Etcd;
use rampart_testkit::pg::{PgCluster, PgNode};

fn member(name: &str, role: &str, n: &PgNode) -> String {
    serde_json::json!({
        "name": name, "role": role, "state": if role == "primary" { "running" } else { "streaming" },
        "host": "127.0.0.1", "port": n.port, "api_url": "http://127.0.0.1:1",
        "timeline": null, "lsn": null, "lag_bytes": 0, "lag_seconds": 0.0,
        "sync_standby": false, "nofailover": false, "lease_age_seconds": null
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_leader_key_in_etcd() {
    let etcd = Etcd::start();
    let mut pg = PgCluster::start(1);
    let coord = Coord::connect(CoordOptions::new(etcd.client_urls()))
        .await
        .expect("coord");
    let p = "/rampart/main/db";
    coord
        .put(
            &format!("{p}/members/db1"),
            member("db1", "primary", &pg.primary).as_bytes(),
            None,
        )
        .await
        .expect("put");
    coord
        .put(
            &format!("{p}/members/db2"),
            member("db2", "replica", &pg.replicas[0]).as_bytes(),
            None,
        )
        .await
        .expect("put");
    coord
        .put(&format!("{p}/leader"), b"db1", None)
        .await
        .expect("put");
    let mut cfg = RouterConfig::new(TopologySource::Etcd {
        endpoints: etcd.client_urls(),
        cluster: "main".into(),
        agents: vec![],
    });
    // Polling (the fallback) runs once at start and then only every minute: what the
    // router learns after that comes through the watch.
    cfg.poll_interval = Duration::from_secs(60);
    cfg.primary_wait = Duration::from_secs(30);
    let r = Router::start(cfg);
    assert!(
        r.wait_for_primary(Duration::from_secs(10)).await,
        "{:?}",
        r.topology()
    );
    let w = r.write().await.expect("write");
    assert_eq!(w.node(), "db1");
    w.batch_execute("CREATE TABLE t (v int)")
        .await
        .expect("create");
    drop(w);
    // The table must be on the replica before the primary dies: killed first, the replica
    // may never receive it, and the insert after the failover finds no table (seen in CI).
    tokio::task::block_in_place(|| pg.wait_caught_up());
    let rd = r.read(None).await.expect("read");
    assert_eq!((rd.node(), rd.role()), ("db2", Role::Replica));
    drop(rd);

    // Failover as rampart db does it: db1 dies, db2 takes the leader key (its record
    // still says replica: the agent posts the new role one loop after promoting), then
    // promotes. db1's stale record still says primary. Only the leader key's holder gets
    // writes, and within a second of the promotion (the watch, not a poll).
    pg.primary.kill();
    coord
        .put(&format!("{p}/leader"), b"db2", None)
        .await
        .expect("put");
    // Polled, not a fixed pause: with polling once a minute, only the watch can bring it
    // within these 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = r.topology();
        if t.primary().map(|i| t.nodes[i].name.as_str()) == Some("db2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watch did not deliver the new leader key: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writer = tokio::spawn({
        let r = r.clone();
        async move {
            let w = r.write().await;
            (w, Instant::now())
        }
    });
    pg.replicas[0].promote();
    let promoted = Instant::now();
    let (w, wrote) = writer.await.expect("writer task");
    let w = w.expect("write after failover");
    assert_eq!(w.node(), "db2");
    assert!(
        wrote.saturating_duration_since(promoted) < Duration::from_secs(1),
        "the write came {:?} after the promotion",
        wrote.saturating_duration_since(promoted)
    );
    w.batch_execute("INSERT INTO t VALUES (1)")
        .await
        .expect("insert on db2");
    assert_eq!(pg.replicas[0].sql("SELECT count(*) FROM t"), "1");
    let t = r.topology();
    let db1 = t
        .nodes
        .iter()
        .find(|n| n.name == "db1")
        .expect("db1 listed");
    assert_eq!(
        db1.role,
        Role::Unavailable,
        "a primary record without the leader key"
    );
}
