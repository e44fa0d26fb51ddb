//! `rampart monitor`: scrape every node of the topology, alert, serve the dashboard;
//! the work is in `rampart_monitor`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use rampart_up::config::{resolve, ResolveOptions};

/// Scrape /metrics of every node of a topology, evaluate alert rules (built-in and
/// [monitor] rules), send alerts to the [[monitor.alerts]] routes, and serve a live
/// dashboard with a JSON API (/api/alerts, /api/targets, /api/query, /metrics).
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MonitorArgs {
    #[command(subcommand)]
    pub command: Option<MonitorCmd>,
    /// The topology file.
    #[arg(long, value_name = "FILE", required = true)]
    pub config: Option<PathBuf>,
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

#[derive(Subcommand, Debug)]
pub enum MonitorCmd {
    /// Write the monitor's setup for other tools.
    #[command(subcommand)]
    Export(ExportCmd),
}

#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// Write prometheus.yml (a scrape job per role, tokens as file references), rules.yml
    /// (the monitor's alert rules in PromQL) and grafana-rampart.json (a dashboard).
    Prometheus(ExportArgs),
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The topology file (default: the built-in default topology).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write the files in this folder (made if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Data directory of a running `rampart up`, whose lb admin endpoints are scraped
    /// [default: .rampart/<cluster> beside the topology file].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
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
    if let Some(MonitorCmd::Export(ExportCmd::Prometheus(e))) = args.command {
        return export_prometheus(e);
    }
    let lb_admins = lb_admins(&args)?;
    let r = resolve(&ResolveOptions {
        config: args.config.clone(),
        ..Default::default()
    })
    .map_err(crate::up::config_error)?;
    // A reload (SIGHUP, POST /-/reload) reads the same file the same way.
    let config = args
        .config
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let loader: rampart_monitor::reload::Loader = std::sync::Arc::new(move || {
        resolve(&ResolveOptions {
            config: config.clone(),
            ..Default::default()
        })
        .map(|r| r.topology)
        .map_err(|e| match e {
            rampart_up::UpError::Config(c) => c.to_string(),
            other => other.to_string(),
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(rampart_monitor::run(rampart_monitor::RunOptions {
        topology: r.topology,
        node: args.node,
        listen: args.listen,
        lb_admins,
        loader: Some(loader),
    }))
    .context("run the monitor")
}

/// `rampart monitor export prometheus`: the files come from `rampart_monitor::prometheus`;
/// the lb admins `rampart up` gave nodes are read from its `up.json` when it runs.
fn export_prometheus(args: ExportArgs) -> anyhow::Result<()> {
    let r = resolve(&ResolveOptions {
        config: args.config,
        data_dir: args.data_dir,
        port_base: None,
    })
    .map_err(crate::up::config_error)?;
    let admins: Vec<rampart_monitor::prometheus::LbAdminFile> =
        rampart_up::state::UpState::read_live(&r.data_dir)
            .map(|s| {
                s.lb_admin
                    .into_iter()
                    .map(|a| rampart_monitor::prometheus::LbAdminFile {
                        node: a.node,
                        address: a.address,
                        token_file: Some(a.token_file),
                    })
                    .collect()
            })
            .unwrap_or_default();
    let e = rampart_monitor::prometheus::export(&r.topology, &admins);
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    for (name, text) in &e.files {
        let p = args.out.join(name);
        std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    for n in &e.notes {
        eprintln!("note: {n}");
    }
    Ok(())
}
