//! Distribution of traffic per algorithm.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::{http_config, servers, wait_for, Backend, Client, Lb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_gives_exact_shares() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 5), (&b, 2), (&c, 1)]),
        "health_check = { kind = \"none\" }",
    ))
    .await;
    // One client, sequential requests: the smooth WRR cycle is 8 long (5+2+1).
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..80 {
        let (st, body) = cl.get("/").await.unwrap();
        assert_eq!(st, 200);
        seen.push(body);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (50, 20, 10));
    // Smooth: the heaviest server never gets its whole share of a cycle in one burst.
    let bursts = seen
        .windows(5)
        .filter(|w| w.iter().all(|x| x == "a"))
        .count();
    assert_eq!(bursts, 0, "bursts to the heaviest server: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_response_time_avoids_a_slower_server() {
    let fast = Backend::start("fast").await;
    let slow = Backend::start("slow").await;
    let lb = Lb::start(&http_config(
        "least-response-time",
        &servers(&[(&fast, 1), (&slow, 1)]),
        "health_check = { kind = \"none\" }",
    ))
    .await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..20 {
        cl.get("/").await.unwrap();
    }
    // The slow server turns 50 ms slower.
    slow.delay_ms
        .store(50, std::sync::atomic::Ordering::Relaxed);
    let (f0, s0) = (fast.hits(), slow.hits());
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let (st, _) = cl.get("/").await.unwrap();
        assert_eq!(st, 200);
        n += 1;
    }
    let (df, ds) = (fast.hits() - f0, slow.hits() - s0);
    assert_eq!(df + ds, n);
    assert!(
        ds * 10 < n,
        "slow server got {ds} of {n} requests (fast {df})"
    );

    // It recovers: traffic comes back as its estimate decays.
    slow.delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    let s1 = slow.hits();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.hits() - s1 < 50 && Instant::now() < deadline {
        cl.get("/").await.unwrap();
    }
    assert!(
        slow.hits() - s1 >= 50,
        "the recovered server did not regain traffic"
    );
}

/// Concurrent load with one slow server: both load-aware algorithms send most requests to
/// the server with fewer requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_and_two_choices_avoid_the_busy_server() {
    for algorithm in ["least-connections", "random-two-choices"] {
        let fast = Backend::start("fast").await;
        let slow = Backend::start("slow").await;
        slow.delay_ms
            .store(100, std::sync::atomic::Ordering::Relaxed);
        let lb = Lb::start(&http_config(
            algorithm,
            &servers(&[(&fast, 1), (&slow, 1)]),
            "health_check = { kind = \"none\" }",
        ))
        .await;
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let addr = lb.addr;
            tasks.push(tokio::spawn(async move {
                let mut cl = Client::connect(addr).await.unwrap();
                let deadline = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < deadline {
                    let (st, _) = cl.get("/").await.unwrap();
                    assert_eq!(st, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (f, s) = (fast.hits(), slow.hits());
        // Round robin would give the slow server half of the requests in flight.
        assert!(s * 5 < f, "{algorithm}: slow {s}, fast {f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ip_hash_is_sticky_and_remaps_little() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let lb = Lb::start(&http_config(
        "source-ip-hash",
        &servers(&[(&bs[0], 1), (&bs[1], 1), (&bs[2], 1)]),
        "[pool.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\nrise = 1\njitter = \"0ms\"",
    ))
    .await;
    let clients: Vec<String> = (2..=61).map(|i| format!("127.0.0.{i}")).collect();
    let mut before: HashMap<String, String> = HashMap::new();
    for ip in &clients {
        // Several connections from one address all land on one server.
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut cl = Client::connect_from(lb.addr, ip).await.unwrap();
            let (st, body) = cl.get("/").await.unwrap();
            assert_eq!(st, 200);
            got.push(body);
        }
        assert!(
            got.iter().all(|g| *g == got[0]),
            "{ip} was not sticky: {got:?}"
        );
        before.insert(ip.clone(), got[0].clone());
    }
    for b in &bs {
        let share = before.values().filter(|v| **v == b.name).count();
        assert!(
            share >= 5,
            "server {} got only {share} of 60 clients",
            b.name
        );
    }
    // Remove one server: only its clients move (about 1/3); the others stay.
    bs[2].kill();
    // Measured once the health check has taken c out, not after a fixed pause.
    assert!(
        wait_for(
            || lb.proc.log_text().contains("server is DOWN"),
            Duration::from_secs(5)
        )
        .await,
        "c never went down:\n{}",
        lb.proc.log_text()
    );
    let mut moved_others = 0;
    for ip in &clients {
        let mut cl = Client::connect_from(lb.addr, ip).await.unwrap();
        let (st, body) = cl.get("/").await.unwrap();
        assert_eq!(st, 200);
        assert_ne!(body, "c");
        if before[ip] != "c" && before[ip] != body {
            moved_others += 1;
        }
    }
    let others = before.values().filter(|v| *v != "c").count();
    assert!(
        moved_others * 10 <= others,
        "{moved_others} of {others} clients of surviving servers moved"
    );
}
