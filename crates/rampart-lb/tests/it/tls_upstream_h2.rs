//! HTTP/2 to the servers (`tls = { alpn = ["h2", "http/1.1"] }`): a hyper HTTPS backend
//! in the test (HTTP/2 and HTTP/1.1 by ALPN) that answers with the version its request
//! came in, behind the balancer's HTTP/1.1 fast path.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_testkit::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pki::Pki;
use crate::support::{read_until, wait_for, Client, Lb};
use crate::tls_support::{
    pattern, pool_config as config, setup, tls_alpn, H2Backend, Opts, Setup, BIG, CHUNK, CHUNKS,
};

fn h2_tls(s: &Setup) -> String {
    tls_alpn(s, "\"h2\", \"http/1.1\"")
}

/// One request over a raw connection (the lb closes after it); the whole answer.
async fn raw(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_to_an_h2_server_over_one_multiplexed_connection() {
    let s = setup();
    let b = H2Backend::start(&s, &[b"h2", b"http/1.1"], Opts::default()).await;
    // Health checks over the same pool tls, offering its ALPN: HTTP/2 (on connections of
    // their own).
    let admin = format!("127.0.0.1:{}", rampart_testkit::free_port());
    let cfg = format!(
        "[admin]\naddress = \"{admin}\"\n{}",
        config(b.addr, &h2_tls(&s)).replace(
            "health_check = { kind = \"none\" }",
            "health_check = { kind = \"http\", path = \"/health\", interval = \"100ms\" }",
        )
    );
    let lb = Lb::start_threads(&cfg, 1).await;
    let seen = b.seen.clone();
    assert!(
        wait_for(
            || seen.h2_checks.load(Ordering::SeqCst) >= 1,
            Duration::from_secs(10)
        )
        .await,
        "no health check came over h2: {}",
        lb.proc.log_text()
    );
    let mut c = Client::connect(lb.addr).await.unwrap();
    for i in 0..20 {
        let (status, body) = c.get(&format!("/n/{i}?q=1")).await.unwrap();
        assert_eq!(status, 200, "{}", lb.proc.log_text());
        assert_eq!(
            body,
            format!("HTTP/2.0 GET /n/{i}?q=1 authority=lb.test host=- len=0\n")
        );
    }
    // Concurrent clients: streams of the same connection.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let addr = lb.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            c.get(&format!("/c/{i}")).await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with(&format!("HTTP/2.0 GET /c/{i} ")), "{body}");
    }
    // An HTTP/2 client (h2c, the hyper path): over the same connection, its body too.
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut h2c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}/from-h2", lb.addr))
        .body(Full::new(Bytes::from_static(b"h2 body")))
        .unwrap();
    let resp = h2c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!(
            "HTTP/2.0 POST /from-h2 authority={} host=- len=7\nh2 body",
            lb.addr
        )
    );
    // One worker: every request above went over its one HTTP/2 connection (the health
    // checks have theirs).
    assert_eq!(b.seen.h2_served.load(Ordering::SeqCst), 1);
    // The server stayed up (health checks pass).
    let (status, _) = c.get("/after").await.unwrap();
    assert_eq!(status, 200);
    // Counted: one connection, a stream per request (20 + 10 + h2c + 1).
    let m = raw(
        admin.parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    let m = String::from_utf8_lossy(&m);
    assert!(
        m.contains("\nrampart_upstream_h2_connections_total{} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("\nrampart_upstream_h2_streams_total{} 32\n"),
        "{m}"
    );

    // A HEAD: no body, the length of the GET.
    let head = raw(
        lb.addr,
        b"HEAD /big HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("content-length: {BIG}\r\n")),
        "{head}"
    );
    assert!(head.ends_with("\r\n\r\n"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_over_h2() {
    let s = setup();
    let b = H2Backend::start(&s, &[b"h2", b"http/1.1"], Opts::default()).await;
    let lb = Lb::start_threads(&config(b.addr, &h2_tls(&s)), 1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    // A POST with a length, bigger than a window of HTTP/2 flow control.
    let sent = pattern(300_000);
    let req = Request::post("/up")
        .header("host", "lb.test")
        .body(Full::new(Bytes::from(sent.clone())))
        .unwrap();
    let (status, body) = c.request(req).await.unwrap();
    assert_eq!(status, 200, "{}", lb.proc.log_text());
    let (line, rest) = body.split_once('\n').unwrap();
    assert_eq!(
        line,
        "HTTP/2.0 POST /up authority=lb.test host=- len=300000"
    );
    assert_eq!(rest.as_bytes(), &sent[..]);
    // A large answer with its length, then one without (chunked to the client).
    let (status, body) = c.get("/big").await.unwrap();
    assert_eq!((status, body.len()), (200, BIG));
    assert!(body.as_bytes() == pattern(BIG), "the 4 MiB body differs");
    let (status, body) = c.get("/stream").await.unwrap();
    assert_eq!((status, body.len()), (200, CHUNK * CHUNKS));
    assert!(body.starts_with("0000") && body.ends_with("3333"));
    // A chunked POST goes decoded (HTTP/2 frames it); `Expect: 100-continue` is answered
    // by the balancer.
    let mut t = TcpStream::connect(lb.addr).await.unwrap();
    t.write_all(b"POST /chunked HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let cont = read_until(&mut t, |s| s.contains("\r\n\r\n")).await;
    assert!(cont.starts_with("HTTP/1.1 100 Continue"), "{cont}");
    t.write_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let resp = read_until(&mut t, |s| s.contains("len=11\nhello world")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("HTTP/2.0 POST /chunked"), "{resp}");
    // An HTTP/1.0 client gets the unframed body, then the close.
    let old = raw(lb.addr, b"GET /stream HTTP/1.0\r\nHost: lb.test\r\n\r\n").await;
    let end = old.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&old[..end]);
    assert!(!head.to_ascii_lowercase().contains("chunked"), "{head}");
    assert_eq!(old.len() - end, CHUNK * CHUNKS, "{head}");
    assert_eq!(b.seen.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_picking_http1_is_served_over_http1_and_a_wrong_ca_is_502() {
    let s = setup();
    let b = H2Backend::start(&s, &[b"http/1.1"], Opts::default()).await;
    let lb = Lb::start_threads(&config(b.addr, &h2_tls(&s)), 1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    for _ in 0..5 {
        let (status, body) = c.get("/one").await.unwrap();
        assert_eq!(status, 200, "{}", lb.proc.log_text());
        assert_eq!(
            body,
            "HTTP/1.1 GET /one authority=- host=lb.test len=0\n",
            "{}",
            lb.proc.log_text()
        );
    }
    // Pooled as any HTTP/1.1 connection.
    assert_eq!(b.seen.conns.load(Ordering::SeqCst), 1);
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 0);

    let other_dir = TempDir::new().unwrap();
    let other = Pki::new(other_dir.path());
    let lb = Lb::start_threads(
        &config(
            b.addr,
            &format!(
                "ca = \"{}\", server_name = \"web.internal\", alpn = [\"h2\", \"http/1.1\"]",
                other.root().display()
            ),
        ),
        1,
    )
    .await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    let (status, _) = c.get("/").await.unwrap();
    assert_eq!(status, 502);
    let want = format!("TLS handshake with {} as", b.addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = lb.proc.log_text();
        if let Some(line) = log.lines().find(|l| l.contains(&want)) {
            assert!(line.contains("connect failed"), "{line}");
            assert!(line.contains("BadSignature"), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no log line:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ending_its_h2_connections_with_goaway_gets_new_ones() {
    let s = setup();
    let opts = Opts {
        goaway_after: Some(3),
        ..Opts::default()
    };
    let b = H2Backend::start(&s, &[b"h2", b"http/1.1"], opts).await;
    let lb = Lb::start_threads(&config(b.addr, &h2_tls(&s)), 1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    for i in 0..12 {
        let (status, body) = c.get(&format!("/g/{i}")).await.unwrap();
        assert_eq!(status, 200, "request {i}: {}", lb.proc.log_text());
        assert!(body.starts_with(&format!("HTTP/2.0 GET /g/{i} ")), "{body}");
    }
    // Three requests a connection (a request that met a closing one went on a new one).
    let n = b.seen.h2_conns.load(Ordering::SeqCst);
    assert!((4..=5).contains(&n), "{n} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_upload_reaches_the_client() {
    let s = setup();
    let b = H2Backend::start(&s, &[b"h2"], Opts::default()).await;
    let lb = Lb::start_threads(&config(b.addr, &h2_tls(&s)), 1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    let t0 = Instant::now();
    let req = Request::post("/reject")
        .header("host", "lb.test")
        .body(Full::new(Bytes::from(pattern(4 << 20))))
        .unwrap();
    let (status, body) = c.request(req).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (413, "too large"),
        "{}",
        lb.proc.log_text()
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The connection to the server stays usable.
    let mut c = Client::connect(lb.addr).await.unwrap();
    assert_eq!(c.get("/after").await.unwrap().0, 200);
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 1);
}
