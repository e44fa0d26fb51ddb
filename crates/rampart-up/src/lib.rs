//! `rampart up`, `rampart status` and `rampart chaos`: run every role of a topology as
//! child processes on this machine, report their health, and break them on purpose.
//!
//! - [`config`] finds the topology (a file, or the built-in default materialised in the
//!   data directory) and validates it whole.
//! - [`plan`] turns a topology into the processes to run (pure).
//! - [`supervise`] starts them in dependency order (etcd, db, web, lb), waits for each
//!   to be healthy, restarts crashed ones with exponential backoff, and stops everything
//!   in reverse order on SIGINT/SIGTERM (grace period, then SIGKILL of the process group).
//! - [`status`] probes every node; [`chaos`] runs fire drills with a client-side report,
//!   through [`site`]: the site's HTTPS listener, verified against the stack's CA.
//! - [`units`] renders the same processes as systemd units, one per node, for running
//!   the topology across machines (pure).
//!
//! Every child runs in its own process group, so a kill reaches what it started
//! (PostgreSQL under a db agent), and, when cgroup v2 is writable, in its node's own
//! cgroup ([`cgroup`]), which [`netcut`] uses to cut a node's network for a partition
//! drill. The running stack is described in `<data>/up.json`. [`lifecycle`]: every node
//! dies with `up` (parent-death signal), a new `up` stops what a killed one left, and
//! `rampart down` stops a running stack from elsewhere.

pub mod backoff;
pub mod cgroup;
pub mod chaos;
pub mod config;
pub mod freeze;
pub mod hostnet;
pub mod lbadmin;
pub mod lifecycle;
pub use rampart_http1 as http;
pub mod netcut;
pub mod plan;
pub mod reap;
pub mod site;
pub mod state;
pub mod status;
pub mod supervise;
pub mod tls;
pub mod units;
pub mod vipdrill;

use std::path::PathBuf;

/// Why `up`, `status` or `chaos` could not do their work.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The topology is invalid (every diagnostic with file:line:col).
    #[error("{0}")]
    Config(#[from] rampart_topology::ConfigError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A program the topology needs is not installed.
    #[error("{program} not found: {hint}")]
    Missing { program: String, hint: String },
    #[error("{0}")]
    Port(String),
    #[error("{0}")]
    Start(String),
    #[error("{0}")]
    NotRunning(String),
    #[error("{0}")]
    Drill(String),
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> UpError {
    let path = path.into();
    move |source| UpError::Io { what, path, source }
}
