use std::sync::Arc;

use crate::{coord, etcd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_exclusive_under_concurrency() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    for round in 0..3 {
        let key = format!("/t/race/{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let c = c.clone();
                let key = key.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    let won = c
                        .create(&key, format!("task{i}").as_bytes(), None)
                        .await
                        .expect("create");
                    (i, won)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (i, won) = t.await.expect("join");
            if won {
                winners.push(i);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let kv = c.get(&key).await.expect("get").expect("present");
        assert_eq!(kv.value, format!("task{}", winners[0]).as_bytes());
        assert_eq!(kv.create_revision, kv.mod_revision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_and_delete_if_check_the_mod_revision() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    // Expected revision 0 means "absent".
    assert!(c
        .compare_and_swap("/t/cas", 0, b"a", None)
        .await
        .expect("cas"));
    assert!(!c
        .compare_and_swap("/t/cas", 0, b"x", None)
        .await
        .expect("cas"));
    let a = c.get("/t/cas").await.expect("get").expect("present");
    assert_eq!(a.value, b"a");

    let rev_b = c.put("/t/cas", b"b", None).await.expect("put");
    let b = c.get("/t/cas").await.expect("get").expect("present");
    assert_eq!(b.mod_revision, rev_b);
    assert_eq!(b.create_revision, a.create_revision);

    // A stale revision loses, the current one wins.
    assert!(!c
        .compare_and_swap("/t/cas", a.mod_revision, b"stale", None)
        .await
        .expect("cas"));
    assert_eq!(c.get("/t/cas").await.expect("get").expect("kv").value, b"b");
    assert!(c
        .compare_and_swap("/t/cas", b.mod_revision, b"c", None)
        .await
        .expect("cas"));
    let cc = c.get("/t/cas").await.expect("get").expect("kv");
    assert_eq!(cc.value, b"c");
    assert!(cc.mod_revision > b.mod_revision);

    // CAS can attach a lease.
    let lease = c
        .grant_lease(std::time::Duration::from_secs(5))
        .await
        .expect("grant");
    assert!(c
        .compare_and_swap("/t/cas", cc.mod_revision, b"d", Some(lease))
        .await
        .expect("cas"));
    let d = c.get("/t/cas").await.expect("get").expect("kv");
    assert_eq!(d.lease, lease);

    assert!(!c
        .delete_if("/t/cas", cc.mod_revision)
        .await
        .expect("delete_if"));
    assert!(c.get("/t/cas").await.expect("get").is_some());
    assert!(c
        .delete_if("/t/cas", d.mod_revision)
        .await
        .expect("delete_if"));
    assert!(c.get("/t/cas").await.expect("get").is_none());
    assert!(!c
        .delete_if("/t/cas", d.mod_revision)
        .await
        .expect("delete_if"));
    // Plain delete of an absent key is fine.
    c.delete("/t/cas").await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prefix_is_sorted_and_bounded_by_the_prefix() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    for k in ["/p/a/3", "/p/a/1", "/p/a/2", "/p/ab", "/p/b/1"] {
        c.put(k, k.as_bytes(), None).await.expect("put");
    }
    let (kvs, rev) = c.get_prefix("/p/a/").await.expect("get_prefix");
    let keys: Vec<_> = kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/p/a/1", "/p/a/2", "/p/a/3"]);
    assert!(kvs.iter().all(|k| k.mod_revision <= rev));
    let last = c.put("/p/a/4", b"x", None).await.expect("put");
    assert_eq!(last, rev + 1);
    assert_eq!(c.delete_prefix("/p/a/").await.expect("delete_prefix"), 4);
    let (kvs, _) = c.get_prefix("/p/").await.expect("get_prefix");
    assert_eq!(kvs.len(), 2);
}
