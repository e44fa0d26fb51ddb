//! The real `rampart lb` in front of three `rampart web` guestbook nodes.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::pg::PgCluster;
use rampart_testkit::{free_port, http_get, http_request, rampart_bin, wait_until, Proc};

use crate::common::{start_web, Web};

fn start_lb(dir: &std::path::Path, backends: &[SocketAddr]) -> (Proc, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let servers: Vec<String> = backends
        .iter()
        .map(|b| format!("{{ address = \"{b}\", weight = 1 }}"))
        .collect();
    let conf = format!(
        "[[listener]]\nname = \"web\"\naddress = \"{addr}\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"web\"\nalgorithm = \"round-robin\"\nservers = [{}]\n\
         [pool.health_check]\nkind = \"http\"\npath = \"/readyz\"\ninterval = \"100ms\"\n\
         timeout = \"200ms\"\nrise = 2\nfall = 2\njitter = \"20ms\"\n",
        servers.join(", ")
    );
    let path = dir.join("lb.toml");
    std::fs::write(&path, conf).expect("lb config");
    let mut c = Command::new(rampart_bin());
    c.args(["lb", "--config"])
        .arg(&path)
        .args(["--threads", "1"]);
    let p = Proc::spawn("lb", c, &dir.join("lb.log"));
    assert!(
        wait_until(Duration::from_secs(15), || http_get(addr, "/healthz")
            .is_ok_and(|r| r.status == 200)),
        "lb did not start"
    );
    (p, addr)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
    served_by: Mutex<Vec<(Instant, String)>>,
}

/// Clients hammering the balancer until `stop`: with `writes`, each loop posts a message
/// and reads it back with its token; always, token-less list reads.
fn load(
    lb: SocketAddr,
    clients: usize,
    writes: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let stop = stop.clone();
            let tally = tally.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                let fail = |what: String| tally.failed.lock().expect("lock").push(what);
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if writes {
                        let body = format!(r#"{{"author":"c{c}","text":"m{i}"}}"#);
                        match http_request(
                            lb,
                            "POST",
                            "/api/messages",
                            &[("Content-Type", "application/json")],
                            body.as_bytes(),
                        ) {
                            Ok(r) if r.status == 201 => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                let id = serde_json::from_slice::<serde_json::Value>(&r.body)
                                    .ok()
                                    .and_then(|v| v["id"].as_i64());
                                let token = r.header("x-rampart-token").unwrap_or("").to_string();
                                let Some(id) = id else {
                                    fail("POST without id".into());
                                    continue;
                                };
                                match http_request(
                                    lb,
                                    "GET",
                                    &format!("/api/messages/{id}"),
                                    &[("X-Rampart-Token", &token)],
                                    b"",
                                ) {
                                    Ok(g) if g.status == 200 => {
                                        tally.ok.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Ok(g) => fail(format!(
                                        "GET own write {id}: {} {}",
                                        g.status,
                                        g.text()
                                    )),
                                    Err(e) => fail(format!("GET own write {id}: {e}")),
                                }
                            }
                            Ok(r) => fail(format!("POST: {} {}", r.status, r.text())),
                            Err(e) => fail(format!("POST: {e}")),
                        }
                    }
                    match http_request(lb, "GET", "/api/messages?limit=5", &[], b"") {
                        Ok(r) if r.status == 200 => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if let Some(s) = r.header("x-served-by") {
                                tally
                                    .served_by
                                    .lock()
                                    .expect("lock")
                                    .push((Instant::now(), s.to_string()));
                            }
                        }
                        Ok(r) => fail(format!("GET list: {} {}", r.status, r.text())),
                        Err(e) => fail(format!("GET list: {e}")),
                    }
                }
            })
        })
        .collect()
}

fn run_phase(
    lb: SocketAddr,
    writes: bool,
    before: Duration,
    after: Duration,
    act: impl FnOnce(),
) -> (Arc<Tally>, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let threads = load(lb, 4, writes, stop.clone(), tally.clone());
    std::thread::sleep(before);
    let at = Instant::now();
    act();
    std::thread::sleep(after);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    (tally, at)
}

#[test]
fn losing_a_web_node_under_load_loses_no_request() {
    let pg = PgCluster::start(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = vec![
        "--root".into(),
        dir.path().to_str().expect("utf8").into(),
        "--drain-ms".into(),
        "1000".into(),
    ];
    for n in std::iter::once(&pg.primary).chain(&pg.replicas) {
        args.push("--db-node".into());
        args.push(n.host_port());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut webs: Vec<Web> = (1..=3)
        .map(|i| start_web(&format!("web{i}"), &a, dir.path()))
        .collect();
    for w in &webs {
        assert!(wait_until(Duration::from_secs(20), || http_get(
            w.addr, "/readyz"
        )
        .is_ok_and(|r| r.status == 200)));
    }
    let addrs: Vec<SocketAddr> = webs.iter().map(|w| w.addr).collect();
    let (_lb, lb) = start_lb(dir.path(), &addrs);
    // All three nodes take traffic.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..12 {
                if let Ok(r) = http_get(lb, "/api/messages?limit=1") {
                    seen.insert(r.header("x-served-by").unwrap_or("").to_string());
                }
            }
            seen.len() == 3
        }),
        "not all web nodes serve through the lb"
    );

    // Phase 1: a graceful stop (SIGTERM) under reads and writes with read-your-writes.
    let (t1, at) = run_phase(
        lb,
        true,
        Duration::from_millis(1500),
        Duration::from_millis(3000),
        || {
            webs[1].proc.signal(Signal::SIGTERM);
        },
    );
    let failed = t1.failed.lock().expect("lock").clone();
    let by2 = t1
        .served_by
        .lock()
        .expect("lock")
        .iter()
        .filter(|(t, s)| *t < at && s == "web2")
        .count();
    eprintln!(
        "phase 1 (SIGTERM web2): {} ok, {} failed; web2 served {by2} reads before",
        t1.ok.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(by2 > 0, "web2 took no traffic before its stop");
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        t1.ok.load(Ordering::Relaxed),
        &failed[..failed.len().min(10)]
    );
    assert!(
        t1.ok.load(Ordering::Relaxed) > 100,
        "too little load: {}",
        t1.ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        webs[1].proc.wait_exit(Duration::from_secs(10)),
        Ok(Some(0)),
        "web2 did not exit cleanly"
    );
    let late = t1
        .served_by
        .lock()
        .expect("lock")
        .iter()
        .filter(|(t, s)| *t > at + Duration::from_millis(1500) && s == "web2")
        .count();
    assert_eq!(late, 0, "web2 still served after it stopped");

    // Phase 2: SIGKILL under reads: the balancer retries what web3 could not answer.
    let (t2, _) = run_phase(
        lb,
        false,
        Duration::from_millis(1000),
        Duration::from_millis(2000),
        || {
            webs[2].proc.signal(Signal::SIGKILL);
        },
    );
    let failed = t2.failed.lock().expect("lock").clone();
    eprintln!(
        "phase 2 (SIGKILL web3): {} ok, {} failed",
        t2.ok.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        t2.ok.load(Ordering::Relaxed),
        &failed[..failed.len().min(10)]
    );
    assert!(t2.ok.load(Ordering::Relaxed) > 100);
}
