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
    // A live supervisor recorded in up.json (this test process stands in for it).
    let state = p.join(".rampart/main");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("up.json"),
        format!(
            "{{\"pid\": {}, \"topology\": \"{}\", \"data_dir\": \"{}\", \"nodes\": []}}",
            std::process::id(),
            p.join("rampart.toml").display(),
            state.display()
        ),
    )
    .unwrap();
    let out = rampart(&["up", "--config", "rampart.toml"], p);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a stack is already running"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(!state.join("logs").exists(), "nothing started");
}
