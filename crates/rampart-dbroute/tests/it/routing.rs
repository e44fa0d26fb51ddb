use std::time::{Duration, Instant};

use rampart_dbroute::{Role, Router, RouterConfig, TopologySource};
use rampart_testkit::pg::PgCluster;

fn router(pg: &PgCluster) -> Router {
    let mut nodes = vec![pg.primary.host_port()];
    nodes.extend(pg.replicas.iter().map(|r| r.host_port()));
    let mut cfg = RouterConfig::new(TopologySource::Static(nodes));
    cfg.read_wait = Duration::from_millis(300);
    Router::start(cfg)
}

async fn ready(r: &Router, replicas: usize) {
    assert!(
        r.wait_for_primary(Duration::from_secs(10)).await,
        "no primary seen"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.topology().readable_replicas(u64::MAX).len() < replicas {
        assert!(
            Instant::now() < deadline,
            "replicas not seen: {:?}",
            r.topology()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_primary_and_token_reads_see_them() {
    let pg = PgCluster::start(1);
    let r = router(&pg);
    ready(&r, 1).await;
    {
        let w = r.write().await.expect("write conn");
        w.batch_execute("CREATE TABLE t (id bigserial primary key, v text)")
            .await
            .expect("create");
    }
    let mut replica_reads = 0;
    for i in 0..200 {
        let mut w = r.write().await.expect("write conn");
        assert_eq!(w.node(), pg.primary.host_port());
        let tx = w.transaction().await.expect("begin");
        let id: i64 = tx
            .query_one(
                "INSERT INTO t (v) VALUES ($1) RETURNING id",
                &[&format!("v{i}")],
            )
            .await
            .expect("insert")
            .get(0);
        tx.commit().await.expect("commit");
        let token = w.token().await.expect("token");
        drop(w);
        let rd = r.read(Some(token)).await.expect("read conn");
        if rd.role() == Role::Replica {
            replica_reads += 1;
            assert_eq!(rd.node(), pg.replicas[0].host_port());
        }
        let n = rd
            .query("SELECT v FROM t WHERE id = $1", &[&id])
            .await
            .expect("select");
        assert_eq!(
            n.len(),
            1,
            "read on {} ({:?}) missed write {id}",
            rd.node(),
            rd.role()
        );
    }
    // Streaming on loopback keeps up: most token reads are served by the replica.
    assert!(
        replica_reads > 100,
        "only {replica_reads}/200 token reads on the replica"
    );
    // Token-less reads go to the replica.
    for _ in 0..20 {
        let rd = r.read(None).await.expect("read");
        assert_eq!(rd.role(), Role::Replica);
        let in_recovery: bool = rd
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("q")
            .get(0);
        assert!(in_recovery);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_gets_no_token_read_it_cannot_serve() {
    let pg = PgCluster::start(1);
    let r = router(&pg);
    ready(&r, 1).await;
    r.write()
        .await
        .expect("w")
        .batch_execute("CREATE TABLE t (id bigserial primary key)")
        .await
        .expect("create");
    pg.wait_caught_up();
    pg.replicas[0].sql("SELECT pg_wal_replay_pause()");
    for _ in 0..20 {
        let w = r.write().await.expect("w");
        let id: i64 = w
            .query_one("INSERT INTO t DEFAULT VALUES RETURNING id", &[])
            .await
            .expect("insert")
            .get(0);
        let token = w.token().await.expect("token");
        drop(w);
        let started = Instant::now();
        let rd = r.read(Some(token)).await.expect("read");
        assert_eq!(
            rd.role(),
            Role::Primary,
            "a paused replica took a token read"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "did not wait for the replica"
        );
        let n = rd
            .query("SELECT 1 FROM t WHERE id = $1", &[&id])
            .await
            .expect("q");
        assert_eq!(n.len(), 1);
    }
    pg.replicas[0].sql("SELECT pg_wal_replay_resume()");
    let w = r.write().await.expect("w");
    w.batch_execute("INSERT INTO t DEFAULT VALUES")
        .await
        .expect("insert");
    let token = w.token().await.expect("token");
    drop(w);
    let rd = r.read(Some(token)).await.expect("read");
    assert_eq!(
        rd.role(),
        Role::Replica,
        "a resumed replica serves token reads again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_a_promoted_replica_within_a_second() {
    let mut pg = PgCluster::start(1);
    let r = router(&pg);
    ready(&r, 1).await;
    r.write()
        .await
        .expect("w")
        .batch_execute("CREATE TABLE t (id bigserial primary key)")
        .await
        .expect("create");
    pg.wait_caught_up();
    pg.primary.kill();
    let promoted_at = {
        let rep = &pg.replicas[0];
        rep.sql("SELECT pg_promote(true, 30)");
        Instant::now()
    };
    let w = r.write().await.expect("write after failover");
    w.batch_execute("INSERT INTO t DEFAULT VALUES")
        .await
        .expect("insert on new primary");
    let took = promoted_at.elapsed();
    assert_eq!(w.node(), pg.replicas[0].host_port());
    assert!(
        took < Duration::from_secs(1),
        "first write {took:?} after promotion"
    );
    let token = w.token().await.expect("token");
    assert_eq!(
        token.timeline, 2,
        "the promoted node writes on a new timeline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_node_gets_no_write_even_from_a_stale_topology() {
    let mut pg = PgCluster::start(1);
    let mut nodes = vec![pg.primary.host_port()];
    nodes.extend(pg.replicas.iter().map(|r| r.host_port()));
    let mut cfg = RouterConfig::new(TopologySource::Static(nodes));
    // The topology is only looked at again when a checkout asks for it.
    cfg.poll_interval = Duration::from_secs(3600);
    let r = Router::start(cfg);
    ready(&r, 1).await;
    r.write()
        .await
        .expect("w")
        .batch_execute("CREATE TABLE t (v text)")
        .await
        .expect("create");
    pg.wait_caught_up();
    let old = pg.primary.host_port();
    let new = pg.replicas[0].host_port();
    // Failover behind the router's back: the old primary comes back as a standby.
    pg.primary.kill();
    pg.replicas[0].promote();
    let (primary, replicas) = (&mut pg.primary, &pg.replicas);
    primary.rewind_and_follow(&replicas[0]);
    assert_eq!(
        r.topology().nodes[r.topology().primary().expect("stale view")].name,
        old,
        "the router still believes the old primary"
    );
    let w = r.write().await.expect("write after demotion");
    assert_eq!(w.node(), new, "a write went to the demoted node");
    w.batch_execute("INSERT INTO t VALUES ('after')")
        .await
        .expect("insert");
    assert!(
        r.stats()
            .write_checkout_retries
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(pg.replicas[0].sql("SELECT count(*) FROM t"), "1");
}
