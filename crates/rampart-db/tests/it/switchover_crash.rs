//! A switchover whose old primary crashes while it stops: its last checkpoint is not the
//! end of its WAL, so the switchover must not trust it.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rampart_testkit::{http_request, wait_until};

use crate::harness::{connect, missing_ids, Cluster, Opts, Writer};

fn postmaster_pid(c: &Cluster, i: usize) -> i32 {
    let data = c.dir.path().join("data").join(&c.nodes[i].name);
    std::fs::read_to_string(data.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("postmaster pid")
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_whose_old_primary_crashes_while_stopping_falls_back_to_failover_rules() {
    let c = Cluster::start(Opts {
        first_alone: true,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    assert!(
        wait_until(Duration::from_secs(20), || c.sync_standby(p).is_some()),
        "{}",
        c.list()
    );
    let sync = c.sync_standby(p).expect("sync standby");
    let s = c
        .nodes
        .iter()
        .position(|n| n.name == sync)
        .expect("sync node");
    let pc = connect(c.nodes[p].pg_port).await.expect("connect");
    pc.batch_execute("CREATE TABLE acked (id bigint primary key)")
        .await
        .expect("create table");
    let w = Writer::start(
        c.nodes.iter().map(|n| n.pg_port).collect(),
        c.nodes.iter().map(|n| n.api).collect(),
    );
    assert!(wait_until(Duration::from_secs(10), || w.acked_count() > 50));

    // A backend that cannot end (stopped): the fast shutdown of the switchover waits for
    // it, before its shutdown checkpoint.
    let stuck: i32 = pc
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("backend pid")
        .get(0);
    kill(Pid::from_raw(stuck), Signal::SIGSTOP).expect("stop backend");
    let postmaster = postmaster_pid(&c, p);

    // Patroni's switchover through a replica's API (it answers once decided).
    let api = c.nodes[s].api;
    let body = format!(
        "{{\"leader\": \"{}\", \"candidate\": \"{}\"}}",
        c.nodes[p].name, sync
    );
    let answer = tokio::task::spawn_blocking(move || {
        http_request(api, "POST", "/switchover", &[], body.as_bytes()).map(|r| (r.status, r.text()))
    });
    assert!(
        wait_until(Duration::from_secs(20), || c
            .agent_log(p)
            .contains("demoting: stopping writes")),
        "the old primary never started to stop:\n{}",
        c.list()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alive(postmaster),
        "postgres stopped despite the stuck backend: the crash could not be staged"
    );
    // The crash while stopping.
    let crashed = Instant::now();
    let _ = kill(Pid::from_raw(postmaster), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(stuck), Signal::SIGKILL);
    drop(pc);

    assert!(
        wait_until(Duration::from_secs(15), || c
            .agent_log(p)
            .contains("did not shut down cleanly")),
        "the old primary did not refuse the switchover after its crash:\n{}",
        c.agent_log(p)
    );
    // The failover rules choose: in synchronous mode the synchronous standby.
    let np = c.wait_primary(Duration::from_secs(30));
    assert_eq!(np, s, "{}", c.list());
    let log = c.agent_log(s);
    assert!(
        log.contains("synchronous standby: has every acknowledged commit"),
        "{} did not promote by the failover rules:\n{log}",
        c.nodes[s].name
    );
    eprintln!(
        "switchover-crash: {} primary {:.2} s after the crash",
        c.nodes[np].name,
        crashed.elapsed().as_secs_f64()
    );
    let answer = answer.await.expect("join");
    eprintln!("switchover-crash: POST /switchover answered {answer:?}");
    let before = w.acked_count();
    assert!(
        wait_until(Duration::from_secs(20), || w.acked_count() > before + 20),
        "writes did not resume"
    );
    let acked = w.stop().await;
    let missing = missing_ids(c.nodes[np].pg_port, &acked).await;
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    // The crashed node comes back as a replica of the new primary.
    c.wait_replica(p, Duration::from_secs(90));
}
