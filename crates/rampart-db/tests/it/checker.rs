//! A Jepsen-style split-brain checker: a task per node, connected directly to its
//! PostgreSQL, tries a real write every ~20 ms (`pg_is_in_recovery()`, then an INSERT into
//! `probe`) and records the window of every write that committed. After a fault, two
//! nodes accepted writes at once when their writes interleave: each committed a write sent
//! after the other's first commit was acknowledged.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::harness::{connect_to, Cluster};

/// One committed write: when it was sent and when its commit was acknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Write {
    pub sent: Instant,
    pub acked: Instant,
}

pub struct Checker {
    writes: Vec<Arc<Mutex<Vec<Write>>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub names: Vec<String>,
}

/// Create the `probe` table on the primary `p` and wait until every node has it.
pub async fn create_probe(c: &Cluster, p: usize) {
    let pc = crate::harness::connect(c.nodes[p].pg_port)
        .await
        .expect("connect to the primary");
    pc.batch_execute("CREATE TABLE IF NOT EXISTS probe (id bigint)")
        .await
        .expect("create probe");
    for i in 0..c.nodes.len() {
        assert!(
            crate::harness::wait_rows(
                c.nodes[i].pg_port,
                "SELECT count(*) FROM pg_class WHERE relname = 'probe'",
                1,
                Duration::from_secs(20)
            )
            .await,
            "{} never got the probe table",
            c.nodes[i].name
        );
    }
}

async fn try_write(c: &Client, id: i64) -> bool {
    let q = async {
        let rows = c.query("SELECT pg_is_in_recovery()", &[]).await.ok()?;
        if rows.first()?.get::<_, bool>(0) {
            return Some(false);
        }
        c.execute("INSERT INTO probe(id) VALUES ($1)", &[&id])
            .await
            .ok()?;
        Some(true)
    };
    tokio::time::timeout(Duration::from_millis(500), q)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Checker {
    pub fn start(c: &Cluster) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let ids = Arc::new(AtomicI64::new(1_000_000_000));
        let mut writes = Vec::new();
        let mut tasks = Vec::new();
        for n in &c.nodes {
            let log = Arc::new(Mutex::new(Vec::new()));
            writes.push(log.clone());
            let (host, port) = (n.host.clone(), n.pg_port);
            let (stop, ids) = (stop.clone(), ids.clone());
            tasks.push(tokio::spawn(async move {
                let mut client: Option<Client> = None;
                while !stop.load(Ordering::Relaxed) {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        client = tokio::time::timeout(
                            Duration::from_millis(500),
                            connect_to(&host, port),
                        )
                        .await
                        .ok()
                        .flatten();
                    }
                    if let Some(cl) = &client {
                        let sent = Instant::now();
                        if try_write(cl, ids.fetch_add(1, Ordering::Relaxed)).await {
                            let acked = Instant::now();
                            log.lock().expect("writes").push(Write { sent, acked });
                        } else if sent.elapsed() >= Duration::from_millis(500) {
                            // Timed out: a frozen or fenced node; start afresh.
                            client = None;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Checker {
            writes,
            stop,
            tasks,
            names: c.nodes.iter().map(|n| n.name.clone()).collect(),
        }
    }

    /// Committed writes of node `i` so far.
    pub fn writes(&self, i: usize) -> Vec<Write> {
        self.writes[i].lock().expect("writes").clone()
    }

    /// The first write node `i` committed that was sent after `t`.
    pub fn first_write_after(&self, i: usize, t: Instant) -> Option<Write> {
        self.writes(i).into_iter().find(|w| w.sent >= t)
    }

    /// Panics if, among the writes sent from `from` on (one fault and its failover), two
    /// nodes' commits interleave: each committed a write sent after the other's first
    /// commit was acknowledged. Returns the nodes that committed, in order.
    pub fn assert_one_writer_since(&self, from: Instant) -> Vec<usize> {
        let n = self.writes.len();
        let after: Vec<Vec<Write>> = (0..n)
            .map(|i| {
                self.writes(i)
                    .into_iter()
                    .filter(|w| w.sent >= from)
                    .collect()
            })
            .collect();
        for a in 0..n {
            for b in 0..n {
                let (Some(a_first), Some(a_last)) = (after[a].first(), after[a].last()) else {
                    continue;
                };
                let (Some(b_first), Some(b_last)) = (after[b].first(), after[b].last()) else {
                    continue;
                };
                if a != b && a_last.sent > b_first.acked && b_last.sent > a_first.acked {
                    panic!(
                        "two writable primaries: {} and {} both committed writes sent after the other's first \
                         commit ({} wrote {:?} after {}'s first commit)",
                        self.names[a],
                        self.names[b],
                        self.names[a],
                        a_last.sent.saturating_duration_since(b_first.acked),
                        self.names[b]
                    );
                }
            }
        }
        let mut order: Vec<(Instant, usize)> = (0..n)
            .filter_map(|i| after[i].first().map(|w| (w.sent, i)))
            .collect();
        order.sort();
        order.into_iter().map(|(_, i)| i).collect()
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
