//! `rampart up` as the reaper of what its nodes leave behind.
//!
//! A node killed with its children still running (a drill's SIGKILL of a db agent, whose
//! postmaster it had started) orphans them, and the kernel hands orphans to PID 1. Until
//! PID 1 reaps one, its pid stays taken by a zombie: PostgreSQL sees the pid in
//! `postmaster.pid` alive and refuses to start ("lock file already exists"). A slow PID 1
//! costs the restarted node seconds (2 s measured here, a VM's init); one that never reaps,
//! as in a container whose PID 1 is `rampart up` itself, costs the node for good. So `up`
//! asks to be the subreaper of its descendants and reaps, on every tick, each zombie child
//! it did not start itself: one outside its own process group (each node runs in a group
//! of its own; the commands `up` runs and waits for stay in its group) and not a node.

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// Ask the kernel to hand this process the orphans of its descendants (PR_SET_CHILD_SUBREAPER).
/// False when it cannot: PID 1 reaps them, as before.
pub fn become_subreaper() -> bool {
    nix::sys::prctl::set_child_subreaper(true).is_ok()
}

/// State, parent and process group from the text of `/proc/PID/stat` (pure). The command
/// name is in parentheses and may hold anything, parentheses and spaces included: the
/// fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(char, i32, i32)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Reap this process's zombie children outside its process group for which `may` says
/// yes; returns their pids.
pub fn reap_orphans(may: impl Fn(i32) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let my_group = nix::unistd::getpgrp().as_raw();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut reaped = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        match parse_stat(&text) {
            Some(('Z', ppid, pgrp)) if ppid == me && pgrp != my_group && may(pid) => {
                if let Ok(st) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    if st.pid().is_some() {
                        reaped.push(pid);
                    }
                }
            }
            _ => {}
        }
    }
    reaped
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        assert_eq!(
            parse_stat("4242 (postgres) Z 17 4200 4200 0 -1 4228"),
            Some(('Z', 17, 4200))
        );
        assert_eq!(
            parse_stat("7 (a) b (c)) S 1 7 7 0"),
            Some(('S', 1, 7)),
            "a name with ') ' in it"
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R"), None);
    }

    #[test]
    fn an_orphaned_grandchild_is_handed_to_us_and_reaped() {
        assert!(become_subreaper());
        // sh (a group of its own, as a node) starts a grandchild and exits at once: the
        // grandchild, orphaned, is handed to us; it exits a moment later, a zombie child of
        // ours outside our group.
        let out = Command::new("/bin/sh")
            .args(["-c", "sleep 0.3 & echo $!"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .output()
            .unwrap();
        let grandchild: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while zombie().map(|s| s.0) != Some('Z') {
            assert!(Instant::now() < deadline, "no zombie: {:?}", zombie());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(zombie().map(|s| s.1), Some(std::process::id() as i32));
        // Only that one (other tests of this binary run children of their own).
        assert_eq!(reap_orphans(|p| p == grandchild), [grandchild]);
        assert_eq!(zombie(), None, "reaped: its pid is free");
    }
}
