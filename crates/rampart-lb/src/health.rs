//! Active health checks: one background task per server (TCP connect or HTTP GET), on
//! the control thread's runtime. A task follows its pool across generations (a reload
//! can change the check) and ends when its server leaves the pool.
//!
//! At scale: a pool's first checks are spread over up to one interval (100 ms for pools of
//! up to 1,000 servers, 0.1 ms more a server beyond, see [`first_check_window`]), so
//! thousands of servers are probed evenly rather than in one burst (later checks keep that
//! spread: each task sleeps an interval plus jitter), and at most [`MAX_CONCURRENT_CHECKS`] probes of
//! the whole balancer are in flight at once (a probe waits for a permit; its timeout starts
//! once it has one).
//!
//! Over TLS (a pool with `tls`), a check offers the pool's whole `alpn` list, as its
//! requests do: an HTTP check of a server that picks `h2` is a GET of the path on a new
//! HTTP/2 connection (so a server that speaks only HTTP/2, `alpn = ["h2"]`, is checked
//! in its language), else an HTTP/1.1 GET. Healthy: the expected status.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_topology::lb::{CheckKind, HealthCheck, PoolTls};
use rand::Rng;

use crate::state::{AdminState, CheckRecord, PoolHandle, ServerState};

/// Spawn the check task of every server of `pool` on the current runtime.
pub fn spawn_checks(pool: &Arc<PoolHandle>) {
    for s in pool.get().servers.iter() {
        spawn_check(pool, s);
    }
}

/// Spawn the check task of one server.
pub fn spawn_check(pool: &Arc<PoolHandle>, s: &Arc<ServerState>) {
    let pool = pool.clone();
    let s = s.clone();
    tokio::spawn(async move {
        let stop = s.stop_checks.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = check_loop(pool, s) => {}
        }
    });
}

/// Probes in flight at once, over every pool of the balancer.
pub const MAX_CONCURRENT_CHECKS: usize = 256;

fn permits() -> &'static tokio::sync::Semaphore {
    static P: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    P.get_or_init(|| tokio::sync::Semaphore::new(MAX_CONCURRENT_CHECKS))
}

/// Over how long a pool's first checks are spread: 100 ms up to 1,000 servers, then growing
/// by 0.1 ms a server up to one whole interval (1 s at 10,000 servers with a 1 s interval),
/// so a pool is probed at most ~10 servers a millisecond.
pub fn first_check_window(interval: Duration, servers: usize) -> Duration {
    let spread =
        Duration::from_micros(100).saturating_mul(u32::try_from(servers).unwrap_or(u32::MAX));
    spread.max(Duration::from_millis(100)).min(interval)
}

async fn check_loop(pool: Arc<PoolHandle>, s: Arc<ServerState>) {
    let (interval, servers) = {
        let p = pool.get();
        (p.cfg.health_check.interval, p.servers.len())
    };
    // Spread the first checks so servers are not probed in lockstep.
    let first =
        rand::thread_rng().gen_range(Duration::ZERO..=first_check_window(interval, servers));
    tokio::time::sleep(first).await;
    loop {
        let p = pool.get();
        let hc = p.cfg.health_check.clone();
        let tls = p.cfg.tls.clone();
        drop(p);
        if hc.kind != CheckKind::None && s.admin_state() != AdminState::Maintenance {
            let permit = permits().acquire().await;
            let started = Instant::now();
            let r = check_once(&hc, &s, tls.as_ref()).await;
            drop(permit);
            let rec = CheckRecord {
                at_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                ok: r.is_ok(),
                duration_ms: started.elapsed().as_secs_f64() * 1e3,
                error: r.as_ref().err().cloned().unwrap_or_default(),
            };
            if let Ok(mut l) = s.last_check.lock() {
                *l = Some(rec);
            }
            pool.on_check(&s, r.is_ok());
        }
        let jitter = if hc.jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::thread_rng().gen_range(Duration::ZERO..=hc.jitter)
        };
        tokio::time::sleep(hc.interval + jitter).await;
    }
}

/// One probe, bounded by the check timeout; the error says why it failed. With the pool's
/// `tls`, HTTP checks go over TLS (and a TCP check is a TLS handshake).
pub async fn check_once(
    hc: &HealthCheck,
    s: &ServerState,
    tls: Option<&PoolTls>,
) -> Result<(), String> {
    let addr = s.addr;
    let probe = async {
        let (tcp, h2) = crate::upstream_tls::connect_alpn(addr, hc.timeout, tls)
            .await
            .map_err(|e| e.to_string())?;
        match &hc.kind {
            CheckKind::None | CheckKind::Tcp => Ok(()),
            CheckKind::Http {
                path,
                expect_status,
            } => {
                let resp = if h2 {
                    get_h2(tcp, path, tls, addr).await?
                } else {
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                            .await
                            .map_err(|e| e.to_string())?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    let req = Request::get(path.as_str())
                        .header(http::header::HOST, addr.to_string())
                        .header(http::header::CONNECTION, "close")
                        .header(http::header::USER_AGENT, USER_AGENT)
                        .body(Empty::<Bytes>::new())
                        .map_err(|e| e.to_string())?;
                    sender.send_request(req).await.map_err(|e| e.to_string())?
                };
                let want = StatusCode::from_u16(*expect_status).unwrap_or(StatusCode::OK);
                if resp.status() == want {
                    Ok(())
                } else {
                    Err(format!("status {} (expected {want})", resp.status()))
                }
            }
        }
    };
    match tokio::time::timeout(hc.timeout, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::debug!(server = %s.name, error = %e, "health check failed");
            Err(e)
        }
        Err(_) => {
            tracing::debug!(server = %s.name, "health check timed out");
            Err(format!("timed out after {:?}", hc.timeout))
        }
    }
}

const USER_AGENT: &str = "rampart-health-check";

/// A GET of `path` on a new HTTP/2 connection (`https`, the pool's `server_name` else the
/// server's address as the authority); the connection ends with the check.
async fn get_h2(
    conn: crate::upstream_tls::UpStream,
    path: &str,
    tls: Option<&PoolTls>,
    addr: std::net::SocketAddr,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = tls
        .and_then(|t| t.server_name.clone())
        .unwrap_or_else(|| addr.to_string());
    let uri = http::Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("check path {path}: {e}"))?;
    let req = Request::get(uri)
        .version(http::Version::HTTP_2)
        .header(http::header::USER_AGENT, USER_AGENT)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let r = sender.send_request(req).await.map_err(|e| e.to_string());
    // The answer's head is all a check reads: the connection goes with the handle.
    drop(sender);
    if r.is_err() {
        driver.abort();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_spread_with_the_pool_size() {
        let s = Duration::from_secs(1);
        assert_eq!(first_check_window(s, 2), Duration::from_millis(100));
        assert_eq!(first_check_window(s, 100), Duration::from_millis(100));
        assert_eq!(first_check_window(s, 5_000), Duration::from_millis(500));
        assert_eq!(first_check_window(s, 10_000), s);
        assert_eq!(first_check_window(s, 1_000_000), s);
        // Never past the interval, even a short one.
        assert_eq!(
            first_check_window(Duration::from_millis(50), 2),
            Duration::from_millis(50)
        );
    }
}
