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
