//! `[monitor]`: the monitoring node (dashboard, metrics scraping, alert routes).
//!
//! ```toml
//! [monitor]
//! name = "monitor"
//! listen = "127.0.0.1:9090"          # dashboard and /metrics
//! scrape_interval = "2s"
//! allow = ["127.0.0.1/32"]           # who may reach the dashboard (CIDRs)
//! token_env = "RAMPART_MONITOR_TOKEN" # optional: bearer token for the dashboard
//!
//! retention = "30m"                 # samples kept per series (in memory)
//!
//! [[monitor.alerts]]                 # where alerts go
//! name = "ops"
//! kind = "log"                       # "log", "webhook" or "alertmanager"
//! # url = "http://127.0.0.1:9099/hook" # webhook only: POST of a JSON body (plain HTTP)
//!
//! [[monitor.alerts]]                 # a Prometheus Alertmanager (its v2 API)
//! name = "am"
//! kind = "alertmanager"
//! url = "http://127.0.0.1:9093"      # POST /api/v2/alerts there
//! resend = "1m"                      # firing alerts are sent again this often (default 1m)
//!
//! [[monitor.rules]]                  # alert rules added to the built-in ones
//! name = "WebSlow"                   # a rule named like a built-in one replaces it
//! series = 'rampart_web_request_duration_seconds_sum{kind="App"}'
//! over = 'rampart_web_request_duration_seconds_count{kind="App"}'   # optional: a ratio
//! reduce = "rate"                    # last | rate | avg | max | min | predict-day (over `window`)
//! window = "1m"
//! by = ["instance"]                  # one alert per value of these labels ([] = one alert)
//! aggregate = "sum"                  # sum | max | min | count (within a group)
//! op = ">"                           # > >= < <= == !=
//! threshold = 0.5
//! for = "30s"                        # how long it must hold before it fires
//! severity = "warning"               # info | warning | critical
//! summary = "{{instance}}: app requests take {{value}} s on average"
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use rampart_alert::{Aggregate, Cmp, Reduce, Rule, Selector, Severity};

use crate::diag::{Diagnostic, Source};
use crate::lb::{parse_duration, Cidr};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub listen: Spanned<String>,
    #[serde(default)]
    pub scrape_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub alerts: Vec<RawAlertRoute>,
    #[serde(default)]
    pub retention: Option<Spanned<String>>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub series: Spanned<String>,
    #[serde(default)]
    pub over: Option<Spanned<String>>,
    #[serde(default)]
    pub reduce: Option<Spanned<String>>,
    #[serde(default)]
    pub window: Option<Spanned<String>>,
    #[serde(default)]
    pub by: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub aggregate: Option<Spanned<String>>,
    pub op: Spanned<String>,
    pub threshold: Spanned<f64>,
    #[serde(default, rename = "for")]
    pub for_: Option<Spanned<String>>,
    #[serde(default)]
    pub severity: Option<Spanned<String>>,
    #[serde(default)]
    pub summary: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertRoute {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub resend: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertKind {
    Log,
    Webhook {
        url: String,
    },
    /// A Prometheus Alertmanager: alerts go to `POST <url>/api/v2/alerts`, firing ones
    /// again every `resend`, resolved ones with their `endsAt`.
    Alertmanager {
        url: String,
        resend: Duration,
    },
}

/// How often firing alerts go to an Alertmanager again by default (Prometheus'
/// `--rules.alert.resend-delay`).
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRoute {
    pub name: String,
    pub kind: AlertKind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MonitorConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub scrape_interval: Duration,
    pub allow: Vec<Cidr>,
    pub token_env: Option<String>,
    pub alerts: Vec<AlertRoute>,
    /// How long samples are kept in memory (default 30 min).
    pub retention: Duration,
    /// Rules added to (or, by name, replacing) the monitor's built-in rules.
    pub rules: Vec<Rule>,
}

/// `http://HOST:PORT[/prefix]`: a host, a port that parses, no query.
fn valid_base_url(u: &str) -> bool {
    let Some(rest) = u.strip_prefix("http://") else {
        return false;
    };
    let hostport = rest.split('/').next().unwrap_or("");
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) && !u.contains(['?', '#', ' '])
}

fn parse_rule(src: &Source, r: &RawRule, errs: &mut Vec<Diagnostic>) -> Option<Rule> {
    let before = errs.len();
    let enum_of = |v: &Option<Spanned<String>>, default: &str| -> String {
        v.as_ref()
            .map(|x| x.get_ref().clone())
            .unwrap_or_else(|| default.to_string())
    };
    let reduce_s = enum_of(&r.reduce, "last");
    let aggregate_s = enum_of(&r.aggregate, "max");
    let severity_s = enum_of(&r.severity, "warning");
    let mut at = |span: Option<std::ops::Range<usize>>, m: String| match span {
        Some(s) => errs.push(src.error_at(s, m)),
        None => errs.push(src.error_at(r.name.span(), m)),
    };
    let series = r
        .series
        .get_ref()
        .parse::<Selector>()
        .map_err(|m| at(Some(r.series.span()), m))
        .ok();
    let over = match &r.over {
        None => None,
        Some(o) => o
            .get_ref()
            .parse::<Selector>()
            .map_err(|m| at(Some(o.span()), m))
            .ok(),
    };
    let reduce = reduce_s
        .parse::<Reduce>()
        .map_err(|m| at(r.reduce.as_ref().map(|x| x.span()), m))
        .ok();
    let aggregate = aggregate_s
        .parse::<Aggregate>()
        .map_err(|m| at(r.aggregate.as_ref().map(|x| x.span()), m))
        .ok();
    let severity = severity_s
        .parse::<Severity>()
        .map_err(|m| at(r.severity.as_ref().map(|x| x.span()), m))
        .ok();
    let cmp =
        r.op.get_ref()
            .parse::<Cmp>()
            .map_err(|m| at(Some(r.op.span()), m))
            .ok();
    let mut dur = |v: &Option<Spanned<String>>, default: Duration| match v {
        None => Some(default),
        Some(x) => parse_duration(x.get_ref())
            .map_err(|m| at(Some(x.span()), m))
            .ok(),
    };
    let window = dur(&r.window, Duration::from_secs(30));
    let for_ = dur(&r.for_, Duration::ZERO);
    let threshold = *r.threshold.get_ref();
    if !threshold.is_finite() {
        at(
            Some(r.threshold.span()),
            "threshold must be a finite number".into(),
        );
    }
    if reduce == Some(Reduce::Rate) && window.is_some_and(|w| w < Duration::from_secs(1)) {
        at(
            r.window.as_ref().map(|x| x.span()),
            "a rate needs a window of at least 1s (two scrapes or more)".into(),
        );
    }
    let by = match &r.by {
        None => vec!["instance".to_string()],
        Some(v) => v.iter().map(|x| x.get_ref().clone()).collect(),
    };
    if errs.len() > before {
        return None;
    }
    Some(Rule {
        name: r.name.get_ref().clone(),
        series: series?,
        over,
        reduce: reduce?,
        window_ms: u64::try_from(window?.as_millis()).unwrap_or(u64::MAX),
        by,
        aggregate: aggregate?,
        cmp: cmp?,
        threshold,
        for_ms: u64::try_from(for_?.as_millis()).unwrap_or(u64::MAX),
        severity: severity?,
        summary: r
            .summary
            .as_ref()
            .map(|x| x.get_ref().clone())
            .unwrap_or_default(),
        and: None,
    })
}

pub(crate) fn validate(
    src: &Source,
    s: &MonitorSection,
    errs: &mut Vec<Diagnostic>,
) -> Option<MonitorConfig> {
    let listen = match s.listen.get_ref().parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => a,
        _ => {
            errs.push(src.error_at(
                s.listen.span(),
                format!(
                    "monitor listen \"{}\" must be IP:PORT, e.g. \"127.0.0.1:9090\"",
                    s.listen.get_ref()
                ),
            ));
            return None;
        }
    };
    let scrape_interval = match &s.scrape_interval {
        None => Duration::from_secs(2),
        Some(v) => match parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                errs.push(src.error_at(v.span(), "scrape_interval must be greater than zero"));
                Duration::from_secs(2)
            }
            Err(m) => {
                errs.push(src.error_at(v.span(), m));
                Duration::from_secs(2)
            }
        },
    };
    let mut allow = Vec::new();
    for a in &s.allow {
        match a.get_ref().parse::<Cidr>() {
            Ok(c) => allow.push(c),
            Err(m) => errs.push(src.error_at(a.span(), m)),
        }
    }
    let mut alerts = Vec::new();
    for r in &s.alerts {
        if let (Some(x), false) = (&r.resend, r.kind.get_ref() == "alertmanager") {
            errs.push(src.error_at(
                x.span(),
                "resend is only used by kind = \"alertmanager\" alert routes",
            ));
        }
        let kind = match (r.kind.get_ref().as_str(), &r.url) {
            ("log", None) => AlertKind::Log,
            ("log", Some(u)) => {
                errs.push(src.error_at(
                    u.span(),
                    "url is only used by kind = \"webhook\" and \"alertmanager\" alert routes",
                ));
                AlertKind::Log
            }
            ("webhook", Some(u)) => {
                if !u.get_ref().starts_with("http://") {
                    errs.push(src.error_at(
                        u.span(),
                        "webhook url must start with http:// (the monitor posts plain HTTP; \
                         for an https endpoint, post to a relay on the monitor's host)",
                    ));
                }
                AlertKind::Webhook {
                    url: u.get_ref().clone(),
                }
            }
            ("webhook", None) => {
                errs.push(src.error_at(
                    r.kind.span(),
                    "a webhook alert route needs url = \"http://HOST:PORT/PATH\"",
                ));
                AlertKind::Log
            }
            ("alertmanager", Some(u)) => {
                if !valid_base_url(u.get_ref()) {
                    errs.push(src.error_at(
                        u.span(),
                        "alertmanager url must be http://HOST:PORT (optionally with a path \
                         prefix, e.g. http://127.0.0.1:9093); the monitor posts to \
                         <url>/api/v2/alerts",
                    ));
                }
                let resend = match &r.resend {
                    None => ALERTMANAGER_RESEND,
                    Some(v) => match parse_duration(v.get_ref()) {
                        Ok(d) if d >= Duration::from_secs(1) => d,
                        Ok(_) => {
                            errs.push(
                                src.error_at(v.span(), "resend must be at least 1s".to_string()),
                            );
                            ALERTMANAGER_RESEND
                        }
                        Err(m) => {
                            errs.push(src.error_at(v.span(), m));
                            ALERTMANAGER_RESEND
                        }
                    },
                };
                AlertKind::Alertmanager {
                    url: u.get_ref().trim_end_matches('/').to_string(),
                    resend,
                }
            }
            ("alertmanager", None) => {
                errs.push(src.error_at(
                    r.kind.span(),
                    "an alertmanager alert route needs url = \"http://HOST:PORT\"",
                ));
                AlertKind::Log
            }
            (other, _) => {
                errs.push(src.error_at(
                    r.kind.span(),
                    format!(
                        "unknown alert route kind \"{other}\"; expected \"log\", \"webhook\" or \"alertmanager\""
                    ),
                ));
                AlertKind::Log
            }
        };
        alerts.push(AlertRoute {
            name: r.name.get_ref().clone(),
            kind,
        });
    }
    let retention = match &s.retention {
        None => Duration::from_secs(30 * 60),
        Some(v) => match parse_duration(v.get_ref()) {
            Ok(d) if d >= scrape_interval * 2 && d <= Duration::from_secs(24 * 3600) => d,
            Ok(_) => {
                errs.push(src.error_at(
                    v.span(),
                    "retention must be at least two scrape intervals and at most 24h",
                ));
                Duration::from_secs(30 * 60)
            }
            Err(m) => {
                errs.push(src.error_at(v.span(), m));
                Duration::from_secs(30 * 60)
            }
        },
    };
    let mut rules = Vec::new();
    let mut names = std::collections::HashSet::new();
    for r in &s.rules {
        if !names.insert(r.name.get_ref().clone()) {
            errs.push(src.error_at(
                r.name.span(),
                format!("duplicate rule name \"{}\"", r.name.get_ref()),
            ));
            continue;
        }
        if let Some(rule) = parse_rule(src, r, errs) {
            rules.push(rule);
        }
    }
    Some(MonitorConfig {
        retention,
        rules,
        name: s
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_else(|| "monitor".to_string()),
        listen,
        scrape_interval,
        allow,
        token_env: s.token_env.as_ref().map(|t| t.get_ref().clone()),
        alerts,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn section(text: &str) -> (Source, MonitorSection) {
        #[derive(Deserialize)]
        struct F {
            monitor: MonitorSection,
        }
        let src = Source::new("t.toml", text.to_string());
        let f: F = src.parse().unwrap();
        (src, f.monitor)
    }

    #[test]
    fn rules_are_parsed_with_defaults_and_errors_carry_positions() {
        let (src, s) = section(
            r#"
[monitor]
listen = "127.0.0.1:9090"
[[monitor.rules]]
name = "Lag"
series = "rampart_db_replication_lag_bytes"
op = ">"
threshold = 1e6
for = "10s"
[[monitor.rules]]
name = "Bad"
series = "x{a=b}"
reduce = "median"
op = "=>"
threshold = 1
"#,
        );
        let mut errs = Vec::new();
        let c = validate(&src, &s, &mut errs).unwrap();
        assert_eq!(c.rules.len(), 1);
        let r = &c.rules[0];
        assert_eq!(
            (r.reduce, r.aggregate, r.for_ms, r.by.clone(), r.threshold),
            (
                Reduce::Last,
                Aggregate::Max,
                10_000,
                vec!["instance".to_string()],
                1e6
            )
        );
        let msgs: Vec<String> = errs
            .iter()
            .map(|d| format!("{}:{} {}", d.line, d.col, d.message))
            .collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("12:10 bad label matcher"), "{msgs:?}");
        assert!(
            msgs[1].starts_with("13:10 unknown reduce \"median\""),
            "{msgs:?}"
        );
        assert!(msgs[2].starts_with("14:6 unknown comparison"), "{msgs:?}");
    }

    #[test]
    fn alertmanager_routes_and_their_errors_name_line_and_column() {
        let (src, s) = section(
            r#"
[monitor]
listen = "127.0.0.1:9090"
[[monitor.alerts]]
name = "am"
kind = "alertmanager"
url = "http://127.0.0.1:9093/"
[[monitor.alerts]]
name = "am2"
kind = "alertmanager"
url = "http://127.0.0.1:9093/prefix"
resend = "5s"
[[monitor.alerts]]
name = "bad"
kind = "alertmanager"
url = "https://am:9093"
resend = "10ms"
[[monitor.alerts]]
name = "nourl"
kind = "alertmanager"
[[monitor.alerts]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:1/x"
resend = "1m"
"#,
        );
        let mut errs = Vec::new();
        let c = validate(&src, &s, &mut errs).unwrap();
        assert_eq!(
            c.alerts[0].kind,
            AlertKind::Alertmanager {
                url: "http://127.0.0.1:9093".into(),
                resend: ALERTMANAGER_RESEND
            }
        );
        assert_eq!(
            c.alerts[1].kind,
            AlertKind::Alertmanager {
                url: "http://127.0.0.1:9093/prefix".into(),
                resend: Duration::from_secs(5)
            }
        );
        let msgs: Vec<String> = errs
            .iter()
            .map(|d| format!("{}:{} {}", d.line, d.col, d.message))
            .collect();
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        assert!(
            msgs[0].starts_with("16:7 alertmanager url must be http://HOST:PORT"),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with("17:10 resend must be at least 1s"),
            "{msgs:?}"
        );
        assert!(
            msgs[2].starts_with("20:8 an alertmanager alert route needs url"),
            "{msgs:?}"
        );
        assert!(
            msgs[3].starts_with("25:10 resend is only used by kind = \"alertmanager\""),
            "{msgs:?}"
        );
    }
}
