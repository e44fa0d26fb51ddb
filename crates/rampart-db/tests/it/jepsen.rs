//! Jepsen-style faults on real PostgreSQL and etcd, each repeated: a checker connected
//! directly to every PostgreSQL tries a real write on each every ~20 ms, and after each
//! fault no two nodes' commits may interleave ([`Checker::assert_one_writer_since`]).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::checker::{create_probe, Checker};
use crate::harness::{children_of, connect, missing_ids, signal_all, Cluster, Opts, Writer};

const ROUNDS: usize = 2;

/// The node whose `/primary` is 200 among `among` (the others may be frozen or dead).
fn primary_among(c: &Cluster, among: &[usize]) -> Option<usize> {
    among
        .iter()
        .copied()
        .find(|&i| c.api(i, "/primary").is_some_and(|(s, _)| s == 200))
}

async fn wait_first_write(checker: &Checker, c: &Cluster, i: usize, after: Instant) {
    while checker.first_write_after(i, after).is_none() {
        assert!(
            after.elapsed() < Duration::from_secs(40),
            "{} never took a write:\n{}",
            c.nodes[i].name,
            c.list()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL of the primary's agent process alone (its watchdog and PostgreSQL live on):
/// the watchdog stops that PostgreSQL before a replica is promoted, and the restarted
/// agent brings the node back as a replica. Asynchronous mode, where nothing but the
/// fence keeps the old primary from committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_alone_is_fenced_by_its_watchdog_before_a_promotion() {
    let mut c = Cluster::start(Opts {
        synchronous: false,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    create_probe(&c, p).await;
    let checker = Checker::start(&c);
    for round in 0..ROUNDS {
        let p = c.wait_primary(Duration::from_secs(60));
        let others: Vec<usize> = (0..3).filter(|&i| i != p).collect();
        wait_first_write(&checker, &c, p, Instant::now()).await;
        let t = Instant::now();
        let agent = c.agent_pid(p).expect("agent pid");
        signal_all(&[agent], Signal::SIGKILL);
        let (host, port) = (c.nodes[p].host.clone(), c.nodes[p].pg_port);
        let mut pg_down = None;
        let q = loop {
            if pg_down.is_none() && std::net::TcpStream::connect((host.as_str(), port)).is_err() {
                pg_down = Some(t.elapsed());
            }
            if let Some(q) = primary_among(&c, &others) {
                break q;
            }
            assert!(
                t.elapsed() < Duration::from_secs(40),
                "no promotion after {}'s agent was killed:\n{}",
                c.nodes[p].name,
                c.list()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let promoted = t.elapsed();
        wait_first_write(&checker, &c, q, t).await;
        assert_eq!(checker.assert_one_writer_since(t).last(), Some(&q));
        let down = pg_down.unwrap_or_else(|| {
            panic!(
                "{}'s postgres still listens after its agent died and {} was promoted",
                c.nodes[p].name, c.nodes[q].name
            )
        });
        eprintln!(
            "round {round}: {}'s agent killed; its postgres down after {down:?}, {} primary after {promoted:?}",
            c.nodes[p].name, c.nodes[q].name
        );
        assert!(down < promoted);
        c.start_agent(p);
        c.wait_replica(p, Duration::from_secs(90));
        checker.assert_one_writer_since(t);
    }
    checker.stop().await;
}

/// SIGSTOP every process of node `i`: agent, watchdog, postmaster, then every child of
/// the (stopped) postmaster, so none forked meanwhile runs on. Returns them all.
/// Processes stopped by [`freeze_node`]: thawed when dropped, so that a test that fails
/// while a node is frozen leaves no stopped process behind (its cluster's clean-up cannot
/// stop a process that never runs again).
struct Frozen(Vec<i32>);

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_all(&self.0, Signal::SIGCONT);
    }
}

fn freeze_node(c: &Cluster, i: usize) -> Frozen {
    let mut pids = c.node_pids(i);
    signal_all(&pids, Signal::SIGSTOP);
    if let Some(&pm) = c.pg_pids(i).first() {
        let late: Vec<i32> = children_of(pm)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !pids.contains(p))
            .collect();
        signal_all(&late, Signal::SIGSTOP);
        pids.extend(late);
    }
    Frozen(pids)
}

/// The whole primary node freezes (agent, watchdog and PostgreSQL stopped, as a paused
/// VM), a replica takes over, then the node thaws: it comes back as a replica and never
/// takes a write. Synchronous mode, under a writer: no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_primary_node_thaws_as_a_replica_without_losing_writes() {
    let c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    create_probe(&c, p).await;
    connect(c.nodes[p].pg_port)
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await
        .expect("create acked");
    let ports: Vec<u16> = c.nodes.iter().map(|n| n.pg_port).collect();
    let apis = c.nodes.iter().map(|n| n.api).collect();
    let writer = Writer::start(ports, apis);
    let checker = Checker::start(&c);
    for round in 0..ROUNDS {
        let p = c.wait_primary(Duration::from_secs(60));
        let others: Vec<usize> = (0..3).filter(|&i| i != p).collect();
        // Synchronous mode promises a failover only once a standby is published as
        // synchronous (Patroni's rule too): until then only the primary is known to hold
        // every acknowledged commit. A freeze before that must leave the cluster without
        // a leader, which is not what this test is about.
        assert!(
            rampart_testkit::wait_until(Duration::from_secs(30), || {
                c.sync_standby(p)
                    .is_some_and(|s| others.iter().any(|&o| c.nodes[o].name == s))
            }),
            "no synchronous standby published under {}:\n{}",
            c.nodes[p].name,
            c.list()
        );
        let before = writer.acked_count();
        let start = Instant::now();
        while writer.acked_count() < before + 20 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the writer is stuck"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        let frozen = freeze_node(&c, p);
        let q = loop {
            if let Some(q) = primary_among(&c, &others) {
                break q;
            }
            assert!(
                t.elapsed() < Duration::from_secs(40),
                "no promotion while {} is frozen:\n{}",
                c.nodes[p].name,
                c.list()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let promoted = t.elapsed();
        wait_first_write(&checker, &c, q, t).await;
        // Writes go on at the new primary for a moment, then the old node thaws.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let thawed = Instant::now();
        drop(frozen);
        c.wait_replica(p, Duration::from_secs(90));
        assert!(
            checker.first_write_after(p, thawed).is_none(),
            "{} took a write after it thawed",
            c.nodes[p].name
        );
        assert_eq!(checker.assert_one_writer_since(t).last(), Some(&q));
        eprintln!(
            "round {round}: {} frozen, {} primary after {promoted:?}; thawed, replica after {:?}",
            c.nodes[p].name,
            c.nodes[q].name,
            thawed.elapsed()
        );
    }
    let acked = writer.stop().await;
    checker.stop().await;
    let p = c.wait_primary(Duration::from_secs(30));
    let missing = missing_ids(c.nodes[p].pg_port, &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    eprintln!("{} acknowledged writes, none lost", acked.len());
}
