//! The shared memory a killed postmaster leaves behind.
//!
//! A postmaster that gets SIGKILL (the fencing path, or an immediate shutdown that ran
//! out of time) cannot remove its System V segment or its POSIX dynamic shared memory
//! (`/dev/shm/PostgreSQL.<n>`). PostgreSQL removes them itself when it next starts on the
//! same data folder, but that may never happen: the agent may be stopping, or re-clone
//! the folder, and a test's folder goes with its temp dir. So whoever kills a postmaster
//! removes them: what it and its children had mapped, read before the kill, once no
//! process is attached any more.
//!
//! Its own crate (std and nix only) so that its users share one reading of `/proc`: the db
//! agent and its watchdog (`rampart-db`), `rampart up` (`rampart-up`) and the test harness
//! (`rampart-testkit`), which SIGKILL process groups that may hold postmasters. The
//! product never depends on the harness, and the harness carries no product crate.

use std::path::PathBuf;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// What one postmaster had mapped: System V keys and POSIX shared memory files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The postmaster's pid: a System V segment is removed only if it created it.
    pid: i32,
    sysv_keys: Vec<i64>,
    posix: Vec<PathBuf>,
}

impl Leftover {
    /// Read from `/proc/<pid>/maps`; empty when the process is gone.
    pub fn of_process(pid: i32) -> Leftover {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        parse_maps(pid, &text)
    }

    /// Add what `pid`, a child of the postmaster (stopped, or about to be killed), has
    /// mapped: a dynamic segment a backend created and pinned (the statistics' area grows
    /// so) is not always mapped by the postmaster itself. Its System V segment is still
    /// removed only if the postmaster created it.
    pub fn add_mapped_by(&mut self, pid: i32) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        self.merge(parse_maps(self.pid, &text));
    }

    fn merge(&mut self, other: Leftover) {
        for k in other.sysv_keys {
            if !self.sysv_keys.contains(&k) {
                self.sysv_keys.push(k);
            }
        }
        for p in other.posix {
            if !self.posix.contains(&p) {
                self.posix.push(p);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sysv_keys.is_empty() && self.posix.is_empty()
    }

    /// The `/dev/shm/PostgreSQL.<n>` files it had mapped.
    pub fn posix_files(&self) -> &[PathBuf] {
        &self.posix
    }

    /// Wait (up to `limit`) until nothing is attached to the System V segments the
    /// postmaster created, then remove them and the POSIX files. Returns what was removed.
    pub fn remove_when_detached(&self, limit: Duration) -> Vec<String> {
        let until = Instant::now() + limit;
        loop {
            let segs = self.segments();
            if segs.iter().all(|s| s.attached == 0) || Instant::now() >= until {
                return self.remove(&segs);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn segments(&self) -> Vec<Segment> {
        let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
        parse_sysvipc(&text)
            .into_iter()
            .filter(|s| s.creator == self.pid && self.sysv_keys.contains(&s.key))
            .collect()
    }

    fn remove(&self, segs: &[Segment]) -> Vec<String> {
        let mut out = Vec::new();
        for s in segs.iter().filter(|s| s.attached == 0) {
            // util-linux's ipcrm (Essential in Debian): shmctl(IPC_RMID) without unsafe.
            let ok = std::process::Command::new("ipcrm")
                .args(["-m", &s.id.to_string()])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|st| st.success());
            if ok {
                out.push(format!("System V segment {}", s.id));
            }
        }
        for p in &self.posix {
            if std::fs::remove_file(p).is_ok() {
                out.push(p.display().to_string());
            }
        }
        out
    }
}

/// SIGKILL whole process groups (`groups`, each named by its leader's pid), single
/// processes (`pids`) and every process below them, then remove the shared memory of
/// every PostgreSQL postmaster among them. The test harness kills through here (directly or by
/// dropping a `Proc`), and so does `rampart up` when a node outlives its grace.
///
/// Below them, not only in the groups: each child of a postmaster leads a session of its
/// own (PostgreSQL calls `setsid`), so a group's SIGKILL alone reaches the postmaster and
/// leaves its backends running, attached to its segments, until they notice its death.
/// A SIGKILLed postmaster cannot remove its System V segment nor its
/// `/dev/shm/PostgreSQL.*` files; PostgreSQL would when it next starts on that data
/// folder, which never happens in a test (the temp dir goes), so each kill would hold one
/// of the host's `kernel.shmmni` segments for good. Everything is stopped (SIGSTOP) first,
/// so what each process has mapped is read while none of them can fork or create a
/// segment; then killed; the segments a postmaster created are removed once no process is
/// attached any more (a few milliseconds after the kill; at most 2 s). A segment that no
/// process has mapped (a dynamic one pinned by a backend that has exited) is not found:
/// the harnesses configure `dynamic_shared_memory_type = mmap` where they can, whose
/// segments are files in the data folder. Non-positive pids and this process are left
/// alone.
pub fn kill_all(groups: &[i32], pids: &[i32]) {
    let me = std::process::id() as i32;
    let my_group = nix::unistd::getpgrp().as_raw();
    let groups: Vec<i32> = groups
        .iter()
        .copied()
        .filter(|&g| g > 1 && g != me && g != my_group)
        .collect();
    let mut doomed: Vec<i32> = pids.iter().copied().filter(|&p| p > 1 && p != me).collect();
    if groups.is_empty() && doomed.is_empty() {
        return;
    }
    for &g in &groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGSTOP);
    }
    for &p in &doomed {
        let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
    }
    // The groups' members and the children of whatever is doomed, level by level, each
    // stopped as soon as it is found (a stopped process forks no more).
    loop {
        let found: Vec<i32> = processes()
            .filter(|&(pid, ppid, pgrp)| {
                pid != me
                    && !doomed.contains(&pid)
                    && (groups.contains(&pgrp) || doomed.contains(&ppid))
            })
            .map(|(pid, _, _)| pid)
            .collect();
        if found.is_empty() {
            break;
        }
        for &p in &found {
            let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
        }
        doomed.extend(found);
    }
    let shm: Vec<Leftover> = doomed
        .iter()
        .map(|&p| Leftover::of_process(p))
        .filter(|l| !l.is_empty())
        .collect();
    for &g in &groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    for &p in &doomed {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    for l in &shm {
        l.remove_when_detached(Duration::from_secs(2));
    }
}

/// Every process: (pid, parent pid, process group), from `/proc/<pid>/stat`.
pub fn processes() -> impl Iterator<Item = (i32, i32, i32)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp ...: comm may hold spaces, split after the last ')'.
            let mut f = stat[stat.rfind(')')? + 1..].split_whitespace().skip(1);
            let ppid = f.next()?.parse().ok()?;
            let pgrp = f.next()?.parse().ok()?;
            Some((pid, ppid, pgrp))
        })
}

/// The shared memory mappings of `/proc/<pid>/maps`: `/SYSV<key in hex>` and
/// `/dev/shm/PostgreSQL.<n>`, each once.
pub fn parse_maps(pid: i32, maps: &str) -> Leftover {
    let mut l = Leftover {
        pid,
        ..Leftover::default()
    };
    for line in maps.lines() {
        // address perms offset dev inode path [(deleted)]
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        if let Some(hex) = path.strip_prefix("/SYSV") {
            if let Ok(key) = i64::from_str_radix(hex, 16) {
                // The key is a 32-bit value that /proc/sysvipc/shm prints signed.
                let key = key as u32 as i32 as i64;
                if !l.sysv_keys.contains(&key) {
                    l.sysv_keys.push(key);
                }
            }
        } else if let Some(name) = path.strip_prefix("/dev/shm/") {
            if name.starts_with("PostgreSQL.") && !name.contains('/') {
                let p = PathBuf::from(path);
                if !l.posix.contains(&p) {
                    l.posix.push(p);
                }
            }
        }
    }
    l
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    key: i64,
    id: i64,
    creator: i32,
    attached: u64,
}

/// `/proc/sysvipc/shm`: key shmid perms size cpid lpid nattch ...
fn parse_sysvipc(text: &str) -> Vec<Segment> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Segment {
                key: f.first()?.parse().ok()?,
                id: f.get(1)?.parse().ok()?,
                creator: f.get(4)?.parse().ok()?,
                attached: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c7a00000-55d0c7b00000 r--p 00000000 08:01 1234   /usr/lib/postgresql/15/bin/postgres
7f1c2a000000-7f1c2a001000 rw-s 00000000 00:01 983041   /SYSV0099e14b (deleted)
7f1c2b000000-7f1c2b100000 rw-s 00000000 00:01 5          /dev/zero (deleted)
7f1c2c000000-7f1c2c010000 rw-s 00000000 00:19 77     /dev/shm/PostgreSQL.1804289383
7f1c2d000000-7f1c2d010000 rw-s 00000000 00:19 77     /dev/shm/PostgreSQL.1804289383
7f1c2e000000-7f1c2e001000 rw-s 00000000 00:01 983042   /SYSVf099e14b (deleted)
7f1c2f000000-7f1c2f001000 rw-s 00000000 00:19 78     /dev/shm/other.1
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
";

    #[test]
    fn finds_the_postmasters_segments_in_its_maps() {
        let l = parse_maps(42, MAPS);
        assert_eq!(l.sysv_keys, vec![0x0099e14b, 0xf099e14bu32 as i32 as i64]);
        assert_eq!(
            l.posix,
            vec![PathBuf::from("/dev/shm/PostgreSQL.1804289383")]
        );
        assert!(!l.is_empty());
        assert!(parse_maps(42, "").is_empty());
    }

    #[test]
    fn a_childs_mappings_join_the_postmasters_once_each() {
        let mut l = parse_maps(42, MAPS);
        let child = "\
7f1c2a000000-7f1c2a001000 rw-s 00000000 00:01 983041   /SYSV0099e14b (deleted)
7f1c2c000000-7f1c2c010000 rw-s 00000000 00:19 77     /dev/shm/PostgreSQL.1804289383
7f1c30000000-7f1c30100000 rw-s 00000000 00:19 79     /dev/shm/PostgreSQL.2107568234
";
        l.merge(parse_maps(4242, child));
        assert_eq!(l.pid, 42, "still the postmaster's: it created the segments");
        assert_eq!(l.sysv_keys.len(), 2);
        assert_eq!(
            l.posix_files(),
            [
                PathBuf::from("/dev/shm/PostgreSQL.1804289383"),
                PathBuf::from("/dev/shm/PostgreSQL.2107568234")
            ]
        );
    }

    #[test]
    fn reads_sysvipc_with_signed_keys() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
            10084683     983041   600                    56  4242  4300      0   105   110   105   110 1764990000 1764990001 1764990000                  4096                     0\n\
            -258350773     983042   600                    56  4242  4300      2   105   110   105   110 1764990000 1764990001 1764990000                  4096                     0\n";
        let segs = parse_sysvipc(text);
        assert_eq!(
            segs,
            vec![
                Segment {
                    key: 0x0099e14b,
                    id: 983041,
                    creator: 4242,
                    attached: 0
                },
                Segment {
                    key: 0xf099e14bu32 as i32 as i64,
                    id: 983042,
                    creator: 4242,
                    attached: 2
                },
            ]
        );
    }
}
