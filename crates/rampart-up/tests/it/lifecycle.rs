//! Every way `rampart up` can end leaves nothing behind: Ctrl-C while its output goes
//! through `tee` (which Ctrl-C kills first), SIGHUP (the terminal closed), SIGTERM, SIGKILL
//! of `up` followed by a new `up`, and `rampart down` from another terminal. After each:
//! no process naming the test's folder, no listening port of the stack, no PostgreSQL
//! shared memory (System V segment or /dev/shm) of its data folders. And a db node that
//! cannot reach its data folder stops `up` at once, with the reason.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rampart_testkit::{kill_all, rampart_bin, wait_until};
use serde_json::Value;

/// Offsets of the default topology's ports from its base (see rampart init --help).
const OFFSETS: [u16; 22] = [
    80, 81, 90, 91, 92, 101, 102, 103, 191, 192, 201, 202, 203, 301, 302, 303, 401, 402, 403, 404,
    405, 406,
];

/// A block of ports for the stack, never one another test of this binary was given.
fn free_port_base() -> u16 {
    rampart_testkit::port_block(&OFFSETS)
}

/// One default stack in a temporary folder; whatever is left is killed on drop.
struct Stack {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    data: PathBuf,
    base: u16,
    /// Every pid (= process group) any `up` of this stack recorded.
    seen_pids: BTreeSet<u32>,
    /// PostgreSQL shared memory seen while the stack ran: System V ids, /dev/shm files.
    sysv: BTreeSet<String>,
    posix: BTreeSet<PathBuf>,
}

impl Stack {
    fn new(prefix: &str, reachable: bool) -> Stack {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let root = dir.path().to_path_buf();
        // PostgreSQL runs as the postgres user when the tests run as root: it must reach
        // its data, unless the test is about a folder it cannot reach.
        let mode = if reachable { 0o755 } else { 0o700 };
        std::fs::set_permissions(&root, PermissionsExt::from_mode(mode)).unwrap();
        let config = root.join("rampart.toml");
        let base = free_port_base();
        let out = Command::new(rampart_bin())
            .args(["init", config.to_str().unwrap(), "--port-base"])
            .arg(base.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Stack {
            data: root.join(".rampart/main"),
            _dir: dir,
            root,
            config,
            base,
            seen_pids: BTreeSet::new(),
            sysv: BTreeSet::new(),
            posix: BTreeSet::new(),
        }
    }

    fn up_command(&self) -> Command {
        let mut c = Command::new(rampart_bin());
        c.args(["up", "--config", self.config.to_str().unwrap()])
            .stdin(Stdio::null())
            .process_group(0);
        c
    }

    /// `rampart up` with its output in `log`.
    fn up(&self, log: &Path) -> Child {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        self.up_command()
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start rampart up")
    }

    fn db_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.data.join("db"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    }

    fn recorded(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.data.join("up.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Wait for "stack healthy", then note its pids and PostgreSQL's shared memory.
    fn wait_healthy(&mut self, log: &Path) {
        let t0 = Instant::now();
        assert!(
            wait_until(Duration::from_secs(150), || read(log)
                .contains("stack healthy in")),
            "the stack did not become healthy:\n{}",
            read(log)
        );
        eprintln!("healthy after {:.1}s", t0.elapsed().as_secs_f64());
        let v = self.recorded().expect("up.json");
        let pids: Vec<u32> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n["pid"].as_u64().map(|p| p as u32))
            .collect();
        assert_eq!(pids.len(), 12, "{v}");
        self.seen_pids.extend(pids);
        for d in self.db_dirs() {
            let Ok(text) = std::fs::read_to_string(d.join("postmaster.pid")) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            // Line 7: the System V segment's key and id.
            if let Some(id) = lines.get(6).and_then(|l| l.split_whitespace().nth(1)) {
                self.sysv.insert(id.to_string());
            }
            let pm: i32 = lines.first().unwrap().trim().parse().unwrap();
            let mapped = rampart_testkit::pgshm::Leftover::of_process(pm);
            self.posix.extend(mapped.posix_files().iter().cloned());
        }
        assert!(
            !self.sysv.is_empty(),
            "PostgreSQL's System V segments are known"
        );
    }

    /// Processes whose command line names this stack's folder (etcd, postgres, roles).
    fn processes_left(&self) -> Vec<String> {
        let needle = self.root.display().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
                if cmd.contains(&needle) {
                    out.push(format!("{pid}: {cmd}"));
                }
            }
        }
        out
    }

    /// The last lines of the db nodes' logs (which path stopped or killed PostgreSQL).
    fn db_log_tails(&self) -> String {
        let mut out = String::new();
        let Ok(rd) = std::fs::read_dir(self.data.join("logs")) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("db") {
                continue;
            }
            let text = read(&e.path());
            let lines: Vec<&str> = text.lines().collect();
            out += &format!(
                "---- {name} (last 30 lines) ----\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        out
    }

    fn ports_listening(&self) -> Vec<u16> {
        OFFSETS
            .iter()
            .map(|o| self.base + o)
            .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_err())
            .collect()
    }

    fn shm_left(&self) -> Vec<String> {
        let mut out = Vec::new();
        for l in read(Path::new("/proc/sysvipc/shm")).lines().skip(1) {
            // key shmid perms size cpid lpid nattch ...
            if let Some(id) = l.split_whitespace().nth(1) {
                if self.sysv.contains(id) {
                    out.push(format!("System V segment {id}: {l}"));
                }
            }
        }
        for p in &self.posix {
            if p.exists() {
                out.push(p.display().to_string());
            }
        }
        out
    }

    /// Nothing of the stack is left: no process, no port, no shared memory.
    fn assert_clean(&self, after: &str) {
        let clean = wait_until(Duration::from_secs(15), || {
            self.processes_left().is_empty()
                && self.ports_listening().is_empty()
                && self.shm_left().is_empty()
        });
        assert!(
            clean,
            "after {after}: processes {:#?}, ports {:?}, shared memory {:#?}\n{}",
            self.processes_left(),
            self.ports_listening(),
            self.shm_left(),
            self.db_log_tails()
        );
        eprintln!("after {after}: nothing left");
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Through the testkit: a postmaster killed here has its shared memory removed.
        let up: Vec<i32> = self
            .recorded()
            .and_then(|v| v["pid"].as_i64())
            .map(|p| p as i32)
            .into_iter()
            .collect();
        let groups: Vec<i32> = self.seen_pids.iter().map(|&p| p as i32).collect();
        kill_all(&groups, &up);
        let left: Vec<i32> = self
            .processes_left()
            .iter()
            .filter_map(|line| line.split(':').next()?.parse().ok())
            .collect();
        kill_all(&[], &left);
    }
}

fn read(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn wait_exit(child: &mut Child, within: Duration, log: &Path) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < until,
            "rampart up still runs after {within:?}:\n{}",
            read(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_with(stack: &Stack, up: &mut Child, sig: Signal, log: &Path) {
    let t0 = Instant::now();
    let _ = kill(Pid::from_raw(up.id() as i32), sig);
    let st = wait_exit(up, Duration::from_secs(90), log);
    assert_eq!(st.code(), Some(0), "{sig}: {st}\n{}", read(log));
    assert!(
        read(log).contains(&format!("{sig}: stopping the stack")),
        "{}",
        read(log)
    );
    eprintln!("{sig}: up exited in {:.1}s", t0.elapsed().as_secs_f64());
    assert!(!stack.data.join("up.json").exists());
    stack.assert_clean(&format!("{sig}"));
}

#[test]
fn ctrl_c_through_tee_sighup_and_sigterm_each_stop_the_whole_stack() {
    let mut stack = Stack::new("rampart-life-sig-", true);

    // `rampart up 2>&1 | tee up.log`, then Ctrl-C: the terminal signals both, tee exits,
    // and up finishes its shutdown writing to a pipe nobody reads.
    let log = stack.root.join("tee.log");
    let mut tee = Command::new("tee")
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start tee");
    let pipe = tee.stdin.take().unwrap();
    let pipe2: std::os::fd::OwnedFd = std::os::fd::OwnedFd::from(pipe);
    let pipe_err = pipe2.try_clone().unwrap();
    let mut up = stack
        .up_command()
        .stdout(Stdio::from(pipe2))
        .stderr(Stdio::from(pipe_err))
        .spawn()
        .expect("start rampart up");
    stack.wait_healthy(&log);
    let _ = kill(Pid::from_raw(tee.id() as i32), Signal::SIGINT);
    tee.wait().unwrap();
    let t0 = Instant::now();
    let _ = kill(Pid::from_raw(up.id() as i32), Signal::SIGINT);
    let st = wait_exit(&mut up, Duration::from_secs(90), &log);
    assert_eq!(
        st.code(),
        Some(0),
        "up stops cleanly, no panic on the closed pipe: {st}\n{}",
        read(&log)
    );
    eprintln!(
        "Ctrl-C with tee gone: up exited in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(!stack.data.join("up.json").exists());
    stack.assert_clean("Ctrl-C with the pipe closed");

    // The terminal closes: SIGHUP.
    let log = stack.root.join("up-hup.log");
    let mut up = stack.up(&log);
    stack.wait_healthy(&log);
    stop_with(&stack, &mut up, Signal::SIGHUP, &log);

    // kill, systemd, a supervisor: SIGTERM.
    let log = stack.root.join("up-term.log");
    let mut up = stack.up(&log);
    stack.wait_healthy(&log);
    stop_with(&stack, &mut up, Signal::SIGTERM, &log);
}

#[test]
fn a_sigkilled_up_takes_its_nodes_along_a_new_up_stops_leftovers_and_down_stops_it() {
    let mut stack = Stack::new("rampart-life-kill-", true);
    let log = stack.root.join("up-1.log");
    let mut up = stack.up(&log);
    stack.wait_healthy(&log);
    let old_pid = up.id();

    // SIGKILL: up cannot stop anything; the parent-death signal kills every node, each
    // db agent's watchdog stops its PostgreSQL.
    let t0 = Instant::now();
    up.kill().unwrap();
    up.wait().unwrap();
    stack.assert_clean("SIGKILL of up");
    eprintln!(
        "SIGKILL: everything gone in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        stack.data.join("up.json").exists(),
        "a killed up leaves its record"
    );

    // Something of that stack that survived anyway (here: a process of its own group,
    // named after the data folder, recorded as a node): the next up stops it and says so.
    let mut orphan = Command::new("sh")
        .args(["-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"])
        .arg(stack.data.join("orphan"))
        .process_group(0)
        .spawn()
        .unwrap();
    let mut v = stack.recorded().unwrap();
    v["nodes"].as_array_mut().unwrap().push(serde_json::json!({
        "name": "orphan", "kind": "web", "pid": orphan.id(), "log": "", "restarts": 0,
        "state": "running"
    }));
    std::fs::write(stack.data.join("up.json"), v.to_string()).unwrap();

    let log = stack.root.join("up-2.log");
    let mut up = stack.up(&log);
    stack.wait_healthy(&log);
    let text = read(&log);
    assert!(
        text.contains(&format!(
            "stopped the stack left running by rampart up pid {old_pid} (gone): orphan (pid {})",
            orphan.id()
        )),
        "{text}"
    );
    assert!(
        orphan.try_wait().unwrap().is_some(),
        "the leftover was stopped"
    );

    // rampart down, from another terminal.
    let t0 = Instant::now();
    let out = Command::new(rampart_bin())
        .args(["down", "--config", stack.config.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!(
            "stopping the stack of rampart up (pid {})",
            up.id()
        )) && said.contains("rampart down: stopped"),
        "{said}"
    );
    eprintln!("rampart down took {:.1}s", t0.elapsed().as_secs_f64());
    let st = wait_exit(&mut up, Duration::from_secs(5), &log);
    assert_eq!(st.code(), Some(0), "{}", read(&log));
    assert!(read(&log).contains("SIGTERM: stopping the stack"));
    stack.assert_clean("rampart down");

    // Nothing running: down says so and succeeds.
    let out = Command::new(rampart_bin())
        .args(["down", "--config", stack.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no stack is running"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_db_node_that_cannot_reach_its_data_stops_up_at_once() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: PostgreSQL runs as another user only when the tests run as root");
        return;
    }
    // The folder stays 0700 (root's): the postgres user cannot reach the data under it.
    let stack = Stack::new("rampart-life-perm-", false);
    let log = stack.root.join("up.log");
    let t0 = Instant::now();
    let mut up = stack.up(&log);
    let st = wait_exit(&mut up, Duration::from_secs(60), &log);
    let took = t0.elapsed();
    let text = read(&log);
    assert_ne!(st.code(), Some(0), "{text}");
    assert!(
        text.contains("cannot start:") && text.contains("searchable"),
        "the reason is given: {text}"
    );
    assert!(
        !text.contains("not healthy after"),
        "no waiting out the start timeout: {text}"
    );
    eprintln!(
        "up gave up after {:.1}s: {}",
        took.as_secs_f64(),
        text.lines()
            .find(|l| l.contains("cannot start:"))
            .unwrap_or_default()
    );
    stack.assert_clean("a configuration error");
}
