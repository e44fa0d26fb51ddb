//! What an operator asks of this one node (Patroni's `POST /reload`, `/restart` and
//! `/reinitialize`, `patronictl reload`, `restart` and `reinit`): re-read the topology file
//! and apply its `[db.parameters]` to the running PostgreSQL, restart PostgreSQL in place
//! (the primary stays the primary: its lease is renewed throughout), and rebuild a
//! replica from a fresh copy of the leader. Requests come from the API
//! and from SIGHUP, and are served between two turns of the loop, never inside one.

use tokio::sync::oneshot;

use super::*;

/// A request for this node's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalOp {
    /// Re-read the topology file; apply `[db.parameters]` with a configuration reload.
    Reload,
    /// Restart PostgreSQL (fast shutdown, then started again in the role the cluster gives
    /// it); with `pending_only`, only when a changed setting waits for a restart.
    Restart { pending_only: bool },
    /// A replica only: stop PostgreSQL, replace its data with a fresh copy of the leader
    /// (pg_basebackup), start it again (Patroni's reinit). Answered when the copy starts.
    Reinit,
}

/// A request and where its answer goes: `Ok` with what was done, `Err` with why not.
pub struct LocalRequest {
    pub op: LocalOp,
    pub reply: oneshot::Sender<Result<String, String>>,
}

impl Agent {
    /// Serve one request. A restart's answer waits until PostgreSQL answers again
    /// ([`Agent::answer_restart`]); every other answer goes now.
    pub(super) async fn serve_op(&mut self, r: LocalRequest) {
        match r.op {
            LocalOp::Reload => {
                let answer = self.reload().await;
                match &answer {
                    Ok(m) => tracing::info!(result = %m, "configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "configuration reload refused"),
                }
                let _ = r.reply.send(answer);
            }
            LocalOp::Reinit => match self.reinit_source() {
                Err(e) => {
                    let _ = r.reply.send(Err(e));
                }
                Ok(leader) => {
                    let _ = r.reply.send(Ok(format!(
                        "reinitializing from {leader}: postgres stopped, cloning the leader"
                    )));
                    self.reinit_from(&leader).await;
                }
            },
            LocalOp::Restart { pending_only } => {
                if pending_only && self.pending_restart.is_empty() {
                    let _ = r.reply.send(Ok("no restart pending: nothing done".into()));
                    return;
                }
                if self.child.is_none() {
                    let _ = r
                        .reply
                        .send(Err("postgres is not running on this node".into()));
                    return;
                }
                if let Some(old) = self.restart_reply.take() {
                    let _ = old.0.send(Err("superseded by another restart".into()));
                }
                self.restart_pg().await;
                self.restart_reply = Some((r.reply, Instant::now()));
            }
        }
    }

    /// Re-read the topology file. A file that does not load changes nothing (the error
    /// says where and why); `[db.parameters]` apply now, anything else changed is named
    /// and waits for the agent's restart.
    async fn reload(&mut self) -> Result<String, String> {
        let Some(path) = self.config_path.clone() else {
            return Err("this agent was not started from a topology file".into());
        };
        let new = DbConfig::load(&path)
            .map_err(|e| format!("{e}\nthe running configuration stays as it was"))?;
        if new.node(&self.node.name).is_none() {
            return Err(format!(
                "{}: node \"{}\" is no longer in [[db.nodes]]; the running configuration stays",
                path.display(),
                self.node.name
            ));
        }
        let mut notes = Vec::new();
        let mut rest = new.clone();
        rest.parameters = self.cfg.parameters.clone();
        if rest != self.cfg {
            notes.push(
                "settings besides [db.parameters] changed: they take effect when the agent restarts"
                    .to_string(),
            );
        }
        if new.parameters == self.cfg.parameters {
            notes.insert(0, "[db.parameters] unchanged".into());
        } else {
            self.cfg.parameters = new.parameters;
            if self.child.is_some() {
                // The file PostgreSQL reads, for the role it runs in now.
                let follow = self.following.clone().flatten();
                let spec = self.conf(follow.as_deref()).map_err(|e| e.to_string())?;
                self.ctl.write_conf(&spec).map_err(|e| e.to_string())?;
                self.conn
                    .reload()
                    .await
                    .map_err(|e| format!("configuration written, but pg_reload_conf(): {e}"))?;
                notes.insert(0, "[db.parameters] applied (pg_reload_conf)".into());
            } else {
                notes.insert(
                    0,
                    "[db.parameters] kept for the next start of postgres".into(),
                );
            }
        }
        // pg_reload_conf() signals the postmaster, which signals every backend: ours sees
        // the new file a moment later. Read after that moment, and again every turn for a
        // while (`read_pending_restart`), so that a late one is still seen.
        tokio::time::sleep(RELOAD_SETTLE).await;
        self.check_pending = true;
        self.read_pending_restart().await;
        self.check_pending_until = Some(Instant::now() + PENDING_RECHECK);
        if !self.pending_restart.is_empty() {
            notes.push(format!(
                "pending restart: {} (rampart db restart --pending)",
                self.pending_restart.join(", ")
            ));
        }
        Ok(notes.join("; "))
    }

    /// The leader a reinit copies, or why there is none to copy (Patroni's refusals).
    fn reinit_source(&self) -> Result<String, String> {
        if self.is_primary_running() || self.last_leader.as_deref() == Some(&self.node.name) {
            return Err("I am the leader, can not reinitialize".into());
        }
        match &self.last_leader {
            Some(l) => Ok(l.clone()),
            None => Err("no leader to copy from: can not reinitialize now".into()),
        }
    }

    /// Stop PostgreSQL and replace its data with a copy of `leader` (built beside the old
    /// directory, which stays if the copy fails); the next turn starts it as a replica.
    /// Runs as a long operation: the loop's lease and member key stay alive.
    async fn reinit_from(&mut self, leader: &str) {
        tracing::warn!(
            leader,
            "reinitialize (operator request): stopping postgres and copying the leader"
        );
        self.restart_pg().await;
        let (h, p) = match self.node_addr(leader) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "reinitialize failed: the leader's address");
                return;
            }
        };
        let t = Instant::now();
        match self.long(self.ctl.basebackup(&h, p)).await {
            Ok(()) => {
                tracing::info!(
                    leader,
                    seconds = t.elapsed().as_secs_f64(),
                    "reinitialized: a fresh copy of the leader, starting as a replica"
                );
                self.start_failures = 0;
                self.stuck_rewinds = 0;
                // As after a first clone: a replica of the leader at once.
                if let Err(e) = self.start_pg(false, Some(leader)).await {
                    tracing::warn!(error = %e, "the reinitialized replica did not start yet; the loop retries");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reinitialize failed; the old data directory stays")
            }
        }
    }

    /// Fast shutdown of our PostgreSQL; the next turn starts it again. The primary keeps
    /// its key: the lease keeper renews it while this loop beats, as through a crash
    /// recovery.
    async fn restart_pg(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        tracing::info!(pending = ?self.pending_restart, "restarting postgres (operator request)");
        pg::begin_fast_stop(&c);
        self.fence.lock().unwatch();
        self.long(pg::stop_child(&mut c, false, Duration::from_secs(20)))
            .await;
        self.conn.reset();
        self.pg_down_since = Some(Instant::now());
        self.check_pending = true;
    }

    /// Answer a restart once PostgreSQL answers again (`running`), or say it did not
    /// within a minute.
    pub(super) fn answer_restart(&mut self, running: bool) {
        let Some((_, since)) = &self.restart_reply else {
            return;
        };
        let late = since.elapsed() > RESTART_WAIT;
        if !running && !late {
            return;
        }
        if let Some((reply, since)) = self.restart_reply.take() {
            let _ = reply.send(if running {
                Ok(format!(
                    "postgres restarted ({:.1} s)",
                    since.elapsed().as_secs_f64()
                ))
            } else {
                Err(format!(
                    "postgres did not answer within {} s of its restart; the agent keeps trying",
                    RESTART_WAIT.as_secs()
                ))
            });
        }
    }

    /// `pg_settings.pending_restart`, when a reload or a start may have changed it.
    pub(super) async fn read_pending_restart(&mut self) {
        if let Some(t) = self.check_pending_until {
            if Instant::now() < t {
                self.check_pending = true;
            } else {
                self.check_pending_until = None;
            }
        }
        if !self.check_pending || self.child.is_none() {
            return;
        }
        match self.conn.pending_restart().await {
            Ok(names) => {
                if names != self.pending_restart {
                    if names.is_empty() {
                        tracing::info!("no setting waits for a restart any more");
                    } else {
                        tracing::warn!(settings = %names.join(", "), "settings changed that take effect only when postgres restarts");
                    }
                }
                self.pending_restart = names;
                self.check_pending = false;
            }
            Err(e) => tracing::debug!(error = %e, "cannot read pending_restart yet"),
        }
    }
}

/// How long a restart request waits for PostgreSQL to answer again.
const RESTART_WAIT: Duration = Duration::from_secs(60);
/// After `pg_reload_conf()`: the wait before reading `pending_restart`, and how long it is
/// read again every turn.
const RELOAD_SETTLE: Duration = Duration::from_millis(200);
const PENDING_RECHECK: Duration = Duration::from_secs(5);

/// The next SIGHUP (never, when the handler could not be installed).
pub(super) async fn hangup(h: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match h {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    }
}
