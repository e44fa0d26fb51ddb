//! The fence during a promotion: an agent frozen the moment its PostgreSQL became
//! writable must still be fenced before another node promotes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_postgres::Client;

use crate::harness::{connect, wait_rows, writable, Cluster, Opts};

async fn in_recovery(c: &Client) -> Option<bool> {
    let row = tokio::time::timeout(
        Duration::from_millis(200),
        c.query_one("SELECT pg_is_in_recovery()", &[]),
    )
    .await
    .ok()?
    .ok()?;
    Some(row.get(0))
}

/// Asynchronous mode (nothing but the fence stops a node from committing): kill the
/// primary, freeze the agent of the replica whose PostgreSQL turns writable first (it
/// just ran pg_promote), and check every ~20 ms that at most one node accepts writes
/// while the third node takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_frozen_during_its_promotion_is_fenced() {
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
    pc.batch_execute("CREATE TABLE probe (id bigint)")
        .await
        .expect("create probe");
    for &i in &replicas {
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
    drop(pc);
    let mut watch: Vec<(usize, Client)> = Vec::new();
    for &i in &replicas {
        watch.push((
            i,
            connect(c.nodes[i].pg_port).await.expect("connect replica"),
        ));
    }

    c.kill_node(p);
    let killed = Instant::now();
    // The first replica to leave recovery: freeze its agent at once.
    let mut frozen = None;
    while frozen.is_none() && killed.elapsed() < Duration::from_secs(30) {
        for (i, cl) in &watch {
            if in_recovery(cl).await == Some(false) {
                c.signal_agent(*i, Signal::SIGSTOP);
                frozen = Some(*i);
                break;
            }
        }
    }
    let x = frozen.unwrap_or_else(|| panic!("no replica promoted within 30 s:\n{}", c.list()));
    let y = replicas
        .iter()
        .copied()
        .find(|&i| i != x)
        .expect("other replica");
    let frozen_at = Instant::now();
    eprintln!(
        "froze {} {:.2} s after the kill, as its postgres became writable",
        c.nodes[x].name,
        killed.elapsed().as_secs_f64()
    );
    drop(watch);

    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut probe = 0i64;
    let mut x_fenced_at = None;
    let mut y_writable_at = None;
    while frozen_at.elapsed() < Duration::from_secs(25) {
        let mut now_writable = Vec::new();
        for i in [x, y] {
            if clients.get(&i).is_none_or(|cl| cl.is_closed()) {
                match tokio::time::timeout(Duration::from_millis(300), connect(c.nodes[i].pg_port))
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
            "two writable primaries {:?} after freezing {} during its promotion",
            frozen_at.elapsed(),
            c.nodes[x].name
        );
        if !now_writable.contains(&x) && x_fenced_at.is_none() {
            x_fenced_at = Some(frozen_at.elapsed());
        }
        if now_writable.contains(&y) {
            y_writable_at.get_or_insert(frozen_at.elapsed());
            // Keep watching to be sure the frozen one stays fenced.
            if frozen_at.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at = y_writable_at.unwrap_or_else(|| {
        panic!(
            "{} never took over from the frozen {}:\n{}",
            c.nodes[y].name,
            c.nodes[x].name,
            c.list()
        )
    });
    eprintln!(
        "frozen {} fenced after {x_fenced_at:?}; {} writable after {at:?}",
        c.nodes[x].name, c.nodes[y].name
    );
    assert!(x_fenced_at.is_some_and(|f| f < at));

    // Thaw: it finds its lease gone and follows the new primary.
    c.signal_agent(x, Signal::SIGCONT);
    c.wait_replica(x, Duration::from_secs(90));
    drop(clients);
}
