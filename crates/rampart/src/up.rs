//! `rampart up`: run the whole topology on this machine; the work is in `rampart_up`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rampart_up::config::ResolveOptions;
use rampart_up::supervise::UpOptions;
use rampart_up::UpError;

/// Start every role of a topology as child processes on this machine, wait until each is
/// healthy, print the URLs, restart what crashes, stop everything on Ctrl-C (data kept).
#[derive(Args, Debug)]
pub struct UpArgs {
    /// The topology file (default: the built-in default topology, written to
    /// <data-dir>/topology.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Wipe every node's data first (start over).
    #[arg(long)]
    pub fresh: bool,
    /// Where logs, state and (for the default topology) data go [default: .rampart/<cluster>
    /// beside the topology file, or in the current folder for the built-in default].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port base of the built-in default topology (see rampart init --help).
    #[arg(long, value_name = "N", conflicts_with = "config")]
    pub port_base: Option<u16>,
    /// Give up when a group of roles is not healthy after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub start_timeout: u64,
    /// Where the nodes run: `loopback` (one machine's loopback) or `netns` (the
    /// separate-hosts rehearsal: a network namespace per node on a bridge, the site on
    /// virtual IPs moved by the balancers' VRRP, each node's firewall applied, a client
    /// host; needs root) [default: the topology's [hosts] mode, else loopback].
    #[arg(long, value_name = "MODE", value_parser = ["loopback", "netns"])]
    pub hosts: Option<String>,
    /// The /24 of the netns hosts (this machine .1, nodes .10 on, virtual IPs .100 on,
    /// the client .250) [default: the topology's [hosts] subnet, else 10.213.0.0/24].
    #[arg(long, value_name = "NET")]
    pub subnet: Option<String>,
}

/// Print a topology's diagnostics as they are (file:line:col each) and fail.
pub fn config_error(e: UpError) -> anyhow::Error {
    match e {
        UpError::Config(c) => {
            eprintln!("{c}");
            anyhow::anyhow!(
                "invalid topology ({} problem(s) above)",
                c.diagnostics.len()
            )
        }
        other => anyhow::Error::new(other),
    }
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let rampart = std::env::current_exe().context("find this executable")?;
    rampart_up::supervise::run(UpOptions {
        resolve: ResolveOptions {
            config: args.config,
            data_dir: args.data_dir,
            port_base: args.port_base,
        },
        fresh: args.fresh,
        rampart,
        start_timeout: Duration::from_secs(args.start_timeout),
        hosts: if args.hosts.as_deref() == Some("netns") {
            Some(
                rampart_topology::hosts::parse_subnet(
                    args.subnet
                        .as_deref()
                        .unwrap_or(rampart_topology::hosts::DEFAULT_SUBNET),
                )
                .map_err(anyhow::Error::msg)
                .context("read --subnet")?,
            )
        } else {
            None
        },
        hosts_from_topology: args.hosts.is_none(),
    })
    .map_err(config_error)
}
