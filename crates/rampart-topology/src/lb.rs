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
    /// The forwarding headers the balancer adds to each request (`forwarded.headers`).
    pub forwarded_headers: ForwardedHeaders,
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

/// The headers that tell a server whom a request came from, which the balancer adds
/// (`[forwarded] headers = [...]`). A peer in `trusted_proxies` keeps what it sent (its
/// `X-Forwarded-For` chain is appended to); anyone else's are dropped, whether listed
/// here or not, so that a client cannot speak for itself to a server that reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedHeaders {
    /// `X-Forwarded-For: <client>` (HAProxy's `option forwardfor`).
    pub x_forwarded_for: bool,
    /// `X-Real-IP: <client>` (nginx's usual `proxy_set_header X-Real-IP $remote_addr`).
    pub x_real_ip: bool,
    /// `X-Forwarded-Proto: http|https`.
    pub x_forwarded_proto: bool,
    /// `X-Forwarded-Host: <Host>`.
    pub x_forwarded_host: bool,
    /// `Forwarded: for=<client>;proto=<scheme>;host=<Host>` (RFC 7239; HAProxy's
    /// `option forwarded`).
    pub forwarded: bool,
}

impl ForwardedHeaders {
    /// The names `headers` accepts, in the order they are rendered.
    pub const NAMES: [&'static str; 5] = [
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ];

    /// None: requests go to the servers with no forwarding header added.
    pub const NONE: ForwardedHeaders = ForwardedHeaders {
        x_forwarded_for: false,
        x_real_ip: false,
        x_forwarded_proto: false,
        x_forwarded_host: false,
        forwarded: false,
    };

    /// Turn on the header `name` (one of [`Self::NAMES`], any case); false if unknown.
    pub fn set(&mut self, name: &str) -> bool {
        let flag = match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => &mut self.x_forwarded_for,
            "x-real-ip" => &mut self.x_real_ip,
            "x-forwarded-proto" => &mut self.x_forwarded_proto,
            "x-forwarded-host" => &mut self.x_forwarded_host,
            "forwarded" => &mut self.forwarded,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// Parse a comma-separated list (the command line's `--forwarded-headers`); `none`
    /// or an empty string is no header.
    pub fn parse_list(list: &str) -> Result<ForwardedHeaders, String> {
        let mut h = ForwardedHeaders::NONE;
        let list = list.trim();
        if list.is_empty() || list.eq_ignore_ascii_case("none") {
            return Ok(h);
        }
        for name in list.split(',').map(str::trim) {
            if !h.set(name) {
                return Err(format!(
                    "unknown forwarding header \"{name}\"; expected some of {} (or none)",
                    Self::NAMES.join(", ")
                ));
            }
        }
        Ok(h)
    }
}

impl Default for ForwardedHeaders {
    /// `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto` and `X-Forwarded-Host`: what
    /// most applications behind nginx or HAProxy read.
    fn default() -> Self {
        ForwardedHeaders {
            x_forwarded_for: true,
            x_real_ip: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            forwarded: false,
        }
    }
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
    /// `[[listener.route]]`: requests that go to another pool than `pool` by Host and
    /// path, in order (HTTP listeners only; empty: everything to `pool`).
    pub routes: Vec<Route>,
    /// Each request's path is put in normal form ([`path::normalize_target`]) before the
    /// routes see it, and forwarded so: on when a route has `allow` (a guard on a path must
    /// not be walked around by `//admin` or `/%61dmin`), or when the file says so.
    pub normalize_path: bool,
}

mod acme;
pub mod path;
mod route;
mod tls;
pub use acme::{Acme, AcmeShare, Challenge, RawAcme, DEFAULT_RENEW_BEFORE};
pub use route::{
    host_name, pick as pick_route, target_path, HeaderMatch, HostPattern, RawHeaderMatch, RawRoute,
    Request as RouteRequest, Route, RouteTo, REDIRECT_STATUSES,
};
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

mod raw;
mod validate;
pub use raw::*;
pub use validate::resolve_path;
use validate::Checker;

#[cfg(test)]
mod tests;
