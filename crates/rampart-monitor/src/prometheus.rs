//! The monitor as Prometheus users expect it (pure): `rampart monitor export prometheus`
//! writes
//!
//! - `prometheus.yml`: a scrape configuration with one job per role (`etcd`, `db`, `web`,
//!   `lb`, `monitor`), every node's metrics address a target labelled `node`, `role`,
//!   `cluster` (and `instance` = the node's name, as the monitor labels it, so the rules
//!   and their summaries read the same); a target that needs a bearer token names the
//!   file holding it (`credentials_file`), never the token. An lb node whose token file
//!   differs from its peers' gets its own scrape job, still labelled `job="lb"`;
//! - `rules.yml`: the monitor's rules (built-in, sized from the topology, and
//!   `[monitor]` ones) as a Prometheus rules file: the expression is
//!   [`rampart_alert::Rule::promql`], same names, severity as a label, summary as an
//!   annotation;
//! - `grafana-rampart.json`: the Grafana dashboard shipped in `docs/grafana/rampart.json`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rampart_alert::promql::duration;
use rampart_alert::Rule;
use rampart_topology::Topology;

use crate::targets::{self, Mode};

/// The Grafana dashboard (request rate, 5xx and latency per balancer and pool, server
/// health, replication lag, db roles, alerts), for a Prometheus data source.
pub const GRAFANA_DASHBOARD: &str = include_str!("../../../docs/grafana/rampart.json");

/// The names of the files [`export`] returns.
pub const CONFIG_FILE: &str = "prometheus.yml";
pub const RULES_FILE: &str = "rules.yml";
pub const DASHBOARD_FILE: &str = "grafana-rampart.json";
/// Where the scrape configuration expects the monitor's token when `[monitor] token_env`
/// guards it (beside `prometheus.yml`; the operator writes it).
pub const MONITOR_TOKEN_FILE: &str = "monitor.token";

/// An lb node's admin endpoint given outside the topology (what `rampart up` gives nodes
/// without one), with the file its token is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbAdminFile {
    pub node: String,
    pub address: SocketAddr,
    pub token_file: Option<PathBuf>,
}

/// What `export` writes: file name and content, and notes for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub files: Vec<(&'static str, String)>,
    pub notes: Vec<String>,
}

/// One scrape target of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scrape {
    role: String,
    node: String,
    addr: SocketAddr,
    path: String,
    token_file: Option<String>,
}

/// Every file of the export for this topology.
pub fn export(t: &Topology, lb_admins: &[LbAdminFile]) -> Export {
    let interval = t
        .monitor
        .as_ref()
        .map_or(Duration::from_secs(2), |m| m.scrape_interval);
    let (config, notes) = scrape_config(t, lb_admins, interval);
    Export {
        files: vec![
            (CONFIG_FILE, config),
            (
                RULES_FILE,
                rules_file(&crate::rules::rules(t, interval), interval),
            ),
            (DASHBOARD_FILE, GRAFANA_DASHBOARD.to_string()),
        ],
        notes,
    }
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn scrapes(t: &Topology, lb_admins: &[LbAdminFile], notes: &mut Vec<String>) -> Vec<Scrape> {
    let mut out = Vec::new();
    for tg in targets::targets(t) {
        let mut s = Scrape {
            role: tg.job.clone(),
            node: tg.instance.clone(),
            addr: tg.addr,
            path: tg.path.clone(),
            token_file: None,
        };
        if tg.job == "lb" {
            let topo = t.lb.as_ref().and_then(|l| l.node(&tg.instance));
            if let Some(a) = lb_admins.iter().find(|a| a.node == tg.instance) {
                s.addr = a.address;
                s.path = "/metrics".into();
                s.token_file = a.token_file.as_ref().map(|f| f.display().to_string());
            } else if tg.mode == Mode::Probe {
                notes.push(format!(
                    "lb node {} has no admin listener, so no /metrics to scrape: give it `admin = \"IP:PORT\"` in [[lb.nodes]] (or export while `rampart up` runs the stack)",
                    tg.instance
                ));
                continue;
            } else if let Some(f) = topo.and_then(|n| n.admin_token_file.as_ref()) {
                s.token_file = Some(f.display().to_string());
            }
        }
        out.push(s);
    }
    if let Some(m) = &t.monitor {
        out.push(Scrape {
            role: "monitor".into(),
            node: m.name.clone(),
            addr: m.listen,
            path: "/metrics".into(),
            token_file: m.token_env.as_ref().map(|_| MONITOR_TOKEN_FILE.to_string()),
        });
        if let Some(var) = &m.token_env {
            notes.push(format!(
                "the monitor's /metrics needs its token: write the value of {var} to {MONITOR_TOKEN_FILE} beside {CONFIG_FILE} (readable by Prometheus only)"
            ));
        }
        if !m.allow.is_empty() {
            notes.push(format!(
                "the monitor answers only [monitor] allow ({}): the Prometheus host must be among them",
                m.allow
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out
}

/// `prometheus.yml` and the notes about what it could not cover.
pub fn scrape_config(
    t: &Topology,
    lb_admins: &[LbAdminFile],
    interval: Duration,
) -> (String, Vec<String>) {
    let mut notes = Vec::new();
    let scrapes = scrapes(t, lb_admins, &mut notes);
    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    // As the monitor: 80% of the interval, between 200 ms and 10 s.
    let timeout = (ms * 4 / 5).clamp(200, 10_000).min(ms);
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Prometheus scrape configuration of the rampart cluster {:?}, written by\n\
         # `rampart monitor export prometheus`. One job per role; every target is labelled\n\
         # with its node, role and cluster (instance = the node's name). Tokens are read\n\
         # from the files named here, never written in this file.",
        t.cluster
    );
    let _ = writeln!(
        y,
        "global:\n  scrape_interval: {}\n  scrape_timeout: {}\n  evaluation_interval: {}\n  external_labels:\n    cluster: {}",
        duration(ms),
        duration(timeout),
        duration(ms),
        q(&t.cluster)
    );
    let _ = writeln!(y, "rule_files:\n  - {}", q(RULES_FILE));
    let _ = writeln!(y, "scrape_configs:");
    // Jobs: per role, then per token file within a role.
    let mut jobs: Vec<(String, Option<String>)> = Vec::new();
    for s in &scrapes {
        let key = (s.role.clone(), s.token_file.clone());
        if !jobs.contains(&key) {
            jobs.push(key);
        }
    }
    for (role, token) in &jobs {
        let members: Vec<&Scrape> = scrapes
            .iter()
            .filter(|s| &s.role == role && &s.token_file == token)
            .collect();
        let shared = jobs.iter().filter(|(r, _)| r == role).count() > 1;
        let job_name = if shared {
            format!("{role}-{}", members[0].node)
        } else {
            role.clone()
        };
        let _ = writeln!(y, "  - job_name: {}", q(&job_name));
        let path = &members[0].path;
        let _ = writeln!(y, "    metrics_path: {}", q(path));
        // rampart's own labels win over the target's (`rampart_db_role{role="primary"}`
        // is the database role, not the node's role): no metric of rampart's carries
        // job, instance, node or cluster.
        let _ = writeln!(y, "    honor_labels: true");
        if let Some(f) = token {
            let _ = writeln!(
                y,
                "    authorization:\n      type: Bearer\n      credentials_file: {}",
                q(f)
            );
        }
        let _ = writeln!(y, "    static_configs:");
        for s in members {
            let _ = writeln!(
                y,
                "      - targets: [{}]\n        labels:\n          job: {}\n          instance: {}\n          node: {}\n          role: {}\n          cluster: {}",
                q(&s.addr.to_string()),
                q(role),
                q(&s.node),
                q(&s.node),
                q(role),
                q(&t.cluster)
            );
        }
    }
    for n in &notes {
        let _ = writeln!(y, "# NOTE: {n}");
    }
    (y, notes)
}

/// The rules as a Prometheus rules file, one group evaluated every `interval`.
pub fn rules_file(rules: &[Rule], interval: Duration) -> String {
    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# The alert rules of `rampart monitor` as Prometheus rules, written by\n\
         # `rampart monitor export prometheus` (same names; severity as a label, summary as\n\
         # an annotation)."
    );
    let _ = writeln!(
        y,
        "groups:\n  - name: \"rampart\"\n    interval: {}\n    rules:",
        duration(ms)
    );
    for r in rules {
        let _ = writeln!(
            y,
            "      - alert: {}\n        expr: {}\n        for: {}\n        labels:\n          severity: {}\n        annotations:\n          summary: {}",
            q(&r.name),
            q(&r.promql()),
            r.promql_for(),
            q(r.severity.as_str()),
            q(&r.promql_summary())
        );
    }
    y
}

/// The metric names a PromQL expression reads (not functions, aggregations, keywords,
/// label names, strings, durations or Grafana variables).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 10] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
    ];
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                i += 1;
                while i < b.len() && b[i] != close {
                    if b[i] == b'"' {
                        i += 1;
                        while i < b.len() && b[i] != b'"' {
                            i += if b[i] == b'\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                i += 1;
                while i < b.len() && (ident(b[i]) || b[i] == b'{' || b[i] == b'}') {
                    i += 1;
                }
            }
            c if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start();
                if KEYWORDS.contains(&word) {
                    // `by (a, b)`, `on (x)`: a list of label names follows.
                    if next.starts_with('(') {
                        i = expr.len() - next.len();
                        while i < b.len() && b[i] != b')' {
                            i += 1;
                        }
                    }
                } else if next.starts_with('(')
                    || AGGREGATIONS.contains(&word)
                    || ["offset", "Inf", "NaN", "inf", "nan"].contains(&word)
                {
                    // A function or aggregation (`sum by (x) (...)`).
                } else {
                    out.insert(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_topology::default::{render, DefaultOptions};
    use rampart_topology::Source;
    use serde_json::Value;

    fn default_topology() -> Topology {
        let dir = std::env::temp_dir().join(format!("rampart-prom-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("site")).unwrap();
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: &dir.join("data"),
            port_base: 8000,
        });
        Topology::from_source(&Source::new(dir.join("t.toml"), text)).unwrap()
    }

    #[test]
    fn metric_names_skip_functions_labels_keywords_and_variables() {
        let e = r#"histogram_quantile(0.95, sum by (instance, le) (rate(rampart_listener_response_seconds_bucket{cluster="$cluster",x=~"a{b}"}[$__rate_interval]))) / on (pool) group_left (x) (up or vector(0)) > bool 1e6 unless ALERTS offset 5m"#;
        let names: Vec<String> = metric_names(e).into_iter().collect();
        assert_eq!(
            names,
            ["ALERTS", "rampart_listener_response_seconds_bucket", "up"]
        );
    }

    #[test]
    fn the_default_stack_is_one_job_per_role_and_every_rule_is_in_the_rules_file() {
        let t = default_topology();
        let e = export(&t, &[]);
        let config = &e.files[0].1;
        for job in ["etcd", "db", "web", "lb", "monitor"] {
            assert!(
                config.contains(&format!("  - job_name: \"{job}\"\n")),
                "{job}: {config}"
            );
        }
        assert!(config.contains("targets: [\"127.0.0.1:8101\"]\n        labels:\n          job: \"web\"\n          instance: \"web1\"\n          node: \"web1\"\n          role: \"web\"\n          cluster: \"main\""), "{config}");
        assert!(
            config.contains("targets: [\"127.0.0.1:8191\"]"),
            "lb1's admin: {config}"
        );
        assert!(!config.contains("authorization"), "{config}");
        assert_eq!(config.matches("- targets:").count(), 3 + 3 + 3 + 2 + 1);
        let rules = &e.files[1].1;
        for r in crate::rules::rules(&t, Duration::from_secs(1)) {
            assert!(
                rules.contains(&format!("- alert: \"{}\"", r.name)),
                "{}",
                r.name
            );
        }
        assert!(rules.contains("        expr: \"max by (job, instance) (up{job!=\\\"etcd\\\"}) == 0\"\n        for: 2s\n        labels:\n          severity: \"critical\"\n        annotations:\n          summary: \"{{ $labels.job }} node {{ $labels.instance }} does not answer\""), "{rules}");
    }

    #[test]
    fn tokens_are_file_references_and_an_lb_without_admin_is_a_note() {
        let t = default_topology();
        let admins = [
            LbAdminFile {
                node: "lb1".into(),
                address: "127.0.0.1:9001".parse().unwrap(),
                token_file: Some("/var/lib/rampart/lb1.admin-token".into()),
            },
            LbAdminFile {
                node: "lb2".into(),
                address: "127.0.0.1:9002".parse().unwrap(),
                token_file: Some("/var/lib/rampart/lb2.admin-token".into()),
            },
        ];
        let (config, notes) = scrape_config(&t, &admins, Duration::from_secs(1));
        assert!(
            notes.iter().any(|n| n.contains("[monitor] allow")),
            "{notes:?}"
        );
        for n in ["lb1", "lb2"] {
            assert!(config.contains(&format!("  - job_name: \"lb-{n}\"\n    metrics_path: \"/metrics\"\n    honor_labels: true\n    authorization:\n      type: Bearer\n      credentials_file: \"/var/lib/rampart/{n}.admin-token\"")), "{config}");
        }
        assert_eq!(config.matches("job: \"lb\"").count(), 2);

        let dir = std::env::temp_dir().join(format!("rampart-prom2-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("site")).unwrap();
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: &dir.join("data"),
            port_base: 8000,
        })
        .replace("admin = \"127.0.0.1:8192\"\n", "")
        .replace(
            "allow = [\"127.0.0.1/32\"]\n",
            "allow = [\"127.0.0.1/32\"]\ntoken_env = \"MON_TOKEN\"\n",
        );
        let t = Topology::from_source(&Source::new(dir.join("t.toml"), text)).unwrap();
        let (config, notes) = scrape_config(&t, &[], Duration::from_secs(1));
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("lb node lb2 has no admin")),
            "{notes:?}"
        );
        assert!(notes.iter().any(|n| n.contains("MON_TOKEN")), "{notes:?}");
        assert!(
            config.contains("credentials_file: \"monitor.token\""),
            "{config}"
        );
        assert_eq!(config.matches("job: \"lb\"").count(), 1);
    }

    #[test]
    fn the_grafana_dashboard_is_json_whose_panels_all_query_prometheus() {
        let d: Value = serde_json::from_str(GRAFANA_DASHBOARD).unwrap();
        let exprs = dashboard_exprs(&d);
        assert!(exprs.len() >= 12, "{exprs:?}");
        let titles: Vec<&str> = d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["title"].as_str())
            .collect();
        for want in [
            "Requests per balancer",
            "5xx ratio per balancer",
            "Latency per balancer",
            "Requests per pool",
            "5xx per pool",
            "Latency per pool",
            "Servers up",
            "Replication lag",
            "Database roles",
            "Firing alerts",
        ] {
            assert!(titles.contains(&want), "{want} missing: {titles:?}");
        }
        for e in &exprs {
            assert!(!metric_names(e).is_empty(), "{e} reads no metric");
        }
    }

    /// Every PromQL expression of the dashboard's panels.
    pub(crate) fn dashboard_exprs(d: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
        }
        out
    }
}
