//! rampart's one configuration model.
//!
//! Every config file is parsed here and nowhere else: TOML into serde structs
//! with `deny_unknown_fields` and `toml::Spanned` positions, then validated into
//! runtime types that cannot be invalid. Every error names `file:line:col` and
//! says what was expected.
//!
//! Module ownership: `diag` (positions and errors) is shared; each role owns its
//! section module (`lb`, ...).

pub mod audit;
pub mod db;
pub mod db_timing;
pub mod default;
pub mod diag;
pub mod etcd;
pub mod hosts;
pub mod lb;
pub mod lb_section;
pub mod monitor;
pub mod security;
pub mod topology;
mod validate;
pub mod vrrp;
pub mod web;

pub use diag::{ConfigError, Diagnostic, Source};
pub use topology::{Node, NodeKind, Topology, TopologyFile};
