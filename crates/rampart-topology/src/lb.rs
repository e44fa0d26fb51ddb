//! The load balancer's configuration: listeners, pools, limits. Owned by the lb work.
//!
//! Two ways in, one runtime type out ([`LbConfig`]):
//! - a TOML file ([`LbConfig::load`] / [`LbConfig::from_source`]): parsed into the raw
//!   `Raw*` structs with positions, then validated; every error names `file:line:col`;
//! - the quick mode of the command line ([`LbConfig::quick`]): one listener, one pool.
//!
//! The runtime types hold only checked values: socket addresses, durations, indices
//! into `pools` that exist, weights within bounds, algorithms by enum.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use rampart_balance::Algorithm;
use serde::Deserialize;
use toml::Spanned;

use crate::diag::{ConfigError, Diagnostic, Source};

pub mod firewall;

/// Highest server weight accepted (HAProxy's bound).
pub const MAX_WEIGHT: u32 = 256;

// ===================================================================================
// Runtime types
// ===================================================================================

/// A whole, valid load balancer configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LbConfig {
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
    /// Global limit on client connections across all listeners.
    pub max_connections: usize,
    /// Peers whose incoming `X-Forwarded-For` chain is kept and appended to, and whose
    /// `X-Forwarded-Proto`/`-Host`, `Forwarded` and `X-Real-IP` are kept (others' are
    /// replaced by what the balancer saw, `Forwarded` dropped).
    pub trusted_proxies: Vec<Cidr>,
    /// The admin listener (state, stats page, metrics, runtime control); off when `None`.
    pub admin: Option<AdminConfig>,
    /// On SIGTERM (or after handing the sockets to a new process), how long in-flight
    /// requests and connections may take to finish.
    pub grace: Duration,
    /// One line per request, when set.
    pub access_log: Option<AccessLog>,
    /// Virtual routers (`[[vrrp]]`): the virtual IPs this balancer shares with its peers.
    pub vrrp: Vec<crate::vrrp::VrrpInstance>,
}

/// `[admin]`: where the admin API listens and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    pub token: Option<TokenSource>,
    /// Client networks allowed (others get 403).
    pub allow: Vec<Cidr>,
}

/// Where the admin bearer token is read from at start-up (never the config file itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(std::path::PathBuf),
    Env(String),
}

/// `[access_log]`: one structured line per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub format: AccessLogFormat,
    /// A file to append to; standard output when `None`.
    pub path: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    Logfmt,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(Mode::Http),
            "tcp" => Ok(Mode::Tcp),
            _ => Err(format!(
                "unknown mode \"{s}\"; expected \"http\" or \"tcp\""
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub mode: Mode,
    /// Index into [`LbConfig::pools`]; always valid.
    pub pool: usize,
    /// Limit on this listener's client connections (the global limit applies too).
    pub max_connections: Option<usize>,
    /// Time allowed for a client to send a complete request head (HTTP).
    pub header_read_timeout: Duration,
    /// An idle keep-alive client connection (HTTP) or an idle TCP session is closed after this.
    pub idle_timeout: Duration,
    /// HTTPS: TLS is terminated here (HTTP mode only).
    pub tls: Option<ListenerTls>,
    /// A plain-HTTP listener that answers every request with a redirect to HTTPS (made
    /// from a TLS listener's `redirect_from`, named `<name>-redirect`).
    pub redirect_https: Option<RedirectHttps>,
    /// The L7 firewall (`firewall = { ... }`).
    pub firewall: Option<firewall::Firewall>,
}

mod acme;
mod tls;
pub use acme::{Acme, AcmeShare, Challenge, RawAcme, DEFAULT_RENEW_BEFORE};
pub use tls::{
    CertFiles, ListenerTls, PoolTls, RawCert, RawListenerTls, RawPoolTls, Resumption,
    DEFAULT_SESSION_CACHE, DEFAULT_TICKET_ROTATE,
};

/// Where a redirecting plain-HTTP listener sends clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectHttps {
    /// The HTTPS listener's port (left out of the `Location` when 443).
    pub port: u16,
    /// 301 or 308.
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub algorithm: Algorithm,
    /// Never empty; names and addresses are unique within the pool.
    pub servers: Vec<Server>,
    pub health_check: HealthCheck,
    /// `passive_failures = 3`: consecutive failures to *connect* (refused, timed out,
    /// unreachable) that eject a server at once (0: never). Before outlier detection this
    /// counted 5xx answers too and marked the server down until `rise` checks passed; a
    /// client can provoke 5xx answers, so they now only feed the failure-ratio detection
    /// of [`Pool::outlier`], and the ejection ends by time (or by `rise` passing checks).
    pub passive_failures: u32,
    /// `[pool.outlier]`: passive outlier detection (Envoy's), see [`OutlierConfig`].
    pub outlier: OutlierConfig,
    /// `panic_threshold = 0` (percent, 0..=100): when fewer than this share of the servers
    /// in service (ready, weight above 0) are available (healthy and not ejected), the pool
    /// balances over all of them, healthy or not (some answers beat none). 0, the default,
    /// never panics: a pool whose servers are all down answers 503.
    pub panic_threshold: u32,
    /// A server that comes up ramps from ~weight/10 to its weight over this window (0 = off).
    pub slow_start: Duration,
    /// `lrt_decay = "5s"`: time constant of least-response-time's Peak-EWMA estimate (how
    /// fast a peak, or a failure's penalty, is forgotten).
    pub lrt_decay: Duration,
    /// `lrt_penalty`: the response time least-response-time records for an attempt that got
    /// no answer (connect refused or timed out, response timeout, connection lost before the
    /// answer); unset: the pool's response timeout.
    pub lrt_penalty: Option<Duration>,
    /// Requests (HTTP) or connections (TCP) a server takes at once; more wait in the queue.
    pub max_in_flight: Option<u32>,
    pub queue: QueueConfig,
    pub retries: RetryConfig,
    pub timeouts: PoolTimeouts,
    /// Servers registered in etcd join the pool (besides `servers`).
    pub discovery: Option<Discovery>,
    /// `tls = { ca = ... }`: TLS to the servers, see [`PoolTls`].
    pub tls: Option<PoolTls>,
}

/// `[pool.outlier]`: which servers passive evidence (what real requests get) takes out of
/// rotation. A server is *ejected* (no new requests; health checks go on) when
///
/// * it failed `passive_failures` times in a row to connect (see [`Pool::passive_failures`]),
///   or
/// * in the last `interval`, with at least `min_requests` requests, its failure ratio
///   (5xx answers, response timeouts, connections lost before the answer, connect
///   failures) is at least `failure_percent` **and** more than `margin_percent` points
///   above the mean of its peers' (the other servers with `min_requests`). Servers that
///   fail alike (one URL that fails on every server) are never ejected.
///
/// At most `max_ejection_percent` of the pool is ejected at once (rounded down: at 50 %,
/// 1 of 2 or 3 servers, never the only one). The k-th ejection of a server lasts
/// `base_ejection_time * k`, capped at `max_ejection_time` (k drops by one per quiet
/// `interval`); a server ejected for connect failures also returns once `rise` health
/// checks pass. Fields and defaults:
///
/// ```toml
/// [pool.outlier]
/// interval = "10s"              # failure-ratio window
/// min_requests = 20             # per server and window, to be judged
/// failure_percent = 50          # floor; 0 turns failure-ratio ejection off
/// margin_percent = 30           # above the peers' mean failure ratio (points)
/// max_ejection_percent = 50     # 0 turns every ejection off
/// base_ejection_time = "30s"
/// max_ejection_time = "5m"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    pub interval: Duration,
    pub min_requests: u32,
    pub failure_percent: u32,
    pub margin_percent: u32,
    pub max_ejection_percent: u32,
    pub base_ejection_time: Duration,
    /// Never below `base_ejection_time`.
    pub max_ejection_time: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            interval: Duration::from_secs(10),
            min_requests: 20,
            failure_percent: 50,
            margin_percent: 30,
            max_ejection_percent: 50,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
        }
    }
}

/// `discovery = { etcd = [...], cluster = "...", service = "..." }`: the pool also takes
/// the servers registered under `/rampart/<cluster>/services/<service>/` (what
/// `rampart web` registers), adding them as they appear and draining them when their
/// lease ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub etcd: Vec<String>,
    pub cluster: String,
    /// The service (pool) name in the key; default: the pool's name.
    pub service: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub address: SocketAddr,
    /// 0..=MAX_WEIGHT; 0 takes no new traffic.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    None,
    Tcp,
    Http { path: String, expect_status: u16 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up (>= 1).
    pub rise: u32,
    /// Consecutive failures that take an up server down (>= 1).
    pub fall: u32,
    /// Each interval is lengthened by a random amount up to this.
    pub jitter: Duration,
}

impl HealthCheck {
    pub fn with_kind(kind: CheckKind) -> Self {
        HealthCheck {
            kind,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: Duration::from_millis(200),
        }
    }
}

/// The `--health-check` argument: `http:/PATH`, `tcp` or `none`.
impl FromStr for CheckKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(CheckKind::None),
            "tcp" => Ok(CheckKind::Tcp),
            _ => match s.strip_prefix("http:") {
                Some(path) if path.starts_with('/') => Ok(CheckKind::Http {
                    path: path.to_string(),
                    expect_status: 200,
                }),
                _ => Err(format!(
                    "unknown health check \"{s}\"; expected \"http:/PATH\", \"tcp\" or \"none\""
                )),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Requests that may wait for a free slot when every eligible server is at `max_in_flight`.
    pub size: usize,
    /// A request that waited this long gets a 503.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first try, each on another server.
    pub attempts: u32,
    /// Retries allowed as a fraction of requests (plus `min_per_sec`).
    pub budget_ratio: f64,
    pub min_per_sec: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeouts {
    pub connect: Duration,
    /// Time from sending a request to the upstream's response head.
    pub response: Duration,
    /// A pooled idle upstream connection is closed after this.
    pub idle: Duration,
}

/// An IPv4 or IPv6 network, e.g. `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network's address (as written: host bits are not cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Every address of `other` is in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad network \"{s}\"; expected e.g. \"10.0.0.0/8\" or \"::1\"");
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parse a duration such as `"2s"`, `"500ms"`, `"1m"`, `"1h"`, `"250us"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("bad duration \"{s}\"; expected a number with a unit: ms, s, m, h or d (e.g. \"500ms\", \"2s\")")
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

// ===================================================================================
// Defaults
// ===================================================================================

const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT: Duration = Duration::from_secs(2);
const DEFAULT_RESPONSE: Duration = Duration::from_secs(30);
const DEFAULT_UPSTREAM_IDLE: Duration = Duration::from_secs(30);
/// Least-response-time's Peak-EWMA time constant (the value before it was configurable).
const DEFAULT_LRT_DECAY: Duration = Duration::from_secs(5);
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            size: 1024,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            budget_ratio: 0.2,
            min_per_sec: 10,
        }
    }
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        PoolTimeouts {
            connect: DEFAULT_CONNECT,
            response: DEFAULT_RESPONSE,
            idle: DEFAULT_UPSTREAM_IDLE,
        }
    }
}

// ===================================================================================
// Raw file (as written, with positions)
// ===================================================================================

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLbFile {
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub pool: Vec<RawPool>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub forwarded: Option<RawForwarded>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub shutdown: Option<RawShutdown>,
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub vrrp: Vec<crate::vrrp::RawVrrp>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Spanned<String>,
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
    #[serde(default)]
    pub token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    /// Accept a non-loopback address without a token (not recommended).
    #[serde(default)]
    pub public_without_token: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    #[serde(default)]
    pub grace: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    #[serde(default)]
    pub format: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    pub pool: Spanned<String>,
    #[serde(default)]
    pub max_connections: Option<Spanned<i64>>,
    #[serde(default)]
    pub timeouts: Option<RawListenerTimeouts>,
    #[serde(default)]
    pub tls: Option<Spanned<RawListenerTls>>,
    #[serde(default)]
    pub firewall: Option<firewall::RawFirewall>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTimeouts {
    #[serde(default)]
    pub header_read: Option<Spanned<String>>,
    #[serde(default)]
    pub idle: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: Spanned<String>,
    #[serde(default)]
    pub algorithm: Option<Spanned<String>>,
    pub servers: Spanned<Vec<RawServer>>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub passive_failures: Option<Spanned<i64>>,
    #[serde(default)]
    pub outlier: Option<RawOutlier>,
    #[serde(default)]
    pub panic_threshold: Option<Spanned<i64>>,
    #[serde(default)]
    pub slow_start: Option<Spanned<String>>,
    #[serde(default)]
    pub lrt_decay: Option<Spanned<String>>,
    #[serde(default)]
    pub lrt_penalty: Option<Spanned<String>>,
    #[serde(default)]
    pub max_in_flight: Option<Spanned<i64>>,
    #[serde(default)]
    pub queue: Option<RawQueue>,
    #[serde(default)]
    pub retries: Option<RawRetries>,
    #[serde(default)]
    pub timeouts: Option<RawPoolTimeouts>,
    #[serde(default)]
    pub discovery: Option<RawDiscovery>,
    #[serde(default)]
    pub tls: Option<RawPoolTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub etcd: Spanned<Vec<Spanned<String>>>,
    pub cluster: Spanned<String>,
    #[serde(default)]
    pub service: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: Option<Spanned<String>>,
    pub address: Spanned<String>,
    #[serde(default)]
    pub weight: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default)]
    pub kind: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub expect_status: Option<Spanned<i64>>,
    #[serde(default)]
    pub interval: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub rise: Option<Spanned<i64>>,
    #[serde(default)]
    pub fall: Option<Spanned<i64>>,
    #[serde(default)]
    pub jitter: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    #[serde(default)]
    pub interval: Option<Spanned<String>>,
    #[serde(default)]
    pub min_requests: Option<Spanned<i64>>,
    #[serde(default)]
    pub failure_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub margin_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_ejection_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub base_ejection_time: Option<Spanned<String>>,
    #[serde(default)]
    pub max_ejection_time: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    #[serde(default)]
    pub size: Option<Spanned<i64>>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    #[serde(default)]
    pub attempts: Option<Spanned<i64>>,
    #[serde(default)]
    pub budget_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    pub min_per_sec: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTimeouts {
    #[serde(default)]
    pub connect: Option<Spanned<String>>,
    #[serde(default)]
    pub response: Option<Spanned<String>>,
    #[serde(default)]
    pub idle: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    #[serde(default)]
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwarded {
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

// ===================================================================================
// Validation
// ===================================================================================

/// Collects diagnostics while validating, so one run reports every problem.
struct Checker<'a> {
    src: &'a Source,
    errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn err<T>(&mut self, at: &Spanned<T>, msg: impl Into<String>) {
        self.errors.push(self.src.error_at(at.span(), msg));
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(s) = v else { return default };
        match parse_duration(s.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.err(s, e);
                default
            }
        }
    }

    /// A positive duration (a zero timeout or interval makes no sense).
    fn positive_duration(
        &mut self,
        v: &Option<Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Duration {
        let d = self.duration(v, default);
        if d.is_zero() {
            if let Some(s) = v {
                self.err(s, format!("{what} must be greater than zero"));
            }
            return default;
        }
        d
    }

    fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        default: i64,
        min: i64,
        max: i64,
        what: &str,
    ) -> i64 {
        let Some(n) = v else { return default };
        let x = *n.get_ref();
        if x < min || x > max {
            self.err(
                n,
                format!("{what} must be between {min} and {max}, got {x}"),
            );
            return default.clamp(min, max);
        }
        x
    }

    fn socket_addr(&mut self, v: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    v,
                    format!(
                        "bad {what} address \"{}\"; expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }
}

impl LbConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<LbConfig, ConfigError> {
        let src = Source::read(path)?;
        LbConfig::from_source(&src)
    }

    /// Parse and validate a config file's text.
    pub fn from_source(src: &Source) -> Result<LbConfig, ConfigError> {
        let raw: RawLbFile = src.parse()?;
        LbConfig::validate(src, &raw)
    }

    /// Validate a parsed file into the runtime type; every problem is reported.
    pub fn validate(src: &Source, raw: &RawLbFile) -> Result<LbConfig, ConfigError> {
        let mut c = Checker {
            src,
            errors: Vec::new(),
        };

        // Pools first: listeners refer to them by name.
        let mut pool_index: HashMap<&str, usize> = HashMap::new();
        let mut pools = Vec::new();
        for rp in &raw.pool {
            let name = rp.name.get_ref().as_str();
            if name.is_empty() {
                c.err(&rp.name, "pool name must not be empty");
            }
            if pool_index.insert(name, pools.len()).is_some() {
                c.err(&rp.name, format!("duplicate pool name \"{name}\""));
            }
            pools.push(validate_pool(&mut c, rp));
        }

        let mut listeners = Vec::new();
        let mut listener_names: HashMap<&str, ()> = HashMap::new();
        let mut listener_addrs: HashMap<SocketAddr, ()> = HashMap::new();
        for rl in &raw.listener {
            let name = rl.name.get_ref().as_str();
            if name.is_empty() {
                c.err(&rl.name, "listener name must not be empty");
            }
            if listener_names.insert(name, ()).is_some() {
                c.err(&rl.name, format!("duplicate listener name \"{name}\""));
            }
            let address = c.socket_addr(&rl.address, "listener");
            if let Some(a) = address {
                if listener_addrs.insert(a, ()).is_some() {
                    c.err(&rl.address, format!("duplicate listener address {a}"));
                }
            }
            let mode = match &rl.mode {
                None => Mode::Http,
                Some(m) => match m.get_ref().parse::<Mode>() {
                    Ok(m) => m,
                    Err(e) => {
                        c.err(m, e);
                        Mode::Http
                    }
                },
            };
            let pool = match pool_index.get(rl.pool.get_ref().as_str()) {
                Some(i) => {
                    if mode == Mode::Tcp
                        && pools
                            .get(*i)
                            .and_then(Option::as_ref)
                            .is_some_and(|p: &Pool| p.tls.is_some())
                    {
                        c.err(
                            &rl.pool,
                            "a pool with tls serves HTTP listeners only (TLS to the servers is for mode = \"http\")",
                        );
                    }
                    Some(*i)
                }
                None => {
                    let mut known: Vec<&str> =
                        raw.pool.iter().map(|p| p.name.get_ref().as_str()).collect();
                    known.sort_unstable();
                    let known = if known.is_empty() {
                        "no pool is defined (add a [[pool]])".to_string()
                    } else {
                        format!("defined pools: {}", known.join(", "))
                    };
                    c.err(
                        &rl.pool,
                        format!("unknown pool \"{}\"; {known}", rl.pool.get_ref()),
                    );
                    None
                }
            };
            let max_connections = rl
                .max_connections
                .as_ref()
                .map(|_| c.int(&rl.max_connections, 1, 1, 1_000_000, "max_connections") as usize);
            let t = rl.timeouts.as_ref();
            let header_read_timeout = c.positive_duration(
                &t.and_then(|t| t.header_read.clone()),
                DEFAULT_HEADER_READ,
                "header_read",
            );
            let idle_timeout =
                c.positive_duration(&t.and_then(|t| t.idle.clone()), DEFAULT_CLIENT_IDLE, "idle");
            let mut tls = None;
            let mut redirect = None;
            if let Some(rt) = &rl.tls {
                if mode != Mode::Http {
                    c.err(
                        rt,
                        "tls needs mode = \"http\" (TLS is terminated for HTTP listeners)",
                    );
                }
                let t = rt.get_ref();
                let checked = tls::listener_tls(&mut c, rt);
                if let Some(from) = &t.redirect_from {
                    if let Some(a) = c.socket_addr(from, "redirect_from") {
                        if listener_addrs.insert(a, ()).is_some() {
                            c.err(from, format!("duplicate listener address {a}"));
                        }
                        let status = match &t.redirect_status {
                            None => 308,
                            Some(st) if matches!(*st.get_ref(), 301 | 308) => *st.get_ref() as u16,
                            Some(st) => {
                                c.err(
                                    st,
                                    format!(
                                        "redirect_status must be 301 or 308, got {}",
                                        st.get_ref()
                                    ),
                                );
                                308
                            }
                        };
                        redirect = Some((a, status));
                    }
                } else if let Some(st) = &t.redirect_status {
                    c.err(st, "redirect_status needs redirect_from = \"ADDR\"");
                }
                tls = Some(checked);
            }
            let firewall = rl.firewall.as_ref().map(|f| {
                if mode != Mode::Http {
                    if let Some(r) = &f.rate {
                        c.err(r, "rate limits need mode = \"http\" (they count requests)");
                    }
                }
                firewall::validate(&mut c, f, src.file.parent().unwrap_or(Path::new("")))
            });
            if let (Some(address), Some(pool)) = (address, pool) {
                listeners.push(Listener {
                    name: name.to_string(),
                    address,
                    mode,
                    pool,
                    max_connections,
                    header_read_timeout,
                    idle_timeout,
                    tls,
                    redirect_https: None,
                    firewall,
                });
                if let Some((from, status)) = redirect {
                    listeners.push(Listener {
                        name: format!("{name}-redirect"),
                        address: from,
                        mode: Mode::Http,
                        pool,
                        max_connections,
                        header_read_timeout,
                        idle_timeout,
                        tls: None,
                        redirect_https: Some(RedirectHttps {
                            port: address.port(),
                            status,
                        }),
                        firewall: None,
                    });
                }
            }
        }
        if raw.listener.is_empty() {
            c.errors.push(
                src.error("no listener is defined; add a [[listener]] with name, address and pool"),
            );
        }

        let max_connections = raw
            .limits
            .as_ref()
            .map(|l| {
                c.int(
                    &l.max_connections,
                    DEFAULT_MAX_CONNECTIONS as i64,
                    1,
                    10_000_000,
                    "max_connections",
                )
            })
            .unwrap_or(DEFAULT_MAX_CONNECTIONS as i64) as usize;

        let mut trusted_proxies = Vec::new();
        for t in raw.forwarded.iter().flat_map(|f| f.trusted_proxies.iter()) {
            match t.get_ref().parse::<Cidr>() {
                Ok(n) => trusted_proxies.push(n),
                Err(e) => c.err(t, e),
            }
        }
        if trusted_proxies.is_empty() {
            // Nobody's X-Forwarded-For would be believed: the setting would do nothing.
            for f in raw.listener.iter().filter_map(|l| l.firewall.as_ref()) {
                if let Some(v) = f
                    .client_address
                    .as_ref()
                    .filter(|v| v.get_ref() == "x-forwarded-for")
                {
                    c.err(
                        v,
                        "client_address = \"x-forwarded-for\" needs the proxies it believes: \
                         forwarded = { trusted_proxies = [\"10.0.0.0/8\"] }",
                    );
                }
            }
        }

        let admin = raw.admin.as_ref().and_then(|a| validate_admin(&mut c, a));
        let grace = c.duration(
            &raw.shutdown.as_ref().and_then(|s| s.grace.clone()),
            DEFAULT_GRACE,
        );
        let access_log = raw.access_log.as_ref().map(|a| AccessLog {
            format: match &a.format {
                None => AccessLogFormat::Json,
                Some(f) => match f.get_ref().as_str() {
                    "json" => AccessLogFormat::Json,
                    "logfmt" => AccessLogFormat::Logfmt,
                    other => {
                        c.err(
                            f,
                            format!("unknown access log format \"{other}\"; expected \"json\" or \"logfmt\""),
                        );
                        AccessLogFormat::Json
                    }
                },
            },
            path: a
                .path
                .as_ref()
                .map(|p| resolve(c.src, p.get_ref())),
        });

        let listener_names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let vrrp = crate::vrrp::validate(src, &raw.vrrp, &listener_names, &mut c.errors);

        let pools: Vec<Pool> = pools.into_iter().flatten().collect();
        // Report in file order; problems without a position last.
        c.errors.sort_by_key(|d| (d.line == 0, d.line, d.col));
        if c.errors.is_empty() {
            Ok(LbConfig {
                listeners,
                pools,
                max_connections,
                trusted_proxies,
                admin,
                grace,
                access_log,
                vrrp,
            })
        } else {
            Err(ConfigError {
                diagnostics: c.errors,
            })
        }
    }

    /// The quick mode: one listener in front of one pool, everything else default.
    pub fn quick(
        listen: SocketAddr,
        backends: &[SocketAddr],
        algorithm: Algorithm,
        mode: Mode,
        check: CheckKind,
    ) -> Result<LbConfig, String> {
        if backends.is_empty() {
            return Err("at least one --backend is required".into());
        }
        let mut servers: Vec<Server> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            if servers.iter().any(|s| s.address == *b) {
                return Err(format!("--backend {b} is given twice"));
            }
            servers.push(Server {
                name: format!("s{}", i + 1),
                address: *b,
                weight: 1,
            });
        }
        Ok(LbConfig {
            listeners: vec![Listener {
                name: "main".into(),
                address: listen,
                mode,
                pool: 0,
                max_connections: None,
                header_read_timeout: DEFAULT_HEADER_READ,
                idle_timeout: DEFAULT_CLIENT_IDLE,
                tls: None,
                redirect_https: None,
                firewall: None,
            }],
            pools: vec![Pool {
                name: "backends".into(),
                algorithm,
                servers,
                health_check: HealthCheck::with_kind(check),
                passive_failures: 3,
                outlier: OutlierConfig::default(),
                panic_threshold: 0,
                slow_start: Duration::ZERO,
                lrt_decay: DEFAULT_LRT_DECAY,
                lrt_penalty: None,
                max_in_flight: None,
                queue: QueueConfig::default(),
                retries: RetryConfig::default(),
                timeouts: PoolTimeouts::default(),
                discovery: None,
                tls: None,
            }],
            max_connections: DEFAULT_MAX_CONNECTIONS,
            trusted_proxies: Vec::new(),
            admin: None,
            grace: DEFAULT_GRACE,
            access_log: None,
            vrrp: Vec::new(),
        })
    }
}

impl AdminConfig {
    /// An admin listener on `address` for the command line: loopback clients only, no token.
    pub fn local(address: SocketAddr) -> AdminConfig {
        AdminConfig {
            address,
            token: None,
            allow: loopback_networks(),
        }
    }

    /// An admin listener whose every call needs the token in `file`: loopback clients
    /// only on a loopback address, any client (the token guards it, the firewall narrows
    /// who reaches it) on another.
    pub fn with_token_file(address: SocketAddr, file: std::path::PathBuf) -> AdminConfig {
        let allow = if address.ip().is_loopback() {
            loopback_networks()
        } else {
            ["0.0.0.0/0", "::/0"]
                .iter()
                .filter_map(|c| c.parse::<Cidr>().ok())
                .collect()
        };
        AdminConfig {
            address,
            token: Some(TokenSource::File(file)),
            allow,
        }
    }
}

/// A path from a config file, relative to that file's folder.
pub fn resolve_path(src: &Source, p: &str) -> std::path::PathBuf {
    resolve(src, p)
}

/// A path from the config, relative to the config file's folder.
fn resolve(src: &Source, p: &str) -> std::path::PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match src.file.parent() {
        Some(d) => d.join(p),
        None => p.to_path_buf(),
    }
}

fn loopback_networks() -> Vec<Cidr> {
    vec![
        Cidr {
            addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

fn validate_admin(c: &mut Checker<'_>, a: &RawAdmin) -> Option<AdminConfig> {
    let address = c.socket_addr(&a.address, "admin")?;
    let token = match (&a.token_file, &a.token_env) {
        (Some(f), Some(_)) => {
            c.err(f, "give token_file or token_env, not both");
            None
        }
        (Some(f), None) => Some(TokenSource::File(resolve(c.src, f.get_ref()))),
        (None, Some(e)) => {
            if e.get_ref().is_empty() {
                c.err(e, "token_env must name an environment variable");
            }
            Some(TokenSource::Env(e.get_ref().clone()))
        }
        (None, None) => None,
    };
    let loopback = address.ip().is_loopback();
    if !loopback && token.is_none() && a.public_without_token != Some(true) {
        c.err(
            &a.address,
            format!(
                "admin address {address} is not loopback and no token is set; set token_file or token_env (or public_without_token = true to accept the risk)"
            ),
        );
    }
    let allow = match &a.allow {
        Some(list) => {
            let mut v = Vec::new();
            for n in list {
                match n.get_ref().parse::<Cidr>() {
                    Ok(n) => v.push(n),
                    Err(e) => c.err(n, e),
                }
            }
            v
        }
        None if loopback => loopback_networks(),
        None => vec![
            Cidr {
                addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            },
            Cidr {
                addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                prefix: 0,
            },
        ],
    };
    Some(AdminConfig {
        address,
        token,
        allow,
    })
}

fn validate_pool(c: &mut Checker<'_>, rp: &RawPool) -> Option<Pool> {
    let algorithm = match &rp.algorithm {
        None => Algorithm::RoundRobin,
        Some(a) => match a.get_ref().parse::<Algorithm>() {
            Ok(a) => a,
            Err(_) => {
                let valid: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
                c.err(
                    a,
                    format!(
                        "unknown algorithm \"{}\"; valid algorithms: {}",
                        a.get_ref(),
                        valid.join(", ")
                    ),
                );
                Algorithm::RoundRobin
            }
        },
    };

    let mut servers = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, ()> = HashMap::new();
    let discovery = rp.discovery.as_ref().map(|d| {
        if d.etcd.get_ref().is_empty() {
            c.err(&d.etcd, "discovery needs at least one etcd endpoint");
        }
        for e in d.etcd.get_ref() {
            if !(e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://")) {
                c.err(
                    e,
                    format!(
                        "bad etcd endpoint \"{}\"; expected a URL such as \"http://127.0.0.1:2379\"",
                        e.get_ref()
                    ),
                );
            }
        }
        if d.cluster.get_ref().is_empty() {
            c.err(&d.cluster, "discovery cluster must not be empty");
        }
        Discovery {
            etcd: d.etcd.get_ref().iter().map(|e| e.get_ref().clone()).collect(),
            cluster: d.cluster.get_ref().clone(),
            service: d
                .service
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| rp.name.get_ref().clone()),
        }
    });
    if rp.servers.get_ref().is_empty() && discovery.is_none() {
        c.err(
            &rp.servers,
            format!("pool \"{}\" has no servers", rp.name.get_ref()),
        );
    }
    for (i, rs) in rp.servers.get_ref().iter().enumerate() {
        let name = match &rs.name {
            Some(n) => {
                if n.get_ref().is_empty() {
                    c.err(n, "server name must not be empty");
                }
                if names.insert(n.get_ref().clone(), ()).is_some() {
                    c.err(
                        n,
                        format!(
                            "duplicate server name \"{}\" in pool \"{}\"",
                            n.get_ref(),
                            rp.name.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => {
                let n = format!("s{}", i + 1);
                names.insert(n.clone(), ());
                n
            }
        };
        let address = c.socket_addr(&rs.address, "server");
        if let Some(a) = address {
            if addrs.insert(a, ()).is_some() {
                c.err(
                    &rs.address,
                    format!(
                        "duplicate server address {a} in pool \"{}\"",
                        rp.name.get_ref()
                    ),
                );
            }
        }
        let weight = c.int(&rs.weight, 1, 0, i64::from(MAX_WEIGHT), "weight") as u32;
        if let Some(address) = address {
            servers.push(Server {
                name,
                address,
                weight,
            });
        }
    }

    let health_check = match &rp.health_check {
        None => HealthCheck::with_kind(CheckKind::Tcp),
        Some(h) => {
            let d = HealthCheck::with_kind(CheckKind::Tcp);
            let kind = match h.kind.as_ref().map(|k| k.get_ref().as_str()) {
                None | Some("tcp") => CheckKind::Tcp,
                Some("none") => CheckKind::None,
                Some("http") => {
                    let path = match &h.path {
                        None => "/".to_string(),
                        Some(p) => {
                            if !p.get_ref().starts_with('/') {
                                c.err(
                                    p,
                                    format!(
                                        "health check path must start with '/', got \"{}\"",
                                        p.get_ref()
                                    ),
                                );
                            }
                            p.get_ref().clone()
                        }
                    };
                    let expect_status =
                        c.int(&h.expect_status, 200, 100, 599, "expect_status") as u16;
                    CheckKind::Http {
                        path,
                        expect_status,
                    }
                }
                Some(other) => {
                    if let Some(k) = &h.kind {
                        c.err(k, format!("unknown health check kind \"{other}\"; expected \"http\", \"tcp\" or \"none\""));
                    }
                    CheckKind::Tcp
                }
            };
            if !matches!(kind, CheckKind::Http { .. }) {
                if let Some(p) = &h.path {
                    c.err(p, "path is only used by kind = \"http\" health checks");
                }
            }
            HealthCheck {
                kind,
                interval: c.positive_duration(&h.interval, d.interval, "interval"),
                timeout: c.positive_duration(&h.timeout, d.timeout, "timeout"),
                rise: c.int(&h.rise, i64::from(d.rise), 1, 1000, "rise") as u32,
                fall: c.int(&h.fall, i64::from(d.fall), 1, 1000, "fall") as u32,
                jitter: c.duration(&h.jitter, d.jitter),
            }
        }
    };

    let passive_failures = c.int(&rp.passive_failures, 3, 0, 1000, "passive_failures") as u32;
    let d = OutlierConfig::default();
    let outlier = match &rp.outlier {
        None => d,
        Some(o) => {
            let pct = |c: &mut Checker, v: &Option<Spanned<i64>>, def: u32, what: &str| {
                c.int(v, i64::from(def), 0, 100, what) as u32
            };
            let base_ejection_time = c.positive_duration(
                &o.base_ejection_time,
                d.base_ejection_time,
                "base_ejection_time",
            );
            let max_ejection_time = match &o.max_ejection_time {
                // Unset: the default, or the base when the base is longer.
                None => d.max_ejection_time.max(base_ejection_time),
                Some(m) => {
                    let max = c.positive_duration(
                        &o.max_ejection_time,
                        d.max_ejection_time,
                        "max_ejection_time",
                    );
                    if max < base_ejection_time {
                        c.err(
                            m,
                            format!(
                                "max_ejection_time ({}) must not be shorter than base_ejection_time ({})",
                                m.get_ref(),
                                o.base_ejection_time.as_ref().map_or("30s", |b| b.get_ref().as_str())
                            ),
                        );
                    }
                    max.max(base_ejection_time)
                }
            };
            OutlierConfig {
                interval: c.positive_duration(&o.interval, d.interval, "outlier interval"),
                min_requests: c.int(
                    &o.min_requests,
                    i64::from(d.min_requests),
                    1,
                    1_000_000,
                    "min_requests",
                ) as u32,
                failure_percent: pct(c, &o.failure_percent, d.failure_percent, "failure_percent"),
                margin_percent: pct(c, &o.margin_percent, d.margin_percent, "margin_percent"),
                max_ejection_percent: pct(
                    c,
                    &o.max_ejection_percent,
                    d.max_ejection_percent,
                    "max_ejection_percent",
                ),
                base_ejection_time,
                max_ejection_time,
            }
        }
    };
    let panic_threshold = c.int(&rp.panic_threshold, 0, 0, 100, "panic_threshold") as u32;
    let slow_start = c.duration(&rp.slow_start, Duration::ZERO);
    let lrt_decay = c.positive_duration(&rp.lrt_decay, DEFAULT_LRT_DECAY, "lrt_decay");
    let lrt_penalty = rp
        .lrt_penalty
        .as_ref()
        .map(|_| c.positive_duration(&rp.lrt_penalty, DEFAULT_RESPONSE, "lrt_penalty"));
    let max_in_flight = rp
        .max_in_flight
        .as_ref()
        .map(|_| c.int(&rp.max_in_flight, 1, 1, 1_000_000, "max_in_flight") as u32);
    let dq = QueueConfig::default();
    let queue = match &rp.queue {
        None => dq,
        Some(q) => QueueConfig {
            size: c.int(&q.size, dq.size as i64, 0, 1_000_000, "queue size") as usize,
            timeout: c.positive_duration(&q.timeout, dq.timeout, "queue timeout"),
        },
    };
    let dr = RetryConfig::default();
    let retries = match &rp.retries {
        None => dr,
        Some(r) => {
            let budget_ratio = match &r.budget_ratio {
                None => dr.budget_ratio,
                Some(b) => {
                    let x = *b.get_ref();
                    if !(0.0..=10.0).contains(&x) {
                        c.err(
                            b,
                            format!("budget_ratio must be between 0.0 and 10.0, got {x}"),
                        );
                    }
                    x.clamp(0.0, 10.0)
                }
            };
            RetryConfig {
                attempts: c.int(
                    &r.attempts,
                    i64::from(dr.attempts),
                    0,
                    100,
                    "retry attempts",
                ) as u32,
                budget_ratio,
                min_per_sec: c.int(
                    &r.min_per_sec,
                    i64::from(dr.min_per_sec),
                    0,
                    1_000_000,
                    "min_per_sec",
                ) as u32,
            }
        }
    };
    let dt = PoolTimeouts::default();
    let timeouts = match &rp.timeouts {
        None => dt,
        Some(t) => PoolTimeouts {
            connect: c.positive_duration(&t.connect, dt.connect, "connect timeout"),
            response: c.positive_duration(&t.response, dt.response, "response timeout"),
            idle: c.positive_duration(&t.idle, dt.idle, "idle timeout"),
        },
    };

    if servers.is_empty() && discovery.is_none() {
        return None;
    }
    Some(Pool {
        name: rp.name.get_ref().clone(),
        algorithm,
        servers,
        health_check,
        passive_failures,
        outlier,
        panic_threshold,
        slow_start,
        lrt_decay,
        lrt_penalty,
        max_in_flight,
        queue,
        retries,
        timeouts,
        discovery,
        tls: rp.tls.as_ref().map(|t| tls::pool_tls(c, t)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const GOOD: &str = r#"
[limits]
max_connections = 5000

[forwarded]
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]

[[listener]]
name = "web"
address = "127.0.0.1:8080"
pool = "app"
[listener.timeouts]
header_read = "5s"
idle = "30s"

[[listener]]
name = "pg"
address = "127.0.0.1:6432"
mode = "tcp"
pool = "db"
max_connections = 100

[[pool]]
name = "app"
algorithm = "least-response-time"
servers = [
  { name = "a", address = "127.0.0.1:9001", weight = 5 },
  { name = "b", address = "127.0.0.1:9002" },
]
slow_start = "10s"
max_in_flight = 50
[pool.health_check]
kind = "http"
path = "/health"
expect_status = 204
interval = "500ms"
timeout = "250ms"
rise = 1
fall = 2
jitter = "50ms"
[pool.queue]
size = 10
timeout = "2s"
[pool.retries]
attempts = 1
budget_ratio = 0.1
[pool.timeouts]
connect = "1s"
response = "3s"

[[pool]]
name = "db"
servers = [{ name = "p", address = "127.0.0.1:5432" }]
health_check = { kind = "tcp" }
"#;

    fn parse(text: &str) -> Result<LbConfig, ConfigError> {
        LbConfig::from_source(&Source::new("lb.toml", text))
    }

    /// The single error of `text`, with (line, col).
    fn one_error(text: &str) -> (usize, usize, String) {
        let e = parse(text).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1, "{e}");
        let d = &e.diagnostics[0];
        (d.line, d.col, d.message.clone())
    }

    fn with_pool(listener_extra: &str, pool: &str) -> String {
        format!("[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n{listener_extra}\n[[pool]]\nname = \"p\"\n{pool}\n")
    }

    #[test]
    fn good_file_validates_into_runtime_types() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.max_connections, 5000);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.listeners.len(), 2);
        let web = &c.listeners[0];
        assert_eq!(web.mode, Mode::Http);
        assert_eq!(web.pool, 0);
        assert_eq!(web.header_read_timeout, Duration::from_secs(5));
        assert_eq!(c.listeners[1].mode, Mode::Tcp);
        assert_eq!(c.listeners[1].pool, 1);
        assert_eq!(c.listeners[1].max_connections, Some(100));
        let app = &c.pools[0];
        assert_eq!(app.algorithm, Algorithm::LeastResponseTime);
        assert_eq!(app.servers[0].weight, 5);
        assert_eq!(app.servers[1].weight, 1);
        assert_eq!(
            app.health_check.kind,
            CheckKind::Http {
                path: "/health".into(),
                expect_status: 204
            }
        );
        assert_eq!(app.health_check.interval, Duration::from_millis(500));
        assert_eq!(app.max_in_flight, Some(50));
        assert_eq!(app.queue.size, 10);
        assert_eq!(app.retries.attempts, 1);
        assert_eq!(app.timeouts.response, Duration::from_secs(3));
        assert_eq!(app.slow_start, Duration::from_secs(10));
        assert_eq!(c.pools[1].algorithm, Algorithm::RoundRobin);
        assert_eq!(c.pools[1].health_check.kind, CheckKind::Tcp);
    }

    #[test]
    fn unknown_pool_is_reported_at_the_reference() {
        let text = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"nope\"\n[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\n";
        let (l, col, m) = one_error(text);
        assert_eq!((l, col), (4, 8), "{m}");
        assert!(
            m.contains("unknown pool \"nope\"") && m.contains("defined pools: p"),
            "{m}"
        );
    }

    #[test]
    fn duplicate_pool_name() {
        let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\" }]\n[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:2\" }]");
        let (l, col, m) = one_error(&text);
        assert_eq!((l, col), (10, 8), "{m}");
        assert!(m.contains("duplicate pool name"), "{m}");
    }

    #[test]
    fn duplicate_listener_name_and_address() {
        let text = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\n";
        let e = parse(text).unwrap_err();
        let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(pos, vec![(6, 8), (7, 11)], "{e}");
        assert!(e.diagnostics[0].message.contains("duplicate listener name"));
        assert!(e.diagnostics[1]
            .message
            .contains("duplicate listener address"));
    }

    #[test]
    fn duplicate_server_name_and_address() {
        let text = with_pool(
            "",
            "servers = [\n  { name = \"a\", address = \"127.0.0.1:1\" },\n  { name = \"a\", address = \"127.0.0.1:1\" },\n]",
        );
        let e = parse(&text).unwrap_err();
        let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(pos, vec![(10, 12), (10, 27)], "{e}");
        assert!(e.diagnostics[0]
            .message
            .contains("duplicate server name \"a\""));
        assert!(e.diagnostics[1]
            .message
            .contains("duplicate server address 127.0.0.1:1"));
    }

    #[test]
    fn bad_address() {
        let text = with_pool("", "servers = [{ address = \"localhost\" }]");
        let (l, col, m) = one_error(&text);
        assert_eq!((l, col), (8, 24), "{m}");
        assert!(m.contains("bad server address \"localhost\""), "{m}");
    }

    #[test]
    fn weight_out_of_bounds() {
        let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\", weight = 257 }]",
        );
        let (l, col, m) = one_error(&text);
        assert_eq!((l, col), (8, 48), "{m}");
        assert!(
            m.contains("weight must be between 0 and 256, got 257"),
            "{m}"
        );
        let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\", weight = -1 }]");
        assert!(one_error(&text).2.contains("got -1"));
        let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\", weight = 0 }]");
        assert_eq!(parse(&text).unwrap().pools[0].servers[0].weight, 0);
    }

    #[test]
    fn unknown_algorithm_lists_valid_ones() {
        let text = with_pool(
            "",
            "algorithm = \"fastest\"\nservers = [{ address = \"127.0.0.1:1\" }]",
        );
        let (l, col, m) = one_error(&text);
        assert_eq!((l, col), (8, 13), "{m}");
        for a in Algorithm::ALL {
            assert!(m.contains(a.as_str()), "{m}");
        }
    }

    #[test]
    fn outlier_defaults_and_settings() {
        let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\" }]");
        let p = &parse(&text).unwrap().pools[0];
        assert_eq!(p.outlier, OutlierConfig::default());
        assert_eq!((p.passive_failures, p.panic_threshold), (3, 0));
        let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\npanic_threshold = 50\n[pool.outlier]\ninterval = \"1s\"\nmin_requests = 5\nfailure_percent = 0\nmargin_percent = 10\nmax_ejection_percent = 100\nbase_ejection_time = \"10m\"",
        );
        let p = &parse(&text).unwrap().pools[0];
        assert_eq!(p.panic_threshold, 50);
        assert_eq!(
            p.outlier,
            OutlierConfig {
                interval: Duration::from_secs(1),
                min_requests: 5,
                failure_percent: 0,
                margin_percent: 10,
                max_ejection_percent: 100,
                base_ejection_time: Duration::from_secs(600),
                // Unset and shorter than the base: the base.
                max_ejection_time: Duration::from_secs(600),
            }
        );
    }

    #[test]
    fn outlier_errors_name_their_position() {
        let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\npanic_threshold = 101\noutlier = { max_ejection_percent = -1, interval = \"0s\", min_requests = 0 }",
        );
        let e = parse(&text).unwrap_err();
        let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(pos, vec![(9, 19), (10, 36), (10, 51), (10, 72)], "{e}");
        assert!(e.diagnostics[0]
            .message
            .contains("panic_threshold must be between 0 and 100, got 101"));
        assert!(e.diagnostics[1]
            .message
            .contains("max_ejection_percent must be between 0 and 100, got -1"));
        assert!(e.diagnostics[2]
            .message
            .contains("outlier interval must be greater than zero"));
        assert!(e.diagnostics[3].message.contains("min_requests"));
        let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\noutlier = { base_ejection_time = \"1m\", max_ejection_time = \"30s\", spread = 3 }",
        );
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("spread"), "{e}");
        let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\noutlier = { base_ejection_time = \"1m\", max_ejection_time = \"30s\" }",
        );
        let (l, col, m) = one_error(&text);
        assert_eq!((l, col), (9, 60), "{m}");
        assert!(
            m.contains("max_ejection_time (30s) must not be shorter than base_ejection_time (1m)"),
            "{m}"
        );
    }

    #[test]
    fn lrt_decay_and_penalty() {
        let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\" }]");
        let p = parse(&text).unwrap().pools[0].clone();
        assert_eq!((p.lrt_decay, p.lrt_penalty), (Duration::from_secs(5), None));
        let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\nlrt_decay = \"10s\"\nlrt_penalty = \"2s\"",
        );
        let p = parse(&text).unwrap().pools[0].clone();
        assert_eq!(p.lrt_decay, Duration::from_secs(10));
        assert_eq!(p.lrt_penalty, Some(Duration::from_secs(2)));
        let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\nlrt_decay = \"0s\"\nlrt_penalty = \"soon\"",
        );
        let e = parse(&text).unwrap_err();
        let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(pos, vec![(9, 13), (10, 15)], "{e}");
        assert!(e.diagnostics[0]
            .message
            .contains("lrt_decay must be greater than zero"));
        assert!(e.diagnostics[1].message.contains("bad duration"));
    }

    #[test]
    fn bad_duration_and_mode_and_kind() {
        let text = with_pool("mode = \"udp\"", "servers = [{ address = \"127.0.0.1:1\" }]\nslow_start = \"10 parsecs\"\nhealth_check = { kind = \"icmp\" }");
        let e = parse(&text).unwrap_err();
        let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(pos, vec![(5, 8), (9, 14), (10, 25)], "{e}");
        assert!(e.diagnostics[0].message.contains("unknown mode"));
        assert!(e.diagnostics[1].message.contains("bad duration"));
        assert!(e.diagnostics[2]
            .message
            .contains("unknown health check kind"));
    }

    #[test]
    fn tls_listener_with_redirect_and_hsts() {
        let text = with_pool(
            "tls = { cert = \"certs/site.pem\", key = \"/k.pem\", hsts = \"365d\", redirect_from = \"127.0.0.1:81\", redirect_status = 301 }",
            "servers = [{ address = \"127.0.0.1:1\" }]",
        );
        let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text)).unwrap();
        assert_eq!(c.listeners.len(), 2);
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(
            tls.certs[0].cert,
            PathBuf::from("/etc/rampart/certs/site.pem")
        );
        assert_eq!(tls.certs[0].key, PathBuf::from("/k.pem"));
        assert_eq!(tls.hsts_max_age, Some(365 * 86400));
        let r = &c.listeners[1];
        assert_eq!(r.name, "l-redirect");
        assert_eq!(r.address, "127.0.0.1:81".parse().unwrap());
        assert!(r.tls.is_none());
        assert_eq!(
            r.redirect_https,
            Some(RedirectHttps {
                port: 80,
                status: 301
            })
        );
    }

    #[test]
    fn tls_errors_have_positions() {
        let text = with_pool(
            "mode = \"tcp\"\ntls = { cert = \"c.pem\", key = \"k.pem\", redirect_from = \"127.0.0.1:80\", redirect_status = 302, hsts = \"forever\" }",
            "servers = [{ address = \"127.0.0.1:1\" }]",
        );
        let e = parse(&text).unwrap_err();
        let msgs: Vec<String> = e
            .diagnostics
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect();
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        assert!(
            msgs[0].starts_with("6:7: tls needs mode = \"http\""),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("bad duration \"forever\"")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("duplicate listener address 127.0.0.1:80")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("redirect_status must be 301 or 308, got 302")),
            "{msgs:#?}"
        );
        let text = with_pool(
            "tls = { cert = \"c.pem\" }",
            "servers = [{ address = \"127.0.0.1:1\" }]",
        );
        let (l, _, m) = one_error(&text);
        assert_eq!(l, 5, "{m}");
        assert!(m.contains("key"), "{m}");
    }

    #[test]
    fn unknown_field_is_a_parse_error_with_position() {
        let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\", wieght = 2 }]");
        let (l, col, m) = one_error(&text);
        assert_eq!(l, 8, "{m}");
        assert!(col > 1);
        assert!(m.contains("unknown field"), "{m}");
    }

    #[test]
    fn empty_pool_and_missing_listener() {
        let e = parse("[[pool]]\nname = \"p\"\nservers = []\n").unwrap_err();
        assert_eq!(e.diagnostics.len(), 2, "{e}");
        assert_eq!((e.diagnostics[0].line, e.diagnostics[0].col), (3, 11));
        assert!(e.diagnostics[0].message.contains("has no servers"));
        assert!(e.diagnostics[1].message.contains("no listener"));
    }

    #[test]
    fn bad_trusted_proxy_and_zero_timeout() {
        let text = format!(
            "[forwarded]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{}",
            with_pool(
                "",
                "servers = [{ address = \"127.0.0.1:1\" }]\ntimeouts = { connect = \"0s\" }"
            )
        );
        let e = parse(&text).unwrap_err();
        let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(pos, vec![(2, 20), (11, 24)], "{e}");
    }

    #[test]
    fn readme_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Load balancer").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").unwrap()];
        let c = parse(text).unwrap();
        assert_eq!(c.pools[0].servers.len(), 2);
        assert_eq!(c.pools[0].max_in_flight, Some(200));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("2 days").is_err());
    }

    #[test]
    fn cidr_contains() {
        let n: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        assert!("1.2.3.4/40".parse::<Cidr>().is_err());
    }

    #[test]
    fn health_check_argument() {
        assert_eq!("none".parse::<CheckKind>().unwrap(), CheckKind::None);
        assert_eq!("tcp".parse::<CheckKind>().unwrap(), CheckKind::Tcp);
        assert_eq!(
            "http:/healthz".parse::<CheckKind>().unwrap(),
            CheckKind::Http {
                path: "/healthz".into(),
                expect_status: 200
            }
        );
        assert!("http:healthz".parse::<CheckKind>().is_err());
    }

    #[test]
    fn quick_mode_builds_one_pool() {
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let c = LbConfig::quick(
            "127.0.0.1:8080".parse().unwrap(),
            &[a, b],
            Algorithm::SourceIpHash,
            Mode::Tcp,
            CheckKind::None,
        )
        .unwrap();
        assert_eq!(c.pools[0].servers.len(), 2);
        assert_eq!(c.listeners[0].mode, Mode::Tcp);
        assert!(LbConfig::quick(
            a,
            &[b, b],
            Algorithm::RoundRobin,
            Mode::Http,
            CheckKind::Tcp
        )
        .is_err());
        assert!(
            LbConfig::quick(a, &[], Algorithm::RoundRobin, Mode::Http, CheckKind::Tcp).is_err()
        );
    }
}
