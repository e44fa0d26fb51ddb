//! `rampart firewall`: a node's nftables ruleset from the topology; the work is in
//! `rampart_firewall`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rampart_up::config::{resolve, ResolveOptions};

/// Print, apply or remove the firewall of the machine running NODE(s): who may reach
/// each port of its roles (from the topology's addresses and [firewall]), as an nftables
/// table of its own (`inet rampart`). Applying is atomic and idempotent; --remove
/// deletes only that table.
#[derive(Args, Debug)]
pub struct FirewallArgs {
    /// The topology file (default: the built-in default topology).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node(s) this machine runs (repeat for several).
    #[arg(long = "node", value_name = "NAME", required_unless_present = "remove")]
    pub nodes: Vec<String>,
    /// Print the nft script (the default).
    #[arg(long, conflicts_with_all = ["apply", "remove"])]
    pub print: bool,
    /// Load it with `nft -f` (needs root).
    #[arg(long, conflicts_with = "remove")]
    pub apply: bool,
    /// Delete the `inet rampart` table.
    #[arg(long)]
    pub remove: bool,
}

pub fn run(args: FirewallArgs) -> anyhow::Result<()> {
    if args.remove {
        rampart_firewall::remove().context("remove the rampart table")?;
        println!("removed table {}", rampart_firewall::TABLE);
        return Ok(());
    }
    let r = resolve(&ResolveOptions {
        config: args.config,
        ..Default::default()
    })
    .map_err(crate::up::config_error)?;
    let names: Vec<&str> = args.nodes.iter().map(String::as_str).collect();
    let rs = rampart_firewall::ruleset(&r.topology, &names).context("build the ruleset")?;
    if args.apply {
        rampart_firewall::apply(&rs).context("apply the ruleset")?;
        println!(
            "applied table {} for {} ({} rule(s), policy {})",
            rampart_firewall::TABLE,
            names.join(", "),
            rs.rules.len(),
            match rs.policy {
                rampart_topology::security::Policy::Drop => "drop",
                rampart_topology::security::Policy::Accept => "accept",
            }
        );
        for n in &rs.notes {
            eprintln!("note: {n}");
        }
    } else {
        print!("{}", rampart_firewall::render(&rs));
    }
    Ok(())
}
