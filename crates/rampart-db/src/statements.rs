//! The node's slowest statements, from PostgreSQL's `pg_stat_statements`: read at each
//! scrape of `/metrics` (the agent preloads the library, see
//! [`crate::pg::preload_libraries`], and the primary's first read creates the
//! extension), rendered as a bounded set of series.

use std::fmt::Write as _;

use crate::error::DbError;
use crate::pg::PgConn;

/// The extension (and the library preloaded for it).
pub const EXTENSION: &str = "pg_stat_statements";
/// Characters of a statement's text kept in its `query` label.
const QUERY_LABEL_CHARS: usize = 100;

/// One row of `pg_stat_statements` (summed per `queryid`).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub queryid: i64,
    /// Normalized text: constants are `$1`, `$2`...
    pub query: String,
    pub calls: i64,
    /// Total execution time, milliseconds.
    pub total_ms: f64,
}

impl PgConn {
    /// The `limit` statements of this node with the most execution time since their
    /// statistics began (`pg_stat_statements`, constants already replaced by `$n`), summed
    /// over users and databases per `queryid`. On a primary without the extension it is
    /// created first (`synchronous_commit = local`: never waits for a standby; replicas get
    /// it by replication). Errs while the library is not preloaded (before a restart).
    pub async fn top_statements(&mut self, limit: i64) -> Result<Vec<Statement>, DbError> {
        const SQL: &str =
            "SELECT queryid, min(query), sum(calls)::int8, sum(total_exec_time)::float8
            FROM pg_stat_statements WHERE queryid IS NOT NULL
            GROUP BY queryid ORDER BY 4 DESC, 1 LIMIT $1";
        let rows = match self.query(SQL, &[&limit]).await {
            Err(DbError::Query(e)) if e.starts_with("42P01") => {
                // undefined_table: the extension is not there yet.
                if !self.in_recovery().await? {
                    self.batch(&format!(
                        "BEGIN; SET LOCAL synchronous_commit = local; \
                         CREATE EXTENSION IF NOT EXISTS {EXTENSION}; COMMIT;"
                    ))
                    .await?;
                }
                self.query(SQL, &[&limit]).await?
            }
            r => r?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let get = |e: tokio_postgres::Error| DbError::Query(format!("pg_stat_statements: {e}"));
            out.push(Statement {
                queryid: r.try_get(0).map_err(get)?,
                query: r
                    .try_get::<_, Option<String>>(1)
                    .map_err(get)?
                    .unwrap_or_default(),
                calls: r.try_get(2).map_err(get)?,
                total_ms: r.try_get(3).map_err(get)?,
            });
        }
        Ok(out)
    }
}

/// The statements as OpenMetrics families: `rampart_db_statement_mean_seconds{queryid,
/// query}`, `rampart_db_statement_calls_total{queryid}` and
/// `rampart_db_statement_total_seconds{queryid}` (only the statements given: a bounded
/// label set).
pub fn render_statements(top: &[Statement]) -> String {
    let mut mean = String::from(
        "# HELP rampart_db_statement_mean_seconds Mean execution time of one of the node's top statements by total time (pg_stat_statements; query: its normalized text, truncated).\n\
         # TYPE rampart_db_statement_mean_seconds gauge\n",
    );
    let mut calls = String::from(
        "# HELP rampart_db_statement_calls Executions of one of the node's top statements.\n\
         # TYPE rampart_db_statement_calls counter\n",
    );
    let mut total = String::from(
        "# HELP rampart_db_statement_total_seconds Execution time spent in one of the node's top statements since its statistics began.\n\
         # TYPE rampart_db_statement_total_seconds gauge\n",
    );
    for s in top {
        let id = s.queryid;
        let secs = s.total_ms.max(0.0) / 1000.0;
        let m = if s.calls > 0 {
            secs / s.calls as f64
        } else {
            0.0
        };
        let q = query_label(&s.query);
        let _ = writeln!(
            mean,
            "rampart_db_statement_mean_seconds{{queryid=\"{id}\",query=\"{q}\"}} {m}"
        );
        let _ = writeln!(
            calls,
            "rampart_db_statement_calls_total{{queryid=\"{id}\"}} {}",
            s.calls.max(0)
        );
        let _ = writeln!(
            total,
            "rampart_db_statement_total_seconds{{queryid=\"{id}\"}} {secs}"
        );
    }
    if top.is_empty() {
        return String::new();
    }
    mean + &calls + &total
}

/// A statement's text as a label value: whitespace runs as one space, at most
/// [`QUERY_LABEL_CHARS`] characters (`…` when cut), `\\` and `"` escaped.
pub fn query_label(query: &str) -> String {
    let collapsed = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut cut: String = collapsed.chars().take(QUERY_LABEL_CHARS).collect();
    if collapsed.chars().count() > QUERY_LABEL_CHARS {
        cut.push('…');
    }
    cut.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statements_become_bounded_escaped_series() {
        let long = format!(
            "SELECT \"a\\b\",\n\t  $1 FROM t WHERE x = $2 {}",
            "y".repeat(200)
        );
        let top = vec![
            Statement {
                queryid: -42,
                query: long,
                calls: 4,
                total_ms: 1000.0,
            },
            Statement {
                queryid: 7,
                query: "SELECT pg_sleep($1)".into(),
                calls: 0,
                total_ms: 0.0,
            },
        ];
        let text = render_statements(&top);
        let q = query_label(&top[0].query);
        assert!(
            q.starts_with("SELECT \\\"a\\\\b\\\", $1 FROM t WHERE x = $2 yyy"),
            "{q}"
        );
        assert_eq!(
            q.chars().filter(|&c| c == 'y').count(),
            100 - "SELECT \"a\\b\", $1 FROM t WHERE x = $2 ".chars().count()
        );
        assert!(q.ends_with('…'));
        assert!(
            text.contains(&format!(
                "rampart_db_statement_mean_seconds{{queryid=\"-42\",query=\"{q}\"}} 0.25\n"
            )),
            "{text}"
        );
        assert!(text.contains("rampart_db_statement_calls_total{queryid=\"-42\"} 4\n"));
        assert!(text.contains("rampart_db_statement_total_seconds{queryid=\"-42\"} 1\n"));
        assert!(text.contains(
            "rampart_db_statement_mean_seconds{queryid=\"7\",query=\"SELECT pg_sleep($1)\"} 0\n"
        ));
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 6);
        assert_eq!(render_statements(&[]), "");
        // The classic format keeps the series (what every scraper without OpenMetrics reads).
        let classic = rampart_metrics::classic(&(text + "# EOF\n"));
        assert!(
            classic.contains("# TYPE rampart_db_statement_calls_total counter\n"),
            "{classic}"
        );
        assert!(classic.contains("rampart_db_statement_calls_total{queryid=\"7\"} 0\n"));
    }
}
