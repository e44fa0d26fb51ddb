//! The built-in alert rules, sized from the topology (pure).

use std::time::Duration;

use rampart_alert::{Aggregate, Cmp, Reduce, Rule, Selector, Severity};
use rampart_topology::Topology;

/// Synthetic series the monitor writes itself from the db cluster view.
pub const SYNC_STANDBYS: &str = "rampart_cluster_db_sync_standbys";
/// The lb's gauge of the seconds left before each served certificate expires.
pub const TLS_EXPIRES_IN: &str = "rampart_tls_certificate_expires_in_seconds";
/// A certificate closer to its end than this raises `TlsCertificateExpiring`.
const TLS_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// A statement slower than this per call, on average over 5 minutes, raises `SlowStatements`.
const SLOW_STATEMENT: Duration = Duration::from_secs(1);

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

        // A statement whose executions in the last 5 minutes took over a second each on
        // average (the agents' top statements from pg_stat_statements): the recent mean,
        // so only statements run in the window count, and one fixed since stops firing.
        let mut r = Rule::last(
            "SlowStatements",
            Selector::name("rampart_db_statement_total_seconds"),
            Cmp::Gt,
            SLOW_STATEMENT.as_secs_f64(),
        );
        r.over = Some(Selector::name("rampart_db_statement_calls_total"));
        r.reduce = Reduce::Rate;
        r.window_ms = ms(Duration::from_secs(300).max(interval * 5));
        r.by = vec!["instance".into(), "queryid".into()];
        r.aggregate = Aggregate::Sum;
        r.for_ms = ms(Duration::from_secs(120).max(interval * 3));
        r.summary = "db node {{instance}}: statement {{queryid}} took {{value}} s per call over the last 5 minutes (over 1 s; its text: rampart_db_statement_mean_seconds)".into();
        out.push(r);
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

    // A certificate a balancer serves expires within 14 days (the lb's own gauge, computed
    // at each scrape): time to renew it before clients refuse the site.
    let mut r = Rule::last(
        "TlsCertificateExpiring",
        Selector::name(TLS_EXPIRES_IN),
        Cmp::Lt,
        TLS_EXPIRY_WARNING.as_secs_f64(),
    );
    r.by = vec!["instance".into(), "listener".into(), "cert".into()];
    r.aggregate = Aggregate::Min;
    r.for_ms = ms(interval * 2);
    r.summary = "lb node {{instance}}: the certificate {{cert}} of listener {{listener}} expires in {{value}} s (under 14 days)".into();
    out.push(r);

    host_rules(interval, &mut out);

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

/// Every role's host figures (`rampart_host_*`, `rampart_process_*`): a data directory's
/// filesystem nearly full, or filling so that it is full within a day at the last hour's
/// pace; the machine short of memory; a process near its descriptor limit.
fn host_rules(interval: Duration, out: &mut Vec<Rule>) {
    let fs_by = || vec!["instance".to_string(), "path".to_string()];
    let mut r = Rule::last(
        "DiskSpaceLow",
        Selector::name("rampart_host_filesystem_avail_bytes"),
        Cmp::Lt,
        0.10,
    );
    r.over = Some(Selector::name("rampart_host_filesystem_size_bytes"));
    r.by = fs_by();
    r.for_ms = ms(Duration::from_secs(60).max(interval * 3));
    r.severity = Severity::Critical;
    r.summary =
        "{{instance}}: the filesystem of {{path}} has {{value}} of its space left (under 10%)"
            .into();
    out.push(r);

    let mut r = Rule::last(
        "DiskFullWithinADay",
        Selector::name("rampart_host_filesystem_avail_bytes"),
        Cmp::Lt,
        0.0,
    );
    r.reduce = Reduce::PredictDay;
    r.window_ms = ms(Duration::from_secs(3600).max(interval * 10));
    r.by = fs_by();
    // An hour, as node-exporter's NodeFilesystemSpaceFillingUp: a burst of writes (a build,
    // a base backup, a fresh monitor with minutes of history) extrapolated over a day must
    // not page anyone; a disk that keeps filling at that pace for an hour does.
    r.for_ms = ms(Duration::from_secs(3600).max(interval * 3));
    // ... and only a disk already under 40% free, as node-exporter's rule: a roomy disk
    // written fast for an hour (a restore, a bulk load) has days before it matters.
    let mut low = Rule::last(
        "DiskFullWithinADay",
        Selector::name("rampart_host_filesystem_avail_bytes"),
        Cmp::Lt,
        0.40,
    );
    low.over = Some(Selector::name("rampart_host_filesystem_size_bytes"));
    low.by = fs_by();
    r.and = Some(Box::new(low));
    r.summary =
        "{{instance}}: the filesystem of {{path}}, under 40% free, fills within a day at the last hour's pace"
            .into();
    out.push(r);

    let mut r = Rule::last(
        "MemoryLow",
        Selector::name("rampart_host_memory_available_bytes"),
        Cmp::Lt,
        0.10,
    );
    r.over = Some(Selector::name("rampart_host_memory_total_bytes"));
    r.for_ms = ms(Duration::from_secs(120).max(interval * 3));
    r.summary = "{{instance}}: {{value}} of the machine's memory is available (under 10%)".into();
    out.push(r);

    let mut r = Rule::last(
        "FileDescriptorsNearLimit",
        Selector::name("rampart_process_open_fds"),
        Cmp::Gt,
        0.90,
    );
    r.over = Some(Selector::name("rampart_process_max_fds"));
    r.by = vec!["job".into(), "instance".into()];
    r.for_ms = ms(Duration::from_secs(60).max(interval * 3));
    r.summary = "{{job}} node {{instance}} uses {{value}} of its open-file limit".into();
    out.push(r);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_topology::default::{render, DefaultOptions};
    use rampart_topology::Source;

    fn default_with(extra: &str) -> Topology {
        let dir = std::env::temp_dir().join(format!("rampart-rules-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("site")).unwrap();
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: &dir.join("data"),
            port_base: 8000,
        }) + extra;
        Topology::from_source(&Source::new(dir.join("t.toml"), text)).unwrap()
    }

    #[test]
    fn built_in_rules_follow_the_topology_and_custom_ones_replace_them_by_name() {
        let t = default_with("");
        let rs = rules(&t, Duration::from_secs(2));
        let names: Vec<&str> = rs.iter().map(|r| r.name.as_str()).collect();
        for n in [
            "NodeDown",
            "EtcdMemberDown",
            "NoDbPrimary",
            "ReplicationLagHigh",
            "NoSyncStandby",
            "SlowStatements",
            "WebNotReady",
            "Lb5xxRatioHigh",
            "TlsCertificateExpiring",
            "DiskSpaceLow",
            "DiskFullWithinADay",
            "MemoryLow",
            "FileDescriptorsNearLimit",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        let lag = rs.iter().find(|r| r.name == "ReplicationLagHigh").unwrap();
        assert_eq!(lag.threshold, 16.0 * 1024.0 * 1024.0, "[db] max_lag = 16MB");
        let down = rs.iter().find(|r| r.name == "NodeDown").unwrap();
        assert_eq!(down.for_ms, 4000, "two scrapes");

        let t = default_with(
            "\n[[monitor.rules]]\nname = \"NodeDown\"\nseries = \"up\"\nop = \"==\"\nthreshold = 0\nfor = \"1m\"\n\n[[monitor.rules]]\nname = \"Mine\"\nseries = \"x\"\nop = \">\"\nthreshold = 1\n",
        );
        let rs = rules(&t, Duration::from_secs(2));
        assert_eq!(rs.iter().filter(|r| r.name == "NodeDown").count(), 1);
        assert_eq!(
            rs.iter().find(|r| r.name == "NodeDown").unwrap().for_ms,
            60_000
        );
        assert!(rs.iter().any(|r| r.name == "Mine"));
    }

    /// What a Prometheus server evaluates for each built-in rule (`rampart monitor export
    /// prometheus`): the same series, reductions, groups and thresholds.
    #[test]
    fn every_built_in_rule_has_its_promql() {
        let t = default_with("");
        let rs = rules(&t, Duration::from_secs(2));
        let ratio = |m: &str| {
            format!(
                "((sum by (instance) (rate({m}{{class=\"5xx\",kind!=\"Admin\"}}[1m]))) or (sum by (instance) (rate({m}{{kind!=\"Admin\"}}[1m]))) * 0) / ((sum by (instance) (rate({m}{{kind!=\"Admin\"}}[1m]))) != 0) > 0.05"
            )
        };
        let want: Vec<(&str, String, &str)> = vec![
            (
                "NodeDown",
                "max by (job, instance) (up{job!=\"etcd\"}) == 0".into(),
                "4s",
            ),
            (
                "EtcdMemberDown",
                "max by (instance) (up{job=\"etcd\"}) == 0".into(),
                "4s",
            ),
            (
                "EtcdNoLeader",
                "max by (instance) (etcd_server_has_leader) == 0".into(),
                "4s",
            ),
            (
                "NoDbPrimary",
                "(sum (rampart_db_leader) or vector(0)) < 1".into(),
                "6s",
            ),
            (
                "ReplicationLagHigh",
                "max by (instance) (rampart_db_replication_lag_bytes) > 16777216".into(),
                "30s",
            ),
            (
                "NoSyncStandby",
                format!("(sum ({SYNC_STANDBYS}) or vector(0)) < 1"),
                "9s",
            ),
            (
                "SlowStatements",
                "((sum by (instance, queryid) (rate(rampart_db_statement_total_seconds[5m]))) or (sum by (instance, queryid) (rate(rampart_db_statement_calls_total[5m]))) * 0) / ((sum by (instance, queryid) (rate(rampart_db_statement_calls_total[5m]))) != 0) > 1".into(),
                "2m",
            ),
            (
                "WebNotReady",
                "max by (instance) (rampart_web_ready) == 0".into(),
                "6s",
            ),
            (
                "Lb5xxRatioHigh",
                ratio("rampart_listener_requests_total"),
                "30s",
            ),
            (
                "Web5xxRatioHigh",
                ratio("rampart_web_requests_total"),
                "30s",
            ),
            (
                "TlsCertificateExpiring",
                format!("min by (instance, listener, cert) ({TLS_EXPIRES_IN}) < 1209600"),
                "4s",
            ),
            (
                "DiskSpaceLow",
                "((max by (instance, path) (rampart_host_filesystem_avail_bytes)) or (max by (instance, path) (rampart_host_filesystem_size_bytes)) * 0) / ((max by (instance, path) (rampart_host_filesystem_size_bytes)) != 0) < 0.1".into(),
                "1m",
            ),
            (
                "DiskFullWithinADay",
                "(max by (instance, path) (predict_linear(rampart_host_filesystem_avail_bytes[1h], 86400)) < 0) and (((max by (instance, path) (rampart_host_filesystem_avail_bytes)) or (max by (instance, path) (rampart_host_filesystem_size_bytes)) * 0) / ((max by (instance, path) (rampart_host_filesystem_size_bytes)) != 0) < 0.4)".into(),
                "1h",
            ),
            (
                "MemoryLow",
                "((max by (instance) (rampart_host_memory_available_bytes)) or (max by (instance) (rampart_host_memory_total_bytes)) * 0) / ((max by (instance) (rampart_host_memory_total_bytes)) != 0) < 0.1".into(),
                "2m",
            ),
            (
                "FileDescriptorsNearLimit",
                "((max by (job, instance) (rampart_process_open_fds)) or (max by (job, instance) (rampart_process_max_fds)) * 0) / ((max by (job, instance) (rampart_process_max_fds)) != 0) > 0.9".into(),
                "1m",
            ),
        ];
        let got: Vec<(&str, String, String)> = rs
            .iter()
            .map(|r| (r.name.as_str(), r.promql(), r.promql_for()))
            .collect();
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for ((name, expr, for_), g) in want.iter().zip(&got) {
            assert_eq!(
                (*name, expr.as_str(), *for_),
                (g.0, g.1.as_str(), g.2.as_str())
            );
        }
        let down = rs.iter().find(|r| r.name == "NodeDown").unwrap();
        assert_eq!(
            down.promql_summary(),
            "{{ $labels.job }} node {{ $labels.instance }} does not answer"
        );
    }

    #[test]
    fn an_expiring_certificate_fires_one_alert_per_certificate() {
        use rampart_alert::store::labels;
        use rampart_alert::{AlertState, Engine, SeriesKey, Store};
        let t = default_with("");
        let rs: Vec<Rule> = rules(&t, Duration::from_secs(2))
            .into_iter()
            .filter(|r| r.name == "TlsCertificateExpiring")
            .collect();
        let mut e = Engine::new(rs, 60_000, 60_000);
        let mut st = Store::new(100, 100);
        let soon = labels([("instance", "lb1"), ("listener", "site"), ("cert", "a.pem")]);
        let later = labels([("instance", "lb1"), ("listener", "site"), ("cert", "b.pem")]);
        let (ks, kl) = (
            SeriesKey::new(TLS_EXPIRES_IN, soon.clone()),
            SeriesKey::new(TLS_EXPIRES_IN, later.clone()),
        );
        for (i, now) in [0u64, 2000, 4000, 6000].into_iter().enumerate() {
            st.push(&ks, now, 3.0 * 86_400.0 - i as f64 * 2.0);
            st.push(&kl, now, 60.0 * 86_400.0);
            e.evaluate(&st, now);
        }
        assert_eq!(e.state("TlsCertificateExpiring", &soon), AlertState::Firing);
        assert_eq!(
            e.state("TlsCertificateExpiring", &later),
            AlertState::Inactive
        );
    }

    #[test]
    fn a_statement_slow_over_the_last_minutes_fires_and_resolves_once_no_longer_run() {
        use rampart_alert::store::labels;
        use rampart_alert::{AlertState, Engine, SeriesKey, Store};
        let t = default_with("");
        let rs: Vec<Rule> = rules(&t, Duration::from_secs(2))
            .into_iter()
            .filter(|r| r.name == "SlowStatements")
            .collect();
        let mut e = Engine::new(rs, 60_000, 600_000);
        let mut st = Store::new(1000, 100);
        let of = |q: &str| labels([("job", "db"), ("instance", "db1"), ("queryid", q)]);
        let group = |q: &str| labels([("instance", "db1"), ("queryid", q)]);
        // Every 2 s for 400 s: "1" runs once a scrape taking 2 s (slow); "2" ten times a
        // scrape taking 0.1 s in all (fast); "3" runs once a scrape taking 3 s for the first
        // minute, then no more (a statement fixed or its caller gone).
        let (mut c3, mut s3) = (0.0, 0.0);
        for i in 0..200u64 {
            let now = i * 2000;
            let f = i as f64;
            if i < 30 {
                (c3, s3) = (f, 3.0 * f);
            }
            for (q, calls, secs) in [("1", f, 2.0 * f), ("2", 10.0 * f, 0.1 * f), ("3", c3, s3)] {
                st.push(
                    &SeriesKey::new("rampart_db_statement_calls_total", of(q)),
                    now,
                    calls,
                );
                st.push(
                    &SeriesKey::new("rampart_db_statement_total_seconds", of(q)),
                    now,
                    secs,
                );
            }
            e.evaluate(&st, now);
            if i == 50 {
                // Slow for 100 s: pending, not yet the 2 minutes.
                assert_eq!(e.state("SlowStatements", &group("1")), AlertState::Pending);
            }
            if i == 150 {
                // "3"'s slow minute is still within the last 5 minutes.
                assert_eq!(e.state("SlowStatements", &group("3")), AlertState::Firing);
            }
        }
        assert_eq!(e.state("SlowStatements", &group("1")), AlertState::Firing);
        assert_eq!(e.state("SlowStatements", &group("2")), AlertState::Inactive);
        assert_ne!(e.state("SlowStatements", &group("3")), AlertState::Firing);
    }

    #[test]
    fn a_filling_disk_fires_before_it_is_full_and_a_full_one_fires_too() {
        use rampart_alert::store::labels;
        use rampart_alert::{AlertState, Engine, SeriesKey, Store};
        let t = default_with("");
        let rs: Vec<Rule> = rules(&t, Duration::from_secs(2))
            .into_iter()
            .filter(|r| r.name.starts_with("Disk") || r.name == "MemoryLow")
            .collect();
        let mut e = Engine::new(rs, 60_000, 600_000);
        let mut st = Store::new(10_000, 100);
        let steady = labels([("instance", "db1"), ("path", "/var/lib/a")]);
        let filling = labels([("instance", "db2"), ("path", "/var/lib/b")]);
        let roomy = labels([("instance", "db3"), ("path", "/var/lib/c")]);
        let avail = "rampart_host_filesystem_avail_bytes";
        let size = "rampart_host_filesystem_size_bytes";
        let gib = 1024.0 * 1024.0 * 1024.0;
        // Two hours of scrapes every 10 s, disks of 100 GiB: db1 steady at half free; db2
        // with 39 GiB free losing 1 GiB every 3 minutes (full in under 2 hours, above 10%
        // for 1.5); db3 filling as fast from 90 GiB free (full within a day at that pace,
        // but above 40% free all along).
        let mut now = 0;
        for i in 0..760u64 {
            now = i * 10_000;
            for (l, v) in [
                (&steady, 50.0 * gib),
                (&filling, 39.0 * gib - i as f64 / 18.0 * gib),
                (&roomy, 90.0 * gib - i as f64 / 18.0 * gib),
            ] {
                st.push(&SeriesKey::new(avail, l.clone()), now, v.max(0.0));
                st.push(&SeriesKey::new(size, l.clone()), now, 100.0 * gib);
            }
            e.evaluate(&st, now);
            if i == 300 {
                // 50 minutes at that pace: pending, not yet an hour.
                assert_eq!(e.state("DiskFullWithinADay", &filling), AlertState::Pending);
            }
            if i == 380 {
                // 18 GiB left: not low yet, but full within the day at this pace for an hour.
                assert_eq!(e.state("DiskSpaceLow", &filling), AlertState::Inactive);
                assert_eq!(e.state("DiskFullWithinADay", &filling), AlertState::Firing);
                assert_eq!(e.state("DiskFullWithinADay", &steady), AlertState::Inactive);
            }
            // Filling as fast, but with more than 40% free: nothing to say yet.
            assert_eq!(
                e.state("DiskFullWithinADay", &roomy),
                AlertState::Inactive,
                "{i}"
            );
        }
        let _ = now;
        // Empty by the end: under 10% left.
        assert_eq!(e.state("DiskSpaceLow", &filling), AlertState::Firing);
        assert_eq!(e.state("DiskSpaceLow", &steady), AlertState::Inactive);
    }
}
