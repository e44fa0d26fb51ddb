//! `[etcd]`: the etcd members `rampart up` runs (etcd itself, from Debian's etcd-server).
//!
//! ```toml
//! [etcd]
//! heartbeat_ms = 50          # raft heartbeat; fast on loopback
//! election_ms = 500          # raft election timeout (>= 5 heartbeats)
//!
//! [[etcd.members]]
//! name = "etcd1"
//! client = "127.0.0.1:2381"  # clients connect here: [cluster] etcd lists http://<client>
//! peer = "127.0.0.1:2382"    # raft traffic between members
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Diagnostic, Source};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    #[serde(default)]
    pub heartbeat_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub election_ms: Option<Spanned<i64>>,
    /// Base folder for members' data (`<data_dir>/<name>`), relative to the topology file's
    /// folder unless absolute; `rampart up` uses its own when unset.
    #[serde(default)]
    pub data_dir: Option<Spanned<String>>,
    #[serde(default)]
    pub members: Vec<Spanned<RawEtcdMember>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdMember {
    pub name: Spanned<String>,
    pub client: Spanned<String>,
    pub peer: Spanned<String>,
}

/// A validated `[etcd]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub heartbeat_ms: u32,
    pub election_ms: u32,
    pub data_dir: Option<PathBuf>,
    pub members: Vec<EtcdMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
}

impl EtcdMember {
    /// `http://<client>`, as listed in `[cluster] etcd`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }
    pub fn peer_url(&self) -> String {
        format!("http://{}", self.peer)
    }
}

impl EtcdConfig {
    /// `name=http://peer,...` for etcd's `--initial-cluster`.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub(crate) fn validate(
    src: &Source,
    s: &EtcdSection,
    errs: &mut Vec<Diagnostic>,
) -> Option<EtcdConfig> {
    let int = |v: &Option<Spanned<i64>>,
               d: i64,
               min: i64,
               max: i64,
               what: &str,
               errs: &mut Vec<Diagnostic>|
     -> i64 {
        match v {
            None => d,
            Some(x) if (min..=max).contains(x.get_ref()) => *x.get_ref(),
            Some(x) => {
                errs.push(src.error_at(
                    x.span(),
                    format!(
                        "{what} must be between {min} and {max}, got {}",
                        x.get_ref()
                    ),
                ));
                d
            }
        }
    };
    let heartbeat_ms = int(&s.heartbeat_ms, 100, 10, 10_000, "heartbeat_ms", errs);
    let election_ms = int(&s.election_ms, 1000, 50, 50_000, "election_ms", errs);
    if election_ms < 5 * heartbeat_ms {
        let msg = format!(
            "election_ms ({election_ms}) must be at least 5 x heartbeat_ms ({heartbeat_ms}), as etcd requires"
        );
        errs.push(match &s.election_ms {
            Some(e) => src.error_at(e.span(), msg),
            None => src.error(msg),
        });
    }
    if s.members.is_empty() {
        errs.push(src.error("[etcd] needs at least one [[etcd.members]] entry"));
    }
    let mut members = Vec::new();
    for m in &s.members {
        let raw = m.get_ref();
        let name = raw.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(src.error_at(
                raw.name.span(),
                format!(
                    "etcd member name \"{name}\" must be non-empty letters, digits, '-' or '_'"
                ),
            ));
        }
        let addr = |v: &Spanned<String>, what: &str, errs: &mut Vec<Diagnostic>| match v
            .get_ref()
            .parse::<SocketAddr>(
        ) {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                errs.push(src.error_at(
                    v.span(),
                    format!(
                        "etcd {what} address \"{}\" must be IP:PORT, e.g. \"127.0.0.1:2379\"",
                        v.get_ref()
                    ),
                ));
                None
            }
        };
        let client = addr(&raw.client, "client", errs);
        let peer = addr(&raw.peer, "peer", errs);
        if let (Some(client), Some(peer)) = (client, peer) {
            members.push(EtcdMember {
                name: name.clone(),
                client,
                peer,
            });
        }
    }
    Some(EtcdConfig {
        heartbeat_ms: heartbeat_ms as u32,
        election_ms: election_ms as u32,
        // A relative data_dir is relative to the topology file's folder.
        data_dir: s.data_dir.as_ref().map(|d| {
            let p = PathBuf::from(d.get_ref());
            if p.is_relative() {
                let folder = src.file.parent().unwrap_or(std::path::Path::new("."));
                std::path::absolute(folder)
                    .unwrap_or_else(|_| folder.to_path_buf())
                    .join(p)
            } else {
                p
            }
        }),
        members,
    })
}
