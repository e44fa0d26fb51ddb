//! Shared runtime state of pools and servers: read-mostly, per-server atomics.
//!
//! The balancer (`rampart_balance`) sees a pool through [`View`], a [`ServerSet`] over
//! these atomics that also hides the servers a request already tried and the full ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rampart_balance::health::{HealthPolicy, HealthState, Transition};
use rampart_balance::{slow_start_weight, Balancer, PeakEwma, RetryBudget, ServerSet};
use rampart_topology::lb::{CheckKind, Pool};
use tokio::sync::Notify;

use crate::clock::now_ns;
use crate::upstream::IdleConn;

/// Time constant of the Peak-EWMA latency estimate.
const EWMA_DECAY: Duration = Duration::from_secs(5);
/// Latency assumed for a server before its first answer.
const EWMA_INITIAL_NS: f64 = 1_000_000.0;
/// "Never went through a down→up transition": full weight, no slow start.
const NEVER: u64 = u64::MAX;

/// One backend server: identity, health and live counters.
pub struct ServerState {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    up: AtomicBool,
    up_since_ns: AtomicU64,
    pub in_flight: AtomicU32,
    pub ewma: PeakEwma,
    health: Mutex<HealthState>,
    /// Set when a passive failure was counted; lets successes skip the lock otherwise.
    passive_dirty: AtomicBool,
    /// Idle upstream connections, one list per worker thread (no cross-thread traffic).
    pub idle: Box<[Mutex<Vec<IdleConn>>]>,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

impl ServerState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// One pool: its config, servers, balancer, retry budget and queue.
pub struct PoolState {
    pub cfg: Pool,
    pub servers: Box<[ServerState]>,
    pub balancer: Balancer,
    pub budget: RetryBudget,
    /// Woken when a slot frees up on a server (for queued requests).
    pub slot_freed: Notify,
    pub waiting: AtomicUsize,
    /// Whether health checks run (passive failures only mark down when they do,
    /// since only an active check can bring a server back).
    pub checks_enabled: bool,
    pub msg_503_down: Bytes,
    pub msg_503_queue: Bytes,
    pub msg_502: Bytes,
    pub msg_504: Bytes,
}

impl PoolState {
    pub fn new(cfg: Pool, workers: usize, seed: u64) -> PoolState {
        let policy = HealthPolicy {
            rise: cfg.health_check.rise,
            fall: cfg.health_check.fall,
            passive_failures: cfg.passive_failures,
        };
        let servers: Box<[ServerState]> = cfg
            .servers
            .iter()
            .map(|s| ServerState {
                name: s.name.clone(),
                addr: s.address,
                weight: s.weight,
                up: AtomicBool::new(true),
                up_since_ns: AtomicU64::new(NEVER),
                in_flight: AtomicU32::new(0),
                ewma: PeakEwma::new(EWMA_DECAY.as_nanos() as u64, EWMA_INITIAL_NS),
                health: Mutex::new(HealthState::new(policy, true)),
                passive_dirty: AtomicBool::new(false),
                idle: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            })
            .collect();
        let name = &cfg.name;
        let p = PoolState {
            balancer: Balancer::new(cfg.algorithm, seed),
            budget: RetryBudget::new(
                cfg.retries.budget_ratio,
                cfg.retries.min_per_sec,
                10_000_000_000,
            ),
            slot_freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            checks_enabled: cfg.health_check.kind != CheckKind::None,
            msg_503_down: Bytes::from(format!(
                "503 Service Unavailable: no healthy server in pool \"{name}\"\n"
            )),
            msg_503_queue: Bytes::from(format!(
                "503 Service Unavailable: every server of pool \"{name}\" is busy (queue full or timed out)\n"
            )),
            msg_502: Bytes::from(format!(
                "502 Bad Gateway: the server of pool \"{name}\" failed to answer\n"
            )),
            msg_504: Bytes::from(format!(
                "504 Gateway Timeout: the server of pool \"{name}\" did not answer in time\n"
            )),
            servers,
            cfg,
        };
        p.rebuild();
        p
    }

    /// Rebuild the balancer's tables after membership or eligibility changed.
    pub fn rebuild(&self) {
        let v = View {
            pool: self,
            now_ns: now_ns(),
            tried: 0,
            ignore_full: true,
        };
        self.balancer.rebuild(&v);
    }

    /// Apply a health transition to server `i`.
    fn apply(&self, i: usize, t: Option<Transition>, why: &str) {
        let s = &self.servers[i];
        match t {
            Some(Transition::WentUp) => {
                let slow = !self.cfg.slow_start.is_zero();
                s.up_since_ns
                    .store(if slow { now_ns() } else { NEVER }, Ordering::Relaxed);
                s.up.store(true, Ordering::Release);
                tracing::warn!(pool = %self.cfg.name, server = %s.name, addr = %s.addr, "server is UP");
                self.rebuild();
                self.slot_freed.notify_waiters();
            }
            Some(Transition::WentDown) => {
                s.up.store(false, Ordering::Release);
                tracing::warn!(pool = %self.cfg.name, server = %s.name, addr = %s.addr, reason = why, "server is DOWN");
                self.rebuild();
                for w in s.idle.iter() {
                    if let Ok(mut v) = w.lock() {
                        v.clear();
                    }
                }
                // Queued requests must learn that the pool may now be empty.
                self.slot_freed.notify_waiters();
            }
            None => {}
        }
    }

    /// An active health check result.
    pub fn on_check(&self, i: usize, ok: bool) {
        let t = match self.servers[i].health.lock() {
            Ok(mut h) => h.on_check(ok),
            Err(_) => None,
        };
        self.apply(i, t, "health check failed");
    }

    /// A connect failure, a failure before any response byte, or a 5xx.
    pub fn on_passive_failure(&self, i: usize, why: &str) {
        let s = &self.servers[i];
        s.failures.fetch_add(1, Ordering::Relaxed);
        if !self.checks_enabled {
            return;
        }
        s.passive_dirty.store(true, Ordering::Relaxed);
        let t = match s.health.lock() {
            Ok(mut h) => h.on_passive_failure(),
            Err(_) => None,
        };
        self.apply(i, t, why);
    }

    pub fn on_passive_success(&self, i: usize) {
        let s = &self.servers[i];
        if s.passive_dirty.swap(false, Ordering::Relaxed) {
            if let Ok(mut h) = s.health.lock() {
                h.on_passive_success();
            }
        }
    }

    pub fn any_up(&self) -> bool {
        self.servers.iter().any(|s| s.is_up() && s.weight > 0)
    }

    /// Take a slot on server `i` unless it is at `max_in_flight`.
    pub fn try_acquire(self: &Arc<Self>, i: usize) -> Option<InFlight> {
        let s = &self.servers[i];
        match self.cfg.max_in_flight {
            None => {
                s.in_flight.fetch_add(1, Ordering::Relaxed);
            }
            Some(max) => {
                s.in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                        (v < max).then_some(v + 1)
                    })
                    .ok()?;
            }
        }
        s.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            pool: self.clone(),
            server: i,
        })
    }

    /// Pick a server not in `tried` and take a slot on it, waiting in the queue when every
    /// eligible server is full.
    pub async fn pick(self: &Arc<Self>, hash_key: u64, tried: u64) -> Result<InFlight, PickError> {
        if let Some(f) = self.pick_now(hash_key, tried) {
            return Ok(f);
        }
        if !self.any_eligible(tried) {
            return Err(PickError::NoneUp);
        }
        // Every eligible server is at max_in_flight: queue.
        let q = self.cfg.queue;
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= q.size {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PickError::QueueFull);
        }
        let _w = WaitGuard(&self.waiting);
        let deadline = tokio::time::Instant::now() + q.timeout;
        loop {
            let notified = self.slot_freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = self.pick_now(hash_key, tried) {
                return Ok(f);
            }
            if !self.any_eligible(tried) {
                return Err(PickError::NoneUp);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(PickError::QueueTimeout);
            }
        }
    }

    fn pick_now(self: &Arc<Self>, hash_key: u64, tried: u64) -> Option<InFlight> {
        for _ in 0..4 {
            let v = View {
                pool: self,
                now_ns: now_ns(),
                tried,
                ignore_full: false,
            };
            let i = self.balancer.pick(&v, hash_key)?;
            if let Some(f) = self.try_acquire(i) {
                return Some(f);
            }
        }
        None
    }

    fn any_eligible(&self, tried: u64) -> bool {
        self.servers
            .iter()
            .enumerate()
            .any(|(i, s)| s.is_up() && s.weight > 0 && !is_tried(tried, i))
    }
}

struct WaitGuard<'a>(&'a AtomicUsize);
impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no server could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// No server of the pool is up (or all were tried already).
    NoneUp,
    QueueFull,
    QueueTimeout,
}

/// A slot taken on a server; released (and a queued request woken) on drop.
pub struct InFlight {
    pub pool: Arc<PoolState>,
    pub server: usize,
}

impl InFlight {
    pub fn server(&self) -> &ServerState {
        &self.pool.servers[self.server]
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.pool.servers[self.server]
            .in_flight
            .fetch_sub(1, Ordering::AcqRel);
        if self.pool.waiting.load(Ordering::Acquire) > 0 {
            self.pool.slot_freed.notify_one();
        }
    }
}

/// Bit set of server indices already tried by one request (servers past 64 are never
/// excluded; retries there fall back to the balancer's choice).
pub fn is_tried(tried: u64, i: usize) -> bool {
    i < 64 && tried & (1 << i) != 0
}

pub fn mark_tried(tried: u64, i: usize) -> u64 {
    if i < 64 {
        tried | (1 << i)
    } else {
        tried
    }
}

/// The balancer's view of a pool for one pick.
pub struct View<'a> {
    pool: &'a PoolState,
    now_ns: u64,
    tried: u64,
    ignore_full: bool,
}

impl ServerSet for View<'_> {
    fn len(&self) -> usize {
        self.pool.servers.len()
    }

    fn weight(&self, i: usize) -> u32 {
        let s = &self.pool.servers[i];
        if !s.is_up() || is_tried(self.tried, i) {
            return 0;
        }
        if !self.ignore_full {
            if let Some(max) = self.pool.cfg.max_in_flight {
                if s.in_flight.load(Ordering::Relaxed) >= max {
                    return 0;
                }
            }
        }
        let since = s.up_since_ns.load(Ordering::Relaxed);
        if since == NEVER {
            return s.weight;
        }
        slow_start_weight(
            s.weight,
            self.now_ns.saturating_sub(since),
            self.pool.cfg.slow_start.as_nanos() as u64,
        )
    }

    fn in_flight(&self, i: usize) -> u32 {
        self.pool.servers[i].in_flight.load(Ordering::Relaxed)
    }

    fn latency_ns(&self, i: usize) -> f64 {
        self.pool.servers[i].ewma.get(self.now_ns)
    }

    fn id(&self, i: usize) -> &str {
        &self.pool.servers[i].name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_balance::Algorithm;
    use rampart_topology::lb::{HealthCheck, PoolTimeouts, QueueConfig, RetryConfig, Server};

    fn pool(n: usize, max_in_flight: Option<u32>, queue_timeout: Duration) -> Arc<PoolState> {
        let cfg = Pool {
            name: "p".into(),
            algorithm: Algorithm::RoundRobin,
            servers: (0..n)
                .map(|i| Server {
                    name: format!("s{i}"),
                    address: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            health_check: HealthCheck::with_kind(CheckKind::Tcp),
            passive_failures: 2,
            slow_start: Duration::ZERO,
            max_in_flight,
            queue: QueueConfig {
                size: 1,
                timeout: queue_timeout,
            },
            retries: RetryConfig::default(),
            timeouts: PoolTimeouts::default(),
        };
        Arc::new(PoolState::new(cfg, 1, 7))
    }

    #[tokio::test]
    async fn tried_and_down_servers_are_not_picked() {
        let p = pool(3, None, Duration::from_secs(1));
        let a = p.pick(0, 0).await.unwrap();
        let tried = mark_tried(0, a.server);
        for _ in 0..10 {
            assert_ne!(p.pick(0, tried).await.unwrap().server, a.server);
        }
        // Two passive failures take a server down at once.
        p.on_passive_failure(1, "test");
        assert!(p.servers[1].is_up());
        p.on_passive_failure(1, "test");
        assert!(!p.servers[1].is_up());
        for _ in 0..10 {
            assert_ne!(p.pick(0, 0).await.unwrap().server, 1);
        }
        assert_eq!(
            p.pick(0, mark_tried(mark_tried(0, 0), 2)).await.err(),
            Some(PickError::NoneUp)
        );
        // Only active checks bring it back (rise = 2).
        p.on_check(1, true);
        p.on_check(1, true);
        assert!(p.servers[1].is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_server_queues_and_the_queue_times_out_or_is_served() {
        let p = pool(1, Some(1), Duration::from_millis(200));
        let first = p.pick(0, 0).await.unwrap();
        assert_eq!(p.servers[0].in_flight.load(Ordering::Relaxed), 1);
        // Full: the next request waits, then gets QueueTimeout.
        let t = tokio::time::Instant::now();
        assert_eq!(p.pick(0, 0).await.err(), Some(PickError::QueueTimeout));
        assert!(t.elapsed() >= Duration::from_millis(200));
        // While one waits, the queue (size 1) is full for a third.
        let p2 = p.clone();
        let waiter = tokio::spawn(async move { p2.pick(0, 0).await.map(|f| f.server) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(p.pick(0, 0).await.err(), Some(PickError::QueueFull));
        // A slot frees up: the waiter is served.
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(0));
        assert_eq!(p.servers[0].in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn without_health_checks_passive_failures_never_take_a_server_down() {
        let p = {
            let mut cfg = pool(1, None, Duration::from_secs(1)).cfg.clone();
            cfg.health_check = HealthCheck::with_kind(CheckKind::None);
            Arc::new(PoolState::new(cfg, 1, 7))
        };
        for _ in 0..10 {
            p.on_passive_failure(0, "test");
        }
        assert!(p.servers[0].is_up());
    }
}
