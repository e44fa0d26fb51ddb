//! The admin listener: JSON state, the live stats page, Prometheus metrics, runtime
//! control and reload. Loopback by default; clients outside `allow` get 403, and with a
//! token configured every API call needs `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rampart_balance::outlier::Reason;
use rampart_topology::lb::{AdminConfig, Cidr, RouteTo, Server, TokenSource};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::reload::{self, ControlError};
use crate::state::{AdminState, PoolState, ServerState};
use crate::stats::{Snapshot, ERROR_KINDS};
use crate::{LbError, Shared};

/// What the admin listener enforces.
#[derive(Clone)]
pub struct Access {
    allow: Vec<Cidr>,
    token: Option<String>,
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    access: Access,
}

/// Bind the admin address and read the token (both start-up errors).
pub fn bind(
    a: &AdminConfig,
    inherited: Option<std::net::TcpListener>,
) -> Result<(std::net::TcpListener, Access), LbError> {
    let token = match &a.token {
        None => None,
        Some(TokenSource::File(p)) => {
            let t = std::fs::read_to_string(p).map_err(|e| {
                LbError::Admin(format!("cannot read token file {}: {e}", p.display()))
            })?;
            Some(t.trim().to_string())
        }
        Some(TokenSource::Env(v)) => Some(
            std::env::var(v)
                .map_err(|_| {
                    LbError::Admin(format!("environment variable {v} (token_env) is not set"))
                })?
                .trim()
                .to_string(),
        ),
    };
    if token.as_deref() == Some("") {
        return Err(LbError::Admin("the admin token is empty".into()));
    }
    let l = match inherited {
        Some(l) => l,
        None => std::net::TcpListener::bind(a.address).map_err(|source| LbError::Bind {
            name: "admin".into(),
            addr: a.address,
            source,
        })?,
    };
    l.set_nonblocking(true).map_err(LbError::Runtime)?;
    Ok((
        l,
        Access {
            allow: a.allow.clone(),
            token,
        },
    ))
}

/// Serve the admin API on the current runtime.
pub fn spawn(l: std::net::TcpListener, access: Access, shared: Arc<Shared>) -> Result<(), String> {
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
    let app = App { shared, access };
    let router = Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/stats") }),
        )
        .route("/stats", get(stats_page))
        .route("/metrics", get(metrics))
        .route("/api/state", get(state_json))
        .route("/api/reload", post(reload_now))
        .route("/api/upgrade", post(upgrade_now))
        .route("/api/pools/{pool}/servers", post(add_server))
        .route(
            "/api/pools/{pool}/servers/{server}",
            axum::routing::delete(remove_server),
        )
        .route("/api/pools/{pool}/servers/{server}/state", post(set_state))
        .route("/api/firewall", get(firewall_state))
        .route(
            "/api/firewall/blocks",
            post(block_network).delete(unblock_network),
        )
        .route(
            "/api/pools/{pool}/servers/{server}/weight",
            post(set_weight),
        )
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app);
    tracing::info!(address = %addr, "admin listening (stats page at /stats, metrics at /metrics)");
    tokio::spawn(async move {
        let svc = router.into_make_service_with_connect_info::<SocketAddr>();
        // A stopping process leaves the admin socket to its successor.
        let stopping = crate::shutdown_token().clone();
        if let Err(e) = axum::serve(l, svc)
            .with_graceful_shutdown(async move { stopping.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    Ok(())
}

fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Constant-time comparison (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ip = canonical(peer.ip());
    if !app.access.allow.iter().any(|c| c.contains(ip)) {
        tracing::warn!(%peer, path = %req.uri().path(), "admin request from a network not allowed");
        return (
            StatusCode::FORBIDDEN,
            "403 Forbidden: this address may not use the admin API\n",
        )
            .into_response();
    }
    // The stats page itself holds no data; its script sends the token.
    if let (Some(token), false) = (&app.access.token, req.uri().path() == "/stats") {
        let ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
        if !ok {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "401 Unauthorized: send Authorization: Bearer <token>\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn control_error(e: ControlError) -> Response {
    let status = match e {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

fn ok() -> Response {
    Json(json!({ "ok": true })).into_response()
}

/// `GET /api/firewall`: the run-time blocks and each listener's firewall with its refusals.
async fn firewall_state() -> Json<Value> {
    let blocks: Vec<String> = crate::firewall::blocks()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let listeners: Vec<Value> = crate::firewall::all().iter().map(|f| f.json()).collect();
    Json(json!({ "blocks": blocks, "listeners": listeners }))
}

#[derive(Deserialize)]
struct BlockBody {
    /// An address or a network: `203.0.113.7`, `203.0.113.0/24`, `2001:db8::/32`.
    network: String,
}

/// `POST /api/firewall/blocks {"network": "..."}`: refuse its new connections on every
/// listener from now on (until removed or the process ends; reloads keep it).
async fn block_network(Json(b): Json<BlockBody>) -> Response {
    match b.network.parse::<rampart_topology::lb::Cidr>() {
        Ok(net) => {
            let added = crate::firewall::block(net);
            tracing::warn!(network = %net, added, "firewall: blocked through the admin API");
            Json(json!({ "ok": true, "network": net.to_string(), "added": added })).into_response()
        }
        Err(e) => control_error(ControlError::Invalid(e)),
    }
}

/// `DELETE /api/firewall/blocks {"network": "..."}`: lift a block.
async fn unblock_network(Json(b): Json<BlockBody>) -> Response {
    match b.network.parse::<rampart_topology::lb::Cidr>() {
        Ok(net) if crate::firewall::unblock(net) => {
            tracing::info!(network = %net, "firewall: block lifted through the admin API");
            Json(json!({ "ok": true, "network": net.to_string() })).into_response()
        }
        Ok(net) => control_error(ControlError::NotFound(format!("no block of {net}"))),
        Err(e) => control_error(ControlError::Invalid(e)),
    }
}

#[derive(Deserialize)]
struct StateBody {
    state: String,
}

async fn set_state(
    State(app): State<App>,
    Path((pool, server)): Path<(String, String)>,
    Json(b): Json<StateBody>,
) -> Response {
    let st: AdminState = match b.state.parse() {
        Ok(s) => s,
        Err(e) => return control_error(ControlError::Invalid(e)),
    };
    match reload::set_state(&app.shared, &pool, &server, st) {
        Ok(()) => ok(),
        Err(e) => control_error(e),
    }
}

#[derive(Deserialize)]
struct WeightBody {
    weight: u32,
}

async fn set_weight(
    State(app): State<App>,
    Path((pool, server)): Path<(String, String)>,
    Json(b): Json<WeightBody>,
) -> Response {
    match reload::set_weight(&app.shared, &pool, &server, b.weight) {
        Ok(()) => ok(),
        Err(e) => control_error(e),
    }
}

#[derive(Deserialize)]
struct AddBody {
    name: String,
    address: String,
    #[serde(default)]
    weight: Option<u32>,
}

async fn add_server(
    State(app): State<App>,
    Path(pool): Path<String>,
    Json(b): Json<AddBody>,
) -> Response {
    let Ok(address) = b.address.parse::<SocketAddr>() else {
        return control_error(ControlError::Invalid(format!(
            "bad server address \"{}\"; expected IP:PORT",
            b.address
        )));
    };
    let sc = Server {
        name: b.name,
        address,
        weight: b.weight.unwrap_or(1),
    };
    match reload::add_server(&app.shared, &pool, sc) {
        Ok(()) => ok(),
        Err(e) => control_error(e),
    }
}

async fn remove_server(
    State(app): State<App>,
    Path((pool, server)): Path<(String, String)>,
) -> Response {
    match reload::remove_server(&app.shared, &pool, &server) {
        Ok(()) => ok(),
        Err(e) => control_error(e),
    }
}

async fn reload_now(State(app): State<App>) -> Response {
    match reload::reload(&app.shared) {
        Ok(()) => ok(),
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays:\n{e}");
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": format!("reload refused, the running configuration stays:\n{e}") })),
            )
                .into_response()
        }
    }
}

async fn upgrade_now(State(app): State<App>) -> Response {
    match crate::upgrade(&app.shared).await {
        Ok(pid) => Json(json!({ "ok": true, "pid": pid })).into_response(),
        Err(e) => {
            tracing::error!("upgrade failed, this process keeps serving: {e}");
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": format!("upgrade failed, the running process keeps serving: {e}") })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    match crate::metrics::render(&app.shared) {
        Ok(text) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let (content_type, body) = rampart_metrics::respond_with_host(accept, text);
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Which servers of each pool `/api/state` lists: `?offset=N&limit=M` (default: the first
/// [`STATE_SERVERS_DEFAULT`]); every pool says how many it has (`servers_total`), and its
/// counts and counters always cover all of them.
#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Servers per pool in `/api/state` unless `limit` says otherwise: a 10,000-server pool's
/// document stays small (a page of the stats page, not 10 MB every refresh).
pub const STATE_SERVERS_DEFAULT: usize = 1_000;

async fn state_json(State(app): State<App>, Query(page): Query<Page>) -> Json<Value> {
    let limit = page.limit.unwrap_or(STATE_SERVERS_DEFAULT);
    Json(state_page(&app.shared, page.offset, limit))
}

async fn stats_page(_h: HeaderMap) -> Html<&'static str> {
    Html(STATS_PAGE)
}

fn counters(s: &Snapshot) -> Value {
    let mut errors = serde_json::Map::new();
    for k in ERROR_KINDS {
        errors.insert(k.as_str().into(), json!(s.errors[k as usize]));
    }
    json!({
        "responses": {
            "1xx": s.class[1], "2xx": s.class[2], "3xx": s.class[3],
            "4xx": s.class[4], "5xx": s.class[5], "other": s.class[0],
        },
        "errors": errors,
        "retries": s.retries,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "latency_seconds": {
            "p50": s.percentile(0.5),
            "p90": s.percentile(0.9),
            "p99": s.percentile(0.99),
            "mean": (s.responses() > 0).then(|| s.lat_sum_ns as f64 / s.responses() as f64 / 1e9),
        },
    })
}

fn server_json(p: &PoolState, i: usize, s: &ServerState, now_ns: u64) -> Value {
    let last = s.last_check.lock().ok().and_then(|l| l.clone());
    let ejected = s.ejection().map(|e| {
        json!({
            "reason": e.reason.as_str(),
            "ejections": e.count,
            "seconds": e.until_ns.saturating_sub(e.since_ns) as f64 / 1e9,
            "seconds_left": e.until_ns.saturating_sub(now_ns) as f64 / 1e9,
        })
    });
    json!({
        "name": s.name,
        "address": s.addr.to_string(),
        "state": s.admin_state().as_str(),
        "health": if !p.checks_enabled { "unchecked" } else if s.is_up() { "up" } else { "down" },
        "ejected": ejected,
        "eligible": p.takes(i),
        "weight": s.weight(),
        "config_weight": s.cfg_weight.load(Ordering::Relaxed),
        "runtime_added": s.runtime_added.load(Ordering::Relaxed),
        "discovered": s.discovered.load(Ordering::Relaxed),
        "in_flight": s.in_flight.load(Ordering::Relaxed),
        "max_in_flight_seen": s.peak_in_flight.load(Ordering::Relaxed),
        "limit": p.cfg.max_in_flight,
        "requests": s.requests.load(Ordering::Relaxed),
        "last_check": last.map(|c| json!({
            "at_ms": c.at_ms, "ok": c.ok, "duration_ms": c.duration_ms,
            "error": (!c.error.is_empty()).then_some(c.error),
        })),
        "counters": counters(&s.stats.snapshot()),
    })
}

/// The pool's own counters (errors, retries) plus its current servers' responses.
fn pool_snapshot(p: &PoolState) -> Snapshot {
    let mut o = p.stats.snapshot();
    for s in p.servers.iter() {
        let ss = s.stats.snapshot();
        for (a, b) in o.class.iter_mut().zip(ss.class) {
            *a += b;
        }
        for (a, b) in o.lat.iter_mut().zip(ss.lat) {
            *a += b;
        }
        o.lat_sum_ns += ss.lat_sum_ns;
        o.bytes_in += ss.bytes_in;
        o.bytes_out += ss.bytes_out;
    }
    o
}

/// The state as JSON (the `/api/state` document), servers `offset..offset + limit` of each
/// pool.
pub(crate) fn state_page(shared: &Shared, offset: usize, limit: usize) -> Value {
    let pools: Vec<_> = shared.pools.lock().map(|p| p.clone()).unwrap_or_default();
    let listeners: Vec<_> = shared
        .listeners
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let pools_json: Vec<Value> = pools
        .iter()
        .map(|h| {
            let p = h.get();
            let now = crate::clock::now_ns();
            let servers: Vec<Value> = p
                .servers
                .iter()
                .enumerate()
                .skip(offset)
                .take(limit)
                .map(|(i, s)| server_json(&p, i, s, now))
                .collect();
            let ejections: serde_json::Map<String, Value> = Reason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_string(),
                        json!(p.ejections[*r as usize].load(Ordering::Relaxed)),
                    )
                })
                .collect();
            json!({
                "name": p.cfg.name,
                "algorithm": p.cfg.algorithm.as_str(),
                "queue": p.waiting.load(Ordering::Relaxed),
                "queue_size": p.cfg.queue.size,
                "servers_eligible": (0..p.servers.len()).filter(|&i| p.takes(i)).count(),
                "servers_ejected": p.servers.iter().filter(|s| s.is_ejected()).count(),
                "panic": p.in_panic(),
                "ejections": ejections,
                "ejections_refused": p.ejections_refused.load(Ordering::Relaxed),
                "in_flight": p.servers.iter().map(|s| u64::from(s.in_flight.load(Ordering::Relaxed))).sum::<u64>(),
                "counters": counters(&pool_snapshot(&p)),
                "servers_total": p.servers.len(),
                "servers_offset": offset.min(p.servers.len()),
                "servers": servers,
            })
        })
        .collect();
    let listeners_json: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let rt = l.current.load();
            json!({
                "name": l.name,
                "address": l.address.to_string(),
                "mode": l.mode.to_string(),
                "pool": rt.pool.name,
                "routes": rt.cfg.routes.iter().zip(rt.routes.iter()).map(|(r, p)| json!({
                    "hosts": r.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                    "path_prefix": r.path_prefix,
                    "path": r.path,
                    "methods": r.methods,
                    "header": r.header.as_ref().map(|h| json!({"name": h.name, "value": h.value})),
                    "strip_prefix": r.strip_prefix,
                    "allow": r.allow.as_ref().map(|nets| nets.iter().map(|n| format!("{}/{}", n.addr(), n.prefix())).collect::<Vec<_>>()),
                    "pool": p.as_ref().map(|p| &p.name),
                    "redirect": match &r.to {
                        RouteTo::Redirect { prefix, status } => json!({"to": prefix, "status": status}),
                        RouteTo::Pool(_) => Value::Null,
                    },
                })).collect::<Vec<_>>(),
                "connections": l.stats.conns_active.load(Ordering::Relaxed),
                "connections_total": l.stats.conns_total.load(Ordering::Relaxed),
                "max_connections": rt.cfg.max_connections,
                "normalize_path": rt.cfg.normalize_path,
                "counters": counters(&l.stats.counters.snapshot()),
                "firewall": rt.firewall.as_ref().map(|f| f.json()),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "uptime_seconds": shared.started_at.elapsed().as_secs_f64(),
        "workers": shared.workers,
        "connections": crate::active_connections(),
        "max_connections": shared.max_connections.load(Ordering::Relaxed),
        "reloads": shared.reloads.load(Ordering::Relaxed),
        "reload_failures": shared.reload_failures.load(Ordering::Relaxed),
        "listeners": listeners_json,
        "pools": pools_json,
        "vrrp": shared.vrrp.lock().map(|v| v.iter().map(|r| r.json()).collect::<Vec<_>>()).unwrap_or_default(),
    })
}

const STATS_PAGE: &str = include_str!("stats.html");
