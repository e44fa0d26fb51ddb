//! The local PostgreSQL: files, processes and (in `conn`) queries. The only code in rampart that
//! runs `initdb`, `postgres`, `pg_basebackup`, `pg_rewind` and `pg_controldata`.
//!
//! PostgreSQL runs as a child of the agent (as the `postgres` OS user when the agent is
//! root), listening on TCP only (no Unix socket), with the settings the agent owns in
//! `rampart.conf` (included from `postgresql.conf`) and a `pg_hba.conf` it writes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid};
use tokio::process::{Child, Command};

use crate::error::DbError;

mod conn;
pub use conn::PgConn;

/// Superuser and replication user names created by the bootstrap.
pub const SUPERUSER: &str = "postgres";
pub const REPLICATION_USER: &str = "replicator";

/// How the agent runs PostgreSQL's programs.
#[derive(Debug, Clone)]
pub struct PgCtl {
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub name: String,
    pub superuser_password: String,
    pub replication_password: String,
    /// (uid, gid) to run as; `None` when the agent is not root.
    pub run_as: Option<(Uid, Gid)>,
    /// `[tls] replication`: serve TLS, take replication over TLS only, stream verifying
    /// the leader's certificate against the CA.
    pub tls: Option<rampart_topology::db::ReplicationTls>,
}

/// Where the TLS material is copied in the data directory (PostgreSQL wants the key
/// owned by its user, mode 0600; relative names are read from the data directory).
const SSL_CERT: &str = "rampart-server.crt";
const SSL_KEY: &str = "rampart-server.key";

/// The settings written to `rampart.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfSpec {
    /// Leader to stream from: (host, port). `None`: primary, or a replica following nobody.
    pub follow: Option<(String, u16)>,
    /// `synchronous_standby_names` value (already rendered, e.g. `FIRST 1 ("db2")`).
    pub sync_names: String,
    pub extra: Vec<(String, String)>,
}

/// What one status query returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgStatus {
    pub in_recovery: bool,
    pub timeline: u32,
    /// Primary: current WAL LSN. Replica: last replayed LSN.
    pub lsn: u64,
    /// Replica: last received and flushed LSN (0 when none).
    pub receive_lsn: u64,
    pub streaming: bool,
    /// Replica: seconds since the last replayed transaction, 0 when caught up.
    pub replay_delay_seconds: f64,
    pub connections: i64,
    pub xact_commit: i64,
    pub xact_rollback: i64,
    pub sync_names: String,
    /// `recovery_target_timeline` (how far a replica follows newer timelines).
    pub recovery_target_timeline: String,
    /// Replica: the timeline its WAL receiver streams, while it streams.
    pub received_tli: Option<u32>,
    /// `server_version_num`, e.g. 150014.
    pub server_version: i64,
    /// `pg_postmaster_start_time()` as text.
    pub postmaster_start_time: String,
}

/// One `pg_stat_replication` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplStat {
    pub name: String,
    pub state: String,
    pub sync_state: String,
    pub flush_lsn: u64,
    pub replay_lsn: u64,
}

/// The interesting lines of `pg_controldata`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlData {
    pub state: String,
    pub checkpoint_lsn: u64,
    pub timeline: u32,
}

/// Parse `16/B374D848` into a byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    Some((hi << 32) | lo)
}

/// `systemid|timeline|xlogpos|dbname` (psql's unaligned output) -> timeline.
pub fn parse_identify_system(out: &str) -> Option<u32> {
    out.lines()
        .find_map(|l| {
            let mut f = l.trim().split('|');
            let sysid = f.next()?;
            let tli = f.next()?;
            (sysid.parse::<u64>().is_ok()).then(|| tli.parse::<u32>().ok())?
        })
        .filter(|&t| t > 0)
}

impl ControlData {
    /// The end of this server's WAL, known only after a clean shutdown (`shut down`: the
    /// shutdown checkpoint is the last record). After a crash, an immediate stop or a
    /// kill the last checkpoint is *not* the end of the WAL, and a switchover target that
    /// reached it could still lack acknowledged commits: `None`.
    pub fn clean_shutdown_lsn(&self) -> Option<u64> {
        (self.state == "shut down" && self.checkpoint_lsn > 0).then_some(self.checkpoint_lsn)
    }
}

pub fn parse_controldata(text: &str) -> ControlData {
    let mut c = ControlData::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "Database cluster state" => c.state = v.to_string(),
            "Latest checkpoint location" => c.checkpoint_lsn = parse_lsn(v).unwrap_or(0),
            "Latest checkpoint's TimeLineID" => c.timeline = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    c
}

/// The superuser connection string to a node's PostgreSQL (TCP, short timeouts).
pub fn conninfo(host: &str, port: u16, superuser_password: &str) -> String {
    format!(
        "host={host} port={port} user={SUPERUSER} password={superuser_password} dbname=postgres connect_timeout=2 application_name=rampart-agent"
    )
}

/// `shared_preload_libraries`: the `[db.parameters]` value, if any, with `lib` added when
/// it lacks it (a later line in `rampart.conf` would replace ours, not add to it).
pub fn preload_libraries(extra: &[(String, String)], lib: &str) -> String {
    let given = extra
        .iter()
        .rev()
        .find(|(k, _)| k == "shared_preload_libraries")
        .map(|(_, v)| v.trim().trim_matches('\'').replace("''", "'"));
    let mut libs: Vec<String> = given
        .iter()
        .flat_map(|v| v.split(','))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if !libs.iter().any(|l| l.trim_matches('"') == lib) {
        libs.push(lib.to_string());
    }
    quote_conf(&libs.join(","))
}

fn quote_conf(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

impl PgCtl {
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(self.bin_dir.join(prog));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        if let Some(parent) = self.data_dir.parent() {
            c.current_dir(parent);
        }
        c.env_remove("PGDATA").env("PGCONNECT_TIMEOUT", "3");
        if self.tls.is_some() {
            // Against a TLS server libpq looks for a client certificate in
            // ~/.postgresql; run as postgres with root's HOME that is an access error.
            c.env("PGSSLCERT", self.no_client_cert())
                .env("PGSSLKEY", self.no_client_cert());
        }
        c.kill_on_drop(true);
        c
    }

    /// A path that never exists: "no client certificate" for libpq (which otherwise
    /// reads `~/.postgresql/postgresql.crt`).
    fn no_client_cert(&self) -> PathBuf {
        self.sibling(".no-client-cert")
    }

    async fn run(
        &self,
        mut c: Command,
        what: &'static str,
        timeout: Duration,
    ) -> Result<String, DbError> {
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = tokio::time::timeout(timeout, c.output())
            .await
            .map_err(|_| DbError::Command {
                what,
                detail: format!("timed out after {timeout:?}"),
            })?
            .map_err(|e| DbError::Command {
                what,
                detail: e.to_string(),
            })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(text)
        } else {
            Err(DbError::Command {
                what,
                detail: format!("{}: {}", out.status, text.trim()),
            })
        }
    }

    pub fn has_data(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    pub fn is_standby(&self) -> bool {
        self.data_dir.join("standby.signal").is_file()
    }

    pub fn log_path(&self) -> PathBuf {
        let mut s = self.data_dir.clone().into_os_string();
        s.push(".log");
        PathBuf::from(s)
    }

    fn chown(&self, p: &Path) -> Result<(), DbError> {
        if let Some((uid, gid)) = self.run_as {
            nix::unistd::chown(p, Some(uid), Some(gid)).map_err(|e| DbError::Io {
                what: "chown to the postgres user",
                path: p.to_path_buf(),
                source: std::io::Error::from(e),
            })?;
        }
        Ok(())
    }

    /// Create an empty data directory (mode 0700, owned by the postgres user).
    pub fn make_empty_data_dir(&self) -> Result<(), DbError> {
        self.make_empty_dir(&self.data_dir)
    }

    /// Create an empty directory (mode 0700, owned by the postgres user), replacing `dir`.
    fn make_empty_dir(&self, dir: &Path) -> Result<(), DbError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |what, source| DbError::Io {
            what,
            path: dir.to_path_buf(),
            source,
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io("remove the old directory", e))?;
        }
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io("create the data directory's parent", e))?;
        }
        std::fs::create_dir(dir).map_err(|e| io("create the data directory", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("set the data directory's mode", e))?;
        self.chown(dir)
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut s = self.data_dir.clone().into_os_string();
        s.push(suffix);
        PathBuf::from(s)
    }

    /// initdb with data checksums (pg_rewind needs them or wal_log_hints) and a
    /// superuser password.
    pub async fn initdb(&self) -> Result<(), DbError> {
        self.make_empty_data_dir()?;
        let pwfile = self.data_dir.with_extension("pw");
        std::fs::write(&pwfile, format!("{}\n", self.superuser_password)).map_err(|e| {
            DbError::Io {
                what: "write the initdb password file",
                path: pwfile.clone(),
                source: e,
            }
        })?;
        self.chown(&pwfile)?;
        let mut c = self.cmd("initdb");
        c.arg("-D")
            .arg(&self.data_dir)
            .args([
                "--data-checksums",
                "-U",
                SUPERUSER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        let r = self.run(c, "initdb", Duration::from_secs(120)).await;
        let _ = std::fs::remove_file(&pwfile);
        r.map(|_| ())
    }

    /// Copy the leader's data directory (streaming the WAL alongside).
    /// Copy the leader's data directory (streaming the WAL alongside) into a new folder
    /// and swap it in only once the copy is complete: a failed clone (leader gone, disk
    /// full) never destroys the data we had.
    pub async fn basebackup(&self, host: &str, port: u16) -> Result<(), DbError> {
        let fresh = self.sibling(".new");
        self.make_empty_dir(&fresh)?;
        let mut c = self.cmd("pg_basebackup");
        c.arg("-D")
            .arg(&fresh)
            .args(["-h", host, "-p", &port.to_string(), "-U", REPLICATION_USER])
            .args(["-X", "stream", "-c", "fast", "--no-password"])
            .env("PGPASSWORD", &self.replication_password);
        if self.tls.is_some() {
            c.env("PGSSLMODE", "verify-ca")
                .env("PGSSLROOTCERT", self.copy_ca()?);
        }
        if let Err(e) = self.run(c, "pg_basebackup", Duration::from_secs(600)).await {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(e);
        }
        // A copy of the leader is a standby until the agent decides otherwise: marked
        // before it moves in place, so that an agent that dies right after the move never
        // takes it for a former primary (which it would rewind: pg_rewind's single-user
        // recovery would end recovery on this copy and write WAL the leader never had).
        let signal = fresh.join("standby.signal");
        if let Err(e) = std::fs::write(&signal, b"")
            .map_err(|source| DbError::Io {
                what: "mark the new copy a standby",
                path: signal.clone(),
                source,
            })
            .and_then(|()| self.chown(&signal))
        {
            let _ = std::fs::remove_dir_all(&fresh);
            return Err(e);
        }
        let old = self.sibling(".old");
        let io = |what, source| DbError::Io {
            what,
            path: self.data_dir.clone(),
            source,
        };
        if old.exists() {
            std::fs::remove_dir_all(&old)
                .map_err(|e| io("remove a leftover old data directory", e))?;
        }
        if self.data_dir.exists() {
            std::fs::rename(&self.data_dir, &old)
                .map_err(|e| io("set the old data directory aside", e))?;
        }
        std::fs::rename(&fresh, &self.data_dir).map_err(|e| io("move the new copy in place", e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Can we open a TCP connection to this PostgreSQL? (A dead leader is no reason to
    /// rewind or re-clone anything.)
    pub async fn reachable(host: &str, port: u16) -> bool {
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect((host, port))
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// The timeline a running standby has replayed up to: `IDENTIFY_SYSTEM` on a
    /// replication connection to itself (a cascading walsender answers with its replay
    /// timeline). Unlike `pg_control_checkpoint()` it does not wait for a restartpoint.
    pub async fn replay_timeline(&self) -> Result<u32, DbError> {
        let mut c = self.cmd("psql");
        c.args(["-X", "-A", "-t", "-q", "-d"])
            .arg(format!(
                "host={} port={} user={REPLICATION_USER} replication=true connect_timeout=2 application_name=rampart-agent{}",
                self.host,
                self.port,
                // Replication TLS: pg_hba takes the replication user over TLS only (our
                // own server: encrypted, its certificate needs no check).
                if self.tls.is_some() { " sslmode=require" } else { "" }
            ))
            .args(["-c", "IDENTIFY_SYSTEM"])
            .env("PGPASSWORD", &self.replication_password);
        let out = self
            .run(c, "IDENTIFY_SYSTEM", Duration::from_secs(5))
            .await?;
        parse_identify_system(&out).ok_or_else(|| DbError::Command {
            what: "IDENTIFY_SYSTEM",
            detail: format!("unexpected answer: {}", out.trim()),
        })
    }

    /// The timeline history files in `pg_wal` (unreadable ones are skipped).
    pub fn histories(&self) -> Vec<crate::timeline::History> {
        let dir = self.data_dir.join("pg_wal");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| {
            let e = e.ok()?;
            let tli = crate::timeline::history_file_tli(e.file_name().to_str()?)?;
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some(crate::timeline::parse_history(tli, &text))
        })
        .collect()
    }

    /// Rewind this (stopped) data directory onto the leader's timeline.
    ///
    /// Two things first, as Patroni does. A `CHECKPOINT` on the leader: pg_rewind takes
    /// the timeline the target must recover on from the source's `pg_control`, which names
    /// the new timeline only once a checkpoint completed after the promotion (PostgreSQL
    /// spreads that one over seconds to minutes); a rewind before it leaves a target whose
    /// minimum recovery point is on the old timeline, and PostgreSQL refuses to start it
    /// ("requested timeline N does not contain minimum recovery point ... on timeline 1").
    /// And no `standby.signal`: a target that was not shut down cleanly (killed, fenced)
    /// is recovered by pg_rewind in single-user mode, which refuses standby mode; the start
    /// as a replica writes it again.
    pub async fn rewind(&self, host: &str, port: u16) -> Result<String, DbError> {
        self.checkpoint_on(host, port).await?;
        self.set_standby(false)?;
        let mut c = self.cmd("pg_rewind");
        c.arg("-D")
            .arg(&self.data_dir)
            .arg(format!(
                "--source-server=host={host} port={port} user={SUPERUSER} dbname=postgres"
            ))
            .env("PGPASSWORD", &self.superuser_password);
        self.run(c, "pg_rewind", Duration::from_secs(300)).await
    }

    /// `CHECKPOINT` on the PostgreSQL at `host:port` as the superuser (waits for it).
    pub async fn checkpoint_on(&self, host: &str, port: u16) -> Result<(), DbError> {
        let mut c = self.cmd("psql");
        c.args(["-X", "-A", "-t", "-q", "-d"])
            .arg(format!(
                "host={host} port={port} user={SUPERUSER} dbname=postgres connect_timeout=3 application_name=rampart-agent"
            ))
            .args(["-c", "CHECKPOINT"])
            .env("PGPASSWORD", &self.superuser_password);
        self.run(c, "CHECKPOINT on the leader", Duration::from_secs(300))
            .await
            .map(drop)
    }

    pub async fn controldata(&self) -> Result<ControlData, DbError> {
        let mut c = self.cmd("pg_controldata");
        c.arg("-D").arg(&self.data_dir).env("LC_ALL", "C");
        let text = self
            .run(c, "pg_controldata", Duration::from_secs(10))
            .await?;
        Ok(parse_controldata(&text))
    }

    /// The CA replicas verify the leader with, copied beside the data directory
    /// (`<data_dir>.ca.crt`, readable by the postgres user, kept across re-clones).
    fn copy_ca(&self) -> Result<PathBuf, DbError> {
        let dst = self.sibling(".ca.crt");
        if let Some(t) = &self.tls {
            self.copy_private(&t.ca, &dst, 0o644, "copy the replication CA")?;
        }
        Ok(dst)
    }

    fn copy_private(
        &self,
        src: &Path,
        dst: &Path,
        mode: u32,
        what: &'static str,
    ) -> Result<(), DbError> {
        use std::os::unix::fs::PermissionsExt;
        let bytes = std::fs::read(src).map_err(|e| DbError::Io {
            what,
            path: src.to_path_buf(),
            source: e,
        })?;
        let io = |e| DbError::Io {
            what,
            path: dst.to_path_buf(),
            source: e,
        };
        let _ = std::fs::remove_file(dst);
        std::fs::write(dst, bytes).map_err(io)?;
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        self.chown(dst)
    }

    /// The TLS lines of `rampart.conf` and the copies of the material they name.
    fn write_tls(&self, s: &mut String) -> Result<(), DbError> {
        let Some(t) = &self.tls else {
            return Ok(());
        };
        self.copy_private(
            &t.cert,
            &self.data_dir.join(SSL_CERT),
            0o644,
            "copy the TLS certificate",
        )?;
        self.copy_private(
            &t.key,
            &self.data_dir.join(SSL_KEY),
            0o600,
            "copy the TLS key",
        )?;
        let _ = writeln!(s, "ssl = on");
        let _ = writeln!(s, "ssl_cert_file = {}", quote_conf(SSL_CERT));
        let _ = writeln!(s, "ssl_key_file = {}", quote_conf(SSL_KEY));
        let _ = writeln!(s, "ssl_min_protocol_version = 'TLSv1.2'");
        Ok(())
    }

    /// Write `rampart.conf`, include it from `postgresql.conf`, write `pg_hba.conf`.
    pub fn write_conf(&self, spec: &ConfSpec) -> Result<(), DbError> {
        let io = |what, path: &Path, source| DbError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let mut s =
            String::from("# Written by rampart db; rewritten on every change. Do not edit.\n");
        let mut kv = |k: &str, v: String| {
            let _ = writeln!(s, "{k} = {v}");
        };
        kv("listen_addresses", quote_conf(&self.host));
        kv("port", self.port.to_string());
        kv("unix_socket_directories", "''".into());
        kv("wal_level", "replica".into());
        kv("hot_standby", "on".into());
        kv("wal_log_hints", "on".into());
        kv("max_wal_senders", "10".into());
        kv("max_replication_slots", "10".into());
        kv("wal_keep_size", "'256MB'".into());
        kv("max_slot_wal_keep_size", "'1GB'".into());
        kv("hot_standby_feedback", "on".into());
        kv("wal_receiver_status_interval", "'1s'".into());
        kv("wal_retrieve_retry_interval", "'500ms'".into());
        kv("wal_receiver_timeout", "'5s'".into());
        kv("wal_sender_timeout", "'5s'".into());
        kv("password_encryption", "'scram-sha-256'".into());
        kv("synchronous_commit", "on".into());
        kv("synchronous_standby_names", quote_conf(&spec.sync_names));
        kv("recovery_target_timeline", "'latest'".into());
        let ssl = match &self.tls {
            Some(_) => format!(
                " sslmode=verify-ca sslrootcert={} sslcert={}",
                self.copy_ca()?.display(),
                self.no_client_cert().display()
            ),
            None => String::new(),
        };
        match &spec.follow {
            Some((h, p)) => {
                let ci = format!(
                    "host={h} port={p} user={REPLICATION_USER} password={} application_name={} connect_timeout=2{ssl}",
                    self.replication_password, self.name
                );
                kv("primary_conninfo", quote_conf(&ci));
                kv("primary_slot_name", quote_conf(&self.name));
            }
            None => {
                kv("primary_conninfo", "''".into());
                kv("primary_slot_name", "''".into());
            }
        }
        kv(
            "shared_preload_libraries",
            preload_libraries(&spec.extra, crate::statements::EXTENSION),
        );
        for (k, v) in &spec.extra {
            if k != "shared_preload_libraries" {
                kv(k, v.clone());
            }
        }
        self.write_tls(&mut s)?;
        let conf = self.data_dir.join("rampart.conf");
        std::fs::write(&conf, s).map_err(|e| io("write rampart.conf", &conf, e))?;
        self.chown(&conf)?;

        let main = self.data_dir.join("postgresql.conf");
        let text = std::fs::read_to_string(&main).unwrap_or_default();
        if !text.contains("include_if_exists = 'rampart.conf'") {
            let mut t = text;
            t.push_str("\ninclude_if_exists = 'rampart.conf'\n");
            std::fs::write(&main, t).map_err(|e| io("write postgresql.conf", &main, e))?;
            self.chown(&main)?;
        }
        let hba = self.data_dir.join("pg_hba.conf");
        // With replication TLS, a replication connection without TLS matches no line.
        let repl = if self.tls.is_some() {
            "hostssl"
        } else {
            "host"
        };
        let hba_text = format!(
            "# Written by rampart db.\n\
             {repl} replication {REPLICATION_USER} all scram-sha-256\n\
             host all all all scram-sha-256\n"
        );
        std::fs::write(&hba, hba_text).map_err(|e| io("write pg_hba.conf", &hba, e))?;
        self.chown(&hba)?;
        Ok(())
    }

    pub fn set_standby(&self, standby: bool) -> Result<(), DbError> {
        let p = self.data_dir.join("standby.signal");
        if standby {
            std::fs::write(&p, b"").map_err(|e| DbError::Io {
                what: "write standby.signal",
                path: p.clone(),
                source: e,
            })?;
            self.chown(&p)
        } else {
            match std::fs::remove_file(&p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(DbError::Io {
                    what: "remove standby.signal",
                    path: p,
                    source: e,
                }),
            }
        }
    }

    /// Start the postmaster as a child; its output goes to `<data_dir>.log`.
    pub fn spawn(&self) -> Result<Child, DbError> {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| DbError::Io {
                what: "open the postgres log",
                path: log_path.clone(),
                source: e,
            })?;
        let err = log.try_clone().map_err(|e| DbError::Io {
            what: "open the postgres log",
            path: log_path.clone(),
            source: e,
        })?;
        // A stale pid file from a killed postmaster would stop the start.
        let pidfile = self.data_dir.join("postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            let alive = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
                .is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok() && is_postgres(pid));
            if !alive {
                let _ = std::fs::remove_file(&pidfile);
            }
        }
        let mut c = self.cmd("postgres");
        c.arg("-D")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        c.kill_on_drop(false);
        c.spawn().map_err(|e| DbError::Command {
            what: "start postgres",
            detail: e.to_string(),
        })
    }

    /// The superuser connection string (TCP, short timeouts).
    pub fn conninfo(&self) -> String {
        conninfo(&self.host, self.port, &self.superuser_password)
    }
}

impl PgCtl {
    /// A postmaster already running in this data directory that the agent did not start
    /// (its agent and watchdog died): the pid in `postmaster.pid`, alive, a `postgres`
    /// process whose working directory is the data directory.
    pub fn orphan_postmaster(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
            .filter(|&p| p > 0)?;
        if !is_postgres(pid) {
            return None;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        let dir = std::fs::canonicalize(&self.data_dir).ok()?;
        (cwd == dir).then_some(pid)
    }
}

/// Stop a postmaster that is not our child: fast shutdown (a clean checkpoint), then
/// its whole tree killed after `timeout`. Returns once it is gone.
pub async fn stop_orphan(pid: i32, timeout: Duration) {
    let alive = || is_postgres(pid);
    let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
    let deadline = std::time::Instant::now() + timeout;
    while alive() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive() {
        tracing::warn!(pid, "orphaned postgres did not stop in time: killing it");
        kill_tree_and_clean(pid).await;
        while alive() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn is_postgres(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("postgres"))
        .unwrap_or(false)
}

/// Start a fast shutdown (SIGINT) of a postmaster child without waiting: from then on it
/// refuses new sessions and terminates the open ones, so it takes no more writes.
pub fn begin_fast_stop(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
    }
}

/// Stop a postmaster child: fast (SIGINT: checkpoint, ship WAL) or immediate (SIGQUIT).
/// Escalates to SIGKILL of the postmaster and its children after `timeout`.
pub async fn stop_child(child: &mut Child, immediate: bool, timeout: Duration) {
    let Some(pid) = child.id() else { return };
    let pid = Pid::from_raw(pid as i32);
    let _ = kill(
        pid,
        if immediate {
            Signal::SIGQUIT
        } else {
            Signal::SIGINT
        },
    );
    if tokio::time::timeout(timeout, child.wait()).await.is_err() {
        tracing::warn!(
            pid = pid.as_raw(),
            "postgres did not stop in time: killing it"
        );
        kill_tree_and_clean(pid.as_raw()).await;
        let _ = child.wait().await;
    }
}

/// Make the postmaster re-read its configuration (SIGHUP): works while it does not accept
/// connections yet, when `pg_reload_conf()` cannot be called.
pub fn reload_by_signal(pid: i32) -> bool {
    kill(Pid::from_raw(pid), Signal::SIGHUP).is_ok()
}

/// SIGSTOP the postmaster (no new backends) and every child, SIGKILL the children, then
/// the postmaster. Used when a primary must stop accepting writes *now* (the fencing
/// path). Returns the shared memory the postmaster and its children had mapped (read
/// while they were stopped: a dynamic segment a backend created is not always mapped by
/// the postmaster), for the caller to remove with
/// [`rampart_pgshm::Leftover::remove_when_detached`] ([`kill_tree_and_clean`] does both).
pub fn kill_tree(pid: i32) -> rampart_pgshm::Leftover {
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGSTOP);
    let children = children_of(pid);
    for &child in &children {
        let _ = kill(Pid::from_raw(child), Signal::SIGSTOP);
    }
    let mut shm = rampart_pgshm::Leftover::of_process(pid);
    for &child in &children {
        shm.add_mapped_by(child);
    }
    for &child in &children {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    let _ = kill(p, Signal::SIGKILL);
    let _ = kill(p, Signal::SIGCONT);
    shm
}

/// [`kill_tree`], then remove the shared memory the killed processes held once none is
/// attached (a few milliseconds after the kill; at most 1 s, so the loop's fence beat is
/// not missed; off the runtime's threads). PostgreSQL would remove it itself
/// when it next starts on this folder, but an agent that is stopping, or that re-clones
/// the folder, never starts it there again: each such kill held one of the host's
/// `kernel.shmmni` segments for good (CI found one after `rampart down`). Removing it at
/// once is safe: only the killed postmaster's own System V segment and the files they had
/// mapped go, never a later postmaster's.
pub async fn kill_tree_and_clean(pid: i32) {
    let shm = kill_tree(pid);
    if shm.is_empty() {
        return;
    }
    let removed =
        tokio::task::spawn_blocking(move || shm.remove_when_detached(Duration::from_secs(1)))
            .await
            .unwrap_or_default();
    for gone in removed {
        tracing::info!(pid, removed = %gone, "removed the shared memory of the killed postgres");
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{n}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let _state = it.next();
        if it.next().and_then(|s| s.parse::<i32>().ok()) == Some(pid) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parses() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn controldata_parses() {
        let t = "Database cluster state:               shut down\n\
                 Latest checkpoint location:           0/3000028\n\
                 Latest checkpoint's TimeLineID:       2\n";
        let c = parse_controldata(t);
        assert_eq!(c.state, "shut down");
        assert_eq!(c.checkpoint_lsn, 0x3000028);
        assert_eq!(c.timeline, 2);
        assert_eq!(c.clean_shutdown_lsn(), Some(0x3000028));
        // A primary killed while stopping, or stopped in immediate mode.
        for state in ["in production", "shutting down", "in crash recovery"] {
            let c = parse_controldata(&t.replace("shut down", state));
            assert_eq!(c.clean_shutdown_lsn(), None, "{state}");
        }
        // A standby's clean stop says "shut down in recovery": not a primary's end of WAL.
        let c = parse_controldata(&t.replace("shut down", "shut down in recovery"));
        assert_eq!(c.clean_shutdown_lsn(), None);
    }

    #[test]
    fn pg_stat_statements_is_preloaded_beside_the_operators_libraries() {
        let p = |v: &str| vec![("shared_preload_libraries".to_string(), v.to_string())];
        assert_eq!(
            preload_libraries(&[], crate::statements::EXTENSION),
            "'pg_stat_statements'"
        );
        assert_eq!(
            preload_libraries(&p("'auto_explain'"), crate::statements::EXTENSION),
            "'auto_explain,pg_stat_statements'"
        );
        assert_eq!(
            preload_libraries(
                &p("'pg_stat_statements, auto_explain'"),
                crate::statements::EXTENSION
            ),
            "'pg_stat_statements,auto_explain'"
        );
        assert_eq!(
            preload_libraries(&p("''"), crate::statements::EXTENSION),
            "'pg_stat_statements'"
        );
    }

    #[test]
    fn identify_system_answer() {
        assert_eq!(
            parse_identify_system("7712518533157291462|3|0/1500790|\n"),
            Some(3)
        );
        assert_eq!(
            parse_identify_system("psql: error: connection refused\n"),
            None
        );
        assert_eq!(parse_identify_system("1|0|0/0|"), None);
    }
}
