//! `rampart monitor`: scrape every node of the topology, alert, serve the dashboard;
//! the work is in `rampart_monitor`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rampart_up::config::{resolve, ResolveOptions};

/// Scrape /metrics of every node of a topology, evaluate alert rules (built-in and
/// [monitor] rules), send alerts to the [[monitor.alerts]] routes, and serve a live
/// dashboard with a JSON API (/api/alerts, /api/targets, /api/query, /metrics).
#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// The topology file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// This monitor's name in the topology ([monitor] name, default "monitor").
    #[arg(long, value_name = "NAME", default_value = "monitor")]
    pub node: String,
    /// Listen here instead of [monitor] listen.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
}

pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let r = resolve(&ResolveOptions {
        config: Some(args.config),
        ..Default::default()
    })
    .map_err(crate::up::config_error)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(rampart_monitor::run(rampart_monitor::RunOptions {
        topology: r.topology,
        node: args.node,
        listen: args.listen,
    }))
    .context("run the monitor")
}
