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
    /// Scrape this lb node's admin /metrics (NODE=IP:PORT), for a node whose admin is
    /// not in the topology (`rampart up` passes the ones it gives). Repeatable.
    #[arg(long = "lb-admin", value_name = "NODE=IP:PORT", value_parser = parse_lb_admin)]
    pub lb_admin: Vec<(String, SocketAddr)>,
    /// The bearer token of NODE's admin API, read from FILE (NODE=FILE). Repeatable.
    #[arg(long = "lb-admin-token-file", value_name = "NODE=FILE", value_parser = parse_node_file)]
    pub lb_admin_token_file: Vec<(String, PathBuf)>,
}

fn parse_lb_admin(s: &str) -> Result<(String, SocketAddr), String> {
    let (node, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NODE=IP:PORT, got \"{s}\""))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("\"{addr}\" is not an IP:PORT: {e}"))?;
    Ok((node.to_string(), addr))
}

fn parse_node_file(s: &str) -> Result<(String, PathBuf), String> {
    let (node, file) = s
        .split_once('=')
        .filter(|(n, f)| !n.is_empty() && !f.is_empty())
        .ok_or_else(|| format!("expected NODE=FILE, got \"{s}\""))?;
    Ok((node.to_string(), PathBuf::from(file)))
}

/// `--lb-admin` with its `--lb-admin-token-file`, tokens read now.
fn lb_admins(args: &MonitorArgs) -> anyhow::Result<Vec<rampart_monitor::LbAdmin>> {
    if let Some((n, _)) = args
        .lb_admin_token_file
        .iter()
        .find(|(n, _)| !args.lb_admin.iter().any(|(a, _)| a == n))
    {
        anyhow::bail!("--lb-admin-token-file names {n}, which has no --lb-admin");
    }
    args.lb_admin
        .iter()
        .map(|(node, address)| {
            let token = match args.lb_admin_token_file.iter().find(|(n, _)| n == node) {
                None => None,
                Some((_, f)) => {
                    let t = std::fs::read_to_string(f)
                        .with_context(|| format!("read {node}'s admin token {}", f.display()))?;
                    let t = t.trim().to_string();
                    anyhow::ensure!(
                        !t.is_empty(),
                        "{node}'s admin token file {} is empty",
                        f.display()
                    );
                    Some(t)
                }
            };
            Ok(rampart_monitor::LbAdmin {
                node: node.clone(),
                address: *address,
                token,
            })
        })
        .collect()
}

pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let lb_admins = lb_admins(&args)?;
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
        lb_admins,
    }))
    .context("run the monitor")
}
