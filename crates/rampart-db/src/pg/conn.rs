//! Queries to the local PostgreSQL: one connection, remade when it breaks, and the
//! statements the agent runs (status, replication, slots, promotion, reload).

use std::time::Duration;

use super::{PgStatus, ReplStat, REPLICATION_USER};
use crate::error::DbError;

/// A connection to the local PostgreSQL, remade when it breaks.
pub struct PgConn {
    client: Option<tokio_postgres::Client>,
    conninfo: String,
    timeout: Duration,
}

impl PgConn {
    pub fn new(conninfo: String, timeout: Duration) -> PgConn {
        PgConn {
            client: None,
            conninfo,
            timeout,
        }
    }

    pub fn reset(&mut self) {
        self.client = None;
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, DbError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let fut = tokio_postgres::connect(&self.conninfo, tokio_postgres::NoTls);
            let (client, conn) = tokio::time::timeout(self.timeout, fut)
                .await
                .map_err(|_| DbError::Query("connect timed out".into()))?
                .map_err(|e| DbError::Query(format!("connect: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| DbError::Query("no connection".into()))
    }

    pub async fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let t = self.timeout;
        let r = {
            let c = self.client().await?;
            tokio::time::timeout(t, c.query(sql, params)).await
        };
        match r {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                if e.is_closed() {
                    self.reset();
                }
                Err(DbError::Query(db_error_text(&e)))
            }
            Err(_) => {
                self.reset();
                Err(DbError::Query(format!("query timed out after {t:?}")))
            }
        }
    }

    pub async fn status(&mut self) -> Result<PgStatus, DbError> {
        const SQL: &str = "SELECT pg_is_in_recovery(),
            CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8 END,
            COALESCE(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::int8, 0),
            COALESCE(pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::int8, 0),
            COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false),
            CASE WHEN pg_is_in_recovery()
                 THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'), (SELECT timeline_id FROM pg_control_checkpoint()))::int8
                 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8 END,
            CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
                 ELSE COALESCE(extract(epoch from now() - pg_last_xact_replay_timestamp())::float8, 0.0) END,
            (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int8,
            (SELECT COALESCE(sum(xact_commit), 0) FROM pg_stat_database)::int8,
            (SELECT COALESCE(sum(xact_rollback), 0) FROM pg_stat_database)::int8,
            current_setting('synchronous_standby_names'),
            current_setting('recovery_target_timeline'),
            (SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming')::int8,
            current_setting('server_version_num')::int8,
            pg_postmaster_start_time()::text";
        let rows = self.query(SQL, &[]).await?;
        let r = rows
            .first()
            .ok_or_else(|| DbError::Query("status: no row".into()))?;
        let get = |e: tokio_postgres::Error| DbError::Query(format!("status: {e}"));
        let in_recovery: bool = r.try_get(0).map_err(get)?;
        let current: Option<i64> = r.try_get(1).map_err(get)?;
        let receive: i64 = r.try_get(2).map_err(get)?;
        let replay: i64 = r.try_get(3).map_err(get)?;
        let tl: i64 = r.try_get(5).map_err(get)?;
        Ok(PgStatus {
            in_recovery,
            timeline: u32::try_from(tl).unwrap_or(0),
            lsn: if in_recovery {
                replay.max(0) as u64
            } else {
                current.unwrap_or(0).max(0) as u64
            },
            receive_lsn: receive.max(replay).max(0) as u64,
            streaming: r.try_get(4).map_err(get)?,
            replay_delay_seconds: r.try_get::<_, f64>(6).map_err(get)?.max(0.0),
            connections: r.try_get(7).map_err(get)?,
            xact_commit: r.try_get(8).map_err(get)?,
            xact_rollback: r.try_get(9).map_err(get)?,
            sync_names: r.try_get(10).map_err(get)?,
            recovery_target_timeline: r.try_get(11).map_err(get)?,
            received_tli: r
                .try_get::<_, Option<i64>>(12)
                .map_err(get)?
                .and_then(|t| u32::try_from(t).ok())
                .filter(|&t| t > 0),
            server_version: r.try_get(13).map_err(get)?,
            postmaster_start_time: r.try_get(14).map_err(get)?,
        })
    }

    /// Is `synchronous_standby_names = names` in effect — as this session sees it after
    /// the reload and, when a `standby` is named, as its WAL sender shows it
    /// (`pg_stat_replication.sync_state = 'sync'`: it now releases committing backends)?
    pub async fn sync_setting_in_effect(
        &mut self,
        names: &str,
        standby: Option<&str>,
    ) -> Result<bool, DbError> {
        let who = standby.unwrap_or("");
        let rows = self
            .query(
                "SELECT current_setting('synchronous_standby_names'),
                        COALESCE((SELECT bool_or(sync_state = 'sync') FROM pg_stat_replication
                                  WHERE application_name = $1), false)",
                &[&who],
            )
            .await?;
        let r = rows
            .first()
            .ok_or_else(|| DbError::Query("synchronous_standby_names: no row".into()))?;
        let get = |e: tokio_postgres::Error| DbError::Query(format!("sync setting: {e}"));
        let current: String = r.try_get(0).map_err(get)?;
        let sync: bool = r.try_get(1).map_err(get)?;
        Ok(current == names && (standby.is_none() || sync))
    }

    pub async fn replication(&mut self) -> Result<Vec<ReplStat>, DbError> {
        let rows = self
            .query(
                "SELECT application_name, COALESCE(state, ''), COALESCE(sync_state, ''),
                        COALESCE(pg_wal_lsn_diff(flush_lsn, '0/0')::int8, 0),
                        COALESCE(pg_wal_lsn_diff(replay_lsn, '0/0')::int8, 0)
                 FROM pg_stat_replication",
                &[],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let get =
                |e: tokio_postgres::Error| DbError::Query(format!("pg_stat_replication: {e}"));
            out.push(ReplStat {
                name: r.try_get(0).map_err(get)?,
                state: r.try_get(1).map_err(get)?,
                sync_state: r.try_get(2).map_err(get)?,
                flush_lsn: r.try_get::<_, i64>(3).map_err(get)?.max(0) as u64,
                replay_lsn: r.try_get::<_, i64>(4).map_err(get)?.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Make sure a physical slot exists for each of `names` (recreated when its WAL was lost).
    pub async fn ensure_slots(&mut self, names: &[String]) -> Result<(), DbError> {
        let rows = self
            .query("SELECT slot_name::text, COALESCE(wal_status, '') FROM pg_replication_slots WHERE slot_type = 'physical'", &[])
            .await?;
        let existing: Vec<(String, String)> = rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.try_get::<_, String>(0).ok()?,
                    r.try_get::<_, String>(1).ok()?,
                ))
            })
            .collect();
        for n in names {
            match existing.iter().find(|(s, _)| s == n) {
                Some((_, st)) if st == "lost" => {
                    tracing::warn!(slot = %n, "replication slot lost its WAL (node down too long): recreating it; that node must re-clone");
                    let _ = self
                        .query("SELECT pg_drop_replication_slot($1)", &[n])
                        .await;
                    self.query("SELECT pg_create_physical_replication_slot($1, true)", &[n])
                        .await?;
                }
                Some(_) => {}
                None => {
                    self.query("SELECT pg_create_physical_replication_slot($1, true)", &[n])
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Ask PostgreSQL to promote (without waiting): `false` if it refused.
    pub async fn request_promotion(&mut self) -> Result<bool, DbError> {
        let rows = self.query("SELECT pg_promote(false)", &[]).await?;
        Ok(rows
            .first()
            .and_then(|r| r.try_get::<_, bool>(0).ok())
            .unwrap_or(false))
    }

    pub async fn in_recovery(&mut self) -> Result<bool, DbError> {
        let rows = self.query("SELECT pg_is_in_recovery()", &[]).await?;
        rows.first()
            .and_then(|r| r.try_get::<_, bool>(0).ok())
            .ok_or_else(|| DbError::Other("pg_is_in_recovery() returned nothing".into()))
    }

    /// The settings whose new value waits for a restart, by name.
    pub async fn pending_restart(&mut self) -> Result<Vec<String>, DbError> {
        let rows = self
            .query(
                "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name",
                &[],
            )
            .await?;
        Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
    }

    pub async fn reload(&mut self) -> Result<(), DbError> {
        self.query("SELECT pg_reload_conf()", &[]).await.map(|_| ())
    }

    /// Statements sent as one simple query (no parameters).
    pub async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        let t = self.timeout;
        let r = {
            let c = self.client().await?;
            tokio::time::timeout(t, c.batch_execute(sql)).await
        };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if e.is_closed() {
                    self.reset();
                }
                Err(DbError::Query(db_error_text(&e)))
            }
            Err(_) => {
                self.reset();
                Err(DbError::Query(format!("query timed out after {t:?}")))
            }
        }
    }

    pub async fn ensure_replication_user(&mut self, password: &str) -> Result<(), DbError> {
        let rows = self
            .query(
                "SELECT 1 FROM pg_roles WHERE rolname = $1",
                &[&REPLICATION_USER],
            )
            .await?;
        let pw = password.replace('\'', "''");
        let sql = if rows.is_empty() {
            format!("CREATE ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{pw}'")
        } else {
            format!("ALTER ROLE {REPLICATION_USER} WITH REPLICATION LOGIN PASSWORD '{pw}'")
        };
        self.query(&sql, &[]).await.map(|_| ())
    }
}

fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}
