//! The `[db]` section of the topology (rampart db). Owned by the db work.
//!
//! ```toml
//! [cluster]
//! name = "main"
//! etcd = ["http://127.0.0.1:2379"]
//!
//! [db]
//! data_dir = "/var/lib/rampart/db"   # each node uses <data_dir>/<node> unless it sets its own
//! synchronous = true                 # default: no acknowledged commit lost on failover
//! synchronous_strict = false         # true: refuse writes while no synchronous standby
//! ttl = "3s"                         # leader lease
//! loop_wait = "500ms"                # HA loop interval
//! retry_timeout = "1s"               # deadline of one etcd/PostgreSQL call in the loop
//! max_lag = "16MB"                   # a replica further behind never promotes
//! api_allow = ["127.0.0.0/8"]        # who may POST /switchover, /failover (default loopback)
//! api_token_file = "db-api.token"    # ... with this bearer token (or basic auth password)
//!
//! [[db.nodes]]
//! name = "db1"
//! host = "127.0.0.1"
//! port = 5433
//! api = "127.0.0.1:8008"
//! ```
//!
//! The raw section is validated into [`DbConfig`], which holds only checked values.
//! The timing rules are [`crate::db_timing`]'s: `ttl >= loop_wait + retry_timeout +
//! DEMOTE_MARGIN`, so that a primary always gets one full renewal attempt before it must
//! demote itself, and demotes before etcd can expire its lease; one call fits in
//! `ttl / 2` (the lease keeper's liveness bound); a required kernel watchdog fires before
//! the lease can expire; an etcd election fits in one `retry_timeout`.
//!
//! `watchdog = "off" | "automatic" | "required"` (Patroni's `watchdog.mode`, default
//! `automatic`; a node may set its own) with `watchdog_device` (default `/dev/watchdog`):
//! a kernel watchdog kept alive by the leader besides the watchdog process; `required`
//! refuses to lead without one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{ConfigError, Diagnostic, Source};
use crate::lb::parse_duration;
use crate::topology::TopologyFile;

pub use crate::db_timing::DEMOTE_MARGIN;
use crate::db_timing::{Field, Timings};

/// `[db]`: the PostgreSQL cluster managed by `rampart db` agents.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DbSection {
    #[serde(default)]
    pub data_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub synchronous: Option<Spanned<bool>>,
    #[serde(default)]
    pub synchronous_strict: Option<Spanned<bool>>,
    #[serde(default)]
    pub ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub loop_wait: Option<Spanned<String>>,
    #[serde(default)]
    pub retry_timeout: Option<Spanned<String>>,
    /// Bytes ("16MB", "512kB", or an integer of bytes).
    #[serde(default)]
    pub max_lag: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub pg_bin_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub superuser_password: Option<Spanned<String>>,
    #[serde(default)]
    pub replication_password: Option<Spanned<String>>,
    /// Extra `name = value` lines for postgresql.conf (applied on every node).
    #[serde(default)]
    pub parameters: Option<Spanned<toml::Table>>,
    /// Client networks allowed to use the agents' write endpoints (POST /switchover,
    /// /failover); default loopback only.
    #[serde(default)]
    pub api_allow: Option<Vec<Spanned<String>>>,
    /// The token those clients must send (`Authorization: Bearer`, or as the password of
    /// basic auth, as Patroni's clients do), read from a file or an environment variable.
    #[serde(default)]
    pub api_token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub api_token_env: Option<Spanned<String>>,
    /// `off`, `automatic` (default) or `required`: the kernel watchdog.
    #[serde(default)]
    pub watchdog: Option<Spanned<String>>,
    #[serde(default)]
    pub watchdog_device: Option<Spanned<String>>,
    #[serde(default)]
    pub nodes: Vec<Spanned<RawDbNode>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDbNode {
    pub name: Spanned<String>,
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    pub port: Spanned<i64>,
    pub api: Spanned<String>,
    #[serde(default)]
    pub data_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub nofailover: Option<Spanned<bool>>,
    /// Patroni-style tags (`noloadbalance = true`, `dc = "east"`), matched by the API's
    /// `?tag_<name>=<value>` health checks.
    #[serde(default)]
    pub tags: Option<Spanned<toml::Table>>,
    /// This node's kernel watchdog mode (else `[db] watchdog`).
    #[serde(default)]
    pub watchdog: Option<Spanned<String>>,
}

// ===================================================================================
// Runtime types
// ===================================================================================

/// A whole, valid db configuration (cluster name and etcd endpoints included).
#[derive(Debug, Clone, PartialEq)]
pub struct DbConfig {
    pub cluster: String,
    pub etcd: Vec<String>,
    pub synchronous: bool,
    pub synchronous_strict: bool,
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
    pub max_lag_bytes: u64,
    pub pg_bin_dir: Option<PathBuf>,
    pub superuser_password: String,
    pub replication_password: String,
    /// Extra postgresql.conf lines, already rendered as `name = value`.
    pub parameters: Vec<(String, String)>,
    /// Never empty; names, pg addresses and api addresses unique.
    pub nodes: Vec<DbNode>,
    /// `[tls] replication = true`: streaming replication over TLS only.
    pub replication_tls: Option<ReplicationTls>,
    /// Who may use the agents' write endpoints (POST /switchover, /failover).
    pub api_access: ApiAccess,
    /// The kernel watchdog device (`/dev/watchdog`).
    pub watchdog_device: PathBuf,
}

/// Patroni's `watchdog.mode`: whether the leader also keeps a kernel watchdog alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogMode {
    /// The watchdog process only.
    Off,
    /// The kernel watchdog when the device is there and can fire in time, else the
    /// watchdog process only.
    #[default]
    Automatic,
    /// Never lead without the kernel watchdog.
    Required,
}

impl WatchdogMode {
    fn parse(s: &str) -> Option<WatchdogMode> {
        match s {
            "off" => Some(WatchdogMode::Off),
            "automatic" => Some(WatchdogMode::Automatic),
            "required" => Some(WatchdogMode::Required),
            _ => None,
        }
    }
}

impl DbConfig {
    /// The timings every margin derives from ([`crate::db_timing`]).
    pub fn timings(&self) -> Timings {
        Timings {
            ttl: self.ttl,
            loop_wait: self.loop_wait,
            retry_timeout: self.retry_timeout,
        }
    }
}

/// The agents' write endpoints: clients from `allow` only, with the token when one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAccess {
    pub allow: Vec<crate::lb::Cidr>,
    pub token: Option<crate::lb::TokenSource>,
}

/// TLS material of replication: every node serves `cert`/`key` (`ssl = on`), accepts the
/// replication user over `hostssl` only, and streams with `sslmode=verify-ca` against `ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbNode {
    /// `[a-z0-9_]`, 1..=63 chars (used as slot and application name).
    pub name: String,
    pub host: String,
    pub port: u16,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
    pub nofailover: bool,
    /// Tags as text (`true`, `5`, `east`), as Patroni compares them.
    pub tags: Vec<(String, String)>,
    pub watchdog: WatchdogMode,
}

impl DbConfig {
    pub fn node(&self, name: &str) -> Option<&DbNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Read and validate a topology file's `[cluster]` and `[db]` sections.
    pub fn load(path: &Path) -> Result<DbConfig, ConfigError> {
        let src = Source::read(path)?;
        Self::from_source(&src)
    }

    pub fn from_source(src: &Source) -> Result<DbConfig, ConfigError> {
        let file = TopologyFile::parse(src)?;
        Self::validate(src, &file)
    }

    pub fn validate(src: &Source, file: &TopologyFile) -> Result<DbConfig, ConfigError> {
        let mut errs: Vec<Diagnostic> = Vec::new();
        let cluster = file.cluster.name.get_ref().clone();
        if cluster.is_empty()
            || !cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(src.error_at(
                file.cluster.name.span(),
                "cluster name must be non-empty and use only letters, digits, '-' and '_'",
            ));
        }
        let etcd: Vec<String> = file
            .cluster
            .etcd
            .iter()
            .map(|e| e.get_ref().clone())
            .collect();
        if etcd.is_empty() {
            errs.push(
                src.error("[cluster] etcd: at least one etcd endpoint is required by rampart db"),
            );
        }
        for e in &file.cluster.etcd {
            let v = e.get_ref();
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                errs.push(src.error_at(
                    e.span(),
                    format!("etcd endpoint \"{v}\" must start with http:// or https://"),
                ));
            }
        }
        let Some(db) = &file.db else {
            errs.push(src.error("missing [db] section"));
            return Err(ConfigError { diagnostics: errs });
        };

        let dur = |v: &Option<Spanned<String>>,
                   default: Duration,
                   errs: &mut Vec<Diagnostic>|
         -> Duration {
            match v {
                None => default,
                Some(s) => match parse_duration(s.get_ref()) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => {
                        errs.push(src.error_at(s.span(), "duration must be greater than zero"));
                        default
                    }
                    Err(m) => {
                        errs.push(src.error_at(s.span(), m));
                        default
                    }
                },
            }
        };
        let ttl = dur(&db.ttl, Duration::from_secs(3), &mut errs);
        let loop_wait = dur(&db.loop_wait, Duration::from_millis(500), &mut errs);
        let retry_timeout = dur(&db.retry_timeout, Duration::from_secs(1), &mut errs);
        let mode = |v: &Option<Spanned<String>>, errs: &mut Vec<Diagnostic>| match v {
            None => None,
            Some(m) => match WatchdogMode::parse(m.get_ref()) {
                Some(w) => Some(w),
                None => {
                    errs.push(src.error_at(
                        m.span(),
                        format!(
                            "watchdog must be \"off\", \"automatic\" or \"required\", not \"{}\"",
                            m.get_ref()
                        ),
                    ));
                    None
                }
            },
        };
        let watchdog = mode(&db.watchdog, &mut errs).unwrap_or_default();
        // Where a required kernel watchdog is asked for (the section's or a node's).
        let required_at = std::iter::once(&db.watchdog)
            .chain(db.nodes.iter().map(|n| &n.get_ref().watchdog))
            .flatten()
            .find(|m| m.get_ref() == "required")
            .map(|m| m.span());
        let election = file
            .etcd
            .as_ref()
            .and_then(|e| e.election_ms.as_ref())
            .filter(|e| *e.get_ref() > 0)
            .map(|e| (Duration::from_millis(*e.get_ref() as u64), e.span()));
        let timings = Timings {
            ttl,
            loop_wait,
            retry_timeout,
        };
        for v in timings.check(required_at.is_some(), election.as_ref().map(|e| e.0)) {
            let span = match v.field {
                Field::Ttl => db.ttl.as_ref().map(|s| s.span()),
                Field::RetryTimeout => db
                    .retry_timeout
                    .as_ref()
                    .or(db.ttl.as_ref())
                    .map(|s| s.span()),
                Field::Watchdog => required_at.clone(),
                Field::EtcdElection => election.as_ref().map(|e| e.1.clone()),
            };
            errs.push(match span {
                Some(span) => src.error_at(span, v.message),
                None => src.error(v.message),
            });
        }
        if ttl.as_millis() % 1000 != 0 || ttl < Duration::from_secs(1) {
            let span = db.ttl.as_ref().map(|s| s.span()).unwrap_or(0..0);
            errs.push(src.error_at(
                span,
                "ttl must be a whole number of seconds (etcd leases are in seconds)",
            ));
        }

        let max_lag_bytes = match &db.max_lag {
            None => 16 * 1024 * 1024,
            Some(v) => match parse_bytes(v.get_ref()) {
                Ok(b) => b,
                Err(m) => {
                    errs.push(src.error_at(v.span(), m));
                    0
                }
            },
        };

        let base_dir = db.data_dir.as_ref().map(|d| PathBuf::from(d.get_ref()));
        let mut parameters = Vec::new();
        if let Some(p) = &db.parameters {
            for (k, v) in p.get_ref() {
                if !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                {
                    errs.push(src.error_at(p.span(), format!("bad parameter name \"{k}\"")));
                    continue;
                }
                let rendered = match v {
                    toml::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => {
                        if *b {
                            "on".into()
                        } else {
                            "off".into()
                        }
                    }
                    _ => {
                        errs.push(src.error_at(
                            p.span(),
                            format!("parameter \"{k}\" must be a string, number or boolean"),
                        ));
                        continue;
                    }
                };
                parameters.push((k.clone(), rendered));
            }
        }

        let mut nodes = Vec::new();
        let mut names = HashSet::new();
        let mut pg_addrs = HashSet::new();
        let mut apis = HashSet::new();
        if db.nodes.is_empty() {
            errs.push(src.error("[db] needs at least one [[db.nodes]] entry"));
        }
        for n in &db.nodes {
            let raw = n.get_ref();
            let name = raw.name.get_ref().clone();
            if name.is_empty()
                || name.len() > 63
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                errs.push(src.error_at(
                    raw.name.span(),
                    format!("node name \"{name}\" must be 1-63 characters of a-z, 0-9 and '_' (it names a replication slot)"),
                ));
            }
            if !names.insert(name.clone()) {
                errs.push(src.error_at(raw.name.span(), format!("duplicate node name \"{name}\"")));
            }
            let host = raw
                .host
                .as_ref()
                .map(|h| h.get_ref().clone())
                .unwrap_or_else(|| "127.0.0.1".into());
            if host.is_empty() || host.contains(char::is_whitespace) || host.contains('\'') {
                let span = raw
                    .host
                    .as_ref()
                    .map(|h| h.span())
                    .unwrap_or(raw.name.span());
                errs.push(src.error_at(span, format!("bad host \"{host}\"")));
            }
            let port = match u16::try_from(*raw.port.get_ref()) {
                Ok(p) if p > 0 => p,
                _ => {
                    errs.push(src.error_at(raw.port.span(), "port must be 1..=65535"));
                    0
                }
            };
            if !pg_addrs.insert((host.clone(), port)) {
                errs.push(src.error_at(
                    raw.port.span(),
                    format!("{host}:{port} is used by two nodes"),
                ));
            }
            let api = match raw.api.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    errs.push(src.error_at(
                        raw.api.span(),
                        format!("api \"{}\" must be an ip:port address", raw.api.get_ref()),
                    ));
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            if !apis.insert(api) {
                errs.push(src.error_at(
                    raw.api.span(),
                    format!("api address {api} is used by two nodes"),
                ));
            }
            let data_dir = match (&raw.data_dir, &base_dir) {
                (Some(d), _) => PathBuf::from(d.get_ref()),
                (None, Some(b)) => b.join(&name),
                (None, None) => PathBuf::from("/var/lib/rampart/db").join(&name),
            };
            // A relative data_dir is relative to the topology file's folder.
            let data_dir = if data_dir.is_relative() {
                let folder = src.file.parent().unwrap_or(Path::new("."));
                let folder = std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf());
                folder.join(data_dir)
            } else {
                data_dir
            };
            let mut tags = Vec::new();
            if let Some(t) = &raw.tags {
                for (k, v) in t.get_ref() {
                    let text = match v {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        _ => {
                            errs.push(src.error_at(
                                t.span(),
                                format!("tag \"{k}\" must be a string, number or boolean"),
                            ));
                            continue;
                        }
                    };
                    tags.push((k.clone(), text));
                }
            }
            let node_watchdog = mode(&raw.watchdog, &mut errs).unwrap_or(watchdog);
            nodes.push(DbNode {
                watchdog: node_watchdog,
                tags,
                name,
                host,
                port,
                api,
                data_dir,
                nofailover: raw
                    .nofailover
                    .as_ref()
                    .map(|b| *b.get_ref())
                    .unwrap_or(false),
            });
        }
        let pw = |v: &Option<Spanned<String>>, errs: &mut Vec<Diagnostic>| -> String {
            match v {
                None => "rampart".to_string(),
                Some(s) => {
                    if s.get_ref().is_empty() || s.get_ref().contains(['\'', '\\', ' ']) {
                        errs.push(src.error_at(
                            s.span(),
                            "password must be non-empty, without quotes, backslashes or spaces",
                        ));
                    }
                    s.get_ref().clone()
                }
            }
        };
        let superuser_password = pw(&db.superuser_password, &mut errs);
        let replication_password = pw(&db.replication_password, &mut errs);
        let replication_tls = file
            .tls
            .as_ref()
            .and_then(|t| crate::security::validate_tls(src, &cluster, t, &mut errs))
            .filter(|t| t.replication)
            .map(|t| {
                let (cert, key) = t.db_pair();
                ReplicationTls {
                    cert,
                    key,
                    ca: t.trust_file(),
                }
            });
        let api_access = validate_api_access(src, db, &mut errs);
        if !errs.is_empty() {
            return Err(ConfigError { diagnostics: errs });
        }
        Ok(DbConfig {
            api_access,
            cluster,
            etcd,
            synchronous: db
                .synchronous
                .as_ref()
                .map(|b| *b.get_ref())
                .unwrap_or(true),
            synchronous_strict: db
                .synchronous_strict
                .as_ref()
                .map(|b| *b.get_ref())
                .unwrap_or(false),
            ttl,
            loop_wait,
            retry_timeout,
            max_lag_bytes,
            pg_bin_dir: db.pg_bin_dir.as_ref().map(|d| PathBuf::from(d.get_ref())),
            superuser_password,
            replication_password,
            parameters,
            nodes,
            replication_tls,
            watchdog_device: db
                .watchdog_device
                .as_ref()
                .map(|d| PathBuf::from(d.get_ref()))
                .unwrap_or_else(|| PathBuf::from("/dev/watchdog")),
        })
    }
}

fn validate_api_access(src: &Source, db: &DbSection, errs: &mut Vec<Diagnostic>) -> ApiAccess {
    use crate::lb::{Cidr, TokenSource};
    let token = match (&db.api_token_file, &db.api_token_env) {
        (Some(f), Some(_)) => {
            errs.push(src.error_at(f.span(), "give api_token_file or api_token_env, not both"));
            None
        }
        (Some(f), None) => Some(TokenSource::File(crate::lb::resolve_path(src, f.get_ref()))),
        (None, Some(e)) => {
            if e.get_ref().is_empty() {
                errs.push(
                    src.error_at(e.span(), "api_token_env must name an environment variable"),
                );
            }
            Some(TokenSource::Env(e.get_ref().clone()))
        }
        (None, None) => None,
    };
    let loopback: Vec<Cidr> = ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let allow = match &db.api_allow {
        None => loopback,
        Some(list) => {
            let mut v = Vec::new();
            for n in list {
                match n.get_ref().parse::<Cidr>() {
                    Ok(c) => {
                        let local_only = loopback.iter().any(|l| l.covers(&c));
                        if !local_only && token.is_none() {
                            errs.push(src.error_at(
                                n.span(),
                                format!("api_allow \"{}\" lets other hosts switch the primary over: set api_token_file or api_token_env", n.get_ref()),
                            ));
                        }
                        v.push(c);
                    }
                    Err(e) => errs.push(src.error_at(n.span(), e)),
                }
            }
            v
        }
    };
    ApiAccess { allow, token }
}

/// `"16MB"`, `"512kB"`, `"1GB"` or an integer number of bytes.
pub fn parse_bytes(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        toml::Value::String(s) => parse_size(s),
        _ => Err(SIZE_HELP.to_string()),
    }
}

const SIZE_HELP: &str = "expected a size such as \"16MB\", \"512kB\", \"1GB\" or a number of bytes";

/// `16MB`, `512kB`, `1GB`, `1024` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || SIZE_HELP.to_string();
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1024,
        "MB" => 1024 * 1024,
        "GB" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<DbConfig, ConfigError> {
        DbConfig::from_source(&Source::new("t.toml", text))
    }

    const OK: &str = r#"
[cluster]
name = "main"
etcd = ["http://127.0.0.1:2379"]

[db]
data_dir = "/tmp/x"

[[db.nodes]]
name = "db1"
port = 5433
api = "127.0.0.1:8008"

[[db.nodes]]
name = "db2"
port = 5434
api = "127.0.0.1:8009"
nofailover = true
"#;

    #[test]
    fn defaults_are_synchronous_and_fast() {
        let c = cfg(OK).unwrap();
        assert!(c.synchronous);
        assert!(!c.synchronous_strict);
        assert_eq!(c.ttl, Duration::from_secs(3));
        assert_eq!(c.loop_wait, Duration::from_millis(500));
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].data_dir, PathBuf::from("/tmp/x/db1"));
        assert!(c.nodes[1].nofailover);
        assert_eq!(c.max_lag_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn timing_rule_is_enforced_with_position() {
        let text = OK.replace(
            "data_dir = \"/tmp/x\"",
            "data_dir = \"/tmp/x\"\nttl = \"2s\"",
        );
        let e = cfg(&text).unwrap_err();
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.col), (8, 7), "{e}");
        assert!(d.message.contains("loop_wait"), "{e}");
    }

    #[test]
    fn watchdog_modes_per_cluster_and_node() {
        let c = cfg(OK).unwrap();
        assert_eq!(c.nodes[0].watchdog, WatchdogMode::Automatic);
        assert_eq!(c.watchdog_device, PathBuf::from("/dev/watchdog"));
        let text = OK
            .replace(
                "data_dir = \"/tmp/x\"",
                "data_dir = \"/tmp/x\"\nwatchdog = \"off\"\nwatchdog_device = \"/dev/watchdog1\"",
            )
            .replace(
                "nofailover = true",
                "nofailover = true\nwatchdog = \"required\"",
            );
        let c = cfg(&text).unwrap();
        assert_eq!(c.nodes[0].watchdog, WatchdogMode::Off);
        assert_eq!(c.nodes[1].watchdog, WatchdogMode::Required);
        assert_eq!(c.watchdog_device, PathBuf::from("/dev/watchdog1"));
        let text = OK.replace(
            "data_dir = \"/tmp/x\"",
            "data_dir = \"/tmp/x\"\nwatchdog = \"sometimes\"",
        );
        let e = cfg(&text).unwrap_err().to_string();
        assert!(e.contains("t.toml:8:12"), "{e}");
        assert!(e.contains("\"off\", \"automatic\" or \"required\""), "{e}");
    }

    #[test]
    fn margins_that_cannot_fence_in_time_are_refused_where_they_are_set() {
        // A required kernel watchdog (1 s at least) cannot fire within 2 - 0.8 - 0.5 s.
        let text = OK
            .replace(
                "data_dir = \"/tmp/x\"",
                "data_dir = \"/tmp/x\"\nttl = \"2s\"\nloop_wait = \"100ms\"\nretry_timeout = \"800ms\"",
            )
            .replace("nofailover = true", "nofailover = true\nwatchdog = \"required\"");
        let e = cfg(&text).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1, "{e}");
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.col), (22, 12), "{e}");
        assert!(d.message.contains("expected ttl >= 2.3s"), "{e}");
        // Without it the same timings are fine.
        assert!(cfg(&text.replace("watchdog = \"required\"", "")).is_ok());
        // One call longer than ttl / 2: the keeper would stop renewing on a live loop.
        let text = OK.replace(
            "data_dir = \"/tmp/x\"",
            "data_dir = \"/tmp/x\"\nttl = \"4s\"\nloop_wait = \"100ms\"\nretry_timeout = \"2500ms\"",
        );
        let e = cfg(&text).unwrap_err();
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.col), (10, 17), "{e}");
        assert!(d.message.contains("ttl / 2"), "{e}");
        // An etcd election longer than one renewal attempt.
        let text = format!("{OK}\n[etcd]\nelection_ms = 1500\n");
        let e = cfg(&text).unwrap_err();
        assert!(e.to_string().contains("election_ms"), "{e}");
        assert!(cfg(&format!("{OK}\n[etcd]\nelection_ms = 1000\n")).is_ok());
    }

    #[test]
    fn bad_node_name_and_duplicate_port_are_reported() {
        let text = OK
            .replace("name = \"db2\"", "name = \"DB-2\"")
            .replace("5434", "5433");
        let e = cfg(&text).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("t.toml:15:8"), "{s}");
        assert!(s.contains("used by two nodes"), "{s}");
    }

    #[test]
    fn relative_data_dir_is_relative_to_the_file() {
        let text = OK.replace("data_dir = \"/tmp/x\"", "data_dir = \".rampart/db\"");
        let c = DbConfig::from_source(&Source::new("/etc/site/topology.toml", text)).unwrap();
        assert_eq!(
            c.nodes[0].data_dir,
            PathBuf::from("/etc/site/.rampart/db/db1")
        );
    }

    #[test]
    fn bytes_parse() {
        assert_eq!(
            parse_bytes(&toml::Value::String("16MB".into())).unwrap(),
            16 << 20
        );
        assert_eq!(parse_bytes(&toml::Value::Integer(42)).unwrap(), 42);
        assert!(parse_bytes(&toml::Value::String("16 parsecs".into())).is_err());
    }

    #[test]
    fn api_access_defaults_to_loopback_and_needs_a_token_beyond_it() {
        let c = cfg(OK).unwrap();
        assert!(c.api_access.token.is_none());
        assert!(c
            .api_access
            .allow
            .iter()
            .any(|n| n.contains("127.0.0.1".parse().unwrap())));
        assert!(!c
            .api_access
            .allow
            .iter()
            .any(|n| n.contains("10.0.0.1".parse().unwrap())));
        let open = OK.replace(
            "data_dir = \"/tmp/x\"",
            "data_dir = \"/tmp/x\"\napi_allow = [\"10.0.0.0/8\"]",
        );
        let s = cfg(&open).unwrap_err().to_string();
        assert!(s.contains("t.toml:8:14"), "{s}");
        assert!(s.contains("api_token_file"), "{s}");
        let with_token = open.replace("api_allow", "api_token_env = \"DB_TOKEN\"\napi_allow");
        let c = cfg(&with_token).unwrap();
        assert!(c
            .api_access
            .allow
            .iter()
            .any(|n| n.contains("10.1.2.3".parse().unwrap())));
        assert_eq!(
            c.api_access.token,
            Some(crate::lb::TokenSource::Env("DB_TOKEN".into()))
        );
    }

    #[test]
    fn node_tags_are_text() {
        let text = OK.replace(
            "api = \"127.0.0.1:8008\"",
            "api = \"127.0.0.1:8008\"\ntags = { noloadbalance = true, dc = \"east\", prio = 5 }",
        );
        let c = cfg(&text).unwrap();
        let mut t = c.nodes[0].tags.clone();
        t.sort();
        assert_eq!(
            t,
            vec![
                ("dc".to_string(), "east".to_string()),
                ("noloadbalance".to_string(), "true".to_string()),
                ("prio".to_string(), "5".to_string())
            ]
        );
        assert!(c.nodes[1].tags.is_empty());
    }
}
