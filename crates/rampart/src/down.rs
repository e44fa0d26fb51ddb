//! `rampart down`: stop a running stack from another terminal; `rampart reload`: make it
//! re-read its topology; and `rampart exec-child`,
//! the wrapper through which `rampart up` starts every node. The work is in
//! `rampart_up::lifecycle`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rampart_up::config::{resolve, ResolveOptions};
use rampart_up::lifecycle::{say, Down};

/// Stop the stack of the running `rampart up` of this topology (SIGTERM to it, then wait
/// until it has stopped every node), or stop what a killed `rampart up` left running.
#[derive(Args, Debug)]
pub struct DownArgs {
    /// The topology file (default: the built-in default topology).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory of the running `rampart up` [default: .rampart/<cluster> beside the topology file].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Give up waiting for `rampart up` to stop after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 180)]
    pub timeout: u64,
}

pub fn run(args: DownArgs) -> anyhow::Result<()> {
    let r = resolve(&ResolveOptions {
        config: args.config,
        data_dir: args.data_dir,
        port_base: None,
    })
    .map_err(crate::up::config_error)?;
    let outcome = rampart_up::lifecycle::down(
        &r.data_dir,
        &r.topology.cluster,
        &rampart_up::supervise::db_dirs(&r.topology),
        Duration::from_secs(args.timeout),
    )
    .with_context(|| format!("stop the stack running from {}", r.data_dir.display()))?;
    match outcome {
        Down::NothingRunning => say(&format!(
            "rampart down: no stack is running from {}",
            r.data_dir.display()
        )),
        Down::Stopped { up_pid, left } => {
            if !left.is_empty() {
                say(&format!("  also stopped what it left: {}", left.describe()));
            }
            say(&format!(
                "rampart down: stopped (rampart up pid {up_pid} has exited)"
            ));
        }
        Down::Orphans { up_pid, left } => {
            if left.is_empty() {
                say(&format!(
                    "rampart down: nothing of the stack of rampart up pid {up_pid} was still running"
                ));
            } else {
                say(&format!(
                    "rampart down: stopped what rampart up pid {up_pid} left: {}",
                    left.describe()
                ));
            }
        }
    }
    Ok(())
}

/// Make the running stack re-read its topology file: the balancers (pools, routes,
/// certificates), the db agents ([db.parameters]), the monitor (its rules) and the web
/// servers (their certificate). The file is checked first; a file with errors is refused
/// here and nothing is signalled.
#[derive(Args, Debug)]
pub struct ReloadArgs {
    /// The topology file (default: the built-in default topology).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory of the running `rampart up` [default: .rampart/<cluster> beside the topology file].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let r = resolve(&ResolveOptions {
        config: args.config,
        data_dir: args.data_dir,
        port_base: None,
    })
    .map_err(crate::up::config_error)
    .context("nothing was reloaded")?;
    anyhow::ensure!(
        !r.builtin,
        "the stack runs {}: there is no file to edit and reload (start it with `rampart up --config FILE`)",
        r.origin
    );
    let rampart_up::lifecycle::ReloadOutcome {
        signalled: done,
        skipped,
    } = rampart_up::lifecycle::reload(&r.data_dir)
        .with_context(|| format!("reload the stack running from {}", r.data_dir.display()))?;
    for (node, why) in &skipped {
        say(&format!("  {node:<8} skipped: {why}"));
    }
    if done.is_empty() {
        say("rampart reload: no balancer, db agent, web server or monitor is running to reload");
        return Ok(());
    }
    for d in &done {
        say(&format!(
            "  {:<8} {:<8} pid {:<7} log {}",
            d.node,
            d.kind,
            d.pid,
            d.log.display()
        ));
    }
    say(&format!(
        "rampart reload: {} node(s) asked to re-read {}; each logs what it applied or why it refused",
        done.len(),
        r.origin
    ));
    Ok(())
}

/// `rampart exec-child --parent PID -- PROGRAM ARGS...` (internal, used by `rampart up`).
#[derive(Args, Debug)]
pub struct ExecChildArgs {
    /// The `rampart up` this node must not outlive.
    #[arg(long, value_name = "PID")]
    pub parent: u32,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

pub fn exec_child(args: ExecChildArgs) -> anyhow::Result<()> {
    // Returns only if the program could not be started.
    Err(rampart_up::lifecycle::exec_child(
        args.parent,
        &args.command,
    ))
    .context("start a node of rampart up")
}
