//! Operating the lb: admin API (state, metrics, stats page), runtime control through
//! `rampart lb ctl`, reloads (SIGHUP, `rampart lb reload`), graceful stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::{free_port, http_request, rampart_bin, wait_port, Proc, TempDir};
use serde_json::Value;

use crate::support::{servers, wait_for, Backend, Client};

/// A `rampart lb` with an admin listener, its config file kept for rewrites.
pub(crate) struct OpsLb {
    proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    dir: TempDir,
}

/// After a binary upgrade the serving process is a child the Proc does not track: kill
/// whatever pid the pid file names, so no lb outlives its test (even a failed one).
impl Drop for OpsLb {
    fn drop(&mut self) {
        if let Some(pid) = pid_in(&self.pid_file()) {
            if pid != self.proc.pid() {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        }
    }
}

impl OpsLb {
    /// `body` has `{LISTEN}` and `{ADMIN}` replaced; `env` goes to the process.
    pub(crate) async fn start(body: &str, env: &[(&str, &str)]) -> OpsLb {
        OpsLb::start_from(&rampart_bin(), body, env, 2).await
    }

    /// [`OpsLb::start`] with the balancer run from `bin` with `threads` workers.
    async fn start_from(
        bin: &std::path::Path,
        body: &str,
        env: &[(&str, &str)],
        threads: usize,
    ) -> OpsLb {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = TempDir::new().unwrap();
        let config = dir.path().join("lb.toml");
        let mut lb = OpsLb {
            proc: Proc::spawn(
                "placeholder",
                Command::new("true"),
                &dir.path().join("true.log"),
            ),
            addr,
            admin,
            config,
            dir,
        };
        lb.write(body);
        let mut cmd = Command::new(bin);
        cmd.arg("lb")
            .arg("--config")
            .arg(&lb.config)
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--pid-file")
            .arg(lb.dir.path().join("lb.pid"));
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        lb.proc = Proc::spawn("rampart lb", cmd, &lb.dir.path().join("lb.log"));
        let (a, m) = (lb.addr, lb.admin);
        let up = tokio::task::spawn_blocking(move || {
            wait_port(a, Duration::from_secs(10)) && wait_port(m, Duration::from_secs(5))
        })
        .await
        .unwrap();
        assert!(up, "rampart lb did not listen:\n{}", lb.proc.log_text());
        lb
    }

    fn write(&self, body: &str) {
        let text = body
            .replace("{LISTEN}", &self.addr.to_string())
            .replace("{ADMIN}", &self.admin.to_string());
        std::fs::write(&self.config, text).unwrap();
    }

    /// A request to the admin API: (status, body).
    pub(crate) async fn api(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let (admin, method, path, body) = (
            self.admin,
            method.to_string(),
            path.to_string(),
            body.to_string(),
        );
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = http_request(admin, &method, &path, &h, body.as_bytes()).unwrap();
            (r.status, r.text())
        })
        .await
        .unwrap()
    }

    async fn state(&self) -> Value {
        let (s, body) = self.api("GET", "/api/state", &[], "").await;
        assert_eq!(s, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Poll `/api/state` (sent with `headers`) every 50 ms until `f` holds for it or
    /// `timeout` passes; an admin API that does not answer yet is polled again. Returns
    /// the last state read (`Null` if none) and whether `f` held.
    async fn state_until(
        &self,
        headers: &[(&str, &str)],
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> (Value, bool) {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            let admin = self.admin;
            let h: Vec<(String, String)> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let r = tokio::task::spawn_blocking(move || {
                let h: Vec<(&str, &str)> =
                    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                http_request(admin, "GET", "/api/state", &h, b"").ok()
            })
            .await
            .unwrap();
            if let Some(v) = r
                .filter(|r| r.status == 200)
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
            {
                last = v;
                if f(&last) {
                    return (last, true);
                }
            }
            if Instant::now() > deadline {
                return (last, false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `rampart lb <args>` against this lb: (success, stdout + stderr).
    async fn cli(&self, args: &[&str]) -> (bool, String) {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{ADMIN}", &self.admin.to_string()))
            .collect();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(rampart_bin())
                .arg("lb")
                .args(&args)
                .env("RUST_BACKTRACE", "0")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn pid_file(&self) -> String {
        self.dir.path().join("lb.pid").display().to_string()
    }
}

fn server<'a>(state: &'a Value, pool: &str, name: &str) -> Option<&'a Value> {
    state["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == pool)?["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

fn config(servers_line: &str, extra: &str) -> String {
    format!(
        "[admin]\naddress = \"{{ADMIN}}\"\n{extra}\n[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\n{servers_line}\nhealth_check = {{ kind = \"http\", path = \"/health\", interval = \"200ms\", timeout = \"200ms\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_shows_state_metrics_and_the_stats_page_behind_a_token() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = OpsLb::start(
        &config(&servers(&[(&a, 1), (&b, 1)]), "token_env = \"LB_TOKEN\""),
        &[("LB_TOKEN", "s3cret")],
    )
    .await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..20 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    for _ in 0..3 {
        assert_eq!(cl.get("/fail").await.unwrap().0, 500);
    }
    // One upload: its body counts as "bytes in" of the server that received it.
    let up = hyper::Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "lb")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            1000
        ])))
        .unwrap();
    assert_eq!(cl.request(up).await.unwrap().0, 200);

    // Without the token: 401; with a wrong one too.
    assert_eq!(lb.api("GET", "/api/state", &[], "").await.0, 401);
    assert_eq!(
        lb.api("GET", "/metrics", &[("Authorization", "Bearer nope")], "")
            .await
            .0,
        401
    );
    let auth = [("Authorization", "Bearer s3cret")];
    // Health checks every 200 ms: wait until a's first one is recorded and the 24
    // requests are counted (not a fixed pause); the checks below then say what is off.
    let (s, body) = lb.api("GET", "/api/state", &auth, "").await;
    assert_eq!(s, 200, "{body}");
    let (st, _) = lb
        .state_until(&auth, Duration::from_secs(5), |st| {
            let l = &st["listeners"][0]["counters"]["responses"];
            server(st, "app", "a").is_some_and(|a| !a["last_check"].is_null())
                && l["2xx"] == 21
                && l["5xx"] == 3
        })
        .await;
    let sa = server(&st, "app", "a").unwrap();
    let sb = server(&st, "app", "b").unwrap();
    assert_eq!(sa["state"], "ready");
    assert_eq!(sa["health"], "up");
    let ok = |s: &Value| s["counters"]["responses"]["2xx"].as_u64().unwrap();
    let bad = |s: &Value| s["counters"]["responses"]["5xx"].as_u64().unwrap();
    assert_eq!(ok(sa) + ok(sb), 21, "{st}");
    let bytes_in = |s: &Value| s["counters"]["bytes_in"].as_u64().unwrap();
    assert_eq!(bytes_in(sa) + bytes_in(sb), 1000, "{st}");
    assert_eq!(bad(sa) + bad(sb), 3, "{st}");
    assert_eq!(ok(sa), a.hits() - bad(sa));
    assert!(sa["counters"]["latency_seconds"]["p99"].as_f64().unwrap() > 0.0);
    assert!(sa["counters"]["bytes_out"].as_u64().unwrap() > 0);
    assert!(sa["last_check"]["ok"].as_bool().unwrap(), "{st}");
    let l = &st["listeners"][0];
    assert_eq!(l["counters"]["responses"]["2xx"], 21);
    assert_eq!(l["counters"]["responses"]["5xx"], 3);
    assert_eq!(l["connections"], 1);

    let (s, m) = lb.api("GET", "/metrics", &auth, "").await;
    assert_eq!(s, 200);
    let line = format!(
        "rampart_server_requests_total{{pool=\"app\",server=\"a\",class=\"2xx\"}} {}",
        ok(sa)
    );
    assert!(m.contains(&line), "no `{line}` in\n{m}");
    assert!(
        m.contains("rampart_listener_requests_total{listener=\"web\",class=\"5xx\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("# TYPE rampart_server_response_seconds histogram"),
        "{m}"
    );
    assert!(
        m.contains("rampart_server_response_seconds_count{pool=\"app\",server=\"b\"}"),
        "{m}"
    );
    assert!(
        m.contains("rampart_server_up{pool=\"app\",server=\"a\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rampart_pool_queue_length{pool=\"app\"} 0"),
        "{m}"
    );

    // The stats page needs no token (its script sends it) but holds no data itself.
    let (s, page) = lb.api("GET", "/stats", &[], "").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("<table") && page.contains("/api/state"),
        "{page}"
    );

    // The CLI with the token lists both servers.
    let (okc, out) = lb
        .cli(&["ctl", "--admin", "{ADMIN}", "--token", "s3cret", "list"])
        .await;
    assert!(okc, "{out}");
    assert!(
        out.contains(&a.addr.to_string()) && out.contains(&b.addr.to_string()),
        "{out}"
    );
    let (okc, out) = lb.cli(&["ctl", "--admin", "{ADMIN}", "list"]).await;
    assert!(!okc && out.contains("401"), "{out}");
}

#[test]
fn a_public_admin_address_without_a_token_is_refused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        "[admin]\naddress = \"0.0.0.0:9100\"\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:1\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nservers = [{ address = \"127.0.0.1:2\" }]\n",
    )
    .unwrap();
    let out = Command::new(rampart_bin())
        .args(["lb", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:2:11: admin address 0.0.0.0:9100 is not loopback and no token is set",
            path.display()
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_control_drains_reweights_adds_and_removes_servers_and_survives_a_reload() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let body = config(&servers(&[(&a, 1), (&b, 1)]), "");
    let lb = OpsLb::start(&body, &[]).await;

    // b in maintenance: everything goes to a, including a slow request.
    let (ok, out) = lb
        .cli(&[
            "ctl",
            "--admin",
            "{ADMIN}",
            "set-state",
            "app",
            "b",
            "maintenance",
        ])
        .await;
    assert!(ok, "{out}");
    a.delay_ms.store(1500, Ordering::Relaxed);
    let addr = lb.addr;
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        c.get("/slow").await
    });
    assert!(wait_for(|| a.hits() == 1, Duration::from_secs(3)).await);
    // Drain a while its request is in flight, bring b back: new requests all go to b.
    let (ok, out) = lb
        .cli(&[
            "ctl",
            "--admin",
            "{ADMIN}",
            "set-state",
            "app",
            "a",
            "drain",
        ])
        .await;
    assert!(ok, "{out}");
    let (ok, out) = lb
        .cli(&[
            "ctl",
            "--admin",
            "{ADMIN}",
            "set-state",
            "app",
            "b",
            "ready",
        ])
        .await;
    assert!(ok, "{out}");
    let st = lb.state().await;
    assert_eq!(server(&st, "app", "a").unwrap()["in_flight"], 1, "{st}");
    assert_eq!(server(&st, "app", "a").unwrap()["state"], "drain");
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap(), (200, "b".to_string()));
    }
    assert_eq!(a.hits(), 1, "a drained server got a new request");
    // The drained server's request in flight completes.
    assert_eq!(slow.await.unwrap().unwrap(), (200, "a".to_string()));
    a.delay_ms.store(0, Ordering::Relaxed);

    // Add c with weight 3 next to b (a still drained): c gets 3 of every 4.
    let (ok, out) = lb
        .cli(&[
            "ctl",
            "--admin",
            "{ADMIN}",
            "add-server",
            "app",
            "c",
            &c.addr.to_string(),
            "--weight",
            "3",
        ])
        .await;
    assert!(ok, "{out}");
    let (b0, c0) = (b.hits(), c.hits());
    for _ in 0..40 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    assert_eq!((b.hits() - b0, c.hits() - c0), (10, 30));
    // Reweight b to 3: even split.
    let (ok, out) = lb
        .cli(&["ctl", "--admin", "{ADMIN}", "set-weight", "app", "b", "3"])
        .await;
    assert!(ok, "{out}");
    let (b0, c0) = (b.hits(), c.hits());
    for _ in 0..40 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    assert_eq!((b.hits() - b0, c.hits() - c0), (20, 20));
    // Errors name the problem.
    let (ok, out) = lb
        .cli(&[
            "ctl",
            "--admin",
            "{ADMIN}",
            "set-state",
            "app",
            "zz",
            "drain",
        ])
        .await;
    assert!(
        !ok && out.contains("no server \"zz\" in pool \"app\""),
        "{out}"
    );
    let (ok, out) = lb
        .cli(&[
            "ctl",
            "--admin",
            "{ADMIN}",
            "set-state",
            "app",
            "b",
            "sleepy",
        ])
        .await;
    assert!(!ok && out.contains("unknown server state"), "{out}");

    // Remove a (drained, in the config).
    let (ok, out) = lb
        .cli(&["ctl", "--admin", "{ADMIN}", "remove-server", "app", "a"])
        .await;
    assert!(ok, "{out}");

    // A reload with the same config keeps every runtime change: a removed, c added,
    // b's weight 3.
    let (ok, out) = lb.cli(&["reload", "--admin", "{ADMIN}"]).await;
    assert!(ok, "{out}");
    let st = lb.state().await;
    assert!(server(&st, "app", "a").is_none(), "{st}");
    assert_eq!(server(&st, "app", "c").unwrap()["weight"], 3, "{st}");
    assert_eq!(server(&st, "app", "b").unwrap()["weight"], 3, "{st}");
    // A reload that changes b's weight in the config: the config wins for b only.
    lb.write(&config(&servers(&[(&a, 1), (&b, 2)]), ""));
    let (ok, out) = lb.cli(&["reload", "--pid-file", &lb.pid_file()]).await;
    assert!(ok, "{out}");
    assert!(
        wait_for(
            || lb.proc.log_text().contains("configuration reloaded"),
            Duration::from_secs(5)
        )
        .await,
        "{}",
        lb.proc.log_text()
    );
    let st = lb.state().await;
    assert_eq!(server(&st, "app", "b").unwrap()["weight"], 2, "{st}");
    assert_eq!(server(&st, "app", "c").unwrap()["weight"], 3, "{st}");
    // a's config changed (b's did, a's did not): a stays removed.
    assert!(server(&st, "app", "a").is_none(), "{st}");
}

/// The balancer's threads, by name.
fn threads_of(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// With one worker the balancer is one thread (HAProxy's `nbthread 1`), whose file table
/// the kernel need not reference-count: traffic, health checks, the admin API and a
/// reload all run on it. With two, a thread each beside the control thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_is_one_thread_that_serves_checks_reloads_and_answers_the_admin_api() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = OpsLb::start_from(&rampart_bin(), &config(&servers(&[(&a, 1)]), ""), &[], 1).await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    lb.write(&config(&servers(&[(&a, 1), (&b, 1)]), ""));
    let (ok, out) = lb.cli(&["reload", "--admin", "{ADMIN}"]).await;
    assert!(ok, "{out}");
    // Both up by their health checks, which run on the same thread.
    let (_, up) = lb
        .state_until(&[], Duration::from_secs(5), |st| {
            ["a", "b"]
                .iter()
                .all(|n| server(st, "app", n).is_some_and(|s| s["health"] == "up"))
        })
        .await;
    assert!(up, "{}", lb.proc.log_text());
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    assert!(b.hits() >= 4, "b served {}", b.hits());
    assert_eq!(threads_of(lb.proc.pid()), ["rampart"]);

    let two = OpsLb::start(&config(&servers(&[(&a, 1)]), ""), &[]).await;
    let mut cl = Client::connect(two.addr).await.unwrap();
    assert_eq!(cl.get("/").await.unwrap().0, 200);
    assert_eq!(
        threads_of(two.proc.pid()),
        ["lb-worker-0", "lb-worker-1", "rampart"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_with_its_position_and_the_old_one_keeps_serving() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = OpsLb::start(&config(&servers(&[(&a, 1)]), ""), &[]).await;
    // Valid reload by SIGHUP: b joins.
    lb.write(&config(&servers(&[(&a, 1), (&b, 1)]), ""));
    lb.proc.signal(Signal::SIGHUP);
    assert!(
        wait_for(
            || lb.proc.log_text().contains("configuration reloaded"),
            Duration::from_secs(5)
        )
        .await
    );
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));

    // Broken: an unknown algorithm on line 11.
    let broken = config(&servers(&[(&a, 1)]), "").replace(
        "name = \"app\"\nservers",
        "name = \"app\"\nalgorithm = \"fastest\"\nservers",
    );
    lb.write(&broken);
    let (ok, out) = lb.cli(&["reload", "--admin", "{ADMIN}"]).await;
    assert!(!ok, "{out}");
    let pos = format!(
        "{}:11:13: unknown algorithm \"fastest\"",
        lb.config.display()
    );
    assert!(out.contains(&pos), "{out}");
    lb.proc.signal(Signal::SIGHUP);
    assert!(
        wait_for(
            || lb.proc.log_text().matches(&pos).count() >= 2,
            Duration::from_secs(5)
        )
        .await,
        "{}",
        lb.proc.log_text()
    );
    // Still both servers, still serving.
    for _ in 0..10 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    assert_eq!((a.hits(), b.hits()), (10, 10));
    let st = lb.state().await;
    assert_eq!(st["reload_failures"], 2);
    assert_eq!(st["reloads"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let a = Backend::start("a").await;
    let mut lb = OpsLb::start(
        &config(&servers(&[(&a, 1)]), "[shutdown]\ngrace = \"10s\"\n"),
        &[],
    )
    .await;
    // An idle keep-alive connection and a slow request in flight.
    let mut idle = Client::connect(lb.addr).await.unwrap();
    assert_eq!(idle.get("/").await.unwrap().0, 200);
    a.delay_ms.store(1000, Ordering::Relaxed);
    let addr = lb.addr;
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(addr).await.unwrap();
        c.get("/slow").await
    });
    assert!(wait_for(|| a.hits() == 2, Duration::from_secs(3)).await);
    lb.proc.signal(Signal::SIGTERM);
    // No new connections (once the signal is handled: polled, not a fixed pause)...
    assert!(
        wait_for(
            || std::net::TcpStream::connect(addr).is_err(),
            Duration::from_secs(5)
        )
        .await,
        "still accepting 5 s after SIGTERM"
    );
    // ... the one in flight finishes ...
    assert_eq!(slow.await.unwrap().unwrap(), (200, "a".to_string()));
    // ... and the process exits 0 without waiting for the idle connection's timeout.
    let t = Instant::now();
    let code = tokio::task::spawn_blocking(move || {
        let c = lb.proc.wait_exit(Duration::from_secs(5));
        (c, lb)
    })
    .await
    .unwrap();
    assert_eq!(code.0.unwrap(), Some(0), "{}", code.1.proc.log_text());
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(idle.get("/").await.is_err());
}

fn pid_in(path: &str) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.contains(") Z"),
    }
}

/// Install `content` at `path` as package managers do: a new file renamed over the old.
fn install(path: &std::path::Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

mod nodes;
mod under_load;
