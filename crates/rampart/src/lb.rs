//! `rampart lb`: command-line arguments of the load balancer; the work is in `rampart_lb`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use rampart_balance::Algorithm;
use rampart_topology::lb::{CheckKind, LbConfig, Mode};

/// Run the L7/L4 load balancer, from a config file or in quick mode for one pool.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["config", "listen"]))]
pub struct LbArgs {
    /// TOML config file with [[listener]] and [[pool]] sections.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "backend", "algorithm", "mode", "health_check"])]
    pub config: Option<PathBuf>,

    /// Quick mode: address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR", requires = "backend")]
    pub listen: Option<SocketAddr>,

    /// Quick mode: a backend server address (repeat for more).
    #[arg(long, value_name = "ADDR")]
    pub backend: Vec<SocketAddr>,

    /// Quick mode: round-robin, least-connections, least-response-time, source-ip-hash,
    /// random-two-choices.
    #[arg(long, value_name = "NAME", default_value = "round-robin")]
    pub algorithm: Algorithm,

    /// Quick mode: http or tcp.
    #[arg(long, value_name = "MODE", default_value = "http")]
    pub mode: Mode,

    /// Quick mode: http:/PATH, tcp or none.
    #[arg(long, value_name = "CHECK", default_value = "tcp")]
    pub health_check: CheckKind,

    /// Worker threads (default: one per core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

pub fn run(args: LbArgs) -> anyhow::Result<()> {
    let config = match (&args.config, args.listen) {
        (Some(path), _) => match LbConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                anyhow::bail!("invalid config {}", path.display());
            }
        },
        (None, Some(listen)) => LbConfig::quick(
            listen,
            &args.backend,
            args.algorithm,
            args.mode,
            args.health_check.clone(),
        )
        .map_err(anyhow::Error::msg)
        .context("build the quick-mode config")?,
        (None, None) => anyhow::bail!("give --config FILE or --listen ADDR --backend ADDR"),
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    rampart_lb::run(config, threads).context("run the load balancer")
}
