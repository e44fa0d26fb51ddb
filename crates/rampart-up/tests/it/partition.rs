//! `rampart chaos partition`: a real network cut of one node of a running stack
//! (nftables on the node's cgroup), seen from the load balancer, from the databases
//! and from a client; healed after `--for`, on Ctrl-C, or by `rampart chaos heal`.
//!
//! The stack: 3 etcd members, 3 PostgreSQL nodes (synchronous), 2 web servers, 1 load
//! balancer, on loopback ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rampart_testkit::{http_request, kill_all, pg_bin_dir, rampart_bin, wait_until, Proc};
use serde_json::Value;

/// Port offsets of the test topology from its base.
const OFFSETS: [u16; 15] = [
    80, 91, 191, 101, 102, 201, 202, 203, 301, 302, 303, 401, 402, 403, 404,
];
const ETCD_OFFSETS: [u16; 6] = [401, 402, 403, 404, 405, 406];

/// A block of ports for the stack (its nodes' and etcd's), never one another test of this
/// binary was given.
fn free_port_base() -> u16 {
    let all: Vec<u16> = OFFSETS.iter().chain(ETCD_OFFSETS.iter()).copied().collect();
    rampart_testkit::port_block(&all)
}

fn topology(b: u16) -> String {
    let etcd: Vec<String> = (0..3)
        .map(|i| format!("\"http://127.0.0.1:{}\"", b + 401 + 2 * i))
        .collect();
    let agents: Vec<String> = (0..3)
        .map(|i| format!("\"http://127.0.0.1:{}\"", b + 201 + i))
        .collect();
    let mut s = format!(
        "[cluster]\nname = \"chaos\"\netcd = [{}]\n\n\
         [etcd]\nheartbeat_ms = 50\nelection_ms = 500\ndata_dir = \"data/etcd\"\n",
        etcd.join(", ")
    );
    for i in 0..3u16 {
        s.push_str(&format!(
            "\n[[etcd.members]]\nname = \"etcd{}\"\nclient = \"127.0.0.1:{}\"\npeer = \"127.0.0.1:{}\"\n",
            i + 1,
            b + 401 + 2 * i,
            b + 402 + 2 * i
        ));
    }
    // Dynamic shared memory in the data dirs (mmap), not /dev/shm: a postmaster killed at
    // the end of a failed run would leave its posix segments in RAM for good.
    s.push_str(
        "\n[db]\ndata_dir = \"data/db\"\nsynchronous = true\nttl = \"3s\"\nloop_wait = \"500ms\"\n\
         retry_timeout = \"1s\"\nmax_lag = \"16MB\"\nsuperuser_password = \"chaos\"\n\
         parameters = { dynamic_shared_memory_type = \"mmap\" }\n",
    );
    for i in 0..3u16 {
        s.push_str(&format!(
            "\n[[db.nodes]]\nname = \"db{}\"\nhost = \"127.0.0.1\"\nport = {}\napi = \"127.0.0.1:{}\"\n",
            i + 1,
            b + 301 + i,
            b + 201 + i
        ));
    }
    s.push_str(&format!(
        "\n[web]\nroot = \"site\"\npool = \"web\"\ndrain_seconds = 1.0\n\n\
         [web.database]\nagents = [{}]\nuser = \"postgres\"\n",
        agents.join(", ")
    ));
    for i in 0..2u16 {
        s.push_str(&format!(
            "\n[[web.node]]\nname = \"web{}\"\nlisten = \"127.0.0.1:{}\"\n",
            i + 1,
            b + 101 + i
        ));
    }
    s.push_str(&format!(
        r#"
[[lb.nodes]]
name = "lb1"
address = "127.0.0.1:{lb}"
admin = "127.0.0.1:{admin}"

[[lb.listener]]
name = "site"
address = "127.0.0.1:{site}"
pool = "web"

[[lb.pool]]
name = "web"
algorithm = "least-response-time"
servers = [
  {{ name = "web1", address = "127.0.0.1:{w1}" }},
  {{ name = "web2", address = "127.0.0.1:{w2}" }},
]
health_check = {{ kind = "http", path = "/readyz", interval = "500ms", timeout = "400ms", rise = 2, fall = 2 }}
retries = {{ attempts = 2 }}
"#,
        lb = b + 91,
        admin = b + 191,
        site = b + 80,
        w1 = b + 101,
        w2 = b + 102,
    ));
    s
}

/// Why this machine cannot cut a node off, if it cannot (the only reason to skip).
fn cannot_partition() -> Option<String> {
    let Some(mount) = rampart_up::cgroup::cgroup2_mount() else {
        return Some("no cgroup2 hierarchy is mounted".into());
    };
    let probe = mount.join(format!("rampart-probe-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&probe) {
        return Some(format!(
            "cgroup2 at {} is not writable ({e})",
            mount.display()
        ));
    }
    let _ = std::fs::remove_dir(&probe);
    if rampart_up::netcut::find_nft().is_none() {
        return Some("nft (nftables) is not installed".into());
    }
    None
}

/// The stack, killed whole (supervisor first, then every node's group and cgroup, and
/// any nftables table left) when the test fails half-way.
struct Stack {
    up: Proc,
    /// The supervisor's pid (names the stack's cgroup and nftables table).
    pid: u32,
    config: PathBuf,
    data: PathBuf,
}

impl Stack {
    fn state(&self) -> Value {
        std::fs::read_to_string(self.data.join("up.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    fn pid_of(&self, node: &str) -> u32 {
        self.state()["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == node)
            .and_then(|n| n["pid"].as_u64())
            .unwrap_or_else(|| panic!("{node} has no pid in up.json")) as u32
    }

    fn cgroup(&self) -> PathBuf {
        PathBuf::from(
            self.state()["cgroup"]
                .as_str()
                .expect("up.json names the stack's cgroup"),
        )
    }

    fn rampart(&self, args: &[&str]) -> std::process::Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend_from_slice(&["--config", self.config.to_str().unwrap()]);
        Command::new(rampart_bin())
            .args(&a)
            .output()
            .expect("run rampart")
    }

    fn status(&self) -> Vec<Value> {
        let out = self.rampart(&["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    fn primary(&self) -> Option<String> {
        let s = self.status();
        let p: Vec<&Value> = s
            .iter()
            .filter(|n| n["kind"] == "db" && n["role"] == "primary" && n["healthy"] == true)
            .collect();
        (p.len() == 1).then(|| p[0]["name"].as_str().unwrap_or_default().to_string())
    }

    /// A drill through the CLI, as a child (to watch it, interrupt it, or wait for it).
    fn drill_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(rampart_bin());
        c.arg("chaos")
            .args(args)
            .args(["--config", self.config.to_str().unwrap(), "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn tables(&self) -> Vec<String> {
        let out = Command::new(rampart_up::netcut::find_nft().unwrap())
            .args(["list", "tables", "inet"])
            .output()
            .expect("nft list tables");
        let table = rampart_up::netcut::table_name("chaos", self.pid);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim() == format!("table inet {table}"))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let state = self.state();
        // The supervisor and every node's group at once, through the testkit: a postmaster
        // killed here has its shared memory removed.
        let mut groups = vec![self.up.pid() as i32];
        groups.extend(
            state["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["pid"].as_i64().map(|p| p as i32)),
        );
        kill_all(&groups, &[]);
        self.up.kill();
        if let Some(cg) = state["cgroup"].as_str() {
            for e in std::fs::read_dir(cg).into_iter().flatten().flatten() {
                let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
            }
            // A cgroup can be removed once its processes are gone: wait for that (up to
            // 5 s), not a fixed pause that a loaded machine outlasts.
            wait_until(Duration::from_secs(5), || {
                std::fs::read_dir(cg)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .all(|e| {
                        std::fs::read_to_string(e.path().join("cgroup.procs"))
                            .map_or(true, |t| t.trim().is_empty())
                    })
            });
            for e in std::fs::read_dir(cg).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(e.path());
            }
            let _ = std::fs::remove_dir(cg);
        }
        if let Some(nft) = rampart_up::netcut::find_nft() {
            let _ = rampart_up::netcut::delete_table(
                &nft,
                &rampart_up::netcut::table_name("chaos", self.pid),
            );
        }
    }
}

fn report(out: std::process::Output, what: &str) -> Value {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let r: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!(
            "{what}: no report: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("{what}: {r}");
    r
}

/// The lb's view of a web server: "up" or "down".
fn lb_health(admin: SocketAddr, server: &str) -> Option<String> {
    let r = http_request(admin, "GET", "/api/state", &[], b"").ok()?;
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    v["pools"]
        .as_array()?
        .iter()
        .flat_map(|p| p["servers"].as_array().into_iter().flatten())
        .find(|s| s["name"] == server)
        .and_then(|s| s["health"].as_str().map(str::to_string))
}

/// Whether a database node runs as a primary (`pg_is_in_recovery()` is false), asked
/// by psql from inside the node's own cgroup: the node's view of itself, which a cut
/// does not hide. `None` when it does not answer.
fn is_primary(node_cgroup: &Path, port: u16) -> Option<bool> {
    let psql = pg_bin_dir().join("psql");
    let mut child = Command::new("/bin/sh")
        .args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "probe"])
        .arg(node_cgroup.join("cgroup.procs"))
        .arg(psql)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-tAc"])
        .arg("SELECT pg_is_in_recovery()")
        .env("PGPASSWORD", "chaos")
        .env("PGCONNECT_TIMEOUT", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let out = child.wait_with_output().ok()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "f" => Some(true),
        "t" => Some(false),
        _ => None,
    }
}

#[test]
fn partition_cuts_a_web_node_and_the_primary_off_the_network_and_heals() {
    if let Some(why) = cannot_partition() {
        eprintln!("SKIPPED: a partition drill cannot run on this machine: {why}");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("rampart-partition-")
        .tempdir()
        .unwrap();
    let root = dir.path().to_path_buf();
    // PostgreSQL runs as the postgres user when the tests run as root: it must reach its data.
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let init = Command::new(rampart_bin())
        .args(["init", "unused.toml"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(init.status.success(), "rampart init writes the site folder");
    // etcd creates its folders 0700: the databases' parent must exist, searchable.
    std::fs::create_dir_all(root.join("data/db")).unwrap();
    let base = free_port_base();
    let config = root.join("chaos.toml");
    std::fs::write(&config, topology(base)).unwrap();
    let site = SocketAddr::from(([127, 0, 0, 1], base + 80));
    let admin = SocketAddr::from(([127, 0, 0, 1], base + 191));

    let mut cmd = Command::new(rampart_bin());
    cmd.args(["up", "--config", config.to_str().unwrap()]);
    let up = Proc::spawn("rampart up", cmd, &root.join("up.log"));
    let mut stack = Stack {
        pid: up.pid(),
        up,
        config: config.clone(),
        data: root.join(".rampart/chaos"),
    };
    assert!(
        wait_until(Duration::from_secs(150), || stack
            .up
            .log_text()
            .contains("stack healthy in")),
        "the stack did not become healthy:\n{}",
        stack.up.log_text()
    );

    // Every node runs in its own cgroup, a database's PostgreSQL with its agent.
    let cg = stack.cgroup();
    let mount = rampart_up::cgroup::cgroup2_mount().unwrap();
    let cg_of =
        |pid: u32| rampart_up::cgroup::of_pid(pid).map(|c| mount.join(c.trim_start_matches('/')));
    for node in [
        "etcd1", "etcd2", "etcd3", "db1", "db2", "db3", "web1", "web2", "lb1",
    ] {
        assert_eq!(
            cg_of(stack.pid_of(node)),
            Some(cg.join(node)),
            "{node} in its cgroup"
        );
    }
    for i in 1..=3 {
        let pm = std::fs::read_to_string(root.join(format!("data/db/db{i}/postmaster.pid")))
            .expect("postmaster.pid");
        let pm: u32 = pm.lines().next().unwrap().trim().parse().unwrap();
        assert_eq!(
            cg_of(pm),
            Some(cg.join(format!("db{i}"))),
            "db{i}'s PostgreSQL"
        );
    }

    // 1. A web server cut off: the lb's health checks fail, the site keeps serving.
    assert_eq!(lb_health(admin, "web1").as_deref(), Some("up"));
    let drill = stack
        .drill_cmd(&["partition", "web1", "--for", "5", "--observe", "9"])
        .spawn()
        .unwrap();
    // The cut comes after the drill's warm-up (2 s of clean load).
    assert!(
        wait_until(Duration::from_secs(10), || !stack.tables().is_empty()),
        "the cut is on"
    );
    let t0 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || lb_health(admin, "web1")
            .as_deref()
            == Some("down")),
        "the lb still sees web1 up {:?} into its partition",
        t0.elapsed()
    );
    eprintln!(
        "lb marked web1 down {:?} after the cut started",
        t0.elapsed()
    );
    assert_eq!(lb_health(admin, "web2").as_deref(), Some("up"));
    // web1 itself runs on: its own address answers from inside its cgroup only.
    let r = report(drill.wait_with_output().unwrap(), "partition web1");
    assert_eq!(r["writes_lost"], 0, "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    assert!(
        r["failed"].as_u64().unwrap() <= 3,
        "the site keeps serving: {r}"
    );
    assert!(r["requests"].as_u64().unwrap() > 50, "{r}");
    let cut = r["cut_ms"].as_u64().unwrap();
    assert!((5000..6500).contains(&cut), "{r}");
    assert!(stack.tables().is_empty(), "healed: no table left");
    assert!(
        wait_until(Duration::from_secs(10), || lb_health(admin, "web1")
            .as_deref()
            == Some("up")),
        "web1 back in the pool after the heal"
    );
    assert!(
        stack.up.log_text().contains("web1 (web) is not healthy"),
        "rampart up saw the cut too:\n{}",
        stack.up.log_text()
    );

    // 2. Ctrl-C during a drill heals the cut.
    let mut drill = stack
        .drill_cmd(&["partition", "web2", "--for", "60", "--observe", "60"])
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !stack.tables().is_empty()),
        "the cut is on"
    );
    assert!(
        wait_until(Duration::from_secs(5), || lb_health(admin, "web2")
            .as_deref()
            == Some("down")),
        "web2 cut off"
    );
    nix::sys::signal::kill(Pid::from_raw(drill.id() as i32), Signal::SIGINT).unwrap();
    let st = drill.wait().unwrap();
    assert_eq!(st.code(), Some(130));
    assert!(stack.tables().is_empty(), "Ctrl-C healed the cut");
    // A drill killed outright leaves its table: `rampart chaos heal` removes it.
    let mut drill = stack
        .drill_cmd(&["partition", "web2", "--for", "60", "--observe", "60"])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || !stack
        .tables()
        .is_empty()));
    drill.kill().unwrap();
    drill.wait().unwrap();
    assert_eq!(stack.tables().len(), 1, "SIGKILL leaves the cut on");
    let out = stack.rampart(&["chaos", "heal"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("healed: removed nftables table"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stack.tables().is_empty());
    assert!(
        wait_until(Duration::from_secs(10), || lb_health(admin, "web2")
            .as_deref()
            == Some("up")
            && lb_health(admin, "web1").as_deref() == Some("up")),
        "both web servers back"
    );

    // 3. The primary cut off: it demotes itself (its lease cannot be renewed), a replica
    // takes over, at no moment two primaries; after the heal it rejoins as a replica.
    let old = {
        let mut p = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                p = stack.primary();
                p.is_some()
            }),
            "no primary: {:#?}",
            stack.status()
        );
        p.unwrap()
    };
    let ports: Vec<(String, u16)> = (1..=3)
        .map(|i| (format!("db{i}"), base + 300 + i))
        .collect();
    let mut drill = stack
        .drill_cmd(&["partition", &old, "--for", "12", "--observe", "30"])
        .spawn()
        .unwrap();
    let mut t0 = Instant::now();
    let mut cut_seen = false;
    let mut old_demoted_at = None;
    let mut new_primary: Option<(String, Duration)> = None;
    let mut rounds = 0;
    while drill.try_wait().unwrap().is_none() {
        if !cut_seen && !stack.tables().is_empty() {
            // Times count from the cut (after the drill's warm-up).
            cut_seen = true;
            t0 = Instant::now();
        }
        let primaries: Vec<&str> = ports
            .iter()
            .filter(|(n, port)| is_primary(&cg.join(n), *port) == Some(true))
            .map(|(n, _)| n.as_str())
            .collect();
        rounds += 1;
        assert!(
            primaries.len() <= 1,
            "two primaries {:?} into the partition: {primaries:?}",
            t0.elapsed()
        );
        if cut_seen && old_demoted_at.is_none() && !primaries.contains(&old.as_str()) {
            old_demoted_at = Some(t0.elapsed());
        }
        if let Some(n) = primaries.iter().find(|n| **n != old && cut_seen) {
            if new_primary.is_none() {
                new_primary = Some((n.to_string(), t0.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = report(
        drill.wait_with_output().unwrap(),
        &format!("partition {old}"),
    );
    let (new, promoted_at) = new_primary
        .unwrap_or_else(|| panic!("no replica took over from {old}: {:#?}", stack.status()));
    let demoted_at = old_demoted_at.expect("the old primary never stopped being one");
    eprintln!(
        "partition {old}: it stopped being a primary {demoted_at:?} after the cut, {new} became one {promoted_at:?} after ({rounds} rounds of checks)"
    );
    assert!(
        demoted_at < promoted_at,
        "demoted before a replica took over"
    );
    assert_eq!(r["writes_lost"], 0, "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    assert!(r["writes_acked"].as_u64().unwrap() > 100, "{r}");
    let log = std::fs::read_to_string(stack.data.join(format!("logs/{old}.log"))).unwrap();
    assert!(log.contains("demoting"), "no demotion in {old}'s log");
    assert!(stack.tables().is_empty(), "healed");
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = stack.status();
            s.iter().any(|n| {
                n["name"] == old.as_str() && n["role"] == "replica" && n["healthy"] == true
            }) && s
                .iter()
                .filter(|n| n["kind"] == "db" && n["role"] == "primary")
                .count()
                == 1
        }),
        "{old} did not rejoin as a replica: {:#?}",
        stack.status()
    );

    // Ctrl-C: everything stops, the cgroups go.
    assert!(
        http_request(site, "GET", "/", &[], b"").is_ok_and(|r| r.status == 200),
        "the site serves after the drills"
    );
    stack.up.signal(Signal::SIGINT);
    let code = stack
        .up
        .wait_exit(Duration::from_secs(60))
        .expect("rampart up stops within 60 s");
    assert_eq!(code, Some(0), "{}", stack.up.log_text());
    assert!(
        !cg.exists(),
        "the stack's cgroup {} is removed",
        cg.display()
    );
}

#[test]
fn partition_refuses_nodes_without_a_cgroup_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let init = Command::new(rampart_bin())
        .args(["init", "--port-base", "13600"])
        .current_dir(p)
        .output()
        .unwrap();
    assert!(init.status.success());
    // A live supervisor (this test process stands in for it) that ran web1 without a
    // cgroup, as `rampart up` does when cgroup2 is missing or not writable.
    let state = p.join(".rampart/main");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("up.json"),
        format!(
            "{{\"pid\": {me}, \"topology\": \"{}\", \"data_dir\": \"{}\", \"nodes\": [\
             {{\"name\": \"web1\", \"kind\": \"web\", \"pid\": {me}, \"log\": \"x\", \"restarts\": 0, \"state\": \"running\"}}]}}",
            p.join("rampart.toml").display(),
            state.display(),
            me = std::process::id(),
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let out = Command::new(rampart_bin())
        .args(["chaos", "partition", "web1", "--config", "rampart.toml"])
        .current_dir(p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = if rampart_up::cgroup::cgroup2_mount().is_none() {
        "cgroup v2 not found"
    } else {
        "the nodes' cgroups not found"
    };
    assert!(err.contains(expected), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "refused before any load"
    );
    // No fault, no table.
    if let Some(nft) = rampart_up::netcut::find_nft() {
        let tables = Command::new(nft)
            .args(["list", "tables", "inet"])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&tables.stdout)
            .contains(&format!("rampart_chaos_main_{}", std::process::id())));
    }
}
