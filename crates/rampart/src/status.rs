//! `rampart status`: every node of the topology, probed now.

use std::path::PathBuf;

use std::io::Write;

use clap::Args;
use rampart_up::config::{resolve, ResolveOptions};

/// Show every node of the topology: kind, role, health, address, pid when local, key
/// figures. `--json` prints the stable JSON form (see the README).
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The topology file (default: the built-in default topology).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory of the running `rampart up` [default: .rampart/<cluster> beside the topology file].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON: a list of {name, kind, role, healthy, address, pid, details}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let r = resolve(&ResolveOptions {
        config: args.config,
        data_dir: args.data_dir,
        port_base: None,
    })
    .map_err(crate::up::config_error)?;
    let nodes = rampart_up::status::collect(&r);
    let text = if args.json {
        format!("{}\n", rampart_up::status::render_json(&nodes))
    } else {
        rampart_up::status::render_table(&nodes)
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}
