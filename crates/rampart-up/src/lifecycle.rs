//! How a stack ends: whatever happens to `rampart up`, its processes go with it.
//!
//! - [`say`]: `up` prints through writes that ignore errors, so a closed stdout
//!   (`rampart up | tee`, then Ctrl-C: tee dies first) never stops a shutdown half-way.
//! - [`exec_child`]: every node starts through `rampart exec-child --parent UP -- PROGRAM`,
//!   which sets the parent-death signal (SIGKILL) and execs the program under the same pid:
//!   a SIGKILLed `up` takes its nodes with it (a db agent's watchdog then stops its
//!   PostgreSQL).
//! - [`stop_leftovers`]: what a stack whose `up` is gone left running (recorded in
//!   `up.json`, or a postmaster of one of its data folders) is stopped, by a new `up`
//!   before it starts and by `rampart down`.
//! - [`down`]: `rampart down` asks the running `up` to stop (SIGTERM) and waits for it.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::state::{pid_alive, UpState};
use crate::UpError;

/// Print a line on stdout; a closed or full stdout is ignored (never a panic, unlike
/// `println!`).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// `println!` through [`say`]: ignores a closed stdout.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::lifecycle::say("")
    };
    ($($arg:tt)*) => {
        $crate::lifecycle::say(&format!($($arg)*))
    };
}

/// The arguments that make `rampart exec-child` run `program args` for the `up` of pid
/// `parent` (see [`exec_child`]).
pub fn exec_child_args(parent: u32, program: &Path, args: &[String]) -> Vec<String> {
    let mut out = vec![
        "exec-child".to_string(),
        "--parent".to_string(),
        parent.to_string(),
        "--".to_string(),
        program.display().to_string(),
    ];
    out.extend(args.iter().cloned());
    out
}

/// `rampart exec-child`: ask the kernel for SIGKILL when the parent (`rampart up`, pid
/// `parent`) dies, then become `command` (exec: same pid, same process group). Returns
/// only when that fails. If `up` died before the request took effect (this process was
/// already handed to another parent), the program is not started.
pub fn exec_child(parent: u32, command: &[OsString]) -> UpError {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        return UpError::Start("exec-child: no program to run".into());
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return UpError::Start(format!("exec-child: set the parent-death signal: {e}"));
    }
    let ppid = nix::unistd::getppid().as_raw();
    if u32::try_from(ppid).ok() != Some(parent) {
        return UpError::Start(format!(
            "exec-child: rampart up (pid {parent}) is gone (parent is now {ppid}): not starting {}",
            Path::new(program).display()
        ));
    }
    let e = std::process::Command::new(program).args(args).exec();
    UpError::Start(format!(
        "exec-child: run {}: {e}",
        Path::new(program).display()
    ))
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Whether a process of the group `pgid` still runs (zombies, which an init that does
/// not reap may keep for long, do not count).
fn group_alive(pgid: u32) -> bool {
    if !i32::try_from(pgid).is_ok_and(|p| killpg(Pid::from_raw(p), None).is_ok()) {
        return false;
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return true;
    };
    rd.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut it = rest.split_whitespace();
        let state = it.next();
        let pgrp = it.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(pgid) && state != Some("Z")
    })
}

fn signal_pid(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(p), sig);
    }
}

/// Whether the live process `pid` is one of this stack's (its command line names the
/// stack's data folder or topology, or it runs in the stack's cgroup): a recorded pid
/// may since have been given to another program.
fn belongs(pid: u32, state: &UpState) -> bool {
    let by_cmdline = cmdline(pid).is_some_and(|c| {
        c.contains(&state.data_dir.display().to_string())
            || c.contains(&state.topology.display().to_string())
    });
    // The stack's cgroup is `<mount>/rampart-<cluster>-<pid>`; a node's is a folder in it.
    let by_cgroup = state
        .cgroup
        .as_ref()
        .and_then(|cg| cg.file_name())
        .zip(crate::cgroup::of_pid(pid))
        .is_some_and(|(stack, mine)| {
            mine.trim_start_matches('/').split('/').next() == stack.to_str()
        });
    by_cmdline || by_cgroup
}

/// The postmaster running on `data_dir`, if there is one (`postmaster.pid`'s first line,
/// alive, with the data folder on its command line).
pub fn postmaster_of(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let dir = data_dir.display().to_string();
    (pid_alive(pid) && cmdline(pid).is_some_and(|c| c.contains(&dir))).then_some(pid)
}

/// What [`stop_leftovers`] stopped, for the message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// "name (pid N)" of every node process group that was still there.
    pub nodes: Vec<String>,
    /// "data folder (pid N)" of every postmaster left without its agent.
    pub postmasters: Vec<String>,
}

impl Stopped {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.postmasters.is_empty()
    }

    pub fn describe(&self) -> String {
        let mut all = self.nodes.clone();
        all.extend(
            self.postmasters
                .iter()
                .map(|p| format!("PostgreSQL of {p}")),
        );
        all.join(", ")
    }
}

/// Stop what the stack described by `state` (whose `rampart up` is gone) left running:
/// each recorded node (SIGTERM to its leader, `grace`, then SIGKILL of its process group),
/// the postmasters of `db_dirs` (SIGQUIT: an immediate shutdown that still removes its
/// shared memory; SIGKILL after 5 s, then its shared memory is removed), whatever is left in its cgroups, its partition
/// table, its rehearsal network; then `up.json`.
pub fn stop_leftovers(
    state: &UpState,
    cluster: &str,
    db_dirs: &[PathBuf],
    grace: Duration,
) -> Stopped {
    let mut stopped = Stopped::default();
    let mut groups = Vec::new();
    for n in &state.nodes {
        let Some(pid) = n.pid else { continue };
        // A group whose leader is gone keeps its id reserved: still this stack's.
        if group_alive(pid) && (!pid_alive(pid) || belongs(pid, state)) {
            stopped.nodes.push(format!("{} (pid {pid})", n.name));
            groups.push(pid);
            signal_pid(pid, Signal::SIGTERM);
        }
    }
    wait_for(grace, || groups.iter().any(|&g| group_alive(g)));
    // SIGKILL through pgshm: a postmaster below a node killed so leaves its shared memory
    // behind, which this removes once detached.
    let alive: Vec<i32> = groups
        .iter()
        .filter(|&&g| group_alive(g))
        .filter_map(|&g| i32::try_from(g).ok())
        .collect();
    rampart_pgshm::kill_all(&alive, &[]);
    wait_for(Duration::from_secs(2), || {
        groups.iter().any(|&g| group_alive(g))
    });
    let mut pms = Vec::new();
    for d in db_dirs {
        if let Some(pid) = postmaster_of(d) {
            stopped
                .postmasters
                .push(format!("{} (pid {pid})", d.display()));
            pms.push(pid);
            signal_pid(pid, Signal::SIGQUIT);
        }
    }
    wait_for(Duration::from_secs(5), || pms.iter().any(|&p| pid_alive(p)));
    let alive: Vec<i32> = pms
        .iter()
        .filter(|&&p| pid_alive(p))
        .filter_map(|&p| i32::try_from(p).ok())
        .collect();
    rampart_pgshm::kill_all(&[], &alive);
    if let Some(dir) = &state.cgroup {
        if dir.exists() {
            crate::cgroup::StackCgroups { dir: dir.clone() }.remove(Duration::from_secs(3));
        }
    }
    if let Some(nft) = crate::netcut::find_nft() {
        let _ = crate::netcut::delete_table(&nft, &crate::netcut::table_name(cluster, state.pid));
    }
    if let Some(h) = &state.hosts {
        crate::hostnet::remove(h);
    }
    let _ = std::fs::remove_file(crate::state::path(&state.data_dir));
    stopped
}

fn wait_for(limit: Duration, mut busy: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while Instant::now() < until && busy() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is a `rampart up` (its command line has the `up` subcommand): a pid in
/// an old `up.json` may since belong to another program, which must not get a SIGTERM.
pub fn is_up(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|raw| raw.split(|&b| b == 0).skip(1).any(|a| a == b"up"))
}

/// A node `rampart reload` signalled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub node: String,
    pub kind: String,
    pub pid: u32,
    pub log: PathBuf,
}

/// The roles that reload on SIGHUP: balancers (pools, routes, certificates), db agents
/// (`[db.parameters]`), the monitor (its rules), web servers (their certificate). etcd
/// members would end.
const RELOADS_ON_SIGHUP: [&str; 4] = ["lb", "db", "monitor", "web"];

/// What `rampart reload` did: the nodes signalled, and those of the reloading roles left
/// out with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub signalled: Vec<Reloaded>,
    pub skipped: Vec<(String, String)>,
}

/// A process this young may not have installed its SIGHUP handler yet (each role does so
/// first thing, before it answers), and SIGHUP's default action would end it.
const HANDLER_GRACE: Duration = Duration::from_secs(3);

/// `rampart reload`: SIGHUP to every node of the stack of `data_dir` that reloads on it
/// (see [`RELOADS_ON_SIGHUP`]) and whose process runs; each re-reads the topology file
/// and logs what it applied or why it refused.
pub fn reload(data_dir: &Path) -> Result<ReloadOutcome, UpError> {
    let s = UpState::read_live(data_dir).ok_or_else(|| {
        UpError::NotRunning(format!(
            "no rampart up is running from {}",
            data_dir.display()
        ))
    })?;
    let mut done = Vec::new();
    let mut skipped = Vec::new();
    for n in &s.nodes {
        if !RELOADS_ON_SIGHUP.contains(&n.kind.as_str()) {
            continue;
        }
        let Some(pid) = n.pid.and_then(|p| i32::try_from(p).ok()) else {
            skipped.push((n.name.clone(), format!("not running ({})", n.state)));
            continue;
        };
        match process_age(pid as u32) {
            Some(age) if age >= HANDLER_GRACE => {}
            _ => {
                skipped.push((
                    n.name.clone(),
                    "just started: it reads the file as it starts".into(),
                ));
                continue;
            }
        }
        if kill(Pid::from_raw(pid), Signal::SIGHUP).is_ok() {
            done.push(Reloaded {
                node: n.name.clone(),
                kind: n.kind.clone(),
                pid: pid as u32,
                log: n.log.clone(),
            });
        } else {
            skipped.push((n.name.clone(), "its process is gone".into()));
        }
    }
    Ok(ReloadOutcome {
        signalled: done,
        skipped,
    })
}

/// How long a process has run (from `/proc`), if it exists.
fn process_age(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime, clock ticks after boot), counted after the `)` ending field 2.
    let after = stat.rsplit_once(')')?.1;
    let start: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let tck = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)? as f64;
    Some(Duration::from_secs_f64(
        (uptime - start as f64 / tck).max(0.0),
    ))
}

/// What `rampart down` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// No stack is recorded in this data folder.
    NothingRunning,
    /// The running `rampart up` (this pid) stopped its stack; `left` is what remained after.
    Stopped { up_pid: u32, left: Stopped },
    /// The `rampart up` of the recorded stack was gone; this is what it had left running.
    Orphans { up_pid: u32, left: Stopped },
}

/// `rampart down`: SIGTERM to the running `rampart up` of `data_dir`, then wait (up to
/// `timeout`) for it to stop its stack and exit; anything still there afterwards (or left
/// by an `up` that is gone) is stopped by [`stop_leftovers`].
pub fn down(
    data_dir: &Path,
    cluster: &str,
    db_dirs: &[PathBuf],
    timeout: Duration,
) -> Result<Down, UpError> {
    let Some(state) = UpState::read(data_dir) else {
        return Ok(Down::NothingRunning);
    };
    let grace = Duration::from_secs(10);
    if pid_alive(state.pid) && is_up(state.pid) {
        say(&format!(
            "rampart down: stopping the stack of rampart up (pid {}), data in {}",
            state.pid,
            data_dir.display()
        ));
        signal_pid(state.pid, Signal::SIGTERM);
        let until = Instant::now() + timeout;
        let mut told = Instant::now();
        while pid_alive(state.pid) {
            if Instant::now() > until {
                return Err(UpError::Start(format!(
                    "rampart up (pid {}) is still running {:.0}s after SIGTERM; it may be stuck: kill -KILL {} stops it and its nodes",
                    state.pid,
                    timeout.as_secs_f64(),
                    state.pid
                )));
            }
            if told.elapsed() > Duration::from_secs(5) {
                told = Instant::now();
                say(&format!("  … waiting for rampart up (pid {})", state.pid));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A clean stop removes up.json and leaves nothing; whatever is still there goes
        // now (unless another `up` started meanwhile: then its stack is not ours to stop).
        let left = match UpState::read(data_dir) {
            Some(s) if s.pid != state.pid && pid_alive(s.pid) => Stopped::default(),
            Some(s) if s.pid == state.pid => stop_leftovers(&s, cluster, db_dirs, grace),
            _ => stop_leftovers(&state, cluster, db_dirs, grace),
        };
        return Ok(Down::Stopped {
            up_pid: state.pid,
            left,
        });
    }
    say(&format!(
        "rampart down: rampart up (pid {}) is gone; stopping what it left running",
        state.pid
    ));
    Ok(Down::Orphans {
        up_pid: state.pid,
        left: stop_leftovers(&state, cluster, db_dirs, grace),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_process_age_grows_from_its_start_and_a_missing_one_has_none() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let young = process_age(c.id()).expect("the child's age");
        std::thread::sleep(Duration::from_millis(1200));
        let older = process_age(c.id()).expect("the child's age");
        let _ = c.kill();
        let _ = c.wait();
        assert!(young < Duration::from_secs(1), "{young:?}");
        assert!(older >= Duration::from_secs(1), "{older:?}");
        assert_eq!(process_age(u32::MAX - 1), None);
    }

    #[test]
    fn exec_child_arguments_put_the_program_after_the_separator() {
        let a = exec_child_args(
            42,
            Path::new("/usr/bin/etcd"),
            &["--name".into(), "etcd1".into()],
        );
        assert_eq!(
            a,
            [
                "exec-child",
                "--parent",
                "42",
                "--",
                "/usr/bin/etcd",
                "--name",
                "etcd1"
            ]
        );
    }

    #[test]
    fn a_missing_or_dead_postmaster_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(postmaster_of(dir.path()), None);
        // This test process is alive but is no postgres of that folder.
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), dir.path().display()),
        )
        .unwrap();
        assert_eq!(postmaster_of(dir.path()), None);
    }

    #[test]
    fn only_an_up_process_counts_as_up() {
        assert!(!is_up(std::process::id()));
        assert!(!is_up(u32::MAX));
    }

    #[test]
    fn stopped_describes_nodes_then_postmasters() {
        let s = Stopped {
            nodes: vec!["etcd1 (pid 3)".into()],
            postmasters: vec!["/d/db1 (pid 9)".into()],
        };
        assert_eq!(s.describe(), "etcd1 (pid 3), PostgreSQL of /d/db1 (pid 9)");
        assert!(Stopped::default().is_empty());
    }
}
