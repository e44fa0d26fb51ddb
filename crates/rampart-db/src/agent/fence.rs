//! The lease and the fence: when the lease is renewed, the watchdog armed with its
//! deadline, and the watchdog process kept alive.

use super::*;

impl Agent {
    /// When the running primary renews its lease next. It renews as late as the timing
    /// rule allows: when one full `retry_timeout` attempt still ends before its demotion
    /// deadline (`renewal + ttl - DEMOTE_MARGIN`), and at least every `loop_wait`. A dead
    /// primary's key then expires as early as the lease allows: with 5 s / 1 s / 2 s a
    /// renewal every 1.95 s instead of every loop leaves about 0.5 s less to wait on
    /// average. Every other node renews on every loop. `None`: renew now.
    pub(super) fn renew_due(&self) -> Option<Instant> {
        if !self.is_primary_running() || self.lease.is_none() {
            return None;
        }
        let slack = Duration::from_millis(50);
        let period = self
            .cfg
            .ttl
            .saturating_sub(DEMOTE_MARGIN + self.cfg.retry_timeout + slack)
            .max(self.cfg.loop_wait);
        self.renewed_at.map(|t| t + period)
    }

    pub(super) async fn renew_lease(&mut self) -> bool {
        if self.renew_due().is_some_and(|due| Instant::now() < due) {
            // The lease is fresh; etcd's reachability is checked by the read that follows.
            return true;
        }
        let call_start = Instant::now();
        let mut budget = self.cfg.retry_timeout;
        if self.is_primary_running() {
            if let Some(t) = self.valid_until() {
                budget = budget
                    .min(t.saturating_duration_since(call_start))
                    .max(Duration::from_millis(50));
            }
        }
        let r = match self.lease {
            Some(l) => tokio::time::timeout(budget, self.coord.keep_alive_once(l)).await,
            None => {
                match tokio::time::timeout(budget, self.coord.grant_lease(self.cfg.ttl)).await {
                    Ok(Ok(id)) => {
                        tracing::info!(lease = id, "granted a new lease");
                        self.lease = Some(id);
                        Ok(Ok(Some(self.cfg.ttl)))
                    }
                    Ok(Err(e)) => Ok(Err(e)),
                    Err(e) => Err(e),
                }
            }
        };
        match r {
            Ok(Ok(Some(_))) => {
                self.renewed_at = Some(call_start);
                if self.is_primary_running() {
                    self.arm_watchdog();
                }
                true
            }
            Ok(Ok(None)) => {
                tracing::warn!("our lease expired in etcd (keys attached to it are gone)");
                self.lease = None;
                self.renewed_at = None;
                let start = Instant::now();
                match self.coord.grant_lease(self.cfg.ttl).await {
                    Ok(id) => {
                        tracing::info!(lease = id, "granted a new lease");
                        self.lease = Some(id);
                        self.renewed_at = Some(start);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot grant a new lease"),
                }
                // The etcd answer itself shows it is reachable.
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "etcd unreachable: cannot renew the lease");
                false
            }
            Err(_) => {
                tracing::warn!(budget = ?budget, "etcd unreachable: lease renewal timed out");
                false
            }
        }
    }

    /// Is the watchdog there? If its process died, start a new one and tell it about the
    /// postmaster (and, on a primary, the current deadline) at once. Without a watchdog
    /// the node does not lead ([`decide`]: a primary steps down, nobody promotes here).
    pub(super) fn supervise_watchdog(&mut self) -> bool {
        if self.watchdog.alive() {
            return true;
        }
        let old = self.watchdog.pid();
        tracing::error!(
            pid = old,
            "the watchdog process is gone: starting a new one"
        );
        match Watchdog::spawn() {
            Ok(w) => {
                // Dropping the old handle reaps the dead process.
                self.watchdog = w;
                if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
                    self.watchdog.watch(pid);
                    if self.is_primary_running() {
                        self.arm_watchdog();
                    }
                }
                let ok = self.watchdog.alive();
                if ok {
                    tracing::info!(pid = self.watchdog.pid(), "new watchdog running");
                }
                ok
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a watchdog: this node will not lead");
                false
            }
        }
    }

    pub(super) fn arm_watchdog(&mut self) {
        if let (Some(t), Some(c)) = (self.renewed_at, self.child.as_ref()) {
            if let Some(pid) = c.id() {
                // Hard fence shortly before etcd can expire the lease.
                let hard = t + self.cfg.ttl - Duration::from_millis(300);
                self.watchdog.arm(pid, hard);
            }
        }
    }
}
