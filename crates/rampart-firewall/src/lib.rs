//! `rampart firewall`: what each node of a topology accepts, as nftables rules.
//!
//! - [`ruleset`] (pure): a topology and node names in, the ports each node listens on
//!   and who may reach them out. The balancers accept the site's listeners from
//!   anywhere; web nodes only from the balancers and the monitor; PostgreSQL and the db
//!   agents' API only from web nodes, db peers and the monitor; etcd's client port only
//!   from members, agents, web nodes (service registration), balancers and the monitor,
//!   its peer port only from members; admin ports (ssh, a balancer's own entry, the
//!   monitor) from `[firewall] admin` networks.
//! - [`render`] (pure): the ruleset as an `nft -f` script for a table of its own
//!   (`inet rampart`): replacing it is atomic and idempotent, removing it touches no
//!   other table.
//! - [`apply`]: runs `nft`.

pub mod apply;
pub mod render;
pub mod ruleset;

pub use apply::{apply, loaded, remove, FirewallError};
pub use render::{render, render_remove, TABLE};
pub use ruleset::{ruleset, Net, PortRule, Ruleset, RulesetError};
