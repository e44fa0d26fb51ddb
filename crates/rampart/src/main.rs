//! The `rampart` binary: parses the command line and calls into the library crates.

use clap::{Parser, Subcommand};

mod audit;
mod chaos;
mod db;
mod down;
mod firewall;
mod init;
mod lb;
mod monitor;
mod status;
mod units;
mod up;
mod web;

/// mimalloc (v2: freed pages go back to the OS after 10 ms) instead of glibc malloc, which
/// keeps freed per-connection buffers resident: less memory per idle keep-alive connection
/// in `rampart lb`. See bench/lb/run.sh --only idle.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "rampart",
    version,
    about = "A complete, highly available web infrastructure from one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the L7/L4 load balancer.
    Lb(Box<lb::LbArgs>),
    /// Write a commented starter topology file (the default stack).
    Init(init::InitArgs),
    /// Review a topology: single points of failure, security gaps, missing monitoring.
    Audit(audit::AuditArgs),
    /// Run every role of a topology on this machine until Ctrl-C.
    Up(up::UpArgs),
    /// Stop the stack a `rampart up` runs (from another terminal), or what a killed one left.
    Down(down::DownArgs),
    /// Make the running stack re-read its topology: balancers, db agents, monitor, web certificates.
    Reload(down::ReloadArgs),
    /// (internal) How `rampart up` starts each node: dies with `up`, then execs the node.
    #[command(hide = true)]
    ExecChild(down::ExecChildArgs),
    /// Show every node of the topology: role, health, address, pid.
    Status(status::StatusArgs),
    /// Fire drills against the running local stack.
    Chaos(chaos::ChaosArgs),
    /// Run the PostgreSQL agent (leader lease, failover), or operate the db cluster.
    Db(db::DbArgs),
    /// Print, apply or remove a node's nftables firewall, from the topology.
    Firewall(firewall::FirewallArgs),
    /// Run the monitor: scrape every node, alert, serve the dashboard.
    Monitor(monitor::MonitorArgs),
    /// Run a web/app server: static files, a proxy to your app, or the built-in guestbook.
    Web(Box<web::WebArgs>),
    /// Write a systemd unit per node of the topology, to run it across machines.
    Units(units::UnitsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Lb(args) => lb::run(*args),
        Command::Init(args) => init::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Up(args) => up::run(args),
        Command::Down(args) => down::run(args),
        Command::Reload(args) => down::reload(args),
        Command::ExecChild(args) => down::exec_child(args),
        Command::Status(args) => status::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Db(args) => db::run(args),
        Command::Web(args) => web::run(*args),
        Command::Monitor(args) => monitor::run(args),
        Command::Firewall(args) => firewall::run(args),
        Command::Units(args) => units::run(args),
    }
}

/// Logs to stderr, filtered by RUST_LOG (default: info).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}
