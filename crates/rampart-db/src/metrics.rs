//! Prometheus metrics of one agent (`/metrics`).

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::dcs::Member;
use crate::pg::{PgConn, PgStatus};
use crate::statements::render_statements;

/// Statements shown in `/metrics`: the node's top ones by total execution time.
pub const TOP_STATEMENTS: i64 = 10;
/// How long a scrape waits for them at most.
const STATEMENTS_BUDGET: std::time::Duration = std::time::Duration::from_millis(300);

/// How long this scrape may wait for the statements: `STATEMENTS_BUDGET`, or a
/// third of the scraper's timeout when it sends one (Prometheus's
/// `X-Prometheus-Scrape-Timeout-Seconds`), so that a slow PostgreSQL costs the
/// scrape its statement figures, never the whole scrape.
pub fn statements_budget(scrape_timeout_header: Option<&str>) -> std::time::Duration {
    scrape_timeout_header
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| std::time::Duration::from_secs_f64(s / 3.0).min(STATEMENTS_BUDGET))
        .unwrap_or(STATEMENTS_BUDGET)
}

pub struct Metrics {
    registry: Registry,
    role: Family<Vec<(String, String)>, Gauge>,
    leader: Gauge,
    timeline: Gauge,
    wal_lsn: Gauge,
    receive_lsn: Gauge,
    lag_bytes: Gauge,
    lag_seconds: Gauge<f64, AtomicU64>,
    connections: Gauge,
    pending_restart: Gauge,
    xact_commit: Counter,
    xact_rollback: Counter,
    last_commit: AtomicI64,
    last_rollback: AtomicI64,
    pub promotions: Counter,
    /// The connection `/metrics` reads `pg_stat_statements` with (its own: a scrape never
    /// waits on, or delays, the agent's loop).
    statements: Option<tokio::sync::Mutex<PgConn>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rampart_db");
        let m = Metrics {
            role: Family::default(),
            leader: Gauge::default(),
            timeline: Gauge::default(),
            wal_lsn: Gauge::default(),
            receive_lsn: Gauge::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: Gauge::default(),
            connections: Gauge::default(),
            pending_restart: Gauge::default(),
            xact_commit: Counter::default(),
            xact_rollback: Counter::default(),
            last_commit: AtomicI64::new(-1),
            last_rollback: AtomicI64::new(-1),
            promotions: Counter::default(),
            registry: Registry::default(),
            statements: None,
        };
        registry.register(
            "role",
            "1 for the node's current role (primary, replica, demoted, starting, stopped)",
            m.role.clone(),
        );
        registry.register(
            "leader",
            "1 while this node is the writable lease holder",
            m.leader.clone(),
        );
        registry.register("timeline", "PostgreSQL timeline", m.timeline.clone());
        registry.register(
            "wal_position_bytes",
            "Primary: current WAL LSN; replica: replayed LSN",
            m.wal_lsn.clone(),
        );
        registry.register(
            "receive_position_bytes",
            "Replica: last received WAL LSN",
            m.receive_lsn.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "Bytes behind the leader",
            m.lag_bytes.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Seconds since the last replayed transaction while behind",
            m.lag_seconds.clone(),
        );
        registry.register(
            "connections",
            "Client backends connected",
            m.connections.clone(),
        );
        registry.register(
            "pending_restart",
            "1 while a changed setting waits for PostgreSQL's restart (Patroni's pending_restart)",
            m.pending_restart.clone(),
        );
        registry.register(
            "xact_commit",
            "Transactions committed (all databases)",
            m.xact_commit.clone(),
        );
        registry.register(
            "xact_rollback",
            "Transactions rolled back (all databases)",
            m.xact_rollback.clone(),
        );
        registry.register(
            "promotions",
            "Promotions performed by this agent",
            m.promotions.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn update(&self, me: &Member, st: Option<&PgStatus>, writable_leader: bool) {
        for r in ["primary", "replica", "demoted", "starting", "stopped"] {
            self.role
                .get_or_create(&vec![("role".to_string(), r.to_string())])
                .set(i64::from(me.role == r));
        }
        self.leader.set(i64::from(writable_leader));
        self.pending_restart.set(i64::from(me.pending_restart));
        self.timeline.set(i64::from(me.timeline));
        self.wal_lsn.set(me.lsn as i64);
        self.receive_lsn.set(me.receive_lsn as i64);
        self.lag_bytes.set(me.lag_bytes as i64);
        self.lag_seconds.set(me.lag_seconds);
        if let Some(s) = st {
            self.connections.set(s.connections);
            bump(&self.xact_commit, &self.last_commit, s.xact_commit);
            bump(&self.xact_rollback, &self.last_rollback, s.xact_rollback);
        }
    }

    /// Read the top statements from this connection at each scrape.
    pub fn with_statements(mut self, conn: PgConn) -> Metrics {
        self.statements = Some(tokio::sync::Mutex::new(conn));
        self
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// [`Metrics::encode`] plus the node's top statements, read now (bounded by the
    /// connection's timeout; left out when PostgreSQL or the extension does not answer).
    pub async fn render(&self, budget: std::time::Duration) -> String {
        let mut out = self.encode();
        let Some(conn) = &self.statements else {
            return out;
        };
        // A scrape must answer even when PostgreSQL hangs (a fenced or stopped primary):
        // the statements get a short budget, and one scrape at a time reads them.
        let Ok(mut conn) = conn.try_lock() else {
            return out;
        };
        let top = tokio::time::timeout(budget, conn.top_statements(TOP_STATEMENTS)).await;
        match top {
            Err(_) => {
                conn.reset();
                tracing::debug!("pg_stat_statements did not answer within the scrape's budget");
            }
            Ok(Ok(top)) => {
                let text = render_statements(&top);
                match out.rfind("# EOF") {
                    Some(at) => out.insert_str(at, &text),
                    None => out.push_str(&text),
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no pg_stat_statements figures this scrape")
            }
        }
        out
    }
}

/// Advance a counter by the growth of PostgreSQL's own counter (which resets on restart).
fn bump(c: &Counter, last: &AtomicI64, now: i64) {
    use std::sync::atomic::Ordering::Relaxed;
    let prev = last.swap(now, Relaxed);
    if prev >= 0 && now > prev {
        c.inc_by((now - prev) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_statements_fit_inside_the_scrapers_timeout() {
        assert_eq!(statements_budget(None), STATEMENTS_BUDGET);
        assert_eq!(statements_budget(Some("10")), STATEMENTS_BUDGET);
        assert_eq!(statements_budget(Some("0.240")), Duration::from_millis(80));
        for bad in ["", "x", "-1", "0", "NaN", "inf"] {
            assert_eq!(statements_budget(Some(bad)), STATEMENTS_BUDGET, "{bad}");
        }
    }
}
