//! The monitor's memory for the default stack over a simulated week (issue 14): the real
//! record path (`Monitor::record_round`: parse, store, prune, rules, diagram) fed what the
//! default stack's nodes answer, with simulated time.
//!
//! The answers are the `/metrics` of a default stack under `rampart up`
//! (`tests/data/default-stack/`: etcd kept to the families the monitor keeps, the db
//! primary, a web server, a balancer), replayed for every target of the default
//! topology with their counters growing; each db node adds its 10 top statements
//! (`rampart_db_statement_*`, 30 series with `query` labels of 100 characters), all
//! replaced by new ones every hour. Those are the series a week renews (nothing else in
//! the default stack puts a changing value in a label): they show that series no longer
//! seen leave the store after `retention`.
//!
//! Two runs of the same default topology:
//! - a week at one round every 5 minutes, keeping 30 minutes (6 samples a series): the
//!   series held never pass the steady ones plus two hours' statements, and nothing grows
//!   after the first 90 minutes (every kind of series has come and gone by then);
//! - 31 minutes at the default `scrape_interval = "1s"` keeping the default 30 minutes
//!   (1,800 samples a series, every ring full): the store's bytes per series.
//!
//! The default stack's figure for a week is the week's most series times the full run's
//! bytes per series. `cargo test -p rampart-monitor --lib week -- --nocapture` prints
//! them (bench/results/monitor-week-*.md).

use std::fmt::Write as _;
use std::time::Duration;

use rampart_topology::default::{render, DefaultOptions};
use rampart_topology::{Source, Topology};

use crate::{client, Monitor};

const HOUR_MS: u64 = 3_600_000;
const WEEK_MS: u64 = 7 * 24 * HOUR_MS;
/// Statements each db node shows (`rampart_db::metrics::TOP_STATEMENTS`).
const STATEMENTS: u64 = 10;
/// Samples per series at the default `scrape_interval = "1s"` and `retention = "30m"`.
const DEFAULT_PER_SERIES: usize = 1800;
/// The bound asserted on the store of the default stack over a week.
const BOUND_BYTES: usize = 40 << 20;

/// A target's answer: the captured body of its job.
fn captured(job: &str) -> &'static str {
    match job {
        "etcd" => include_str!("../tests/data/default-stack/etcd.prom"),
        "db" => include_str!("../tests/data/default-stack/db.prom"),
        "web" => include_str!("../tests/data/default-stack/web.prom"),
        "lb" => include_str!("../tests/data/default-stack/lb.prom"),
        other => panic!("no captured /metrics for job {other}: add one"),
    }
}

/// `instance`'s answer at `round` (time `now`): the captured body with every counter
/// (`*_total`, but the 5xx ones: a healthy stack) grown by `round`; on db nodes the one
/// primary of the capture moved to db1, and the node's top statements of the hour.
fn answer(job: &str, instance: &str, now: u64, round: u64) -> String {
    let body = captured(job);
    let mut out = String::with_capacity(body.len() + 8192);
    for line in body.lines() {
        if line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let value: f64 = value.parse().unwrap_or(0.0);
        let value = if name == "rampart_db_leader" {
            f64::from(u8::from(instance == "db1"))
        } else if name.ends_with("_total") && !series.contains("5xx") {
            value + round as f64
        } else {
            value
        };
        let _ = writeln!(out, "{series} {value}");
    }
    if job == "db" {
        statements(&mut out, instance, now, round);
    }
    out
}

/// What `rampart_db::statements::render_statements` writes for 10 statements, their
/// `queryid` (a 64-bit hash: 19 digits and a sign) new each hour.
fn statements(out: &mut String, instance: &str, now: u64, round: u64) {
    let hour = now / HOUR_MS;
    let node = instance.bytes().map(u64::from).sum::<u64>();
    let id = |j: u64| -i128::from(7_000_000_000_000_000_000 + (hour * 1000 + node) * 100 + j);
    out.push_str("# TYPE rampart_db_statement_mean_seconds gauge\n");
    for j in 0..STATEMENTS {
        // A normalized statement cut at 100 characters, as `query_label` leaves it.
        let mut query = format!(
            "SELECT a.id, a.v, b.w FROM items_{j} a JOIN other_{hour} b ON b.id = a.id WHERE a.k = $1 AND b.z > $2 ORDER BY a.id LIMIT $3"
        );
        query.truncate(100);
        let _ = writeln!(
            out,
            "rampart_db_statement_mean_seconds{{queryid=\"{}\",query=\"{query}…\"}} 0.002",
            id(j)
        );
    }
    out.push_str("# TYPE rampart_db_statement_calls_total counter\n");
    for j in 0..STATEMENTS {
        let _ = writeln!(
            out,
            "rampart_db_statement_calls_total{{queryid=\"{}\"}} {}",
            id(j),
            round * 10
        );
    }
    out.push_str("# TYPE rampart_db_statement_total_seconds gauge\n");
    for j in 0..STATEMENTS {
        let _ = writeln!(
            out,
            "rampart_db_statement_total_seconds{{queryid=\"{}\"}} {}",
            id(j),
            round as f64 * 0.02
        );
    }
}

/// The default topology (`rampart init`), scraping every `interval`, keeping 30 minutes.
fn default_topology(interval: Duration) -> (tempfile::TempDir, Topology) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("site")).expect("site dir");
    let text = render(&DefaultOptions {
        cluster: "main",
        data_dir: &dir.path().join("data"),
        port_base: 8000,
    });
    let default = "scrape_interval = \"1s\"";
    assert!(text.contains(default), "{text}");
    assert!(
        !text.contains("\nretention"),
        "the default keeps 30 minutes"
    );
    let text = text.replace(
        default,
        &format!(
            "scrape_interval = \"{}s\"\nretention = \"30m\"",
            interval.as_secs()
        ),
    );
    let t = Topology::from_source(&Source::new(dir.path().join("t.toml"), text))
        .expect("the default topology");
    (dir, t)
}

/// What a run saw.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Figures {
    rounds: u64,
    /// The most series, samples and estimated bytes the store held after a round.
    series: usize,
    samples: usize,
    bytes: usize,
    /// The same at the end.
    end_series: usize,
    end_samples: usize,
    end_bytes: usize,
}

/// Drives `rounds` rounds of every target of the default stack, one each `interval`,
/// checking after each that the store stays within `max_series`, that no alert fires
/// and nothing is dropped; `check(elapsed_ms, series, samples, bytes)` sees each round.
fn drive(
    interval: Duration,
    rounds: u64,
    max_series: impl Fn(&Monitor) -> usize,
    mut check: impl FnMut(u64, usize, usize, usize),
) -> (Monitor, Figures) {
    let (_dir, t) = default_topology(interval);
    let m = Monitor::new(&t, "monitor").expect("monitor");
    let jobs: Vec<(String, String)> = m
        .targets
        .iter()
        .map(|t| (t.job.clone(), t.instance.clone()))
        .collect();
    let bound = max_series(&m);
    let cluster = serde_json::json!({"members": [{"name": "db2", "sync_standby": true}]});
    let step = u64::try_from(interval.as_millis()).expect("interval");
    let start: u64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR_MS;
    let mut f = Figures::default();
    for round in 0..rounds {
        let now = start + round * step;
        let results: Vec<(usize, Result<client::Reply, String>, Duration)> = jobs
            .iter()
            .enumerate()
            .map(|(i, (job, instance))| {
                let reply = client::Reply {
                    status: 200,
                    body: answer(job, instance, now, round).into(),
                };
                (i, Ok(reply), Duration::from_millis(3))
            })
            .collect();
        let events = m.record_round(now, results, Some(cluster.clone()));
        assert!(
            events.is_empty(),
            "round {round}: no alert in a healthy stack: {events:?}"
        );
        let g = m.lock();
        let (series, samples, bytes) = (
            g.store.len(),
            g.store.samples_held(),
            g.store.approx_bytes(),
        );
        assert!(
            series <= bound,
            "round {round}: {series} series, over the bound of {bound}"
        );
        assert_eq!(g.store.dropped(), 0);
        assert!(g.events.len() <= crate::EVENTS_KEPT);
        assert_eq!(g.engine.alerts().count(), 0, "round {round}");
        drop(g);
        check(now - start, series, samples, bytes);
        f = Figures {
            rounds: round + 1,
            series: f.series.max(series),
            samples: f.samples.max(samples),
            bytes: f.bytes.max(bytes),
            end_series: series,
            end_samples: samples,
            end_bytes: bytes,
        };
    }
    (m, f)
}

/// Series of the default stack but the statements: every target's body, `up` and
/// `scrape_duration_seconds`, and the cluster's sync standbys.
fn steady_series(m: &Monitor) -> usize {
    m.targets
        .iter()
        .map(|t| {
            crate::expo::parse(&answer(&t.job, &t.instance, 0, 0))
                .samples
                .iter()
                .filter(|(k, _)| t.keeps(&k.name) && !k.name.starts_with("rampart_db_statement_"))
                .count()
                + 2
        })
        .sum::<usize>()
        + 1
}

/// Statement series of one hour, over the db nodes.
fn statement_series(m: &Monitor) -> usize {
    m.targets.iter().filter(|t| t.job == "db").count() * 3 * STATEMENTS as usize
}

#[test]
fn a_week_of_the_default_stack_stays_within_its_bound() {
    // (1) A week, one round every 5 minutes, 30 minutes kept: 6 samples a series.
    let step = Duration::from_secs(300);
    // The first hour and a half fills the store: the steady series, the first hour's
    // statements, and from the hour on the next hour's beside them until the retention
    // drops the first. From then on the store repeats each hour: its figures over the
    // second hour are the most it may ever hold.
    let mut second_hour = (0usize, 0usize, 0usize);
    let (week_monitor, week) = drive(
        step,
        WEEK_MS / 300_000,
        |m| steady_series(m) + 2 * statement_series(m),
        |elapsed, series, samples, bytes| {
            if (HOUR_MS..2 * HOUR_MS).contains(&elapsed) {
                second_hour = (
                    second_hour.0.max(series),
                    second_hour.1.max(samples),
                    second_hour.2.max(bytes),
                );
            } else if elapsed >= 2 * HOUR_MS {
                assert!(
                    series <= second_hour.0 && samples <= second_hour.1 && bytes <= second_hour.2,
                    "at {elapsed} ms: ({series}, {samples}, {bytes}) grew past the second hour's {second_hour:?}"
                );
            }
        },
    );
    assert_eq!(week.rounds, 7 * 24 * 12);
    let steady = steady_series(&week_monitor);
    let churn = statement_series(&week_monitor);
    assert_eq!(
        week_monitor.lock().store.per_series(),
        6,
        "30 minutes of 5-minute rounds"
    );
    assert!(
        week.series > steady + churn,
        "the previous hour's statements were still held for a while"
    );
    assert_eq!(
        week.end_series,
        steady + churn,
        "30 minutes into an hour, the last hour's statements are gone"
    );

    // (2) The default configuration: one round a second, 30 minutes kept, every ring full.
    let (full_monitor, full) = drive(
        Duration::from_secs(1),
        31 * 60,
        |m| steady_series(m) + statement_series(m),
        |_, _, _, _| {},
    );
    let per_series = full_monitor.lock().store.per_series();
    assert_eq!(per_series, DEFAULT_PER_SERIES);
    assert_eq!(full.end_series, steady + churn, "the same stack");
    assert_eq!(
        full.end_samples,
        full.end_series * DEFAULT_PER_SERIES,
        "every ring full"
    );
    let bytes_per_series = full.end_bytes / full.end_series;
    // A full ring takes its 1,800 samples' room and no more; keys and map nodes are
    // the rest.
    assert!(
        (DEFAULT_PER_SERIES * 16..DEFAULT_PER_SERIES * 16 + 2048).contains(&bytes_per_series),
        "{bytes_per_series} bytes per series"
    );
    let week_default = week.series * bytes_per_series;
    eprintln!(
        "default stack ({} targets): {steady} steady series + {churn} statement series an hour\n\
         week, 5-minute rounds, 30 min kept: {} rounds, at most {} series, {} samples, ~{} bytes; \
         at the end {} series\n\
         default 1 s rounds, 30 min kept, {} rounds: {} series, {} samples, ~{} bytes \
         ({bytes_per_series} bytes a series)\n\
         the default stack over a week: at most {} series x {bytes_per_series} bytes = \
         ~{week_default} bytes ({:.1} MiB; bound {} MiB)",
        full_monitor.targets.len(),
        week.rounds,
        week.series,
        week.samples,
        week.bytes,
        week.end_series,
        full.rounds,
        full.end_series,
        full.end_samples,
        full.end_bytes,
        week.series,
        week_default as f64 / 1_048_576.0,
        BOUND_BYTES >> 20,
    );
    assert!(week_default <= BOUND_BYTES, "{week_default} bytes");
}
