//! Which topology: a file given with `--config`, or the built-in default written to
//! `<data>/topology.toml` (with its `site/` folder) so that every role reads a real file.

use std::path::{Path, PathBuf};

use rampart_topology::default::{render, DefaultOptions};
use rampart_topology::{Source, Topology, TopologyFile};

use crate::{io, UpError};

/// A validated topology and where its data lives.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub topology: Topology,
    /// The topology file the roles are started with.
    pub file: PathBuf,
    /// What to call it in messages ("the built-in default topology" or the path).
    pub origin: String,
    /// Folder of `up.json`, logs, generated lb files (and, for the default, all data).
    pub data_dir: PathBuf,
    pub builtin: bool,
}

/// Options of [`resolve`].
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    pub config: Option<PathBuf>,
    /// Default: `.rampart/<cluster>` beside the topology file (the current folder for the
    /// built-in default).
    pub data_dir: Option<PathBuf>,
    /// Port base of the built-in default topology (default 8000).
    pub port_base: Option<u16>,
}

fn absolute(p: &Path) -> Result<PathBuf, UpError> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(io("read the current directory", "."))?;
    Ok(cwd.join(p))
}

/// Find, (for the default) write, and validate the topology. When the stack running from
/// its data folder is the separate-hosts rehearsal, that rehearsal's topology (what the
/// roles run) is the one returned, so `status` and the drills see the hosts' addresses.
pub fn resolve(o: &ResolveOptions) -> Result<Resolved, UpError> {
    let r = resolve_file(o)?;
    if let Some(s) = crate::state::UpState::read_live(&r.data_dir) {
        if s.hosts.is_some() && s.topology != r.file && o.config.as_deref() != Some(&s.topology) {
            let rehearsal = resolve_file(&ResolveOptions {
                config: Some(s.topology.clone()),
                data_dir: Some(r.data_dir.clone()),
                port_base: None,
            })?;
            return Ok(Resolved {
                origin: format!("{}, on separate hosts", r.origin),
                builtin: r.builtin,
                ..rehearsal
            });
        }
    }
    Ok(r)
}

fn resolve_file(o: &ResolveOptions) -> Result<Resolved, UpError> {
    match &o.config {
        Some(path) => {
            let src = Source::read(path)?;
            let raw = TopologyFile::parse(&src)?;
            let data_dir = match &o.data_dir {
                Some(d) => absolute(d)?,
                // Beside the file, so every command finds the running stack from the file.
                None => absolute(
                    &path
                        .parent()
                        .unwrap_or(Path::new("."))
                        .join(".rampart")
                        .join(raw.cluster.name.get_ref()),
                )?,
            };
            export_db_password(&raw);
            let topology = Topology::validate(&src, &raw)?;
            Ok(Resolved {
                topology,
                file: absolute(path)?,
                origin: path.display().to_string(),
                data_dir,
                builtin: false,
            })
        }
        None => {
            let data_dir = absolute(o.data_dir.as_deref().unwrap_or(Path::new(".rampart/main")))?;
            let text = render(&DefaultOptions {
                cluster: "main",
                data_dir: &data_dir,
                port_base: o.port_base.unwrap_or(8000),
            });
            std::fs::create_dir_all(data_dir.join("site"))
                .map_err(io("create", data_dir.join("site")))?;
            let file = data_dir.join("topology.toml");
            if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&file, &text).map_err(io("write", &file))?;
            }
            let src = Source::new(&file, text);
            let raw = TopologyFile::parse(&src)?;
            export_db_password(&raw);
            let topology = Topology::validate(&src, &raw)?;
            Ok(Resolved {
                topology,
                file,
                origin: "the built-in default topology".into(),
                data_dir,
                builtin: true,
            })
        }
    }
}

/// The guestbook reads its database password from the env var `[web.database]
/// password_env` names; when that variable is unset, give it the `[db]` superuser
/// password of the same file (the user the db agents create), for this process and the
/// roles it starts.
fn export_db_password(raw: &TopologyFile) {
    let (Some(web), Some(db)) = (&raw.web, &raw.db) else {
        return;
    };
    let Some(var) = web.database.as_ref().and_then(|d| d.password_env.as_ref()) else {
        return;
    };
    if std::env::var_os(var.get_ref()).is_none() {
        let pw = db
            .superuser_password
            .as_ref()
            .map(|p| p.get_ref().clone())
            .unwrap_or_else(|| "rampart".to_string());
        std::env::set_var(var.get_ref(), pw);
    }
}
