//! Shared runtime state of pools and servers: read-mostly, per-server atomics.
//!
//! The balancer (`rampart_balance`) sees a pool through [`View`], a [`ServerSet`] over
//! these atomics that also hides the servers a request already tried and the full ones.
//!
//! Passive evidence (what each attempt on a server came to) enters through one function,
//! [`PoolState::on_passive`], for the HTTP/1 fast path, hyper's HTTP/2 path and TCP alike; it feeds the
//! pool's outlier detector (`rampart_balance::outlier`), which ejects servers within
//! `max_ejection_percent`. Health (active checks) and ejection are separate states; a
//! server takes new requests when it is up, not ejected, ready and weighted, or, while
//! the pool is in panic, when it is ready and weighted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use rampart_balance::health::{HealthPolicy, HealthState, Transition};
use rampart_balance::outlier::{
    in_panic, Detector, Ejection, Event, OutlierPolicy, Reason, Sample, ServerOutlier,
};
use rampart_balance::{
    slow_start_weight, Algorithm, Attempt, Balancer, PeakEwma, RetryBudget, ServerSet,
};
use rampart_topology::lb::{CheckKind, Pool, Server};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ns;
use crate::stats::{Counters, ErrorKind};
use crate::upstream::{IdleConn, IdleRaw};

/// Time constant of the Peak-EWMA latency estimate until the pool's `lrt_decay` applies
/// (a new generation sets it on every server).
const EWMA_DECAY: Duration = Duration::from_secs(5);
/// Latency assumed for a server before its first answer.
const EWMA_INITIAL_NS: f64 = 1_000_000.0;
/// "Never went through a down→up transition": full weight, no slow start.
const NEVER: u64 = u64::MAX;

/// What an operator set a server to (independent of its health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// Takes traffic when healthy.
    Ready = 0,
    /// No new requests; in-flight ones finish; health checks go on.
    Drain = 1,
    /// No new requests, no health checks, idle connections closed.
    Maintenance = 2,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maintenance => "maintenance",
        }
    }

    fn from_u8(v: u8) -> AdminState {
        match v {
            1 => AdminState::Drain,
            2 => AdminState::Maintenance,
            _ => AdminState::Ready,
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ready" => Ok(AdminState::Ready),
            "drain" => Ok(AdminState::Drain),
            "maintenance" | "maint" => Ok(AdminState::Maintenance),
            _ => Err(format!(
                "unknown server state \"{s}\"; expected ready, drain or maintenance"
            )),
        }
    }
}

/// What one attempt on a server came to: the passive evidence [`PoolState::on_passive`]
/// takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this status (5xx counts as a failure).
    Answered(u16),
    /// A TCP session's upstream connection was made.
    Connected,
    /// The attempt failed.
    Failed(Fail),
}

/// Why a request failed on a server (outlier detection and error counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fail {
    Connect,
    BeforeAnswer,
    Timeout,
    Status5xx,
}

impl Fail {
    fn kind(self) -> ErrorKind {
        match self {
            Fail::Connect => ErrorKind::Connect,
            Fail::BeforeAnswer => ErrorKind::Upstream,
            Fail::Timeout => ErrorKind::Timeout,
            Fail::Status5xx => ErrorKind::Status5xx,
        }
    }
}

/// The last active health check of a server.
#[derive(Debug, Clone, Default)]
pub struct CheckRecord {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub ok: bool,
    pub duration_ms: f64,
    /// Why it failed.
    pub error: String,
}

/// One backend server: identity, health and live counters. Shared by every generation
/// of its pool (a reload or a runtime change keeps it when the server stays).
///
/// Laid out by hand (`repr(C)`, cache-line aligned): what every request reads or writes
/// (picking, the slot, the idle connection, the counters) fills the first line, the
/// least-response-time estimate the second, the rest comes after. With a large pool each
/// request goes to a server whose state is out of the CPU's caches; spread over the struct
/// (as the compiler orders fields by size) the same fields cost twice the cache misses.
#[repr(C, align(64))]
pub struct ServerState {
    // -- line 0: every request.
    /// Idle upstream sockets of the HTTP/1.1 fast path (`h1`), one list per worker thread.
    pub idle_raw: Box<[Mutex<Vec<IdleRaw>>]>,
    pub stats: Counters,
    up_since_ns: AtomicU64,
    pub requests: AtomicU64,
    /// The weight in effect (the config's, or the operator's).
    weight: AtomicU32,
    pub in_flight: AtomicU32,
    /// Highest `in_flight` seen.
    pub peak_in_flight: AtomicU32,
    admin: AtomicU8,
    up: AtomicBool,
    /// Ejected by outlier detection (mirrors `outlier`, written under the pool's detector
    /// lock).
    ejected: AtomicBool,
    /// Set while connect failures are counted; lets answers skip the lock otherwise.
    connect_dirty: AtomicBool,
    // -- line 1: every answer under least response time (the estimate), every failure.
    pub ewma: PeakEwma,
    pub failures: AtomicU64,
    /// Its index in the newest generation of its pool (`index_of` in `O(1)`: a health
    /// check result must not search 10,000 servers).
    index_hint: AtomicU32,
    /// The weight the config gave when it was last applied (a reload that does not change
    /// it keeps an operator's weight).
    pub cfg_weight: AtomicU32,
    /// Added at run time through the admin API (kept by reloads that do not name it).
    pub runtime_added: AtomicBool,
    /// Came from service discovery (leaves when its record does).
    pub discovered: AtomicBool,
    // -- the rest: connects, health checks, outlier detection, the admin API.
    pub name: String,
    pub addr: SocketAddr,
    health: Mutex<HealthState>,
    /// Outlier state; locked only after the pool's detector lock, or alone.
    outlier: Mutex<ServerOutlier>,
    /// Idle upstream connections, one list per worker thread (no cross-thread traffic).
    pub idle: Box<[Mutex<Vec<IdleConn>>]>,
    /// Open HTTP/2 connections (a pool whose server picked `h2`), per worker thread.
    pub h2: Box<[crate::upstream_h2::H2Slot]>,
    pub last_check: Mutex<Option<CheckRecord>>,
    /// Cancelled when the server leaves its pool: its health check task ends.
    pub stop_checks: CancellationToken,
}

impl ServerState {
    pub fn new(s: &Server, policy: HealthPolicy, workers: usize) -> ServerState {
        ServerState {
            name: s.name.clone(),
            addr: s.address,
            weight: AtomicU32::new(s.weight),
            cfg_weight: AtomicU32::new(s.weight),
            admin: AtomicU8::new(AdminState::Ready as u8),
            runtime_added: AtomicBool::new(false),
            discovered: AtomicBool::new(false),
            up: AtomicBool::new(true),
            up_since_ns: AtomicU64::new(NEVER),
            in_flight: AtomicU32::new(0),
            peak_in_flight: AtomicU32::new(0),
            ewma: PeakEwma::new(EWMA_DECAY.as_nanos() as u64, EWMA_INITIAL_NS),
            health: Mutex::new(HealthState::new(policy, true)),
            ejected: AtomicBool::new(false),
            outlier: Mutex::new(ServerOutlier::default()),
            connect_dirty: AtomicBool::new(false),
            idle: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            idle_raw: (0..workers).map(|_| Mutex::new(Vec::new())).collect(),
            h2: (0..workers).map(|_| Default::default()).collect(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            stats: Counters::new(workers),
            last_check: Mutex::new(None),
            stop_checks: CancellationToken::new(),
            index_hint: AtomicU32::new(u32::MAX),
        }
    }

    /// Health: up unless active checks took it down.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Ejected by outlier detection.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// The current ejection, if any (times on the lb's clock, `clock::now_ns`).
    pub fn ejection(&self) -> Option<Ejection> {
        self.outlier.lock().ok().and_then(|o| o.ejection())
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// In service: ready and weighted (what an operator decides).
    pub fn in_service(&self) -> bool {
        self.admin.load(Ordering::Relaxed) == AdminState::Ready as u8 && self.weight() > 0
    }

    /// Available: in service, healthy and not ejected (takes new requests unless the
    /// pool is in panic, see [`PoolState::takes`]).
    pub fn eligible(&self) -> bool {
        self.is_up() && !self.is_ejected() && self.in_service()
    }

    /// Set the weight without rebuilding any balancer (the caller makes a new generation).
    pub fn set_weight_raw(&self, w: u32) {
        self.weight.store(w, Ordering::Release);
    }

    fn close_idle(&self) {
        for w in self.idle.iter() {
            if let Ok(mut v) = w.lock() {
                v.clear();
            }
        }
        for w in self.idle_raw.iter() {
            if let Ok(mut v) = w.lock() {
                v.clear();
            }
        }
        for w in self.h2.iter() {
            w.clear();
        }
    }

    /// The health policy changed (reload): keep the up/down state, restart the counts.
    pub fn set_policy(&self, policy: HealthPolicy) {
        if let Ok(mut h) = self.health.lock() {
            let p = h.policy();
            if (p.rise, p.fall) != (policy.rise, policy.fall) {
                *h = HealthState::new(policy, self.is_up());
            }
        }
    }
}

/// What every generation of a pool shares.
pub struct PoolShared {
    pub budget: RetryBudget,
    /// Woken when a slot frees up on a server (for queued requests).
    pub slot_freed: Notify,
    pub waiting: AtomicUsize,
    pub stats: Counters,
    /// The outlier detector's window; its lock comes before any server's `outlier`.
    detector: Mutex<Detector>,
    /// When the detector next has something to do (`clock::now_ns`).
    outlier_due: AtomicU64,
    /// Ejections so far, by [`Reason`] (`as usize`).
    pub ejections: [AtomicU64; 2],
    /// Ejections `max_ejection_percent` refused.
    pub ejections_refused: AtomicU64,
}

/// One generation of a pool: its config, servers, balancer. A membership change or a
/// reload makes a new generation; requests in flight keep the one they picked from.
pub struct PoolState {
    pub cfg: Pool,
    pub servers: Box<[Arc<ServerState>]>,
    pub balancer: Balancer,
    pub shared: Arc<PoolShared>,
    /// Whether health checks run.
    pub checks_enabled: bool,
    /// The outlier detection settings of `cfg`.
    pub outlier: OutlierPolicy,
    /// What least-response-time records for a failed attempt (`lrt_penalty`, else the
    /// response timeout), in ns; `None` when the pool balances by anything else, which keeps
    /// no estimate: an answer then leaves the estimate's cache line and lock alone (with a
    /// thousand servers it is out of the CPU's caches). A reload that switches a pool to
    /// least response time starts from estimates that have decayed, or the initial one.
    lrt_penalty_ns: Option<u64>,
    /// Too few servers available (`cfg.panic_threshold`): balance over every server in
    /// service. Recomputed by [`PoolState::rebuild`].
    panic: AtomicBool,
    pub msg_503_down: Bytes,
    pub msg_503_queue: Bytes,
    pub msg_502: Bytes,
    pub msg_504: Bytes,
}

pub fn health_policy(cfg: &Pool) -> HealthPolicy {
    HealthPolicy {
        rise: cfg.health_check.rise,
        fall: cfg.health_check.fall,
    }
}

/// The detector's settings from a pool's config.
pub fn outlier_policy(cfg: &Pool) -> OutlierPolicy {
    let o = &cfg.outlier;
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    OutlierPolicy {
        connect_failures: cfg.passive_failures,
        interval_ns: ns(o.interval),
        min_requests: u64::from(o.min_requests),
        failure_percent: o.failure_percent,
        margin_percent: o.margin_percent,
        max_ejection_percent: o.max_ejection_percent,
        base_ejection_ns: ns(o.base_ejection_time),
        max_ejection_ns: ns(o.max_ejection_time),
    }
}

impl std::ops::Deref for PoolState {
    type Target = PoolShared;
    fn deref(&self) -> &PoolShared {
        &self.shared
    }
}

impl PoolState {
    /// A first generation with fresh servers.
    pub fn new(cfg: Pool, workers: usize, seed: u64) -> PoolState {
        let policy = health_policy(&cfg);
        let servers = cfg
            .servers
            .iter()
            .map(|s| Arc::new(ServerState::new(s, policy, workers)))
            .collect();
        let now = now_ns();
        let shared = Arc::new(PoolShared {
            budget: RetryBudget::new(
                cfg.retries.budget_ratio,
                cfg.retries.min_per_sec,
                10_000_000_000,
            ),
            slot_freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            stats: Counters::new(workers),
            detector: Mutex::new(Detector::new(now)),
            outlier_due: AtomicU64::new(now.saturating_add(outlier_policy(&cfg).interval_ns)),
            ejections: [AtomicU64::new(0), AtomicU64::new(0)],
            ejections_refused: AtomicU64::new(0),
        });
        PoolState::generation(cfg, servers, shared, seed)
    }

    /// A generation over `servers` (which may come from an older one).
    pub fn generation(
        cfg: Pool,
        servers: Vec<Arc<ServerState>>,
        shared: Arc<PoolShared>,
        seed: u64,
    ) -> PoolState {
        let name = &cfg.name;
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        for (i, s) in servers.iter().enumerate() {
            s.ewma.set_decay_ns(ns(cfg.lrt_decay));
            s.index_hint
                .store(u32::try_from(i).unwrap_or(u32::MAX), Ordering::Relaxed);
        }
        let p = PoolState {
            lrt_penalty_ns: (cfg.algorithm == Algorithm::LeastResponseTime)
                .then(|| ns(cfg.lrt_penalty.unwrap_or(cfg.timeouts.response))),
            balancer: Balancer::new(cfg.algorithm, seed),
            shared,
            checks_enabled: cfg.health_check.kind != CheckKind::None,
            outlier: outlier_policy(&cfg),
            panic: AtomicBool::new(false),
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
            servers: servers.into_boxed_slice(),
            cfg,
        };
        p.rebuild();
        p
    }

    /// Rebuild the balancer's tables after membership or eligibility changed (and decide
    /// whether the pool is in panic).
    pub fn rebuild(&self) {
        self.changed(None);
    }

    /// Server `which` went up or down, or its weight or operator state changed (None: any
    /// number of servers did): decide whether the pool is in panic, then tell the balancer,
    /// `O(log n)` for one server (a rebuild when the panic state flipped: every server's
    /// eligibility changed with it).
    fn changed(&self, which: Option<usize>) {
        let in_service = self.servers.iter().filter(|s| s.in_service()).count();
        let available = self.servers.iter().filter(|s| s.eligible()).count();
        let panic = in_panic(available, in_service, self.cfg.panic_threshold);
        let flipped = self.panic.swap(panic, Ordering::AcqRel) != panic;
        if flipped {
            if panic {
                tracing::warn!(pool = %self.cfg.name, available, in_service, panic_threshold = self.cfg.panic_threshold, "pool in PANIC: too few servers available, balancing over every server in service");
            } else {
                tracing::warn!(pool = %self.cfg.name, available, in_service, "pool out of panic");
            }
        }
        let v = View {
            pool: self,
            now_ns: now_ns(),
            tried: 0,
            ignore_full: true,
        };
        match which {
            Some(i) if !flipped => self.balancer.update(&v, i),
            _ => self.balancer.rebuild(&v),
        }
        // Queued requests must learn that the pool may have changed.
        self.slot_freed.notify_waiters();
    }

    /// The load of server `i` changed (a request ended, or a slot was given back): least
    /// connections re-orders it. Nothing (not even a clock read) for other algorithms.
    pub fn load_changed(&self, i: usize) {
        if self.balancer.tracks_load() {
            let v = View {
                pool: self,
                now_ns: now_ns(),
                tried: 0,
                ignore_full: true,
            };
            self.balancer.load_changed(&v, i);
        }
    }

    /// Whether the pool balances over every server in service (too few available).
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// Whether server `i` takes new requests now: available, or in service while the pool
    /// is in panic.
    pub fn takes(&self, i: usize) -> bool {
        let s = &self.servers[i];
        if self.in_panic() {
            s.in_service()
        } else {
            s.eligible()
        }
    }

    /// Where server `s` is in this generation: `O(1)` for the newest generation (the
    /// server's hint), a search otherwise.
    pub fn index_of(&self, s: &Arc<ServerState>) -> Option<usize> {
        let hint = s.index_hint.load(Ordering::Relaxed) as usize;
        if self.servers.get(hint).is_some_and(|x| Arc::ptr_eq(x, s)) {
            return Some(hint);
        }
        self.servers.iter().position(|x| Arc::ptr_eq(x, s))
    }

    pub fn find(&self, name: &str) -> Option<&Arc<ServerState>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Set an operator state; a ready server takes traffic again at once.
    pub fn set_admin_state(&self, i: usize, st: AdminState) {
        let s = &self.servers[i];
        let old = AdminState::from_u8(s.admin.swap(st as u8, Ordering::AcqRel));
        if old != st {
            tracing::warn!(pool = %self.cfg.name, server = %s.name, from = old.as_str(), to = st.as_str(), "server state changed");
        }
        if st == AdminState::Maintenance {
            s.close_idle();
        }
        self.changed(Some(i));
    }

    pub fn set_weight(&self, i: usize, w: u32) {
        let s = &self.servers[i];
        s.weight.store(w, Ordering::Release);
        tracing::warn!(pool = %self.cfg.name, server = %s.name, weight = w, "server weight changed");
        self.changed(Some(i));
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
                self.changed(Some(i));
            }
            Some(Transition::WentDown) => {
                s.up.store(false, Ordering::Release);
                tracing::warn!(pool = %self.cfg.name, server = %s.name, addr = %s.addr, reason = why, "server is DOWN");
                self.changed(Some(i));
                s.close_idle();
            }
            None => {}
        }
    }

    /// An active health check result. A server ejected for connect failures also
    /// returns once `rise` checks passed.
    pub fn on_check(&self, i: usize, ok: bool) {
        let t = match self.servers[i].health.lock() {
            Ok(mut h) => h.on_check(ok),
            Err(_) => None,
        };
        self.apply(i, t, "health check failed");
        if self.servers[i].is_ejected() {
            let now = now_ns();
            let rise = self.cfg.health_check.rise;
            self.with_outlier(now, |_, _, servers, events| {
                if servers[i].on_check(ok, rise, now) {
                    events.push(Event::Returned {
                        server: i,
                        reason: Reason::ConnectFailures,
                        by_check: true,
                    });
                }
            });
        }
    }

    /// What an attempt on server `i` came to, at `now` (`clock::now_ns`): the one entry
    /// of passive evidence, for HTTP (fast path and hyper's) and TCP alike. Counts
    /// failures (a 5xx answer is one), and feeds the outlier detector: connect failures
    /// count towards `passive_failures` in a row, every failure towards the server's
    /// failure ratio, which the detector compares with its peers' at each window's end.
    ///
    /// A failed attempt also costs the server least-response-time's penalty
    /// ([`Attempt::Failed`]): a server that fails fast must not look fast.
    pub fn on_passive(&self, i: usize, outcome: Outcome, now: u64) {
        let Some(s) = self.servers.get(i) else {
            return;
        };
        if let (Outcome::Failed(_), Some(penalty)) = (outcome, self.lrt_penalty_ns) {
            s.ewma.record(Attempt::Failed, penalty, now);
        }
        let fail = match outcome {
            Outcome::Answered(status) if status >= 500 => Some(Fail::Status5xx),
            Outcome::Answered(_) | Outcome::Connected => None,
            Outcome::Failed(f) => Some(f),
        };
        if let Some(f) = fail {
            s.failures.fetch_add(1, Ordering::Relaxed);
            s.stats.error(f.kind());
            self.stats.error(f.kind());
        }
        if fail == Some(Fail::Connect) {
            self.with_outlier(now, |det, p, servers, events| {
                events.extend(det.on_connect_failure(p, servers, i, now));
            });
        } else if s.connect_dirty.load(Ordering::Relaxed)
            && s.connect_dirty.swap(false, Ordering::Relaxed)
        {
            // A connection was made: the connect failure streak ends.
            if let Ok(mut o) = s.outlier.lock() {
                o.on_connected();
            }
        }
    }

    /// An HTTP answer from server `i` (the HTTP/1 fast path and hyper's HTTP/2 path both end here):
    /// least-response-time records the server's wait, from the request's last byte sent
    /// (`sent_ns`) to the answer's first byte (`first_byte_ns`), all on `clock::now_ns`'s
    /// scale; then [`PoolState::on_passive`] takes the status.
    /// Whether [`Self::on_answer`] reads the request's sent and first-byte times (least
    /// response time's measure); without it the caller need not read the clock for them.
    #[inline]
    pub fn records_response_time(&self) -> bool {
        self.lrt_penalty_ns.is_some()
    }

    pub fn on_answer(&self, i: usize, status: u16, sent_ns: u64, first_byte_ns: u64, now: u64) {
        let Some(s) = self.servers.get(i) else {
            return;
        };
        if let Some(penalty) = self.lrt_penalty_ns {
            let a = Attempt::Answered {
                sent_ns,
                first_byte_ns,
            };
            s.ewma.record(a, penalty, now);
        }
        self.on_passive(i, Outcome::Answered(status), now);
    }

    /// Return servers whose ejection ran out and judge the failure-ratio window when it
    /// ended: one atomic load unless something is due.
    pub fn outlier_tick(&self, now: u64) {
        if now < self.shared.outlier_due.load(Ordering::Relaxed) {
            return;
        }
        let samples: Vec<Sample> = self
            .servers
            .iter()
            .map(|s| Sample {
                requests: s.requests.load(Ordering::Relaxed),
                failures: s.failures.load(Ordering::Relaxed),
            })
            .collect();
        self.with_outlier(now, |det, p, servers, events| {
            det.tick(p, servers, &samples, now, events);
        });
    }

    /// Run `f` over the pool's detector and every server's outlier state, then apply the
    /// events it pushed. Locks: the detector first, then the servers in index order (the
    /// only order in which more than one of these locks is ever held).
    fn with_outlier(
        &self,
        now: u64,
        f: impl FnOnce(
            &mut Detector,
            &OutlierPolicy,
            &mut [MutexGuard<'_, ServerOutlier>],
            &mut Vec<Event>,
        ),
    ) {
        let mut events = Vec::new();
        {
            let mut det = self
                .shared
                .detector
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut guards: Vec<MutexGuard<'_, ServerOutlier>> = self
                .servers
                .iter()
                .map(|s| s.outlier.lock().unwrap_or_else(PoisonError::into_inner))
                .collect();
            f(&mut det, &self.outlier, &mut guards, &mut events);
            for (s, g) in self.servers.iter().zip(&guards) {
                s.ejected.store(g.is_ejected(), Ordering::Release);
                s.connect_dirty
                    .store(g.connect_streak() > 0, Ordering::Relaxed);
            }
            self.shared
                .outlier_due
                .store(det.next_due_ns(&self.outlier, &guards), Ordering::Relaxed);
        }
        self.apply_outlier(&events, now);
    }

    /// Log and count what the detector decided; tell the balancer when a server left or
    /// returned.
    fn apply_outlier(&self, events: &[Event], now: u64) {
        for e in events {
            match *e {
                Event::Ejected { server, ejection } => {
                    let s = &self.servers[server];
                    if let Some(c) = self.shared.ejections.get(ejection.reason as usize) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    let secs = ejection.until_ns.saturating_sub(ejection.since_ns) as f64 / 1e9;
                    tracing::warn!(pool = %self.cfg.name, server = %s.name, addr = %s.addr, reason = ejection.reason.as_str(), seconds = secs, ejections = ejection.count, "server EJECTED");
                    s.close_idle();
                    self.changed(Some(server));
                }
                Event::Returned {
                    server,
                    reason,
                    by_check,
                } => {
                    let s = &self.servers[server];
                    if !self.cfg.slow_start.is_zero() {
                        s.up_since_ns.store(now, Ordering::Relaxed);
                    }
                    let how = if by_check {
                        "health checks passed"
                    } else {
                        "ejection time over"
                    };
                    tracing::warn!(pool = %self.cfg.name, server = %s.name, addr = %s.addr, reason = reason.as_str(), how, "server back from ejection");
                    self.changed(Some(server));
                }
                Event::Refused { server, reason } => {
                    self.shared
                        .ejections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    let s = &self.servers[server];
                    tracing::warn!(pool = %self.cfg.name, server = %s.name, reason = reason.as_str(), max_ejection_percent = self.cfg.outlier.max_ejection_percent, "ejection refused: the pool's max_ejection_percent is ejected already");
                }
            }
        }
    }

    pub fn any_up(&self) -> bool {
        (0..self.servers.len()).any(|i| self.takes(i))
    }

    /// Take a slot on server `i` unless it is at `max_in_flight`.
    pub fn try_acquire(self: &Arc<Self>, i: usize) -> Option<InFlight> {
        let s = &self.servers[i];
        let now = match self.cfg.max_in_flight {
            None => s.in_flight.fetch_add(1, Ordering::Relaxed) + 1,
            Some(max) => {
                s.in_flight
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                        (v < max).then_some(v + 1)
                    })
                    .ok()?
                    + 1
            }
        };
        if now > s.peak_in_flight.load(Ordering::Relaxed) {
            s.peak_in_flight.fetch_max(now, Ordering::Relaxed);
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
        self.pick_at(hash_key, tried, now_ns()).await
    }

    /// [`PoolState::pick`] with the time now (the caller's clock reading).
    pub async fn pick_at(
        self: &Arc<Self>,
        hash_key: u64,
        tried: u64,
        now: u64,
    ) -> Result<InFlight, PickError> {
        self.outlier_tick(now);
        let r = self.pick_inner(hash_key, tried, now).await;
        match &r {
            Ok(f) if tried != 0 => {
                self.stats.retry();
                f.server().stats.retry();
            }
            Ok(_) => {}
            Err(PickError::NoneUp) => self.stats.error(ErrorKind::NoServer),
            Err(PickError::QueueFull) => self.stats.error(ErrorKind::QueueFull),
            Err(PickError::QueueTimeout) => self.stats.error(ErrorKind::QueueTimeout),
        }
        r
    }

    async fn pick_inner(
        self: &Arc<Self>,
        hash_key: u64,
        tried: u64,
        now: u64,
    ) -> Result<InFlight, PickError> {
        if let Some(f) = self.pick_now(hash_key, tried, now) {
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
            if let Some(f) = self.pick_now(hash_key, tried, now_ns()) {
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

    fn pick_now(self: &Arc<Self>, hash_key: u64, tried: u64, now: u64) -> Option<InFlight> {
        for _ in 0..4 {
            let v = View {
                pool: self,
                now_ns: now,
                tried,
                ignore_full: false,
            };
            let i = self.balancer.pick(&v, hash_key)?;
            if let Some(f) = self.try_acquire(i) {
                return Some(f);
            }
            // Full meanwhile: least connections counted the slot taken.
            self.load_changed(i);
        }
        None
    }

    fn any_eligible(&self, tried: u64) -> bool {
        (0..self.servers.len()).any(|i| self.takes(i) && !is_tried(tried, i))
    }
}

/// A pool by name across generations: listeners hold this, requests load the current
/// generation.
pub struct PoolHandle {
    pub name: String,
    current: ArcSwap<PoolState>,
    /// Bumped after every store to `current`.
    generation: AtomicU64,
    /// Each worker's copy of `current` and the generation it was taken at (index: the
    /// worker): a request takes its pool with an uncontended lock and a compare instead
    /// of arc-swap's debt list (about 200 instructions a request, profiled). A copy is
    /// renewed when the generation moved, and dropped by its worker's sweep once stale, so
    /// it keeps an old generation (and its servers' idle connections) for a second at
    /// most.
    per_worker: Box<[WorkerCopy]>,
    /// Servers removed at run time, with their config at removal: a reload that gives
    /// the same config keeps them removed.
    pub removed: Mutex<HashMap<String, Server>>,
    pub workers: usize,
}

/// A worker's copy of a pool's current generation, on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct WorkerCopy(Mutex<Option<(u64, Arc<PoolState>)>>);

impl PoolHandle {
    pub fn new(p: PoolState, workers: usize) -> PoolHandle {
        PoolHandle {
            name: p.cfg.name.clone(),
            current: ArcSwap::from_pointee(p),
            generation: AtomicU64::new(0),
            per_worker: (0..workers).map(|_| WorkerCopy::default()).collect(),
            removed: Mutex::new(HashMap::new()),
            workers,
        }
    }

    /// [`PoolHandle::get`] from worker `worker`'s copy.
    pub fn get_on(&self, worker: usize) -> Arc<PoolState> {
        // (Read before `current`: a copy is never newer than the generation it is
        // marked with, so a store after this read is seen by the next request.)
        let g = self.generation.load(Ordering::Acquire);
        let Some(Ok(mut copy)) = self.per_worker.get(worker).map(|c| c.0.lock()) else {
            return self.get();
        };
        match &*copy {
            Some((at, p)) if *at == g => p.clone(),
            _ => {
                let p = self.get();
                *copy = Some((g, p.clone()));
                p
            }
        }
    }

    /// Drop worker `worker`'s copy if a newer generation replaced it.
    pub fn drop_stale(&self, worker: usize) {
        let g = self.generation.load(Ordering::Acquire);
        if let Some(Ok(mut copy)) = self.per_worker.get(worker).map(|c| c.0.lock()) {
            if copy.as_ref().is_some_and(|(at, _)| *at != g) {
                *copy = None;
            }
        }
    }

    /// The current generation (cheap; do not hold it for long).
    #[inline]
    pub fn load(&self) -> Guard<Arc<PoolState>> {
        self.current.load()
    }

    pub fn get(&self) -> Arc<PoolState> {
        self.current.load_full()
    }

    pub fn store(&self, p: PoolState) {
        self.current.store(Arc::new(p));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// An active check result for `s`, applied through the current generation.
    pub fn on_check(&self, s: &Arc<ServerState>, ok: bool) {
        let p = self.get();
        match p.index_of(s) {
            Some(i) => p.on_check(i, ok),
            None => {
                // Left the pool meanwhile: keep its state right for the stats.
                if let Ok(mut h) = s.health.lock() {
                    let _ = h.on_check(ok);
                }
            }
        }
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
        self.pool.load_changed(self.server);
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
        if !self.pool.takes(i) || is_tried(self.tried, i) {
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
        let w = s.weight();
        if since == NEVER {
            return w;
        }
        slow_start_weight(
            w,
            self.now_ns.saturating_sub(since),
            self.pool.cfg.slow_start.as_nanos() as u64,
        )
    }

    /// The weight in effect without slow start (round robin's schedule and the Maglev table
    /// are built on it, so they need no rebuild while a server ramps up).
    fn table_weight(&self, i: usize) -> u32 {
        self.pool.servers[i].weight()
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
#[path = "state_tests.rs"]
mod tests;
