//! Freezing a node for the `freeze-primary` drill, as a paused VM: the cgroup v2 freezer
//! when the node runs in its own cgroup (every process at once), else SIGSTOP of its
//! process group and of its PostgreSQL (the postmaster, then each of its children). Thawed
//! the same way, also on Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::UpError;

/// What was frozen, to thaw it.
#[derive(Debug)]
pub struct Frozen {
    /// The node's cgroup, frozen through `cgroup.freeze`.
    cgroup: Option<PathBuf>,
    /// Stopped by signals: the node's process group and the other processes.
    group: Option<i32>,
    pids: Vec<i32>,
}

/// The children of `parent` (from `/proc`).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: i32 = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// `frozen 1` in the cgroup's `cgroup.events`.
fn cgroup_frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "frozen 1"))
}

/// Freeze the node whose process group is `group` (its agent's pid): through `cgroup`
/// when given (the node's own cgroup), else by signals, with the postmaster named in
/// `data_dir/postmaster.pid` and its children.
pub fn freeze(
    cgroup: Option<&Path>,
    group: u32,
    data_dir: Option<&Path>,
) -> Result<Frozen, UpError> {
    let gid = i32::try_from(group).map_err(|_| UpError::Drill(format!("bad pid {group}")))?;
    if let Some(dir) = cgroup.filter(|d| d.join("cgroup.freeze").exists()) {
        std::fs::write(dir.join("cgroup.freeze"), "1").map_err(|e| {
            UpError::Drill(format!(
                "freeze {}: {e}",
                dir.join("cgroup.freeze").display()
            ))
        })?;
        let until = Instant::now() + Duration::from_secs(2);
        while !cgroup_frozen(dir) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        return Ok(Frozen {
            cgroup: Some(dir.to_path_buf()),
            group: None,
            pids: Vec::new(),
        });
    }
    killpg(Pid::from_raw(gid), Signal::SIGSTOP)
        .map_err(|e| UpError::Drill(format!("SIGSTOP to group {group}: {e}")))?;
    let mut pids = Vec::new();
    let pm = data_dir
        .and_then(|d| std::fs::read_to_string(d.join("postmaster.pid")).ok())
        .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
    if let Some(pm) = pm {
        // The postmaster first (it forks no more), then every child it has.
        let _ = kill(Pid::from_raw(pm), Signal::SIGSTOP);
        pids.push(pm);
        for c in children_of(pm) {
            let _ = kill(Pid::from_raw(c), Signal::SIGSTOP);
            pids.push(c);
        }
    }
    Ok(Frozen {
        cgroup: None,
        group: Some(gid),
        pids,
    })
}

impl Frozen {
    /// Let every frozen process run again (all at once with the cgroup freezer).
    pub fn thaw(&mut self) -> Result<(), UpError> {
        if let Some(dir) = self.cgroup.take() {
            std::fs::write(dir.join("cgroup.freeze"), "0").map_err(|e| {
                UpError::Drill(format!("thaw {}: {e}", dir.join("cgroup.freeze").display()))
            })?;
        }
        if let Some(g) = self.group.take() {
            let _ = killpg(Pid::from_raw(g), Signal::SIGCONT);
        }
        for p in self.pids.drain(..) {
            let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
        }
        Ok(())
    }
}
