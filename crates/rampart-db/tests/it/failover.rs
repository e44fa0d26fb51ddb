//! Failover: killed primaries, frozen agents, switchover, synchronous mode.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_postgres::Client;

use crate::harness::{connect, missing_ids, wait_rows, writable, Cluster, Opts, Writer};

async fn create_acked_table(c: &Cluster, p: usize) {
    let pc = connect(c.nodes[p].pg_port)
        .await
        .expect("connect to primary");
    pc.batch_execute("CREATE TABLE IF NOT EXISTS acked (id bigint primary key)")
        .await
        .expect("create table");
}

fn ports_apis(c: &Cluster) -> (Vec<u16>, Vec<std::net::SocketAddr>) {
    (
        c.nodes.iter().map(|n| n.pg_port).collect(),
        c.nodes.iter().map(|n| n.api).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_fails_over_and_rejoins_as_replica() {
    let mut c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(20), || c.sync_standby(p).is_some()),
        "{}",
        c.list()
    );
    create_acked_table(&c, p).await;
    let (ports, apis) = ports_apis(&c);
    let w = Writer::start(ports, apis);
    assert!(rampart_testkit::wait_until(Duration::from_secs(10), || w
        .acked_count()
        > 50));

    let killed_at = Instant::now();
    c.kill_node(p);
    let before = w.acked_count();
    let np = c.wait_primary(Duration::from_secs(30));
    assert_ne!(np, p);
    // First acknowledged write on the new primary.
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(30), || w.acked_count() > before + 10),
        "writes did not resume:\n{}",
        c.list()
    );
    let took = killed_at.elapsed();
    eprintln!(
        "failover: new primary {} and writes resumed {:.2} s after the kill",
        c.nodes[np].name,
        took.as_secs_f64()
    );

    // The old primary comes back as a replica of the new one.
    c.start_agent(p);
    c.wait_replica(p, Duration::from_secs(90));
    let acked = w.stop().await;
    let missing = missing_ids(c.nodes[np].pg_port, &acked).await;
    assert!(
        missing.is_empty(),
        "synchronous mode lost acknowledged writes: {missing:?}"
    );
    // The rejoined node replays everything acknowledged.
    let start = Instant::now();
    loop {
        let m = missing_ids(c.nodes[p].pg_port, &acked).await;
        if m.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "rejoined node lacks acknowledged rows: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cluster view shows it as a replica on the new timeline.
    let name = c.nodes[p].name.clone();
    let shown = rampart_testkit::wait_until(Duration::from_secs(20), || {
        c.cluster_json(np).is_some_and(|v| {
            v["members"].as_array().is_some_and(|ms| {
                ms.iter().any(|m| {
                    m["name"] == name.as_str()
                        && m["role"] == "replica"
                        && m["timeline"].as_u64().unwrap_or(0) >= 2
                })
            })
        })
    });
    assert!(
        shown,
        "old primary not shown as a replica on timeline >= 2:\n{}",
        c.list()
    );
}

/// SIGSTOP the primary's agent (PostgreSQL keeps running): its watchdog must fence it
/// before the lease expires, so that at no moment two nodes accept writes. Asynchronous
/// mode, where nothing but the fence stops the old primary from committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_primary_agent_never_yields_two_writable_primaries() {
    let mut c = Cluster::start(Opts {
        synchronous: false,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    let pc = connect(c.nodes[p].pg_port).await.expect("connect");
    pc.batch_execute("CREATE TABLE probe (id bigint)")
        .await
        .expect("create probe");
    for i in (0..3).filter(|&i| i != p) {
        assert!(
            wait_rows(
                c.nodes[i].pg_port,
                "SELECT count(*) FROM pg_class WHERE relname = 'probe'",
                1,
                Duration::from_secs(15)
            )
            .await
        );
    }

    c.signal_agent(p, Signal::SIGSTOP);
    let stopped_at = Instant::now();
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut probe = 0i64;
    let mut new_primary = None;
    let mut old_fenced_at = None;
    while stopped_at.elapsed() < Duration::from_secs(25) {
        let mut now_writable = Vec::new();
        for i in 0..3 {
            if clients.get(&i).is_none_or(|cl| cl.is_closed()) {
                match tokio::time::timeout(Duration::from_millis(500), connect(c.nodes[i].pg_port))
                    .await
                {
                    Ok(Some(cl)) => {
                        clients.insert(i, cl);
                    }
                    _ => {
                        clients.remove(&i);
                        continue;
                    }
                }
            }
            probe += 1;
            if let Some(cl) = clients.get(&i) {
                if writable(cl, probe).await {
                    now_writable.push(i);
                }
            }
        }
        assert!(
            now_writable.len() <= 1,
            "two writable primaries at {:?}: {:?}",
            stopped_at.elapsed(),
            now_writable
        );
        if !now_writable.contains(&p) && old_fenced_at.is_none() {
            old_fenced_at = Some(stopped_at.elapsed());
        }
        if let Some(&n) = now_writable.iter().find(|&&n| n != p) {
            if new_primary.is_none() {
                new_primary = Some((n, stopped_at.elapsed()));
            }
            // Keep watching a little longer to be sure the old one stays fenced.
            if stopped_at.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (np, at) = new_primary
        .unwrap_or_else(|| panic!("no new primary after freezing the old agent:\n{}", c.list()));
    eprintln!(
        "old primary fenced after {old_fenced_at:?}, {} writable after {:?}",
        c.nodes[np].name, at
    );
    assert!(
        old_fenced_at.is_some_and(|f| f < at),
        "the old primary must stop taking writes before the new one starts"
    );

    // Thaw: the old agent finds its lease gone and rejoins as a replica.
    c.signal_agent(p, Signal::SIGCONT);
    c.wait_replica(p, Duration::from_secs(60));
    drop(clients);
    c.kill_node(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_loses_no_write() {
    let c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    create_acked_table(&c, p).await;
    let (ports, apis) = ports_apis(&c);
    let w = Writer::start(ports, apis);
    assert!(rampart_testkit::wait_until(Duration::from_secs(10), || w
        .acked_count()
        > 50));
    let target = (0..3).find(|&i| i != p).expect("target");
    let (ok, out) = tokio::task::spawn_blocking({
        let cfg = c.config.clone();
        let to = c.nodes[target].name.clone();
        move || {
            let o = std::process::Command::new(rampart_testkit::rampart_bin())
                .args(["db", "switchover", "--to", &to, "--config"])
                .arg(cfg)
                .output()
                .expect("run switchover");
            (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            )
        }
    })
    .await
    .expect("join");
    assert!(ok, "switchover failed: {out}\n{}", c.list());
    assert_eq!(c.wait_primary(Duration::from_secs(20)), target);
    let before = w.acked_count();
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(20), || w.acked_count() > before + 20),
        "writes did not resume"
    );
    // The old primary follows the new one.
    c.wait_replica(p, Duration::from_secs(60));
    let acked = w.stop().await;
    let missing = missing_ids(c.nodes[target].pg_port, &acked).await;
    assert!(
        missing.is_empty(),
        "switchover lost acknowledged writes: {missing:?}"
    );
}

/// Synchronous mode: kill the primary (agent and PostgreSQL) several times in a row
/// under a steady writer; no acknowledged write may be lost. The 10 rounds by
/// default (about 10 s a round); `RAMPART_DB_KILLS=N` changes the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_loses_no_acknowledged_write_across_killed_primaries() {
    let rounds: usize = std::env::var("RAMPART_DB_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    create_acked_table(&c, p).await;
    let (ports, apis) = ports_apis(&c);
    let w = Writer::start(ports, apis);
    let mut times = Vec::new();
    for round in 0..rounds {
        let p = c.wait_primary(Duration::from_secs(30));
        for i in (0..3).filter(|&i| i != p) {
            c.wait_replica(i, Duration::from_secs(90));
        }
        assert!(
            rampart_testkit::wait_until(Duration::from_secs(30), || c.sync_standby(p).is_some()),
            "round {round}: no sync standby\n{}",
            c.list()
        );
        let before = w.acked_count();
        assert!(
            rampart_testkit::wait_until(Duration::from_secs(10), || w.acked_count() > before + 20),
            "round {round}: writer stalled"
        );
        let t = Instant::now();
        c.kill_node(p);
        let after_kill = w.acked_count();
        let np = c.wait_primary(Duration::from_secs(30));
        assert!(
            rampart_testkit::wait_until(Duration::from_secs(30), || w.acked_count() > after_kill),
            "round {round}: writes did not resume\n{}",
            c.list()
        );
        times.push(t.elapsed().as_secs_f64());
        eprintln!(
            "round {round}: {} -> {} in {:.2} s",
            c.nodes[p].name,
            c.nodes[np].name,
            t.elapsed().as_secs_f64()
        );
        let acked = w.acked.lock().expect("acked").clone();
        let missing = missing_ids(c.nodes[np].pg_port, &acked).await;
        assert!(
            missing.is_empty(),
            "round {round}: lost acknowledged writes {missing:?}"
        );
        c.start_agent(p);
    }
    let errors = w.errors.load(std::sync::atomic::Ordering::Relaxed);
    let acked = w.stop().await;
    let p = c.wait_primary(Duration::from_secs(30));
    let missing = missing_ids(c.nodes[p].pg_port, &acked).await;
    assert!(missing.is_empty(), "lost acknowledged writes: {missing:?}");
    eprintln!(
        "{rounds} killed primaries, {} acknowledged writes, none lost ({errors} failed or ambiguous); write unavailability per round: {times:?}",
        acked.len()
    );
}

/// With a long lease (Patroni-like ttl 10 s) the replicas of a killed primary stop
/// streaming long before its key expires: they must wait, never "repair" themselves
/// from the dead leader (no rewind, no re-clone), and one of them takes over with its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lease_replicas_wait_for_the_key_without_repairing() {
    let mut c = Cluster::start(Opts {
        synchronous: false,
        extra_db: "ttl = \"10s\"\nloop_wait = \"2s\"\nretry_timeout = \"4s\"".into(),
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    let pc = connect(c.nodes[p].pg_port).await.expect("connect");
    pc.batch_execute(
        "CREATE TABLE keep (id int); INSERT INTO keep SELECT generate_series(1, 1000)",
    )
    .await
    .expect("write");
    for i in (0..3).filter(|&i| i != p) {
        assert!(
            wait_rows(
                c.nodes[i].pg_port,
                "SELECT count(*) FROM keep",
                1000,
                Duration::from_secs(15)
            )
            .await
        );
    }
    c.kill_node(p);
    let np = c.wait_primary(Duration::from_secs(40));
    assert_ne!(np, p);
    assert!(
        wait_rows(
            c.nodes[np].pg_port,
            "SELECT count(*) FROM keep",
            1000,
            Duration::from_secs(10)
        )
        .await,
        "the new primary lost its data"
    );
    for i in (0..3).filter(|&i| i != p) {
        let log = c.agent_log(i);
        assert!(
            !log.contains("re-cloning") && !log.contains("pg_rewind"),
            "{} repaired itself from a dead leader:\n{log}",
            c.nodes[i].name
        );
    }
}

/// A clean stop of every agent (`rampart up` then Ctrl-C: SIGTERM to all), the replicas
/// first so that the primary's shutdown checkpoint never reaches them. On the next start
/// a replica takes the key; the former primary's last checkpoint sits exactly at the fork
/// point of the new timeline ("forked off from that timeline at ..."), so it must rewind
/// before it can stream, instead of looping on a replica start PostgreSQL refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stop_of_all_agents_then_the_old_primary_rejoins_a_new_leader() {
    let mut c = Cluster::start(Opts {
        synchronous: false,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let replicas: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    for &i in &replicas {
        c.wait_replica(i, Duration::from_secs(60));
    }
    let pc = connect(c.nodes[p].pg_port).await.expect("connect");
    pc.batch_execute("CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 100)")
        .await
        .expect("write");
    for &i in &replicas {
        assert!(
            wait_rows(
                c.nodes[i].pg_port,
                "SELECT count(*) FROM kept",
                100,
                Duration::from_secs(15)
            )
            .await
        );
    }
    drop(pc);
    let stop = |c: &mut Cluster, i: usize| {
        c.signal_agent(i, Signal::SIGTERM);
        let mut a = c.agents[i].take().expect("running agent");
        assert!(
            a.wait_exit(Duration::from_secs(40)).is_ok(),
            "{} did not stop on SIGTERM",
            c.nodes[i].name
        );
    };
    for &i in &replicas {
        stop(&mut c, i);
    }
    stop(&mut c, p);
    // The old primary starts first and finds no leader: it runs as a standby of nobody
    // (made `nofailover` so that it cannot take the key back itself) until a replica,
    // started next, leads on a timeline that forked exactly at its last checkpoint.
    let topo = std::fs::read_to_string(&c.config).expect("read topology");
    let me = format!("name = \"{}\"\n", c.nodes[p].name);
    std::fs::write(
        &c.config,
        topo.replacen(&me, &format!("{me}nofailover = true\n"), 1),
    )
    .expect("write topology");
    c.start_agent(p);
    let name = c.nodes[p].name.clone();
    assert!(
        rampart_testkit::wait_until(Duration::from_secs(30), || c.cluster_json(p).is_some_and(
            |v| v["members"].as_array().is_some_and(|ms| ms
                .iter()
                .any(|m| m["name"] == name.as_str() && m["role"] == "replica"))
        )),
        "the old primary did not start as a standby of nobody:\n{}",
        c.agent_log(p)
    );
    for &i in &replicas {
        c.start_agent(i);
    }
    let np = c.wait_primary(Duration::from_secs(60));
    assert_ne!(np, p);
    c.wait_replica(p, Duration::from_secs(60));
    assert!(
        c.agent_log(p).contains("pg_rewind done"),
        "the old primary streams without a rewind?\n{}",
        c.agent_log(p)
    );
    let newc = connect(c.nodes[np].pg_port).await.expect("connect");
    newc.execute("INSERT INTO kept VALUES (101)", &[])
        .await
        .expect("write on the new primary");
    assert!(
        wait_rows(
            c.nodes[p].pg_port,
            "SELECT count(*) FROM kept",
            101,
            Duration::from_secs(15)
        )
        .await,
        "the old primary does not replay the new leader's writes:\n{}",
        c.list()
    );
}

/// The old primary killed and started again at once, while the new leader's first
/// checkpoint after its promotion still runs (PostgreSQL spreads it over the dirty buffers;
/// thousands of them, dirtied by replaying a bulk load, make it last minutes). The leader's
/// `pg_control` names the new timeline only once that checkpoint completes, and pg_rewind
/// takes the target's recovery timeline from it: without a CHECKPOINT first, the rewound
/// node refuses to start ("requested timeline 2 does not contain minimum recovery point
/// ... on timeline 1") and the agent re-clones the whole database. Seen in a
/// freeze-primary drill of `rampart up` (2026-12-07).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_rewinds_onto_a_just_promoted_leader_without_a_re_clone() {
    let mut c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    let replicas: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    for &i in &replicas {
        c.wait_replica(i, Duration::from_secs(60));
    }
    let pc = connect(c.nodes[p].pg_port).await.expect("connect");
    pc.batch_execute(
        "CREATE TABLE bulk AS SELECT g AS id, repeat('x', 300) AS pad FROM generate_series(1, 60000) g",
    )
    .await
    .expect("bulk load");
    for &i in &replicas {
        assert!(
            wait_rows(
                c.nodes[i].pg_port,
                "SELECT count(*) FROM bulk",
                60000,
                Duration::from_secs(30)
            )
            .await,
            "{} did not replay the bulk load",
            c.nodes[i].name
        );
    }
    drop(pc);
    c.kill_node(p);
    let np = c.wait_primary(Duration::from_secs(30));
    assert_ne!(np, p);
    c.start_agent(p);
    c.wait_replica(p, Duration::from_secs(90));
    let log = c.agent_log(p);
    assert!(log.contains("pg_rewind done"), "no rewind:\n{log}");
    assert!(
        !log.contains("re-cloning"),
        "the old primary was re-cloned instead of rewound:\n{log}"
    );
    let newc = connect(c.nodes[np].pg_port).await.expect("connect");
    newc.execute("INSERT INTO bulk VALUES (60001, 'y')", &[])
        .await
        .expect("write on the new primary");
    assert!(
        wait_rows(
            c.nodes[p].pg_port,
            "SELECT count(*) FROM bulk",
            60001,
            Duration::from_secs(15)
        )
        .await,
        "the rewound node does not replay the new leader's writes:\n{}",
        c.list()
    );
}

/// Every agent stopped cleanly, then one started alone: with no leader to follow it runs
/// its PostgreSQL as a standby of nobody, then takes the key and promotes it. A promoted
/// standby that never streamed has no WAL receiver (`pg_last_wal_receive_lsn()` is NULL)
/// and keeps the timestamp of the last transaction it replayed: "seconds since the last
/// replayed transaction" was reported as the primary's replication lag, growing for ever
/// (22 s in `rampart db list` after a drill). A primary has no replication lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_promoted_from_a_standby_of_nobody_reports_no_replication_lag() {
    let mut c = Cluster::start(Opts {
        synchronous: false,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let replicas: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    for &i in &replicas {
        c.wait_replica(i, Duration::from_secs(60));
    }
    create_acked_table(&c, p).await;
    for i in replicas.iter().copied().chain([p]) {
        c.signal_agent(i, Signal::SIGTERM);
        let mut a = c.agents[i].take().expect("running agent");
        assert!(
            a.wait_exit(Duration::from_secs(40)).is_ok(),
            "{} did not stop",
            c.nodes[i].name
        );
    }
    let r = replicas[0];
    c.start_agent(r);
    let np = c.wait_primary(Duration::from_secs(60));
    assert_eq!(np, r, "{}", c.list());
    let name = c.nodes[np].name.clone();
    // Past the agent's next publications (every loop_wait).
    std::thread::sleep(Duration::from_secs(3));
    let lag = c.cluster_json(np).and_then(|v| {
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name.as_str())?["lag_seconds"]
            .as_f64()
    });
    assert_eq!(
        lag,
        Some(0.0),
        "the primary {name} reports a replication lag:\n{}\n{}",
        c.list(),
        c.agent_log(np)
    );
}
