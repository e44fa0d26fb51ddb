//! One cgroup v2 per node of a local stack, so `rampart chaos partition` can cut a node's
//! network with nftables (which matches a packet's socket by its cgroup).
//!
//! `rampart up` creates `<cgroup2 mount>/rampart-<cluster>-<up pid>/<node>` for every node
//! and starts each process through `sh`, which moves itself into the node's cgroup before
//! it execs the program: every socket the node opens (its PostgreSQL's too: children
//! inherit the cgroup) belongs to that cgroup from the start. Best effort: without a
//! writable cgroup2 hierarchy, nodes run where `rampart up` runs, and a partition drill
//! says why it cannot cut them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo` text (pure).
pub fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount)))
    })
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup2 is mounted on this machine, if it is.
pub fn cgroup2_mount() -> Option<PathBuf> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// A cluster name as a cgroup (and nftables) name part: letters, digits, `_`.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The folder name of a stack's cgroup.
pub fn stack_dir_name(cluster: &str, up_pid: u32) -> String {
    format!("rampart-{}-{up_pid}", sanitize(cluster))
}

/// The cgroups of one running stack.
#[derive(Debug, Clone)]
pub struct StackCgroups {
    /// `<mount>/rampart-<cluster>-<pid>`.
    pub dir: PathBuf,
}

impl StackCgroups {
    /// Create the stack's cgroup (and drop the empty ones of stacks of this cluster
    /// whose `rampart up` is gone). The error says what is missing.
    pub fn create(cluster: &str, up_pid: u32) -> Result<StackCgroups, String> {
        let mount = cgroup2_mount().ok_or_else(|| {
            "no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)"
                .to_string()
        })?;
        remove_stale(&mount, cluster);
        let dir = mount.join(stack_dir_name(cluster, up_pid));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create cgroup {} ({e})", dir.display()))?;
        Ok(StackCgroups { dir })
    }

    pub fn node(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn ensure_node(&self, name: &str) -> Result<PathBuf, String> {
        let d = self.node(name);
        std::fs::create_dir_all(&d)
            .map_err(|e| format!("cannot create cgroup {} ({e})", d.display()))?;
        Ok(d)
    }

    /// Kill whatever is still in the stack's cgroups, then remove them (best effort:
    /// waits up to `wait` for the processes to go).
    pub fn remove(&self, wait: Duration) {
        remove_tree(&self.dir, wait);
    }
}

fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

fn remove_tree(dir: &Path, wait: Duration) {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        let c = children(&all[i]);
        all.extend(c);
        i += 1;
    }
    // Deepest first.
    all.reverse();
    for d in &all {
        let _ = std::fs::write(d.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + wait;
    for d in &all {
        while std::fs::remove_dir(d).is_err() && d.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Remove the empty cgroups of this cluster's stacks whose `rampart up` no longer runs.
fn remove_stale(mount: &Path, cluster: &str) {
    let prefix = format!("rampart-{}-", sanitize(cluster));
    for d in children(mount) {
        let Some(pid) = d
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !crate::state::pid_alive(pid) {
            let empty = |c: &Path| {
                std::fs::read_to_string(c.join("cgroup.procs")).is_ok_and(|t| t.trim().is_empty())
            };
            let subs = children(&d);
            if subs.iter().all(|s| empty(s)) && empty(&d) {
                for s in subs {
                    let _ = std::fs::remove_dir(s);
                }
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
}

/// What `sh` runs to enter the node's cgroup (`$1`: its `cgroup.procs`) and exec the
/// program (`$2...`) under the same pid, so the process group and pid stay the ones
/// `rampart up` records.
const ENTER: &str = "echo $$ > \"$1\" || echo \"rampart up: could not enter cgroup $1: rampart chaos partition cannot cut this node\" >&2; shift; exec \"$@\"";

/// [`command`], inside the network namespace `netns` when given (`ip netns exec`, which
/// execs: the pid stays the one `rampart up` records). The process enters its cgroup
/// first, then the namespace: `ip netns exec` mounts a sysfs of the namespace over `/sys`,
/// where the cgroup2 hierarchy is not mounted, so a process could not enter its cgroup
/// from inside (the cgroup is kept across both execs).
pub fn command_in(
    netns: Option<&str>,
    cgroup: Option<&Path>,
    program: &Path,
    args: &[String],
) -> Command {
    let Some(ns) = netns else {
        return command(cgroup, program, args);
    };
    let mut c = start(cgroup, "ip".as_ref());
    c.args(["netns", "exec", ns]).arg(program).args(args);
    c
}

/// The command that runs `program args` in the cgroup `cgroup` (when there is one).
pub fn command(cgroup: Option<&Path>, program: &Path, args: &[String]) -> Command {
    let mut c = start(cgroup, program.as_os_str());
    c.args(args);
    c
}

/// `program`, started through [`ENTER`] when there is a cgroup to enter.
fn start(cgroup: Option<&Path>, program: &std::ffi::OsStr) -> Command {
    match cgroup {
        Some(cg) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(ENTER)
                .arg("rampart-enter-cgroup")
                .arg(cg.join("cgroup.procs"))
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The cgroup v2 path of a process (`0::/path` line of `/proc/PID/cgroup`).
pub fn of_pid(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_comes_from_mountinfo_in_a_hybrid_or_a_pure_hierarchy() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:25 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let spaced = "30 1 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(parse_mountinfo(spaced), Some(PathBuf::from("/mnt/my cg")));
        let v1_only = "27 25 0:25 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_mountinfo(v1_only), None);
    }

    #[test]
    fn stack_cgroup_names_are_safe_and_per_supervisor() {
        assert_eq!(stack_dir_name("main", 42), "rampart-main-42");
        assert_eq!(stack_dir_name("my shop/eu", 7), "rampart-my_shop_eu-7");
    }
}
