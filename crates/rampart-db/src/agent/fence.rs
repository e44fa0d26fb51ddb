//! The lease and the fence, as the loop sees them: the lease granted (the keeper in
//! [`super::lease`] renews it), the watchdog armed with its deadline, the watchdog process
//! kept alive, and the kernel watchdog as `watchdog = "off" | "automatic" | "required"`.

use super::*;
use rampart_topology::db::WatchdogMode;

impl Agent {
    /// Make sure we hold a lease: grant one when we have none or the keeper found ours
    /// expired. `false`: etcd did not answer. Renewals are the keeper's.
    pub(super) async fn renew_lease(&mut self) -> bool {
        let (lease, expired) = {
            let f = self.fence.lock();
            (f.lease, f.expired)
        };
        if lease.is_some() && !expired {
            // etcd's reachability is checked by the read that follows.
            return true;
        }
        if expired {
            let mut f = self.fence.lock();
            f.lease = None;
            f.renewed_at = None;
            f.expired = false;
        }
        let start = Instant::now();
        match tokio::time::timeout(self.cfg.retry_timeout, self.coord.grant_lease(self.cfg.ttl))
            .await
        {
            Ok(Ok(id)) => {
                tracing::info!(lease = id, "granted a new lease");
                let mut f = self.fence.lock();
                f.lease = Some(id);
                f.renewed_at = Some(start);
                f.expired = false;
                f.arm(&self.timings);
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "etcd unreachable: cannot grant a lease");
                false
            }
            Err(_) => {
                tracing::warn!(budget = ?self.cfg.retry_timeout, "etcd unreachable: lease grant timed out");
                false
            }
        }
    }

    /// Is the fence there? The watchdog process must run: if it died, start a new one and
    /// tell it about the postmaster (and, on a primary, the current deadline) at once. With
    /// `watchdog = "required"` the kernel watchdog must be usable too. Without the fence
    /// the node does not lead ([`decide`]: a primary steps down, nobody promotes here).
    pub(super) fn supervise_watchdog(&mut self) -> bool {
        let process = self.supervise_watchdog_process();
        process && self.kernel_watchdog_ok()
    }

    fn supervise_watchdog_process(&mut self) -> bool {
        let mut f = self.fence.lock();
        if f.watchdog.alive() {
            return true;
        }
        let old = f.watchdog.pid();
        tracing::error!(
            pid = old,
            "the watchdog process is gone: starting a new one"
        );
        match Watchdog::spawn() {
            Ok(w) => {
                // Dropping the old handle reaps the dead process.
                f.watchdog = w;
                if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
                    let primary = f.primary_pid;
                    f.watchdog.watch(pid);
                    if primary.is_some() {
                        f.arm(&self.timings);
                    }
                }
                let ok = f.watchdog.alive();
                if ok {
                    tracing::info!(pid = f.watchdog.pid(), "new watchdog running");
                }
                ok
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a watchdog: this node will not lead");
                false
            }
        }
    }

    /// `required`: the kernel watchdog is usable (open and healthy on a primary; present
    /// with a timeout that fires in time otherwise). Logged when the verdict changes.
    fn kernel_watchdog_ok(&mut self) -> bool {
        if self.node.watchdog != WatchdogMode::Required {
            return true;
        }
        let verdict = {
            let f = self.fence.lock();
            if f.kernel.is_some() {
                if f.kernel_failed {
                    Err("its keepalive failed".to_string())
                } else {
                    Ok(())
                }
            } else {
                crate::kwatchdog::usable(
                    &self.cfg.watchdog_device,
                    self.timings.kernel_timeout_max(),
                )
                .map(|_| ())
            }
        };
        let text = verdict.as_ref().err().cloned();
        if text != self.kernel_logged {
            match &text {
                Some(why) => {
                    tracing::error!(device = %self.cfg.watchdog_device.display(), reason = %why,
                    "watchdog = \"required\" but the kernel watchdog is unavailable: this node will not lead")
                }
                None => {
                    tracing::info!(device = %self.cfg.watchdog_device.display(), "kernel watchdog available (watchdog = \"required\")")
                }
            }
            self.kernel_logged = text;
        }
        verdict.is_ok()
    }

    /// This postmaster is about to take writes (start as a primary, or pg_promote): arm
    /// the watchdog process with the lease deadline and, unless `watchdog = "off"`, open
    /// the kernel watchdog. `Err` only with `required` and no kernel watchdog: the caller
    /// must not let it take writes.
    pub(super) fn arm_watchdog(&mut self) -> Result<(), DbError> {
        let Some(pid) = self.child.as_ref().and_then(|c| c.id()) else {
            return Ok(());
        };
        let mode = self.node.watchdog;
        let mut f = self.fence.lock();
        f.arm_primary(pid, &self.timings);
        if mode == WatchdogMode::Off {
            return Ok(());
        }
        match lease::activate_kernel(&mut f, &self.cfg.watchdog_device, &self.timings) {
            Ok(()) => Ok(()),
            Err(why) if mode == WatchdogMode::Required => {
                // Back to a replica's watch: this postmaster must not take writes.
                f.watch(pid);
                Err(DbError::Other(format!(
                    "watchdog = \"required\" but the kernel watchdog cannot be armed: {why}"
                )))
            }
            Err(why) => {
                if self.kernel_logged.as_deref() != Some(why.as_str()) {
                    tracing::info!(device = %self.cfg.watchdog_device.display(), reason = %why,
                        "no kernel watchdog (watchdog = \"automatic\"): the watchdog process fences this primary alone");
                    self.kernel_logged = Some(why);
                }
                Ok(())
            }
        }
    }
}
