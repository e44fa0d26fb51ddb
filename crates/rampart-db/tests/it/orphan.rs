//! Failures of the agent's own processes: a PostgreSQL left running without its agent
//! and watchdog, and a watchdog that dies under a running agent.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rampart_testkit::{children_of, wait_until};

use crate::harness::{Cluster, Opts};

/// The agent's `rampart db watchdog` child.
fn watchdog_of(agent: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: u32 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == agent && cmd.split(|&b| b == 0).any(|a| a == b"watchdog")).then_some(pid)
    })
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_stops_the_postgres_its_dead_predecessor_left_running() {
    // A lease long enough that the restarted agent (stopping the orphan takes a second or
    // two) always finds its node's key still there: it must keep it, not let it lapse.
    let mut c = Cluster::start(Opts {
        first_alone: true,
        nodes: 2,
        extra_db: "ttl = \"10s\"".into(),
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    c.wait_replica(1 - p, Duration::from_secs(60));
    let (holder, created) = c.leader_key().await.expect("the leader key");
    assert_eq!(holder, c.nodes[p].name);
    let data = c.dir.path().join("data").join(&c.nodes[p].name);
    let postmaster: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("postmaster pid");
    let agent = c.agents[p].as_ref().expect("agent").pid();
    let wd = watchdog_of(agent).expect("the agent's watchdog process");

    // Watchdog first, then the agent: nothing is left to fence the primary.
    kill(Pid::from_raw(wd), Signal::SIGKILL).expect("kill watchdog");
    c.signal_agent(p, Signal::SIGKILL);
    let killed = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || !alive(wd)),
        "the watchdog survived SIGKILL"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        alive(postmaster),
        "the postmaster died with its agent: nothing to adopt"
    );

    // A new agent on that node stops the orphan before anything else. (The dead agent's
    // process handle is kept: dropping it would kill its process group, the orphan too.)
    let dead_agent = c.agents[p].take();
    c.start_agent(p);
    assert!(
        wait_until(Duration::from_secs(15), || !alive(postmaster)),
        "the orphaned postmaster {postmaster} still runs 15 s after its node's agent restarted:\n{}",
        c.list()
    );
    let log = c.agent_log(p);
    assert!(
        log.contains("already running in the data directory"),
        "{log}"
    );
    // The new agent moved the key its predecessor took onto its own lease: the key
    // outlives the dead agent's lease (10 s) and the node leads on, with no failover.
    let left = Duration::from_secs(12).saturating_sub(killed.elapsed());
    std::thread::sleep(left);
    assert_eq!(
        c.leader_key().await,
        Some((c.nodes[p].name.clone(), created)),
        "the leader key did not survive its first lease:\n{}\n{}",
        c.list(),
        c.agent_log(p)
    );
    assert!(
        c.agent_log(p).contains("moved onto this run's lease"),
        "{}",
        c.agent_log(p)
    );
    assert_eq!(c.wait_settled(Duration::from_secs(60)), p, "{}", c.list());
    drop(dead_agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_watchdog_is_replaced_and_the_new_one_fences_a_frozen_primary() {
    let c = Cluster::start(Opts {
        first_alone: true,
        nodes: 2,
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    c.wait_replica(1 - p, Duration::from_secs(60));
    let data = c.dir.path().join("data").join(&c.nodes[p].name);
    let postmaster: i32 = std::fs::read_to_string(data.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("postmaster pid");
    let agent = c.agents[p].as_ref().expect("agent").pid();
    let wd = watchdog_of(agent).expect("the agent's watchdog process");

    kill(Pid::from_raw(wd), Signal::SIGKILL).expect("kill watchdog");
    // The agent sees it within a loop and starts a new one.
    let mut new_wd = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            new_wd = watchdog_of(agent).filter(|&w| w != wd && alive(w));
            new_wd.is_some()
        }),
        "no new watchdog 5 s after the old one was killed:\n{}",
        c.agent_log(p)
    );
    assert!(c.agent_log(p).contains("the watchdog process is gone"));
    // No failover was needed: the same node is still the one primary.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.primary(), Some(p), "{}", c.list());
    assert!(alive(postmaster));

    // The new watchdog is armed: freeze the agent and it kills the primary's postmaster
    // before etcd can let the other node promote (ttl 3 s).
    c.signal_agent(p, Signal::SIGSTOP);
    let frozen = std::time::Instant::now();
    let fenced = wait_until(Duration::from_secs(4), || !alive(postmaster));
    let took = frozen.elapsed();
    c.signal_agent(p, Signal::SIGCONT);
    assert!(
        fenced,
        "the postmaster of a frozen primary survived its new watchdog"
    );
    assert!(took < Duration::from_secs(3), "fenced only after {took:?}");
    eprintln!(
        "watchdog: fenced {:.2} s after the freeze",
        took.as_secs_f64()
    );
    c.wait_settled(Duration::from_secs(90));
}

/// A killed postmaster cannot remove its shared memory; with its agent gone nothing
/// starts PostgreSQL there again to clean it up, so the watchdog that killed it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_the_watchdog_had_to_kill_leaves_no_shared_memory() {
    let c = Cluster::start(Opts {
        nodes: 1,
        synchronous: false,
        // PostgreSQL's default: dynamic shared memory in /dev/shm.
        extra_db: "parameters = { dynamic_shared_memory_type = \"posix\" }".into(),
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    let data = c.dir.path().join("data").join(&c.nodes[p].name);
    let pid_file = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    let lines: Vec<&str> = pid_file.lines().collect();
    let postmaster: i32 = lines[0].trim().parse().expect("postmaster pid");
    // Line 7: the System V segment's key and id.
    let sysv_id = lines
        .get(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("System V segment id")
        .to_string();
    // What the postmaster and its children have mapped (a backend maps dynamic segments
    // the postmaster may not).
    let mut mapped = rampart_pgshm::Leftover::of_process(postmaster);
    for (child, _) in children_of(postmaster) {
        mapped.add_mapped_by(child);
    }
    let posix = mapped.posix_files().to_vec();
    assert!(!posix.is_empty(), "PostgreSQL's /dev/shm segment is known");
    let sysv_left = || {
        std::fs::read_to_string("/proc/sysvipc/shm")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(sysv_id.as_str()))
    };
    assert!(
        sysv_left(),
        "segment {sysv_id} is listed while PostgreSQL runs"
    );

    // A postmaster that does not react to the immediate shutdown: the watchdog of the
    // SIGKILLed agent has to kill it. (Held in a ptrace stop, not SIGSTOP: the agent's
    // death orphans the process group, and the kernel wakes a stopped member of it with
    // SIGHUP and SIGCONT; then it would shut down by itself.)
    let traced = hold_in_ptrace_stop(postmaster);
    c.signal_agent(p, Signal::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(postmaster)),
        "the held postmaster outlived its agent's watchdog"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !sysv_left()
            && posix.iter().all(|p| !p.exists())),
        "shared memory left: System V {sysv_id} listed: {}, files: {:?}\n{}",
        sysv_left(),
        posix.iter().filter(|p| p.exists()).collect::<Vec<_>>(),
        c.agent_log(p)
    );
    let _ = traced.join();
    assert!(
        wait_until(Duration::from_secs(5), || c.agent_log(p).contains(
            &format!("rampart db watchdog: removed System V segment {sysv_id}")
        )),
        "{}",
        c.agent_log(p)
    );
}

/// Stop `pid` with ptrace and keep it stopped until it dies (only SIGKILL moves it) or
/// the guard is dropped.
fn hold_in_ptrace_stop(pid: i32) -> std::thread::JoinHandle<()> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let p = Pid::from_raw(pid);
        // The tracer is this thread: attach and wait here, never continue.
        let attached =
            nix::sys::ptrace::attach(p).is_ok() && waitpid(p, Some(WaitPidFlag::__WALL)).is_ok();
        let _ = tx.send(attached);
        if !attached {
            return;
        }
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < until {
            match waitpid(p, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => return,
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = nix::sys::ptrace::detach(p, None);
    });
    assert_eq!(rx.recv(), Ok(true), "ptrace attach to {pid}");
    h
}
