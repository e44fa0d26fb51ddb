//! The HTTP/1.1 fast path's codec: framing both ways, heads it refuses, pipelining,
//! reuse of upstream connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rampart_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::support::{http_config, read_until, servers, Backend, Lb};

/// A backend speaking raw HTTP/1.1 with canned answers by path, so that every framing
/// (chunked with trailers, until close, 1xx, 204, HEAD) is exercised exactly.
struct RawBackend {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    task: AbortHandle,
}

fn canned(path: &str) -> (&'static [u8], bool) {
    match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
            false,
        ),
        "/nocontent" => (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false),
        "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", false),
        "/early" => (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
        ),
        "/close" => (b"HTTP/1.1 200 OK\r\nX-B: 2\r\n\r\nuntil the server closes", true),
        "/hop" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\n\r\nok",
            false,
        ),
        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nraw", false),
    }
}

impl RawBackend {
    async fn start() -> RawBackend {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let conns = Arc::new(AtomicU64::new(0));
        let c = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Requests here have no body: a head ends at the blank line.
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        let (resp, close) = canned(&path);
                        if tcp.write_all(resp).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        })
        .abort_handle();
        RawBackend { addr, conns, task }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn raw_config(addr: SocketAddr, listener_extra: &str) -> String {
    format!(
        r#"
[[listener]]
name = "web"
address = "{{LISTEN}}"
pool = "app"
{listener_extra}

[[pool]]
name = "app"
algorithm = "round-robin"
servers = [{{ name = "raw", address = "{addr}" }}]
health_check = {{ kind = "none" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_framings_pass_through_and_upstream_connections_are_reused() {
    let b = RawBackend::start().await;
    let lb = Lb::start_threads(&raw_config(b.addr, ""), 1).await;
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut get = async |method: &str, path: &str| {
        sender.ready().await.unwrap();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "lb.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap();
        let trailers = body.trailers().cloned();
        (parts, body.to_bytes(), trailers)
    };
    for _ in 0..5 {
        let (p, body, _) = get("GET", "/").await;
        assert_eq!((p.status.as_u16(), &body[..]), (200, &b"raw"[..]));
    }
    // Chunked, with an extension and a trailer: decoded by the client as sent.
    let (p, body, trailers) = get("GET", "/chunked").await;
    assert_eq!(p.status, 200);
    assert_eq!(&body[..], b"hello world");
    assert_eq!(trailers.unwrap()["x-trailer"], "1");
    // 204 and a HEAD answer carry no body, whatever they announce.
    let (p, body, _) = get("GET", "/nocontent").await;
    assert_eq!((p.status.as_u16(), body.len()), (204, 0));
    assert_eq!(p.headers["x-a"], "1");
    let (p, body, _) = get("HEAD", "/head").await;
    assert_eq!((p.status.as_u16(), body.len()), (200, 0));
    assert_eq!(p.headers["content-length"], "1000");
    // An interim 103 is not passed on; the final answer is.
    let (p, body, _) = get("GET", "/early").await;
    assert_eq!((p.status.as_u16(), &body[..]), (200, &b"ok"[..]));
    // Hop-by-hop fields of the answer stay behind.
    let (p, _, _) = get("GET", "/hop").await;
    assert!(p.headers.get("x-secret").is_none(), "{:?}", p.headers);
    assert!(p.headers.get("keep-alive").is_none(), "{:?}", p.headers);
    assert_eq!(p.headers["x-kept"], "1");
    // All of that over one upstream connection (one worker thread).
    assert_eq!(b.conns.load(Ordering::Relaxed), 1);

    // A body until the server closes: the client gets it all, then the close.
    let (p, body, _) = get("GET", "/close").await;
    assert_eq!(p.headers["connection"], "close");
    assert_eq!(&body[..], b"until the server closes");
    assert!(
        sender.ready().await.is_err(),
        "client connection stayed open"
    );

    // Pipelined requests are answered in order.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /hop HTTP/1.1\r\nHost: a\r\n\r\nGET /chunked HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let all = read_until(&mut s, |t| t.ends_with("raw")).await;
    assert_eq!(all.matches("HTTP/1.1 200").count(), 3, "{all}");
    let (hop, rest) = all.split_once("ok").unwrap();
    assert!(hop.contains("X-Kept: 1"), "{all}");
    assert!(
        rest.contains("0\r\nx-trailer: 1\r\n\r\nHTTP/1.1 200"),
        "{all}"
    );
    assert!(rest.contains("connection: close"), "{all}");
    assert_eq!(s.read(&mut [0u8; 16]).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_slow_heads_get_400_431_and_408() {
    let b = RawBackend::start().await;
    let lb = Lb::start(&raw_config(
        b.addr,
        "timeouts = { header_read = \"1s\", idle = \"5s\" }",
    ))
    .await;
    let answer = async |req: &[u8]| {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        out
    };
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 12, 13\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let out = answer(bad).await;
        assert!(
            out.starts_with("HTTP/1.1 400 "),
            "{:?}: {out}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut big = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..1000 {
        big.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(80)).as_bytes());
    }
    big.extend_from_slice(b"\r\n");
    let out = answer(&big).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    // A head that never ends: 408 after the header read timeout, then the close.
    let t = Instant::now();
    let out = answer(b"GET / HTTP/1.1\r\nHost: a\r\n").await;
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(
        t.elapsed() >= Duration::from_millis(900) && t.elapsed() < Duration::from_secs(4),
        "{:?}",
        t.elapsed()
    );
    // The balancer is fine after all that.
    assert!(
        answer(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .ends_with("raw")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_and_expect_100_continue_reach_the_backend() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&http_config(
        "round-robin",
        &servers(&[(&a, 1)]),
        "health_check = { kind = \"none\" }",
    ))
    .await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    // A chunked upload in pieces, then a GET on the same connection.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut sent = 0;
    for i in 0..20usize {
        let chunk = vec![b'z'; 1000 + i];
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        sent += chunk.len();
    }
    s.write_all(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| {
        t.matches("HTTP/1.1 200").count() == 2 && t.ends_with('a')
    })
    .await;
    assert!(
        out.contains(&format!("\r\n\r\n{sent}HTTP/1.1 200")),
        "{out}"
    );
    // Expect: 100-continue: the client hears 100 before sending its body.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let cont = read_until(&mut s, |t| t.ends_with("\r\n\r\n")).await;
    assert_eq!(cont, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let out = read_until(&mut s, |t| t.ends_with("\r\n\r\n5")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
