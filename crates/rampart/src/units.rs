//! `rampart units`: write a systemd unit per node of the topology; the rendering is
//! `rampart_up::units`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rampart_up::config::{resolve, ResolveOptions};
use rampart_up::units::{environment_file, names, render, UnitOptions};

/// Write a systemd unit for each node this machine runs (every node without --node):
/// `rampart <role> --config FILE --node NAME`, etcd members with their flags, ordered
/// etcd, db, web, lb, monitor among the units written together.
#[derive(Args, Debug)]
pub struct UnitsArgs {
    /// The topology file; the units name its absolute path, so it must be at the same
    /// place on every machine.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A node this machine runs (repeat for several); default: every node.
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// Where to write the unit files.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub out: PathBuf,
    /// The rampart binary on the machine [default: this binary].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// etcd's binary on the machine [default: etcd on PATH, else /usr/bin/etcd].
    #[arg(long, value_name = "PATH")]
    pub etcd: Option<PathBuf>,
    /// Run the roles as this user (lb nodes then get CAP_NET_ADMIN, CAP_NET_RAW and
    /// CAP_NET_BIND_SERVICE for VRRP and low ports) [default: root].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Replace unit files that differ from what would be written.
    #[arg(long)]
    pub force: bool,
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("read the current directory")?
        .join(p))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn run(args: UnitsArgs) -> anyhow::Result<()> {
    let config = std::fs::canonicalize(&args.config)
        .with_context(|| format!("find the topology {}", args.config.display()))?;
    let r = resolve(&ResolveOptions {
        config: Some(config.clone()),
        ..Default::default()
    })
    .map_err(crate::up::config_error)?;
    let bin = match &args.bin {
        Some(b) => absolute(b)?,
        None => std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .context("find this binary")?,
    };
    let etcd = match &args.etcd {
        Some(e) => absolute(e)?,
        None => on_path("etcd").unwrap_or_else(|| PathBuf::from("/usr/bin/etcd")),
    };
    let units = render(
        &r.topology,
        &UnitOptions {
            bin: &bin,
            etcd: &etcd,
            config: &config,
            data_dir: &r.data_dir,
            nodes: &args.nodes,
            user: args.user.as_deref(),
        },
    )
    .context("render the units")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    // Refuse before writing anything, so a refusal leaves the folder as it was.
    for u in &units {
        let path = args.out.join(&u.file_name);
        match std::fs::read_to_string(&path) {
            Ok(old) if old != u.text && !args.force => anyhow::bail!(
                "{} exists and differs from the unit for {}; pass --force to replace it",
                path.display(),
                u.node
            ),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        }
    }
    for u in &units {
        let path = args.out.join(&u.file_name);
        let same = std::fs::read_to_string(&path).is_ok_and(|old| old == u.text);
        if !same {
            std::fs::write(&path, &u.text).with_context(|| format!("write {}", path.display()))?;
        }
        println!(
            "{} {} ({} {})",
            if same { "unchanged" } else { "wrote" },
            path.display(),
            u.kind,
            u.node
        );
    }
    let list = names(&units).join(" ");
    let system = Path::new("/etc/systemd/system");
    if args.out != system {
        println!(
            "then copy them to {} on the machine, and run:",
            system.display()
        );
    } else {
        println!("then run:");
    }
    println!("  systemctl daemon-reload && systemctl enable --now {list}");
    println!(
        "secrets named by token_env/password_env go in {} (NAME=value lines)",
        environment_file(&r.topology.cluster)
    );
    if !etcd.is_file()
        && units
            .iter()
            .any(|u| u.kind == rampart_topology::NodeKind::Etcd)
    {
        eprintln!(
            "note: {} is not on this machine; pass --etcd PATH if it is elsewhere on the target",
            etcd.display()
        );
    }
    Ok(())
}
