//! Health transitions, retries, timeouts, limits: what clients see when servers fail.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use crate::support::{get_once, http_config, servers, wait_for, Backend, Client, Lb};

const FAST_CHECKS: &str =
    "[pool.health_check]\nkind = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\njitter = \"20ms\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_takes_a_server_out_and_back() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 1), (&b, 1)]),
        FAST_CHECKS,
    ))
    .await;
    let mut cl = Client::connect(lb.addr).await.unwrap();

    b.healthy.store(false, Ordering::Relaxed);
    assert!(
        wait_for(
            || lb.proc.log_text().contains("server is DOWN"),
            Duration::from_secs(3)
        )
        .await,
        "b never went down:\n{}",
        lb.proc.log_text()
    );
    let b0 = b.hits();
    for _ in 0..20 {
        assert_eq!(cl.get("/").await.unwrap(), (200, "a".to_string()));
    }
    assert_eq!(b.hits(), b0, "a down server got traffic");

    b.healthy.store(true, Ordering::Relaxed);
    assert!(
        wait_for(
            || lb.proc.log_text().contains("server is UP"),
            Duration::from_secs(3)
        )
        .await,
        "b never came back"
    );
    for _ in 0..20 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    assert!(b.hits() >= b0 + 8, "b did not get its share back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_gives_no_client_errors() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 1), (&b, 1)]),
        "[pool.health_check]\nkind = \"tcp\"\ninterval = \"500ms\"",
    ))
    .await;
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = lb.addr;
        let (ok, stop) = (ok.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Keep-alive clients: the lb's pooled connections to the killed backend go stale.
            let mut cl = Client::connect(addr).await.unwrap();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match cl.get("/").await {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((st, body)) => errors.push(format!("{st} {body}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        }));
    }
    // The load reaches both servers (not a fixed pause: a slow start must not fail it),
    // then b dies under it and the load goes on for a while.
    assert!(
        wait_for(|| a.hits() > 0 && b.hits() > 0, Duration::from_secs(10)).await,
        "the load never reached both servers before the kill: a {}, b {}",
        a.hits(),
        b.hits()
    );
    b.kill();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    assert!(
        errors.is_empty(),
        "client errors after a backend died: {errors:?}"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert!(a.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_body_was_sent_is_not_retried() {
    // The server accepts the request and dies before answering: a GET is retried, a POST
    // with a body is answered 502 and reaches exactly one server.
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.delay_ms.store(300, Ordering::Relaxed);
    b.delay_ms.store(300, Ordering::Relaxed);
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 1), (&b, 1)]),
        "health_check = { kind = \"none\" }",
    ))
    .await;
    let addr = lb.addr;
    let post = tokio::spawn(async move {
        let mut cl = Client::connect(addr).await.unwrap();
        let req = Request::post("/")
            .header("host", "lb.test")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        cl.request(req).await.unwrap()
    });
    // The POST has reached a server (which answers only 300 ms later): kill that one.
    assert!(
        wait_for(|| a.hits() + b.hits() > 0, Duration::from_secs(5)).await,
        "the POST reached no server"
    );
    let (victim, other) = if a.hits() == 1 { (&a, &b) } else { (&b, &a) };
    assert_eq!(victim.hits(), 1);
    victim.kill();
    let (st, body) = post.await.unwrap();
    assert_eq!(st, 502, "{body}");
    assert!(body.contains("pool \"app\""), "{body}");
    assert_eq!(other.hits(), 0, "the POST was sent twice");

    // The same failure for a GET: retried on the other server.
    let c = Backend::start("c").await;
    let d = Backend::start("d").await;
    c.delay_ms.store(300, Ordering::Relaxed);
    d.delay_ms.store(300, Ordering::Relaxed);
    let lb2 = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&c, 1), (&d, 1)]),
        "health_check = { kind = \"none\" }",
    ))
    .await;
    let addr = lb2.addr;
    let get = tokio::spawn(async move { get_once(addr, "/").await });
    assert!(
        wait_for(|| c.hits() + d.hits() > 0, Duration::from_secs(5)).await,
        "the GET reached no server"
    );
    let (victim, other) = if c.hits() == 1 { (&c, &d) } else { (&d, &c) };
    assert_eq!(victim.hits(), 1);
    victim.kill();
    let (st, body) = get.await.unwrap();
    assert_eq!((st, body.as_str()), (200, other.name.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_gives_a_fast_503_naming_the_pool() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = Lb::start(&http_config(
        "least-connections",
        &servers(&[(&a, 1), (&b, 1)]),
        "[pool.health_check]\nkind = \"tcp\"\ninterval = \"100ms\"\nfall = 1\njitter = \"0ms\"",
    ))
    .await;
    assert_eq!(get_once(lb.addr, "/").await.0, 200);
    a.kill();
    b.kill();
    assert!(
        wait_for(
            || lb.proc.log_text().matches("server is DOWN").count() == 2,
            Duration::from_secs(3)
        )
        .await,
        "{}",
        lb.proc.log_text()
    );
    let t = Instant::now();
    let (st, body) = get_once(lb.addr, "/").await;
    let took = t.elapsed();
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("no healthy server in pool \"app\""), "{body}");
    assert!(took < Duration::from_millis(200), "503 took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gives_504() {
    let a = Backend::start("a").await;
    a.delay_ms.store(3000, Ordering::Relaxed);
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 1)]),
        "health_check = { kind = \"none\" }\ntimeouts = { response = \"300ms\" }",
    ))
    .await;
    let t = Instant::now();
    let (st, body) = get_once(lb.addr, "/").await;
    assert_eq!(st, 504, "{body}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        t.elapsed()
    );
    assert!(body.contains("did not answer in time"), "{body}");
}

/// The response timeout starts when the request body has been sent: a slow upload
/// longer than the timeout is not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_starts_after_the_upload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 1)]),
        "health_check = { kind = \"none\" }\ntimeouts = { response = \"300ms\" }",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 3000\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(&[b'x'; 1000]).await.unwrap();
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("3000"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_server_queues_then_503_on_queue_timeout() {
    let a = Backend::start("a").await;
    a.delay_ms.store(1000, Ordering::Relaxed);
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 1)]),
        "health_check = { kind = \"none\" }\nmax_in_flight = 1\nqueue = { size = 4, timeout = \"200ms\" }",
    ))
    .await;
    let addr = lb.addr;
    let first = tokio::spawn(async move { get_once(addr, "/").await });
    // The first request holds the only slot (the server has it) before the second comes.
    assert!(
        wait_for(|| a.hits() == 1, Duration::from_secs(5)).await,
        "the first request never reached the server"
    );
    let t = Instant::now();
    let (st, body) = get_once(lb.addr, "/").await;
    let waited = t.elapsed();
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("busy"), "{body}");
    assert!(
        waited >= Duration::from_millis(180) && waited < Duration::from_millis(800),
        "queued for {waited:?}"
    );
    assert_eq!(first.await.unwrap(), (200, "a".to_string()));

    // A queued request that gets a slot in time is served.
    a.delay_ms.store(100, Ordering::Relaxed);
    let first = tokio::spawn(async move { get_once(addr, "/").await });
    assert!(
        wait_for(|| a.hits() == 2, Duration::from_secs(5)).await,
        "the first request never reached the server"
    );
    assert_eq!(get_once(lb.addr, "/").await, (200, "a".to_string()));
    assert_eq!(first.await.unwrap().0, 200);
}
