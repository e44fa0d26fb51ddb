//! `rampart web`: command-line arguments of the web/app server; the work is in `rampart_web`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rampart_topology::web::{http_header, DatabaseConfig, DbTopology, WebConfig, WebTls};

/// Serve static files, proxy to your app or run the built-in guestbook, from a topology
/// file (`--config FILE --node NAME`) or in quick mode (`--listen ADDR --root DIR`).
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["config", "listen"]))]
pub struct WebArgs {
    /// Topology file with [cluster] and [web] sections.
    #[arg(long, value_name = "FILE", requires = "node", conflicts_with_all = ["listen", "root", "upstream", "db_node", "db_agent", "db_etcd", "header_read_timeout_ms", "idle_timeout_ms", "tls_cert", "tls_key"])]
    pub config: Option<PathBuf>,

    /// With --config: which [[web.node]] this is.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Quick mode: address to listen on, e.g. 127.0.0.1:8081.
    #[arg(long, value_name = "ADDR", requires = "root")]
    pub listen: Option<SocketAddr>,

    /// Quick mode: folder of static files.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Quick mode: this node's name, sent in the X-Served-By header.
    #[arg(long, value_name = "NAME", default_value = "web")]
    pub name: String,

    /// Quick mode: proxy what is not a static file to this application server (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    pub upstream: Option<String>,

    /// Quick mode: run the guestbook on these PostgreSQL nodes (HOST:PORT, repeat).
    #[arg(long, value_name = "ADDR", conflicts_with = "db_agent")]
    pub db_node: Vec<String>,

    /// Quick mode: run the guestbook, learning the database from these rampart db agents (URL, repeat).
    #[arg(long, value_name = "URL")]
    pub db_agent: Vec<String>,

    /// Quick mode: run the guestbook, watching the db agents' records in this etcd (URL,
    /// repeat); with --db-agent too, those are polled while the watch is quiet.
    #[arg(long, value_name = "URL", conflicts_with = "db_node")]
    pub db_etcd: Vec<String>,

    /// With --db-etcd: the cluster name (keys under /rampart/NAME/db/).
    #[arg(long, value_name = "NAME", default_value = "main")]
    pub cluster: String,

    /// Database user.
    #[arg(long, value_name = "USER", default_value = "postgres")]
    pub db_user: String,

    /// Database name.
    #[arg(long, value_name = "NAME", default_value = "postgres")]
    pub db_name: String,

    /// How long a read with a token waits for a replica before using the primary.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub read_wait_ms: u64,

    /// Replicas further behind than this get no reads.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_lag_bytes: u64,

    /// Not-ready time between SIGTERM and closing the listener.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub drain_ms: u64,

    /// Quick mode: a request head must arrive within this, else 408 and the connection closes.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub header_read_timeout_ms: u64,

    /// Quick mode: a keep-alive connection idle this long (or a client reading nothing of a
    /// response this long) is closed.
    #[arg(long, value_name = "MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub idle_timeout_ms: u64,

    /// Quick mode: serve HTTPS (TLS 1.2/1.3) with this certificate chain (PEM); plain
    /// HTTP on the same port then gets only /healthz, /readyz and /metrics.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Quick mode: the private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Name of the header naming this node.
    #[arg(long, value_name = "HEADER", default_value = "X-Served-By")]
    pub served_by_header: String,

    /// Worker threads (default: one per core; 1 = a single-threaded runtime).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

pub fn run(args: WebArgs) -> anyhow::Result<()> {
    let cfg = match (&args.config, args.listen) {
        (Some(path), _) => {
            let node = args.node.as_deref().context("--config needs --node NAME")?;
            match WebConfig::load(path, node) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    anyhow::bail!("invalid config {}", path.display());
                }
            }
        }
        (None, Some(listen)) => quick(&args, listen)?,
        (None, None) => anyhow::bail!("give --config FILE --node NAME or --listen ADDR --root DIR"),
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // The site's filesystem in /metrics (space, I/O).
    rampart_metrics::host::set_data_dirs(vec![cfg.root.clone()]);
    rampart_web::run(cfg, threads).context("run the web server")
}

fn quick(args: &WebArgs, listen: SocketAddr) -> anyhow::Result<WebConfig> {
    let root = args.root.clone().context("--listen needs --root DIR")?;
    let mut cfg = WebConfig::quick(&args.name, listen, root);
    cfg.upstream = args.upstream.clone();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = Some(WebTls {
            cert: cert.clone(),
            key: key.clone(),
        });
    }
    cfg.drain = Duration::from_millis(args.drain_ms);
    cfg.header_read_timeout = Duration::from_millis(args.header_read_timeout_ms);
    cfg.idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    cfg.served_by_header = http_header::Name::parse(&args.served_by_header).with_context(|| {
        format!(
            "--served-by-header {:?} is not a header name",
            args.served_by_header
        )
    })?;
    let topology = if !args.db_node.is_empty() {
        Some(DbTopology::Nodes(args.db_node.clone()))
    } else if !args.db_etcd.is_empty() {
        Some(DbTopology::Etcd {
            endpoints: args.db_etcd.clone(),
            cluster: args.cluster.clone(),
            agents: args.db_agent.clone(),
        })
    } else if !args.db_agent.is_empty() {
        Some(DbTopology::Agents(args.db_agent.clone()))
    } else {
        None
    };
    cfg.database = topology.map(|t| {
        let mut d = DatabaseConfig::new(t);
        d.user = args.db_user.clone();
        d.dbname = args.db_name.clone();
        d.password = std::env::var("PGPASSWORD").ok();
        d.read_wait = Duration::from_millis(args.read_wait_ms);
        d.max_lag_bytes = args.max_lag_bytes;
        d
    });
    Ok(cfg)
}
