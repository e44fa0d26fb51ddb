//! The lease keeper: the lease is renewed by its own task while the agent's loop is
//! alive, so a slow PostgreSQL call does not cost the leader its key; a loop that stands
//! still stops renewing, and the fence takes its primary down before another promotes.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::checker::{create_probe, Checker};
use crate::harness::{signal_all, Cluster, Opts};

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

async fn wait_leader(c: &Cluster, name: &str, timeout: Duration) -> Option<(String, i64)> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(k) = c.leader_key().await.filter(|(n, _)| n == name) {
            return Some(k);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The replica's startup process is stopped (SIGSTOP), so its promotion cannot finish
/// until it is resumed: for longer than two leases the new leader keeps its key (same
/// revision) and its PostgreSQL (not killed at the first lease deadline), and completes
/// the promotion when the startup process runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_promotion_keeps_the_leader_key() {
    let mut c = Cluster::start(Opts {
        nodes: 2,
        synchronous: false,
        first_alone: true,
        ..Opts::default()
    });
    c.wait_replica(1, Duration::from_secs(60));
    let startup = c.pg_child(1, "startup").unwrap_or_else(|| {
        panic!(
            "db2's startup process (WAL replay) not found among {:?}: {:?}",
            c.pg_pids(1),
            c.pg_pids(1)
                .first()
                .map(|&pm| crate::harness::children_of(pm))
        )
    });
    signal_all(&[startup], Signal::SIGSTOP);
    c.kill_node(0);
    let key = wait_leader(&c, "db2", Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("db2 did not take the leader key:\n{}", c.list()));
    let taken = Instant::now();
    // ttl is 3 s: two and a half leases.
    while taken.elapsed() < Duration::from_millis(7500) {
        assert_eq!(
            c.leader_key().await,
            Some(key.clone()),
            "db2 lost its leader key {:?} into a slow promotion",
            taken.elapsed()
        );
        assert!(
            alive(startup),
            "db2's postgres was stopped {:?} into a slow promotion",
            taken.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        c.agent_log(1).contains("promoting"),
        "db2 never started its promotion"
    );
    signal_all(&[startup], Signal::SIGCONT);
    let p = c.wait_primary(Duration::from_secs(30));
    assert_eq!(p, 1);
    assert_eq!(c.leader_key().await, Some(key), "the key changed hands");
}

/// The primary's agent loop stands still (its process, and so the lease keeper, runs):
/// the keeper stops renewing after `ttl / 2` without a sign of life, the watchdog kills
/// the primary at its deadline, and only then does the replica take writes. When the loop
/// goes on, the node rejoins as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_loop_stops_renewing_and_its_primary_is_fenced() {
    let c = Cluster::start(Opts {
        nodes: 2,
        synchronous: false,
        first_alone: true,
        ..Opts::default()
    });
    c.wait_replica(1, Duration::from_secs(60));
    create_probe(&c, 0).await;
    let checker = Checker::start(&c);
    let start = Instant::now();
    while checker.writes(0).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "no write on db1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stalled = Instant::now();
    std::fs::write(c.stall_file(0), b"").expect("stall file");
    let first = loop {
        if let Some(w) = checker.first_write_after(1, stalled) {
            break w;
        }
        assert!(
            stalled.elapsed() < Duration::from_secs(30),
            "db2 never took writes after db1's loop stalled:\n{}",
            c.list()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let order = checker.assert_one_writer_since(stalled);
    assert_eq!(order, vec![0, 1]);
    let last_db1 = checker
        .writes(0)
        .last()
        .map(|w| w.acked.saturating_duration_since(stalled));
    eprintln!(
        "db1's loop stalled: its last write {:?} after, db2's first {:?} after",
        last_db1,
        first.acked.saturating_duration_since(stalled)
    );
    let log = c.agent_log(0);
    assert!(log.contains("no longer renewing the lease"), "{log}");
    assert!(log.contains("killing postgres"), "{log}");
    assert_eq!(c.leader_key().await.map(|k| k.0).as_deref(), Some("db2"));

    std::fs::remove_file(c.stall_file(0)).expect("remove stall file");
    c.wait_replica(0, Duration::from_secs(90));
    checker.assert_one_writer_since(stalled);
    checker.stop().await;
}
