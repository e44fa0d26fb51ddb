use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rampart_testkit::{free_port, http_get, rampart_bin, wait_until, HttpResponse, Proc};

/// A running `rampart web` node.
pub struct Web {
    pub proc: Proc,
    pub addr: SocketAddr,
}

/// Start `rampart web --listen <free port> <args>` and wait until /healthz answers.
pub fn start_web(name: &str, args: &[&str], log_dir: &Path) -> Web {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut c = Command::new(rampart_bin());
    c.arg("web")
        .arg("--listen")
        .arg(addr.to_string())
        .args(["--name", name, "--threads", "2"])
        .args(args)
        .env("RUST_LOG", "info");
    let mut proc = Proc::spawn(name, c, &log_dir.join(format!("{name}.log")));
    let ok = wait_until(Duration::from_secs(20), || {
        http_get(addr, "/healthz").is_ok_and(|r| r.status == 200)
    });
    assert!(
        ok && proc.is_running(),
        "{name} did not start:\n{}",
        proc.log_text()
    );
    Web { proc, addr }
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    rampart_testkit::http_request(addr, "GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    rampart_testkit::http_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}
