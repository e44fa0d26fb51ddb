//! The lease keeper: the lease is renewed by its own task, so a slow PostgreSQL call in
//! the loop (a promotion, a crash recovery, a query waiting for its timeout) does not let
//! it lapse — but only while the loop shows signs of life (`beat`) within
//! [`Timings::loop_stale_after`]. A loop stuck longer stops renewing: the primary's
//! deadline passes and the fence (watchdog process, kernel watchdog) acts, as Patroni
//! keeps the leader key only from a live HA loop.
//!
//! The keeper, the kernel watchdog's pinger and the loop share one [`FenceState`] behind
//! one lock: the watchdog is armed and disarmed under it, so the keeper never re-arms a
//! postmaster the loop has just stopped.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rampart_coord::{Coord, LeaseId};
use rampart_topology::db_timing::{Timings, KERNEL_MARGIN};

use crate::kwatchdog::KernelWatchdog;
use crate::watchdog::Watchdog;

pub(crate) struct FenceState {
    pub watchdog: Watchdog,
    /// The kernel watchdog, open (armed) while this node runs a primary.
    pub kernel: Option<KernelWatchdog>,
    /// A keepalive write to the kernel watchdog failed while it was open.
    pub kernel_failed: bool,
    pub lease: Option<LeaseId>,
    /// Start of the last successful renewal (or grant).
    pub renewed_at: Option<Instant>,
    /// The keeper found the lease expired in etcd: the loop grants a new one.
    pub expired: bool,
    /// The loop's last sign of life.
    pub beat: Instant,
    /// The postmaster that may take writes (armed at every renewal), if any.
    pub primary_pid: Option<u32>,
}

impl FenceState {
    /// Arm the watchdog process with the current deadline, if a primary runs.
    pub fn arm(&mut self, t: &Timings) {
        if let (Some(pid), Some(r)) = (self.primary_pid, self.renewed_at) {
            self.watchdog.arm(pid, r + t.fence_after());
        }
    }

    /// This postmaster is (about to be) a primary: fence it from now on.
    pub fn arm_primary(&mut self, pid: u32, t: &Timings) {
        self.primary_pid = Some(pid);
        self.arm(t);
    }

    /// Watch `pid` without a deadline (a replica, or a starting postmaster).
    pub fn watch(&mut self, pid: u32) {
        self.disarm_kernel();
        self.primary_pid = None;
        self.watchdog.watch(pid);
    }

    /// No postmaster to fence any more (stopped, or about to be by the loop).
    pub fn unwatch(&mut self) {
        self.disarm_kernel();
        self.primary_pid = None;
        self.watchdog.unwatch();
    }

    pub fn disarm_kernel(&mut self) {
        if let Some(k) = self.kernel.take() {
            let path = k.path.clone();
            k.disarm();
            tracing::info!(device = %path.display(), "kernel watchdog disarmed");
        }
        self.kernel_failed = false;
    }

    /// Ping the kernel watchdog if a reset one timeout from now still comes before etcd
    /// can expire the lease (else leave it to fire at the last safe ping's expiry).
    pub fn ping_kernel(&mut self, t: &Timings) {
        let (Some(k), Some(r)) = (self.kernel.as_mut(), self.renewed_at) else {
            return;
        };
        if !t.kernel_ping_allowed(r.elapsed(), k.timeout) {
            return;
        }
        if let Err(e) = k.keepalive() {
            if !self.kernel_failed {
                tracing::error!(device = %k.path.display(), error = %e, "kernel watchdog keepalive failed");
            }
            self.kernel_failed = true;
        }
    }
}

#[derive(Clone)]
pub(crate) struct Fence(Arc<Mutex<FenceState>>);

impl Fence {
    pub fn new(watchdog: Watchdog) -> Fence {
        Fence(Arc::new(Mutex::new(FenceState {
            watchdog,
            kernel: None,
            kernel_failed: false,
            lease: None,
            renewed_at: None,
            expired: false,
            beat: Instant::now(),
            primary_pid: None,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, FenceState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop is alive.
    pub fn beat(&self) {
        self.lock().beat = Instant::now();
    }

    pub fn lease(&self) -> Option<LeaseId> {
        self.lock().lease
    }

    pub fn renewed_at(&self) -> Option<Instant> {
        self.lock().renewed_at
    }
}

/// How often the keeper looks at the lease (and retries a failed renewal).
const TICK: Duration = Duration::from_millis(50);

/// A renewal moved the demotion deadline: what the API serves moves with it, for a
/// primary the loop still publishes as writable (one it is stopping was unpublished
/// first), so `/primary` does not turn 503 during a slow turn of a healthy leader.
fn extend_published(shared: &super::Shared, until: Instant) {
    let Ok(mut s) = shared.lock() else { return };
    if s.writable_leader && s.writable_until.is_some_and(|w| w < until) {
        s.writable_until = Some(until);
        if let Some(n) = s.node.as_mut() {
            n.writable_until = n.writable_until.map(|w| w.max(until));
            n.leader_until = n.leader_until.map(|w| w.max(until));
        }
    }
}

/// Renew the lease when due, while the loop is alive. Runs until aborted.
pub(crate) async fn keep(fence: Fence, coord: Coord, t: Timings, shared: super::Shared) {
    let mut stale_logged = false;
    let mut failing = false;
    loop {
        tokio::time::sleep(TICK).await;
        let (lease, primary, renewed_at, fresh) = {
            let f = fence.lock();
            let Some(lease) = f.lease.filter(|_| !f.expired) else {
                continue;
            };
            (
                lease,
                f.primary_pid.is_some(),
                f.renewed_at,
                f.beat.elapsed() <= t.loop_stale_after(),
            )
        };
        let period = if primary {
            t.primary_renew_period()
        } else {
            t.loop_wait
        };
        if renewed_at.is_some_and(|r| r.elapsed() < period) {
            continue;
        }
        if !fresh {
            if !stale_logged {
                tracing::error!(stale_after = ?t.loop_stale_after(),
                    "the agent's loop shows no progress: no longer renewing the lease (a primary is fenced at its deadline)");
                stale_logged = true;
            }
            continue;
        }
        if stale_logged {
            tracing::warn!("the agent's loop is alive again: renewing the lease");
            stale_logged = false;
        }
        let start = Instant::now();
        let mut budget = t.retry_timeout;
        if primary {
            if let Some(r) = renewed_at {
                let demote_at = r + t.demote_after();
                budget = budget
                    .min(demote_at.saturating_duration_since(start))
                    .max(Duration::from_millis(50));
            }
        }
        match tokio::time::timeout(budget, coord.keep_alive_once(lease)).await {
            Ok(Ok(Some(_))) => {
                if failing {
                    tracing::info!("lease renewed again");
                    failing = false;
                }
                let primary_renewed = {
                    let mut f = fence.lock();
                    let newer = f.lease == Some(lease) && f.renewed_at.is_none_or(|r| r < start);
                    if newer {
                        f.renewed_at = Some(start);
                        f.arm(&t);
                    }
                    newer && f.primary_pid.is_some()
                };
                // Not under the fence's lock: the loop takes the snapshot's lock first.
                if primary_renewed {
                    extend_published(&shared, start + t.demote_after());
                }
            }
            Ok(Ok(None)) => {
                tracing::warn!(
                    lease,
                    "our lease expired in etcd (keys attached to it are gone)"
                );
                let mut f = fence.lock();
                if f.lease == Some(lease) {
                    f.expired = true;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "etcd unreachable: cannot renew the lease (retrying)");
                    failing = true;
                }
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(budget = ?budget, "etcd unreachable: lease renewal timed out (retrying)");
                    failing = true;
                }
            }
        }
    }
}

/// Ping the kernel watchdog while it is open and the lease allows. Runs until aborted;
/// a task of its own, so a renewal waiting on etcd never delays a ping.
pub(crate) async fn ping_kernel(fence: Fence, t: Timings) {
    loop {
        tokio::time::sleep(TICK).await;
        fence.lock().ping_kernel(&t);
    }
}

/// Open the kernel watchdog for a primary about to take writes. `Err`: it cannot be used
/// (missing, timeout too long, cannot be opened) — the caller decides by the mode.
pub(crate) fn activate_kernel(
    f: &mut FenceState,
    device: &std::path::Path,
    t: &Timings,
) -> Result<(), String> {
    if f.kernel.is_some() && !f.kernel_failed {
        return Ok(());
    }
    f.disarm_kernel();
    let Some(r) = f.renewed_at else {
        return Err("no lease".into());
    };
    // Opening pings: only when a reset one timeout from now still precedes the expiry.
    let max = (r + t.ttl.saturating_sub(KERNEL_MARGIN))
        .saturating_duration_since(Instant::now())
        .min(t.kernel_timeout_max());
    let k = KernelWatchdog::open(device, max)?;
    tracing::info!(device = %device.display(), timeout = ?k.timeout, "kernel watchdog armed");
    f.kernel = Some(k);
    Ok(())
}
