//! `rampart chaos`: fire drills against the stack `rampart up` runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use rampart_up::chaos::{Drill, DrillOptions};
use rampart_up::config::{resolve, ResolveOptions};

/// Break the running local stack on purpose and report what a client saw: failed
/// requests, time to recovery, acknowledged writes lost.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub drill: DrillCmd,
    /// The topology file (default: the built-in default topology).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory of the running `rampart up` [default: .rampart/<cluster> beside the topology file].
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Seconds to watch after the fault.
    #[arg(long, value_name = "SECS", default_value_t = 20, global = true)]
    pub observe: u64,
    /// Guestbook writes per second during the drill.
    #[arg(long, value_name = "N", default_value_t = 20, global = true)]
    pub rate: u32,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum DrillCmd {
    /// SIGKILL the primary database node (agent and PostgreSQL).
    KillPrimary,
    /// Freeze the primary database node (agent, watchdog and PostgreSQL: the cgroup
    /// freezer, else SIGSTOP) for --for seconds, as a paused VM, then thaw it: a replica
    /// takes over meanwhile and the thawed node must come back as a replica.
    FreezePrimary {
        /// Seconds the node stays frozen.
        #[arg(long = "for", value_name = "SECS", default_value_t = 8)]
        duration: u64,
    },
    /// SIGKILL a load balancer (default: the master of the first virtual IP on separate
    /// hosts, else the first running one); the report adds the longest gap a client
    /// probing the site every 10 ms saw.
    KillLb { node: Option<String> },
    /// SIGTERM a load balancer (a clean stop: a master hands its virtual IPs over first).
    StopLb { node: Option<String> },
    /// Take a load balancer's link down for --for seconds, then up (needs rampart up
    /// --hosts netns).
    LbLinkDown {
        node: Option<String>,
        /// Seconds the link stays down.
        #[arg(long = "for", value_name = "SECS", default_value_t = 8)]
        duration: u64,
    },
    /// SIGKILL a web server (default: the first running one).
    KillWeb { node: Option<String> },
    /// Cut a node off the network for --for seconds, then heal (Ctrl-C heals too).
    ///
    /// Every packet between the node (its processes, e.g. a db agent and its PostgreSQL)
    /// and the rest of the stack is dropped, established connections included, while the
    /// node still talks to itself: nftables rules on the node's cgroup (rampart up puts
    /// each node in its own), or, on separate hosts (rampart up --hosts netns), every
    /// packet in and out of the node's host. Needs root, cgroup v2 and nft.
    Partition {
        /// The node to cut off (a name from the topology).
        node: String,
        /// Seconds the cut lasts.
        #[arg(long = "for", value_name = "SECS", default_value_t = 8)]
        duration: u64,
    },
    /// Remove what a drill killed half-way left behind (its nftables table, a host's cut
    /// or link), and the hosts of a killed rampart up --hosts netns.
    Heal,
}

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    let r = resolve(&ResolveOptions {
        config: args.config,
        data_dir: args.data_dir,
        port_base: None,
    })
    .map_err(crate::up::config_error)?;
    let mut o = DrillOptions {
        observe: Duration::from_secs(args.observe),
        rate: args.rate,
        ..Default::default()
    };
    let drill = match args.drill {
        DrillCmd::KillPrimary => Drill::KillPrimary,
        DrillCmd::FreezePrimary { duration } => {
            o.partition_for = Duration::from_secs(duration);
            Drill::FreezePrimary
        }
        DrillCmd::KillLb { node } => Drill::KillLb(node),
        DrillCmd::StopLb { node } => Drill::StopLb(node),
        DrillCmd::LbLinkDown { node, duration } => {
            o.partition_for = Duration::from_secs(duration);
            Drill::LbLinkDown(node)
        }
        DrillCmd::KillWeb { node } => Drill::KillWeb(node),
        DrillCmd::Partition { node, duration } => {
            o.partition_for = Duration::from_secs(duration);
            Drill::Partition(node)
        }
        DrillCmd::Heal => {
            let (tables, other) = rampart_up::chaos::heal(&r)?;
            if tables.is_empty() && other.is_empty() {
                println!("no partition of cluster {} to heal", r.topology.cluster);
            }
            if !tables.is_empty() {
                println!("healed: removed nftables table(s) {}", tables.join(", "));
            }
            if !other.is_empty() {
                println!("healed: {}", other.join(", "));
            }
            return Ok(());
        }
    };
    let report = rampart_up::chaos::run(&r, &drill, &o)?;
    if args.json {
        println!("{}", rampart_up::chaos::report_json(&report));
    } else {
        println!("{report}");
    }
    if report.writes_lost > 0 || report.writes_duplicated > 0 || !report.recovered {
        std::process::exit(1);
    }
    Ok(())
}
