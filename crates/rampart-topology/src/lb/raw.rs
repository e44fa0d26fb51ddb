//! The load balancer's configuration file as written: serde structs that keep each
//! value's position, so validation ([`super::validate`]) can name `file:line:col`.

use super::*;

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
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    /// Requests' paths in normal form before routing and forwarding (default: when a
    /// route has `allow`).
    #[serde(default)]
    pub normalize_path: Option<Spanned<bool>>,
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
    /// Which forwarding headers the balancer adds ([`super::ForwardedHeaders`]).
    #[serde(default)]
    pub headers: Option<Spanned<Vec<Spanned<String>>>>,
}

// ===================================================================================
