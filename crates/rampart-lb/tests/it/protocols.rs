//! HTTP/2 (h2c), WebSocket upgrades, TCP mode, forwarded headers, streamed uploads.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{
    get_once, http_config, read_until, servers, Backend, Client, EchoBackend, Lb,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_request_is_proxied() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&http_config("round-robin", &servers(&[(&a, 1)]), "")).await;
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get(format!("http://{}/", lb.addr))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"a");
    }
    // The upstream saw an HTTP/1.1 request with a Host and forwarded headers.
    let req = Request::get(format!("http://{}/headers", lb.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(body.contains(&format!("host: {}", lb.addr)), "{body}");
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_replace_an_untrusted_chain_and_drop_hop_by_hop() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&http_config("round-robin", &servers(&[(&a, 1)]), "")).await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let req = Request::get("/headers")
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("x-kept", "yes")
        .body(Default::default())
        .unwrap();
    let (st, body) = cl.request(req).await.unwrap();
    assert_eq!(st, 200);
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.example"), "{body}");
    assert!(body.contains("x-kept: yes"), "{body}");
    assert!(!body.contains("x-private"), "{body}");

    // A trusted peer's chain is kept and appended to.
    let b = Backend::start("b").await;
    let cfg = format!(
        "[forwarded]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        http_config("round-robin", &servers(&[(&b, 1)]), "")
    );
    let lb2 = Lb::start(&cfg).await;
    let mut cl = Client::connect(lb2.addr).await.unwrap();
    let req = Request::get("/headers")
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Default::default())
        .unwrap();
    let (_, body) = cl.request(req).await.unwrap();
    assert!(
        body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
        "{body}"
    );
}

/// What the backend saw of one request on a new connection, over HTTP/1.1 (the fast
/// path) and over h2c (hyper's path).
async fn seen_headers(lb: std::net::SocketAddr) -> (String, String) {
    let mut cl = Client::connect(lb).await.unwrap();
    let req = Request::get("/headers")
        .header("host", "shop.example")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .body(Default::default())
        .unwrap();
    let (st, h1) = cl.request(req).await.unwrap();
    assert_eq!(st, 200, "{h1}");
    let tcp = TcpStream::connect(lb).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://shop.example/headers")
        .header("x-forwarded-for", "6.6.6.6")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (h1, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_chooses_the_forwarding_headers_and_a_reload_changes_them() {
    let a = Backend::start("a").await;
    let pool = http_config("round-robin", &servers(&[(&a, 1)]), "");
    let lb = Lb::start(&format!("[forwarded]\nheaders = [\"forwarded\"]\n{pool}")).await;
    // RFC 7239 only: one element naming the client, none of the X- headers, and the
    // client's own claims gone.
    let (h1, h2) = seen_headers(lb.addr).await;
    for body in [&h1, &h2] {
        assert!(
            body.contains("forwarded: for=127.0.0.1;proto=http;host=shop.example\n"),
            "{body}"
        );
        assert!(
            !body.contains("x-forwarded") && !body.contains("x-real-ip"),
            "{body}"
        );
        assert!(!body.contains("6.6.6.6"), "{body}");
    }
    // Reloaded with X-Forwarded-For only (HAProxy's `option forwardfor`): new connections
    // get it.
    let xff = format!("[forwarded]\nheaders = [\"x-forwarded-for\"]\n{pool}");
    lb.reload_with(&xff).await.unwrap();
    let (h1, h2) = seen_headers(lb.addr).await;
    for body in [&h1, &h2] {
        assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
        assert!(
            !body.contains("forwarded: for") && !body.contains("x-real-ip"),
            "{body}"
        );
        assert!(
            !body.contains("x-forwarded-proto") && !body.contains("6.6.6.6"),
            "{body}"
        );
    }
    // A name it does not know: refused with its position, the running set kept.
    let log = lb
        .reload_with(&xff.replace("\"x-forwarded-for\"]", "\"x-forwarded-by\"]"))
        .await
        .unwrap_err();
    let pos = format!(
        "{}:2:12: unknown forwarding header \"x-forwarded-by\"",
        lb.config_path().display()
    );
    assert!(log.contains(&pos), "{log}");
    let (h1, _) = seen_headers(lb.addr).await;
    assert!(h1.contains("x-forwarded-for: 127.0.0.1\n"), "{h1}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&http_config("round-robin", &servers(&[(&a, 1)]), "")).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: lb.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut upgrade_header = false;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line.to_ascii_lowercase().starts_with("upgrade: websocket") {
            upgrade_header = true;
        }
        if line == "\r\n" {
            break;
        }
    }
    assert!(upgrade_header);
    let frame = ws_frame();
    for _ in 0..3 {
        r.get_mut().write_all(&frame).await.unwrap();
        let mut back = vec![0u8; frame.len()];
        tokio::time::timeout(Duration::from_secs(5), r.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, frame);
    }
}

/// A masked text frame "hello" (client frames are masked); the backend echoes bytes.
fn ws_frame() -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A client that sends its first frame in the same write as the upgrade request, on the fast
/// path: the frame reaches the server once the tunnel is up
/// (not lost in the balancer's read buffer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_with_the_upgrade_request_goes_through_the_tunnel() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&http_config("round-robin", &servers(&[(&a, 1)]), "")).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let mut req = b"GET /chat HTTP/1.1\r\nHost: lb.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let frame = ws_frame();
    req.extend_from_slice(&frame);
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(i) = text.find("\r\n\r\n") {
            if got.len() >= i + 4 + frame.len() {
                assert!(text.starts_with("HTTP/1.1 101"), "{text}");
                assert_eq!(&got[i + 4..i + 4 + frame.len()], &frame[..]);
                break;
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("the echo of the first frame")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    // The tunnel goes on: a second frame, echoed.
    s.write_all(&frame).await.unwrap();
    let mut back = vec![0u8; frame.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, frame);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_balances_connections_and_copies_bytes() {
    let e1 = EchoBackend::start("one").await;
    let e2 = EchoBackend::start("two").await;
    let cfg = format!(
        r#"
[[listener]]
name = "echo"
address = "{{LISTEN}}"
mode = "tcp"
pool = "echo"

[[pool]]
name = "echo"
algorithm = "round-robin"
servers = [{{ name = "one", address = "{}" }}, {{ name = "two", address = "{}" }}]
"#,
        e1.addr, e2.addr
    );
    // One worker: the balancer sees the connections in the order they are made.
    let lb = Lb::start_threads(&cfg, 1).await;
    let mut greeted = Vec::new();
    for i in 0..4 {
        let s = TcpStream::connect(lb.addr).await.unwrap();
        let mut r = BufReader::new(s);
        let mut hello = String::new();
        r.read_line(&mut hello).await.unwrap();
        greeted.push(hello.trim().to_string());
        let msg = format!("ping {i}\n").repeat(1000);
        r.get_mut().write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        r.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    // Round robin: connections alternate between the two servers.
    assert_ne!(greeted[0], greeted[1], "{greeted:?}");
    assert_eq!(greeted[0], greeted[2], "{greeted:?}");
    assert_eq!(greeted[1], greeted[3], "{greeted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_upload_keeps_memory_bounded() {
    let a = Backend::start("a").await;
    let lb = Lb::start(&http_config("round-robin", &servers(&[(&a, 1)]), "")).await;
    // Warm up: one request, so lazily allocated state exists before measuring.
    assert_eq!(get_once(lb.addr, "/").await.0, 200);
    let rss_before = lb.rss_kib();

    const SIZE: u64 = 512 * 1024 * 1024;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sent = 0u64;
    let mut chunks = 0u32;
    let mut peak_kib = rss_before;
    let t = Instant::now();
    while sent < SIZE {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len() as u64;
        chunks += 1;
        if chunks & 127 == 0 {
            peak_kib = peak_kib.max(lb.rss_kib());
        }
    }
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    peak_kib = peak_kib.max(lb.rss_kib());
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.ends_with(&SIZE.to_string()),
        "backend did not get every byte: {resp}"
    );
    let growth = peak_kib.saturating_sub(rss_before);
    eprintln!(
        "512 MiB upload in {:?}; rampart RSS {rss_before} KiB -> peak {peak_kib} KiB",
        t.elapsed()
    );
    assert!(
        growth < 16 * 1024,
        "RSS grew by {growth} KiB during a 512 MiB upload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_is_parked_when_quiet_and_closed_when_idle() {
    let a = Backend::start("a").await;
    let cfg = http_config("round-robin", &servers(&[(&a, 1)]), "").replace(
        "pool = \"app\"\n",
        "pool = \"app\"\ntimeouts = { header_read = \"2s\", idle = \"3s\" }\n",
    );
    let lb = Lb::start(&cfg).await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n";
    // Two pipelined requests, then a pause long enough for the connection to be parked
    // (hyper's state dropped), then one more on the same connection.
    let mut two = req.to_vec();
    two.extend_from_slice(req);
    s.write_all(&two).await.unwrap();
    // Both answers whole (the body is the backend's name, "a"), not just their status
    // lines: a tail left unread would be taken for the next answer or for the close.
    let got = read_until(&mut s, |t| {
        t.matches("HTTP/1.1 200").count() == 2 && t.ends_with("\r\n\r\na")
    })
    .await;
    assert!(
        got.matches("HTTP/1.1 200").count() == 2 && got.ends_with("\r\n\r\na"),
        "{got}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(req).await.unwrap();
    let got = read_until(&mut s, |t| t.ends_with("\r\n\r\na")).await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("\r\n\r\na"),
        "{got}"
    );
    assert_eq!(a.hits(), 3);
    // Idle past the idle timeout: the lb closes the connection.
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf))
        .await
        .expect("the idle connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "closed after {:?}",
        t.elapsed()
    );
}

/// Sockets of this machine in CLOSE_WAIT whose remote port is `port` (the balancer's side
/// of upstream connections a server closed).
fn close_wait_to(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let remote = f.get(2).and_then(|a| a.rsplit(':').next());
                    remote.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                        && f.get(3) == Some(&"08")
                })
                .count()
        })
        .sum()
}

/// Issue 12, finding 5: idle upstream connections a server closes are closed by the
/// balancer within about a second, even when nobody sends to that server again (before,
/// they sat in CLOSE_WAIT until its next use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_a_server_closed_do_not_pile_up_in_close_wait() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that answers keep-alive and closes a connection idle for 200 ms
    // (nginx's keepalive_timeout, shortened).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                loop {
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                        Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    let lb = Lb::start(&format!(
        "[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\nservers = [{{ name = \"s\", address = \"127.0.0.1:{port}\" }}]\nhealth_check = {{ kind = \"none\" }}\n"
    ))
    .await;
    // 20 concurrent clients leave up to 20 idle upstream connections behind.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = lb.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            for _ in 0..5 {
                assert_eq!(c.get("/").await.unwrap().0, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The server closes them 200 ms later; the balancer must follow.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut left = close_wait_to(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while left > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = close_wait_to(port);
    }
    assert_eq!(
        left,
        0,
        "{left} upstream sockets left in CLOSE_WAIT:\n{}",
        lb.proc.log_text()
    );
}

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Issue 12: HTTP/2 stream floods are capped. A "rapid reset" client (HEADERS then
/// RST_STREAM at once, thousands of streams: CVE-2023-44487) is sent GOAWAY and cut
/// off long before its streams all reach the server, and the balancer keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_is_cut_off() {
    let a = Backend::start("a").await;
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", rampart_testkit::free_port())
        .parse()
        .unwrap();
    let lb = Lb::start(&format!(
        "[admin]\naddress = \"{admin}\"\n\n{}",
        http_config("round-robin", &servers(&[(&a, 1)]), "")
    ))
    .await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
                                          // GET / with :authority "a": static-table indices and one literal.
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];
    const STREAMS: u32 = 5000;
    for i in 0..STREAMS {
        let id = 1 + 2 * i;
        out.extend(h2_frame(0x1, 0x5, id, &block)); // HEADERS, END_STREAM | END_HEADERS
        out.extend(h2_frame(0x3, 0, id, &0x8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = s.write_all(&out).await;
    // Read what the balancer says until it closes: a GOAWAY frame (type 7) among it.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    let mut goaway = None;
    let mut at = 0;
    while at + 9 <= got.len() {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        if got[at + 3] == 0x7 && at + 9 + 8 <= got.len() {
            let p = &got[at + 9..];
            goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    let hits = a.hits();
    eprintln!("rapid reset: {STREAMS} streams sent, GOAWAY {goaway:?}, {hits} reached the server");
    assert_eq!(
        goaway,
        Some(0xb),
        "no GOAWAY(ENHANCE_YOUR_CALM): {} bytes read",
        got.len()
    );
    assert!(
        hits < u64::from(STREAMS) / 10,
        "{hits} of {STREAMS} reset streams reached the server"
    );
    // The balancer serves on.
    let mut c = Client::connect(lb.addr).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().0, 200);
    // And the refusal is counted, as the firewall's others are.
    let want = "rampart_firewall_refused_total{listener=\"web\",reason=\"h2-flood\"} 1";
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = tokio::task::spawn_blocking(move || {
            rampart_testkit::http_request(admin, "GET", "/metrics", &[], b"")
                .map(|r| r.text())
                .unwrap_or_default()
        })
        .await
        .unwrap();
        if metrics.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(want), "{want} not in:\n{metrics}");
}
