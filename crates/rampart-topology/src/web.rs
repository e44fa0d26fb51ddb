//! The `[web]` section of the topology (rampart web), and its validation into the
//! runtime [`WebConfig`] of one node.
//!
//! ```toml
//! [cluster]
//! name = "main"
//! etcd = ["http://127.0.0.1:2379"]      # optional: register with the lb through etcd
//!
//! [web]
//! root = "site"                         # static files (relative to the topology file)
//! pool = "web"                          # lb pool to register in
//! served_by_header = "X-Served-By"
//! drain_seconds = 1.0                   # not-ready time before closing the listener
//! header_read_timeout_seconds = 10.0    # a request head must arrive within this (else 408)
//! idle_timeout_seconds = 60.0           # a keep-alive connection idle this long is closed;
//!                                       # also: a client reading nothing this long
//! # upstream = "127.0.0.1:9000"         # proxy to your own app instead of the guestbook
//!
//! [web.database]                        # the guestbook's database (optional)
//! agents = ["http://127.0.0.1:8008"]    # rampart db agents' API, or: nodes = ["127.0.0.1:5432"];
//!                                       # with [cluster] etcd: their records there are
//!                                       # watched and the agents polled as a fallback
//! user = "postgres"
//! dbname = "postgres"
//! password_env = "PGPASSWORD"           # name of an env var holding the password; without
//!                                       # it: the file's [db] superuser_password ("rampart")
//! max_lag_bytes = 16777216
//! read_wait_ms = 200
//! pool_size = 16
//! # Every database call (and connect) is bounded: ttl / 2 of the same file's [db]
//! # (1.5 s with the default ttl of 3 s), within 0.5..2 s; 2 s without a [db].
//!
//! [[web.node]]
//! name = "web1"
//! listen = "127.0.0.1:8081"
//! weight = 100
//! # tls = { cert = "web1.crt", key = "web1.key" }   # serve HTTPS (TLS 1.2/1.3) on listen; plain
//! #                                   # HTTP there gets only /healthz, /readyz and /metrics.
//! #                                   # With [tls] self_signed and upstream = true, rampart up
//! #                                   # makes this pair (<dir>/web-<name>.{crt,key}).
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{ConfigError, Diagnostic, Source};
use crate::topology::TopologyFile;

/// `[web]`: the web/app servers run by `rampart web`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    #[serde(default)]
    pub root: Option<Spanned<String>>,
    #[serde(default)]
    pub pool: Option<Spanned<String>>,
    #[serde(default)]
    pub served_by_header: Option<Spanned<String>>,
    #[serde(default)]
    pub drain_seconds: Option<Spanned<f64>>,
    #[serde(default)]
    pub header_read_timeout_seconds: Option<Spanned<f64>>,
    #[serde(default)]
    pub idle_timeout_seconds: Option<Spanned<f64>>,
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub database: Option<DatabaseSection>,
    #[serde(default)]
    pub node: Vec<WebNodeSection>,
}

/// `[web.database]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    #[serde(default)]
    pub agents: Vec<Spanned<String>>,
    #[serde(default)]
    pub nodes: Vec<Spanned<String>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub dbname: Option<String>,
    #[serde(default)]
    pub password_env: Option<Spanned<String>>,
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
    #[serde(default)]
    pub read_wait_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub pool_size: Option<Spanned<u32>>,
}

/// `[[web.node]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebNodeSection {
    pub name: Spanned<String>,
    pub listen: Spanned<String>,
    #[serde(default)]
    pub weight: Option<Spanned<u32>>,
    #[serde(default)]
    pub root: Option<Spanned<String>>,
    #[serde(default)]
    pub tls: Option<RawWebTls>,
}

/// `tls = { cert = "PATH", key = "PATH" }` of a `[[web.node]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// HTTPS on a web node's listener: its certificate chain and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the guestbook learns the database topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbTopology {
    /// rampart db agents' API base URLs.
    Agents(Vec<String>),
    /// PostgreSQL `host:port` list, probed with SQL.
    Nodes(Vec<String>),
    /// The db agents' records in etcd (the `[cluster]` etcd endpoints and name), watched;
    /// `agents` (their API base URLs, may be empty) are polled while the watch is quiet.
    Etcd {
        endpoints: Vec<String>,
        cluster: String,
        agents: Vec<String>,
    },
}

/// The guestbook's database settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub topology: DbTopology,
    pub user: String,
    pub dbname: String,
    /// The password itself (read from the named environment variable, else the same file's
    /// `[db] superuser_password`, default "rampart", when it has a `[db]`); never logged.
    pub password: Option<String>,
    pub max_lag_bytes: u64,
    pub read_wait: Duration,
    pub pool_size: usize,
    /// With `[tls] replication` and a `[db]` in the same file (the db nodes run with
    /// `ssl = on` and a certificate of the stack's CA): connect over TLS, verifying the
    /// nodes against this CA.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Bounds every database call and connect ([`call_timeout`]): a call on a frozen
    /// server is abandoned after this and the write sent again on a fresh connection.
    pub call_timeout: Duration,
}

/// The call bound when the db timings are unknown (no `[db]` in the same file).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The call bound from the db agents' lease `ttl`: `ttl / 2`, within 0.5..=2 s. A frozen
/// primary keeps its lease (and its place in the topology) up to `ttl`; a silent call is
/// given up before that lease even runs out, so the write is ready to go to the new
/// primary as soon as it is elected, and a held write takes at most the failover plus
/// one bound (3 s + promotion + 1.5 s with the defaults, under the 8 s hold). Healthy
/// guestbook calls take milliseconds.
pub fn call_timeout(ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(t) => (t / 2).clamp(Duration::from_millis(500), DEFAULT_CALL_TIMEOUT),
        None => DEFAULT_CALL_TIMEOUT,
    }
}

impl DatabaseConfig {
    pub fn new(topology: DbTopology) -> Self {
        DatabaseConfig {
            topology,
            user: "postgres".into(),
            dbname: "postgres".into(),
            password: None,
            max_lag_bytes: 16 * 1024 * 1024,
            read_wait: Duration::from_millis(200),
            pool_size: 16,
            tls_ca: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// Registration with the lb through etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub cluster: String,
    pub etcd: Vec<String>,
    pub pool: String,
    pub weight: u32,
}

/// One `rampart web` node's validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WebConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub upstream: Option<String>,
    pub served_by_header: http_header::Name,
    pub drain: Duration,
    /// A request head (the first bytes, or all of it) must arrive within this; else the
    /// connection gets a 408 and is closed (slowloris). Once a connection moved to hyper
    /// (not a static file), its later heads are timed with `idle_timeout`.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed; a response whose
    /// client reads nothing for this long is abandoned.
    pub idle_timeout: Duration,
    pub database: Option<DatabaseConfig>,
    pub registration: Option<Registration>,
    /// Serve HTTPS on `listen` (plain HTTP there gets only the health and metrics paths).
    pub tls: Option<WebTls>,
}

/// Default [`WebConfig::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`WebConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A validated HTTP header name (lower-case ASCII token).
pub mod http_header {
    /// Header name checked against RFC 9110's token grammar.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Name(String);

    impl Name {
        pub fn parse(s: &str) -> Option<Name> {
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            ok.then(|| Name(s.to_ascii_lowercase()))
        }
        pub fn as_str(&self) -> &str {
            &self.0
        }
    }

    impl Default for Name {
        fn default() -> Self {
            Name("x-served-by".into())
        }
    }
}

impl WebConfig {
    /// Quick-mode defaults for a node listening on `listen` and serving `root`.
    pub fn quick(name: &str, listen: SocketAddr, root: PathBuf) -> WebConfig {
        WebConfig {
            name: name.to_string(),
            listen,
            root,
            upstream: None,
            served_by_header: http_header::Name::default(),
            drain: Duration::from_secs(1),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            database: None,
            registration: None,
            tls: None,
        }
    }

    /// Read a topology file and validate node `node`'s settings.
    pub fn load(path: &Path, node: &str) -> Result<WebConfig, ConfigError> {
        let src = Source::read(path)?;
        Self::from_source(&src, node)
    }

    /// Validate node `node` of an already-read topology file. Relative roots are relative
    /// to the file's folder.
    pub fn from_source(src: &Source, node: &str) -> Result<WebConfig, ConfigError> {
        let file = TopologyFile::parse(src)?;
        let mut errs: Vec<Diagnostic> = Vec::new();
        let Some(web) = &file.web else {
            return Err(ConfigError::single(src.error("no [web] section")));
        };
        let Some(n) = web.node.iter().find(|n| n.name.get_ref() == node) else {
            let names: Vec<&str> = web.node.iter().map(|n| n.name.get_ref().as_str()).collect();
            return Err(ConfigError::single(src.error(format!(
                "no [[web.node]] named {node:?} (nodes: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))));
        };
        let mut seen = std::collections::HashSet::new();
        for other in &web.node {
            if !seen.insert(other.name.get_ref().clone()) {
                errs.push(src.error_at(
                    other.name.span(),
                    format!("duplicate web node name {:?}", other.name.get_ref()),
                ));
            }
        }
        let listen = match n.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errs.push(src.error_at(
                    n.listen.span(),
                    "listen must be IP:PORT, e.g. 127.0.0.1:8081",
                ));
                None
            }
        };
        let base = src.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let root_sp = n.root.as_ref().or(web.root.as_ref());
        let root = match root_sp {
            Some(r) => {
                let p = base.join(r.get_ref());
                if !p.is_dir() {
                    errs.push(
                        src.error_at(r.span(), format!("root {} is not a folder", p.display())),
                    );
                }
                p
            }
            None => {
                errs.push(src.error("[web] needs root = \"FOLDER\" (static files)"));
                PathBuf::new()
            }
        };
        let served_by_header = match &web.served_by_header {
            Some(h) => match http_header::Name::parse(h.get_ref()) {
                Some(n) => n,
                None => {
                    errs.push(src.error_at(
                        h.span(),
                        "served_by_header must be a valid HTTP header name",
                    ));
                    http_header::Name::default()
                }
            },
            None => http_header::Name::default(),
        };
        let drain = match &web.drain_seconds {
            Some(d) if !(0.0..=300.0).contains(d.get_ref()) => {
                errs.push(src.error_at(d.span(), "drain_seconds must be between 0 and 300"));
                Duration::ZERO
            }
            Some(d) => Duration::from_secs_f64(*d.get_ref()),
            None => Duration::from_secs(1),
        };
        let mut timeout = |v: &Option<Spanned<f64>>, key: &str, default: Duration| match v {
            Some(t) if !(*t.get_ref() > 0.0 && *t.get_ref() <= 3600.0) => {
                errs.push(src.error_at(
                    t.span(),
                    format!("{key} must be more than 0 and at most 3600"),
                ));
                default
            }
            Some(t) => Duration::from_secs_f64(*t.get_ref()),
            None => default,
        };
        let header_read_timeout = timeout(
            &web.header_read_timeout_seconds,
            "header_read_timeout_seconds",
            DEFAULT_HEADER_READ_TIMEOUT,
        );
        let idle_timeout = timeout(
            &web.idle_timeout_seconds,
            "idle_timeout_seconds",
            DEFAULT_IDLE_TIMEOUT,
        );
        let upstream = match &web.upstream {
            Some(u) => {
                if valid_host_port(u.get_ref()) {
                    Some(u.get_ref().clone())
                } else {
                    errs.push(src.error_at(u.span(), "upstream must be HOST:PORT"));
                    None
                }
            }
            None => None,
        };
        let database = web
            .database
            .as_ref()
            .and_then(|d| validate_db(src, d, &file, &mut errs));
        let weight = match &n.weight {
            Some(w) if *w.get_ref() == 0 || *w.get_ref() > 10_000 => {
                errs.push(src.error_at(w.span(), "weight must be 1..=10000"));
                100
            }
            Some(w) => *w.get_ref(),
            None => 100,
        };
        let registration = if file.cluster.etcd.is_empty() {
            None
        } else {
            for e in &file.cluster.etcd {
                if !e.get_ref().starts_with("http://") && !e.get_ref().starts_with("https://") {
                    errs.push(src.error_at(
                        e.span(),
                        "etcd endpoints are URLs, e.g. http://127.0.0.1:2379",
                    ));
                }
            }
            Some(Registration {
                cluster: file.cluster.name.get_ref().clone(),
                etcd: file
                    .cluster
                    .etcd
                    .iter()
                    .map(|e| e.get_ref().clone())
                    .collect(),
                pool: web
                    .pool
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_else(|| "web".into()),
                weight,
            })
        };
        if let Some(p) = &web.pool {
            if p.get_ref().is_empty() || p.get_ref().contains('/') {
                errs.push(src.error_at(p.span(), "pool must be a non-empty name without '/'"));
            }
        }
        let tls = match &n.tls {
            Some(t) => {
                let mut pem = |v: &Spanned<String>, what: &str| {
                    let p = base.join(v.get_ref());
                    if v.get_ref().is_empty() || !p.is_file() {
                        errs.push(src.error_at(
                            v.span(),
                            format!("tls {what} {} is not a file (PEM)", p.display()),
                        ));
                    }
                    p
                };
                Some(WebTls {
                    cert: pem(&t.cert, "cert"),
                    key: pem(&t.key, "key"),
                })
            }
            // `[tls] upstream`: the pair `rampart up` makes from the stack's CA (checked
            // when the node starts: the topology is validated before up makes it).
            None => upstream_tls(src, &file).map(|t| {
                let (cert, key) = t.web_pair(n.name.get_ref());
                WebTls { cert, key }
            }),
        };
        if !errs.is_empty() {
            return Err(ConfigError { diagnostics: errs });
        }
        Ok(WebConfig {
            name: n.name.get_ref().clone(),
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            root,
            upstream,
            served_by_header,
            drain,
            header_read_timeout,
            idle_timeout,
            database,
            registration,
            tls,
        })
    }
}

/// The file's `[tls]` when it has `upstream = true` (errors are its own validation's).
pub(crate) fn upstream_tls(
    src: &Source,
    file: &TopologyFile,
) -> Option<crate::security::TlsConfig> {
    let t = file.tls.as_ref()?;
    let mut elsewhere = Vec::new();
    crate::security::validate_tls(src, file.cluster.name.get_ref(), t, &mut elsewhere)
        .filter(|t| t.upstream)
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((h, p)) => !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn validate_db(
    src: &Source,
    d: &DatabaseSection,
    file: &TopologyFile,
    errs: &mut Vec<Diagnostic>,
) -> Option<DatabaseConfig> {
    let cluster = &file.cluster;
    let topology = match (d.agents.is_empty(), d.nodes.is_empty()) {
        (false, true) => {
            for a in &d.agents {
                if !a.get_ref().starts_with("http://") {
                    errs.push(
                        src.error_at(a.span(), "db agent URLs look like http://127.0.0.1:8008"),
                    );
                }
            }
            let agents: Vec<String> = d.agents.iter().map(|a| a.get_ref().clone()).collect();
            if cluster.etcd.is_empty() {
                DbTopology::Agents(agents)
            } else {
                // The agents post their records to the same etcd: watch it, and poll the
                // agents only while the watch is quiet.
                DbTopology::Etcd {
                    endpoints: cluster.etcd.iter().map(|e| e.get_ref().clone()).collect(),
                    cluster: cluster.name.get_ref().clone(),
                    agents,
                }
            }
        }
        (true, false) => {
            for n in &d.nodes {
                if !valid_host_port(n.get_ref()) {
                    errs.push(src.error_at(n.span(), "database nodes are HOST:PORT"));
                }
            }
            DbTopology::Nodes(d.nodes.iter().map(|a| a.get_ref().clone()).collect())
        }
        (true, true) if !cluster.etcd.is_empty() => DbTopology::Etcd {
            endpoints: cluster.etcd.iter().map(|e| e.get_ref().clone()).collect(),
            cluster: cluster.name.get_ref().clone(),
            agents: Vec::new(),
        },
        _ => {
            errs.push(src.error(
                "[web.database] needs exactly one of agents = [...] or nodes = [...] \
                 (or neither, to read the db agents' records from the [cluster] etcd)",
            ));
            return None;
        }
    };
    let mut c = DatabaseConfig::new(topology);
    if let Some(u) = &d.user {
        c.user = u.clone();
    }
    if let Some(n) = &d.dbname {
        c.dbname = n.clone();
    }
    if let Some(env) = &d.password_env {
        match std::env::var(env.get_ref()) {
            Ok(p) => c.password = Some(p),
            Err(_) => errs.push(src.error_at(
                env.span(),
                format!("environment variable {} is not set", env.get_ref()),
            )),
        }
    } else if let Some(db) = &file.db {
        // The db agents of the same file create the superuser with this password (scram),
        // so `rampart up` needs no environment variable. Validated by the [db] section.
        c.password = Some(
            db.superuser_password
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_else(|| "rampart".to_string()),
        );
    }
    if let Some(db) = &file.db {
        // The lease of the agents of the same file (default 3 s); a bad value is
        // reported by the [db] section's own validation.
        let ttl = match &db.ttl {
            Some(t) => crate::lb::parse_duration(t.get_ref()).ok(),
            None => Some(Duration::from_secs(3)),
        };
        c.call_timeout = call_timeout(ttl);
    }
    if let Some(l) = d.max_lag_bytes {
        c.max_lag_bytes = l;
    }
    if let Some(w) = &d.read_wait_ms {
        if *w.get_ref() > 60_000 {
            errs.push(src.error_at(w.span(), "read_wait_ms must be at most 60000"));
        }
        c.read_wait = Duration::from_millis(*w.get_ref());
    }
    if let Some(p) = &d.pool_size {
        if *p.get_ref() == 0 || *p.get_ref() > 1000 {
            errs.push(src.error_at(p.span(), "pool_size must be 1..=1000"));
        }
        c.pool_size = *p.get_ref() as usize;
    }
    if let (Some(t), Some(_)) = (&file.tls, &file.db) {
        // [tls] errors are reported by its own validation.
        let mut elsewhere = Vec::new();
        c.tls_ca = crate::security::validate_tls(src, cluster.name.get_ref(), t, &mut elsewhere)
            .filter(|t| t.replication)
            .map(|t| t.trust_file());
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source::new(std::env::temp_dir().join("topology.toml"), text)
    }

    #[test]
    fn a_full_node_validates() {
        let root = std::env::temp_dir();
        let s = src(&format!(
            "[cluster]\nname = \"main\"\netcd = [\"http://127.0.0.1:2379\"]\n[web]\nroot = {:?}\npool = \"front\"\n\
             [web.database]\nnodes = [\"127.0.0.1:5432\", \"127.0.0.1:5433\"]\nread_wait_ms = 50\n\
             [[web.node]]\nname = \"web1\"\nlisten = \"127.0.0.1:8081\"\nweight = 7\n",
            root.display().to_string()
        ));
        let c = WebConfig::from_source(&s, "web1").expect("valid");
        assert_eq!(c.listen.port(), 8081);
        let r = c.registration.expect("registration");
        assert_eq!(
            (r.cluster.as_str(), r.pool.as_str(), r.weight),
            ("main", "front", 7)
        );
        let d = c.database.expect("db");
        assert_eq!(d.read_wait, Duration::from_millis(50));
        assert!(matches!(d.topology, DbTopology::Nodes(ref n) if n.len() == 2));
    }

    #[test]
    fn errors_name_line_and_column() {
        let s = src("[cluster]\nname = \"main\"\n[web]\nroot = \"/\"\n[[web.node]]\nname = \"web1\"\nlisten = \"nope\"\n");
        let e = WebConfig::from_source(&s, "web1").expect_err("invalid");
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.col), (7, 10), "{e}");
        assert!(d.message.contains("IP:PORT"));
    }

    #[test]
    fn unknown_node_and_both_db_sources_are_errors() {
        let s = src("[cluster]\nname = \"m\"\n[web]\nroot = \"/\"\n[[web.node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        let e = WebConfig::from_source(&s, "b").expect_err("invalid");
        assert!(e.to_string().contains("no [[web.node]] named \"b\""), "{e}");
        let s = src("[cluster]\nname = \"m\"\n[web]\nroot = \"/\"\n[web.database]\nagents = [\"http://x:1\"]\nnodes = [\"x:1\"]\n[[web.node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        let e = WebConfig::from_source(&s, "a").expect_err("invalid");
        assert!(e.to_string().contains("exactly one of"), "{e}");
        let s = src("[cluster]\nname = \"m\"\netcd = [\"http://127.0.0.1:2379\"]\n[web]\nroot = \"/\"\n[web.database]\n[[web.node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        let c = WebConfig::from_source(&s, "a").expect("etcd source");
        assert_eq!(
            c.database.map(|d| d.topology),
            Some(DbTopology::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                cluster: "m".into(),
                agents: vec![]
            })
        );
        // Agents and etcd: watch etcd, poll the agents as the fallback.
        let s = src("[cluster]\nname = \"m\"\netcd = [\"http://127.0.0.1:2379\"]\n[web]\nroot = \"/\"\n[web.database]\nagents = [\"http://127.0.0.1:8008\"]\n[[web.node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n");
        let c = WebConfig::from_source(&s, "a").expect("etcd and agents");
        assert_eq!(
            c.database.map(|d| d.topology),
            Some(DbTopology::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                cluster: "m".into(),
                agents: vec!["http://127.0.0.1:8008".into()]
            })
        );
    }

    #[test]
    fn password_comes_from_the_db_section_without_password_env() {
        let base = "[cluster]\nname = \"m\"\n[web]\nroot = \"/\"\n[web.database]\nnodes = [\"127.0.0.1:5432\"]\n\
                    [[web.node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n";
        let pw = |text: &str| {
            WebConfig::from_source(&src(text), "a")
                .expect("valid")
                .database
                .expect("db")
                .password
        };
        assert_eq!(pw(base), None, "no [db] section: no password");
        assert_eq!(
            pw(&format!("{base}[db]\n")),
            Some("rampart".to_string()),
            "the db agents' default superuser password"
        );
        assert_eq!(
            pw(&format!("{base}[db]\nsuperuser_password = \"s3cret\"\n")),
            Some("s3cret".to_string())
        );
        std::env::set_var("RAMPART_WEB_TEST_PW_ENV", "from-env");
        let with_env = base.replace(
            "nodes = [",
            "password_env = \"RAMPART_WEB_TEST_PW_ENV\"\nnodes = [",
        );
        assert_eq!(
            pw(&format!(
                "{with_env}[db]\nsuperuser_password = \"s3cret\"\n"
            )),
            Some("from-env".to_string()),
            "password_env wins"
        );
    }

    #[test]
    fn unknown_keys_are_positioned() {
        let s = src("[cluster]\nname = \"m\"\n[web]\nroot = \"/\"\nrooot = 1\n");
        let e = WebConfig::from_source(&s, "a").expect_err("invalid");
        assert_eq!(e.diagnostics[0].line, 5, "{e}");
    }

    #[test]
    fn timeouts_default_and_validate() {
        let base = "[cluster]\nname = \"m\"\n[web]\nroot = \"/\"\n";
        let node = "[[web.node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n";
        let c = WebConfig::from_source(&src(&format!("{base}{node}")), "a").expect("valid");
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        let c = WebConfig::from_source(
            &src(&format!(
                "{base}header_read_timeout_seconds = 0.5\nidle_timeout_seconds = 2\n{node}"
            )),
            "a",
        )
        .expect("valid");
        assert_eq!(c.header_read_timeout, Duration::from_millis(500));
        assert_eq!(c.idle_timeout, Duration::from_secs(2));
        for bad in ["0.0", "-1.0", "3601.0", "nan"] {
            let e = WebConfig::from_source(
                &src(&format!("{base}idle_timeout_seconds = {bad}\n{node}")),
                "a",
            )
            .expect_err(bad);
            let d = &e.diagnostics[0];
            assert_eq!((d.line, d.col), (5, 24), "{e}");
            assert!(d.message.contains("idle_timeout_seconds"), "{e}");
        }
    }

    #[test]
    fn https_pairs_name_their_mistakes_and_upstream_derives_them() {
        let dir = tempfile_dir("web-tls");
        std::fs::write(dir.join("w.crt"), "x").expect("temp file");
        std::fs::write(dir.join("w.key"), "x").expect("temp file");
        let at = |text: &str| Source::new(dir.join("t.toml"), text);
        let base = "[cluster]\nname = \"m\"\n[web]\nroot = \"/\"\n[[web.node]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n";
        let c = WebConfig::from_source(
            &at(&format!(
                "{base}tls = {{ cert = \"w.crt\", key = \"w.key\" }}\n"
            )),
            "a",
        )
        .expect("valid");
        assert_eq!(
            c.tls,
            Some(WebTls {
                cert: dir.join("w.crt"),
                key: dir.join("w.key")
            })
        );
        let e = WebConfig::from_source(
            &at(&format!(
                "{base}tls = {{ cert = \"w.crt\", key = \"nope.key\" }}\n"
            )),
            "a",
        )
        .expect_err("missing key");
        let d = &e.diagnostics[0];
        assert_eq!((d.line, d.col), (8, 31), "{e}");
        assert!(d.message.contains("tls key"), "{e}");
        let e = WebConfig::from_source(&at(&format!("{base}tls = {{ cert = \"w.crt\" }}\n")), "a")
            .expect_err("no key");
        assert_eq!(e.diagnostics[0].line, 8, "{e}");
        // [tls] upstream with the stack's CA: up's pair; without it, plain.
        let c = WebConfig::from_source(&at(base), "a").expect("valid");
        assert_eq!(c.tls, None);
        let c = WebConfig::from_source(
            &at(&format!(
                "{base}[tls]\nself_signed = true\nupstream = true\n"
            )),
            "a",
        )
        .expect("valid");
        let tls_dir = dir.join(".rampart/m/tls");
        assert_eq!(
            c.tls,
            Some(WebTls {
                cert: tls_dir.join("web-a.crt"),
                key: tls_dir.join("web-a.key")
            })
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rampart-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp file");
        d
    }

    #[test]
    fn header_names() {
        assert!(http_header::Name::parse("X-Node").is_some());
        assert!(http_header::Name::parse("bad header").is_none());
        assert!(http_header::Name::parse("").is_none());
    }

    #[test]
    fn the_call_bound_follows_the_lease() {
        assert_eq!(call_timeout(None), Duration::from_secs(2));
        assert_eq!(
            call_timeout(Some(Duration::from_secs(3))),
            Duration::from_millis(1500)
        );
        assert_eq!(
            call_timeout(Some(Duration::from_secs(1))),
            Duration::from_millis(500)
        );
        assert_eq!(
            call_timeout(Some(Duration::from_secs(30))),
            Duration::from_secs(2)
        );
    }
}
