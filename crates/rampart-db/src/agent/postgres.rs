//! The agent's PostgreSQL process: started as primary or replica, stopped, killed,
//! rewound or re-cloned from the leader, and what its log says about why it does not
//! come up.

use super::*;

impl Agent {
    pub(super) async fn start_pg(
        &mut self,
        primary: bool,
        follow: Option<&str>,
    ) -> Result<(), DbError> {
        let spec = self.conf(follow)?;
        self.ctl.write_conf(&spec)?;
        self.ctl.set_standby(!primary)?;
        let child = self.ctl.spawn()?;
        if let Some(pid) = child.id() {
            self.fence.lock().watch(pid);
        }
        tracing::info!(primary, follow = ?follow, pid = ?child.id(), "postgres started");
        self.started_at = Some(Instant::now());
        self.child = Some(child);
        self.check_pending = true;
        self.following = Some(follow.map(String::from));
        self.pointed_at_leader_since = follow.map(|_| Instant::now());
        self.not_streaming_since = None;
        self.demoted = false;
        self.conn.reset();
        if primary {
            if let Err(e) = self.arm_watchdog() {
                self.kill_postgres().await;
                return Err(e);
            }
        }
        // Wait until it answers (crash recovery may take a moment). A replica that takes
        // longer (a long recovery, or WAL it must receive first) is left starting: the
        // loop goes on — lease, member record, pointing it at the leader — and watches it.
        let wait = if primary {
            Duration::from_secs(60)
        } else {
            (self.cfg.loop_wait * 4).max(Duration::from_secs(2))
        };
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            // A crash recovery may take long: the loop is alive meanwhile (the keeper
            // renews; the watchdog stays armed with each renewal's deadline).
            self.fence.beat();
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    // Down since the first failed start, not this one (PRIMARY_START_TIMEOUT).
                    self.pg_down_since.get_or_insert_with(Instant::now);
                    self.fence.lock().unwatch();
                    return Err(DbError::Other(format!(
                        "postgres exited during start-up ({st}): {}",
                        last_problem(&self.ctl.log_path())
                    )));
                }
            }
            if self.conn.status().await.is_ok() {
                self.pg_down_since = None;
                return Ok(());
            }
            if primary && !self.lease_ok() {
                return Err(DbError::Other(
                    "lease ran out while postgres was starting".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !primary {
            tracing::info!(
                waited_ms = wait.as_millis() as u64,
                "replica postgres not answering yet (recovering): leaving it starting"
            );
            return Ok(());
        }
        Err(DbError::Other(
            "postgres did not answer within 60 s of starting".into(),
        ))
    }

    pub(super) async fn kill_postgres(&mut self) {
        self.unpublish_writable();
        if let Some(mut c) = self.child.take() {
            self.fence.lock().unwatch();
            if let Some(pid) = c.id() {
                pg::kill_tree_and_clean(pid as i32).await;
            }
            let _ = c.wait().await;
        }
        self.conn.reset();
        self.pg_down_since = Some(Instant::now());
    }

    pub(super) async fn stop_postgres(&mut self, mode: StopMode) {
        self.unpublish_writable();
        if let Some(mut c) = self.child.take() {
            self.fence.lock().unwatch();
            match mode {
                StopMode::Immediate => {
                    if let Some(pid) = c.id() {
                        pg::kill_tree_and_clean(pid as i32).await;
                    }
                    let _ = c.wait().await;
                }
                StopMode::Fast => pg::stop_child(&mut c, false, Duration::from_secs(30)).await,
            }
        }
        self.conn.reset();
        self.pg_down_since = Some(Instant::now());
    }

    pub(super) async fn rewind_or_reclone(&mut self, from: &str) -> Result<(), DbError> {
        let (h, p) = self.node_addr(from)?;
        if !PgCtl::reachable(&h, p).await {
            return Err(DbError::Other(format!(
                "leader {from} ({h}:{p}) unreachable: cannot rewind from it now"
            )));
        }
        if self.start_failures >= 4 {
            tracing::warn!(leader = %from, failures = self.start_failures, "rewinding did not help: re-cloning from the leader");
            return self.long(self.ctl.basebackup(&h, p)).await;
        }
        match self.long(self.ctl.rewind(&h, p)).await {
            Ok(out) => {
                tracing::info!(leader = %from, output = %out.lines().last().unwrap_or(""), "pg_rewind done");
                Ok(())
            }
            Err(e) => {
                if !PgCtl::reachable(&h, p).await {
                    // A lost connection is not a failed rewind: never re-clone from a dead leader.
                    return Err(e);
                }
                tracing::warn!(leader = %from, error = %e, "pg_rewind failed: re-cloning from the leader");
                self.long(self.ctl.basebackup(&h, p)).await
            }
        }
    }
}

/// Since its last start, did PostgreSQL say the leader's timeline forked off before our
/// recovery point? (pg_rewind can wrongly answer "no rewind required" for a crashed
/// primary whose crash recovery wrote a checkpoint past the fork.)
pub(super) fn diverged_in_log(log: &std::path::Path) -> bool {
    let tail = log_tail(log);
    let since_start = tail.rsplit("starting PostgreSQL").next().unwrap_or("");
    since_start.contains("forked off current database system timeline")
}

/// A replica that streamed to the end of its timeline on the leader and found no newer
/// one to switch to (it had replayed past the fork point), and waits for WAL that will
/// never come: only a rewind or a new copy helps.
pub(super) fn stuck_at_timeline_end(log: &std::path::Path) -> bool {
    let tail = log_tail(log);
    let since_start = tail.rsplit("starting PostgreSQL").next().unwrap_or("");
    let Some(end) = [
        "End of WAL reached on timeline",
        "contains no more WAL on requested timeline",
    ]
    .iter()
    .filter_map(|m| since_start.rfind(m))
    .max() else {
        return false;
    };
    let switched = since_start
        .rfind("new target timeline is")
        .is_some_and(|i| i > end);
    !switched && since_start[end..].contains("waiting for WAL to become available")
}

fn log_tail(log: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last FATAL/ERROR/PANIC line of the postgres log (for the agent's own log lines).
pub(super) fn last_problem(log: &std::path::Path) -> String {
    let text = log_tail(log);
    text.lines()
        .rev()
        .find(|l| l.contains("FATAL") || l.contains("ERROR") || l.contains("PANIC"))
        .unwrap_or("")
        .to_string()
}

pub(super) fn find_pg_bin() -> Option<std::path::PathBuf> {
    for v in ["17", "16", "15"] {
        let d = std::path::PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if d.join("postgres").is_file() {
            return Some(d);
        }
    }
    None
}

/// The postgres user must be able to reach the data directory.
pub(super) fn check_parent_access(ctl: &PgCtl) -> Result<(), DbError> {
    use std::os::unix::fs::PermissionsExt;
    if ctl.run_as.is_none() {
        return Ok(());
    }
    let mut p = ctl.data_dir.parent();
    while let Some(d) = p {
        if let Ok(md) = std::fs::metadata(d) {
            if md.permissions().mode() & 0o001 == 0 {
                return Err(DbError::Config(format!(
                    "{} is not searchable by others (mode {:o}): the postgres user cannot reach {}",
                    d.display(),
                    md.permissions().mode() & 0o777,
                    ctl.data_dir.display()
                )));
            }
        }
        p = d.parent();
    }
    Ok(())
}

/// Less than 64 MB, or less than 1% capped at 1 GB, left on the data directory's file
/// system (1% of a large shared disk is gigabytes PostgreSQL can still use).
pub(super) fn disk_nearly_full(dir: &std::path::Path) -> bool {
    let probe = if dir.exists() {
        dir.to_path_buf()
    } else {
        dir.parent().map(|p| p.to_path_buf()).unwrap_or_default()
    };
    match nix::sys::statvfs::statvfs(&probe) {
        Ok(s) => {
            let avail = s.blocks_available() as u128 * s.fragment_size() as u128;
            let total = s.blocks() as u128 * s.fragment_size() as u128;
            const MB: u128 = 1024 * 1024;
            total > 0 && avail < (total / 100).clamp(64 * MB, 1024 * MB)
        }
        Err(_) => false,
    }
}
