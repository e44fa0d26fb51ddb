//! Leader-only keys on real etcd: a write delayed past a change of leader is refused.

use std::time::Duration;

use rampart_coord::{Coord, CoordOptions};
use rampart_db::dcs::{self, SyncValue};
use rampart_db::leader_keys::{self, LeaderToken};
use rampart_testkit::etcd::Etcd;

const CLUSTER: &str = "lk";

/// Take the leader key as `name` under a fresh lease, as an agent does.
async fn take(c: &Coord, name: &str) -> (LeaderToken, i64) {
    let lease = c.grant_lease(Duration::from_secs(10)).await.expect("lease");
    let rev = c
        .create_revision(&dcs::key(CLUSTER, "leader"), name.as_bytes(), Some(lease))
        .await
        .expect("create")
        .expect("the key was free");
    (
        LeaderToken {
            cluster: CLUSTER.into(),
            name: name.into(),
            revision: rev,
        },
        lease,
    )
}

fn sync(leader: &str, standby: &str) -> Vec<u8> {
    serde_json::to_vec(&SyncValue {
        leader: leader.into(),
        sync_standby: Some(standby.into()),
    })
    .expect("json")
}

async fn read_sync(c: &Coord) -> Option<SyncValue> {
    let kv = c.get(&dcs::key(CLUSTER, "sync")).await.expect("get")?;
    serde_json::from_slice(&kv.value).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sync_write_from_a_deposed_leader_is_refused() {
    let etcd = Etcd::start();
    let c = Coord::connect(CoordOptions::new([etcd.client_url(0)]))
        .await
        .expect("connect");

    // db1 leads and publishes db2 as its synchronous standby.
    let (db1, lease1) = take(&c, "db1").await;
    assert!(
        leader_keys::put(&c, &db1, "sync", &sync("db1", "db2"), None, None)
            .await
            .expect("put")
    );
    assert_eq!(
        read_sync(&c).await,
        Some(SyncValue {
            leader: "db1".into(),
            sync_standby: Some("db2".into())
        })
    );

    // db1 is deposed (its lease ends: the key goes), nobody leads yet: refused.
    c.revoke(lease1).await.expect("revoke");
    assert!(
        !leader_keys::put(&c, &db1, "sync", &sync("db1", "db3"), None, None)
            .await
            .expect("put")
    );

    // db2 takes over and publishes db3.
    let (db2, lease2) = take(&c, "db2").await;
    assert!(
        leader_keys::put(&c, &db2, "sync", &sync("db2", "db3"), None, None)
            .await
            .expect("put")
    );
    // db1's delayed write arrives now: refused, /sync still db2's.
    assert!(
        !leader_keys::put(&c, &db1, "sync", &sync("db1", "db2"), None, None)
            .await
            .expect("put")
    );
    assert_eq!(
        read_sync(&c).await,
        Some(SyncValue {
            leader: "db2".into(),
            sync_standby: Some("db3".into())
        })
    );
    // Nor may it delete a leader-only key.
    assert!(!leader_keys::delete(&c, &db1, "sync", None)
        .await
        .expect("delete"));

    // db1 leads again later: a write from its *first* term (same name, older key) is
    // still refused; one under its new key is accepted.
    c.revoke(lease2).await.expect("revoke");
    let (db1_again, _lease3) = take(&c, "db1").await;
    assert_ne!(db1_again.revision, db1.revision);
    assert!(
        !leader_keys::put(&c, &db1, "sync", &sync("db1", "db2"), None, None)
            .await
            .expect("put")
    );
    assert_eq!(read_sync(&c).await.map(|s| s.leader), Some("db2".into()));
    assert!(
        leader_keys::put(&c, &db1_again, "sync", &sync("db1", "db3"), None, None)
            .await
            .expect("put")
    );
    assert_eq!(
        read_sync(&c).await,
        Some(SyncValue {
            leader: "db1".into(),
            sync_standby: Some("db3".into())
        })
    );

    // A compare-and-set under the leader guard: only against the revision last seen.
    let kv = c
        .get(&dcs::key(CLUSTER, "sync"))
        .await
        .expect("get")
        .expect("sync");
    let stale = leader_keys::unchanged(CLUSTER, "sync", kv.mod_revision - 1);
    assert!(!leader_keys::put(
        &c,
        &db1_again,
        "sync",
        &sync("db1", "db2"),
        Some(stale),
        None
    )
    .await
    .expect("put"));
    let fresh = leader_keys::unchanged(CLUSTER, "sync", kv.mod_revision);
    assert!(leader_keys::put(
        &c,
        &db1_again,
        "sync",
        &sync("db1", "db2"),
        Some(fresh),
        None
    )
    .await
    .expect("put"));
    let absent = leader_keys::unchanged(CLUSTER, "timeline", 0);
    assert!(leader_keys::put(
        &c,
        &db1_again,
        "timeline",
        b"{}",
        Some(absent.clone()),
        None
    )
    .await
    .expect("put"));
    assert!(
        !leader_keys::put(&c, &db1_again, "timeline", b"{}", Some(absent), None)
            .await
            .expect("put")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_request_lives_under_an_etcd_lease_not_host_clocks() {
    let etcd = Etcd::start();
    let c = Coord::connect(CoordOptions::new([etcd.client_url(0)]))
        .await
        .expect("connect");
    let mut req = dcs::FailoverValue {
        from: Some("db1".into()),
        to: Some("db2".into()),
        forced: false,
        min_lsn: None,
        // A writer whose clock is an hour behind: it changes nothing.
        requested_at_ms: dcs::unix_ms() - 3_600_000,
        scheduled_at_ms: None,
    };
    rampart_db::ops::put_request(&c, CLUSTER, &req)
        .await
        .expect("put request");
    let kv = c
        .get(&dcs::key(CLUSTER, "failover"))
        .await
        .expect("get")
        .expect("the request");
    assert_ne!(kv.lease, 0, "the request is not under a lease");
    let ttl = c
        .lease_ttl(kv.lease)
        .await
        .expect("ttl")
        .expect("lease alive");
    let timeout = rampart_db::decide::FAILOVER_REQUEST_TIMEOUT;
    assert!(
        ttl <= timeout && ttl + Duration::from_secs(3) >= timeout,
        "{ttl:?}"
    );
    // A scheduled switchover lives until its time plus the same timeout.
    req.scheduled_at_ms = Some(dcs::unix_ms() + 60_000);
    rampart_db::ops::put_request(&c, CLUSTER, &req)
        .await
        .expect("put request");
    let kv = c
        .get(&dcs::key(CLUSTER, "failover"))
        .await
        .expect("get")
        .expect("the request");
    let ttl = c
        .lease_ttl(kv.lease)
        .await
        .expect("ttl")
        .expect("lease alive");
    assert!(ttl >= timeout + Duration::from_secs(55), "{ttl:?}");
    assert!(!req.is_due(dcs::unix_ms()));
}
