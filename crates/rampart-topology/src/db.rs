//! The `[db]` section of the topology (rampart db). Owned by the db work.

use serde::Deserialize;

/// `[db]`: the PostgreSQL cluster managed by `rampart db` agents.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DbSection {}
