//! The agent's HTTP API (see notes/db-cluster-json.md): health checks for load
//! balancers and applications, the cluster view, and metrics.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::agent::{Shared, Snapshot};
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    shared: Shared,
    metrics: Arc<Metrics>,
}

pub fn router(shared: Shared, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/primary", get(primary))
        .route("/replica", get(replica))
        .route("/health", get(health))
        .route("/cluster", get(cluster))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { shared, metrics })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "db agent API listening");
    axum::serve(listener, router(shared, metrics)).await
}

fn snap(s: &AppState) -> Snapshot {
    s.shared.lock().map(|g| g.clone()).unwrap_or_default()
}

fn status_text(ok: bool, what: &str) -> Response {
    if ok {
        (StatusCode::OK, format!("{what}\n")).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not {what}\n")).into_response()
    }
}

async fn primary(State(s): State<AppState>) -> Response {
    let sn = snap(&s);
    let ok = sn.writable_leader
        && sn
            .writable_until
            .is_some_and(|t| std::time::Instant::now() < t);
    status_text(ok, "primary")
}

/// Parse `16MB`, `512kB`, `1024` (bytes) or `10s`, `500ms` (seconds).
#[derive(Debug, PartialEq)]
enum LagBound {
    Bytes(u64),
    Seconds(f64),
}

fn parse_lag(v: &str) -> Option<LagBound> {
    let v = v.trim();
    if let Some(ms) = v.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|x| LagBound::Seconds(x / 1000.0));
    }
    if let Some(s) = v.strip_suffix('s') {
        return s
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(LagBound::Seconds);
    }
    rampart_topology::db::parse_size(v)
        .ok()
        .map(LagBound::Bytes)
}

async fn replica(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let sn = snap(&s);
    if let Some(lag) = q.get("lag") {
        let Some(bound) = parse_lag(lag) else {
            return (
                StatusCode::BAD_REQUEST,
                "bad lag bound: use e.g. ?lag=16MB, ?lag=1048576 or ?lag=10s\n",
            )
                .into_response();
        };
        let within = match bound {
            LagBound::Bytes(b) => sn.lag_bytes <= b,
            LagBound::Seconds(t) => sn.lag_seconds <= t,
        };
        return status_text(sn.replica_streaming && within, "replica");
    }
    status_text(sn.replica_streaming, "replica")
}

async fn health(State(s): State<AppState>) -> Response {
    status_text(snap(&s).pg_running, "running")
}

async fn cluster(State(s): State<AppState>) -> Response {
    match snap(&s).view {
        Some(v) => Json(v).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster state not known yet\n",
        )
            .into_response(),
    }
}

async fn metrics_handler(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lag_bounds_parse() {
        assert_eq!(parse_lag("16MB"), Some(LagBound::Bytes(16 << 20)));
        assert_eq!(parse_lag("1024"), Some(LagBound::Bytes(1024)));
        assert_eq!(parse_lag("10s"), Some(LagBound::Seconds(10.0)));
        assert_eq!(parse_lag("250ms"), Some(LagBound::Seconds(0.25)));
        assert_eq!(parse_lag("lots"), None);
    }
}
