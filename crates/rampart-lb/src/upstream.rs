//! Upstream connections: connect with a timeout, HTTP/1.1 handshakes, and per-server,
//! per-worker pools of idle keep-alive connections.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use rampart_topology::lb::PoolTls;

use crate::body::ReqBody;
use crate::state::ServerState;
use crate::upstream_tls::UpStream;

/// Most idle connections kept per server and worker (nginx's `keepalive 64`); the surplus
/// is closed when handed back. Each idle connection costs ~25 KB (hyper's buffers and its
/// dispatch channel), so a burst of concurrency must not leave hundreds behind.
const MAX_IDLE: usize = 64;

/// An idle upstream connection of the HTTP/1.1 fast path: nothing but the socket (and its
/// TLS state when the pool speaks TLS to its servers; no buffers, no task), with when it
/// was handed back (the [`crate::clock`] scale).
pub struct IdleRaw {
    pub conn: UpStream,
    pub since_ns: u64,
}

/// An idle upstream connection ready for its next request.
pub struct IdleConn {
    pub sender: SendRequest<ReqBody>,
    pub since: Instant,
}

/// Why an upstream connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake with {addr} as \"{name}\": {source}")]
    Tls {
        addr: SocketAddr,
        name: String,
        source: io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// A TCP connection with a timeout, Nagle off.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let s = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// A new HTTP/1.1 connection (over TLS when the pool has `tls`); its driver task is
/// spawned on the current runtime.
pub async fn connect_http(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<&PoolTls>,
) -> Result<SendRequest<ReqBody>, ConnectError> {
    let tcp = crate::upstream_tls::connect(addr, timeout, tls).await?;
    handshake_http1(tcp, addr).await
}

/// hyper's HTTP/1.1 client over an upstream connection; its driver task is spawned on
/// the current runtime.
pub async fn handshake_http1(
    tcp: UpStream,
    addr: SocketAddr,
) -> Result<SendRequest<ReqBody>, ConnectError> {
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// An idle connection of `server` for worker `worker`, ready for a request; `None` when
/// there is none (stale ones are dropped on the way).
pub async fn checkout(
    server: &ServerState,
    worker: usize,
    idle_timeout: Duration,
) -> Option<SendRequest<ReqBody>> {
    loop {
        let c = {
            let mut list = server.idle.get(worker)?.lock().ok()?;
            list.pop()?
        };
        let mut sender = c.sender;
        if sender.is_closed() || c.since.elapsed() > idle_timeout {
            continue;
        }
        if sender.is_ready() {
            return Some(sender);
        }
        // Just returned: the connection task has not yet seen the end of the last response.
        match tokio::time::timeout(Duration::from_millis(200), sender.ready()).await {
            Ok(Ok(())) => return Some(sender),
            _ => continue,
        }
    }
}

/// Give a connection back after a response was read to its end. Connections idle for
/// longer than `idle_timeout` (the oldest are at the front) are closed on the way.
pub fn checkin(
    server: &ServerState,
    worker: usize,
    sender: SendRequest<ReqBody>,
    idle_timeout: Duration,
) {
    if sender.is_closed() || !server.is_up() || server.is_ejected() {
        return;
    }
    if let Some(slot) = server.idle.get(worker) {
        if let Ok(mut list) = slot.lock() {
            let stale = list
                .iter()
                .take_while(|c| c.since.elapsed() > idle_timeout)
                .count();
            if stale > 0 {
                list.drain(..stale);
            }
            if list.len() < MAX_IDLE {
                list.push(IdleConn {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }
}

/// An idle fast-path connection of `server` for worker `worker`, still open, not idle for
/// longer than `idle_timeout`; `None` when there is none (the others are closed on the way).
pub fn checkout_raw(
    server: &ServerState,
    worker: usize,
    idle_timeout: Duration,
    now_ns: u64,
) -> Option<UpStream> {
    let list = server.idle_raw.get(worker)?;
    loop {
        let mut c = list.lock().ok()?.pop()?;
        if now_ns.saturating_sub(c.since_ns) > idle_timeout.as_nanos() as u64 {
            // The newest is too old: so are the others.
            if let Ok(mut l) = list.lock() {
                l.clear();
            }
            return None;
        }
        // Costs a syscall only when the socket was reported readable.
        if c.conn.alive() {
            return Some(c.conn);
        }
    }
}

/// Hand back a fast-path connection whose last response ended cleanly. Connections idle
/// for longer than `idle_timeout` (the oldest are at the front) are closed on the way.
pub fn checkin_raw(
    server: &ServerState,
    worker: usize,
    conn: UpStream,
    idle_timeout: Duration,
    now_ns: u64,
) {
    if !server.is_up() || server.is_ejected() {
        return;
    }
    let Some(slot) = server.idle_raw.get(worker) else {
        return;
    };
    let Ok(mut list) = slot.lock() else {
        return;
    };
    let limit = idle_timeout.as_nanos() as u64;
    let stale = list
        .iter()
        .take_while(|c| now_ns.saturating_sub(c.since_ns) > limit)
        .count();
    if stale > 0 {
        list.drain(..stale);
    }
    if list.len() < MAX_IDLE {
        list.push(IdleRaw {
            conn,
            since_ns: now_ns,
        });
    }
}

/// How often each worker looks over its idle upstream connections.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Close worker `worker`'s idle upstream connections that a server closed (they would sit
/// in CLOSE_WAIT until the server is next used) or that were idle past the pool's
/// `idle` timeout, in every pool. Runs on the worker's own runtime, every
/// [`SWEEP_EVERY`], so that a server nobody sends to keeps no dead sockets.
pub async fn sweep_idle(
    pools: impl Fn() -> Vec<std::sync::Arc<crate::state::PoolHandle>>,
    worker: usize,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::clock::now_ns();
        let mut closed = 0usize;
        for h in pools() {
            h.drop_stale(worker);
            let p = h.get();
            let limit = p.cfg.timeouts.idle;
            for s in p.servers.iter() {
                closed += sweep_server(s, worker, limit, now);
            }
        }
        if closed > 0 {
            tracing::debug!(
                worker,
                closed,
                "closed idle upstream connections (closed by the server or idle too long)"
            );
        }
    }
}

/// [`sweep_idle`] for one server: how many connections were closed.
fn sweep_server(s: &ServerState, worker: usize, limit: Duration, now_ns: u64) -> usize {
    let mut closed = 0;
    if let Some(Ok(mut l)) = s.idle_raw.get(worker).map(|m| m.lock()) {
        if !l.is_empty() {
            let before = l.len();
            let max = limit.as_nanos() as u64;
            l.retain_mut(|c| now_ns.saturating_sub(c.since_ns) <= max && c.conn.alive());
            closed += before - l.len();
        }
    }
    if let Some(Ok(mut l)) = s.idle.get(worker).map(|m| m.lock()) {
        if !l.is_empty() {
            let before = l.len();
            l.retain(|c| !c.sender.is_closed() && c.since.elapsed() <= limit);
            closed += before - l.len();
        }
    }
    closed + crate::upstream_h2::sweep(s, worker, limit, now_ns)
}
