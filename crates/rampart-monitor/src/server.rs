//! The monitor's own HTTP server: the live dashboard, its JSON API, `/metrics`,
//! `/healthz`. Who may connect: `[monitor] allow` (CIDRs; empty = anyone who can reach
//! the listen address, loopback by default) and, with `token_env`, a bearer token
//! (`Authorization: Bearer T` or `?token=T`) on everything but `/healthz`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rampart_alert::{AlertState, Labels, Selector, SeriesKey, Store};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{now_ms, Inner, Monitor, MonitorError};

const DASHBOARD: &str = include_str!("dashboard.html");

pub fn router(m: Arc<Monitor>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/overview", get(overview))
        .route("/api/diagram", get(diagram))
        .route("/api/alerts", get(alerts))
        .route("/api/targets", get(targets))
        .route("/api/query", get(query))
        .route("/-/reload", axum::routing::post(reload).put(reload))
        .layer(axum::middleware::from_fn_with_state(m.clone(), guard))
        .with_state(m)
}

pub async fn serve(m: Arc<Monitor>, listener: tokio::net::TcpListener) -> Result<(), MonitorError> {
    axum::serve(
        listener,
        router(m).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
            }
            _ => std::future::pending::<()>().await,
        }
        tracing::info!("monitor: stopping");
    })
    .await
    .map_err(MonitorError::Serve)
}

async fn guard(
    State(m): State<Arc<Monitor>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if !m.cfg.allow.is_empty() && !m.cfg.allow.iter().any(|c| c.contains(peer.ip())) {
        return (
            StatusCode::FORBIDDEN,
            "forbidden: your address is not in [monitor] allow\n",
        )
            .into_response();
    }
    if let Some(token) = &m.token {
        if req.uri().path() != "/healthz" {
            let bearer = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string);
            let in_query = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
            });
            if bearer.as_deref() != Some(token.as_str())
                && in_query.as_deref() != Some(token.as_str())
            {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                    "unauthorized: give the monitor token (Authorization: Bearer, or ?token=)\n",
                )
                    .into_response();
            }
        }
    }
    next.run(req).await
}

async fn dashboard() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(DASHBOARD),
    )
}

fn alerts_json(inner: &Inner) -> Vec<Value> {
    inner
        .engine
        .alerts()
        .map(|a| {
            json!({
                "name": a.rule,
                "labels": a.labels,
                "state": a.state.as_str(),
                "severity": a.severity.as_str(),
                "summary": a.summary,
                "value": if a.value.is_finite() { json!(a.value) } else { Value::Null },
                "active_since_ms": a.active_since,
                "fired_at_ms": a.fired_at,
                "resolved_at_ms": a.resolved_at,
            })
        })
        .collect()
}

async fn alerts(State(m): State<Arc<Monitor>>) -> Json<Value> {
    let g = m.lock();
    Json(json!({
        "alerts": alerts_json(&g),
        "notifications": g.notifications.iter().collect::<Vec<_>>(),
        "rules": g.engine.rules().iter().map(|r| json!({
            "name": r.name, "series": r.series.to_string(), "over": r.over.as_ref().map(|s| s.to_string()),
            "reduce": r.reduce.as_str(), "window_ms": r.window_ms, "by": r.by, "aggregate": r.aggregate.as_str(),
            "op": r.cmp.as_str(), "threshold": r.threshold, "for_ms": r.for_ms, "severity": r.severity.as_str(),
        })).collect::<Vec<_>>(),
    }))
}

fn targets_json(m: &Monitor, inner: &Inner) -> Vec<Value> {
    m.targets
        .iter()
        .zip(&inner.health)
        .map(|(t, h)| {
            json!({
                "job": t.job, "instance": t.instance, "address": t.addr.to_string(),
                "url": format!("http://{}{}", t.addr, t.path), "mode": t.mode,
                "up": h.up, "last_scrape_ms": h.last_scrape_ms, "duration_ms": h.duration_ms,
                "samples": h.samples, "error": h.error,
            })
        })
        .collect()
}

async fn targets(State(m): State<Arc<Monitor>>) -> Json<Value> {
    let g = m.lock();
    Json(json!({ "targets": targets_json(&m, &g) }))
}

#[derive(Deserialize)]
struct QueryArgs {
    series: String,
    /// `raw` (default) or `rate` (per second, between consecutive samples).
    #[serde(default)]
    r#fn: Option<String>,
    /// Only samples at or after this time (ms since the epoch).
    #[serde(default)]
    since: Option<u64>,
}

async fn query(State(m): State<Arc<Monitor>>, Query(q): Query<QueryArgs>) -> Response {
    let sel: Selector = match q.series.parse() {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let rate = match q.r#fn.as_deref() {
        None | Some("raw") => false,
        Some("rate") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("unknown fn \"{other}\"; expected raw or rate\n"),
            )
                .into_response()
        }
    };
    let since = q.since.unwrap_or(0);
    let g = m.lock();
    let series: Vec<Value> = g
        .store
        .select(&sel)
        .take(500)
        .map(|(k, s)| {
            let pts: Vec<(u64, f64)> = if rate {
                pair_rates(s.iter().copied()).collect()
            } else {
                s.iter().copied().collect()
            };
            json!({
                "series": k.to_string(), "name": k.name, "labels": k.labels,
                "points": pts.into_iter().filter(|p| p.0 >= since && p.1.is_finite()).map(|(t, v)| json!([t, v])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "series": series })).into_response()
}

/// Per-second rate between consecutive samples of a counter (a drop is a reset).
fn pair_rates(s: impl Iterator<Item = (u64, f64)>) -> impl Iterator<Item = (u64, f64)> {
    let mut prev: Option<(u64, f64)> = None;
    s.filter_map(move |(t, v)| {
        let out = prev.and_then(|(pt, pv)| {
            let dt = t.checked_sub(pt).filter(|d| *d > 0)?;
            let inc = if v >= pv { v - pv } else { v };
            Some((t, inc / (dt as f64 / 1000.0)))
        });
        prev = Some((t, v));
        out
    })
}

/// Sum over the series of one instance of the per-pair rates, by timestamp.
fn rate_by_time(store: &Store, sel: &Selector, instance: &str, since: u64) -> BTreeMap<u64, f64> {
    let mut out = BTreeMap::new();
    for (k, s) in store.select(sel) {
        if k.label("instance") != Some(instance) {
            continue;
        }
        for (t, r) in pair_rates(s.iter().copied()) {
            if t >= since {
                *out.entry(t).or_insert(0.0) += r;
            }
        }
    }
    out
}

fn points(m: BTreeMap<u64, f64>) -> Vec<Value> {
    m.into_iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(t, v)| json!([t, (v * 1000.0).round() / 1000.0]))
        .collect()
}

fn last(store: &Store, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let l: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    store
        .samples(&SeriesKey::new(name, l))
        .and_then(|s| s.back().map(|x| x.1))
}

/// The request counter and the latency histogram of a job (lb: `rampart lb`'s listener
/// metrics from its admin `/metrics`, without the node's own entry `direct`, which carries
/// health probes and drills; web: `rampart web`'s, without its admin endpoints).
pub fn request_metrics(job: &str) -> (Selector, Selector, Selector) {
    let (requests, duration, label, skip) = match job {
        "lb" => (
            "rampart_listener_requests_total",
            "rampart_listener_response",
            "listener",
            "direct",
        ),
        _ => (
            "rampart_web_requests_total",
            "rampart_web_request_duration_seconds",
            "kind",
            "Admin",
        ),
    };
    let sel = |name: String| {
        let mut s = Selector::name(name);
        s.matchers.push(rampart_alert::Matcher {
            label: label.into(),
            equal: false,
            value: skip.into(),
        });
        s
    };
    (
        sel(requests.to_string()),
        sel(format!("{duration}_sum")),
        sel(format!("{duration}_count")),
    )
}

/// Everything the dashboard draws, in one JSON document.
pub fn overview_json(m: &Monitor, inner: &Inner, window_ms: u64) -> Value {
    let now = now_ms();
    let since = now.saturating_sub(window_ms);
    let store = &inner.store;
    let mut rps = Vec::new();
    let mut errors = Vec::new();
    let mut latency = Vec::new();
    let mut lag = Vec::new();
    for t in &m.targets {
        let inst = t.instance.as_str();
        match t.job.as_str() {
            "lb" | "web" => {
                let (total, dur_sum, dur_count) = request_metrics(&t.job);
                let mut bad = total.clone();
                bad.matchers.push(rampart_alert::Matcher {
                    label: "class".into(),
                    equal: true,
                    value: "5xx".into(),
                });
                rps.push(json!({"name": inst, "job": t.job, "points": points(rate_by_time(store, &total, inst, since))}));
                errors.push(json!({"name": inst, "job": t.job, "points": points(rate_by_time(store, &bad, inst, since))}));
                let sum = rate_by_time(store, &dur_sum, inst, since);
                let count = rate_by_time(store, &dur_count, inst, since);
                let avg: BTreeMap<u64, f64> = sum
                    .into_iter()
                    .filter_map(|(t, s)| {
                        let c = *count.get(&t)?;
                        (c > 0.0).then_some((t, s / c * 1000.0))
                    })
                    .collect();
                if !avg.is_empty() {
                    latency.push(json!({"name": inst, "job": t.job, "points": points(avg)}));
                }
            }
            "db" => {
                let sel = Selector::name("rampart_db_replication_lag_bytes");
                let mut pts = BTreeMap::new();
                for (k, s) in store.select(&sel) {
                    if k.label("instance") == Some(inst) {
                        pts.extend(s.iter().copied().filter(|p| p.0 >= since));
                    }
                }
                lag.push(json!({"name": inst, "job": "db", "points": points(pts)}));
            }
            _ => {}
        }
    }
    let nodes: Vec<Value> = m
        .targets
        .iter()
        .zip(&inner.health)
        .map(|(t, h)| {
            let inst = t.instance.as_str();
            let mut role = Value::Null;
            let mut extra = serde_json::Map::new();
            if t.job == "db" && h.up {
                for r in ["primary", "replica", "demoted", "starting", "stopped"] {
                    if last(
                        store,
                        "rampart_db_role",
                        &[("instance", inst), ("job", "db"), ("role", r)],
                    ) == Some(1.0)
                    {
                        role = json!(r);
                    }
                }
                for (key, metric) in [
                    ("timeline", "rampart_db_timeline"),
                    ("lag_bytes", "rampart_db_replication_lag_bytes"),
                    ("connections", "rampart_db_connections"),
                ] {
                    if let Some(v) = last(store, metric, &[("instance", inst), ("job", "db")]) {
                        extra.insert(key.into(), json!(v));
                    }
                }
                if let Some(c) = &inner.cluster {
                    let me = c.get("members").and_then(Value::as_array).and_then(|ms| {
                        ms.iter()
                            .find(|x| x.get("name").and_then(Value::as_str) == Some(inst))
                    });
                    if let Some(sync) = me.and_then(|x| x.get("sync_standby")) {
                        extra.insert("sync_standby".into(), sync.clone());
                    }
                }
            }
            if t.job == "etcd" && h.up {
                if let Some(v) = last(
                    store,
                    "etcd_server_is_leader",
                    &[("instance", inst), ("job", "etcd")],
                ) {
                    role = json!(if v == 1.0 { "leader" } else { "follower" });
                }
            }
            if t.job == "web" && h.up {
                if let Some(v) = last(
                    store,
                    "rampart_web_ready",
                    &[("instance", inst), ("job", "web")],
                ) {
                    role = json!(if v == 1.0 { "ready" } else { "not-ready" });
                }
            }
            json!({
                "job": t.job, "instance": inst, "address": t.addr.to_string(), "up": h.up,
                "error": h.error, "scrape_ms": (h.duration_ms * 10.0).round() / 10.0,
                "role": role, "details": extra,
            })
        })
        .collect();
    let firing = inner
        .engine
        .alerts()
        .filter(|a| a.state == AlertState::Firing)
        .count();
    json!({
        "cluster": m.cluster,
        "monitor": m.cfg.name,
        "now_ms": now,
        "window_ms": window_ms,
        "interval_ms": m.cfg.scrape_interval.as_millis() as u64,
        "nodes": nodes,
        "charts": { "rps": rps, "errors_5xx": errors, "latency_ms": latency, "lag_bytes": lag },
        "alerts": alerts_json(inner),
        "firing": firing,
    })
}

/// Events the dashboard shows beside the diagram.
const EVENTS_SHOWN: usize = 50;

/// What the dashboard's diagram needs, in one document: the boxes and arrows of the last
/// round, the latest events (newest first), and the round counter the page shows.
pub fn diagram_json(m: &Monitor, inner: &Inner, now_ms: u64) -> Value {
    let d = inner.diagram(m);
    json!({
        "cluster": m.cluster,
        "now_ms": now_ms,
        "interval_ms": m.cfg.scrape_interval.as_millis() as u64,
        "round": inner.counters.rounds,
        "last_scrape_ms": inner.health.iter().map(|h| h.last_scrape_ms).max().unwrap_or(0),
        "boxes": d.boxes,
        "arrows": d.arrows,
        "events": inner.events.iter().rev().take(EVENTS_SHOWN).collect::<Vec<_>>(),
        "events_total": inner.events_total,
        "firing": inner.engine.alerts().filter(|a| a.state == AlertState::Firing).count(),
    })
}

async fn diagram(State(m): State<Arc<Monitor>>) -> Json<Value> {
    let g = m.lock();
    Json(diagram_json(&m, &g, now_ms()))
}

#[derive(Deserialize)]
struct OverviewArgs {
    #[serde(default)]
    window_s: Option<u64>,
}

async fn overview(State(m): State<Arc<Monitor>>, Query(a): Query<OverviewArgs>) -> Json<Value> {
    let window = a.window_s.unwrap_or(300).clamp(10, 24 * 3600) * 1000;
    let g = m.lock();
    Json(overview_json(&m, &g, window))
}

/// The monitor's own metrics, written in OpenMetrics text (counter families named
/// without `_total`) and answered in the format the scraper asks for
/// ([`rampart_metrics::respond`]).
async fn metrics(State(m): State<Arc<Monitor>>, headers: axum::http::HeaderMap) -> Response {
    let g = m.lock();
    let mut s = String::new();
    let c = &g.counters;
    let _ = writeln!(s, "# HELP rampart_monitor_targets_up Targets that answered their last scrape.\n# TYPE rampart_monitor_targets_up gauge");
    let _ = writeln!(
        s,
        "rampart_monitor_targets_up {}",
        g.health.iter().filter(|h| h.up).count()
    );
    let _ = writeln!(
        s,
        "# HELP rampart_monitor_targets Targets scraped.\n# TYPE rampart_monitor_targets gauge\nrampart_monitor_targets {}",
        m.targets.len()
    );
    let _ = writeln!(s, "# HELP rampart_monitor_scrapes Scrapes, by result.\n# TYPE rampart_monitor_scrapes counter");
    let _ = writeln!(
        s,
        "rampart_monitor_scrapes_total{{result=\"ok\"}} {}",
        c.scrapes_ok
    );
    let _ = writeln!(
        s,
        "rampart_monitor_scrapes_total{{result=\"failed\"}} {}",
        c.scrapes_failed
    );
    let _ = writeln!(
        s,
        "# HELP rampart_monitor_rounds Scrape rounds.\n# TYPE rampart_monitor_rounds counter\nrampart_monitor_rounds_total {}",
        c.rounds
    );
    let _ = writeln!(
        s,
        "# HELP rampart_monitor_series Series in the store.\n# TYPE rampart_monitor_series gauge\nrampart_monitor_series {}",
        g.store.len()
    );
    let _ = writeln!(s, "# HELP rampart_monitor_samples_dropped Samples not stored (the store was full).\n# TYPE rampart_monitor_samples_dropped counter\nrampart_monitor_samples_dropped_total {}", g.store.dropped());
    let _ = writeln!(
        s,
        "# HELP rampart_monitor_alerts Alerts, by state.\n# TYPE rampart_monitor_alerts gauge"
    );
    for st in [
        AlertState::Pending,
        AlertState::Firing,
        AlertState::Resolved,
    ] {
        let n = g.engine.alerts().filter(|a| a.state == st).count();
        let _ = writeln!(s, "rampart_monitor_alerts{{state=\"{}\"}} {n}", st.as_str());
    }
    let _ = writeln!(s, "# HELP rampart_monitor_notifications Notifications sent to alert routes, by result.\n# TYPE rampart_monitor_notifications counter");
    let _ = writeln!(
        s,
        "rampart_monitor_notifications_total{{result=\"ok\"}} {}",
        c.notifications_ok
    );
    let _ = writeln!(
        s,
        "rampart_monitor_notifications_total{{result=\"failed\"}} {}",
        c.notifications_failed
    );
    // The db cluster's sync standbys as the monitor last read them (`/cluster`): what
    // the built-in rule NoSyncStandby reads, for a Prometheus server too.
    let sync = Selector::name(crate::rules::SYNC_STANDBYS);
    let fresh = g.cluster.as_ref().and_then(|_| {
        g.store
            .select(&sync)
            .find_map(|(_, samples)| samples.back().copied())
    });
    if let Some((_, v)) = fresh {
        let _ = writeln!(s, "# HELP {0} Synchronous standbys in the db cluster view the monitor read last.\n# TYPE {0} gauge\n{0} {v}", crate::rules::SYNC_STANDBYS);
    }
    s.push_str("# EOF\n");
    drop(g);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = rampart_metrics::respond_with_host(accept, s);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Prometheus's `POST /-/reload` (and `PUT`): 200 with what was applied, 500 with why
/// nothing was (the running rules stay).
async fn reload(State(m): State<Arc<Monitor>>) -> Response {
    match m.reload() {
        Ok(r) => {
            tracing::info!(result = %r, "configuration reloaded (/-/reload)");
            (StatusCode::OK, format!("{r}\n")).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused (/-/reload)");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pair_rates_handle_resets() {
        let r: Vec<(u64, f64)> = pair_rates(
            [
                (0, 0.0),
                (1000, 10.0),
                (2000, 4.0),
                (2000, 5.0),
                (4000, 9.0),
            ]
            .into_iter(),
        )
        .collect();
        assert_eq!(r, vec![(1000, 10.0), (2000, 4.0), (4000, 2.0)]);
    }
}
