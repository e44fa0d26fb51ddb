//! A real etcd (one member or a small cluster) on loopback for tests.
//!
//! Each member runs as a [`Proc`] with its data in a temp dir, on free loopback ports,
//! with fast raft timings (`--heartbeat-interval 50 --election-timeout 500`, so a 1 s lease
//! TTL is honoured and expires after about 1.3 s). Everything is killed when the [`Etcd`]
//! value is dropped, also when the test panics. Members can be killed and restarted on the
//! same ports and data dir to test reconnection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{etcd_bin, free_port, http_get, wait_until, Proc, TempDir};

/// Raft timings of the test cluster.
#[derive(Debug, Clone, Copy)]
pub struct EtcdTimings {
    pub heartbeat_ms: u32,
    pub election_ms: u32,
}

impl Default for EtcdTimings {
    fn default() -> Self {
        EtcdTimings {
            heartbeat_ms: 50,
            election_ms: 500,
        }
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

/// A running etcd cluster of one or more members.
pub struct Etcd {
    members: Vec<Member>,
    initial_cluster: String,
    timings: EtcdTimings,
    // Declared last: removed after the members are killed.
    dir: TempDir,
}

impl Etcd {
    /// One member with fast timings, healthy when this returns.
    pub fn start() -> Etcd {
        Etcd::start_cluster(1)
    }

    /// `n` members with fast timings, healthy (a leader elected) when this returns.
    pub fn start_cluster(n: usize) -> Etcd {
        Etcd::start_with(n, EtcdTimings::default())
    }

    /// `n` members with the given timings, healthy when this returns.
    pub fn start_with(n: usize, timings: EtcdTimings) -> Etcd {
        assert!(n >= 1, "an etcd cluster needs at least one member");
        let dir = tempfile::Builder::new()
            .prefix("rampart-etcd-")
            .tempdir()
            .expect("create etcd temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("etcd{i}");
                Member {
                    data_dir: dir.path().join(format!("{name}.data")),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                    proc: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Etcd {
            members,
            initial_cluster,
            timings,
            dir,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        assert!(
            etcd.wait_healthy(Duration::from_secs(20)),
            "etcd did not become healthy in 20 s; logs under {}",
            etcd.dir.path().display()
        );
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let token = format!(
            "rampart-test-{}",
            self.dir
                .path()
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(token)
            .arg("--heartbeat-interval")
            .arg(self.timings.heartbeat_ms.to_string())
            .arg("--election-timeout")
            .arg(self.timings.election_ms.to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .arg("--log-level")
            .arg("warn");
        let proc = Proc::spawn(&m.name, cmd, &m.log);
        self.members[i].proc = Some(proc);
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `http://127.0.0.1:PORT` of every member (running or not).
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.members.len())
            .map(|i| self.client_url(i))
            .collect()
    }

    /// `http://127.0.0.1:PORT` of member `i`.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Client address of member `i`.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].client_port))
    }

    /// The temp dir holding data dirs and logs.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// True when member `i` answers `/health` with `"health":"true"` (it has a leader).
    pub fn member_healthy(&self, i: usize) -> bool {
        match http_get(self.client_addr(i), "/health") {
            Ok(r) => r.status == 200 && r.text().replace(' ', "").contains("\"health\":\"true\""),
            Err(_) => false,
        }
    }

    /// Wait until every running member is healthy.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.proc.is_some())
                .all(|(i, _)| self.member_healthy(i))
        })
    }

    /// SIGKILL member `i` (its ports and data dir stay reserved for [`Etcd::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    /// SIGSTOP member `i`: its connections stay open but nothing answers (a partition
    /// as seen by clients). [`Etcd::thaw`] resumes it.
    pub fn freeze(&self, i: usize) {
        if let Some(p) = &self.members[i].proc {
            p.signal_group(nix::sys::signal::Signal::SIGSTOP);
        }
    }

    /// SIGCONT member `i` after [`Etcd::freeze`].
    pub fn thaw(&self, i: usize) {
        if let Some(p) = &self.members[i].proc {
            p.signal_group(nix::sys::signal::Signal::SIGCONT);
        }
    }

    /// Kill every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Start member `i` again on the same ports and data dir (no-op if running).
    pub fn restart(&mut self, i: usize) {
        if self.members[i].proc.is_none() {
            self.spawn(i);
        }
    }

    /// Restart every stopped member and wait until the cluster is healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            self.restart(i);
        }
        assert!(
            self.wait_healthy(Duration::from_secs(20)),
            "etcd did not become healthy again in 20 s; logs under {}",
            self.dir.path().display()
        );
    }

    /// The log of member `i` so far.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Proc's own Drop kills each group (and prints its log tail on panic).
        for m in &mut self.members {
            drop(m.proc.take());
        }
    }
}
