//! The `[web]` section of the topology (rampart web). Owned by the web work.

use serde::Deserialize;

/// `[web]`: the web/app servers run by `rampart web`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WebSection {}
