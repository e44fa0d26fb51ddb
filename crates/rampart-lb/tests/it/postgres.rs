//! TCP mode in front of a real PostgreSQL primary and streaming replica.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rampart_testkit::pg::PgCluster;

use crate::support::{wait_for, Lb};

/// A session through the balancer; its connection task runs until the client is dropped.
async fn connect(lb: SocketAddr) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(lb.port())
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(3));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn in_recovery(c: &tokio_postgres::Client) -> bool {
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_balances_real_postgresql_and_skips_a_killed_node() {
    let mut pg = tokio::task::spawn_blocking(|| PgCluster::start(1))
        .await
        .unwrap();
    let cfg = format!(
        r#"
[[listener]]
name = "pg"
address = "{{LISTEN}}"
mode = "tcp"
pool = "pg"

[[pool]]
name = "pg"
algorithm = "round-robin"
servers = [{{ name = "primary", address = "{}" }}, {{ name = "replica", address = "{}" }}]
health_check = {{ kind = "tcp", interval = "200ms", timeout = "200ms", rise = 1, fall = 1, jitter = "0ms" }}
"#,
        pg.primary.addr(),
        pg.replicas[0].addr()
    );
    // One worker: the balancer sees the sessions in the order they are made.
    let lb = Lb::start_threads(&cfg, 1).await;

    // Round robin over the two nodes: sessions alternate between primary and replica, each
    // a full PostgreSQL session (startup, authentication, extended query protocol).
    let mut sessions = Vec::new();
    let mut roles = Vec::new();
    for _ in 0..4 {
        let c = connect(lb.addr).await.unwrap();
        roles.push(in_recovery(&c).await);
        sessions.push(c);
    }
    assert_eq!(roles.iter().filter(|r| **r).count(), 2, "{roles:?}");
    assert_ne!(roles[0], roles[1], "{roles:?}");

    // Writes through a session that landed on the primary; big results stream back whole.
    let (primary_session, replica_session) = if roles[0] {
        (&sessions[1], &sessions[0])
    } else {
        (&sessions[0], &sessions[1])
    };
    primary_session
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let n = primary_session
        .execute(
            "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 5000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 5000);
    let rows = primary_session
        .query("SELECT id, v FROM t ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, r)| r.get::<_, i32>(0) == i as i32 + 1 && r.get::<_, &str>(1).len() == 1000));
    // The replica refuses writes: the session really is on a standby.
    let err = replica_session
        .batch_execute("CREATE TABLE u (id int)")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("read-only") || format!("{err:?}").contains("ReadOnly"),
        "{err:?}"
    );
    // Replicated rows are readable through the replica's session.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = replica_session
            .query_opt("SELECT count(*) FROM t", &[])
            .await;
        if let Ok(Some(row)) = &r {
            if row.get::<_, i64>(0) == 5000 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "replica did not catch up: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(sessions);

    // Kill the replica: the health check takes it out, every new session lands on the primary.
    pg.replicas[0].kill();
    assert!(
        wait_for(
            || lb.proc.log_text().contains("server is DOWN"),
            Duration::from_secs(5)
        )
        .await,
        "the killed replica never went down:\n{}",
        lb.proc.log_text()
    );
    for i in 0..6 {
        let c = connect(lb.addr).await.unwrap_or_else(|e| {
            panic!(
                "session {i} after the replica died: {e}\n{}",
                lb.proc.log_text()
            )
        });
        assert!(!in_recovery(&c).await, "session {i} reached a standby");
    }
}
