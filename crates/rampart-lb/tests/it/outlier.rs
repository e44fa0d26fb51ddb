//! Passive health is bounded: outlier detection ejects a server only when it fails more
//! than its peers (or cannot be connected to), never more than `max_ejection_percent` of
//! the pool, and past `panic_threshold` the pool balances over every server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_testkit::{free_port, http_request};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::support::{http_config, servers, Backend, Client, Lb};

/// Failure-ratio windows short enough for a test.
const FAST_WINDOWS: &str = "outlier = { interval = \"500ms\", min_requests = 5 }";

/// A `rampart lb` with an admin listener: `pool_extra` goes into pool "app".
async fn start(servers_line: &str, pool_extra: &str) -> (Lb, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n{}",
        http_config("round-robin", servers_line, pool_extra)
    );
    let lb = Lb::start(&config).await;
    assert!(
        tokio::task::spawn_blocking(move || rampart_testkit::wait_port(
            admin,
            Duration::from_secs(5)
        ))
        .await
        .unwrap(),
        "no admin listener:\n{}",
        lb.proc.log_text()
    );
    (lb, admin)
}

/// The pool "app" of `/api/state`.
async fn pool_state(admin: SocketAddr) -> Value {
    let text = tokio::task::spawn_blocking(move || {
        http_request(admin, "GET", "/api/state", &[], b"")
            .unwrap()
            .text()
    })
    .await
    .unwrap();
    let st: Value = serde_json::from_str(&text).unwrap();
    st["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "app")
        .cloned()
        .unwrap()
}

async fn metrics(admin: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        http_request(admin, "GET", "/metrics", &[], b"")
            .unwrap()
            .text()
    })
    .await
    .unwrap()
}

fn server<'a>(pool: &'a Value, name: &str) -> &'a Value {
    pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

/// Names of the ejected servers, sorted.
fn ejected(pool: &Value) -> Vec<String> {
    let mut v: Vec<String> = pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["ejected"].is_null())
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// `clients` keep-alive clients send GET `path` for `for_how_long`: every status seen.
/// `clients` clients sending `path` one request after the other for `for_how_long`, and on
/// until each has made `at_least` requests (a loaded CI host is slow; at most 30 s more).
async fn hammer(
    lb: SocketAddr,
    path: &str,
    clients: usize,
    for_how_long: Duration,
    at_least: usize,
) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + for_how_long;
            let limit = deadline + Duration::from_secs(30);
            let mut statuses = Vec::new();
            let mut cl = Client::connect(lb).await.unwrap();
            while Instant::now() < deadline || (statuses.len() < at_least && Instant::now() < limit)
            {
                match cl.get(&path).await {
                    Ok((st, _)) => statuses.push(st),
                    Err(_) => cl = Client::connect(lb).await.unwrap(),
                }
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// An HTTP backend that answers 500 (with its name) to everything but `/health`.
struct Failing {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    accept: AbortHandle,
}

impl Failing {
    async fn start(name: &str) -> Failing {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (h, body) = (hits.clone(), Bytes::from(name.to_string()));
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (h, body) = (h.clone(), body.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (h, body) = (h.clone(), body.clone());
                        async move {
                            let mut r = Response::new(Full::new(body));
                            if req.uri().path() != "/health" {
                                h.fetch_add(1, Ordering::Relaxed);
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        Failing {
            name: name.to_string(),
            addr,
            hits,
            accept,
        }
    }
}

impl Drop for Failing {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The case: one URL fails on every server. Before outlier detection, three 5xx in
/// a row marked each server down and the whole site answered 503 "no healthy server".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hammering_a_url_that_500s_everywhere_ejects_nobody() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    // Default health checks (tcp) and passive_failures (3), fast windows.
    let (lb, admin) = start(&servers(&[(&a, 1), (&b, 1), (&c, 1)]), FAST_WINDOWS).await;

    // Several windows of nothing but /fail (500 on every server).
    let statuses = hammer(lb.addr, "/fail", 3, Duration::from_millis(2500), 40).await;
    assert!(statuses.len() > 100, "only {} requests", statuses.len());
    let not_500: Vec<&u16> = statuses.iter().filter(|s| **s != 500).collect();
    assert!(
        not_500.is_empty(),
        "{} of {} answers were not the servers' 500 (first: {:?}):\n{}",
        not_500.len(),
        statuses.len(),
        not_500.first(),
        lb.proc.log_text()
    );

    // Nobody ejected or down, and the good URLs answer from every server.
    let pool = pool_state(admin).await;
    assert_eq!(ejected(&pool), Vec::<String>::new(), "{pool}");
    assert_eq!(pool["servers_eligible"], 3, "{pool}");
    assert_eq!(pool["ejections"]["failure_ratio"], 0, "{pool}");
    assert_eq!(pool["ejections"]["connect_failures"], 0, "{pool}");
    for name in ["a", "b", "c"] {
        assert_eq!(server(&pool, name)["health"], "up", "{pool}");
    }
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..30 {
        let (st, body) = cl.get("/good").await.unwrap();
        assert_eq!(st, 200, "{body}");
        seen.push(body);
    }
    for name in ["a", "b", "c"] {
        assert_eq!(seen.iter().filter(|n| *n == name).count(), 10, "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_where_its_peers_succeed_is_ejected() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let bad = Failing::start("bad").await;
    let servers_line = format!(
        "servers = [{{ name = \"a\", address = \"{}\" }}, {{ name = \"b\", address = \"{}\" }}, {{ name = \"{}\", address = \"{}\" }}]",
        a.addr, b.addr, bad.name, bad.addr
    );
    let (lb, admin) = start(&servers_line, FAST_WINDOWS).await;

    // Traffic until the detector has judged a window (ejection within ~1 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    let pool = loop {
        hammer(lb.addr, "/", 2, Duration::from_millis(300), 0).await;
        let pool = pool_state(admin).await;
        if !ejected(&pool).is_empty() || Instant::now() > deadline {
            break pool;
        }
    };
    assert_eq!(ejected(&pool), vec!["bad".to_string()], "{pool}");
    let e = &server(&pool, "bad")["ejected"];
    assert_eq!(e["reason"], "failure_ratio", "{pool}");
    assert_eq!(e["seconds"], 30.0, "{pool}");
    assert_eq!(server(&pool, "bad")["eligible"], false);
    assert_eq!(
        server(&pool, "bad")["health"],
        "up",
        "ejection is not health"
    );
    assert_eq!(pool["ejections"]["failure_ratio"], 1, "{pool}");
    // It gets no more traffic; the others answer.
    let before = bad.hits.load(Ordering::Relaxed);
    let statuses = hammer(lb.addr, "/", 2, Duration::from_millis(500), 0).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(bad.hits.load(Ordering::Relaxed), before);
    let m = metrics(admin).await;
    assert!(
        m.contains("rampart_pool_ejections_total{pool=\"app\",reason=\"failure_ratio\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rampart_server_ejected{pool=\"app\",server=\"bad\"} 1"),
        "{m}"
    );
    assert!(lb.proc.log_text().contains("server EJECTED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_refusing_connections_are_ejected_up_to_max_ejection_percent() {
    let a = Backend::start("a").await;
    // Three addresses nobody listens on: connections are refused.
    let dead: Vec<String> = (1..=3)
        .map(|i| {
            format!(
                "{{ name = \"d{i}\", address = \"127.0.0.1:{}\" }}",
                free_port()
            )
        })
        .collect();
    let servers_line = format!(
        "servers = [{{ name = \"a\", address = \"{}\" }}, {}]",
        a.addr,
        dead.join(", ")
    );
    // No active checks: only passive evidence takes servers out. 50 % of 4 = 2.
    let (lb, admin) = start(
        &servers_line,
        "health_check = { kind = \"none\" }\npassive_failures = 2\nretries = { attempts = 3 }",
    )
    .await;
    let statuses = hammer(lb.addr, "/", 2, Duration::from_millis(1500), 30).await;
    assert!(statuses.len() > 50, "{}", statuses.len());
    let pool = pool_state(admin).await;
    let out = ejected(&pool);
    assert_eq!(out.len(), 2, "{pool}");
    assert!(out.iter().all(|n| n.starts_with('d')), "{pool}");
    assert_eq!(pool["servers_ejected"], 2, "{pool}");
    for n in &out {
        assert_eq!(
            server(&pool, n)["ejected"]["reason"],
            "connect_failures",
            "{pool}"
        );
    }
    // The third dead server qualified too, and was refused.
    assert!(pool["ejections_refused"].as_u64().unwrap() >= 1, "{pool}");
    assert_eq!(pool["ejections"]["connect_failures"], 2, "{pool}");
    assert_eq!(server(&pool, "a")["ejected"], Value::Null);
    let m = metrics(admin).await;
    assert!(
        m.contains("rampart_pool_servers_ejected{pool=\"app\"} 2"),
        "{m}"
    );
    assert!(
        lb.proc
            .log_text()
            .contains("ejection refused: the pool's max_ejection_percent is ejected already"),
        "{}",
        lb.proc.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_panic_threshold_traffic_goes_to_every_server() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let (lb, admin) = start(
        &servers(&[(&a, 1), (&b, 1), (&c, 1)]),
        "panic_threshold = 50\nhealth_check = { kind = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1, jitter = \"0ms\" }",
    )
    .await;
    let wait_pool = |want: fn(&Value) -> bool| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pool = pool_state(admin).await;
            if want(&pool) || Instant::now() > deadline {
                return pool;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Two of three down: 33 % available, below 50 %: panic, every server takes requests.
    b.healthy.store(false, Ordering::Relaxed);
    c.healthy.store(false, Ordering::Relaxed);
    let pool = wait_pool(|p| p["panic"] == true).await;
    assert_eq!(pool["panic"], true, "{pool}");
    assert_eq!(server(&pool, "b")["health"], "down", "{pool}");
    assert_eq!(server(&pool, "c")["health"], "down", "{pool}");
    let hits = |bs: [&Backend; 3]| bs.map(|b| b.hits());
    let before = hits([&a, &b, &c]);
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..30 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    let after = hits([&a, &b, &c]);
    assert!(
        before.iter().zip(&after).all(|(x, y)| y - x >= 5),
        "in panic every server gets requests: {before:?} -> {after:?}"
    );
    assert!(lb.proc.log_text().contains("pool in PANIC"));
    assert!(metrics(admin)
        .await
        .contains("rampart_pool_panic{pool=\"app\"} 1"));

    // One comes back: 2 of 3 available, no panic, the down one gets nothing.
    b.healthy.store(true, Ordering::Relaxed);
    let pool = wait_pool(|p| p["panic"] == false).await;
    assert_eq!(pool["panic"], false, "{pool}");
    let before = hits([&a, &b, &c]);
    for _ in 0..30 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    let after = hits([&a, &b, &c]);
    assert_eq!(
        after[2], before[2],
        "a down server got traffic out of panic"
    );
    assert!(after[0] > before[0] && after[1] > before[1]);
}
