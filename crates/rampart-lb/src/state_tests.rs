//! Unit tests of the pools' and servers' shared state (`state.rs`).

#![allow(clippy::unwrap_used)]

use super::*;
use rampart_balance::Algorithm;
use rampart_topology::lb::{
    HealthCheck, OutlierConfig, PoolTimeouts, QueueConfig, RetryConfig, Server,
};

/// What every request touches stays in the struct's first two cache lines (see
/// [`ServerState`]): a field added in the wrong place, or a bigger type, fails here.
#[test]
fn per_request_fields_fill_the_first_two_cache_lines() {
    use std::mem::{align_of, offset_of, size_of};
    assert_eq!(align_of::<ServerState>(), 64);
    let line0 = [
        offset_of!(ServerState, idle_raw) + size_of::<Box<[Mutex<Vec<IdleRaw>>]>>(),
        offset_of!(ServerState, stats) + size_of::<Counters>(),
        offset_of!(ServerState, up_since_ns) + 8,
        offset_of!(ServerState, requests) + 8,
        offset_of!(ServerState, weight) + 4,
        offset_of!(ServerState, in_flight) + 4,
        offset_of!(ServerState, peak_in_flight) + 4,
        offset_of!(ServerState, admin) + 1,
        offset_of!(ServerState, up) + 1,
        offset_of!(ServerState, ejected) + 1,
        offset_of!(ServerState, connect_dirty) + 1,
    ];
    for end in line0 {
        assert!(
            end <= 64,
            "a per-request field ends at byte {end}, past the first line"
        );
    }
    assert_eq!(offset_of!(ServerState, ewma), 64);
    assert!(offset_of!(ServerState, ewma) + size_of::<PeakEwma>() <= 128);
}

fn pool(n: usize, max_in_flight: Option<u32>, queue_timeout: Duration) -> Arc<PoolState> {
    Arc::new(PoolState::new(
        config(n, max_in_flight, queue_timeout),
        1,
        7,
    ))
}

fn config(n: usize, max_in_flight: Option<u32>, queue_timeout: Duration) -> Pool {
    Pool {
        name: "p".into(),
        algorithm: Algorithm::RoundRobin,
        servers: (0..n)
            .map(|i| Server {
                name: format!("s{i}"),
                address: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight: 1,
            })
            .collect(),
        health_check: HealthCheck::with_kind(CheckKind::Tcp),
        passive_failures: 2,
        outlier: OutlierConfig::default(),
        panic_threshold: 0,
        slow_start: Duration::ZERO,
        lrt_decay: Duration::from_secs(5),
        lrt_penalty: None,
        max_in_flight,
        queue: QueueConfig {
            size: 1,
            timeout: queue_timeout,
        },
        retries: RetryConfig::default(),
        timeouts: PoolTimeouts::default(),
        discovery: None,
        tls: None,
    }
}

const S: u64 = 1_000_000_000;

/// `n` requests on server `i` answered with `status`.
fn answers(p: &Arc<PoolState>, i: usize, n: usize, status: u16) {
    for _ in 0..n {
        let slot = p.try_acquire(i).unwrap();
        p.on_passive(i, Outcome::Answered(status), now_ns());
        drop(slot);
    }
}

fn ejected(p: &PoolState) -> Vec<usize> {
    (0..p.servers.len())
        .filter(|&i| p.servers[i].is_ejected())
        .collect()
}

#[tokio::test]
async fn tried_and_down_servers_are_not_picked() {
    let p = pool(3, None, Duration::from_secs(1));
    let a = p.pick(0, 0).await.unwrap();
    let tried = mark_tried(0, a.server);
    for _ in 0..10 {
        assert_ne!(p.pick(0, tried).await.unwrap().server, a.server);
    }
    // Two connect failures in a row eject a server at once; an answer in between resets.
    let now = now_ns();
    p.on_passive(1, Outcome::Failed(Fail::Connect), now);
    p.on_passive(1, Outcome::Answered(502), now);
    p.on_passive(1, Outcome::Failed(Fail::Connect), now);
    assert!(!p.servers[1].is_ejected());
    p.on_passive(1, Outcome::Failed(Fail::Connect), now);
    assert!(p.servers[1].is_ejected());
    assert!(p.servers[1].is_up(), "ejection is not health");
    assert_eq!(
        p.ejections[Reason::ConnectFailures as usize].load(Ordering::Relaxed),
        1
    );
    for _ in 0..10 {
        assert_ne!(p.pick(0, 0).await.unwrap().server, 1);
    }
    assert_eq!(
        p.pick(0, mark_tried(mark_tried(0, 0), 2)).await.err(),
        Some(PickError::NoneUp)
    );
    // Passing active checks bring it back early (rise = 2).
    p.on_check(1, true);
    assert!(p.servers[1].is_ejected());
    p.on_check(1, true);
    assert!(!p.servers[1].is_ejected());
    // Failing ones take a server down (fall = 3).
    for _ in 0..3 {
        p.on_check(2, false);
    }
    assert!(!p.servers[2].is_up());
    for _ in 0..10 {
        assert_ne!(p.pick(0, 0).await.unwrap().server, 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_server_queues_and_the_queue_times_out_or_is_served() {
    let p = pool(1, Some(1), Duration::from_millis(200));
    let first = p.pick(0, 0).await.unwrap();
    assert_eq!(p.servers[0].in_flight.load(Ordering::Relaxed), 1);
    // Full: the next request waits, then gets QueueTimeout.
    let t = tokio::time::Instant::now();
    assert_eq!(p.pick(0, 0).await.err(), Some(PickError::QueueTimeout));
    assert!(t.elapsed() >= Duration::from_millis(200));
    // While one waits, the queue (size 1) is full for a third.
    let p2 = p.clone();
    let waiter = tokio::spawn(async move { p2.pick(0, 0).await.map(|f| f.server) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(p.pick(0, 0).await.err(), Some(PickError::QueueFull));
    // A slot frees up: the waiter is served.
    drop(first);
    assert_eq!(waiter.await.unwrap(), Ok(0));
    assert_eq!(p.servers[0].in_flight.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_lone_server_is_never_ejected() {
    let p = pool(1, None, Duration::from_secs(1));
    for _ in 0..10 {
        p.on_passive(0, Outcome::Failed(Fail::Connect), now_ns());
    }
    assert!(p.servers[0].eligible());
    assert_eq!(
        p.ejections_refused.load(Ordering::Relaxed),
        1,
        "once per streak"
    );
}

#[tokio::test]
async fn without_health_checks_an_ejection_ends_by_time() {
    let mut cfg = config(2, None, Duration::from_secs(1));
    cfg.health_check = HealthCheck::with_kind(CheckKind::None);
    let p = Arc::new(PoolState::new(cfg, 1, 7));
    let t = now_ns();
    p.on_passive(0, Outcome::Failed(Fail::Connect), t);
    p.on_passive(0, Outcome::Failed(Fail::Connect), t);
    assert_eq!(ejected(&p), vec![0]);
    p.outlier_tick(t + 29 * S);
    assert_eq!(ejected(&p), vec![0]);
    p.outlier_tick(t + 30 * S);
    assert!(ejected(&p).is_empty());
    // Ejected again at once: twice as long.
    p.on_passive(0, Outcome::Failed(Fail::Connect), t + 31 * S);
    p.on_passive(0, Outcome::Failed(Fail::Connect), t + 31 * S);
    let e = p.servers[0].ejection().unwrap();
    assert_eq!((e.count, e.until_ns - e.since_ns), (2, 60 * S));
}

#[tokio::test]
async fn a_url_failing_everywhere_ejects_nobody_a_failing_server_is_ejected() {
    let p = pool(3, None, Duration::from_secs(1));
    let t = now_ns();
    // Every server answers 500 to the same bad URL, 200 to the rest.
    for i in 0..3 {
        answers(&p, i, 30, 500);
        answers(&p, i, 10, 200);
    }
    p.outlier_tick(t + 10 * S);
    assert!(ejected(&p).is_empty());
    // One server fails everything, the others nothing.
    answers(&p, 0, 30, 500);
    answers(&p, 1, 30, 200);
    answers(&p, 2, 30, 200);
    p.outlier_tick(t + 20 * S);
    assert_eq!(ejected(&p), vec![0]);
    let e = p.servers[0].ejection().unwrap();
    assert_eq!(e.reason, Reason::FailureRatio);
    // Passing checks do not end a failure-ratio ejection.
    for _ in 0..5 {
        p.on_check(0, true);
    }
    assert_eq!(ejected(&p), vec![0]);
    for _ in 0..10 {
        assert_ne!(p.pick(0, 0).await.unwrap().server, 0);
    }
}

#[tokio::test]
async fn past_the_panic_threshold_every_server_takes_requests() {
    let mut cfg = config(3, None, Duration::from_secs(1));
    cfg.panic_threshold = 50;
    let p = Arc::new(PoolState::new(cfg, 1, 7));
    for _ in 0..3 {
        p.on_check(1, false);
    }
    assert!(!p.in_panic(), "2 of 3 available");
    for _ in 0..3 {
        p.on_check(2, false);
    }
    assert!(p.in_panic(), "1 of 3 available");
    let mut seen = [0; 3];
    for _ in 0..30 {
        seen[p.pick(0, 0).await.unwrap().server] += 1;
    }
    assert_eq!(seen, [10, 10, 10]);
    p.on_check(2, true);
    p.on_check(2, true);
    assert!(!p.in_panic());
    // Without a threshold an all-down pool has nobody to pick.
    let p = pool(2, None, Duration::from_secs(1));
    for _ in 0..3 {
        p.on_check(0, false);
        p.on_check(1, false);
    }
    assert!(!p.in_panic());
    assert_eq!(p.pick(0, 0).await.err(), Some(PickError::NoneUp));
}

#[test]
fn each_worker_sees_a_new_generation_on_its_next_request_and_drops_a_stale_copy() {
    let cfg = config(2, None, Duration::from_secs(1));
    let h = PoolHandle::new(PoolState::new(cfg.clone(), 2, 7), 2);
    let first = h.get_on(0);
    assert!(
        Arc::ptr_eq(&first, &h.get_on(0)),
        "the copy, not a new load"
    );
    assert!(Arc::ptr_eq(&first, &h.get_on(1)));
    h.store(PoolState::new(
        config(3, None, Duration::from_secs(1)),
        2,
        7,
    ));
    let second = h.get_on(0);
    assert_eq!(second.servers.len(), 3, "the new generation at once");
    assert!(Arc::ptr_eq(&second, &h.get()));
    // Worker 1 sent nothing since: its copy is stale, and its sweep drops it.
    assert_eq!(Arc::strong_count(&first), 2);
    h.drop_stale(1);
    h.drop_stale(0);
    assert_eq!(
        Arc::strong_count(&first),
        1,
        "no copy keeps the old generation"
    );
    assert!(Arc::ptr_eq(&h.get_on(0), &second), "a current copy stays");
    // A worker index the handle was not built for falls back to a plain load.
    assert!(Arc::ptr_eq(&h.get_on(5), &second));
}
