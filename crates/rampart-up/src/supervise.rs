//! `rampart up`: start every role, wait for health, keep them running, stop them cleanly.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rampart_topology::{NodeKind, Topology};

use crate::backoff::Backoff;
use crate::config::{resolve, ResolveOptions, Resolved};
use crate::plan::{plan, Plan, Probe, ProcSpec, Tools};
use crate::state::{NodeState, UpState};
use crate::{io, outln, UpError};

mod run;
pub use run::{db_dirs, run};

/// Options of `rampart up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub resolve: ResolveOptions,
    /// Wipe the data of every node first.
    pub fresh: bool,
    /// The `rampart` binary that runs the roles (normally this executable).
    pub rampart: PathBuf,
    /// Give up when a group of roles is not healthy after this long.
    pub start_timeout: Duration,
    /// Run every node on a host of its own (network namespaces on a bridge, this /24),
    /// the site on virtual IPs: the separate-hosts rehearsal. `None`: one loopback.
    pub hosts: Option<std::net::Ipv4Addr>,
    /// `hosts` was not chosen on the command line: the topology's `[hosts]` decides.
    pub hosts_from_topology: bool,
}

/// Where Debian puts etcd; PATH is searched first.
const ETCD_DIRS: [&str; 2] = ["/usr/bin", "/usr/local/bin"];

fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(extra.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// PostgreSQL's server binaries, where Debian puts them or on PATH.
pub fn find_postgres() -> Option<PathBuf> {
    for v in ["17", "16", "15"] {
        let d = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if d.join("postgres").is_file() {
            return Some(d);
        }
    }
    find_program("postgres", &[]).and_then(|p| p.parent().map(Path::to_path_buf))
}

/// Whether `rampart <role>` exists in this binary (asks the binary itself).
pub fn binary_has_role(rampart: &Path, kind: NodeKind) -> bool {
    Command::new(rampart)
        .args([kind.as_str(), "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Every address a node of the topology binds (for the free-port check before start).
fn bound_addresses(t: &Topology) -> Vec<(String, SocketAddr)> {
    let mut out = Vec::new();
    for m in t.etcd.iter().flat_map(|e| &e.members) {
        out.push((m.name.clone(), m.client));
        out.push((m.name.clone(), m.peer));
    }
    for n in t.db.iter().flat_map(|d| &d.nodes) {
        out.push((n.name.clone(), n.api));
        if let Ok(ip) = n.host.parse() {
            out.push((n.name.clone(), SocketAddr::new(ip, n.port)));
        }
    }
    for w in &t.web {
        out.push((w.name.clone(), w.listen));
    }
    if let Some(lb) = &t.lb {
        for n in &lb.nodes {
            out.push((n.name.clone(), n.address));
            if let Some(a) = n.admin {
                out.push((format!("{} admin", n.name), a));
            }
        }
        for l in &lb.config.listeners {
            out.push((format!("lb listener {}", l.name), l.address));
        }
    }
    out
}

fn check_ports_free(t: &Topology) -> Result<(), UpError> {
    let mut busy = Vec::new();
    for (who, addr) in bound_addresses(t) {
        if let Err(e) = TcpListener::bind(addr) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                busy.push(format!("{addr} ({who})"));
            }
        }
    }
    if busy.is_empty() {
        Ok(())
    } else {
        Err(UpError::Port(format!(
            "these addresses are already in use: {}. Another stack (or another program) holds them: \
             stop it, or give this one other ports (rampart init --port-base N)",
            busy.join(", ")
        )))
    }
}

/// The folders `--fresh` wipes: the data dir and the data of every node.
fn wipe(r: &Resolved) -> Result<(), UpError> {
    let mut dirs: Vec<PathBuf> = vec![
        r.data_dir.join("etcd"),
        r.data_dir.join("lb"),
        r.data_dir.join("logs"),
    ];
    if let Some(e) = &r.topology.etcd {
        if let Some(d) = &e.data_dir {
            dirs.extend(e.members.iter().map(|m| d.join(&m.name)));
        }
    }
    dirs.extend(
        r.topology
            .db
            .iter()
            .flat_map(|d| d.nodes.iter().map(|n| n.data_dir.clone())),
    );
    for d in dirs {
        if d.exists() {
            outln!("  --fresh: removing {}", d.display());
            std::fs::remove_dir_all(&d).map_err(io("remove", &d))?;
        }
    }
    Ok(())
}

struct Proc {
    spec: ProcSpec,
    child: Option<Child>,
    started: Instant,
    crashes: u32,
    restarts: u32,
    restart_at: Option<Instant>,
    healthy: bool,
    /// Healthy at least once since `up` started it.
    ever_healthy: bool,
    /// Why it exited last (the end of its log), and how many exits in a row, before it was
    /// ever healthy, gave that same reason.
    last_reason: Option<String>,
    same_reason: u32,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// Probe results, refreshed by a background thread.
type Health = Arc<Mutex<HashMap<String, bool>>>;

pub fn probe(p: &Probe) -> bool {
    let t = Duration::from_millis(400);
    match p {
        Probe::Etcd(addr) => crate::http::get(*addr, "/health", t)
            .map(|r| r.status == 200 && r.text().replace(' ', "").contains("\"health\":\"true\""))
            .unwrap_or(false),
        Probe::Http { addr, path } => crate::http::get(*addr, path, t)
            .map(|r| r.status == 200)
            .unwrap_or(false),
    }
}

struct Supervisor {
    procs: Vec<Proc>,
    logs: PathBuf,
    t0: Instant,
    backoff: Backoff,
    state: UpState,
    /// Each node's own cgroup, when cgroup v2 is writable (for partition drills).
    cgroups: Option<crate::cgroup::StackCgroups>,
    /// The `rampart` binary: every node starts through its `exec-child` (parent-death signal).
    rampart: PathBuf,
    /// Still starting: a node that cannot start (the same error twice) stops `up`.
    starting: bool,
}

impl Supervisor {
    fn say(&self, msg: impl AsRef<str>) {
        outln!(
            "[{:>6.1}s] {}",
            self.t0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }

    fn spawn(&mut self, i: usize) -> Result<(), UpError> {
        let p = &mut self.procs[i];
        if let Some((path, text)) = &p.spec.file {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            std::fs::write(path, text).map_err(io("write", path))?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(io("open log", &p.log))?;
        let log2 = log.try_clone().map_err(io("open log", &p.log))?;
        let cgroup = self.cgroups.as_ref().map(|c| c.node(&p.spec.name));
        // Through `rampart exec-child` (same pid): the node dies with `up`, even a SIGKILLed
        // one. The kernel sends that signal when the *thread* that forked exits: nodes are
        // only ever spawned from `run`'s thread, which lives as long as `up`.
        let child = crate::cgroup::command_in(
            p.spec.netns.as_deref(),
            cgroup.as_deref(),
            &self.rampart,
            &crate::lifecycle::exec_child_args(std::process::id(), &p.spec.program, &p.spec.args),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| {
            UpError::Start(format!(
                "start {} ({}): {e}",
                p.spec.name,
                p.spec.program.display()
            ))
        })?;
        p.child = Some(child);
        p.started = Instant::now();
        p.restart_at = None;
        self.sync_state();
        Ok(())
    }

    fn sync_state(&mut self) {
        self.state.nodes.retain(|n| n.state == "unavailable");
        for p in &self.procs {
            self.state.nodes.push(NodeState {
                name: p.spec.name.clone(),
                kind: p.spec.kind.as_str().to_string(),
                pid: p.pid(),
                log: p.log.clone(),
                restarts: p.restarts,
                state: if p.child.is_none() {
                    if p.restart_at.is_some() {
                        "restarting"
                    } else {
                        "stopped"
                    }
                } else if p.healthy {
                    "running"
                } else {
                    "starting"
                }
                .to_string(),
            });
        }
        if let Err(e) = self.state.write() {
            tracing::warn!(error = %e, "cannot write up.json");
        }
    }

    /// Reap exited children and restart those due, with backoff.
    fn tend(&mut self, stopping: bool) -> Result<(), UpError> {
        let now = Instant::now();
        let mut changed = false;
        // What a killed node left behind (its postmaster) is ours to reap: its pid must be
        // free before the node's next start can take the data directory again.
        let nodes: Vec<i32> = self
            .procs
            .iter()
            .filter_map(|p| p.pid().and_then(|p| i32::try_from(p).ok()))
            .collect();
        crate::reap::reap_orphans(|pid| !nodes.contains(&pid));
        for i in 0..self.procs.len() {
            let exited = match self.procs[i].child.as_mut() {
                Some(c) => match c.try_wait() {
                    Ok(Some(st)) => Some(st),
                    _ => None,
                },
                None => None,
            };
            if let Some(st) = exited {
                let p = &mut self.procs[i];
                let pid = p.pid();
                p.child = None;
                p.healthy = false;
                if stopping {
                    // stop_all waits out the grace period for the rest of the group.
                    continue;
                }
                // Whatever the leader of the group left behind goes with it, and the shared
                // memory of a postmaster among it.
                if let Some(g) = pid.and_then(|p| i32::try_from(p).ok()) {
                    rampart_pgshm::kill_all(&[g], &[]);
                }
                let uptime = now.saturating_duration_since(p.started);
                p.crashes = self.backoff.next_count(p.crashes, uptime);
                let delay = self.backoff.delay(p.crashes);
                p.restart_at = Some(now + delay);
                let (name, kind, log) = (p.spec.name.clone(), p.spec.kind, p.log.clone());
                self.say(format!(
                    "✘ {name} ({kind}) exited ({st}) after {:.1}s; restarting in {:.1}s (log: {})",
                    uptime.as_secs_f64(),
                    delay.as_secs_f64(),
                    log.display()
                ));
                let reason = log_reason(&log);
                if let Some(reason) = &reason {
                    self.say(format!("    {name}: {reason}"));
                }
                changed = true;
                let p = &mut self.procs[i];
                if p.ever_healthy || reason.is_none() {
                    p.same_reason = 0;
                } else if p.last_reason == reason {
                    p.same_reason += 1;
                } else {
                    p.same_reason = 1;
                }
                p.last_reason = reason;
                // Exited twice with the same error before it was ever healthy: a
                // configuration error (an unreachable data folder, a port in use), not a
                // crash that a restart mends. Stop now instead of waiting out the timeout.
                if self.starting && p.same_reason >= 2 {
                    p.restart_at = None;
                    let why = p.last_reason.clone().unwrap_or_default();
                    self.sync_state();
                    return Err(UpError::Start(format!(
                        "{name} ({kind}) cannot start: {why} (it exited {} times in a row with this error; log: {})",
                        self.procs[i].same_reason,
                        log.display()
                    )));
                }
            }
        }
        if !stopping {
            for i in 0..self.procs.len() {
                if self.procs[i].restart_at.is_some_and(|t| t <= now) {
                    self.procs[i].restarts += 1;
                    let name = self.procs[i].spec.name.clone();
                    self.spawn(i)?;
                    self.say(format!(
                        "↻ {name} restarted (restart #{})",
                        self.procs[i].restarts
                    ));
                }
            }
        }
        if changed {
            self.sync_state();
        }
        Ok(())
    }

    /// Apply the latest probe results; report changes once `announce` (after start-up).
    fn apply_health(&mut self, health: &Health, announce: bool) -> Vec<usize> {
        let map = health.lock().map(|m| m.clone()).unwrap_or_default();
        let mut became = Vec::new();
        let mut changed = false;
        for i in 0..self.procs.len() {
            let now = self.procs[i].child.is_some()
                && map.get(&self.procs[i].spec.name).copied().unwrap_or(false);
            if now != self.procs[i].healthy {
                self.procs[i].healthy = now;
                changed = true;
                if now {
                    self.procs[i].ever_healthy = true;
                    became.push(i);
                    if announce {
                        let p = &self.procs[i];
                        self.say(format!("✔ {} ({}) healthy again", p.spec.name, p.spec.kind));
                    }
                } else if announce && self.procs[i].child.is_some() {
                    let p = &self.procs[i];
                    self.say(format!(
                        "! {} ({}) is not healthy",
                        p.spec.name, p.spec.kind
                    ));
                }
            }
            if now
                && self.procs[i].crashes > 0
                && self.procs[i].started.elapsed() >= self.backoff.reset_after
            {
                self.procs[i].crashes = 0;
            }
        }
        if changed {
            self.sync_state();
        }
        became
    }

    /// Stop every process: reverse start order, kind by kind, SIGTERM then SIGKILL.
    fn stop_all(&mut self) {
        let kinds = [
            NodeKind::Monitor,
            NodeKind::Lb,
            NodeKind::Web,
            NodeKind::Db,
            NodeKind::Etcd,
        ];
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for kind in kinds {
            let idx: Vec<usize> = (0..self.procs.len())
                .filter(|&i| self.procs[i].spec.kind == kind)
                .collect();
            if kind == NodeKind::Etcd {
                // One member at a time: a stopping leader hands leadership to a live
                // member at once, instead of waiting on members stopping beside it.
                batches.extend(idx.into_iter().map(|i| vec![i]));
            } else {
                batches.push(idx);
            }
        }
        for idx in batches {
            if idx.is_empty() {
                continue;
            }
            let grace = idx
                .iter()
                .map(|&i| self.procs[i].spec.grace)
                .max()
                .unwrap_or_default();
            let mut pids = Vec::new();
            for &i in &idx {
                self.procs[i].restart_at = None;
                if let Some(pid) = self.procs[i].pid() {
                    pids.push(pid);
                    // The leader first: it stops its own children (PostgreSQL) cleanly.
                    if let Ok(p) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGTERM);
                    }
                }
            }
            if pids.is_empty() {
                continue;
            }
            let names: Vec<String> = idx
                .iter()
                .map(|&i| self.procs[i].spec.name.clone())
                .collect();
            self.say(format!("stopping {} ...", names.join(", ")));
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && pids.iter().any(|&p| group_alive(p)) {
                let _ = self.tend(true);
                std::thread::sleep(Duration::from_millis(50));
            }
            for &p in &pids {
                if group_alive(p) {
                    self.say(format!(
                        "  group {p} still running after {:.0}s: SIGKILL",
                        grace.as_secs_f64()
                    ));
                    // With whatever runs below it (a db agent's PostgreSQL leads a session
                    // of its own), and the shared memory a killed postmaster leaves.
                    if let Ok(g) = i32::try_from(p) {
                        rampart_pgshm::kill_all(&[g], &[]);
                    }
                }
            }
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until
                && (pids.iter().any(|&p| group_alive(p))
                    || idx.iter().any(|&i| self.procs[i].child.is_some()))
            {
                let _ = self.tend(true);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.sync_state();
    }
}

/// Why a process died, from the end of its log: the cause of an `Error:` report
/// (anyhow's "Caused by:" line), else the last line that is not a backtrace frame.
fn log_reason(log: &Path) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(16 * 1024)..]).into_owned();
    let lines: Vec<&str> = tail.lines().collect();
    if let Some(i) = lines.iter().rposition(|l| l.trim() == "Caused by:") {
        if let Some(l) = lines.get(i + 1) {
            return Some(l.trim().chars().take(300).collect());
        }
    }
    lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("at ")
                && !l.chars().next().is_some_and(|c| c.is_ascii_digit())
                && *l != "Stack backtrace:"
        })
        .map(|l| l.chars().take(300).collect())
}

/// Whether any process of the group still exists (zombies of our own children included
/// until reaped).
fn group_alive(pid: u32) -> bool {
    match i32::try_from(pid) {
        Ok(p) => killpg(Pid::from_raw(p), None).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_of_a_crash_comes_from_the_end_of_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("db1.log");
        std::fs::write(
            &log,
            "INFO starting\nError: run the db agent\n\nCaused by:\n    /tmp/x is not searchable by others\n\nStack backtrace:\n   0: main\n             at src/main.rs:1\n",
        )
        .unwrap();
        assert_eq!(
            log_reason(&log).unwrap(),
            "/tmp/x is not searchable by others"
        );
        std::fs::write(&log, "listening\nbind 127.0.0.1:8101: address in use\n").unwrap();
        assert_eq!(
            log_reason(&log).unwrap(),
            "bind 127.0.0.1:8101: address in use"
        );
        assert_eq!(log_reason(&dir.path().join("none.log")), None);
    }
}
