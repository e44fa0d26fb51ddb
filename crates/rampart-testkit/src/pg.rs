//! A real PostgreSQL primary with streaming replicas on free loopback ports, for tests.
//!
//! Nodes are made with `initdb` and `pg_basebackup -R`, run as the `postgres` OS user
//! when the tests run as root (PostgreSQL refuses to run as root), and killed (the whole
//! process group, SIGKILL) when the [`PgCluster`] is dropped, also on panic.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, pg_bin_dir, wait_until, Proc, TempDir};

/// The OS user PostgreSQL runs as: (uid, gid) of `postgres` when we are root, else None.
fn run_as() -> Option<(u32, u32)> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect(
            "running as root: the `postgres` OS user is needed (apt-get install postgresql-15)",
        );
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

fn pg_command(program: &str) -> Command {
    let mut c = Command::new(pg_bin_dir().join(program));
    if let Some((uid, gid)) = run_as() {
        c.uid(uid).gid(gid);
    }
    c.env("LC_ALL", "C").env_remove("PGDATA");
    c
}

fn chown_for_pg(p: &Path) {
    if let Some((uid, gid)) = run_as() {
        nix::unistd::chown(
            p,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    }
}

fn run_ok(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One running PostgreSQL server.
pub struct PgNode {
    pub name: String,
    pub port: u16,
    pub data: PathBuf,
    proc: Option<Proc>,
    log: PathBuf,
}

impl PgNode {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:PORT`
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Run SQL with psql as the `postgres` database user; returns trimmed unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let psql = pg_bin_dir().join("psql");
        let out = Command::new(&psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// psql that must succeed.
    pub fn sql(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("{} on {}: {e}", sql, self.name))
    }

    fn start(&mut self) {
        let mut c = pg_command("postgres");
        c.arg("-D")
            .arg(&self.data)
            .arg("-p")
            .arg(self.port.to_string());
        self.proc = Some(Proc::spawn(&self.name, c, &self.log));
        let ok = wait_until(Duration::from_secs(30), || self.psql("SELECT 1").is_ok());
        assert!(
            ok,
            "{} did not accept connections:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// SIGKILL the server (its whole process group).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Promote a replica to primary and wait until it accepts writes.
    pub fn promote(&self) {
        self.sql("SELECT pg_promote(true, 30)");
        let ok = wait_until(Duration::from_secs(30), || {
            self.psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
        });
        assert!(ok, "{} did not leave recovery", self.name);
    }

    /// Turn this (killed or stopped) former primary into a streaming replica of
    /// `primary`: pg_rewind onto its timeline, then restart in standby mode.
    pub fn rewind_and_follow(&mut self, primary: &PgNode) {
        self.kill();
        let source = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            primary.port
        );
        let mut c = pg_command("pg_rewind");
        c.arg("--target-pgdata")
            .arg(&self.data)
            .arg("--source-server")
            .arg(&source)
            .arg("--no-sync");
        run_ok(c, "pg_rewind");
        let conninfo = format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'\n",
            primary.port
        );
        append(&self.data.join("postgresql.auto.conf"), &conninfo);
        std::fs::write(self.data.join("standby.signal"), "").expect("write standby.signal");
        chown_for_pg(&self.data.join("standby.signal"));
        self.start();
        let ok = wait_until(Duration::from_secs(30), || {
            self.psql("SELECT pg_is_in_recovery()").as_deref() == Ok("t")
        });
        assert!(ok, "{} did not come back as a standby", self.name);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A primary and N streaming replicas.
pub struct PgCluster {
    pub primary: PgNode,
    pub replicas: Vec<PgNode>,
    _dir: TempDir,
}

impl PgCluster {
    /// initdb a primary, pg_basebackup `replicas` standbys from it, start them all and
    /// wait until every standby streams.
    pub fn start(replicas: usize) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("rampart-pg-")
            .tempdir()
            .expect("temp dir");
        chown_for_pg(dir.path());
        let pdata = dir.path().join("primary");
        let mut c = pg_command("initdb");
        c.arg("-D")
            .arg(&pdata)
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"]);
        run_ok(c, "initdb");
        // dynamic_shared_memory_type = mmap: parallel-query segments are files under the
        // data dir's pg_dynshmem and go with the temp dir; the default (posix) leaves
        // /dev/shm/PostgreSQL.* behind whenever a test SIGKILLs a server.
        let conf = "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
            wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nfsync = off\n\
            wal_keep_size = 256MB\nshared_buffers = 32MB\n\
            max_connections = 200\nlogging_collector = off\nwal_receiver_status_interval = 1s\n\
            hot_standby_feedback = on\nwal_log_hints = on\n\
            dynamic_shared_memory_type = mmap\n";
        append(&pdata.join("postgresql.conf"), conf);
        append(
            &pdata.join("pg_hba.conf"),
            "\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        );
        let mut primary = PgNode {
            name: "pg-primary".into(),
            port: free_port(),
            data: pdata,
            proc: None,
            log: dir.path().join("primary.log"),
        };
        primary.start();
        let mut reps = Vec::new();
        for i in 0..replicas {
            let rdata = dir.path().join(format!("replica{i}"));
            let mut c = pg_command("pg_basebackup");
            c.args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "-c",
                "fast",
                "--no-sync",
            ])
            .arg("-p")
            .arg(primary.port.to_string())
            .arg("-D")
            .arg(&rdata);
            run_ok(c, "pg_basebackup");
            let mut r = PgNode {
                name: format!("pg-replica{i}"),
                port: free_port(),
                data: rdata,
                proc: None,
                log: dir.path().join(format!("replica{i}.log")),
            };
            r.start();
            reps.push(r);
        }
        let want = replicas.to_string();
        let ok = wait_until(Duration::from_secs(30), || {
            primary
                .psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                .as_deref()
                == Ok(want.as_str())
        });
        assert!(ok, "replicas did not start streaming");
        PgCluster {
            primary,
            replicas: reps,
            _dir: dir,
        }
    }

    /// Wait until every replica has replayed the primary's current WAL position.
    pub fn wait_caught_up(&self) {
        let lsn = self.primary.sql("SELECT pg_current_wal_insert_lsn()");
        for r in &self.replicas {
            let ok = wait_until(Duration::from_secs(30), || {
                r.psql(&format!(
                    "SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
                ))
                .as_deref()
                    == Ok("t")
            });
            assert!(ok, "{} did not catch up to {lsn}", r.name);
        }
    }
}

fn append(p: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::PgCluster;

    #[test]
    fn test_clusters_keep_dynamic_shared_memory_in_their_data_dir() {
        let pg = PgCluster::start(0);
        assert_eq!(
            pg.primary.psql("SHOW dynamic_shared_memory_type").unwrap(),
            "mmap"
        );
        // The control segment is a file in the data dir (gone with the temp dir), not
        // /dev/shm/PostgreSQL.* (left behind by a SIGKILL).
        let segments: Vec<_> = std::fs::read_dir(pg.primary.data.join("pg_dynshmem"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("mmap."))
            .collect();
        assert!(!segments.is_empty(), "no mmap segment in pg_dynshmem");
    }

    /// The System V segment of `data`'s postmaster (line 7 of `postmaster.pid`: key, id),
    /// as long as it exists.
    fn sysv_segment(data: &std::path::Path) -> Option<String> {
        let pidfile = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let id = pidfile
            .lines()
            .nth(6)?
            .split_whitespace()
            .nth(1)?
            .to_string();
        let table = std::fs::read_to_string("/proc/sysvipc/shm").ok()?;
        // key shmid ...
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(id.as_str()))
            .then_some(id)
    }

    #[test]
    fn a_killed_server_leaves_no_system_v_segment_behind() {
        let mut pg = PgCluster::start(0);
        let id = sysv_segment(&pg.primary.data).expect("the running server's segment");
        // SIGKILL: PostgreSQL itself cannot remove it; the harness's kill does.
        pg.primary.kill();
        assert_eq!(
            sysv_segment(&pg.primary.data),
            None,
            "System V segment {id} left by the killed server"
        );
    }
}
