//! The built-in alert rules, sized from the topology (pure).

use std::time::Duration;

use rampart_alert::{Aggregate, Cmp, Reduce, Rule, Selector, Severity};
use rampart_topology::Topology;

/// Synthetic series the monitor writes itself from the db cluster view.
pub const SYNC_STANDBYS: &str = "rampart_cluster_db_sync_standbys";

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The default rules, then the topology's own (a rule with a built-in's name replaces it).
pub fn rules(t: &Topology, interval: Duration) -> Vec<Rule> {
    let down_for = ms(interval * 2);
    let mut out = Vec::new();

    let mut r = Rule::last("NodeDown", Selector::name("up"), Cmp::Eq, 0.0);
    r.series.matchers.push(rampart_alert::Matcher {
        label: "job".into(),
        equal: false,
        value: "etcd".into(),
    });
    r.by = vec!["job".into(), "instance".into()];
    r.for_ms = down_for;
    r.severity = Severity::Critical;
    r.summary = "{{job}} node {{instance}} does not answer".into();
    out.push(r);

    let mut r = Rule::last(
        "EtcdMemberDown",
        Selector::name("up").with("job", "etcd"),
        Cmp::Eq,
        0.0,
    );
    r.for_ms = down_for;
    r.severity = Severity::Critical;
    r.summary =
        "etcd member {{instance}} does not answer: one more loss and etcd has no quorum".into();
    out.push(r);

    let mut r = Rule::last(
        "EtcdNoLeader",
        Selector::name("etcd_server_has_leader"),
        Cmp::Eq,
        0.0,
    );
    r.for_ms = down_for;
    r.severity = Severity::Critical;
    r.summary = "etcd member {{instance}} sees no leader".into();
    out.push(r);

    if let Some(db) = &t.db {
        let mut r = Rule::last(
            "NoDbPrimary",
            Selector::name("rampart_db_leader"),
            Cmp::Lt,
            1.0,
        );
        r.by = vec![];
        r.aggregate = Aggregate::Sum;
        // A failover takes about one lease; alert when it takes longer than two.
        r.for_ms = ms((db.ttl * 2).max(interval * 3));
        r.severity = Severity::Critical;
        r.summary = "no database node is the writable primary: writes fail".into();
        out.push(r);

        let mut r = Rule::last(
            "ReplicationLagHigh",
            Selector::name("rampart_db_replication_lag_bytes"),
            Cmp::Gt,
            db.max_lag_bytes as f64,
        );
        r.for_ms = ms(Duration::from_secs(30).max(interval * 3));
        r.summary = format!(
            "replica {{{{instance}}}} is {{{{value}}}} bytes behind (max_lag {} bytes: it cannot be promoted)",
            db.max_lag_bytes
        );
        out.push(r);

        if db.synchronous {
            let mut r = Rule::last("NoSyncStandby", Selector::name(SYNC_STANDBYS), Cmp::Lt, 1.0);
            r.by = vec![];
            r.aggregate = Aggregate::Sum;
            r.for_ms = ms((db.ttl * 3).max(interval * 3));
            r.summary = "synchronous mode has no sync standby: a failover now could lose acknowledged writes or stall"
                .into();
            out.push(r);
        }
    }

    let mut r = Rule::last(
        "WebNotReady",
        Selector::name("rampart_web_ready"),
        Cmp::Eq,
        0.0,
    );
    r.for_ms = ms(interval * 3);
    r.summary =
        "web node {{instance}} answers but is not ready (/readyz 503: draining or no database)"
            .into();
    out.push(r);

    for (name, metric, job) in [
        ("Lb5xxRatioHigh", "rampart_listener_requests_total", "lb"),
        ("Web5xxRatioHigh", "rampart_web_requests_total", "web"),
    ] {
        let mut r = Rule::last(
            name,
            Selector::name(metric).with("class", "5xx"),
            Cmp::Gt,
            0.05,
        );
        let mut all = Selector::name(metric);
        all.matchers.push(rampart_alert::Matcher {
            label: "kind".into(),
            equal: false,
            value: "Admin".into(),
        });
        r.series.matchers.push(all.matchers[0].clone());
        r.over = Some(all);
        r.reduce = Reduce::Rate;
        r.window_ms = ms(Duration::from_secs(60).max(interval * 5));
        r.aggregate = Aggregate::Sum;
        r.for_ms = ms(Duration::from_secs(30).max(interval * 3));
        r.summary =
            format!("{job} node {{{{instance}}}}: {{{{value}}}} of responses are 5xx (over 5%)");
        out.push(r);
    }

    if let Some(m) = &t.monitor {
        for custom in &m.rules {
            match out.iter_mut().find(|r| r.name == custom.name) {
                Some(r) => *r = custom.clone(),
                None => out.push(custom.clone()),
            }
        }
    }
    out
}
