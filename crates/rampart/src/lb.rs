//! `rampart lb`: command-line arguments of the load balancer; the work is in `rampart_lb`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use rampart_balance::Algorithm;
use rampart_lb::ctl::{self, AdminClient};
use rampart_topology::lb::{AdminConfig, CheckKind, ForwardedHeaders, LbConfig, Mode};

/// Run the L7/L4 load balancer, from a config file or in quick mode for one pool; or
/// operate a running one (`ctl`, `reload`).
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["config", "listen"]))]
pub struct LbArgs {
    #[command(subcommand)]
    pub command: Option<LbCommand>,

    /// TOML config file with [[listener]] and [[pool]] sections.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "backend", "algorithm", "mode", "health_check", "forwarded_headers"])]
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

    /// Quick mode: the forwarding headers added to each request, comma-separated, from
    /// x-forwarded-for, x-real-ip, x-forwarded-proto, x-forwarded-host and forwarded (RFC
    /// 7239), or none (default: the four x- ones; a config file's `[forwarded] headers`).
    #[arg(long, value_name = "LIST", value_parser = ForwardedHeaders::parse_list)]
    pub forwarded_headers: Option<ForwardedHeaders>,

    /// With --config TOPOLOGY: run this [[lb.nodes]] entry of the topology's [lb] section.
    #[arg(long, value_name = "NAME", requires = "config")]
    pub node: Option<String>,

    /// Worker threads (default: one per core; with --node, the node's `threads`).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Admin listener (state, /stats, /metrics, control) for loopback clients, overriding
    /// the config's [admin] address.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// With --admin: every admin API call needs `Authorization: Bearer <token>`, the
    /// token read from this file (what `rampart up` gives lb nodes without an admin).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub admin_token_file: Option<PathBuf>,

    /// Write the pid here (for `rampart lb reload --pid-file`).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum LbCommand {
    /// Operate a running load balancer through its admin API.
    Ctl(CtlArgs),
    /// Make a running load balancer re-read its config (admin API, or SIGHUP by pid file).
    Reload(ReloadArgs),
    /// Replace a running load balancer by the binary now on disk without refusing a
    /// connection: it starts it, hands over its sockets, then drains (admin API, or
    /// SIGUSR2 by pid file).
    Upgrade(ReloadArgs),
    /// (Internal) started by a balancer with virtual routers: waits for the balancer to
    /// die, however it dies, then removes its virtual IPs from the interface.
    #[command(hide = true)]
    VipGuard(VipGuardArgs),
}

#[derive(Args, Debug)]
pub struct VipGuardArgs {
    #[arg(long)]
    pub interface: String,
    #[arg(long = "address", value_name = "ADDR/PREFIX")]
    pub addresses: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The admin API address, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR")]
    pub admin: SocketAddr,
    /// Bearer token (or RAMPART_ADMIN_TOKEN).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RAMPART_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("read the token file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        Ok(AdminClient {
            addr: self.admin,
            token,
        })
    }
}

#[derive(Args, Debug)]
pub struct CtlArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub op: CtlOp,
}

#[derive(Subcommand, Debug)]
pub enum CtlOp {
    /// Listeners, pools and servers with state, health, weight, in-flight and counters;
    /// the virtual routers (VRRP) with state, priority, addresses and the master heard.
    List {
        /// Print the admin API's JSON document (`/api/state`, virtual routers under
        /// `vrrp`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a server to ready, drain (no new requests) or maintenance.
    SetState {
        pool: String,
        server: String,
        state: String,
    },
    /// Change a server's weight (0..=256).
    SetWeight {
        pool: String,
        server: String,
        weight: u32,
    },
    /// Add a server to a pool without a reload.
    AddServer {
        pool: String,
        name: String,
        address: SocketAddr,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a server from a pool; its requests in flight finish.
    RemoveServer { pool: String, server: String },
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["admin", "pid_file"]))]
pub struct ReloadArgs {
    /// The admin API address (the answer says whether the new config was applied).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// Bearer token (or RAMPART_ADMIN_TOKEN).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RAMPART_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Send SIGHUP to the pid in this file instead (errors go to the lb's log).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
}

pub fn run(args: LbArgs) -> anyhow::Result<()> {
    match args.command {
        Some(LbCommand::Ctl(c)) => return ctl_run(c),
        Some(LbCommand::Reload(r)) => return reload_run(r, false),
        Some(LbCommand::Upgrade(r)) => return reload_run(r, true),
        Some(LbCommand::VipGuard(g)) => {
            return rampart_lb::vrrp::guard_main(&g.interface, &g.addresses)
                .map_err(anyhow::Error::msg)
                .context("guard the virtual IPs")
        }
        None => {}
    }
    let node = args.node.clone();
    let loader: Option<rampart_lb::Loader> = args.config.clone().map(|path| {
        Box::new(move || load(&path, node.as_deref()).map(|(c, _)| c)) as rampart_lb::Loader
    });
    let mut node_threads = None;
    let mut config = match (&args.config, args.listen) {
        (Some(path), _) => match load(path, args.node.as_deref()) {
            Ok((c, t)) => {
                node_threads = t;
                c
            }
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
        .map(|c| LbConfig {
            forwarded_headers: args.forwarded_headers.unwrap_or_default(),
            ..c
        })
        .map_err(anyhow::Error::msg)
        .context("build the quick-mode config")?,
        (None, None) => anyhow::bail!("give --config FILE or --listen ADDR --backend ADDR"),
    };
    let token = args
        .admin_token_file
        .clone()
        .map(rampart_topology::lb::TokenSource::File);
    let local = move |a| AdminConfig {
        token: token.clone(),
        ..AdminConfig::local(a)
    };
    if let Some(a) = args.admin {
        config.admin = Some(local(a));
    }
    let admin_override = args.admin;
    let loader = loader.map(|l| {
        Box::new(move || {
            let mut c = l()?;
            if let Some(a) = admin_override {
                c.admin = Some(local(a));
            }
            Ok(c)
        }) as rampart_lb::Loader
    });
    let threads = args.threads.or(node_threads).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    rampart_lb::run(
        config,
        rampart_lb::RunOptions {
            threads,
            loader,
            pid_file: args.pid_file,
        },
    )
    .context("run the load balancer")
}

/// An lb file, or with `node` a topology file's [lb] section for that node (and its threads).
fn load(path: &std::path::Path, node: Option<&str>) -> Result<(LbConfig, Option<usize>), String> {
    let Some(name) = node else {
        return LbConfig::load(path)
            .map(|c| (c, None))
            .map_err(|e| e.to_string());
    };
    let lb = rampart_topology::lb_section::LbTopology::load(path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{}: the topology has no [lb] section", path.display()))?;
    let n = lb.node(name).ok_or_else(|| {
        let known: Vec<&str> = lb.nodes.iter().map(|n| n.name.as_str()).collect();
        format!(
            "{}: no lb node \"{name}\" in [[lb.nodes]]; known: {}",
            path.display(),
            known.join(", ")
        )
    })?;
    Ok((lb.node_config(n), Some(n.threads)))
}

fn ctl_run(c: CtlArgs) -> anyhow::Result<()> {
    let client = c.admin.client()?;
    match c.op {
        CtlOp::List { json } => {
            let v = client.state()?;
            if json {
                println!("{}", serde_json_pretty(&v));
            } else {
                print!("{}", ctl::format_state(&v));
            }
        }
        CtlOp::SetState {
            pool,
            server,
            state,
        } => {
            client.set_state(&pool, &server, &state)?;
            println!("{pool}/{server}: {state}");
        }
        CtlOp::SetWeight {
            pool,
            server,
            weight,
        } => {
            client.set_weight(&pool, &server, weight)?;
            println!("{pool}/{server}: weight {weight}");
        }
        CtlOp::AddServer {
            pool,
            name,
            address,
            weight,
        } => {
            client.add_server(&pool, &name, &address.to_string(), weight)?;
            println!("{pool}/{name}: added at {address} with weight {weight}");
        }
        CtlOp::RemoveServer { pool, server } => {
            client.remove_server(&pool, &server)?;
            println!("{pool}/{server}: removed (requests in flight finish)");
        }
    }
    Ok(())
}

fn serde_json_pretty(v: &rampart_lb::ctl::Json) -> String {
    rampart_lb::ctl::pretty(v)
}

fn reload_run(r: ReloadArgs, upgrade: bool) -> anyhow::Result<()> {
    if let Some(admin) = r.admin {
        let client = AdminClient {
            addr: admin,
            token: r.token,
        };
        if upgrade {
            let pid = client.upgrade()?;
            println!("upgraded: the new process is pid {pid}; the old one drains and exits");
        } else {
            client.reload()?;
            println!("reloaded");
        }
    } else if let Some(p) = r.pid_file {
        if upgrade {
            ctl::signal(&p, ctl::Signal::SIGUSR2)?;
            println!("SIGUSR2 sent; the lb's log says whether the upgrade happened");
        } else {
            ctl::signal(&p, ctl::Signal::SIGHUP)?;
            println!("SIGHUP sent; the lb's log says whether the new config was applied");
        }
    }
    Ok(())
}
