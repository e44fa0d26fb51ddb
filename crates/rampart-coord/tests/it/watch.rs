use std::time::Duration;

use rampart_coord::WatchEvent;
use tokio::sync::mpsc::Receiver;

use crate::{coord, etcd};

async fn next(rx: &mut Receiver<WatchEvent>, within: Duration) -> WatchEvent {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("no watch event in time")
        .expect("watch channel closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prefix_sees_puts_and_deletes_after_the_given_revision() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    c.put("/w/a", b"before", None).await.expect("put");
    let (_, rev) = c.get_prefix("/w/").await.expect("get_prefix");
    let mut rx = c.watch_prefix("/w/", rev).await.expect("watch");
    c.put("/w/b", b"1", None).await.expect("put");
    c.put("/other/x", b"not watched", None).await.expect("put");
    c.put("/w/a", b"2", None).await.expect("put");
    c.delete("/w/b").await.expect("delete");

    let WatchEvent::Put(kv) = next(&mut rx, Duration::from_secs(3)).await else {
        panic!("expected a put")
    };
    assert_eq!((kv.key.as_str(), kv.value.as_slice()), ("/w/b", &b"1"[..]));
    let WatchEvent::Put(kv) = next(&mut rx, Duration::from_secs(3)).await else {
        panic!("expected a put")
    };
    assert_eq!((kv.key.as_str(), kv.value.as_slice()), ("/w/a", &b"2"[..]));
    match next(&mut rx, Duration::from_secs(3)).await {
        WatchEvent::Delete { key, mod_revision } => {
            assert_eq!(key, "/w/b");
            assert!(mod_revision > kv.mod_revision);
        }
        other => panic!("expected a delete, got {other:?}"),
    }
    // Nothing else arrives (the put before `rev` and the unwatched key are not reported),
    // and the liveness probes of the watcher do not surface as events or resyncs.
    let quiet = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_zero_starts_with_a_snapshot() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    c.put("/s/1", b"a", None).await.expect("put");
    c.put("/s/2", b"b", None).await.expect("put");
    let mut rx = c.watch_prefix("/s/", 0).await.expect("watch");
    match next(&mut rx, Duration::from_secs(3)).await {
        WatchEvent::Resync(kvs) => {
            let keys: Vec<_> = kvs.iter().map(|k| k.key.as_str()).collect();
            assert_eq!(keys, ["/s/1", "/s/2"]);
        }
        other => panic!("expected a resync, got {other:?}"),
    }
    c.put("/s/3", b"c", None).await.expect("put");
    assert!(
        matches!(next(&mut rx, Duration::from_secs(3)).await, WatchEvent::Put(kv) if kv.key == "/s/3")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resyncs_after_etcd_restart() {
    let mut etcd = etcd().await;
    let c = coord(&etcd).await;
    c.put("/r/keep", b"1", None).await.expect("put");
    let (_, rev) = c.get_prefix("/r/").await.expect("get_prefix");
    let mut rx = c.watch_prefix("/r/", rev).await.expect("watch");

    etcd.kill(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _etcd = tokio::task::spawn_blocking(move || {
        etcd.restart_all();
        etcd
    })
    .await
    .expect("restart etcd");
    c.put("/r/after", b"2", None)
        .await
        .expect("put after restart");
    let mut saw_resync = false;
    let mut saw_after = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(saw_resync && saw_after) {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("no resync/put after restart")
            .expect("watch channel closed");
        match ev {
            WatchEvent::Resync(kvs) => {
                saw_resync = true;
                assert!(kvs.iter().any(|k| k.key == "/r/keep"), "{kvs:?}");
                if kvs.iter().any(|k| k.key == "/r/after") {
                    saw_after = true;
                }
            }
            WatchEvent::Put(kv) if kv.key == "/r/after" => saw_after = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    // And the watch goes on.
    c.put("/r/later", b"3", None).await.expect("put");
    let ev = next(&mut rx, Duration::from_secs(3)).await;
    assert!(
        matches!(ev, WatchEvent::Put(ref kv) if kv.key == "/r/later"),
        "{ev:?}"
    );
}
