//! A real network partition: the primary's agent and its PostgreSQL run in their own
//! network namespace, and nftables drops every packet on its link to etcd and the peers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::harness::{connect_to, writable, Cluster, Opts};

/// Asynchronous mode (nothing but the lease stops the cut primary from committing):
/// polling every node through its own address (the cut one over an untouched management
/// link), at no moment do two nodes take writes, and the cut primary stops taking them
/// before a replica starts. After the heal the old primary rejoins as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_primary_demotes_before_a_replica_promotes_and_rejoins() {
    let mut c = Cluster::start(Opts {
        synchronous: false,
        netns_first: true,
        // The cut node's PostgreSQL must also answer on the management link.
        extra_db: "parameters = { listen_addresses = \"*\" }".into(),
        ..Opts::default()
    });
    for i in 1..3 {
        c.wait_replica(i, Duration::from_secs(60));
    }
    let net = c.net.as_ref().expect("netns");
    let addrs: Vec<(String, u16)> = (0..3)
        .map(|i| {
            let host = if i == 0 {
                net.mgmt_ip.clone()
            } else {
                c.nodes[i].host.clone()
            };
            (host, c.nodes[i].pg_port)
        })
        .collect();
    let pc = connect_to(&addrs[0].0, addrs[0].1)
        .await
        .expect("connect to the primary over the management link");
    pc.batch_execute("CREATE TABLE probe (id bigint)")
        .await
        .expect("create probe");
    drop(pc);
    for (h, p) in &addrs[1..] {
        let ok = async {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Some(cl) = connect_to(h, *p).await {
                    if cl
                        .query("SELECT 1 FROM pg_class WHERE relname = 'probe'", &[])
                        .await
                        .is_ok_and(|r| !r.is_empty())
                    {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        assert!(ok.await, "probe table not replicated to {h}:{p}");
    }

    c.net.as_mut().expect("netns").cut();
    let cut_at = Instant::now();
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut probe = 0i64;
    let mut new_primary = None;
    let mut old_fenced_at = None;
    while cut_at.elapsed() < Duration::from_secs(30) {
        let mut now_writable = Vec::new();
        for (i, (h, p)) in addrs.iter().enumerate() {
            if clients.get(&i).is_none_or(|cl| cl.is_closed()) {
                match tokio::time::timeout(Duration::from_millis(500), connect_to(h, *p)).await {
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
            "two writable primaries {:?} after the cut: {now_writable:?}",
            cut_at.elapsed()
        );
        if !now_writable.contains(&0) && old_fenced_at.is_none() {
            old_fenced_at = Some(cut_at.elapsed());
        }
        if let Some(&n) = now_writable.iter().find(|&&n| n != 0) {
            if new_primary.is_none() {
                new_primary = Some((n, cut_at.elapsed()));
            }
            // Keep watching: the cut node must stay fenced while cut.
            if new_primary.is_some_and(|(_, at)| cut_at.elapsed() > at + Duration::from_secs(3)) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (np, at) = new_primary.unwrap_or_else(|| {
        panic!(
            "no new primary after cutting the old one off:\n{}",
            c.list()
        )
    });
    eprintln!(
        "partition: old primary stopped taking writes after {old_fenced_at:?}, {} writable after {at:?}",
        c.nodes[np].name
    );
    assert!(
        old_fenced_at.is_some_and(|f| f < at),
        "the cut primary must stop taking writes before a replica starts"
    );
    assert!(
        c.agent_log(0).contains("demoting"),
        "no demotion line in the cut node's log"
    );
    drop(clients);

    // Heal: the old primary finds another leader and rejoins as its replica, with the
    // new leader's writes (its own writes from before the fence are rewound away).
    c.net.as_mut().expect("netns").heal();
    c.wait_replica(0, Duration::from_secs(90));
    let nc = connect_to(&addrs[np].0, addrs[np].1)
        .await
        .expect("connect to the new primary");
    nc.batch_execute("CREATE TABLE after_heal (id int); INSERT INTO after_heal VALUES (1)")
        .await
        .expect("write on the new primary");
    let (h, p) = addrs[0].clone();
    let start = Instant::now();
    let mut seen = false;
    while start.elapsed() < Duration::from_secs(15) && !seen {
        if let Some(cl) = connect_to(&h, p).await {
            seen = cl
                .query("SELECT count(*) FROM after_heal", &[])
                .await
                .is_ok_and(|r| r.first().is_some_and(|r| r.get::<_, i64>(0) == 1));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen,
        "the rejoined node does not replay the new leader's writes:\n{}",
        c.list()
    );
}
