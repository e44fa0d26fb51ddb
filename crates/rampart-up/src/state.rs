//! `<data>/up.json`: what the running `rampart up` started, for `status` and `chaos`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io, UpError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpState {
    /// Pid of the `rampart up` supervisor.
    pub pid: u32,
    pub topology: PathBuf,
    pub data_dir: PathBuf,
    pub nodes: Vec<NodeState>,
    /// The stack's cgroup (`<cgroup2 mount>/rampart-<cluster>-<pid>`, a folder per node),
    /// when `rampart up` could create it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// Admin endpoints `rampart up` gave lb nodes the topology gives none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lb_admin: Vec<crate::lbadmin::LocalAdmin>,
    /// The separate-hosts rehearsal's network (`rampart up --hosts netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<crate::hostnet::HostsState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub kind: String,
    /// Pid (= process group id) of the running process, when it runs.
    pub pid: Option<u32>,
    pub log: PathBuf,
    pub restarts: u32,
    /// "starting", "running", "restarting", "stopped" or "unavailable".
    pub state: String,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("up.json")
}

impl UpState {
    pub fn write(&self) -> Result<(), UpError> {
        let p = path(&self.data_dir);
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &p).map_err(io("rename into place", &p))
    }

    /// The state of a running stack, if its supervisor is alive.
    pub fn read_live(data_dir: &Path) -> Option<UpState> {
        let s = Self::read(data_dir)?;
        pid_alive(s.pid).then_some(s)
    }

    /// The state recorded last, whether its supervisor still runs or not.
    pub fn read(data_dir: &Path) -> Option<UpState> {
        let text = std::fs::read_to_string(path(data_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Whether a process with this pid exists (signal 0).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
