//! Patroni's REST API health checks, as a pure function of what the node knows.
//!
//! HAProxy configurations written for Patroni (`option httpchk OPTIONS /primary`,
//! `http-check expect status 200`) work unchanged against a rampart db agent: the same
//! paths, the same status codes, the same query parameters (`lag`, `replication_state`,
//! `tag_*`) and the same JSON body shape for `GET`. The rules follow `patroni/api.py`
//! (`do_GET`, `_readiness`, `do_GET_liveness`); where rampart is stricter it says so:
//!
//! - `/primary` (`/`, `/master`, `/read-write`) is 200 only while PostgreSQL runs as a
//!   primary *and* the local lease deadline has not passed (Patroni: while it holds the
//!   leader lock); `/leader` is 200 while this node holds the leader key under a valid
//!   lease (also during its promotion);
//! - a malformed `lag` is a 400, not "no bound"; `lag` also takes seconds (`10s`, `500ms`),
//!   compared with the replay delay.
//!
//! No I/O, no clock: `now` is an argument.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// The local PostgreSQL as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum PgView {
    /// Not running (or no data).
    Stopped,
    /// Started by the agent, not answering queries yet.
    Starting,
    Running(Running),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    /// Not in recovery.
    pub primary: bool,
    pub timeline: u32,
    /// Primary: current WAL position. Replica: last replayed position.
    pub lsn: u64,
    /// Replica: last received position.
    pub receive_lsn: u64,
    /// Replica: the WAL receiver streams.
    pub streaming: bool,
    /// Replica: seconds since the last replayed transaction, 0 when caught up.
    pub replay_delay_seconds: f64,
    /// `server_version_num`, e.g. 150014.
    pub server_version: i64,
    /// `pg_postmaster_start_time()` as text.
    pub postmaster_start_time: String,
}

/// Everything one health check looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub scope: String,
    /// This node holds the leader key under a lease valid (locally) until then.
    pub leader_until: Option<Instant>,
    /// PostgreSQL runs as the writable primary of the key holder until then (the local
    /// demotion deadline).
    pub writable_until: Option<Instant>,
    pub pg: PgView,
    /// Named in `/sync` as the synchronous standby.
    pub sync_standby: bool,
    /// The leader's last known WAL position (its posted LSN).
    pub leader_lsn: Option<u64>,
    /// The cluster keys could be read in the last loop.
    pub dcs_ok: bool,
    /// Nobody holds the leader key.
    pub cluster_unlocked: bool,
    pub paused: bool,
    pub nofailover: bool,
    /// Patroni-style tags, as text.
    pub tags: Vec<(String, String)>,
    /// When the HA loop last finished a turn.
    pub heartbeat: Instant,
    pub ttl: Duration,
    /// `[db] max_lag`: readiness's default bound.
    pub max_lag_bytes: u64,
    /// Unix seconds of the last successful etcd read.
    pub dcs_last_seen: Option<u64>,
}

/// A lag bound: `16MB`, `1kB`, `1024` (bytes), or `10s`, `500ms` (replay delay).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LagBound {
    Bytes(u64),
    Seconds(f64),
}

/// Parse a lag bound as Patroni does (`parse_int(value, 'B')`: an integer or decimal and
/// a PostgreSQL memory unit, `B`, `kB`, `MB`, `GB`, `TB`, with optional blanks), plus
/// seconds (`s`, `ms`). `None`: not understood.
pub fn parse_lag(v: &str) -> Option<LagBound> {
    let t = v.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite() && *x >= 0.0)?;
    let bytes = |mult: f64| {
        let b = (n * mult).round();
        (b <= u64::MAX as f64).then_some(LagBound::Bytes(b as u64))
    };
    match unit.trim() {
        "" | "B" => bytes(1.0),
        "kB" | "KB" => bytes(1024.0),
        "MB" => bytes(1024.0 * 1024.0),
        "GB" => bytes(1024.0 * 1024.0 * 1024.0),
        "TB" => bytes(1024.0 * 1024.0 * 1024.0 * 1024.0),
        "ms" => Some(LagBound::Seconds(n / 1000.0)),
        "s" => Some(LagBound::Seconds(n)),
        _ => None,
    }
}

/// A request the API cannot honour (a malformed query parameter): 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuery(pub String);

fn query<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn lag_bound(q: &[(String, String)]) -> Result<Option<LagBound>, BadQuery> {
    match query(q, "lag") {
        None => Ok(None),
        Some(v) => parse_lag(v).map(Some).ok_or_else(|| {
            BadQuery(format!(
                "bad lag bound {v:?}: use e.g. ?lag=16MB, ?lag=1048576 or ?lag=10s"
            ))
        }),
    }
}

impl NodeView {
    fn running(&self) -> Option<&Running> {
        match &self.pg {
            PgView::Running(r) => Some(r),
            _ => None,
        }
    }

    fn state(&self) -> &'static str {
        match self.pg {
            PgView::Running(_) => "running",
            PgView::Starting => "starting",
            PgView::Stopped => "stopped",
        }
    }

    fn is_leader(&self, now: Instant) -> bool {
        self.leader_until.is_some_and(|t| now < t)
    }

    fn is_writable_primary(&self, now: Instant) -> bool {
        self.writable_until.is_some_and(|t| now < t) && self.running().is_some_and(|r| r.primary)
    }

    fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn noloadbalance(&self) -> bool {
        self.tag("noloadbalance")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// `replication_state` as Patroni reports it: `streaming` on a streaming replica.
    fn replication_state(&self) -> Option<&'static str> {
        self.running()
            .filter(|r| !r.primary && r.streaming)
            .map(|_| "streaming")
    }

    /// The newest WAL position the cluster is known to have (Patroni: the leader's last
    /// LSN or what the WAL receiver last heard of, whichever is further).
    fn leader_optime(&self) -> u64 {
        let received = self.running().map(|r| r.receive_lsn).unwrap_or(0);
        self.leader_lsn.unwrap_or(0).max(received)
    }

    /// Patroni's `tags`: the node's tags plus `nofailover` when set.
    fn effective_tags(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (k, v) in &self.tags {
            m.insert(k.clone(), tag_value(v));
        }
        if self.nofailover {
            m.insert("nofailover".into(), Value::Bool(true));
        }
        m
    }
}

/// A tag as Patroni shows it: booleans and integers as JSON values, the rest as text.
pub fn tag_value(v: &str) -> Value {
    match v {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        s => s
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(s.to_string())),
    }
}

/// The body of a `GET` health check (Patroni's `get_postgresql_status` plus
/// `_write_status_response`).
pub fn status_body(v: &NodeView) -> Value {
    let mut b = Map::new();
    b.insert("state".into(), v.state().into());
    if let Some(r) = v.running() {
        b.insert(
            "postmaster_start_time".into(),
            r.postmaster_start_time.clone().into(),
        );
        b.insert(
            "role".into(),
            if r.primary { "primary" } else { "replica" }.into(),
        );
        b.insert("server_version".into(), r.server_version.into());
        b.insert(
            "xlog".into(),
            if r.primary {
                json!({ "location": r.lsn })
            } else {
                json!({
                    "received_location": r.receive_lsn.max(r.lsn),
                    "replayed_location": r.lsn,
                    "replayed_timestamp": Value::Null,
                    "paused": false,
                })
            },
        );
        if !r.primary && v.sync_standby {
            b.insert("sync_standby".into(), true.into());
        }
        b.insert("timeline".into(), r.timeline.into());
        if let Some(s) = v.replication_state() {
            b.insert("replication_state".into(), s.into());
        }
    } else {
        b.insert("role".into(), "unknown".into());
    }
    if let Some(t) = v.dcs_last_seen {
        b.insert("dcs_last_seen".into(), t.into());
    }
    if v.cluster_unlocked {
        b.insert("cluster_unlocked".into(), true.into());
    }
    if v.paused {
        b.insert("pause".into(), true.into());
    }
    let tags = v.effective_tags();
    if !tags.is_empty() {
        b.insert("tags".into(), Value::Object(tags));
    }
    b.insert(
        "patroni".into(),
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "scope": v.scope,
            "name": v.name,
        }),
    );
    Value::Object(b)
}

/// The status code of a health check on `path` (Patroni's `do_GET`; every path that is
/// not an endpoint of its own lands here, `/` meaning `/primary`).
pub fn health_status(
    path: &str,
    q: &[(String, String)],
    v: &NodeView,
    now: Instant,
) -> Result<u16, BadQuery> {
    let path = if path == "/" { "/primary" } else { path };
    let lag = lag_bound(q)?;
    let running = v.running();
    let is_lagging = match (lag, running) {
        (Some(LagBound::Bytes(max)), Some(r)) => {
            let optime = v.leader_optime();
            optime > 0 && optime > r.lsn.saturating_add(max)
        }
        (Some(LagBound::Seconds(max)), Some(r)) => r.replay_delay_seconds > max,
        _ => false,
    };
    let matches_replication_state = match query(q, "replication_state") {
        Some(want) => v.replication_state() == Some(want),
        None => true,
    };
    let replica_ok = !v.noloadbalance()
        && !is_lagging
        && running.is_some_and(|r| !r.primary)
        && matches_replication_state;
    let replica_code = if replica_ok { 200 } else { 503 };

    // etcd unreachable in maintenance mode: the role PostgreSQL has decides (as Patroni).
    let (leader_code, primary_code) = if !v.dcs_ok && v.paused {
        let p = if running.is_some_and(|r| r.primary) {
            200
        } else {
            503
        };
        (p, p)
    } else {
        (
            if v.is_leader(now) { 200 } else { 503 },
            if v.is_writable_primary(now) { 200 } else { 503 },
        )
    };
    // rampart has no standby clusters: no node is ever a standby leader.
    let standby_leader_code = 503;

    let mut ignore_tags = false;
    let code = if path.contains("standby_leader") || path.contains("standby-leader") {
        ignore_tags = true;
        standby_leader_code
    } else if path.contains("leader") {
        ignore_tags = true;
        leader_code
    } else if path.contains("master") || path.contains("primary") || path.contains("read-write") {
        ignore_tags = true;
        primary_code
    } else if path.contains("replica") {
        replica_code
    } else if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        if primary_code == 200 {
            200
        } else {
            replica_code
        }
    } else if path.contains("health") {
        if running.is_some() {
            200
        } else {
            503
        }
    } else if v.dcs_ok {
        let sync = v.sync_standby;
        match path {
            "/sync" | "/synchronous" if sync => replica_code,
            "/async" | "/asynchronous" if !sync => replica_code,
            "/read-only-sync" | "/read-only-synchronous" => {
                if primary_code == 200 {
                    200
                } else if sync {
                    replica_code
                } else {
                    503
                }
            }
            _ => 503,
        }
    } else {
        503
    };
    if ignore_tags || code != 200 {
        return Ok(code);
    }
    for (k, want) in q {
        let Some(name) = k.strip_prefix("tag_") else {
            continue;
        };
        match v.tag(name) {
            Some(have) if have == want => {}
            // Not set on this node, or another value.
            _ => return Ok(503),
        }
    }
    Ok(code)
}

/// `GET /liveness`: 200 while the HA loop turns (within a ttl on a primary, two on a
/// replica), or in maintenance mode.
pub fn liveness_status(v: &NodeView, now: Instant) -> u16 {
    let primary = v.running().is_some_and(|r| r.primary);
    let threshold = v.ttl * if primary { 1 } else { 2 };
    if v.paused || now.saturating_duration_since(v.heartbeat) < threshold {
        200
    } else {
        503
    }
}

/// `GET /readiness`: 200 on the leader, or on a streaming replica whose replay (or, with
/// `?mode=write`, receipt) is within `lag` (default `[db] max_lag`) of the leader.
pub fn readiness_status(
    q: &[(String, String)],
    v: &NodeView,
    now: Instant,
) -> Result<u16, BadQuery> {
    let lag = lag_bound(q)?;
    if v.is_leader(now) {
        return Ok(200);
    }
    let Some(r) = v.running() else {
        return Ok(503);
    };
    if v.replication_state() != Some("streaming") {
        return Ok(503);
    }
    if !v.dcs_ok && r.receive_lsn == 0 {
        return Ok(503);
    }
    let location = if query(q, "mode") == Some("write") {
        r.receive_lsn.max(r.lsn)
    } else {
        r.lsn
    };
    let behind = v.leader_optime().saturating_sub(location);
    let ok = match lag.unwrap_or(LagBound::Bytes(v.max_lag_bytes)) {
        LagBound::Bytes(max) => behind <= max,
        LagBound::Seconds(max) => r.replay_delay_seconds <= max,
    };
    Ok(if ok { 200 } else { 503 })
}

/// `GET /history`: Patroni's `[[timeline, lsn, reason], ...]`, one line per timeline
/// switch, from the history file of the node's timeline (`parentTLI<TAB>LSN<TAB>reason`).
pub fn history_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let tli: u32 = f.next()?.trim().parse().ok()?;
            let lsn = crate::pg::parse_lsn(f.next()?)?;
            let reason = f.next().unwrap_or("").trim().to_string();
            Some(json!([tli, lsn, reason]))
        })
        .collect()
}

/// Patroni's `/history` lines, `[timeline, lsn, reason, timestamp, new_leader]`: the
/// history file's lines (`[parent timeline, lsn, reason]`) with, when `/history` recorded
/// the change onto the timeline that followed, its time (RFC 3339) and new leader.
/// `current` is the node's timeline (the one after the last line).
pub fn history_with_leaders(
    lines: &[Value],
    current: u32,
    recorded: &[crate::dcs::HistoryEntry],
) -> Vec<Value> {
    let parents: Vec<Option<u64>> = lines.iter().map(|l| l[0].as_u64()).collect();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            // The timeline this switch led to: the next line's parent, else ours.
            let next = parents
                .get(i + 1)
                .copied()
                .flatten()
                .unwrap_or(u64::from(current));
            let mut l = l.clone();
            if let (Some(arr), Some(e)) = (
                l.as_array_mut(),
                recorded.iter().find(|e| u64::from(e.timeline) == next),
            ) {
                arr.push(json!(rfc3339_ms(e.at_ms)));
                arr.push(json!(e.leader));
            }
            l
        })
        .collect()
}

/// `2026-12-07T16:09:14.123+00:00` (Patroni's timestamps carry an offset).
fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn history_lines_get_the_recorded_time_and_leader_of_the_timeline_they_led_to() {
        let lines = vec![
            json!([1, 100, "no recovery target specified"]),
            json!([3, 900, "x"]),
        ];
        let rec = vec![
            crate::dcs::HistoryEntry {
                timeline: 3,
                leader: "db2".into(),
                at_ms: 1_795_000_000_123,
            },
            crate::dcs::HistoryEntry {
                timeline: 4,
                leader: "db1".into(),
                at_ms: 951_782_400_000,
            },
        ];
        // Timeline 1 led to 3 (2 was consumed by a promotion that did not last), 3 to 4.
        let h = history_with_leaders(&lines, 4, &rec);
        assert_eq!(
            h[0],
            json!([
                1,
                100,
                "no recovery target specified",
                "2026-11-18T11:06:40.123+00:00",
                "db2"
            ])
        );
        assert_eq!(
            h[1],
            json!([3, 900, "x", "2000-02-29T00:00:00.000+00:00", "db1"])
        );
        // Nothing recorded: the lines as they were.
        assert_eq!(history_with_leaders(&lines, 4, &[]), lines);
    }

    fn running(primary: bool) -> Running {
        Running {
            primary,
            timeline: 2,
            lsn: 1000,
            receive_lsn: 1000,
            streaming: !primary,
            replay_delay_seconds: 0.0,
            server_version: 150014,
            postmaster_start_time: "2026-12-05 00:00:00+00".into(),
        }
    }

    fn node(pg: PgView, now: Instant) -> NodeView {
        NodeView {
            name: "db1".into(),
            scope: "main".into(),
            leader_until: None,
            writable_until: None,
            pg,
            sync_standby: false,
            leader_lsn: Some(1000),
            dcs_ok: true,
            cluster_unlocked: false,
            paused: false,
            nofailover: false,
            tags: vec![],
            heartbeat: now,
            ttl: Duration::from_secs(3),
            max_lag_bytes: 16 << 20,
            dcs_last_seen: Some(1_800_000_000),
        }
    }

    fn primary(now: Instant) -> NodeView {
        let mut v = node(PgView::Running(running(true)), now);
        v.leader_until = Some(now + Duration::from_secs(2));
        v.writable_until = Some(now + Duration::from_secs(2));
        v
    }

    fn code(path: &str, q: &[(&str, &str)], v: &NodeView, now: Instant) -> u16 {
        let q: Vec<(String, String)> = q
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        health_status(path, &q, v, now).unwrap()
    }

    const ALL: [&str; 13] = [
        "/",
        "/primary",
        "/master",
        "/read-write",
        "/leader",
        "/standby-leader",
        "/replica",
        "/read-only",
        "/sync",
        "/async",
        "/health",
        "/read-only-sync",
        "/nonsense",
    ];

    fn codes(v: &NodeView, now: Instant) -> Vec<(&'static str, u16)> {
        ALL.iter().map(|p| (*p, code(p, &[], v, now))).collect()
    }

    #[test]
    fn a_writable_leader_answers_like_a_patroni_primary() {
        let now = Instant::now();
        let got = codes(&primary(now), now);
        let want = vec![
            ("/", 200),
            ("/primary", 200),
            ("/master", 200),
            ("/read-write", 200),
            ("/leader", 200),
            ("/standby-leader", 503),
            ("/replica", 503),
            ("/read-only", 200),
            ("/sync", 503),
            ("/async", 503),
            ("/health", 200),
            ("/read-only-sync", 200),
            ("/nonsense", 503),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn the_primary_turns_503_at_its_local_deadline_even_if_the_loop_is_late() {
        let now = Instant::now();
        let v = primary(now);
        let later = now + Duration::from_secs(3);
        assert_eq!(code("/primary", &[], &v, later), 503);
        assert_eq!(code("/leader", &[], &v, later), 503);
        assert_eq!(code("/read-only", &[], &v, later), 503);
        assert_eq!(code("/health", &[], &v, later), 200);
    }

    #[test]
    fn a_promoting_key_holder_is_leader_but_not_yet_primary() {
        let now = Instant::now();
        let mut v = node(PgView::Running(running(false)), now);
        v.leader_until = Some(now + Duration::from_secs(2));
        assert_eq!(code("/leader", &[], &v, now), 200);
        assert_eq!(code("/primary", &[], &v, now), 503);
    }

    #[test]
    fn a_primary_without_the_key_is_not_primary() {
        let now = Instant::now();
        let v = node(PgView::Running(running(true)), now);
        assert_eq!(code("/primary", &[], &v, now), 503);
        assert_eq!(code("/replica", &[], &v, now), 503);
        assert_eq!(code("/health", &[], &v, now), 200);
    }

    #[test]
    fn replicas_sync_and_async() {
        let now = Instant::now();
        let mut v = node(PgView::Running(running(false)), now);
        let got = codes(&v, now);
        assert!(got.contains(&("/replica", 200)), "{got:?}");
        assert!(got.contains(&("/read-only", 200)), "{got:?}");
        assert!(got.contains(&("/async", 200)), "{got:?}");
        assert!(got.contains(&("/sync", 503)), "{got:?}");
        assert!(got.contains(&("/read-only-sync", 503)), "{got:?}");
        assert!(got.contains(&("/primary", 503)), "{got:?}");
        v.sync_standby = true;
        assert_eq!(code("/sync", &[], &v, now), 200);
        assert_eq!(code("/synchronous", &[], &v, now), 200);
        assert_eq!(code("/async", &[], &v, now), 503);
        assert_eq!(code("/read-only-sync", &[], &v, now), 200);
        // Without etcd nobody can tell who is synchronous.
        v.dcs_ok = false;
        assert_eq!(code("/sync", &[], &v, now), 503);
        assert_eq!(code("/replica", &[], &v, now), 200);
    }

    #[test]
    fn replica_lag_bounds_in_bytes_and_seconds() {
        let now = Instant::now();
        let mut r = running(false);
        r.lsn = 1000;
        r.receive_lsn = 1000;
        r.replay_delay_seconds = 4.0;
        let mut v = node(PgView::Running(r), now);
        v.leader_lsn = Some(1000 + 2048);
        assert_eq!(code("/replica", &[("lag", "1kB")], &v, now), 503);
        assert_eq!(code("/replica", &[("lag", "2kB")], &v, now), 200);
        assert_eq!(code("/replica", &[("lag", "2047")], &v, now), 503);
        assert_eq!(code("/replica", &[("lag", "10MB")], &v, now), 200);
        assert_eq!(code("/async", &[("lag", "1kB")], &v, now), 503);
        assert_eq!(code("/replica", &[("lag", "3s")], &v, now), 503);
        assert_eq!(code("/replica", &[("lag", "5s")], &v, now), 200);
        // Received but not yet replayed counts as lag too.
        v.leader_lsn = None;
        if let PgView::Running(r) = &mut v.pg {
            r.receive_lsn = 1000 + 4096;
        }
        assert_eq!(code("/replica", &[("lag", "2kB")], &v, now), 503);
        let q = vec![("lag".to_string(), "lots".to_string())];
        assert!(health_status("/replica", &q, &v, now).is_err());
    }

    #[test]
    fn replication_state_must_match_when_asked() {
        let now = Instant::now();
        let mut r = running(false);
        let v = node(PgView::Running(r.clone()), now);
        let q = [("replication_state", "streaming")];
        assert_eq!(code("/replica", &q, &v, now), 200);
        r.streaming = false;
        let v = node(PgView::Running(r), now);
        assert_eq!(code("/replica", &q, &v, now), 503);
        // Patroni serves a running replica that does not stream.
        assert_eq!(code("/replica", &[], &v, now), 200);
    }

    #[test]
    fn tags_filter_replicas_but_not_the_leader() {
        let now = Instant::now();
        let mut v = node(PgView::Running(running(false)), now);
        v.tags = vec![("dc".into(), "east".into()), ("prio".into(), "5".into())];
        assert_eq!(code("/replica", &[("tag_dc", "east")], &v, now), 200);
        assert_eq!(
            code(
                "/replica",
                &[("tag_dc", "east"), ("tag_prio", "5")],
                &v,
                now
            ),
            200
        );
        assert_eq!(code("/replica", &[("tag_dc", "west")], &v, now), 503);
        assert_eq!(code("/replica", &[("tag_rack", "1")], &v, now), 503);
        assert_eq!(code("/read-only", &[("tag_dc", "west")], &v, now), 503);
        let mut p = primary(now);
        p.tags = v.tags.clone();
        assert_eq!(code("/primary", &[("tag_dc", "west")], &p, now), 200);
        // noloadbalance keeps a replica out of the read pool.
        v.tags.push(("noloadbalance".into(), "true".into()));
        assert_eq!(code("/replica", &[], &v, now), 503);
        assert_eq!(code("/health", &[], &v, now), 200);
    }

    #[test]
    fn stopped_and_starting_nodes_are_nothing_but_unhealthy() {
        let now = Instant::now();
        for pg in [PgView::Stopped, PgView::Starting] {
            let v = node(pg, now);
            assert!(codes(&v, now).iter().all(|(_, c)| *c == 503));
        }
    }

    #[test]
    fn without_etcd_in_maintenance_mode_the_postgres_role_decides() {
        let now = Instant::now();
        let mut v = node(PgView::Running(running(true)), now);
        v.dcs_ok = false;
        v.paused = true;
        assert_eq!(code("/primary", &[], &v, now), 200);
        assert_eq!(code("/leader", &[], &v, now), 200);
        v.paused = false;
        assert_eq!(code("/primary", &[], &v, now), 503);
    }

    #[test]
    fn liveness_follows_the_loop() {
        let now = Instant::now();
        let v = primary(now);
        assert_eq!(liveness_status(&v, now + Duration::from_secs(2)), 200);
        assert_eq!(liveness_status(&v, now + Duration::from_secs(4)), 503);
        let mut r = node(PgView::Running(running(false)), now);
        assert_eq!(liveness_status(&r, now + Duration::from_secs(4)), 200);
        assert_eq!(liveness_status(&r, now + Duration::from_secs(7)), 503);
        r.paused = true;
        assert_eq!(liveness_status(&r, now + Duration::from_secs(70)), 200);
    }

    #[test]
    fn readiness() {
        let now = Instant::now();
        let none: Vec<(String, String)> = vec![];
        assert_eq!(readiness_status(&none, &primary(now), now), Ok(200));
        let mut r = running(false);
        r.lsn = 1000;
        r.receive_lsn = 3000;
        let mut v = node(PgView::Running(r), now);
        v.leader_lsn = Some(3000);
        assert_eq!(readiness_status(&none, &v, now), Ok(200));
        let q = |a: &str, b: &str| vec![(a.to_string(), b.to_string())];
        assert_eq!(readiness_status(&q("lag", "1kB"), &v, now), Ok(503));
        let mut both = q("lag", "1kB");
        both.push(("mode".into(), "write".into()));
        assert_eq!(readiness_status(&both, &v, now), Ok(200));
        if let PgView::Running(r) = &mut v.pg {
            r.streaming = false;
        }
        assert_eq!(readiness_status(&none, &v, now), Ok(503));
        assert_eq!(
            readiness_status(&none, &node(PgView::Stopped, now), now),
            Ok(503)
        );
    }

    #[test]
    fn lag_parses_like_patroni() {
        assert_eq!(parse_lag("16MB"), Some(LagBound::Bytes(16 << 20)));
        assert_eq!(parse_lag("10MB"), Some(LagBound::Bytes(10 << 20)));
        assert_eq!(parse_lag("1kB"), Some(LagBound::Bytes(1024)));
        assert_eq!(parse_lag(" 1 GB "), Some(LagBound::Bytes(1 << 30)));
        assert_eq!(parse_lag("1.5kB"), Some(LagBound::Bytes(1536)));
        assert_eq!(parse_lag("1024"), Some(LagBound::Bytes(1024)));
        assert_eq!(parse_lag("2TB"), Some(LagBound::Bytes(2 << 40)));
        assert_eq!(parse_lag("10s"), Some(LagBound::Seconds(10.0)));
        assert_eq!(parse_lag("250ms"), Some(LagBound::Seconds(0.25)));
        for bad in ["lots", "", "-1", "1PB", "1.2.3MB", "MB"] {
            assert_eq!(parse_lag(bad), None, "{bad}");
        }
    }

    #[test]
    fn body_has_patronis_shape() {
        let now = Instant::now();
        let b = status_body(&primary(now));
        assert_eq!(b["state"], "running");
        assert_eq!(b["role"], "primary");
        assert_eq!(b["xlog"]["location"], 1000);
        assert_eq!(b["timeline"], 2);
        assert_eq!(b["server_version"], 150014);
        assert_eq!(b["patroni"]["scope"], "main");
        assert_eq!(b["patroni"]["name"], "db1");
        let mut v = node(PgView::Running(running(false)), now);
        v.sync_standby = true;
        v.nofailover = true;
        v.tags = vec![("dc".into(), "east".into())];
        let b = status_body(&v);
        assert_eq!(b["role"], "replica");
        assert_eq!(b["xlog"]["replayed_location"], 1000);
        assert_eq!(b["replication_state"], "streaming");
        assert_eq!(b["sync_standby"], true);
        assert_eq!(b["tags"]["nofailover"], true);
        assert_eq!(b["tags"]["dc"], "east");
        let b = status_body(&node(PgView::Stopped, now));
        assert_eq!(b["state"], "stopped");
    }

    #[test]
    fn history_lines_parse() {
        let text = "1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";
        let l = history_lines(text);
        assert_eq!(l.len(), 2);
        assert_eq!(
            l[0],
            json!([1, 0x3000060u64, "no recovery target specified"])
        );
        assert_eq!(l[1][0], 2);
    }
}
