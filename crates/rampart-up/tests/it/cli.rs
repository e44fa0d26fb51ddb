//! The commands around the topology, through the real binary: refusal of an invalid
//! file with positions, the audit's exit status, init's refusal to overwrite.

use std::path::Path;
use std::process::Command;

use rampart_testkit::rampart_bin;

fn rampart(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(rampart_bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run rampart")
}

#[test]
fn up_refuses_an_invalid_topology_naming_each_problem_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(rampart(&["init", "--port-base", "12000"], p)
        .status
        .success());
    let file = p.join("rampart.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    // web3 on the port of web2, and a pool server nobody defines.
    let text = text
        .replacen(
            "listen = \"127.0.0.1:12103\"",
            "listen = \"127.0.0.1:12102\"",
            1,
        )
        .replacen("{ name = \"web1\"", "{ name = \"web9\"", 1);
    std::fs::write(&file, &text).unwrap();
    let out = rampart(&["up", "--config", "rampart.toml"], p);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    // web3's listen line: the second one on that address.
    let web3 = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("listen = \"127.0.0.1:12102\""))
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    assert!(
        err.contains(&format!(
            "rampart.toml:{web3}:10: web node web3 wants 127.0.0.1:12102"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("rampart.toml:{}:", line_of("{ name = \"web9\""))),
        "{err}"
    );
    assert!(err.contains("unknown server \"web9\""), "{err}");
    // Nothing was started.
    assert!(!p.join(".rampart/main/up.json").exists());
    assert!(!p.join(".rampart/main/logs").exists());
}

#[test]
fn audit_exit_status_follows_the_findings() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rampart-topology/tests/fixtures");
    let out = rampart(&["audit", "--config", "seed.toml"], &fixtures);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for code in [
        "spof-lb",
        "no-failover",
        "no-https",
        "no-firewall",
        "no-monitoring",
    ] {
        assert!(text.contains(code), "{code}: {text}");
    }
    assert!(text.contains("fix: "), "{text}");

    let dir = tempfile::tempdir().unwrap();
    assert!(rampart(&["init"], dir.path()).status.success());
    let out = rampart(&["audit", "--config", "rampart.toml"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn init_writes_a_commented_file_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(rampart(&["init", "stack.toml", "--cluster", "shop"], p)
        .status
        .success());
    let text = std::fs::read_to_string(p.join("stack.toml")).unwrap();
    assert!(
        text.contains("name = \"shop\"")
            && text.lines().filter(|l| l.starts_with('#')).count() > 10
    );
    assert!(p.join("site").is_dir());
    let again = rampart(&["init", "stack.toml"], p);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(rampart(&["init", "stack.toml", "--force"], p)
        .status
        .success());
}

#[test]
fn up_refuses_to_start_a_second_stack_from_the_same_folder() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(rampart(&["init", "--port-base", "13000"], p)
        .status
        .success());
    // A live supervisor recorded in up.json: a process whose arguments say `up` stands in
    // for it (a new `up` takes a recorded pid for a live stack only when it is an `up`;
    // any other live or dead pid means a stack left behind, which it stops).
    let mut standin = std::process::Command::new("sh")
        .args(["-c", "sleep 60", "up"])
        .spawn()
        .unwrap();
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let standin_pid = standin.id();
    let _reap = Reap(&mut standin);
    let state = p.join(".rampart/main");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("up.json"),
        format!(
            "{{\"pid\": {}, \"topology\": \"{}\", \"data_dir\": \"{}\", \"nodes\": []}}",
            standin_pid,
            p.join("rampart.toml").display(),
            state.display()
        ),
    )
    .unwrap();
    // Bounded: an `up` that wrongly started would otherwise run until stopped.
    let out = Command::new("timeout")
        .args(["-s", "INT", "60"])
        .arg(rampart_bin())
        .args(["up", "--config", "rampart.toml"])
        .current_dir(p)
        .output()
        .expect("run rampart up");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a stack is already running"), "{err}");
    assert!(err.contains(&format!("pid {standin_pid}")), "{err}");
    assert!(!state.join("logs").exists(), "nothing started");
}

#[test]
fn units_writes_a_verified_systemd_unit_per_node_and_never_overwrites_a_changed_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(rampart(&["init", "--port-base", "14000"], p)
        .status
        .success());
    let config = std::fs::canonicalize(p.join("rampart.toml")).unwrap();
    let bin = std::fs::canonicalize(rampart_bin()).unwrap();
    // etcd where the units will run; without one here, this binary stands in so that
    // systemd-analyze finds an executable.
    let etcd = rampart_testkit::find_program("etcd", &["/usr/bin", "/usr/local/bin"])
        .unwrap_or_else(|| bin.clone());
    let etcd = etcd.display().to_string();
    let bin_s = bin.display().to_string();
    let args = [
        "units",
        "--config",
        "rampart.toml",
        "--out",
        "units",
        "--bin",
        &bin_s,
        "--etcd",
        &etcd,
    ];
    let out = rampart(&args, p);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let units = p.join("units");
    let nodes = [
        ("etcd", "etcd1"),
        ("etcd", "etcd2"),
        ("etcd", "etcd3"),
        ("db", "db1"),
        ("db", "db2"),
        ("db", "db3"),
        ("web", "web1"),
        ("web", "web2"),
        ("web", "web3"),
        ("lb", "lb1"),
        ("lb", "lb2"),
        ("monitor", "monitor"),
    ];
    let mut files = Vec::new();
    for (role, node) in nodes {
        let name = if role == "monitor" {
            "rampart-monitor.service".to_string()
        } else {
            format!("rampart-{role}-{node}.service")
        };
        let text = std::fs::read_to_string(units.join(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{stdout}"));
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("no ExecStart in {name}:\n{text}"));
        if role == "etcd" {
            assert!(
                exec.starts_with(&format!("{etcd} --name {node} ")),
                "{text}"
            );
        } else {
            assert_eq!(
                exec,
                format!("{bin_s} {role} --config {} --node {node}", config.display())
            );
        }
        for line in [
            "Restart=on-failure",
            "RestartSec=1",
            "KillMode=mixed",
            "After=network-online.target",
            "Wants=network-online.target",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {name}:\n{text}");
        }
        assert!(stdout.contains(&name), "{stdout}");
        files.push(units.join(&name));
    }
    assert_eq!(std::fs::read_dir(&units).unwrap().count(), nodes.len());
    assert!(
        stdout.contains(
            "systemctl daemon-reload && systemctl enable --now rampart-etcd-etcd1.service"
        ),
        "{stdout}"
    );

    match rampart_testkit::find_program("systemd-analyze", &["/usr/bin", "/bin"]) {
        Some(analyze) => {
            let v = Command::new(analyze)
                .arg("verify")
                .args(&files)
                .output()
                .unwrap();
            assert!(
                v.status.success(),
                "systemd-analyze verify:\n{}{}",
                String::from_utf8_lossy(&v.stdout),
                String::from_utf8_lossy(&v.stderr)
            );
        }
        None => eprintln!("NOTE: systemd-analyze is not installed: the units were not verified"),
    }

    // The same again: nothing changes. A changed file is kept unless --force.
    let again = rampart(&args, p);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    let web1 = units.join("rampart-web-web1.service");
    std::fs::write(&web1, "[Service]\nExecStart=/bin/true\n").unwrap();
    let refused = rampart(&args, p);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("rampart-web-web1.service") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&web1).unwrap(),
        "[Service]\nExecStart=/bin/true\n"
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(rampart(&forced, p).status.success());
    assert!(std::fs::read_to_string(&web1)
        .unwrap()
        .contains("--node web1"));

    // An unknown node is refused, naming the known ones.
    let mut bad = args.to_vec();
    bad.extend(["--node", "web9"]);
    let out = rampart(&bad, p);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no node \"web9\"") && err.contains("known: etcd1, etcd2, etcd3, db1"),
        "{err}"
    );
}
