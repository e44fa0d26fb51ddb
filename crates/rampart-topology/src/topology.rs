//! The topology file: the one file every role reads (`--config FILE --node NAME`).
//!
//! Sections: `[cluster]` (shared), `[etcd]` (the members `rampart up` runs), `[lb]`
//! (load balancer nodes and the listeners/pools they share), `[web]`, `[db]`,
//! `[monitor]`, `[tls]`, `[firewall]`. Each role validates its own section; the whole
//! file is validated by [`Topology::from_source`] (every section plus the rules that
//! span sections: unique names and ports across roles, pools naming known servers,
//! etcd endpoints served by the declared members, synchronous replication satisfiable).

use serde::Deserialize;

use crate::diag::{ConfigError, Source};

/// `[cluster]`: what every role shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name; prefixes every etcd key (`/rampart/<name>/...`).
    pub name: toml::Spanned<String>,
    /// etcd client endpoints, e.g. `["http://127.0.0.1:2379"]`.
    #[serde(default)]
    pub etcd: Vec<toml::Spanned<String>>,
}

/// The raw topology file as written (positions kept for validation errors).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub etcd: Option<crate::etcd::EtcdSection>,
    #[serde(default)]
    pub lb: Option<crate::lb_section::LbSection>,
    #[serde(default)]
    pub db: Option<crate::db::DbSection>,
    #[serde(default)]
    pub web: Option<crate::web::WebSection>,
    #[serde(default)]
    pub monitor: Option<crate::monitor::MonitorSection>,
    #[serde(default)]
    pub tls: Option<crate::security::TlsSection>,
    #[serde(default)]
    pub firewall: Option<crate::security::FirewallSection>,
    /// Where `rampart up` runs the nodes (`rampart up --hosts` overrides it).
    #[serde(default)]
    pub hosts: Option<crate::hosts::HostsSection>,
}

impl TopologyFile {
    /// Parse a topology file's text (syntax and shape only; each role validates its section).
    pub fn parse(src: &Source) -> Result<Self, ConfigError> {
        src.parse::<TopologyFile>()
    }
}

pub use crate::validate::{Node, NodeKind, Topology};
