//! `rampart db`: the PostgreSQL agent and its operator commands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use rampart_topology::db::DbConfig;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DbArgs {
    /// Topology file ([cluster] and [db] sections).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// This agent's node name (one of [[db.nodes]]).
    #[arg(long)]
    node: Option<String>,
    #[command(subcommand)]
    command: Option<DbCommand>,
}

#[derive(Subcommand)]
enum DbCommand {
    /// Show the members: role, state, timeline, LSN, lag, leader lease age.
    List,
    /// Planned change of primary with no lost writes.
    Switchover {
        /// The replica to promote.
        #[arg(long)]
        to: String,
        /// Seconds to wait for the new leader.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Forced change of primary (may lose unreplicated writes in asynchronous mode).
    Failover {
        /// The node to promote; without it the healthiest replica wins.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Suspend automatic failover (maintenance).
    Pause,
    /// Resume automatic failover.
    Resume,
    /// Apply [db.parameters] from the topology file without a restart (patronictl reload).
    ///
    /// Each agent (or each --member) re-reads the file and applies the settings with a
    /// configuration reload; the answer names the settings that wait for a restart.
    Reload {
        /// Only these nodes (repeatable); default: every node.
        #[arg(long = "member")]
        members: Vec<String>,
    },
    /// Restart PostgreSQL, replicas first and the leader last (patronictl restart).
    ///
    /// One node at a time, each answered once its PostgreSQL answers again; the leader
    /// restarts in place and stays the leader (no failover).
    Restart {
        /// Only these nodes (repeatable); default: every node.
        #[arg(long = "member")]
        members: Vec<String>,
        /// Only nodes where a changed setting waits for a restart.
        #[arg(long)]
        pending: bool,
    },
    /// Rebuild a replica from a fresh copy of the leader (patronictl reinit).
    ///
    /// For a replica whose data you no longer trust: PostgreSQL stopped, a pg_basebackup of
    /// the leader built beside the old directory (kept if the copy fails), started as a
    /// replica; waits until it streams again.
    Reinit {
        /// The replica(s) to rebuild (repeatable; the leader is refused).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Seconds to wait for each to stream again.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// The cluster's timeline switches: when, and which node became leader (patronictl history).
    History,
    /// Internal: the fencing watchdog started by the agent.
    #[command(hide = true)]
    Watchdog,
}

fn load(config: &Option<PathBuf>) -> anyhow::Result<DbConfig> {
    let path = config.as_ref().context("--config FILE is required")?;
    DbConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(args: DbArgs) -> anyhow::Result<()> {
    if let Some(DbCommand::Watchdog) = args.command {
        rampart_db::watchdog::run_watchdog();
        return Ok(());
    }
    let cfg = load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async move {
        match args.command {
            None => {
                let node = args
                    .node
                    .context("--node NAME is required to run the agent")?;
                // The data directory's filesystem in /metrics (space, I/O).
                if let Some(n) = cfg.nodes.iter().find(|n| n.name == node) {
                    rampart_metrics::host::set_data_dirs(vec![n.data_dir.clone()]);
                }
                // Re-read by a reload: absolute, whatever the agent's directory by then.
                let path = args
                    .config
                    .as_ref()
                    .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
                rampart_db::run_agent(cfg, &node, path)
                    .await
                    .context("run the db agent")
            }
            Some(DbCommand::List) => {
                print!(
                    "{}",
                    rampart_db::ops::list(&cfg)
                        .await
                        .context("read the cluster state")?
                );
                Ok(())
            }
            Some(DbCommand::Switchover { to, wait }) => {
                let msg =
                    rampart_db::ops::switchover(&cfg, Some(&to), false, Duration::from_secs(wait))
                        .await
                        .context("switch over")?;
                println!("{msg}");
                Ok(())
            }
            Some(DbCommand::Failover { to, wait }) => {
                let msg = rampart_db::ops::switchover(
                    &cfg,
                    to.as_deref(),
                    true,
                    Duration::from_secs(wait),
                )
                .await
                .context("fail over")?;
                println!("{msg}");
                Ok(())
            }
            Some(DbCommand::Pause) => {
                rampart_db::ops::set_pause(&cfg, true)
                    .await
                    .context("pause")?;
                println!("automatic failover paused");
                Ok(())
            }
            Some(DbCommand::Resume) => {
                rampart_db::ops::set_pause(&cfg, false)
                    .await
                    .context("resume")?;
                println!("automatic failover resumed");
                Ok(())
            }
            Some(DbCommand::Reload { members }) => {
                let out =
                    rampart_db::node_ops::run(&cfg, &members, rampart_db::node_ops::NodeOp::Reload)
                        .await
                        .context("reload")?;
                println!("{out}");
                Ok(())
            }
            Some(DbCommand::Restart { members, pending }) => {
                let out = rampart_db::node_ops::run(
                    &cfg,
                    &members,
                    rampart_db::node_ops::NodeOp::Restart {
                        pending_only: pending,
                    },
                )
                .await
                .context("restart")?;
                println!("{out}");
                Ok(())
            }
            Some(DbCommand::Reinit { members, wait }) => {
                let out = rampart_db::node_ops::run(
                    &cfg,
                    &members,
                    rampart_db::node_ops::NodeOp::Reinit {
                        wait: Duration::from_secs(wait),
                    },
                )
                .await
                .context("reinit")?;
                println!("{out}");
                Ok(())
            }
            Some(DbCommand::History) => {
                print!(
                    "{}",
                    rampart_db::node_ops::history(&cfg)
                        .await
                        .context("read the cluster's history")?
                );
                Ok(())
            }
            Some(DbCommand::Watchdog) => Ok(()),
        }
    })
}
