//! A real db cluster for tests: one etcd, N `rampart db` agents (the real binary), each
//! owning a real PostgreSQL, all on free loopback ports, all killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::etcd::Etcd;
use rampart_testkit::{free_port, http_get, rampart_bin, wait_until, Proc, TempDir};
use tokio_postgres::{Client, NoTls};

use crate::netns::Netns;

pub struct NodeSpec {
    pub name: String,
    /// The address PostgreSQL listens on (and the API's IP).
    pub host: String,
    pub pg_port: u16,
    pub api: SocketAddr,
    /// Runs inside the cluster's network namespace.
    pub in_netns: bool,
}

pub struct Opts {
    pub nodes: usize,
    pub synchronous: bool,
    pub extra_db: String,
    /// Put each node's data directory on its own tmpfs of this many MB (to fill a disk).
    pub tmpfs_mb: Option<u64>,
    /// Start the first node alone and wait until it is primary before starting the rest
    /// (so that `db1` is the first primary).
    pub first_alone: bool,
    /// Extra lines for one node's `[[db.nodes]]` table, e.g. `(3, "nofailover = true")`.
    pub node_extra: Vec<(usize, String)>,
    /// Run the first node in its own network namespace ([`Netns`]); etcd and the other
    /// nodes listen on the host side of its link. Implies `first_alone`.
    pub netns_first: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nodes: 3,
            synchronous: true,
            extra_db: String::new(),
            tmpfs_mb: None,
            first_alone: false,
            node_extra: Vec::new(),
            netns_first: false,
        }
    }
}

pub struct Cluster {
    pub agents: Vec<Option<Proc>>,
    /// tmpfs mount points (unmounted on drop, after the processes are killed).
    pub mounts: Vec<PathBuf>,
    pub nodes: Vec<NodeSpec>,
    pub config: PathBuf,
    /// The test etcd on loopback (`None` with a network namespace: see `net_etcd`).
    pub etcd: Option<Etcd>,
    /// etcd on the namespace link's host address (with `netns_first`); killed on drop.
    #[allow(dead_code)]
    pub net_etcd: Option<Proc>,
    pub net: Option<Netns>,
    // Removed last, after every process is dead.
    pub dir: TempDir,
}

pub const PASSWORD: &str = "secret";

/// One etcd member listening on `ip` (fast raft timings, like the testkit's).
fn etcd_on(ip: &str, dir: &std::path::Path) -> (Proc, String) {
    let (cp, pp) = (free_port(), free_port());
    let client = format!("http://{ip}:{cp}");
    let peer = format!("http://{ip}:{pp}");
    let mut cmd = Command::new(rampart_testkit::etcd_bin());
    cmd.arg("--name")
        .arg("e0")
        .arg("--data-dir")
        .arg(dir.join("etcd.data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .arg("--initial-cluster")
        .arg(format!("e0={peer}"))
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args([
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "warn",
        ]);
    let p = Proc::spawn("etcd", cmd, &dir.join("etcd.log"));
    let addr: SocketAddr = format!("{ip}:{cp}").parse().expect("etcd addr");
    assert!(
        wait_until(Duration::from_secs(20), || http_get(addr, "/health")
            .is_ok_and(|r| r.text().contains("true"))),
        "etcd on {ip} did not become healthy"
    );
    (p, client)
}

impl Cluster {
    pub fn etcd(&self) -> &Etcd {
        self.etcd
            .as_ref()
            .expect("this cluster's etcd runs on loopback")
    }

    pub fn start(opts: Opts) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("rampart-db-it-")
            .tempdir()
            .expect("temp dir");
        // PostgreSQL runs as the postgres user: it must reach its data directory.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod temp dir");
        }
        let net = opts.netns_first.then(Netns::create);
        let (etcd, net_etcd, etcd_url) = match &net {
            Some(n) => {
                let (p, url) = etcd_on(&n.host_ip, dir.path());
                (None, Some(p), url)
            }
            None => {
                let e = Etcd::start();
                let url = e.client_url(0);
                (Some(e), None, url)
            }
        };
        let nodes: Vec<NodeSpec> = (1..=opts.nodes)
            .map(|i| {
                let (host, in_netns) = match &net {
                    Some(n) if i == 1 => (n.ns_ip.clone(), true),
                    Some(n) => (n.host_ip.clone(), false),
                    None => ("127.0.0.1".to_string(), false),
                };
                NodeSpec {
                    name: format!("db{i}"),
                    pg_port: free_port(),
                    api: format!("{host}:{}", free_port()).parse().expect("api addr"),
                    host,
                    in_netns,
                }
            })
            .collect();
        // Dynamic shared memory in the data directory (mmap) rather than /dev/shm (posix):
        // the tests SIGKILL postmasters, which leaves posix segments behind in RAM for good.
        // Not on the tiny tmpfs of the disk-full tests, where the files would take space,
        // nor where a test chooses the type itself.
        let extra_db =
            if opts.tmpfs_mb.is_some() || opts.extra_db.contains("dynamic_shared_memory_type") {
                opts.extra_db.clone()
            } else if opts.extra_db.contains("parameters = {") {
                opts.extra_db.replacen(
                    "parameters = {",
                    "parameters = { dynamic_shared_memory_type = \"mmap\",",
                    1,
                )
            } else {
                format!(
                    "{}\nparameters = {{ dynamic_shared_memory_type = \"mmap\" }}",
                    opts.extra_db
                )
            };
        let mut toml = format!(
            "[cluster]\nname = \"it\"\netcd = [\"{}\"]\n\n[db]\ndata_dir = \"{}\"\nsynchronous = {}\nsuperuser_password = \"{PASSWORD}\"\nreplication_password = \"{PASSWORD}\"\n{}\n",
            etcd_url,
            dir.path().join("data").display(),
            opts.synchronous,
            extra_db,
        );
        let mut mounts = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            toml.push_str(&format!(
                "\n[[db.nodes]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\napi = \"{}\"\n",
                n.name, n.host, n.pg_port, n.api
            ));
            for (_, line) in opts.node_extra.iter().filter(|(j, _)| *j == i) {
                toml.push_str(line);
                toml.push('\n');
            }
            if let Some(mb) = opts.tmpfs_mb {
                let fs = dir.path().join(format!("{}-fs", n.name));
                std::fs::create_dir_all(&fs).expect("mount point");
                let ok = Command::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        &format!("size={mb}m,mode=0755"),
                        "tmpfs",
                    ])
                    .arg(&fs)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(
                    ok,
                    "cannot mount a tmpfs at {} (the disk-full test needs root)",
                    fs.display()
                );
                mounts.push(fs.clone());
                toml.push_str(&format!("data_dir = \"{}\"\n", fs.join("pgdata").display()));
            }
        }
        let config = dir.path().join("topology.toml");
        std::fs::write(&config, toml).expect("write topology");
        let mut c = Cluster {
            agents: (0..opts.nodes).map(|_| None).collect(),
            mounts,
            nodes,
            config,
            etcd,
            net_etcd,
            net,
            dir,
        };
        if opts.first_alone || opts.netns_first {
            c.start_agent(0);
            assert_eq!(c.wait_primary(Duration::from_secs(60)), 0);
            for i in 1..opts.nodes {
                c.start_agent(i);
            }
        } else {
            for i in 0..opts.nodes {
                c.start_agent(i);
            }
        }
        c
    }

    pub fn start_agent(&mut self, i: usize) {
        let mut cmd = match (&self.net, self.nodes[i].in_netns) {
            (Some(n), true) => n.command(&rampart_bin()),
            _ => Command::new(rampart_bin()),
        };
        cmd.args(["db", "--config"])
            .arg(&self.config)
            .args(["--node", &self.nodes[i].name]);
        cmd.env("RUST_LOG", "info");
        // Test only: the agent's loop stops while this file exists (`stall_loop`).
        cmd.env("RAMPART_DB_TEST_STALL_FILE", self.stall_file(i));
        let log = self
            .dir
            .path()
            .join(format!("{}.agent.log", self.nodes[i].name));
        self.agents[i] = Some(Proc::spawn(&self.nodes[i].name, cmd, &log));
    }

    /// SIGKILL the agent's whole process group: agent, watchdog and PostgreSQL.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.agents[i].take() {
            p.kill();
        }
        // Backends may outlive the postmaster for a moment; wait until the port is free.
        let (host, port) = (self.nodes[i].host.clone(), self.nodes[i].pg_port);
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect((host.as_str(), port)).is_err()
        });
    }

    /// While this file exists, node `i`'s agent loop stands still (its process runs).
    pub fn stall_file(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.stall", self.nodes[i].name))
    }

    /// The agent's pid (its process only, not its group).
    pub fn agent_pid(&self, i: usize) -> Option<i32> {
        self.agents[i].as_ref().map(|p| p.pid() as i32)
    }

    /// Node `i`'s postmaster (from `postmaster.pid`) and every child of it.
    pub fn pg_pids(&self, i: usize) -> Vec<i32> {
        let pidfile = self
            .dir
            .path()
            .join("data")
            .join(&self.nodes[i].name)
            .join("postmaster.pid");
        let Some(pm) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![pm];
        pids.extend(children_of(pm).into_iter().map(|(p, _)| p));
        pids
    }

    /// The child of node `i`'s postmaster whose title contains `what` (e.g. "startup").
    pub fn pg_child(&self, i: usize, what: &str) -> Option<i32> {
        let pm = *self.pg_pids(i).first()?;
        children_of(pm)
            .into_iter()
            .find(|(_, title)| title.contains(what))
            .map(|(p, _)| p)
    }

    /// Every process of node `i`: agent, its watchdog, its PostgreSQL.
    pub fn node_pids(&self, i: usize) -> Vec<i32> {
        let mut v = Vec::new();
        if let Some(a) = self.agent_pid(i) {
            v.push(a);
            v.extend(
                children_of(a)
                    .into_iter()
                    .filter(|(_, t)| t.contains("watchdog"))
                    .map(|(p, _)| p),
            );
        }
        v.extend(self.pg_pids(i));
        v
    }

    /// The leader key's holder and create revision, read from etcd.
    pub async fn leader_key(&self) -> Option<(String, i64)> {
        let coord = rampart_coord::Coord::connect(rampart_coord::CoordOptions::new([self
            .etcd()
            .client_url(0)]))
        .await
        .ok()?;
        let kv = coord
            .get(&rampart_db::dcs::key("it", "leader"))
            .await
            .ok()??;
        Some((kv.value_str(), kv.create_revision))
    }

    pub fn signal_agent(&self, i: usize, sig: Signal) {
        if let Some(p) = &self.agents[i] {
            p.signal(sig);
        }
    }

    pub fn api(&self, i: usize, path: &str) -> Option<(u16, String)> {
        http_get(self.nodes[i].api, path)
            .ok()
            .map(|r| (r.status, r.text()))
    }

    /// Index of the node whose `/primary` answers 200 (exactly one), if any.
    pub fn primary(&self) -> Option<usize> {
        let ps: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.agents[i].is_some() && self.api(i, "/primary").is_some_and(|(s, _)| s == 200)
            })
            .collect();
        if ps.len() == 1 {
            Some(ps[0])
        } else {
            None
        }
    }

    pub fn wait_primary(&self, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(p) = self.primary() {
                return p;
            }
            if start.elapsed() > timeout {
                panic!("no single primary within {timeout:?}:\n{}", self.list());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Patroni's status document: a replica whose WAL receiver streams (whatever its
    /// tags say about load balancing).
    pub fn streaming(&self, i: usize) -> bool {
        self.api(i, "/health")
            .filter(|(s, _)| *s == 200)
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["role"] == "replica" && v["replication_state"] == "streaming")
    }

    /// Wait until one node is the primary and every other running agent's node streams
    /// from it; the primary. For the end of a test after failures, when either node may
    /// have come out as the primary: one sample of `primary()` can be a former primary
    /// about to step down.
    pub fn wait_settled(&self, timeout: Duration) -> usize {
        let mut settled = None;
        let ok = wait_until(timeout, || {
            settled = self.primary().filter(|&p| {
                (0..self.nodes.len())
                    .filter(|&i| i != p && self.agents[i].is_some())
                    .all(|i| self.streaming(i))
            });
            settled.is_some()
        });
        match settled {
            Some(p) if ok => p,
            _ => panic!(
                "no primary with every other node streaming within {timeout:?}:\n{}",
                self.list()
            ),
        }
    }

    pub fn wait_replica(&self, i: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.streaming(i)),
            "{} did not become a streaming replica within {timeout:?}:\n{}",
            self.nodes[i].name,
            self.list()
        );
    }

    pub fn cluster_json(&self, i: usize) -> Option<serde_json::Value> {
        let (s, body) = self.api(i, "/cluster")?;
        if s != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The node named in `/sync` as synchronous standby, as the cluster view shows it.
    pub fn sync_standby(&self, via: usize) -> Option<String> {
        let v = self.cluster_json(via)?;
        v["members"]
            .as_array()?
            .iter()
            .find(|m| m["sync_standby"].as_bool() == Some(true))
            .and_then(|m| m["name"].as_str().map(String::from))
    }

    /// `rampart db list` output (for failure messages and assertions).
    pub fn list(&self) -> String {
        let out = Command::new(rampart_bin())
            .args(["db", "list", "--config"])
            .arg(&self.config)
            .output();
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("rampart db list: {e}"),
        }
    }

    pub fn run_cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(rampart_bin())
            .arg("db")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run rampart db");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.agent.log", self.nodes[i].name)),
        )
        .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test shows what each agent did last (the directory goes away).
            for i in 0..self.nodes.len() {
                let log = self.agent_log(i);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(80)..];
                eprintln!(
                    "---- {} agent log (last {} lines) ----\n{}",
                    self.nodes[i].name,
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
        for a in self.agents.iter_mut() {
            if let Some(mut p) = a.take() {
                p.kill();
            }
        }
        for m in &self.mounts {
            // Backends may take a moment to die after their postmaster.
            let quiet = |c: &mut Command| {
                c.stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let mut done = false;
            for _ in 0..50 {
                if quiet(Command::new("umount").arg(m)) {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !done {
                // Detach it anyway; the kernel frees it when the last user is gone.
                quiet(Command::new("umount").arg("-l").arg(m));
            }
        }
    }
}

pub use rampart_testkit::children_of;

/// Send `sig` to each pid (errors ignored: a process may be gone).
pub fn signal_all(pids: &[i32], sig: Signal) {
    for &p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// Fill the file system holding `dir` until it has no space left.
pub fn fill_disk(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).expect("create filler");
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 4096];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

pub fn conninfo(host: &str, port: u16) -> String {
    format!("host={host} port={port} user=postgres password={PASSWORD} dbname=postgres connect_timeout=2")
}

pub async fn connect(port: u16) -> Option<Client> {
    connect_to("127.0.0.1", port).await
}

pub async fn connect_to(host: &str, port: u16) -> Option<Client> {
    let ci = conninfo(host, port);
    let fut = tokio_postgres::connect(&ci, NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .ok()?
        .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// Wait until `sql` returns at least one row on the node.
pub async fn wait_rows(port: u16, sql: &str, want: i64, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(c) = connect(port).await {
            if let Ok(rows) = c.query(sql, &[]).await {
                if rows.first().and_then(|r| r.try_get::<_, i64>(0).ok()) == Some(want) {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A writer inserting increasing ids through whichever node is primary, recording every
/// acknowledged id. Runs until `stop` is set.
pub struct Writer {
    pub acked: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    pub errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(ports: Vec<u16>, apis: Vec<SocketAddr>) -> Writer {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::{Arc, Mutex};
        let acked = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, e, s) = (acked.clone(), errors.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut next: i64 = 1;
            let mut client: Option<Client> = None;
            while !s.load(Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = None;
                    // Find the primary through the agents' health endpoints.
                    let apis2 = apis.clone();
                    let p = tokio::task::spawn_blocking(move || {
                        apis2
                            .iter()
                            .position(|a| http_get(*a, "/primary").is_ok_and(|r| r.status == 200))
                    })
                    .await
                    .ok()
                    .flatten();
                    if let Some(i) = p {
                        client = connect(ports[i]).await;
                        if let Some(c) = &client {
                            let _ = c.batch_execute("SET statement_timeout = '3s'").await;
                        }
                    }
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let Some(c) = client.as_ref() else { continue };
                let id = next;
                next += 1;
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    c.execute("INSERT INTO acked(id) VALUES ($1)", &[&id]),
                )
                .await
                {
                    Ok(Ok(_)) => a.lock().expect("acked").push(id),
                    _ => {
                        e.fetch_add(1, Ordering::Relaxed);
                        client = None;
                    }
                }
            }
        });
        Writer {
            acked,
            errors,
            stop,
            task,
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    pub async fn stop(self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.task.await;
        let v = self.acked.lock().expect("acked").clone();
        v
    }
}

/// Ids from `acked` missing on the node at `port`.
pub async fn missing_ids(port: u16, acked: &[i64]) -> Vec<i64> {
    let mut c = None;
    for _ in 0..100 {
        c = connect(port).await;
        if c.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = c.expect("connect to check acknowledged rows (20 s)");
    let rows = c
        .query("SELECT id FROM acked", &[])
        .await
        .expect("read acked ids");
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
    acked
        .iter()
        .copied()
        .filter(|id| !present.contains(id))
        .collect()
}

/// Is the node writable right now? (not in recovery and a write commits within 1 s)
pub async fn writable(client: &Client, probe: i64) -> bool {
    let q = async {
        let rows = client.query("SELECT pg_is_in_recovery()", &[]).await.ok()?;
        if rows.first()?.get::<_, bool>(0) {
            return Some(false);
        }
        client
            .execute("INSERT INTO probe(id) VALUES ($1)", &[&probe])
            .await
            .ok()?;
        Some(true)
    };
    tokio::time::timeout(Duration::from_secs(1), q)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
