//! Active health checks: one background task per server (TCP connect or HTTP GET), on
//! the control thread's runtime. A task follows its pool across generations (a reload
//! can change the check) and ends when its server leaves the pool.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
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

async fn check_loop(pool: Arc<PoolHandle>, s: Arc<ServerState>) {
    let interval = pool.get().cfg.health_check.interval;
    // Spread the first checks over one interval so servers are not probed in lockstep.
    let first =
        rand::thread_rng().gen_range(Duration::ZERO..=interval.min(Duration::from_millis(100)));
    tokio::time::sleep(first).await;
    loop {
        let p = pool.get();
        let hc = p.cfg.health_check.clone();
        let tls = p.cfg.tls.clone();
        drop(p);
        if hc.kind != CheckKind::None && s.admin_state() != AdminState::Maintenance {
            let started = Instant::now();
            let r = check_once(&hc, &s, tls.as_ref()).await;
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
        let tcp = crate::upstream_tls::connect(addr, hc.timeout, tls)
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
