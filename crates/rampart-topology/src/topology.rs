//! The topology file: the one file every role reads (`--config FILE --node NAME`).
//!
//! Sections: `[cluster]` (shared), `[db]` (rampart db), `[web]` (rampart web). The lb,
//! monitor, TLS and firewall sections join as those roles read the topology.

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
    pub db: Option<crate::db::DbSection>,
    #[serde(default)]
    pub web: Option<crate::web::WebSection>,
}

impl TopologyFile {
    /// Parse a topology file's text (syntax and shape only; each role validates its section).
    pub fn parse(src: &Source) -> Result<Self, ConfigError> {
        src.parse::<TopologyFile>()
    }
}
