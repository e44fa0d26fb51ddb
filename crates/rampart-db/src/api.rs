//! The agent's HTTP API: Patroni's REST API (health checks for load balancers, the
//! cluster view, switchover and failover; see [`patroni`] and [`admin`]) and metrics.
//!
//! Every `GET`/`HEAD` path without an endpoint of its own is a Patroni health check
//! (`/primary`, `/replica?lag=10MB`, `/read-only`, `/sync`, ...): status code and Patroni's
//! JSON status body; `OPTIONS` on any path answers the health check's status code only,
//! which is what HAProxy's `option httpchk OPTIONS /primary` reads.

pub mod admin;
pub mod patroni;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rampart_topology::db::DbConfig;

use crate::agent::{Shared, Snapshot};
use crate::dcs::{self, SyncValue};
use crate::metrics::Metrics;

/// What the write endpoints need: the cluster's configuration and who may call them.
#[derive(Clone)]
pub struct AdminCtx {
    pub cfg: DbConfig,
    pub access: admin::Access,
    /// This node's agent, for `/reload` and `/restart`.
    pub agent: tokio::sync::mpsc::Sender<crate::agent::LocalRequest>,
}

#[derive(Clone)]
struct AppState {
    shared: Shared,
    metrics: Arc<Metrics>,
    admin: Arc<AdminCtx>,
}

type Params = Query<Vec<(String, String)>>;

pub fn router(shared: Shared, metrics: Arc<Metrics>, admin: AdminCtx) -> Router {
    Router::new()
        .route("/cluster", get(cluster).options(options))
        .route("/history", get(history).options(options))
        .route("/liveness", get(liveness).options(options))
        .route("/readiness", get(readiness).options(options))
        .route("/metrics", get(metrics_handler).options(options))
        .route("/switchover", post(switchover).options(options))
        .route("/failover", post(failover).options(options))
        .route("/reload", post(reload).options(options))
        .route("/restart", post(restart).options(options))
        .route("/reinitialize", post(reinitialize).options(options))
        .fallback(health_any)
        .with_state(AppState {
            shared,
            metrics,
            admin: Arc::new(admin),
        })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    metrics: Arc<Metrics>,
    admin: AdminCtx,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "db agent API listening");
    axum::serve(
        listener,
        router(shared, metrics, admin).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

fn snap(s: &AppState) -> Snapshot {
    s.shared.lock().map(|g| g.clone()).unwrap_or_default()
}

fn code(c: u16) -> StatusCode {
    StatusCode::from_u16(c).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn bad_request(e: patroni::BadQuery) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", e.0)).into_response()
}

/// Before the first loop: nothing is known, every check fails.
fn not_known() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "node state not known yet\n",
    )
        .into_response()
}

/// Any `GET`/`HEAD`/`OPTIONS` without an endpoint of its own: a Patroni health check.
async fn health_any(State(s): State<AppState>, method: Method, uri: Uri, q: Params) -> Response {
    let Some(node) = snap(&s).node else {
        return not_known();
    };
    let now = Instant::now();
    let status = match patroni::health_status(uri.path(), &q, &node, now) {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    if method == Method::OPTIONS {
        code(status).into_response()
    } else if method == Method::GET || method == Method::HEAD {
        (code(status), Json(patroni::status_body(&node))).into_response()
    } else {
        (StatusCode::NOT_IMPLEMENTED, "Unsupported method\n").into_response()
    }
}

/// `OPTIONS` on a path with an endpoint of its own: still only a health check's status.
async fn options(State(s): State<AppState>, uri: Uri, q: Params) -> Response {
    health_any(State(s), Method::OPTIONS, uri, q).await
}

async fn liveness(State(s): State<AppState>) -> Response {
    match snap(&s).node {
        Some(n) => code(patroni::liveness_status(&n, Instant::now())).into_response(),
        None => not_known(),
    }
}

async fn readiness(State(s): State<AppState>, q: Params) -> Response {
    match snap(&s).node {
        Some(n) => match patroni::readiness_status(&q, &n, Instant::now()) {
            Ok(c) => code(c).into_response(),
            Err(e) => bad_request(e),
        },
        None => not_known(),
    }
}

async fn history(State(s): State<AppState>) -> Response {
    Json(snap(&s).history).into_response()
}

/// rampart's cluster document (read by rampart's router, monitor and `status`) with
/// Patroni's additions: `scope`, `pause`, and per member `tags` and `lag` (bytes behind
/// the leader). Member roles stay rampart's (`primary`, `replica`, ...).
async fn cluster(State(s): State<AppState>) -> Response {
    let Some(v) = snap(&s).view else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster state not known yet\n",
        )
            .into_response();
    };
    let mut doc = serde_json::to_value(&v).unwrap_or_default();
    doc["scope"] = v.cluster.clone().into();
    doc["pause"] = v.paused.into();
    if let Some(members) = doc["members"].as_array_mut() {
        for m in members {
            let name = m["name"].as_str().unwrap_or("").to_string();
            if v.leader.as_deref() != Some(name.as_str()) {
                m["lag"] = m["lag_bytes"].clone();
            }
            if let Some(n) = s.admin.cfg.node(&name) {
                let mut tags = serde_json::Map::new();
                for (k, val) in &n.tags {
                    tags.insert(k.clone(), patroni::tag_value(val));
                }
                if n.nofailover {
                    tags.insert("nofailover".into(), true.into());
                }
                if !tags.is_empty() {
                    m["tags"] = tags.into();
                }
            }
        }
    }
    Json(doc).into_response()
}

async fn metrics_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let budget = crate::metrics::statements_budget(
        headers
            .get("x-prometheus-scrape-timeout-seconds")
            .and_then(|v| v.to_str().ok()),
    );
    let (content_type, body) =
        rampart_metrics::respond_with_host(accept, s.metrics.render(budget).await);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn switchover(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_op(&s, admin::Kind::Switchover, peer, &headers, &body).await
}

async fn failover(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write_op(&s, admin::Kind::Failover, peer, &headers, &body).await
}

/// Patroni's `POST /reload`: re-read the configuration (here the topology file) and apply
/// it. Answered when done: 200 with what changed, 500 with why nothing did.
async fn reload(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refusal(&s, peer, &headers, "reload") {
        return r;
    }
    local_op(&s, crate::agent::LocalOp::Reload).await
}

/// Patroni's `POST /restart`: restart PostgreSQL on this node; the body may be `{}` or
/// `{"restart_pending": true}` (only if a changed setting waits for it). Answered once
/// PostgreSQL answers again: 200, or 503 with why not.
async fn restart(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = refusal(&s, peer, &headers, "restart") {
        return r;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        restart_pending: bool,
    }
    let b: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body {
            restart_pending: false,
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return text(
                    400,
                    format!("the body must be {{}} or {{\"restart_pending\": true}}: {e}"),
                )
            }
        }
    };
    local_op(
        &s,
        crate::agent::LocalOp::Restart {
            pending_only: b.restart_pending,
        },
    )
    .await
}

/// Patroni's `POST /reinitialize`: a replica replaces its data with a fresh copy of the
/// leader. 200 once the copy starts ("reinitializing from ..."), 503 with Patroni's refusal
/// on the leader. The body (Patroni's `{"force": true}`) is accepted and not needed.
async fn reinitialize(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refusal(&s, peer, &headers, "reinitialize") {
        return r;
    }
    local_op(&s, crate::agent::LocalOp::Reinit).await
}

/// Hand a request to this node's agent and wait for its answer.
async fn local_op(s: &AppState, op: crate::agent::LocalOp) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = crate::agent::LocalRequest { op, reply };
    if s.admin.agent.send(req).await.is_err() {
        return text(503, "the agent is stopping");
    }
    let failed = if matches!(op, crate::agent::LocalOp::Reload) {
        500
    } else {
        503
    };
    match answer.await {
        Ok(Ok(m)) => text(200, m),
        Ok(Err(e)) => text(failed, e),
        Err(_) => text(503, "the agent is stopping"),
    }
}

/// The write endpoints' access check: the answer to a caller it refuses.
fn refusal(s: &AppState, peer: SocketAddr, headers: &HeaderMap, op: &str) -> Option<Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let r = admin::authorize(&s.admin.access, peer.ip(), auth).err()?;
    tracing::warn!(%peer, op, status = r.status, "refused a write request");
    let mut resp = text(r.status, r.message);
    if r.status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"rampart\""),
        );
    }
    Some(resp)
}

fn text(status: u16, msg: impl Into<String>) -> Response {
    (code(status), msg.into()).into_response()
}

/// Patroni's `do_POST_failover`: check, write `/failover`, wait for the outcome.
async fn write_op(
    s: &AppState,
    kind: admin::Kind,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Some(r) = refusal(s, peer, headers, kind.word()) {
        return r;
    }
    let req: admin::Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return text(400, format!("the body must be a JSON object: {e}")),
    };
    let cfg = &s.admin.cfg;
    let (coord, view) = match (
        crate::ops::coord(cfg).await,
        crate::ops::read_view(cfg).await,
    ) {
        (Ok(c), Ok(v)) => (c, v),
        (Err(e), _) | (_, Err(e)) => {
            return text(503, format!("cannot read the cluster from etcd: {e}"))
        }
    };
    let sync_standby = match coord.get(&dcs::key(&cfg.cluster, "sync")).await {
        Ok(kv) => kv
            .and_then(|kv| serde_json::from_slice::<SyncValue>(&kv.value).ok())
            .filter(|sv| view.leader.as_deref() == Some(sv.leader.as_str()))
            .and_then(|sv| sv.sync_standby),
        Err(e) => return text(503, format!("cannot read the cluster from etcd: {e}")),
    };
    tracing::info!(op = kind.word(), leader = ?req.leader, candidate = ?req.candidate, scheduled_at = ?req.scheduled_at, %peer, "received a request");
    let plan = match admin::plan(
        kind,
        &req,
        &view,
        cfg.synchronous,
        sync_standby.as_deref(),
        dcs::unix_ms(),
    ) {
        Ok(p) => p,
        Err(r) => return text(r.status, r.message),
    };
    let key = dcs::key(&cfg.cluster, "failover");
    if crate::ops::put_request(&coord, &cfg.cluster, &plan.value)
        .await
        .is_err()
    {
        return text(503, "failed to write failover key into DCS");
    }
    if plan.value.scheduled_at_ms.is_some() {
        return text(202, format!("{} scheduled", plan.kind.title()));
    }
    // Patroni waits up to 2 x max(10 s, loop_wait).
    let wait = cfg.loop_wait.max(Duration::from_secs(10)) * 2;
    let start = Instant::now();
    while start.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let leader = match coord.get(&dcs::key(&cfg.cluster, "leader")).await {
            Ok(kv) => kv.map(|kv| kv.value_str()),
            Err(_) => continue,
        };
        let pending = match coord.get(&key).await {
            Ok(kv) => kv.is_some(),
            Err(_) => continue,
        };
        if let Some((status, msg)) = admin::outcome(&plan, leader.as_deref(), pending) {
            return text(status, msg);
        }
    }
    text(
        503,
        format!(
            "{} status unknown after {} seconds; operation may still be in progress",
            plan.kind.title(),
            wait.as_secs()
        ),
    )
}
