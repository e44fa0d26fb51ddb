//! Least response time measures the server, not the client; a request that may have reached
//! a server is not sent again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{http_config, read_until, servers, Backend, Client, Lb};

/// POST `size` bytes to `/upload` over `version`, trickled in 8 KiB pieces over about
/// `over`: the status line of the answer.
async fn slow_upload(lb: SocketAddr, version: &str, size: usize, over: Duration) -> String {
    let mut c = TcpStream::connect(lb).await.unwrap();
    let head = format!(
        "POST /upload {version}\r\nHost: lb.test\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let piece = 8192;
    let pieces = size.div_ceil(piece);
    let pause = over / pieces as u32;
    let chunk = vec![b'u'; piece];
    let mut left = size;
    while left > 0 {
        let n = left.min(piece);
        c.write_all(&chunk[..n]).await.unwrap();
        left -= n;
        tokio::time::sleep(pause).await;
    }
    let answer = read_until(&mut c, |t| t.contains("\r\n\r\n")).await;
    answer.lines().next().unwrap_or_default().to_string()
}

/// Two equally fast servers (10 ms per GET); a client uploads slowly through one of them;
/// then four clients do GETs for 1.5 s: how many of them the upload's server got, of how
/// many, and its name. Concurrent GETs make the load count too, so that one server's
/// hiccup (a peak in its estimate) does not move the traffic for seconds; a 2 s estimate,
/// as the upload gave before, still does.
async fn gets_after_a_slow_upload(version: &str) -> (u64, u64, String) {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let lb = Lb::start_threads(
        &http_config(
            "least-response-time",
            &servers(&[(&a, 1), (&b, 1)]),
            "health_check = { kind = \"none\" }",
        ),
        1,
    )
    .await;
    a.delay_ms.store(10, Ordering::Relaxed);
    b.delay_ms.store(10, Ordering::Relaxed);
    let mut cl = Client::connect(lb.addr).await.unwrap();
    for _ in 0..20 {
        assert_eq!(cl.get("/").await.unwrap().0, 200);
    }
    let (a0, b0) = (a.hits(), b.hits());
    // 400 KiB over ~2 s: the server waits for the body, then answers at once.
    let status = slow_upload(lb.addr, version, 400 * 1024, Duration::from_secs(2)).await;
    assert!(status.contains(" 200 "), "{status}");
    let uploaded_to = if a.hits() > a0 { &a } else { &b };
    assert_eq!(a.hits() + b.hits() - a0 - b0, 1);
    let (h0, all0) = (uploaded_to.hits(), a.hits() + b.hits());
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let addr = lb.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            while Instant::now() < deadline {
                assert_eq!(c.get("/").await.unwrap().0, 200);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let n = a.hits() + b.hits() - all0;
    eprintln!(
        "{version}: the upload's server got {} of {n} GETs",
        uploaded_to.hits() - h0
    );
    (uploaded_to.hits() - h0, n, uploaded_to.name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_move_least_response_time_traffic() {
    // HTTP/1.1: the fast path.
    let (got, n, name) = gets_after_a_slow_upload("HTTP/1.1").await;
    assert!(
        got * 4 >= n,
        "after a slow upload to {name}, it got {got} of {n} GETs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_over_hypers_path_does_not_move_traffic_either() {
    // HTTP/1.0 goes through hyper.
    let (got, n, name) = gets_after_a_slow_upload("HTTP/1.0").await;
    assert!(
        got * 4 >= n,
        "after a slow upload to {name}, it got {got} of {n} GETs"
    );
}

/// A backend that accepts connections and resets them at once: how many it took.
async fn resetting_backend() -> (SocketAddr, Arc<AtomicU32>, tokio::task::AbortHandle) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let l = TcpListener::bind(addr).await.unwrap();
    let count = Arc::new(AtomicU32::new(0));
    let c2 = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            c2.fetch_add(1, Ordering::SeqCst);
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            drop(c);
        }
    });
    (addr, count, task.abort_handle())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_fails_fast_does_not_attract_least_response_time_traffic() {
    let good = Backend::start("good").await;
    good.delay_ms.store(20, Ordering::Relaxed);
    let (bad, bad_conns, task) = resetting_backend().await;
    let cfg = format!(
        r#"
[[listener]]
name = "web"
address = "{{LISTEN}}"
pool = "app"

[[pool]]
name = "app"
algorithm = "least-response-time"
servers = [{{ name = "good", address = "{}" }}, {{ name = "bad", address = "{bad}" }}]
health_check = {{ kind = "none" }}
passive_failures = 0
outlier = {{ max_ejection_percent = 0 }}
retries = {{ attempts = 1, budget_ratio = 10.0, min_per_sec = 1000 }}
"#,
        good.addr
    );
    let lb = Lb::start_threads(&cfg, 1).await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    while Instant::now() < deadline {
        let (st, body) = cl.get("/").await.unwrap();
        assert_eq!((st, body.as_str()), (200, "good"));
        n += 1;
    }
    let tried_bad = bad_conns.load(Ordering::SeqCst);
    assert!(
        tried_bad <= 2,
        "the fast-failing server was tried {tried_bad} times for {n} requests"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_cut_off_on_a_pooled_connection_is_not_resent() {
    // The server answers a GET on a connection (which the balancer pools), then reads part
    // of the next request on it, a POST, and resets. Any later connection counts and answers.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let l = TcpListener::bind(addr).await.unwrap();
    let posts = Arc::new(AtomicU32::new(0));
    let p2 = posts.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let posts = p2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                loop {
                    let Ok(n) = c.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.starts_with(b"POST") {
                        posts.fetch_add(1, Ordering::SeqCst);
                        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
                        return;
                    }
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        got.clear();
                        let _ = c
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    let lb = Lb::start_threads(
        &http_config(
            "round-robin",
            &format!("servers = [{{ name = \"s\", address = \"{addr}\" }}]"),
            "health_check = { kind = \"none\" }",
        ),
        1,
    )
    .await;
    let mut c = TcpStream::connect(lb.addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n")
        .await
        .unwrap();
    let first = read_until(&mut c, |t| t.ends_with("ok")).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let body = "x".repeat(2000);
    let post = format!(
        "POST /pay HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(post.as_bytes()).await.unwrap();
    let answer = read_until(&mut c, |t| t.contains("\r\n\r\n")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(posts.load(Ordering::SeqCst), 1, "the POST was sent again");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    task.abort();
}
