//! Active health checks: one background task per server (TCP connect or HTTP GET).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rampart_topology::lb::CheckKind;
use rand::Rng;

use crate::state::PoolState;
use crate::upstream::connect_tcp;

/// Spawn the checks of every server of `pool` on the current runtime.
pub fn spawn_checks(pool: &Arc<PoolState>) {
    if !pool.checks_enabled {
        return;
    }
    for i in 0..pool.servers.len() {
        let pool = pool.clone();
        tokio::spawn(async move { check_loop(pool, i).await });
    }
}

async fn check_loop(pool: Arc<PoolState>, i: usize) {
    let hc = pool.cfg.health_check.clone();
    // Spread the first checks over one interval so servers are not probed in lockstep.
    let first =
        rand::thread_rng().gen_range(Duration::ZERO..=hc.interval.min(Duration::from_millis(100)));
    tokio::time::sleep(first).await;
    loop {
        let ok = check_once(&pool, i).await;
        pool.on_check(i, ok);
        let jitter = if hc.jitter.is_zero() {
            Duration::ZERO
        } else {
            rand::thread_rng().gen_range(Duration::ZERO..=hc.jitter)
        };
        tokio::time::sleep(hc.interval + jitter).await;
    }
}

/// One probe, bounded by the check timeout.
pub async fn check_once(pool: &PoolState, i: usize) -> bool {
    let hc = &pool.cfg.health_check;
    let s = &pool.servers[i];
    let addr = s.addr;
    let probe = async {
        let tcp = connect_tcp(addr, hc.timeout)
            .await
            .map_err(|e| e.to_string())?;
        match &hc.kind {
            CheckKind::None | CheckKind::Tcp => Ok(()),
            CheckKind::Http {
                path,
                expect_status,
            } => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let req = Request::get(path.as_str())
                    .header(http::header::HOST, addr.to_string())
                    .header(http::header::CONNECTION, "close")
                    .header(http::header::USER_AGENT, "rampart-health-check")
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
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
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(pool = %pool.cfg.name, server = %s.name, error = %e, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(pool = %pool.cfg.name, server = %s.name, "health check timed out");
            false
        }
    }
}
