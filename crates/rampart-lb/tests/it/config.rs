//! The binary refuses a bad config with file:line:col and a non-zero exit.

use std::process::Command;

use rampart_testkit::{rampart_bin, TempDir};

#[test]
fn bad_config_names_file_line_col_and_exits_non_zero() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\npool = \"missing\"\n\n\
         [[pool]]\nname = \"app\"\nalgorithm = \"fastest\"\nservers = [{ address = \"127.0.0.1:2\", weight = 999 }]\n",
    )
    .unwrap();
    let out = Command::new(rampart_bin())
        .args(["lb", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    assert!(
        err.contains(&format!(
            "{p}:4:8: unknown pool \"missing\"; defined pools: app"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:8:13: unknown algorithm \"fastest\"")),
        "{err}"
    );
    assert!(err.contains("round-robin, least-connections"), "{err}");
    assert!(
        err.contains(&format!("{p}:9:48: weight must be between 0 and 256")),
        "{err}"
    );

    // A missing file is an error too, and quick mode rejects bad arguments.
    let out = Command::new(rampart_bin())
        .args(["lb", "--config", "/nonexistent/lb.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(rampart_bin())
        .args([
            "lb",
            "--listen",
            "127.0.0.1:1",
            "--backend",
            "127.0.0.1:2",
            "--algorithm",
            "nope",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("source-ip-hash"));
}
