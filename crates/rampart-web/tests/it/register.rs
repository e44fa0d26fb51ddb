//! Registration in etcd under the key layout rampart lb watches, and deregistration on
//! SIGTERM before the listener closes.

use std::time::Duration;

use nix::sys::signal::Signal;
use rampart_coord::{service_key, Coord, CoordOptions};
use rampart_testkit::etcd::Etcd;
use rampart_testkit::{free_port, http_get, rampart_bin, wait_until, Proc};

fn key_present(
    rt: &tokio::runtime::Runtime,
    coord: &Coord,
    key: &str,
) -> Option<serde_json::Value> {
    rt.block_on(coord.get(key))
        .ok()
        .flatten()
        .and_then(|kv| serde_json::from_slice(&kv.value).ok())
}

#[test]
fn registers_when_ready_and_deregisters_before_closing() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("index.html"), "hi\n").expect("w");
    let port = free_port();
    let conf = format!(
        "[cluster]\nname = \"regtest\"\netcd = [\"{}\"]\n\n[web]\nroot = \".\"\npool = \"front\"\ndrain_seconds = 2.0\n\n\
         [[web.node]]\nname = \"webA\"\nlisten = \"127.0.0.1:{port}\"\nweight = 7\n",
        etcd.client_url(0)
    );
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, conf).expect("topology");
    let mut c = std::process::Command::new(rampart_bin());
    c.args(["web", "--config"])
        .arg(&path)
        .args(["--node", "webA", "--threads", "1"]);
    let mut web = Proc::spawn("webA", c, &dir.path().join("webA.log"));
    let addr = ([127, 0, 0, 1], port).into();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let coord = rt
        .block_on(Coord::connect(CoordOptions::new(etcd.client_urls())))
        .expect("coord");
    let key = service_key("regtest", "front", "webA");
    assert_eq!(key, "/rampart/regtest/services/front/webA");
    assert!(
        wait_until(Duration::from_secs(15), || key_present(&rt, &coord, &key)
            .is_some()),
        "never registered:\n{}",
        web.log_text()
    );
    let v = key_present(&rt, &coord, &key).expect("record");
    assert_eq!(v["name"], "webA");
    assert_eq!(v["address"], format!("127.0.0.1:{port}"));
    assert_eq!(v["weight"], 7);
    assert_eq!(
        http_get(addr, "/").expect("get").header("x-served-by"),
        Some("webA")
    );

    web.signal(Signal::SIGTERM);
    // The key goes first, while the node still answers (draining).
    assert!(
        wait_until(Duration::from_secs(2), || key_present(&rt, &coord, &key)
            .is_none()),
        "still registered after SIGTERM"
    );
    let r = http_get(addr, "/readyz").expect("still serving while draining");
    assert_eq!(r.status, 503);
    assert_eq!(http_get(addr, "/").expect("get").status, 200);
    assert_eq!(web.wait_exit(Duration::from_secs(10)), Ok(Some(0)));
}

#[test]
fn a_bad_topology_names_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("topology.toml");
    std::fs::write(
        &path,
        "[cluster]\nname = \"x\"\n\n[web]\nroot = \".\"\n\n[[web.node]]\nname = \"w\"\nlisten = \"localhost\"\n",
    )
    .expect("w");
    let out = std::process::Command::new(rampart_bin())
        .args(["web", "--config"])
        .arg(&path)
        .args(["--node", "w"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:9:10:", path.display())), "{err}");
}
