use std::time::{Duration, Instant};

use crate::{coord, etcd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_against_a_stopped_etcd_fail_unavailable_within_the_deadline() {
    let mut etcd = etcd().await;
    let c = coord(&etcd).await; // op_timeout 800 ms
    let lease = c.grant_lease(Duration::from_secs(5)).await.expect("grant");
    c.put("/u/k", b"v", None).await.expect("put");
    let kv = c.get("/u/k").await.expect("get").expect("kv");
    let mut rx = c.watch_prefix("/u/", kv.mod_revision).await.expect("watch");
    etcd.kill(0);

    let limit = Duration::from_millis(800 + 400);
    macro_rules! check {
        ($name:literal, $call:expr) => {{
            let t0 = Instant::now();
            let r = $call.await;
            let took = t0.elapsed();
            let e = r.expect_err(concat!($name, " succeeded against a dead etcd"));
            assert!(e.is_unavailable(), "{}: {e}", $name);
            assert!(took <= limit, "{} took {took:?}", $name);
        }};
    }
    for _ in 0..2 {
        check!("get", c.get("/u/k"));
        check!("get_prefix", c.get_prefix("/u/"));
        check!("put", c.put("/u/k", b"x", None));
        check!("create", c.create("/u/new", b"x", None));
        check!(
            "compare_and_swap",
            c.compare_and_swap("/u/k", kv.mod_revision, b"x", None)
        );
        check!("delete_if", c.delete_if("/u/k", kv.mod_revision));
        check!("delete", c.delete("/u/k"));
        check!("grant_lease", c.grant_lease(Duration::from_secs(5)));
        check!("keep_alive_once", c.keep_alive_once(lease));
        check!("revoke", c.revoke(lease));
        check!("watch_prefix", c.watch_prefix("/u/", 0));
    }
    // An existing watch does not end: it waits for etcd to come back.
    assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_err());

    // A client created while etcd is down succeeds (lazy) and works once it is back.
    let c2 = coord(&etcd).await;
    check!("get (new client)", c2.get("/u/k"));
    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart_all();
        etcd
    })
    .await
    .expect("restart");
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(Some(kv)) = c2.get("/u/k").await {
            assert_eq!(kv.value, b"v");
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "client never recovered after etcd came back");
    drop(etcd);
}

/// A frozen etcd (SIGSTOP: connections open, no answer) is what a partition looks like to a
/// client: every call must still come back within the deadline, and a watch must notice the
/// silence and resync once etcd answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_against_a_frozen_etcd_time_out_within_the_deadline_and_recover() {
    let etcd = etcd().await;
    let c = coord(&etcd).await; // op_timeout 800 ms
    let lease = c.grant_lease(Duration::from_secs(30)).await.expect("grant");
    c.put("/f/k", b"v", None).await.expect("put");
    let (_, rev) = c.get_prefix("/f/").await.expect("get_prefix");
    let mut rx = c.watch_prefix("/f/", rev).await.expect("watch");

    etcd.freeze(0);
    let limit = Duration::from_millis(800 + 400);
    for _ in 0..2 {
        let t0 = Instant::now();
        let e = c
            .keep_alive_once(lease)
            .await
            .expect_err("frozen etcd answered");
        assert!(
            e.is_unavailable() && t0.elapsed() <= limit,
            "{e} after {:?}",
            t0.elapsed()
        );
        let t0 = Instant::now();
        let e = c
            .create("/f/leader", b"me", Some(lease))
            .await
            .expect_err("frozen etcd answered");
        assert!(
            e.is_unavailable() && t0.elapsed() <= limit,
            "{e} after {:?}",
            t0.elapsed()
        );
        let t0 = Instant::now();
        let e = c.get("/f/k").await.expect_err("frozen etcd answered");
        assert!(
            e.is_unavailable() && t0.elapsed() <= limit,
            "{e} after {:?}",
            t0.elapsed()
        );
    }
    // Let the watcher's silence detector (3 x op_timeout) fire.
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.thaw(0);

    let mut ok = false;
    for _ in 0..50 {
        if c.keep_alive_once(lease).await.ok().flatten().is_some() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "keepalive never recovered after thaw");
    c.put("/f/after", b"x", None).await.expect("put after thaw");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut saw_resync = false;
    let mut saw_after = false;
    while !saw_after {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(rampart_coord::WatchEvent::Resync(kvs))) => {
                saw_resync = true;
                saw_after |= kvs.iter().any(|k| k.key == "/f/after");
            }
            Ok(Some(rampart_coord::WatchEvent::Put(kv))) if kv.key == "/f/after" => {
                saw_after = true
            }
            Ok(Some(rampart_coord::WatchEvent::Put(kv))) if kv.key == "/f/leader" => {
                // A create sent before the freeze may have been applied on thaw: a
                // timed-out write has an unknown outcome, by contract.
            }
            other => panic!("unexpected watch outcome {other:?}"),
        }
    }
    assert!(
        saw_resync,
        "the watch did not resync after the frozen period"
    );
}
