//! What only the leader does: take the key, promote, bootstrap, keep the synchronous
//! standby and the other leader-only keys (written under the leader key's revision).

use super::*;

/// The longest a promotion may take (the loop keeps the lease meanwhile).
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a leader that just made a standby synchronous waits, in the same loop, for
/// it to confirm the mark so that it is published at once.
const SYNC_PUBLISH_WAIT: Duration = Duration::from_secs(1);

impl Agent {
    /// The leader records its timeline in `/timeline` (no lease: it outlives the leader).
    pub(super) async fn record_timeline(&self, keys: &Keys, timeline: u32) {
        if timeline == 0
            || keys
                .timeline
                .as_ref()
                .is_some_and(|(t, _)| t.timeline == timeline)
        {
            return;
        }
        let v = TimelineValue {
            timeline,
            leader: self.node.name.clone(),
        };
        let rev = keys.timeline.as_ref().map(|(_, r)| *r).unwrap_or(0);
        let unchanged = crate::leader_keys::unchanged(&self.cfg.cluster, "timeline", rev);
        match self
            .put_leader_only("timeline", &v, Some(unchanged), None)
            .await
        {
            Ok(()) => tracing::info!(timeline, "recorded the cluster's timeline"),
            Err(e) => {
                tracing::debug!(error = %e, "/timeline not recorded this loop");
                return;
            }
        }
        // A change of leader onto a new timeline (not the bootstrap's first record) goes
        // into `/history` too, with when and who (Patroni's history); best effort: it
        // informs operators and decides nothing.
        if keys.timeline.is_none() {
            return;
        }
        let (mut list, rev) = keys.history.clone().unwrap_or_default();
        list.push(dcs::HistoryEntry {
            timeline,
            leader: self.node.name.clone(),
            at_ms: dcs::unix_ms(),
        });
        let cut = list.len().saturating_sub(dcs::HISTORY_KEPT);
        list.drain(..cut);
        let unchanged = crate::leader_keys::unchanged(&self.cfg.cluster, "history", rev);
        if let Err(e) = self
            .put_leader_only("history", &list, Some(unchanged), None)
            .await
        {
            tracing::warn!(error = %e, "the change of leader was not added to /history");
        }
    }

    pub(super) async fn take_leader(&mut self) -> Result<bool, DbError> {
        let Some(lease) = self.fence.lease() else {
            return Ok(false);
        };
        let rev = self
            .coord
            .create_revision(&self.key("leader"), self.node.name.as_bytes(), Some(lease))
            .await?;
        if let Some(r) = rev {
            tracing::info!(revision = r, "took the leader key");
            self.took_key = true;
            self.leader_rev = Some(r);
        }
        Ok(rev.is_some())
    }

    /// The leader key names this node but hangs on another lease: one a previous run of
    /// this agent took (killed, restarted). Move it onto this run's lease before that one
    /// expires, as Patroni does, atomically with checking it is still the key that was read;
    /// else the key lapses under a primary this run is about to start or keep, and a
    /// replica takes over for nothing. `keys.leader` ends as etcd has it now.
    pub(super) async fn adopt_leader_key(&mut self, keys: &mut Keys) {
        let Some(lease) = self.fence.lease() else {
            return;
        };
        let Some(kv) = keys.leader.as_mut() else {
            return;
        };
        if kv.value_str() != self.node.name || kv.lease == lease || !self.lease_ok() {
            return;
        }
        let old = kv.lease;
        match self
            .coord
            .swap_revision(&kv.key, kv.mod_revision, &kv.value, Some(lease))
            .await
        {
            Ok(Some(rev)) => {
                tracing::info!(
                    old_lease = old,
                    lease,
                    revision = rev,
                    "the leader key an earlier run of this agent took: moved onto this run's lease"
                );
                kv.mod_revision = rev;
                kv.lease = lease;
            }
            Ok(None) => {
                tracing::info!(
                    "the leader key changed before it could be moved onto this run's lease"
                );
                self.reread_leader(keys).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot move the leader key onto this run's lease");
                self.reread_leader(keys).await;
            }
        }
    }

    /// Read `/leader` again; unknown counts as vacant (the conservative reading: a
    /// primary without the key may not write).
    async fn reread_leader(&self, keys: &mut Keys) {
        keys.leader = self.coord.get(&self.key("leader")).await.ok().flatten();
    }

    pub(super) async fn promote(&mut self, keys: &Keys) -> Result<(), DbError> {
        // Primary settings first: no upstream; synchronous names start empty ('*' strict).
        self.sync_configured = None;
        self.ctl.write_conf(&self.conf(None)?)?;
        self.conn.reload().await?;
        if self.cfg.synchronous {
            // Before the first write is possible: from now on only this node may take over
            // (it is the only one with every commit it will acknowledge).
            let v = SyncValue {
                leader: self.node.name.clone(),
                sync_standby: None,
            };
            self.put_leader_only("sync", &v, None, None).await?;
        }
        let t = Instant::now();
        // Fence first: from pg_promote on this postmaster may take writes, so the
        // watchdog holds the lease deadline before it (re-armed at every renewal).
        self.arm_watchdog()?;
        match self.conn.request_promotion().await {
            Ok(true) => {}
            Ok(false) => {
                self.kill_postgres().await;
                return Err(DbError::Other("pg_promote refused".into()));
            }
            Err(e) => {
                // It may still happen: never leave it unwatched by the loop.
                tracing::warn!(error = %e, "promotion failed: stopping postgres");
                self.kill_postgres().await;
                return Err(e);
            }
        }
        // The promotion may be slow (the rest of the received WAL to replay, a slow
        // disk): the loop stays alive meanwhile, so the keeper renews the lease; it ends
        // at the lease deadline if renewals fail, or after PROMOTE_TIMEOUT.
        let promoted = loop {
            self.fence.beat();
            if !self.lease_ok() || t.elapsed() > PROMOTE_TIMEOUT {
                break false;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break false;
                }
            }
            if let Ok(false) = self.conn.in_recovery().await {
                break true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if !promoted {
            tracing::warn!(
                waited_ms = t.elapsed().as_millis() as u64,
                lease_ok = self.lease_ok(),
                "promotion did not finish (lease deadline, postgres gone or PROMOTE_TIMEOUT): stopping postgres"
            );
            self.kill_postgres().await;
            return Err(DbError::Other(
                "the promotion did not finish in time".into(),
            ));
        }
        self.following = Some(None);
        // Tell load balancers and writers at once, not after the slots and the publish
        // below: we hold the key under a valid lease and PostgreSQL takes writes.
        if let Ok(mut s) = self.shared.lock() {
            s.writable_leader = true;
            s.writable_until = self.valid_until();
            if let Some(n) = s.node.as_mut() {
                n.leader_until = self.valid_until();
                n.writable_until = self.valid_until();
                if let crate::api::patroni::PgView::Running(r) = &mut n.pg {
                    r.primary = true;
                }
            }
        }
        self.metrics.promotions.inc();
        tracing::info!(
            took_ms = t.elapsed().as_millis() as u64,
            "promoted to primary"
        );
        if let Ok(st) = self.conn.status().await {
            self.record_timeline(keys, st.timeline).await;
        }
        if let Some((f, rev)) = &keys.failover {
            if f.to.as_deref() == Some(self.node.name.as_str()) || f.to.is_none() {
                self.delete_failover_as_leader(*rev).await;
            }
        }
        self.ensure_slots().await;
        Ok(())
    }

    pub(super) fn leader_token(&self) -> Option<crate::leader_keys::LeaderToken> {
        self.leader_rev
            .map(|revision| crate::leader_keys::LeaderToken {
                cluster: self.cfg.cluster.clone(),
                name: self.node.name.clone(),
                revision,
            })
    }

    /// Write a leader-only key, refused unless this node still holds the leader key it
    /// took (and `extra` holds): an error then, nothing written.
    pub(super) async fn put_leader_only<T: serde::Serialize>(
        &self,
        k: &str,
        v: &T,
        extra: Option<rampart_coord::Guard>,
        lease: Option<LeaseId>,
    ) -> Result<(), DbError> {
        let body = serde_json::to_vec(v).map_err(|e| DbError::Other(e.to_string()))?;
        let Some(token) = self.leader_token() else {
            return Err(DbError::Other(format!(
                "not holding the leader key: /{k} not written"
            )));
        };
        if !crate::leader_keys::put(&self.coord, &token, k, &body, extra, lease).await? {
            return Err(DbError::Other(format!(
                "/{k} not written: the leader key is no longer the one this node took (or /{k} changed)"
            )));
        }
        Ok(())
    }

    /// The leader removes a handled or stale `/failover` (as last read), while it leads.
    pub(super) async fn delete_failover_as_leader(&self, rev: i64) {
        if let Some(token) = self.leader_token() {
            let extra = crate::leader_keys::unchanged(&self.cfg.cluster, "failover", rev);
            let _ = crate::leader_keys::delete(&self.coord, &token, "failover", Some(extra)).await;
        }
    }

    pub(super) async fn ensure_slots(&mut self) {
        let names: Vec<String> = self
            .cfg
            .nodes
            .iter()
            .filter(|n| n.name != self.node.name)
            .map(|n| n.name.clone())
            .collect();
        if let Err(e) = self.conn.ensure_slots(&names).await {
            tracing::warn!(error = %e, "cannot create replication slots");
        }
    }

    pub(super) async fn bootstrap(&mut self) -> Result<(), DbError> {
        let won = self
            .coord
            .create(&self.key("initialize"), self.node.name.as_bytes(), None)
            .await?;
        if !won {
            return Ok(());
        }
        tracing::info!("won the initialize race: running initdb");
        let r = async {
            self.bootstrapping = true;
            self.long(self.ctl.initdb()).await?;
            // initdb takes longer than a lease: renew (or regrant) before taking the key.
            if !self.renew_lease().await || !self.lease_ok() {
                return Err(DbError::Other("cannot renew the lease after initdb".into()));
            }
            self.start_pg(true, None).await?;
            self.conn
                .ensure_replication_user(&self.cfg.replication_password)
                .await?;
            if !self.renew_lease().await || !self.take_leader().await? {
                return Err(DbError::Other(
                    "cannot take the leader key after bootstrap".into(),
                ));
            }
            if self.cfg.synchronous {
                let v = SyncValue {
                    leader: self.node.name.clone(),
                    sync_standby: None,
                };
                self.put_leader_only("sync", &v, None, None).await?;
            }
            self.ensure_slots().await;
            self.bootstrapping = false;
            if self.cfg.synchronous_strict {
                // From now on strict: no acknowledged write without a synchronous standby.
                self.ctl.write_conf(&self.conf(None)?)?;
                self.conn.reload().await?;
            }
            Ok(())
        }
        .await;
        self.bootstrapping = false;
        if let Err(e) = &r {
            tracing::error!(error = %e, "bootstrap failed: giving the initialize key back");
            self.kill_postgres().await;
            let _ = std::fs::remove_dir_all(&self.ctl.data_dir);
            let _ = self.coord.delete(&self.key("initialize")).await;
            let _ = self.coord.delete(&self.key("leader")).await;
        } else {
            tracing::info!("bootstrapped: this node is the primary");
        }
        r
    }

    pub(super) async fn lead(
        &mut self,
        keys: &Keys,
        dcs_ok: bool,
        timeline: u32,
    ) -> Result<(), DbError> {
        if !dcs_ok {
            // Nothing to do but renew (done) before the deadline; no etcd call may delay it.
            return Ok(());
        }
        if keys.leader.is_none() {
            // Paused with the key gone, or a racing read: take it back.
            self.take_leader().await?;
        }
        // Whatever the key holder runs on is the cluster's timeline (also after an
        // operator forced a failover onto an older branch).
        self.record_timeline(keys, timeline).await;
        if self.loops % 4 == 1 {
            self.ensure_slots().await;
        }
        if let Some((f, rev)) = &keys.failover {
            // Requests under a lease expire in etcd; this removes one written without.
            if self
                .failover_due
                .is_some_and(|(_, at)| at.elapsed() > decide::FAILOVER_REQUEST_TIMEOUT)
            {
                tracing::warn!(to = ?f.to, "dropping a stale switchover request");
                self.delete_failover_as_leader(*rev).await;
            }
        }
        if !self.cfg.synchronous {
            return Ok(());
        }
        self.fence.beat();
        if self.sync_unconfirmed {
            self.confirm_sync_setting().await?;
        }
        let published = keys.sync.as_ref().map(|s| SyncKey {
            leader: s.leader.clone(),
            sync_standby: s.sync_standby.clone(),
        });
        match self.next_sync_step(published.as_ref()).await? {
            SyncStep::Nothing => {}
            SyncStep::Publish(s) => self.publish_sync(s).await?,
            SyncStep::SetStandby(s) => {
                tracing::info!(sync_standby = ?s, "setting synchronous_standby_names");
                self.sync_configured = s;
                self.ctl.write_conf(&self.conf(None)?)?;
                // No standby is published until PostgreSQL confirms the new setting and
                // the WAL position is marked after that.
                self.sync_unconfirmed = true;
                self.sync_mark = u64::MAX;
                self.conn.reload().await?;
                let deadline = Instant::now() + self.cfg.retry_timeout;
                while self.sync_unconfirmed && Instant::now() < deadline {
                    self.fence.beat();
                    self.confirm_sync_setting().await?;
                    if self.sync_unconfirmed {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                // Publish as soon as the standby confirms the mark, not a loop later:
                // until it is published no replica may take over, so a primary lost in
                // between (CI froze one there) leaves the cluster without a leader.
                let until = Instant::now() + SYNC_PUBLISH_WAIT.min(self.cfg.retry_timeout);
                while !self.sync_unconfirmed && Instant::now() < until {
                    self.fence.beat();
                    match self.next_sync_step(published.as_ref()).await? {
                        SyncStep::Publish(s) => {
                            self.publish_sync(s).await?;
                            break;
                        }
                        SyncStep::Nothing => tokio::time::sleep(Duration::from_millis(10)).await,
                        SyncStep::SetStandby(_) => break,
                    }
                }
            }
        }
        Ok(())
    }

    /// What `decide::sync_step` says now, from PostgreSQL's replication rows of configured
    /// members (pg_basebackup has a walsender too) and the published key.
    async fn next_sync_step(&mut self, published: Option<&SyncKey>) -> Result<SyncStep, DbError> {
        let rows = self.conn.replication().await?;
        self.fence.beat();
        let rows: Vec<decide::ReplRow> = rows
            .into_iter()
            .filter(|r| r.name != self.node.name && self.cfg.node(&r.name).is_some())
            .map(|r| decide::ReplRow {
                streaming: r.state == "streaming",
                name: r.name,
                sync_state: r.sync_state,
                flush_lsn: r.flush_lsn,
            })
            .collect();
        let ineligible: Vec<String> = self
            .cfg
            .nodes
            .iter()
            .filter(|n| n.nofailover)
            .map(|n| n.name.clone())
            .collect();
        Ok(decide::sync_step(
            &self.node.name,
            self.cfg.synchronous_strict,
            published,
            self.sync_configured.as_deref(),
            self.sync_mark,
            &rows,
            &ineligible,
        ))
    }

    async fn publish_sync(&mut self, s: Option<String>) -> Result<(), DbError> {
        tracing::info!(sync_standby = ?s, "publishing the synchronous standby");
        self.put_leader_only(
            "sync",
            &SyncValue {
                leader: self.node.name.clone(),
                sync_standby: s,
            },
            None,
            None,
        )
        .await
    }

    /// Once PostgreSQL runs with the `synchronous_standby_names` this node wrote (the
    /// session sees it, and the standby's WAL sender is synchronous), mark the WAL
    /// position: the standby is published only once it has confirmed everything up to it.
    pub(super) async fn confirm_sync_setting(&mut self) -> Result<(), DbError> {
        let names = self.sync_names();
        let standby = self.sync_configured.clone();
        if self
            .conn
            .sync_setting_in_effect(&names, standby.as_deref())
            .await?
        {
            self.sync_mark = self.conn.status().await?.lsn;
            self.sync_unconfirmed = false;
            tracing::info!(sync_standby = ?standby, mark = %crate::ops::fmt_lsn(self.sync_mark), "synchronous_standby_names in effect");
        }
        Ok(())
    }
}
