//! Admin endpoints for the lb nodes the topology gives none: `rampart up` runs each such
//! node with `--admin 127.0.0.1:<free port> --admin-token-file <data>/lb/<node>.admin-token`
//! (loopback clients only, and every call needs the token: the file is readable by this
//! user only, kept across starts), and records both in `up.json`, so `rampart status`
//! reads the node's request counters like any other's.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use rampart_topology::{NodeKind, Topology};
use serde::{Deserialize, Serialize};

use crate::plan::ProcSpec;
use crate::{io, UpError};

/// An admin endpoint `rampart up` gave an lb node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalAdmin {
    pub node: String,
    pub address: SocketAddr,
    pub token_file: PathBuf,
}

impl LocalAdmin {
    /// The token, for `Authorization: Bearer` (None when the file cannot be read).
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(&self.token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }
}

fn new_token() -> Result<String, UpError> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(io("read", "/dev/urandom"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn token_file(data_dir: &Path, node: &str) -> Result<PathBuf, UpError> {
    let p = data_dir.join("lb").join(format!("{node}.admin-token"));
    ensure_token(&p)?;
    Ok(p)
}

/// A token in `p` (made when missing or too short), readable by this user only.
fn ensure_token(p: &Path) -> Result<(), UpError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let p = p.to_path_buf();
    let ok = std::fs::read_to_string(&p).is_ok_and(|t| t.trim().len() >= 32);
    if !ok {
        let _ = std::fs::remove_file(&p);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(io("create", &p))?;
        std::io::Write::write_all(&mut f, new_token()?.as_bytes()).map_err(io("write", &p))?;
    }
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
        .map_err(io("protect", &p))?;
    Ok(())
}

/// Give every lb process whose node has no `admin` a loopback admin with a token: adds
/// the arguments to its spec and returns what was given.
pub fn assign(
    t: &Topology,
    data_dir: &Path,
    procs: &mut [ProcSpec],
) -> Result<Vec<LocalAdmin>, UpError> {
    let mut out = Vec::new();
    let Some(lb) = &t.lb else {
        return Ok(out);
    };
    for p in procs.iter_mut().filter(|p| p.kind == NodeKind::Lb) {
        let Some(node) = lb.node(&p.name) else {
            continue;
        };
        if let Some(address) = node.admin {
            // An admin off loopback, guarded by a token file the topology names (the
            // separate-hosts rehearsal): make the token; the monitor and status use it.
            if let Some(f) = &node.admin_token_file {
                ensure_token(f)?;
                out.push(LocalAdmin {
                    node: p.name.clone(),
                    address,
                    token_file: f.clone(),
                });
            }
            continue;
        }
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| {
                UpError::Port(format!("no free loopback port for {}'s admin: {e}", p.name))
            })?
            .port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let token_file = token_file(data_dir, &p.name)?;
        p.args.extend([
            "--admin".to_string(),
            address.to_string(),
            "--admin-token-file".to_string(),
            token_file.display().to_string(),
        ]);
        out.push(LocalAdmin {
            node: p.name.clone(),
            address,
            token_file,
        });
    }
    // The monitor scrapes them (with their tokens) like admins of the topology.
    for p in procs.iter_mut().filter(|p| p.kind == NodeKind::Monitor) {
        for a in &out {
            p.args.extend([
                "--lb-admin".to_string(),
                format!("{}={}", a.node, a.address),
                "--lb-admin-token-file".to_string(),
                format!("{}={}", a.node, a.token_file.display()),
            ]);
        }
    }
    Ok(out)
}
