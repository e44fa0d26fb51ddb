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
//! [[monitor.alerts]]                 # where alerts go
//! name = "ops"
//! kind = "log"                       # "log" or "webhook"
//! # url = "https://hooks.example/ops" # webhook only
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertRoute {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    #[serde(default)]
    pub url: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertKind {
    Log,
    Webhook { url: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRoute {
    pub name: String,
    pub kind: AlertKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub scrape_interval: Duration,
    pub allow: Vec<Cidr>,
    pub token_env: Option<String>,
    pub alerts: Vec<AlertRoute>,
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
        let kind = match (r.kind.get_ref().as_str(), &r.url) {
            ("log", None) => AlertKind::Log,
            ("log", Some(u)) => {
                errs.push(src.error_at(
                    u.span(),
                    "url is only used by kind = \"webhook\" alert routes",
                ));
                AlertKind::Log
            }
            ("webhook", Some(u)) => {
                if !(u.get_ref().starts_with("http://") || u.get_ref().starts_with("https://")) {
                    errs.push(
                        src.error_at(u.span(), "webhook url must start with http:// or https://"),
                    );
                }
                AlertKind::Webhook {
                    url: u.get_ref().clone(),
                }
            }
            ("webhook", None) => {
                errs.push(src.error_at(
                    r.kind.span(),
                    "a webhook alert route needs url = \"https://...\"",
                ));
                AlertKind::Log
            }
            (other, _) => {
                errs.push(src.error_at(
                    r.kind.span(),
                    format!(
                        "unknown alert route kind \"{other}\"; expected \"log\" or \"webhook\""
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
    Some(MonitorConfig {
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
