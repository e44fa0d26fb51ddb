//! rampart's load balancer: listeners, HTTP and TCP forwarding, upstream connection
//! pools, active and passive health checks, retries, limits and queues.
//!
//! Selection, health state, slow start, latency estimates and the retry budget come from
//! `rampart-balance`; this crate does the I/O around them.
//!
//! Threads: `run` starts N worker threads, each with its own single-threaded tokio
//! runtime and its own `SO_REUSEPORT` socket per listener (the kernel spreads new
//! connections), so a connection and its upstream connections live on one thread. The
//! calling thread runs the health checks and waits for SIGINT/SIGTERM.

mod body;
mod clock;
mod health;
mod http;
mod io;
mod state;
mod tcp;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rampart_topology::lb::{Cidr, LbConfig, Listener, Mode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Semaphore;

pub use http::strip_hop_by_hop;
use state::PoolState;

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
}

/// One listener at run time.
pub struct ListenerRt {
    pub cfg: Listener,
    pub pool: Arc<PoolState>,
    pub trusted: Vec<Cidr>,
    limit: Option<Arc<Semaphore>>,
}

fn bind(l: &Listener) -> Result<std::net::TcpListener, LbError> {
    let err = |source| LbError::Bind {
        name: l.name.clone(),
        addr: l.address,
        source,
    };
    let s = Socket::new(
        Domain::for_address(l.address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_nodelay(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&l.address.into()).map_err(err)?;
    s.listen(4096).map_err(err)?;
    Ok(s.into())
}

/// Run the load balancer with `threads` worker threads until SIGINT or SIGTERM.
pub fn run(config: LbConfig, threads: usize) -> Result<(), LbError> {
    let threads = threads.max(1);
    let pools: Vec<Arc<PoolState>> = config
        .pools
        .iter()
        .map(|p| Arc::new(PoolState::new(p.clone(), threads, rand::random())))
        .collect();
    let global = Arc::new(Semaphore::new(config.max_connections));
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let Some(pool) = pools.get(l.pool).cloned() else {
            continue;
        };
        listeners.push(Arc::new(ListenerRt {
            cfg: l.clone(),
            pool,
            trusted: config.trusted_proxies.clone(),
            limit: l.max_connections.map(|n| Arc::new(Semaphore::new(n))),
        }));
    }

    // Bind every socket before starting anything, so a busy port fails the start.
    let mut sockets: Vec<Vec<std::net::TcpListener>> = Vec::new();
    for _ in 0..threads {
        let mut per = Vec::new();
        for l in &listeners {
            per.push(bind(&l.cfg)?);
        }
        sockets.push(per);
    }
    for l in &listeners {
        tracing::info!(listener = %l.cfg.name, address = %l.cfg.address, mode = %l.cfg.mode,
            pool = %l.pool.cfg.name, algorithm = %l.pool.cfg.algorithm, servers = l.pool.servers.len(), threads,
            "listening");
    }

    let mut handles = Vec::new();
    for (worker, socks) in sockets.into_iter().enumerate() {
        let listeners = listeners.clone();
        let global = global.clone();
        let h = std::thread::Builder::new()
            .name(format!("lb-worker-{worker}"))
            .spawn(move || -> Result<(), LbError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(LbError::Runtime)?;
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for (sock, l) in socks.into_iter().zip(listeners) {
                        let tl = tokio::net::TcpListener::from_std(sock).map_err(|source| {
                            LbError::Bind {
                                name: l.cfg.name.clone(),
                                addr: l.cfg.address,
                                source,
                            }
                        })?;
                        tasks.push(tokio::spawn(accept_loop(tl, l, global.clone(), worker)));
                    }
                    for t in tasks {
                        let _ = t.await;
                    }
                    Ok(())
                })
            })
            .map_err(LbError::Runtime)?;
        handles.push(h);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LbError::Runtime)?;
    rt.block_on(async {
        for p in &pools {
            health::spawn_checks(p);
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(LbError::Runtime)?;
        let mut poll_workers = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = poll_workers.tick() => {
                    if let Some(h) = handles.iter().find(|h| h.is_finished()) {
                        let _ = h;
                        return Err(LbError::Worker("a worker thread stopped".into()));
                    }
                }
            }
        }
        tracing::info!("stopping");
        Ok(())
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    l: Arc<ListenerRt>,
    global: Arc<Semaphore>,
    worker: usize,
) {
    loop {
        let Ok(g) = global.clone().acquire_owned().await else {
            return;
        };
        let lp = match &l.limit {
            Some(s) => match s.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %l.cfg.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let l = l.clone();
        let fut = async move {
            let _g = g;
            let _lp = lp;
            match l.cfg.mode {
                Mode::Http => http::serve(tcp, peer, l, worker).await,
                Mode::Tcp => tcp::serve(tcp, peer, l).await,
            }
        };
        tokio::spawn(fut);
    }
}
