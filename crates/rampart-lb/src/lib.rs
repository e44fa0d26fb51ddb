//! rampart's load balancer: listeners, HTTP and TCP forwarding, upstream connection
//! pools, active and passive health checks, retries, limits and queues, and its
//! operation: admin API (state, stats page, Prometheus metrics, runtime control),
//! hitless reload, graceful stop.
//!
//! Selection, health state, slow start, latency estimates and the retry budget come from
//! `rampart-balance`; this crate does the I/O around them.
//!
//! Threads: `run` starts N worker threads, each with its own single-threaded tokio
//! runtime and its own `SO_REUSEPORT` socket per listener (the kernel spreads new
//! connections), so a connection and its upstream connections live on one thread. The
//! calling thread (the control thread) runs the health checks, the admin API, the
//! signal handling and reloads; it hands new listening sockets to the workers over a
//! channel. With one worker there is one thread: the worker's tasks run on the control
//! thread's runtime (HAProxy's `nbthread 1`).

mod accesslog;
mod acme;
mod admin;
mod body;
mod clock;
mod conn;
pub mod ctl;
mod discovery;
pub mod firewall;
mod h1;
mod handoff;
mod health;
mod http;
mod http_up;
mod io;
mod metrics;
mod ocsp;
mod reload;
mod state;
mod stats;
mod tcp;
pub mod tls;
mod tls_certs;
mod tls_ocsp;
mod tls_tickets;
mod token;
mod upstream;
mod upstream_h2;
mod upstream_h2_body;
mod upstream_tls;
pub mod vrrp;
mod wake;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rampart_topology::lb::{Cidr, LbConfig, Listener, Mode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// Entry points for the fuzz targets in `fuzz/` (not an API).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use h1::fuzzing;
pub use http::strip_hop_by_hop;
pub use state::AdminState;
use state::{PoolHandle, PoolState};
use stats::Counters;
pub use tls::reload_certs;

/// Why the load balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("cannot listen on {addr} (listener \"{name}\"): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("a worker thread failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    UpstreamTls(#[from] upstream_tls::UpstreamTlsError),
    #[error("admin listener: {0}")]
    Admin(String),
    #[error("binary upgrade: {0}")]
    Handoff(String),
    #[error("VRRP: {0}")]
    Vrrp(String),
    #[error("firewall: {0}")]
    Firewall(String),
    #[error("pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Re-reads the configuration for a reload (the file, or the topology's node); the error
/// is the diagnostics text (`file:line:col: message` lines).
pub type Loader = Box<dyn Fn() -> Result<LbConfig, String> + Send + Sync>;

/// How to run besides the config.
pub struct RunOptions {
    /// Worker threads (at least 1).
    pub threads: usize,
    /// How SIGHUP and `/api/reload` re-read the config; without it, reloads are refused.
    pub loader: Option<Loader>,
    /// Written with this process's pid at start, removed at exit.
    pub pid_file: Option<PathBuf>,
}

/// Listener counters shared by every version of a listener.
pub struct ListenerStats {
    pub counters: Counters,
    pub conns_active: AtomicU64,
    pub conns_total: AtomicU64,
}

impl ListenerStats {
    pub fn new(workers: usize) -> ListenerStats {
        ListenerStats {
            counters: Counters::new(workers),
            conns_active: AtomicU64::new(0),
            conns_total: AtomicU64::new(0),
        }
    }
}

/// One listener at run time (a reload that changes its settings makes a new one;
/// connections keep the one they were accepted with).
pub struct ListenerRt {
    pub cfg: Listener,
    pub pool: Arc<PoolHandle>,
    /// The pools of `cfg.routes`, in their order (`None`: a redirecting route).
    pub routes: Box<[Option<Arc<PoolHandle>>]>,
    pub trusted: Vec<Cidr>,
    /// The forwarding headers added to each request (`forwarded.headers`).
    pub forwarded: rampart_topology::lb::ForwardedHeaders,
    pub stats: Arc<ListenerStats>,
    limit: Option<Arc<Semaphore>>,
    /// TLS termination (listeners with `tls`), from [`tls::prepare`].
    pub tls: Option<Arc<tls::TlsTerm>>,
    /// The L7 firewall, from [`firewall::prepare`].
    pub firewall: Option<Arc<firewall::Firewall>>,
}

impl ListenerRt {
    /// Which of the listener's routes takes a request with this `Host` value (or
    /// absolute-form authority), target, method and fields; `None`: the listener's pool.
    pub(crate) fn route(
        &self,
        host: Option<&[u8]>,
        target: &[u8],
        req: &rampart_topology::lb::RouteRequest<'_>,
    ) -> Option<usize> {
        if self.cfg.routes.is_empty() {
            return None;
        }
        rampart_topology::lb::pick_route(&self.cfg.routes, host, target, req)
    }

    /// The pool of a request [`ListenerRt::route`] routed (a redirecting route's
    /// requests never reach one: answered before).
    pub(crate) fn pool_for(&self, route: Option<usize>) -> &Arc<PoolHandle> {
        route
            .and_then(|i| self.routes.get(i))
            .and_then(Option::as_ref)
            .unwrap_or(&self.pool)
    }

    /// What the access log names as a routed request's pool: `-` for a redirect.
    pub(crate) fn pool_name_for(&self, route: Option<usize>) -> &str {
        match route.and_then(|i| self.routes.get(i)) {
            Some(None) => "-",
            _ => &self.pool_for(route).name,
        }
    }

    /// Whether `ip` is one of the lb's `forwarded.trusted_proxies` (IPv4-mapped IPv6 as
    /// IPv4).
    pub(crate) fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = firewall::cidr::canonical(ip);
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// A bound listener across reloads: its sockets (one per worker) and current settings.
pub(crate) struct ListenerSlot {
    pub name: String,
    pub address: SocketAddr,
    pub mode: Mode,
    pub current: ArcSwap<ListenerRt>,
    /// Cancelled when a reload removes the listener: its sockets close.
    pub stop: CancellationToken,
    pub stats: Arc<ListenerStats>,
    /// Copies of the listening sockets, for handing them to a new binary.
    pub fds: Mutex<Vec<std::net::TcpListener>>,
}

/// A command to a worker thread.
enum WorkerCmd {
    /// Accept on this socket for this listener.
    Listen(std::net::TcpListener, Arc<ListenerSlot>),
}

/// Everything the control thread and the admin API share.
pub(crate) struct Shared {
    pub workers: usize,
    pub listeners: Mutex<Vec<Arc<ListenerSlot>>>,
    pub pools: Mutex<Vec<Arc<PoolHandle>>>,
    pub config: Mutex<LbConfig>,
    /// Serializes reloads and runtime changes.
    pub control: Mutex<()>,
    pub loader: Option<Loader>,
    worker_tx: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    pub global: Arc<Semaphore>,
    pub max_connections: AtomicUsize,
    pub started_at: Instant,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// The admin socket (a copy, for handing it to a new binary).
    pub admin_fd: Mutex<Option<(SocketAddr, std::net::TcpListener)>>,
    /// Cancelled when this process must stop (an upgrade handed its sockets over).
    pub stop: CancellationToken,
    pub upgrading: std::sync::atomic::AtomicBool,
    /// Service discovery watchers by pool.
    pub discovery: Mutex<discovery::Watchers>,
    /// The virtual routers' state, for the admin API and the metrics.
    pub vrrp: Mutex<Vec<Arc<vrrp::RouterView>>>,
}

/// Client connections open right now (all listeners, also removed ones).
static ACTIVE_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Cancelled when the process stops: accept loops end, idle connections close.
static SHUTDOWN: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

pub(crate) fn shutdown_token() -> &'static CancellationToken {
    &SHUTDOWN
}

/// Set with [`SHUTDOWN`]'s cancellation: a plain load for the data path (asking the token
/// takes its lock).
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn stopping() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

pub(crate) fn active_connections() -> u64 {
    ACTIVE_CONNECTIONS.load(Ordering::Relaxed)
}

pub(crate) fn bind(name: &str, address: SocketAddr) -> Result<std::net::TcpListener, LbError> {
    let err = |source| LbError::Bind {
        name: name.to_string(),
        addr: address,
        source,
    };
    let s = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    // A virtual IP is on this host only while it is the VRRP master: bind it anyway.
    if address.is_ipv4() {
        s.set_freebind(true).map_err(err)?;
    } else {
        s.set_freebind_ipv6(true).map_err(err)?;
    }
    s.set_nodelay(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&address.into()).map_err(err)?;
    s.listen(4096).map_err(err)?;
    Ok(s.into())
}

impl Shared {
    pub(crate) fn listener_rt(
        &self,
        l: &Listener,
        pools: &[Arc<PoolHandle>],
        cfg: &LbConfig,
        stats: Arc<ListenerStats>,
    ) -> Option<ListenerRt> {
        let pool = pools.get(l.pool)?.clone();
        // Indices the validation checked.
        let routes = l
            .routes
            .iter()
            .map(|r| match r.pool() {
                Some(p) => pools.get(p).cloned().map(Some),
                None => Some(None),
            })
            .collect::<Option<_>>()?;
        Some(ListenerRt {
            cfg: l.clone(),
            pool,
            routes,
            trusted: cfg.trusted_proxies.clone(),
            forwarded: cfg.forwarded_headers,
            stats,
            limit: l.max_connections.map(|n| Arc::new(Semaphore::new(n))),
            tls: l.tls.as_ref().and_then(|_| tls::term(&l.name)),
            firewall: firewall::get(&l.name),
        })
    }

    /// Hand a listener's sockets to the workers (one per worker when bound here; those
    /// inherited from an upgrade are spread over the workers, whatever their number).
    pub(crate) fn start_listener(
        &self,
        slot: &Arc<ListenerSlot>,
        socks: Vec<std::net::TcpListener>,
    ) {
        for (j, sock) in socks.into_iter().enumerate() {
            match sock.try_clone() {
                Ok(c) => {
                    if let Ok(mut f) = slot.fds.lock() {
                        f.push(c);
                    }
                }
                Err(e) => {
                    tracing::warn!(listener = %slot.name, error = %e, "cannot keep a copy of a listening socket (upgrades will not get it)")
                }
            }
            let tx = &self.worker_tx[j % self.worker_tx.len()];
            if tx.send(WorkerCmd::Listen(sock, slot.clone())).is_err() {
                tracing::error!(listener = %slot.name, "a worker thread is gone");
            }
        }
    }

    /// Every listening socket with what it is, for a new binary.
    pub(crate) fn sockets_for_upgrade(&self) -> Vec<(handoff::FdInfo, std::net::TcpListener)> {
        let mut out = Vec::new();
        for slot in self.listeners.lock().map(|l| l.clone()).unwrap_or_default() {
            let copies: Vec<std::net::TcpListener> = slot
                .fds
                .lock()
                .map(|f| f.iter().filter_map(|s| s.try_clone().ok()).collect())
                .unwrap_or_default();
            for f in copies {
                out.push((
                    handoff::FdInfo {
                        name: slot.name.clone(),
                        address: slot.address,
                        admin: false,
                    },
                    f,
                ));
            }
        }
        if let Ok(guard) = self.admin_fd.lock() {
            if let Some((addr, l)) = guard.as_ref() {
                if let Ok(c) = l.try_clone() {
                    out.push((
                        handoff::FdInfo {
                            name: String::new(),
                            address: *addr,
                            admin: true,
                        },
                        c,
                    ));
                }
            }
        }
        out
    }

    pub(crate) fn new_pool(&self, cfg: &rampart_topology::lb::Pool) -> Arc<PoolHandle> {
        Arc::new(PoolHandle::new(
            PoolState::new(cfg.clone(), self.workers, rand::random()),
            self.workers,
        ))
    }

    pub(crate) fn pool(&self, name: &str) -> Option<Arc<PoolHandle>> {
        self.pools
            .lock()
            .ok()?
            .iter()
            .find(|p| p.name == name)
            .cloned()
    }
}

/// Run the load balancer until SIGINT or SIGTERM, then stop gracefully: stop accepting,
/// let in-flight requests finish within the grace period, return.
pub fn run(config: LbConfig, opts: RunOptions) -> Result<(), LbError> {
    let workers = opts.threads.max(1);
    // The control runtime and the signal handlers first: a signal that comes as soon as
    // the ports answer must find its handler (SIGHUP's default is to terminate).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LbError::Runtime)?;
    let signals = {
        let _enter = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).map_err(LbError::Runtime)?,
            signal(SignalKind::interrupt()).map_err(LbError::Runtime)?,
            signal(SignalKind::hangup()).map_err(LbError::Runtime)?,
            signal(SignalKind::user_defined2()).map_err(LbError::Runtime)?,
        )
    };
    let mut worker_tx = Vec::new();
    let mut worker_rx = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        worker_tx.push(tx);
        worker_rx.push(rx);
    }
    let shared = Arc::new(Shared {
        workers,
        listeners: Mutex::new(Vec::new()),
        pools: Mutex::new(Vec::new()),
        config: Mutex::new(config.clone()),
        control: Mutex::new(()),
        loader: opts.loader,
        worker_tx,
        global: Arc::new(Semaphore::new(config.max_connections)),
        max_connections: AtomicUsize::new(config.max_connections),
        started_at: Instant::now(),
        reloads: AtomicU64::new(0),
        reload_failures: AtomicU64::new(0),
        admin_fd: Mutex::new(None),
        stop: CancellationToken::new(),
        upgrading: std::sync::atomic::AtomicBool::new(false),
        discovery: Mutex::new(Default::default()),
        vrrp: Mutex::new(Vec::new()),
    });
    accesslog::configure(config.access_log.as_ref())
        .map_err(|e| LbError::Admin(format!("cannot open the access log: {e}")))?;
    // Started by an upgrade: the previous process's sockets.
    let mut inherited = handoff::receive_from_env().map_err(LbError::Handoff)?;
    let pools: Vec<Arc<PoolHandle>> = config.pools.iter().map(|p| shared.new_pool(p)).collect();
    // Certificates first: a missing or broken file refuses the start, naming the file.
    tls::prepare(&config)?;
    // The firewalls' deny files too.
    firewall::prepare(&config).map_err(LbError::Firewall)?;
    upstream_tls::prepare(&config)?;

    // Bind every socket before starting anything, so a busy port fails the start.
    let mut bound = Vec::new();
    for l in &config.listeners {
        let Some(pool) = pools.get(l.pool).cloned() else {
            continue;
        };
        let mut socks = inherited.take_listener(&l.name, l.address);
        if socks.is_empty() {
            for _ in 0..workers {
                socks.push(bind(&l.name, l.address)?);
            }
        }
        let stats = Arc::new(ListenerStats::new(workers));
        let Some(rt) = shared.listener_rt(l, &pools, &config, stats.clone()) else {
            continue;
        };
        let slot = Arc::new(ListenerSlot {
            name: l.name.clone(),
            address: l.address,
            mode: l.mode,
            current: ArcSwap::from_pointee(rt),
            stop: CancellationToken::new(),
            stats,
            fds: Mutex::new(Vec::new()),
        });
        tracing::info!(listener = %l.name, address = %l.address, mode = %l.mode,
            pool = %pool.name, algorithm = %pool.get().cfg.algorithm, servers = pool.get().servers.len(), threads = workers,
            "listening");
        bound.push((slot, socks));
    }
    let admin_listener = match &config.admin {
        Some(a) => Some(admin::bind(a, inherited.take_admin(a.address))?),
        None => None,
    };
    if let Some((l, _)) = &admin_listener {
        if let (Ok(c), Ok(addr), Ok(mut slot)) =
            (l.try_clone(), l.local_addr(), shared.admin_fd.lock())
        {
            *slot = Some((addr, c));
        }
    }
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id())).map_err(|source| {
            LbError::PidFile {
                path: p.clone(),
                source,
            }
        })?;
    }
    if let Ok(mut ps) = shared.pools.lock() {
        *ps = pools.clone();
    }
    for (slot, socks) in bound {
        shared.start_listener(&slot, socks);
        if let Ok(mut ls) = shared.listeners.lock() {
            ls.push(slot);
        }
    }

    // One worker: it runs on this thread, beside the control plane (HAProxy's nbthread 1).
    // A process of one thread has a file table of its own, which spares the kernel taking
    // and dropping a reference on the file of each descriptor a system call names (`fput`
    // left the profile: about 1 % of a request's CPU on loopback). More workers: a thread
    // each.
    let mut handles = Vec::new();
    for (worker, rx) in worker_rx.into_iter().enumerate() {
        let global = shared.global.clone();
        let sweep_shared = shared.clone();
        if workers == 1 {
            stats::set_thread_shard(worker + 1);
            rt.spawn(worker_loop(rx, global, sweep_shared, worker));
            continue;
        }
        let h = std::thread::Builder::new()
            .name(format!("lb-worker-{worker}"))
            .spawn(move || -> Result<(), LbError> {
                stats::set_thread_shard(worker + 1);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(LbError::Runtime)?;
                rt.block_on(worker_loop(rx, global, sweep_shared, worker));
                Ok(())
            })
            .map_err(LbError::Runtime)?;
        handles.push(h);
    }

    let result = rt.block_on(async {
        for p in &pools {
            health::spawn_checks(p);
        }
        discovery::reconcile(&shared);
        tls::spawn_watch();
        acme::sync(&config);
        if let Some((l, a)) = admin_listener {
            admin::spawn(l, a, shared.clone()).map_err(LbError::Admin)?;
        }
        // The virtual routers last: a balancer takes a virtual IP only once it serves.
        let vrrp_rt = if config.vrrp.is_empty() {
            None
        } else {
            let v = vrrp::start(&shared, &config.vrrp, &inherited.vrrp_masters)
                .map_err(LbError::Vrrp)?;
            if let Ok(mut views) = shared.vrrp.lock() {
                *views = v.views.clone();
            }
            Some(v)
        };
        let (mut term, mut int, mut hup, mut usr2) = signals;
        // Accepting on every socket now: a previous process may stop.
        inherited.ready();
        let mut poll_workers = tokio::time::interval(Duration::from_millis(500));
        let mut flush_log = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = shared.stop.cancelled() => break,
                _ = usr2.recv() => {
                    tracing::info!("SIGUSR2: upgrading to the binary on disk");
                    let sh = shared.clone();
                    tokio::spawn(async move {
                        if let Err(e) = upgrade(&sh).await {
                            tracing::error!("upgrade failed, this process keeps serving: {e}");
                        }
                    });
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    if let Err(e) = reload::reload(&shared) {
                        tracing::error!("reload refused, the running configuration stays:\n{e}");
                        eprintln!("reload refused, the running configuration stays:\n{e}");
                    }
                }
                _ = flush_log.tick() => accesslog::flush(),
                _ = poll_workers.tick() => {
                    if handles.iter().any(|h| h.is_finished()) {
                        return Err(LbError::Worker("a worker thread stopped".into()));
                    }
                }
            }
        }
        // Make before break: a master hands its virtual IPs over (and keeps serving
        // meanwhile) before the listeners stop accepting. After a binary upgrade the new
        // process runs the routers already: this one stops them without a word.
        let upgraded = shared.upgrading.load(Ordering::Acquire) && shared.stop.is_cancelled();
        let release = match vrrp_rt {
            Some(v) if upgraded => {
                v.detach().await;
                None
            }
            Some(v) => Some(v.stop().await),
            None => None,
        };
        let grace = shared
            .config
            .lock()
            .map(|c| c.grace)
            .unwrap_or(Duration::from_secs(30));
        // The handed-over addresses go after a short linger, while the drain goes on.
        let linger = async move {
            if let Some(r) = release {
                tokio::time::sleep(vrrp::HANDOVER_LINGER).await;
                r.apply();
            }
        };
        tokio::join!(drain(&shared, grace), linger);
        accesslog::flush();
        Ok(())
    });
    if let Some(p) = &opts.pid_file {
        // Only our own: after an upgrade the new process has written its pid there.
        let ours = std::fs::read_to_string(p)
            .map(|t| t.trim() == std::process::id().to_string())
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

/// One worker's runtime: its housekeeping, then the listening sockets the control plane
/// hands it, each served by an accept loop. Runs until the process exits.
async fn worker_loop(
    mut rx: mpsc::UnboundedReceiver<WorkerCmd>,
    global: Arc<Semaphore>,
    sweep_shared: Arc<Shared>,
    worker: usize,
) {
    // Idle upstream connections a server closed go, even if nobody sends to it again.
    tokio::spawn(upstream::sweep_idle(
        move || {
            sweep_shared
                .pools
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default()
        },
        worker,
    ));
    // The fast path's spare buffers a burst left go once unused.
    tokio::spawn(h1::trim_spare_buffers_every(upstream::SWEEP_EVERY));
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WorkerCmd::Listen(sock, slot) => match tokio::net::TcpListener::from_std(sock) {
                Ok(tl) => {
                    tokio::spawn(accept_loop(tl, slot, global.clone(), worker));
                }
                Err(e) => {
                    tracing::error!(listener = %slot.name, error = %e, "cannot register a listening socket")
                }
            },
        }
    }
    // The control plane is gone: the process is exiting.
    std::future::pending::<()>().await
}

/// Start the binary on disk with the same arguments, hand it the listening sockets,
/// and once it accepts, stop this process (gracefully). Returns the new pid.
pub(crate) async fn upgrade(shared: &Arc<Shared>) -> Result<u32, String> {
    if shared.upgrading.swap(true, Ordering::AcqRel) {
        return Err("an upgrade is already in progress".into());
    }
    let sockets = shared.sockets_for_upgrade();
    let masters = shared
        .vrrp
        .lock()
        .map(|v| vrrp::Vrrp::masters(&v))
        .unwrap_or_default();
    let r = tokio::task::spawn_blocking(move || handoff::upgrade(sockets, masters))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match &r {
        Ok(pid) => {
            tracing::info!(new_pid = pid, "upgrade done: stopping this process");
            shared.stop.cancel();
        }
        Err(_) => shared.upgrading.store(false, Ordering::Release),
    }
    r
}

/// Stop accepting, close idle connections, wait for the open ones to finish within `grace`.
async fn drain(shared: &Shared, grace: Duration) {
    // Our copies of the listening sockets go: once the accept loops end, the sockets
    // close (or live on only in a process they were handed to).
    for slot in shared
        .listeners
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default()
    {
        if let Ok(mut f) = slot.fds.lock() {
            f.clear();
        }
    }
    if let Ok(mut a) = shared.admin_fd.lock() {
        *a = None;
    }
    let open = active_connections();
    tracing::info!(open_connections = open, grace = ?grace, "stopping: no new connections, finishing in-flight requests");
    STOPPING.store(true, Ordering::SeqCst);
    shutdown_token().cancel();
    wake::all();
    let deadline = Instant::now() + grace;
    loop {
        let open = active_connections();
        if open == 0 {
            tracing::info!("stopped: every connection finished");
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                open_connections = open,
                "stopped: grace period over, closing the rest"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts a client connection as open while alive.
struct ConnGuard(Arc<ListenerStats>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns_active.fetch_sub(1, Ordering::Relaxed);
        ACTIVE_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    slot: Arc<ListenerSlot>,
    global: Arc<Semaphore>,
    worker: usize,
) {
    let stop = slot.stop.clone();
    let shutdown = shutdown_token().clone();
    loop {
        let l = slot.current.load_full();
        let next = async {
            let g = global.clone().acquire_owned().await.ok()?;
            let lp = match &l.limit {
                Some(s) => Some(s.clone().acquire_owned().await.ok()?),
                None => None,
            };
            Some((g, lp, listener.accept().await))
        };
        let (g, lp, accepted) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
            r = next => match r {
                Some(x) => x,
                None => break,
            },
        };
        // The settings current now, not those loaded before the wait: the first
        // connection after a reload is served by the reloaded listener too. (Its permit
        // may be from the old `max_connections`, which bounded the wait.)
        let l = slot.current.load_full();
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %l.cfg.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The firewall first: a refused client costs a close, nothing else.
        let ticket = match &l.firewall {
            Some(fw) => match fw.admit(peer.ip(), l.is_trusted(peer.ip()), Instant::now()) {
                Ok(t) => t,
                Err(_) => continue,
            },
            None => None,
        };
        let _ = tcp.set_nodelay(true);
        slot.stats.conns_total.fetch_add(1, Ordering::Relaxed);
        slot.stats.conns_active.fetch_add(1, Ordering::Relaxed);
        ACTIVE_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let guard = ConnGuard(slot.stats.clone());
        let guards = (g, lp, guard, ticket);
        match l.cfg.mode {
            Mode::Http => http::spawn(tcp, peer, l, worker, guards),
            Mode::Tcp => {
                tokio::spawn(async move {
                    let _guards = guards;
                    tcp::serve(tcp, peer, l).await
                });
            }
        }
    }
    tracing::debug!(listener = %slot.name, worker, "listening socket closed");
}
