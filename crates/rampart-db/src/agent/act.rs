//! Carrying out what [`decide`] chose: one arm per [`Action`] (start, clone, rewind,
//! promote, demote, take or release the leader key, ...).

use super::*;

impl Agent {
    pub(super) async fn act(
        &mut self,
        action: &Action,
        keys: &Keys,
        obs: &Observed,
    ) -> Result<(), DbError> {
        match action {
            Action::Wait(_) => Ok(()),
            Action::Bootstrap => self.bootstrap().await,
            Action::Clone { from } => {
                let (h, p) = self.node_addr(from)?;
                tracing::info!(from = %from, "cloning the leader with pg_basebackup");
                self.long(self.ctl.basebackup(&h, p)).await?;
                self.start_pg(false, Some(from)).await
            }
            Action::Start {
                primary,
                follow,
                rewind,
            } => {
                let mut rewind = *rewind;
                if !*primary && follow.is_some() && !rewind {
                    // Data that last ran as a primary (whatever standby.signal says), or a
                    // replica that keeps failing to start (timeline not a child of ours):
                    // rewind onto the leader first.
                    if self.start_failures >= 2 {
                        tracing::warn!(
                            failures = self.start_failures,
                            "postgres keeps failing to start as a replica: rewinding"
                        );
                        rewind = true;
                    } else if let Ok(cd) = self.ctl.controldata().await {
                        rewind = cd.state == "in production" || cd.state == "shut down";
                    }
                }
                if rewind {
                    if let Some(l) = follow {
                        self.rewind_or_reclone(l).await?;
                    }
                }
                if *primary {
                    // Restart of a primary that still holds the key: keep the sync standby it published.
                    self.sync_configured = keys
                        .sync
                        .as_ref()
                        .filter(|s| s.leader == self.node.name)
                        .and_then(|s| s.sync_standby.clone());
                }
                let r = self.start_pg(*primary, follow.as_deref()).await;
                if r.is_err() {
                    self.start_failures += 1;
                }
                r
            }
            Action::LeadRenew => {
                let tl = match &obs.pg {
                    Pg::Running(pg) if !pg.in_recovery => pg.timeline,
                    _ => 0,
                };
                self.lead(keys, obs.dcs_ok, tl).await
            }
            Action::TakeLeader { reason } => {
                if self.take_leader().await? {
                    // What the election compared, for whoever reads the log after a failover.
                    let me = match &obs.pg {
                        Pg::Running(p) => {
                            format!("tl {} lsn {}", p.timeline, crate::ops::fmt_lsn(p.wal_lsn))
                        }
                        _ => "not running".into(),
                    };
                    let peers = obs
                        .peers
                        .iter()
                        .map(|p| {
                            let role = if p.starting {
                                "starting"
                            } else if !p.running {
                                "stopped"
                            } else if p.in_recovery {
                                "replica"
                            } else {
                                "primary"
                            };
                            format!(
                                "{} {role} tl {}{} lsn {} seen {:.1}s",
                                p.name,
                                p.timeline,
                                if p.timeline_known { "" } else { "?" },
                                crate::ops::fmt_lsn(p.wal_lsn),
                                p.seen_for.as_secs_f64()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::info!(reason, me = %me, peers = %peers, "promoting");
                    if matches!(
                        obs.pg,
                        Pg::Running(PgRunning {
                            in_recovery: true,
                            ..
                        })
                    ) {
                        self.promote(keys).await?;
                    }
                }
                Ok(())
            }
            Action::Promote => self.promote(keys).await,
            Action::Demote {
                mode,
                release,
                reason,
            } => {
                tracing::warn!(reason, mode = ?mode, "demoting: stopping writes");
                self.stop_postgres(*mode).await;
                self.demoted = true;
                if *release {
                    let cd = self.ctl.controldata().await?;
                    if let Some((f, rev)) = &keys.failover {
                        match cd.clean_shutdown_lsn() {
                            Some(end) => {
                                // Keep the request under its lease (it still expires).
                                let lease = keys.failover_key.map(|(_, l)| l).filter(|&l| l != 0);
                                let mut f = f.clone();
                                f.min_lsn = Some(end);
                                let unchanged = crate::leader_keys::unchanged(
                                    &self.cfg.cluster,
                                    "failover",
                                    *rev,
                                );
                                if let Err(e) = self
                                    .put_leader_only("failover", &f, Some(unchanged), lease)
                                    .await
                                {
                                    tracing::warn!(error = %e, "cannot record the last WAL position for the switchover");
                                }
                            }
                            None => {
                                // Not a clean stop: the end of our WAL is unknown, so no
                                // target can be shown to have it. Withdraw the request:
                                // the failover rules choose (in synchronous mode, only
                                // the synchronous standby).
                                tracing::warn!(state = %cd.state, checkpoint = %crate::ops::fmt_lsn(cd.checkpoint_lsn),
                                    "postgres did not shut down cleanly: no switchover; withdrawing the request, failover rules apply");
                                self.delete_failover_as_leader(*rev).await;
                            }
                        }
                    }
                    if let Some(kv) = &keys.leader {
                        self.coord
                            .delete_if(&self.key("leader"), kv.mod_revision)
                            .await?;
                    }
                    tracing::info!(last_lsn = cd.checkpoint_lsn, "released the leader key");
                }
                // After the release: on a full disk even this small write may fail.
                self.ctl.set_standby(true)?;
                Ok(())
            }
            Action::Follow { leader } => {
                if self.following.as_ref() != Some(leader) {
                    tracing::info!(leader = ?leader, "pointing replication at the leader");
                    self.ctl.write_conf(&self.conf(leader.as_deref())?)?;
                    self.conn.reload().await?;
                    self.following = Some(leader.clone());
                    self.not_streaming_since = None;
                }
                if obs.pg != Pg::NoData {
                    if let Pg::Running(r) = &obs.pg {
                        if r.streaming {
                            self.not_streaming_since = None;
                            self.stuck_rewinds = 0;
                            self.start_failures = 0;
                        } else {
                            self.not_streaming_since.get_or_insert_with(Instant::now);
                        }
                    }
                }
                Ok(())
            }
            Action::Rewind { from } => {
                let (h, p) = self.node_addr(from)?;
                if !PgCtl::reachable(&h, p).await {
                    // Not streaming because the leader is dead: nothing to repair here; its
                    // key expires and a new leader is chosen.
                    tracing::warn!(leader = %from, "not streaming, but the leader's PostgreSQL is unreachable: waiting (no rewind)");
                    return Ok(());
                }
                self.stop_postgres(StopMode::Fast).await;
                if self.stuck_rewinds >= 1 {
                    // Rewinding did not get us streaming: the WAL we need is gone (node down
                    // too long, slot invalidated). Only a fresh copy helps.
                    tracing::warn!(leader = %from, "still not streaming after a rewind (WAL gone?): re-cloning from the leader");
                    let (h, p) = self.node_addr(from)?;
                    self.long(self.ctl.basebackup(&h, p)).await?;
                    self.stuck_rewinds = 0;
                } else {
                    tracing::warn!(leader = %from, postgres_says = %last_problem(&self.ctl.log_path()),
                        "replica cannot follow the leader (timeline diverged, or not streaming for too long): rewinding (re-cloning if that fails)");
                    self.rewind_or_reclone(from).await?;
                    self.stuck_rewinds += 1;
                }
                self.start_pg(false, Some(from)).await
            }
            Action::ReleaseLeader { reason } => {
                tracing::warn!(reason, "releasing the leader key");
                if let Some(kv) = &keys.leader {
                    self.coord
                        .delete_if(&self.key("leader"), kv.mod_revision)
                        .await?;
                }
                Ok(())
            }
        }
    }
}
