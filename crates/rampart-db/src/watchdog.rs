//! A userspace watchdog: the fence that works even when the agent is frozen.
//!
//! The agent runs a small child process (`rampart db watchdog`) and tells it, over a pipe,
//! which postmaster it runs and, while that postmaster is a primary, the moment before
//! which the lease is safely ours. If that moment passes without a newer word from the
//! agent (agent stopped with SIGSTOP, stuck, starved), the watchdog kills the postmaster
//! and its backends itself, before etcd can expire the lease and another node promotes.
//! If the agent dies (the pipe closes), the watchdog stops the postmaster it was told
//! about (an immediate shutdown, which removes its shared memory; SIGKILL after 3 s or at
//! the lease deadline), so no PostgreSQL is ever left running unmanaged.
//!
//! Protocol (one line each): `watch <pid>`, `arm <pid> <deadline>`, `unwatch`. The
//! deadline is absolute, in nanoseconds of `CLOCK_MONOTONIC` (one clock for both processes
//! on the host), so a message read late does not move it (a duration rebased on receipt
//! would eat into the margin before the lease expires).

use std::io::{BufRead, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::DbError;

/// The agent's handle on its watchdog process.
pub struct Watchdog {
    child: Child,
    stdin: ChildStdin,
    /// A write to its pipe failed: it is gone.
    broken: bool,
}

impl Watchdog {
    /// Start `<this executable> db watchdog`.
    pub fn spawn() -> Result<Watchdog, DbError> {
        let exe = std::env::current_exe().map_err(|e| DbError::Command {
            what: "find the rampart executable",
            detail: e.to_string(),
        })?;
        let mut child = Command::new(exe)
            .args(["db", "watchdog"])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| DbError::Command {
                what: "start the watchdog",
                detail: e.to_string(),
            })?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| DbError::Other("watchdog has no stdin".into()))?;
        Ok(Watchdog {
            child,
            stdin,
            broken: false,
        })
    }

    /// The watchdog process still runs (and its pipe works).
    pub fn alive(&mut self) -> bool {
        !self.broken && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, line: &str) {
        if let Err(e) = writeln!(self.stdin, "{line}") {
            if !self.broken {
                tracing::error!(error = %e, "watchdog pipe broken");
            }
            self.broken = true;
        }
    }

    pub fn watch(&mut self, pid: u32) {
        self.send(&format!("watch {pid}"));
    }

    /// Kill `pid` at `deadline` unless armed again before.
    pub fn arm(&mut self, pid: u32, deadline: Instant) {
        let ns = monotonic_ns_at(deadline);
        self.send(&format!("arm {pid} {ns}"));
    }

    pub fn unwatch(&mut self) {
        self.send("unwatch");
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// `CLOCK_MONOTONIC` (ns) at the instant `at` (std's `Instant` is that clock on Linux; the
/// conversion reads both clocks together, so it does not depend on when it is sent).
fn monotonic_ns_at(at: Instant) -> u64 {
    let (now_i, now_ns) = (Instant::now(), monotonic_ns());
    match at.checked_duration_since(now_i) {
        Some(ahead) => now_ns.saturating_add(ahead.as_nanos() as u64),
        None => now_ns.saturating_sub(now_i.duration_since(at).as_nanos() as u64),
    }
}

/// The local `Instant` of an absolute `CLOCK_MONOTONIC` deadline (ns); one already past
/// is now.
fn instant_of(deadline_ns: u64) -> Instant {
    let (now_i, now_ns) = (Instant::now(), monotonic_ns());
    now_i + Duration::from_nanos(deadline_ns.saturating_sub(now_ns))
}

#[derive(Debug, PartialEq, Eq)]
enum Msg {
    Watch(i32),
    /// Kill the postmaster at this `CLOCK_MONOTONIC` time (ns).
    Arm(i32, u64),
    Unwatch,
}

fn parse(line: &str) -> Option<Msg> {
    let mut it = line.split_whitespace();
    match it.next()? {
        "watch" => Some(Msg::Watch(it.next()?.parse().ok()?)),
        "arm" => Some(Msg::Arm(it.next()?.parse().ok()?, it.next()?.parse().ok()?)),
        "unwatch" => Some(Msg::Unwatch),
        _ => None,
    }
}

/// How long a postmaster whose agent is gone gets for its immediate shutdown.
const AGENT_GONE_GRACE: Duration = Duration::from_secs(3);

/// Whether `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The watchdog process's main loop (`rampart db watchdog`). Returns when the agent is gone.
pub fn run_watchdog() {
    let (tx, rx) = mpsc::channel::<Option<Msg>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if let Some(m) = parse(&line) {
                if tx.send(Some(m)).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(None);
    });
    let mut watched: Option<i32> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let wait = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        match rx.recv_timeout(wait) {
            Ok(Some(Msg::Watch(pid))) => {
                watched = Some(pid);
                deadline = None;
            }
            Ok(Some(Msg::Arm(pid, at_ns))) => {
                watched = Some(pid);
                deadline = Some(instant_of(at_ns));
            }
            Ok(Some(Msg::Unwatch)) => {
                watched = None;
                deadline = None;
            }
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(pid) = watched {
                    // An immediate shutdown (SIGQUIT) still removes PostgreSQL's shared
                    // memory, which a SIGKILL leaves behind; the kill follows if it is not
                    // gone in time (never later than a primary's lease deadline).
                    let limit = deadline
                        .map(|d| d.saturating_duration_since(Instant::now()))
                        .unwrap_or(AGENT_GONE_GRACE)
                        .min(AGENT_GONE_GRACE);
                    eprintln!("rampart db watchdog: agent gone, stopping postgres (pid {pid})");
                    let p = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGQUIT);
                    let until = Instant::now() + limit;
                    while Instant::now() < until && running(pid) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if running(pid) {
                        // Killed, it cannot remove its shared memory, and with the agent
                        // gone no PostgreSQL starts here again to clean it up.
                        let shm = crate::pg::kill_tree(pid);
                        for gone in shm.remove_when_detached(Duration::from_secs(3)) {
                            eprintln!("rampart db watchdog: removed {gone} of killed postgres (pid {pid})");
                        }
                    }
                }
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(pid) = watched {
                    eprintln!("rampart db watchdog: primary's lease deadline passed without the agent renewing: killing postgres (pid {pid}) to fence it");
                    // Its shared memory goes too: the agent may never start PostgreSQL on
                    // this folder again (it may be stopped, or re-clone the folder).
                    let shm = crate::pg::kill_tree(pid);
                    for gone in shm.remove_when_detached(Duration::from_secs(3)) {
                        eprintln!(
                            "rampart db watchdog: removed {gone} of killed postgres (pid {pid})"
                        );
                    }
                }
                watched = None;
                deadline = None;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages() {
        assert_eq!(parse("watch 12"), Some(Msg::Watch(12)));
        assert_eq!(
            parse("arm 12 123456789000"),
            Some(Msg::Arm(12, 123_456_789_000))
        );
        assert_eq!(parse("unwatch"), Some(Msg::Unwatch));
        assert_eq!(parse("arm x"), None);
    }

    #[test]
    fn an_absolute_deadline_survives_a_late_read() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let ns = monotonic_ns_at(deadline);
        // The message sits in the pipe for 200 ms: the deadline does not move.
        std::thread::sleep(Duration::from_millis(200));
        let seen = instant_of(ns);
        let diff = if seen > deadline {
            seen - deadline
        } else {
            deadline - seen
        };
        assert!(diff < Duration::from_millis(5), "{diff:?}");
        // A deadline already past is now.
        let past = monotonic_ns_at(Instant::now()) - 1_000_000_000;
        assert!(instant_of(past) <= Instant::now());
    }
}
