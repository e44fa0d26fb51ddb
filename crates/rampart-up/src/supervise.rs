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

/// The PostgreSQL data folders of the topology's db nodes.
pub fn db_dirs(t: &Topology) -> Vec<PathBuf> {
    t.db.iter()
        .flat_map(|d| d.nodes.iter().map(|n| n.data_dir.clone()))
        .collect()
}

/// Run `rampart up` until SIGINT, SIGTERM or SIGHUP.
pub fn run(o: UpOptions) -> Result<(), UpError> {
    let t0 = Instant::now();
    let r = resolve(&o.resolve)?;
    if let Some(s) = UpState::read(&r.data_dir) {
        if crate::state::pid_alive(s.pid) && crate::lifecycle::is_up(s.pid) {
            return Err(UpError::Start(format!(
                "a stack is already running from {} (rampart up, pid {}); stop it first (Ctrl-C there, or rampart down{})",
                r.data_dir.display(),
                s.pid,
                if r.builtin { String::new() } else { format!(" --config {}", r.origin) }
            )));
        }
        // Its `up` is gone (killed, or a machine that lost the parent-death signal):
        // what it left running is stopped before this stack takes the same ports.
        let left = crate::lifecycle::stop_leftovers(
            &s,
            &r.topology.cluster,
            &db_dirs(&r.topology),
            Duration::from_secs(10),
        );
        if left.is_empty() {
            outln!(
                "rampart up: the stack of rampart up pid {} ended without stopping; nothing of it was still running",
                s.pid
            );
        } else {
            outln!(
                "rampart up: stopped the stack left running by rampart up pid {} (gone): {}",
                s.pid,
                left.describe()
            );
        }
    }
    // The separate-hosts rehearsal: the same topology rewritten for a host per node.
    let chosen = if o.hosts_from_topology {
        r.topology.hosts
    } else {
        o.hosts
    };
    let (r, hosts) = match chosen {
        None => (r, None),
        Some(subnet) => rehearse(r, subnet)?,
    };
    outln!(
        "rampart up: {} (cluster {}), data in {}",
        r.origin,
        r.topology.cluster,
        r.data_dir.display()
    );
    std::fs::create_dir_all(&r.data_dir).map_err(io("create", &r.data_dir))?;
    if o.fresh {
        wipe(&r)?;
    }

    // What the machine must have.
    let etcd = match &r.topology.etcd {
        Some(e) if !e.members.is_empty() => Some(find_program("etcd", &ETCD_DIRS).ok_or_else(|| UpError::Missing {
            program: "etcd".into(),
            hint: "install Debian's etcd-server package (apt-get install etcd-server), or run bash scripts/deps.sh".into(),
        })?),
        _ => None,
    };
    if let Some(db) = &r.topology.db {
        let explicit = db
            .pg_bin_dir
            .as_ref()
            .is_some_and(|d| d.join("postgres").is_file());
        if !explicit && find_postgres().is_none() {
            return Err(UpError::Missing {
                program: "PostgreSQL (postgres, initdb, pg_ctl)".into(),
                hint: "install Debian's postgresql-15 package (apt-get install postgresql-15), or run bash scripts/deps.sh".into(),
            });
        }
    }
    let rampart = o.rampart.clone();
    let has_role = |k: NodeKind| binary_has_role(&rampart, k);
    let etcd_path = etcd.unwrap_or_default();
    let Plan {
        mut procs,
        unavailable,
    } = plan(
        &r.topology,
        &r.file,
        &r.data_dir,
        &Tools {
            rampart: &rampart,
            etcd: &etcd_path,
            has_role: &has_role,
        },
    );
    if hosts.is_none() {
        check_ports_free(&r.topology)?;
    }
    for cert in crate::tls::ensure_self_signed(&r.topology)? {
        outln!("certificate written: {}", cert.display());
    }
    if let Some(t) = r.topology.tls.as_ref().filter(|t| t.upstream) {
        outln!(
            "  upstream    balancers -> web nodes over TLS, verified against {}",
            t.trust_file().display()
        );
    }
    let lb_admin = crate::lbadmin::assign(&r.topology, &r.data_dir, &mut procs)?;
    // The hosts, before anything starts in them; removed when this function returns.
    let _network = match &hosts {
        Some(h) => {
            crate::hostnet::create(h)?;
            let guard = NetworkGuard(h.clone());
            outln!(
                "  hosts       {} nodes on {}/24 (bridge {}, this machine {}), client host {} ({})",
                h.hosts.len(),
                h.subnet,
                h.bridge,
                h.operator,
                h.client.netns,
                h.client.ip
            );
            for host in &h.hosts {
                crate::hostnet::apply_firewall(host, &o.rampart, &r.file)?;
            }
            for p in procs.iter_mut() {
                p.netns = h.host(&p.name).map(|x| x.netns.clone());
            }
            Some(guard)
        }
        None => None,
    };

    let logs = r.data_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io("create", &logs))?;
    let mut state = UpState {
        pid: std::process::id(),
        topology: r.file.clone(),
        data_dir: r.data_dir.clone(),
        nodes: Vec::new(),
        cgroup: None,
        lb_admin,
        hosts: hosts.clone(),
    };
    for u in &unavailable {
        state.nodes.push(NodeState {
            name: u.name.clone(),
            kind: u.kind.as_str().into(),
            pid: None,
            log: PathBuf::new(),
            restarts: 0,
            state: "unavailable".into(),
        });
    }
    // Each node in its own cgroup (best effort), so a partition drill can cut its network.
    let cgroups = crate::cgroup::StackCgroups::create(&r.topology.cluster, std::process::id())
        .and_then(|c| {
            for spec in &procs {
                c.ensure_node(&spec.name)?;
            }
            Ok(c)
        });
    let cgroups = match cgroups {
        Ok(c) => {
            state.cgroup = Some(c.dir.clone());
            Some(c)
        }
        Err(why) => {
            outln!("  note: nodes share this process's cgroup: {why}; rampart chaos partition cannot cut them off");
            None
        }
    };
    let mut sup = Supervisor {
        procs: procs
            .into_iter()
            .map(|spec| Proc {
                log: logs.join(format!("{}.log", spec.name)),
                spec,
                child: None,
                started: Instant::now(),
                crashes: 0,
                restarts: 0,
                restart_at: None,
                healthy: false,
                ever_healthy: false,
                last_reason: None,
                same_reason: 0,
            })
            .collect(),
        logs,
        t0,
        backoff: Backoff::default(),
        state,
        cgroups,
        rampart: o.rampart.clone(),
        starting: true,
    };

    // Signals: SIGINT (Ctrl-C), SIGTERM (rampart down, kill) and SIGHUP (the terminal
    // closed) all stop the stack.
    let stop = Arc::new(AtomicBool::new(false));
    let got: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("start the signal runtime", "."))?;
    {
        let stop = stop.clone();
        let got = got.clone();
        let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        std::thread::spawn(move || {
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (mut int, mut term, mut hup) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) {
                    (Ok(i), Ok(t), Ok(h)) => (i, t, h),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                    _ = hup.recv() => "SIGHUP",
                };
                if let Ok(mut g) = got.lock() {
                    *g = Some(name);
                }
                stop.store(true, Ordering::SeqCst);
            })
        });
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(UpError::Start(format!("install signal handlers: {e}"))),
            Err(_) => {
                return Err(UpError::Start(
                    "install signal handlers: the signal thread died".into(),
                ))
            }
        }
    }

    // Health probes in the background, so a hung node never stalls the supervisor.
    let health: Health = Arc::new(Mutex::new(HashMap::new()));
    let probes: Vec<(String, Probe)> = sup
        .procs
        .iter()
        .map(|p| (p.spec.name.clone(), p.spec.probe.clone()))
        .collect();
    {
        let health = health.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (name, p) in &probes {
                    let ok = probe(p);
                    if let Ok(mut m) = health.lock() {
                        m.insert(name.clone(), ok);
                    }
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        });
    }

    for u in &unavailable {
        sup.say(format!(
            "- {} ({}): not available: {}",
            u.name, u.kind, u.why
        ));
    }
    let result = start_and_watch(&mut sup, &health, &stop, &r, &o, &unavailable);
    if let Err(e) = &result {
        sup.say(format!("✘ {e}"));
    }
    match got.lock().ok().and_then(|g| *g) {
        Some(sig) => sup.say(format!("{sig}: stopping the stack (reverse order) ...")),
        None => sup.say("stopping the stack (reverse order) ..."),
    }
    sup.stop_all();
    // A partition drill that could not heal (its process was killed) heals now.
    if let Some(nft) = crate::netcut::find_nft() {
        let table = crate::netcut::table_name(&r.topology.cluster, std::process::id());
        if let Ok(true) = crate::netcut::delete_table(&nft, &table) {
            sup.say(format!(
                "removed the partition left by a drill (nftables table {table})"
            ));
        }
    }
    if let Some(c) = &sup.cgroups {
        c.remove(Duration::from_secs(3));
    }
    let _ = std::fs::remove_file(crate::state::path(&r.data_dir));
    sup.say(format!(
        "stopped; data kept in {} (rampart up --fresh starts over)",
        r.data_dir.display()
    ));
    result
}

/// Removes the rehearsal's network when dropped (every way out of `run`).
struct NetworkGuard(crate::hostnet::HostsState);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        crate::hostnet::remove(&self.0);
    }
}

/// Write the rehearsal of `r`'s topology beside it (`<name>.hosts.toml`, so relative
/// paths keep their meaning) and resolve that instead.
fn rehearse(
    r: Resolved,
    subnet: std::net::Ipv4Addr,
) -> Result<(Resolved, Option<crate::hostnet::HostsState>), UpError> {
    let text = std::fs::read_to_string(&r.file).map_err(io("read", &r.file))?;
    let (text, layout) =
        rampart_topology::hosts::rehearsal(&text, &r.topology, subnet, &r.data_dir)
            .map_err(UpError::Start)?;
    let stem = r
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "topology".into());
    let file = r.file.with_file_name(format!("{stem}.hosts.toml"));
    std::fs::write(&file, &text).map_err(io("write", &file))?;
    let r2 = resolve(&crate::config::ResolveOptions {
        config: Some(file),
        data_dir: Some(r.data_dir.clone()),
        port_base: None,
    })?;
    let h = crate::hostnet::plan(&r2.topology.cluster, &layout);
    Ok((
        Resolved {
            origin: format!("{}, on separate hosts ({subnet}/24)", r.origin),
            builtin: r.builtin,
            ..r2
        },
        Some(h),
    ))
}

/// With virtual IPs the stack is not up until each has exactly one master: a balancer
/// answers on its own address a master-down interval (3 adverts and a skew) before it
/// takes an address, and a client sent to a virtual IP right after "stack healthy" must
/// reach someone. Balancers whose admin API `up` cannot reach are not waited for.
fn wait_for_vips(
    sup: &mut Supervisor,
    stop: &AtomicBool,
    r: &Resolved,
    o: &UpOptions,
) -> Result<(), UpError> {
    let t = &r.topology;
    if t.lb.iter().all(|l| l.vips().is_empty()) {
        return Ok(());
    }
    let admins = crate::status::lb_admins(t, Some(&sup.state));
    if admins.iter().any(Option::is_none) {
        return Ok(());
    }
    let mut expected: Vec<String> =
        t.lb.iter()
            .flat_map(|l| &l.vrrp)
            .flat_map(|(_, v)| v.iter().map(|i| i.name.clone()))
            .collect();
    expected.sort();
    expected.dedup();
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        sup.tend(false)?;
        let states: Option<Vec<serde_json::Value>> =
            admins.iter().map(crate::status::lb_state).collect();
        let waiting = match &states {
            Some(s) => crate::status::vips_not_held(s, &expected),
            None => vec!["a balancer's admin API does not answer".to_string()],
        };
        if waiting.is_empty() {
            sup.say(format!(
                "✔ virtual IPs held after {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > o.start_timeout {
            return Err(UpError::Start(format!(
                "virtual IPs not held by exactly one balancer after {:.0}s: {}",
                o.start_timeout.as_secs_f64(),
                waiting.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_and_watch(
    sup: &mut Supervisor,
    health: &Health,
    stop: &AtomicBool,
    r: &Resolved,
    o: &UpOptions,
    unavailable: &[crate::plan::Unavailable],
) -> Result<(), UpError> {
    let groups = [
        NodeKind::Etcd,
        NodeKind::Db,
        NodeKind::Web,
        NodeKind::Lb,
        NodeKind::Monitor,
    ];
    for kind in groups {
        let idx: Vec<usize> = (0..sup.procs.len())
            .filter(|&i| sup.procs[i].spec.kind == kind)
            .collect();
        if idx.is_empty() {
            continue;
        }
        for &i in &idx {
            sup.spawn(i)?;
        }
        let names: Vec<String> = idx
            .iter()
            .map(|&i| sup.procs[i].spec.name.clone())
            .collect();
        sup.say(format!("starting {kind}: {}", names.join(", ")));
        let started = Instant::now();
        let mut last_wait = Instant::now();
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            sup.tend(false)?;
            for i in sup.apply_health(health, false) {
                let p = &sup.procs[i];
                sup.say(format!(
                    "✔ {} ({}) healthy after {:.1}s",
                    p.spec.name,
                    p.spec.kind,
                    started.elapsed().as_secs_f64()
                ));
            }
            if idx.iter().all(|&i| sup.procs[i].healthy) {
                break;
            }
            if started.elapsed() > o.start_timeout {
                let waiting: Vec<String> = idx
                    .iter()
                    .filter(|&&i| !sup.procs[i].healthy)
                    .map(|&i| {
                        format!(
                            "{} (log: {})",
                            sup.procs[i].spec.name,
                            sup.procs[i].log.display()
                        )
                    })
                    .collect();
                return Err(UpError::Start(format!(
                    "not healthy after {:.0}s: {}",
                    o.start_timeout.as_secs_f64(),
                    waiting.join(", ")
                )));
            }
            if last_wait.elapsed() > Duration::from_secs(3) {
                last_wait = Instant::now();
                let waiting: Vec<String> = idx
                    .iter()
                    .filter(|&&i| !sup.procs[i].healthy)
                    .map(|&i| sup.procs[i].spec.name.clone())
                    .collect();
                sup.say(format!("… waiting for {}", waiting.join(", ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_for_vips(sup, stop, r, o)?;
    sup.starting = false;
    let t = &r.topology;
    sup.say(format!(
        "stack healthy in {:.1}s",
        sup.t0.elapsed().as_secs_f64()
    ));
    outln!();
    // A listener on 0.0.0.0 (separate hosts) is reached through the first virtual IP.
    let first_vip = t.lb.iter().flat_map(|l| l.vips()).next();
    for l in t.lb.iter().flat_map(|l| &l.config.listeners) {
        if l.mode != rampart_topology::lb::Mode::Http {
            continue;
        }
        let mut l = l.clone();
        if let (true, Some(v)) = (l.address.ip().is_unspecified(), first_vip) {
            l.address.set_ip(v);
        }
        let l = &l;
        match (&l.tls, &l.redirect_https) {
            (Some(tls), _) => outln!(
                "  site        https://{}/   (certificate {}{})",
                l.address,
                tls.certs
                    .first()
                    .map(|c| c.cert.display().to_string())
                    .unwrap_or_default(),
                t.tls
                    .as_ref()
                    .and_then(|c| c.ca.as_ref())
                    .map(|ca| format!(", CA {}", ca.display()))
                    .unwrap_or_default()
            ),
            (None, Some(_)) => {
                outln!("  site        http://{}/   (redirects to HTTPS)", l.address)
            }
            (None, None) => outln!("  site        http://{}/", l.address),
        }
    }
    for n in t.lb.iter().flat_map(|l| &l.nodes) {
        outln!(
            "  {:<11} http://{}/   (this balancer's own entry)",
            n.name,
            n.address
        );
    }
    for n in t.lb.iter().flat_map(|l| &l.nodes) {
        if let Some(a) = n.admin {
            outln!(
                "  {:<11} http://{a}/stats   (admin API, metrics: /metrics)",
                format!("{} stats", n.name)
            );
        } else if let Some(a) = sup.state.lb_admin.iter().find(|a| a.node == n.name) {
            outln!(
                "  {:<11} http://{}/stats   (admin API given by rampart up, token in {})",
                format!("{} stats", n.name),
                a.address,
                a.token_file.display()
            );
        }
    }
    if let Some(db) = &t.db {
        if let Some(n) = db.nodes.first() {
            outln!("  db cluster  http://{}/cluster", n.api);
        }
    }
    if let Some(m) = &t.monitor {
        if unavailable.iter().any(|u| u.kind == NodeKind::Monitor) {
            outln!("  dashboard   not available: this binary has no `rampart monitor` role yet");
        } else {
            outln!(
                "  dashboard   http://{}/   (alerts: /api/alerts, targets: /api/targets)",
                m.listen
            );
        }
    }
    let https =
        t.lb.iter()
            .flat_map(|l| &l.config.listeners)
            .any(|l| l.tls.is_some());
    if t.tls.is_some() && !https {
        outln!("  https       not served: [tls] is in the topology, but no [[lb.listener]] has tls = {{ cert, key }}");
    }
    if let Some(h) = &sup.state.hosts {
        let vips: Vec<String> = h.vips.iter().map(|v| v.to_string()).collect();
        outln!(
            "  virtual IPs {} (the site's addresses; listeners bind 0.0.0.0 on every balancer, VRRP moves the addresses)",
            vips.join(", ")
        );
        outln!(
            "  client      ip netns exec {} curl --cacert <CA> https://{}:{}/   (reaches only what the firewall lets anyone reach)",
            h.client.netns,
            vips.first().map(String::as_str).unwrap_or("?"),
            t.site_addresses().iter().map(|a| a.port()).max().unwrap_or(443)
        );
        outln!("  firewall    applied in every host (each node's own ruleset: rampart firewall --print --node NAME --config {})", r.file.display());
    } else if t.firewall.is_some() {
        outln!("  firewall    not applied on one machine (every node shares loopback); see the per-node rulesets: rampart firewall --print --node NAME{}",
            if r.builtin { String::new() } else { format!(" --config {}", r.origin) });
    }
    outln!("  logs        {}", sup.logs.display());
    outln!("\n  rampart status{}    rampart chaos kill-primary    Ctrl-C stops everything (data kept)\n",
        if r.builtin { String::new() } else { format!(" --config {}", r.origin) });

    while !stop.load(Ordering::SeqCst) {
        sup.tend(false)?;
        sup.apply_health(health, true);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
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
