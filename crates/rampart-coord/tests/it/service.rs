use std::time::{Duration, Instant};

use rampart_coord::{register_service, service_key, services_prefix, ServiceRecord};

use crate::{coord, etcd, eventually};

fn rec(name: &str, port: u16) -> ServiceRecord {
    ServiceRecord {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        weight: 100,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_appears_stays_and_disappears_within_ttl_when_dropped() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    let ttl = Duration::from_secs(1);
    let reg = register_service(&c, "main", "web", &rec("web1", 8081), ttl)
        .await
        .expect("register");
    assert_eq!(reg.key(), service_key("main", "web", "web1"));
    let (kvs, _) = c
        .get_prefix(&services_prefix("main", "web"))
        .await
        .expect("list");
    assert_eq!(kvs.len(), 1);
    assert_eq!(
        ServiceRecord::from_kv(&kvs[0]).expect("decode"),
        rec("web1", 8081)
    );

    // Kept alive well beyond its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        c.get(reg.key()).await.expect("get").is_some(),
        "registration expired while alive"
    );

    // Dropping the registration stops the keepalives: gone within the TTL (+ etcd's expiry tick).
    let key = reg.key().to_string();
    drop(reg);
    let t = eventually(Duration::from_secs(5), || async {
        c.get(&key).await.expect("get").is_none()
    })
    .await
    .expect("registration never expired after drop");
    assert!(t <= ttl + Duration::from_millis(1200), "took {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_disappears_when_its_runtime_is_killed_and_deregister_is_immediate() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    let urls = etcd.client_urls();
    // A registering "process": its own runtime on its own thread, shut down abruptly.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let th = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let c = rampart_coord::Coord::connect(rampart_coord::CoordOptions::new(urls))
                .await
                .expect("connect");
            let reg = register_service(
                &c,
                "main",
                "web",
                &rec("web2", 8082),
                Duration::from_secs(1),
            )
            .await
            .expect("register");
            std::mem::forget(reg); // never dropped: only the runtime's death stops it
            let _ = rx.await;
        });
        rt.shutdown_background();
    });
    let key = service_key("main", "web", "web2");
    eventually(Duration::from_secs(5), || async {
        c.get(&key).await.expect("get").is_some()
    })
    .await
    .expect("registration never appeared");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.get(&key).await.expect("get").is_some());
    let _ = tx.send(());
    th.join().expect("thread");
    let t0 = Instant::now();
    eventually(Duration::from_secs(5), || async {
        c.get(&key).await.expect("get").is_none()
    })
    .await
    .expect("registration outlived its runtime");
    assert!(
        t0.elapsed() <= Duration::from_millis(2300),
        "took {:?}",
        t0.elapsed()
    );

    let reg = register_service(
        &c,
        "main",
        "web",
        &rec("web3", 8083),
        Duration::from_secs(30),
    )
    .await
    .expect("register");
    let key = reg.key().to_string();
    reg.deregister().await.expect("deregister");
    assert!(c.get(&key).await.expect("get").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_comes_back_after_its_lease_is_lost() {
    let etcd = etcd().await;
    let c = coord(&etcd).await;
    let reg = register_service(
        &c,
        "main",
        "api",
        &rec("api1", 9000),
        Duration::from_secs(1),
    )
    .await
    .expect("register");
    let first = reg.lease().await;
    // Someone (or an etcd that lost its data) ends the lease: the key goes with it.
    c.revoke(first).await.expect("revoke");
    assert!(c.get(reg.key()).await.expect("get").is_none());
    let key = reg.key().to_string();
    eventually(Duration::from_secs(5), || async {
        c.get(&key).await.expect("get").is_some()
    })
    .await
    .expect("not registered again");
    let kv = c.get(&key).await.expect("get").expect("present");
    assert_ne!(kv.lease, first);
    assert_eq!(kv.lease, reg.lease().await);
    reg.deregister().await.expect("deregister");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_survives_an_etcd_restart() {
    let mut etcd = etcd().await;
    let c = coord(&etcd).await;
    let reg = register_service(
        &c,
        "main",
        "web",
        &rec("web1", 8081),
        Duration::from_secs(2),
    )
    .await
    .expect("register");
    etcd.kill(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart_all();
        etcd
    })
    .await
    .expect("restart");
    // Leases survive a restart (etcd renews them on recovery); the keepalives resume.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let kv = c
        .get(reg.key())
        .await
        .expect("get")
        .expect("registration lost after restart");
    assert_eq!(
        ServiceRecord::from_kv(&kv).expect("decode"),
        rec("web1", 8081)
    );
    reg.deregister().await.expect("deregister");
    drop(etcd);
}
