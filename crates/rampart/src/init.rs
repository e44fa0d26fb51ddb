//! `rampart init`: write a commented starter topology (the built-in default one).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rampart_topology::default::{render, DefaultOptions, PORT_BASE_RANGE};

/// Write a commented starter topology file: the default stack (two load balancers, three
/// web servers, PostgreSQL primary + two replicas, three etcd members, a monitor).
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to write the topology.
    #[arg(default_value = "rampart.toml", value_name = "PATH")]
    pub path: PathBuf,
    /// Cluster name (prefixes every etcd key).
    #[arg(long, default_value = "main")]
    pub cluster: String,
    /// Ports are PORT_BASE + offset (site +80, monitor +90, lb +91.., lb admin +191.., web +101.., db api
    /// +201.., PostgreSQL +301.., etcd +401..): another base runs a second stack beside.
    #[arg(long, default_value_t = 8000)]
    pub port_base: u16,
    /// Folder for every node's data [default: .rampart/<cluster> beside PATH].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let (lo, hi) = PORT_BASE_RANGE;
    anyhow::ensure!(
        (lo..=hi).contains(&args.port_base),
        "--port-base must be between {lo} and {hi}"
    );
    anyhow::ensure!(
        !args.cluster.is_empty()
            && args
                .cluster
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "--cluster must be letters, digits, '-' or '_'"
    );
    if args.path.exists() && !args.force {
        anyhow::bail!(
            "{} exists; pass --force to overwrite it",
            args.path.display()
        );
    }
    let cwd = std::env::current_dir().context("read the current directory")?;
    let folder = args
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // By default where `rampart up --config PATH` keeps its state: beside the file, written
    // relative to it so the folder can move.
    let data_dir = match &args.data_dir {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => cwd.join(d),
        None => Path::new(".rampart").join(&args.cluster),
    };
    let text = render(&DefaultOptions {
        cluster: &args.cluster,
        data_dir: &data_dir,
        port_base: args.port_base,
    });
    std::fs::create_dir_all(folder).with_context(|| format!("create {}", folder.display()))?;
    std::fs::write(&args.path, text).with_context(|| format!("write {}", args.path.display()))?;
    let site = folder.join("site");
    if !site.exists() {
        std::fs::create_dir_all(&site).with_context(|| format!("create {}", site.display()))?;
        std::fs::write(
            site.join("robots.txt"),
            "# Static files of the web nodes ([web] root). The guestbook serves /.\nUser-agent: *\nDisallow:\n",
        )
        .with_context(|| format!("write {}", site.join("robots.txt").display()))?;
    }
    println!(
        "wrote {} (cluster {}, site on 127.0.0.1:{}, data in {})\n\
         next: rampart audit --config {0}   then   rampart up --config {0}",
        args.path.display(),
        args.cluster,
        u32::from(args.port_base) + 80,
        if data_dir.is_relative() {
            folder.join(&data_dir)
        } else {
            data_dir.clone()
        }
        .display()
    );
    Ok(())
}
