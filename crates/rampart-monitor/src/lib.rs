//! `rampart monitor`: the seed's missing monitoring, in one process (what Prometheus,
//! Alertmanager and Grafana do together, for one topology).
//!
//! - [`targets`]: every node of the topology as a scrape target (pure).
//! - [`expo`]: the Prometheus text format parser (pure).
//! - [`rules`]: the built-in alert rules sized from the topology, plus `[monitor]` rules.
//! - [`client`]: a small async HTTP/1.1 client for scrapes and webhooks.
//! - [`diagram`]: the seed's diagram of the stack, live, and the events seen between
//!   scrapes (pure).
//! - [`server`]: the dashboard and the JSON API.
//! - [`alertmanager`]: alerts to a Prometheus Alertmanager (v2 API), resent while firing.
//! - [`prometheus`]: the monitor for Prometheus users: a scrape configuration, the
//!   built-in rules as a Prometheus rules file, the Grafana dashboard (pure).
//!
//! Each `scrape_interval`, every target is read at once (each with a timeout); the
//! samples go into a bounded in-memory [`rampart_alert::Store`] labelled with `job`
//! and `instance`, plus `up` and `scrape_duration_seconds` per target; the rules are
//! evaluated ([`rampart_alert::Engine`]) and firing/resolved events go to every route.
//!
//! *Invariant:* the store lock is never held across an `.await`; a slow or dead
//! target costs one timeout per round, never the round of the others.

pub mod alertmanager;
pub mod client;
pub mod diagram;
pub mod expo;
pub mod prometheus;
pub mod reload;
pub mod rules;
pub mod server;
pub mod targets;
#[cfg(test)]
mod week;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rampart_alert::{Engine, Event, Labels, SeriesKey, Store};
use rampart_topology::monitor::{AlertKind, AlertRoute, MonitorConfig};
use rampart_topology::Topology;
use serde::Serialize;
use serde_json::{json, Value};

use crate::targets::{Mode, Target};

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("node \"{0}\" is not the topology's [monitor] (its name is \"{1}\")")]
    UnknownNode(String, String),
    #[error("--lb-admin names \"{0}\", which is not an [[lb.nodes]] entry of the topology")]
    UnknownLbNode(String),
    #[error("the topology has no [monitor] section")]
    NoMonitor,
    #[error("[monitor] token_env names {0}, which is not set: set it, or remove token_env")]
    NoToken(String),
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serve: {0}")]
    Serve(std::io::Error),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How one target did at its last scrape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetHealth {
    pub up: bool,
    pub last_scrape_ms: u64,
    pub duration_ms: f64,
    pub samples: usize,
    pub error: Option<String>,
    /// Scrapes failed in a row (0 when the last one answered).
    pub fails: u32,
    /// When it last answered (ms), 0 never.
    pub last_ok_ms: u64,
    /// The last scrape got no answer in time (slow, or gone: one more round tells).
    pub timed_out: bool,
}

/// A notification sent (or not) to a route.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub at_ms: u64,
    pub route: String,
    pub alert: String,
    pub labels: Labels,
    pub status: &'static str,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub notifications_ok: u64,
    pub notifications_failed: u64,
    pub rounds: u64,
}

pub struct Inner {
    pub store: Store,
    pub engine: Engine,
    pub health: Vec<TargetHealth>,
    pub notifications: VecDeque<Notification>,
    pub counters: Counters,
    /// The db cluster view last read from an agent (`/cluster`).
    pub cluster: Option<Value>,
    /// The diagram of the last round, to see what the next one changes.
    pub last_diagram: Option<diagram::Diagram>,
    /// What changed between scrapes and the alerts' events, newest last (bounded).
    pub events: VecDeque<DashEvent>,
    /// Events recorded so far (a page polling knows what is new).
    pub events_total: u64,
}

/// Events kept for the dashboard.
pub const EVENTS_KEPT: usize = 200;

/// One event of the dashboard: a change the monitor saw between two scrapes, or an
/// alert firing or resolved.
#[derive(Debug, Clone, Serialize)]
pub struct DashEvent {
    pub seq: u64,
    pub at_ms: u64,
    /// `down`, `up`, `restart`, `failover`, `takeover`, `ejected`, `back`, `state`, `alert`,
    /// `resolved`.
    pub kind: &'static str,
    pub subject: String,
    pub text: String,
}

impl Inner {
    /// Record an event, forgetting the oldest beyond [`EVENTS_KEPT`].
    pub fn push_event(&mut self, at_ms: u64, kind: &'static str, subject: String, text: String) {
        self.events_total += 1;
        if self.events.len() >= EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(DashEvent {
            seq: self.events_total,
            at_ms,
            kind,
            subject,
            text,
        });
    }

    /// The diagram of what was scraped last.
    pub fn diagram(&self, m: &Monitor) -> diagram::Diagram {
        diagram::build(&diagram::Inputs {
            layout: &m.layout,
            targets: &m.targets,
            health: &self.health,
            store: &self.store,
            cluster: self.cluster.as_ref(),
            rate_window_ms: m.rate_window_ms(),
        })
    }
}

/// Everything the scraper and the server share.
pub struct Monitor {
    pub cluster: String,
    pub cfg: MonitorConfig,
    pub targets: Vec<Target>,
    pub db_agents: Vec<SocketAddr>,
    pub token: Option<String>,
    pub started_ms: u64,
    /// The diagram's shape.
    pub layout: diagram::Layout,
    inner: Mutex<Inner>,
    /// What a reload reads ([`reload`]).
    loader: Option<reload::Loader>,
}

impl Monitor {
    pub fn new(t: &Topology, node: &str) -> Result<Monitor, MonitorError> {
        Monitor::with_lb_admins(t, node, &[])
    }

    /// `new`, scraping these lb nodes' admin `/metrics` (with their tokens) instead of
    /// what the topology says of them (what `rampart up` gives nodes without an admin).
    pub fn with_lb_admins(
        t: &Topology,
        node: &str,
        lb_admins: &[LbAdmin],
    ) -> Result<Monitor, MonitorError> {
        let cfg = t.monitor.clone().ok_or(MonitorError::NoMonitor)?;
        if cfg.name != node {
            return Err(MonitorError::UnknownNode(node.into(), cfg.name.clone()));
        }
        let token = match &cfg.token_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => return Err(MonitorError::NoToken(var.clone())),
            },
        };
        let interval = cfg.scrape_interval;
        let per_series =
            usize::try_from((cfg.retention.as_millis() / interval.as_millis().max(1)).max(2))
                .unwrap_or(2);
        let mut targets = targets::targets(t);
        // An lb admin the topology guards with a token file (`[[lb.nodes]]
        // admin_token_file`, what the separate-hosts rehearsal writes) is read with it. A
        // file this machine cannot read is no reason not to monitor the rest: the target
        // then shows the 401 it gets.
        for n in t.lb.iter().flat_map(|l| &l.nodes) {
            let (Some(_), Some(file)) = (n.admin, &n.admin_token_file) else {
                continue;
            };
            match std::fs::read_to_string(file) {
                Ok(tok) if !tok.trim().is_empty() => {
                    if let Some(tg) = targets
                        .iter_mut()
                        .find(|x| x.job == "lb" && x.instance == n.name)
                    {
                        tg.bearer = Some(tok.trim().to_string());
                    }
                }
                Ok(_) => {
                    tracing::warn!(node = %n.name, file = %file.display(), "lb admin token file is empty: scraping without a token")
                }
                Err(e) => {
                    tracing::warn!(node = %n.name, file = %file.display(), error = %e, "cannot read the lb admin token file: scraping without a token")
                }
            }
        }
        for a in lb_admins {
            let Some(tg) = targets
                .iter_mut()
                .find(|x| x.job == "lb" && x.instance == a.node)
            else {
                return Err(MonitorError::UnknownLbNode(a.node.clone()));
            };
            *tg = targets::Target::lb_admin(&a.node, a.address, a.token.clone());
        }
        let stale = ms(interval * 3 + Duration::from_secs(1));
        let engine = Engine::new(rules::rules(t, interval), stale, 10 * 60 * 1000);
        Ok(Monitor {
            cluster: t.cluster.clone(),
            db_agents: targets::db_agents(t),
            layout: diagram::Layout::of(t),
            token,
            started_ms: now_ms(),
            inner: Mutex::new(Inner {
                store: Store::new(per_series, 50_000),
                engine,
                health: vec![TargetHealth::default(); targets.len()],
                notifications: VecDeque::new(),
                counters: Counters::default(),
                cluster: None,
                last_diagram: None,
                events: VecDeque::new(),
                events_total: 0,
            }),
            targets,
            cfg,
            loader: None,
        })
    }

    /// Reload from this loader ([`Monitor::reload`]).
    pub fn with_loader(mut self, l: reload::Loader) -> Monitor {
        self.loader = Some(l);
        self
    }

    /// Rates on the diagram: the increase over the last 5 s, or 2 rounds when slower.
    pub fn rate_window_ms(&self) -> u64 {
        ms(self.cfg.scrape_interval * 2).max(5000)
    }

    /// The shared state (never held across an `.await`).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round: scrape every target at once, record, evaluate. Returns the events.
    pub async fn round(self: &Arc<Self>) -> Vec<Event> {
        let timeout = self
            .cfg
            .scrape_interval
            .mul_f64(0.8)
            .clamp(Duration::from_millis(200), Duration::from_secs(10));
        let mut set = tokio::task::JoinSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let t = t.clone();
            set.spawn(async move {
                let start = std::time::Instant::now();
                let r = client::scrape(t.addr, &t.path, t.bearer.as_deref(), timeout).await;
                (i, r, start.elapsed())
            });
        }
        let agents = self.db_agents.clone();
        let cluster = async move {
            for a in agents {
                if let Ok(r) = client::get(a, "/cluster", timeout).await {
                    if r.status == 200 {
                        if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
                            return Some(v);
                        }
                    }
                }
            }
            None
        };
        let (cluster, results) = tokio::join!(cluster, async {
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                if let Ok(r) = r {
                    out.push(r);
                }
            }
            out
        });
        self.record_round(now_ms(), results, cluster)
    }

    /// What a round does with its answers: each target's samples (labelled `job` and
    /// `instance`), `up` and `scrape_duration_seconds` into the store, the cluster view,
    /// the store pruned of series unseen for `retention`, the rules evaluated, the
    /// diagram's changes recorded. Returns the alerts' events. `results`: (target index,
    /// its answer or error, time taken); `now` in ms.
    pub fn record_round(
        &self,
        now: u64,
        results: Vec<(usize, Result<client::Reply, String>, Duration)>,
        cluster: Option<Value>,
    ) -> Vec<Event> {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.counters.rounds += 1;
        for (i, r, took) in results {
            let t = &self.targets[i];
            let base: Labels = [
                ("job".to_string(), t.job.clone()),
                ("instance".to_string(), t.instance.clone()),
            ]
            .into_iter()
            .collect();
            let mut h = TargetHealth {
                last_scrape_ms: now,
                duration_ms: took.as_secs_f64() * 1000.0,
                ..Default::default()
            };
            match r {
                Ok(reply) if reply.status == 200 => {
                    h.up = true;
                    if t.mode == Mode::Metrics {
                        let text = String::from_utf8_lossy(&reply.body);
                        let parsed = expo::parse(&text);
                        for (mut k, v) in parsed.samples {
                            if !t.keeps(&k.name) {
                                continue;
                            }
                            k.labels.extend(base.clone());
                            if inner.store.push(&k, now, v) {
                                h.samples += 1;
                            }
                        }
                    }
                }
                Ok(reply) => {
                    h.error = Some(format!("{} {} answered {}", t.addr, t.path, reply.status))
                }
                Err(e) => {
                    h.timed_out = client::is_timeout(&e);
                    h.error = Some(e);
                }
            }
            let prev = &inner.health[i];
            (h.fails, h.last_ok_ms) = if h.up {
                (0, now)
            } else {
                (prev.fails.saturating_add(1), prev.last_ok_ms)
            };
            if h.up {
                inner.counters.scrapes_ok += 1;
            } else {
                inner.counters.scrapes_failed += 1;
            }
            inner.store.push(
                &SeriesKey::new("up", base.clone()),
                now,
                if h.up { 1.0 } else { 0.0 },
            );
            inner.store.push(
                &SeriesKey::new("scrape_duration_seconds", base),
                now,
                took.as_secs_f64(),
            );
            inner.health[i] = h;
        }
        if let Some(c) = &cluster {
            let sync = c
                .get("members")
                .and_then(Value::as_array)
                .map(|ms| {
                    ms.iter()
                        .filter(|m| m.get("sync_standby").and_then(Value::as_bool) == Some(true))
                        .count()
                })
                .unwrap_or(0);
            let labels: Labels = [
                ("job".to_string(), "db".to_string()),
                ("instance".to_string(), "cluster".to_string()),
            ]
            .into_iter()
            .collect();
            inner.store.push(
                &SeriesKey::new(rules::SYNC_STANDBYS, labels),
                now,
                sync as f64,
            );
        }
        inner.cluster = cluster;
        inner
            .store
            .prune(now.saturating_sub(ms(self.cfg.retention)));
        let events = inner.engine.evaluate(&inner.store, now);
        let d = inner.diagram(self);
        if let Some(prev) = inner.last_diagram.take() {
            for c in diagram::changes(&prev, &d) {
                inner.push_event(now, c.kind, c.subject, c.text);
            }
        }
        inner.last_diagram = Some(d);
        for ev in &events {
            let (kind, a) = match ev {
                Event::Firing(a) => ("alert", a),
                Event::Resolved(a) => ("resolved", a),
            };
            let subject = a
                .labels
                .get("instance")
                .cloned()
                .unwrap_or_else(|| a.rule.clone());
            let text = format!(
                "{} {}: {}",
                a.rule,
                if kind == "alert" {
                    "firing"
                } else {
                    "resolved"
                },
                a.summary
            );
            inner.push_event(now, kind, subject, text);
        }
        events
    }

    /// Send events to every route (log lines now, webhooks in the background).
    pub fn notify(self: &Arc<Self>, events: Vec<Event>) {
        for ev in events {
            let (status, a) = match &ev {
                Event::Firing(a) => ("firing", a),
                Event::Resolved(a) => ("resolved", a),
            };
            for route in &self.cfg.alerts {
                match &route.kind {
                    AlertKind::Log => {
                        if status == "firing" {
                            tracing::warn!(route = %route.name, alert = %a.rule, labels = ?a.labels, severity = %a.severity, summary = %a.summary, "alert firing");
                        } else {
                            tracing::info!(route = %route.name, alert = %a.rule, labels = ?a.labels, summary = %a.summary, "alert resolved");
                        }
                        self.record(route, a, status, Ok(()));
                    }
                    AlertKind::Webhook { url } => {
                        let body = webhook_body(&self.cluster, &route.name, status, a);
                        let me = self.clone();
                        let route = route.clone();
                        let url = url.clone();
                        let alert = a.clone();
                        tokio::spawn(async move {
                            let r = post_with_retries(&url, body).await;
                            if let Err(e) = &r {
                                tracing::warn!(route = %route.name, alert = %alert.rule, error = %e, "webhook failed");
                            }
                            me.record(&route, &alert, status, r);
                        });
                    }
                    // Sent from the engine's alerts after each round (`alertmanager`).
                    AlertKind::Alertmanager { .. } => {}
                }
            }
        }
    }

    pub(crate) fn record(
        &self,
        route: &AlertRoute,
        a: &rampart_alert::Alert,
        status: &'static str,
        r: Result<(), String>,
    ) {
        let mut g = self.lock();
        if r.is_ok() {
            g.counters.notifications_ok += 1;
        } else {
            g.counters.notifications_failed += 1;
        }
        if g.notifications.len() >= 100 {
            g.notifications.pop_front();
        }
        g.notifications.push_back(Notification {
            at_ms: now_ms(),
            route: route.name.clone(),
            alert: a.rule.clone(),
            labels: a.labels.clone(),
            status,
            ok: r.is_ok(),
            error: r.err(),
        });
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// RFC 3339 UTC time of a millisecond timestamp (civil-from-days, no time zone data).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The JSON a webhook receives (Alertmanager's webhook shape, one alert per POST).
pub fn webhook_body(cluster: &str, route: &str, status: &str, a: &rampart_alert::Alert) -> Value {
    let mut labels = a.labels.clone();
    labels.insert("alertname".into(), a.rule.clone());
    labels.insert("severity".into(), a.severity.to_string());
    labels.insert("cluster".into(), cluster.to_string());
    json!({
        "version": "4",
        "receiver": route,
        "status": status,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": { "summary": a.summary },
            "startsAt": rfc3339(a.fired_at.unwrap_or(a.active_since)),
            "endsAt": a.resolved_at.map(rfc3339),
            "value": if a.value.is_finite() { json!(a.value) } else { Value::Null },
        }],
    })
}

async fn post_with_retries(url: &str, body: Value) -> Result<(), String> {
    let (hostport, path) = client::split_url(url)?;
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * 2u64.pow(attempt))).await;
        }
        match client::request(
            &hostport,
            "POST",
            &path,
            Some("application/json"),
            None,
            bytes.clone(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(r) if (200..300).contains(&r.status) => return Ok(()),
            Ok(r) => last = format!("{url} answered {}", r.status),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// An lb node's admin API given outside the topology (by `rampart up`), with its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbAdmin {
    pub node: String,
    pub address: SocketAddr,
    pub token: Option<String>,
}

/// Options of [`run`].
pub struct RunOptions {
    pub topology: Topology,
    pub node: String,
    /// Override `[monitor] listen`.
    pub listen: Option<SocketAddr>,
    /// Scrape these lb admins instead of what the topology says of their nodes.
    pub lb_admins: Vec<LbAdmin>,
    /// Reads the topology again on SIGHUP and `POST /-/reload`.
    pub loader: Option<reload::Loader>,
}

/// Run the monitor until SIGINT or SIGTERM.
pub async fn run(o: RunOptions) -> Result<(), MonitorError> {
    // SIGHUP reloads: handled before the port answers (its default action would end us).
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut m = Monitor::with_lb_admins(&o.topology, &o.node, &o.lb_admins)?;
    if let Some(l) = o.loader {
        m = m.with_loader(l);
    }
    let m = Arc::new(m);
    let listen = o.listen.unwrap_or(m.cfg.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| MonitorError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(%listen, targets = m.targets.len(), rules = m.lock().engine.rules().len(), interval_ms = ms(m.cfg.scrape_interval), "monitor: dashboard at http://{listen}/");
    let alertmanagers: Vec<_> = m
        .cfg
        .alerts
        .iter()
        .filter_map(|r| match &r.kind {
            AlertKind::Alertmanager { url, resend } => Some(alertmanager::spawn(
                m.clone(),
                r.clone(),
                url.clone(),
                *resend,
            )),
            _ => None,
        })
        .collect();
    let scraper = {
        let m = m.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(m.cfg.scrape_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let events = m.round().await;
                m.notify(events);
                if !alertmanagers.is_empty() {
                    let alerts: Vec<rampart_alert::Alert> = m
                        .lock()
                        .engine
                        .alerts()
                        .filter(|a| {
                            matches!(
                                a.state,
                                rampart_alert::AlertState::Firing
                                    | rampart_alert::AlertState::Resolved
                            )
                        })
                        .cloned()
                        .collect();
                    let now = now_ms();
                    for tx in &alertmanagers {
                        let _ = tx.send((now, alerts.clone()));
                    }
                }
            }
        })
    };
    let hangups = {
        let m = m.clone();
        tokio::spawn(async move {
            let Some(mut hup) = hup else {
                return;
            };
            while hup.recv().await.is_some() {
                match m.reload() {
                    Ok(r) => tracing::info!(result = %r, "configuration reloaded (SIGHUP)"),
                    Err(e) => tracing::error!(error = %e, "configuration reload refused (SIGHUP)"),
                }
            }
        })
    };
    let r = server::serve(m, listener).await;
    scraper.abort();
    hangups.abort();
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_event_ring_keeps_the_latest_ones() {
        let t = rampart_topology::Topology::from_source(&rampart_topology::Source::new(
            "t.toml",
            "[cluster]\nname = \"a\"\n[monitor]\nlisten = \"127.0.0.1:1\"\n".to_string(),
        ))
        .unwrap();
        let m = Monitor::new(&t, "monitor").unwrap();
        let mut g = m.lock();
        for i in 0..(EVENTS_KEPT as u64 + 50) {
            g.push_event(i, "down", "web1".into(), format!("event {i}"));
        }
        assert_eq!(g.events.len(), EVENTS_KEPT);
        assert_eq!(g.events_total, EVENTS_KEPT as u64 + 50);
        assert_eq!(g.events.front().map(|e| e.seq), Some(51));
        assert_eq!(g.events.back().map(|e| e.text.as_str()), Some("event 249"));
        let j = server::diagram_json(&m, &g, 0);
        assert_eq!(j["events"][0]["seq"], 250, "newest first");
        assert_eq!(j["events"].as_array().map(Vec::len), Some(50));
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40.000Z");
    }
}
