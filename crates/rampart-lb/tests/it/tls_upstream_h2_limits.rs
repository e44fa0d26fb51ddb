//! HTTP/2 to the servers, at its edges: requests the server did not process (sent again
//! with their body), the server's stream limit (requests wait for a stream, a second
//! connection within the limit, 503 past the queue timeout), request trailers, and a
//! server that speaks only HTTP/2 (health checks over HTTP/2).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{read_until, wait_for, Client, Lb};
use crate::tls_support::{
    pattern, pool_config as config, setup, tls_alpn, H2Backend, Opts, Refuse,
};

const BOTH: &str = "\"h2\", \"http/1.1\"";

async fn backend_refusing(s: &crate::tls_support::Setup, how: Refuse) -> H2Backend {
    let opts = Opts {
        refuse_first: Some(how),
        ..Opts::default()
    };
    H2Backend::start(s, &[b"h2"], opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_the_server_did_not_process_is_sent_again() {
    let s = setup();
    // REFUSED_STREAM as soon as the request's head came (its body streaming).
    let b = backend_refusing(&s, Refuse::Reset { after_body: 0 }).await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, BOTH)), 1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    let sent = pattern(20_000);
    let req = Request::post("/up")
        .header("host", "lb.test")
        .body(Full::new(Bytes::from(sent.clone())))
        .unwrap();
    let (status, body) = c.request(req).await.unwrap();
    assert_eq!(status, 200, "{}", lb.proc.log_text());
    let (line, rest) = body.split_once('\n').unwrap();
    assert_eq!(line, "HTTP/2.0 POST /up authority=lb.test host=- len=20000");
    assert_eq!(rest.as_bytes(), &sent[..]);
    // On a second connection.
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 2);

    // A GOAWAY whose last stream id is below the request's, after part of a chunked body
    // came; the client sends the rest later, and it follows the replayed part.
    let b = backend_refusing(&s, Refuse::GoAway { after_body: 5 }).await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, BOTH)), 1).await;
    let mut t = TcpStream::connect(lb.addr).await.unwrap();
    t.write_all(b"POST /chunked HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let resp = read_until(&mut t, |s| s.contains("len=11\nhello world")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 2);

    // Past the 64 KiB kept to send it again: 502, as before.
    let b = backend_refusing(
        &s,
        Refuse::Reset {
            after_body: 100_000,
        },
    )
    .await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, BOTH)), 1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    let req = Request::post("/up")
        .header("host", "lb.test")
        .body(Full::new(Bytes::from(pattern(300_000))))
        .unwrap();
    let (status, _) = c.request(req).await.unwrap();
    assert_eq!(status, 502, "{}", lb.proc.log_text());
    assert!(
        lb.proc.log_text().contains("bytes kept to send it again"),
        "{}",
        lb.proc.log_text()
    );
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_request_the_server_did_not_process_is_sent_again_with_its_body() {
    let s = setup();
    let b = backend_refusing(&s, Refuse::Reset { after_body: 0 }).await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, BOTH)), 1).await;
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut h2c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/again", lb.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{}", lb.proc.log_text());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.starts_with(b"HTTP/2.0 GET /again "),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 2);

    // With a body: sent again from its first byte on a new connection.
    let b = backend_refusing(&s, Refuse::Reset { after_body: 0 }).await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, BOTH)), 1).await;
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut h2c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let sent = pattern(20_000);
    let req = Request::post(format!("http://{}/up", lb.addr))
        .body(Full::new(Bytes::from(sent.clone())))
        .unwrap();
    let resp = h2c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{}", lb.proc.log_text());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).to_string();
    let (line, rest) = text.split_once('\n').unwrap();
    assert!(
        line.starts_with("HTTP/2.0 POST /up ") && line.ends_with(" len=20000"),
        "{line}"
    );
    assert_eq!(rest.as_bytes(), &sent[..]);
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 2);

    // Past the 64 KiB kept to send it again: 502, and the log says why.
    let b = backend_refusing(
        &s,
        Refuse::Reset {
            after_body: 100_000,
        },
    )
    .await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, BOTH)), 1).await;
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut h2c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}/up", lb.addr))
        .body(Full::new(Bytes::from(pattern(300_000))))
        .unwrap();
    let resp = h2c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 502, "{}", lb.proc.log_text());
    assert!(
        wait_for(
            || lb.proc.log_text().contains("bytes kept to send it again"),
            Duration::from_secs(5)
        )
        .await,
        "{}",
        lb.proc.log_text()
    );
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 1);
}

/// `n` requests for `/slow` at once, each on its own client connection: their statuses.
async fn slow_at_once(lb: &Lb, n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = lb.addr;
        tasks.push(tokio::spawn(async move {
            let (status, body) = Client::connect(addr)
                .await
                .unwrap()
                .get("/slow")
                .await
                .unwrap();
            if status == 200 {
                assert!(body.starts_with("HTTP/2.0 GET /slow"), "{body}");
            }
            status
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_servers_stream_limit_requests_wait_for_a_stream_on_two_connections() {
    let s = setup();
    let opts = Opts {
        max_streams: Some(1),
        ..Opts::default()
    };
    let b = H2Backend::start(&s, &[b"h2"], opts).await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, "\"h2\"")), 1).await;
    // The connection first (its SETTINGS known), then 6 requests at once.
    assert_eq!(
        Client::connect(lb.addr)
            .await
            .unwrap()
            .get("/")
            .await
            .unwrap()
            .0,
        200
    );
    let t0 = Instant::now();
    let statuses = slow_at_once(&lb, 6).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}: {}",
        lb.proc.log_text()
    );
    // Never past the server's limit: a second connection (MAX_CONNS), one stream each,
    // the others waited: 3 rounds of 100 ms.
    assert_eq!(b.seen.slow_max.load(Ordering::SeqCst), 2);
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 2);
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );

    // A queue timeout shorter than a request: those that cannot get a stream in time get
    // the queue's 503, the others are served.
    let cfg = config(b.addr, &tls_alpn(&s, "\"h2\"")).replace(
        "retries = { attempts = 0 }",
        "retries = { attempts = 0 }\nqueue = { timeout = \"30ms\" }",
    );
    let lb = Lb::start_threads(&cfg, 1).await;
    let statuses = slow_at_once(&lb, 6).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let busy = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(ok + busy, 6, "{statuses:?}: {}", lb.proc.log_text());
    assert!(ok >= 2 && busy >= 1, "{statuses:?}");
    assert!(b.seen.slow_max.load(Ordering::SeqCst) <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_wait_for_a_stream_too() {
    let s = setup();
    let opts = Opts {
        max_streams: Some(1),
        ..Opts::default()
    };
    let b = H2Backend::start(&s, &[b"h2"], opts).await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, "\"h2\"")), 1).await;
    // Six streams at once from one h2c client (the hyper path).
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (h2c, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut h2c = h2c.clone();
        let uri = format!("http://{}/slow?{i}", lb.addr);
        tasks.push(tokio::spawn(async move {
            let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
            let resp = h2c.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}: {}", lb.proc.log_text());
        assert!(body.starts_with("HTTP/2.0 GET /slow"), "{body}");
    }
    // Within the server's limit, on at most two connections.
    assert_eq!(b.seen.slow_max.load(Ordering::SeqCst), 2);
    assert_eq!(b.seen.h2_conns.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_go_as_http2_trailers() {
    let s = setup();
    let b = H2Backend::start(&s, &[b"h2"], Opts::default()).await;
    let lb = Lb::start_threads(&config(b.addr, &tls_alpn(&s, BOTH)), 1).await;
    let mut t = TcpStream::connect(lb.addr).await.unwrap();
    t.write_all(
        b"POST /t HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Checksum: abc\r\nAuthorization: secret\r\nContent-Length: 9\r\nx-more:  two words \r\n\r\n",
    )
    .await
    .unwrap();
    let resp = read_until(&mut t, |s| s.contains("\nhello")).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The fields a trailer may carry; not the others.
    assert!(
        resp.contains("HTTP/2.0 POST /t authority=lb.test host=- len=5 trailers=x-checksum: abc; x-more: two words\nhello"),
        "{resp}"
    );
    // The connection goes on.
    t.write_all(b"GET /after HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), t.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("HTTP/2.0 GET /after "), "{rest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_speaking_only_h2_is_checked_over_h2_and_stays_up() {
    let s = setup();
    let b = H2Backend::start(&s, &[b"h2"], Opts::default()).await;
    let cfg = config(b.addr, &tls_alpn(&s, "\"h2\"")).replace(
        "health_check = { kind = \"none\" }",
        "health_check = { kind = \"http\", path = \"/health\", interval = \"100ms\", fall = 1 }",
    );
    let lb = Lb::start_threads(&cfg, 1).await;
    let seen = b.seen.clone();
    assert!(
        wait_for(
            || seen.h2_checks.load(Ordering::SeqCst) >= 5,
            Duration::from_secs(10)
        )
        .await,
        "health checks did not come over h2: {}",
        lb.proc.log_text()
    );
    let mut c = Client::connect(lb.addr).await.unwrap();
    for i in 0..3 {
        let (status, body) = c.get(&format!("/up/{i}")).await.unwrap();
        assert_eq!(status, 200, "{body}: {}", lb.proc.log_text());
        assert!(
            body.starts_with(&format!("HTTP/2.0 GET /up/{i} ")),
            "{body}"
        );
    }
}
