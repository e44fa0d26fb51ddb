//! HTTP/2 to the servers (`tls = { alpn = ["h2", "http/1.1"] }`): a hyper HTTPS backend
//! in the test (HTTP/2 and HTTP/1.1 by ALPN) that answers with the version its request
//! came in, behind the balancer's HTTP/1.1 fast path.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_testkit::TempDir;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::pki::{Alg, Pki};
use crate::support::{read_until, wait_for, Client, Lb};

const BIG: usize = 4 << 20;
const CHUNK: usize = 16 << 10;
const CHUNKS: usize = 64;

/// An HTTPS backend offering `alpn`: `/big` is 4 MiB with its length, `/stream` 1 MiB in
/// chunks without one, anything else echoes its version, method, authority and body.
struct H2Backend {
    addr: SocketAddr,
    /// TLS connections accepted, and how many of them picked h2.
    conns: Arc<AtomicU64>,
    h2_conns: Arc<AtomicU64>,
    task: AbortHandle,
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `/slow` requests being answered, and the most at once (one test uses them).
static SLOW_NOW: AtomicU64 = AtomicU64::new(0);
static SLOW_MAX: AtomicU64 = AtomicU64::new(0);

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let head = format!(
        "{:?} {} {} authority={} host={}",
        req.version(),
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str()),
        req.uri().authority().map_or("-", |a| a.as_str()),
        req.headers()
            .get("host")
            .map_or("-", |h| h.to_str().unwrap_or("?")),
    );
    let r = match path.as_str() {
        "/slow" => {
            let now = SLOW_NOW.fetch_add(1, Ordering::SeqCst) + 1;
            SLOW_MAX.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            SLOW_NOW.fetch_sub(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from(head)).boxed())
        }
        "/reject" => {
            // Answers without reading the body (an upload refused at once).
            let mut r = Response::new(Full::new(Bytes::from_static(b"too large")).boxed());
            *r.status_mut() = hyper::StatusCode::PAYLOAD_TOO_LARGE;
            r
        }
        "/big" => Response::new(Full::new(Bytes::from(pattern(BIG))).boxed()),
        "/stream" => {
            let chunks = (0..CHUNKS).map(|i| {
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'0' + (i % 10) as u8; CHUNK])))
            });
            Response::new(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
        }
        _ => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut out = format!("{head} len={}\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            Response::new(Full::new(Bytes::from(out)).boxed())
        }
    };
    Ok(r)
}

impl H2Backend {
    /// With `goaway_after`, each connection ends gracefully (GOAWAY) at that request;
    /// with `max_streams`, HTTP/2 clients may open that many streams at once.
    async fn start(
        chain: &Path,
        key: &Path,
        alpn: &[&[u8]],
        (goaway_after, max_streams): (Option<u64>, Option<u32>),
    ) -> H2Backend {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicU64::new(0));
        let h2_conns = Arc::new(AtomicU64::new(0));
        let (c, h) = (conns.clone(), h2_conns.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, c, h) = (acceptor.clone(), c.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        h.fetch_add(1, Ordering::SeqCst);
                    }
                    let served = AtomicU64::new(0);
                    let bye = tokio::sync::Notify::new();
                    let svc = hyper::service::service_fn(|req| {
                        if Some(served.fetch_add(1, Ordering::SeqCst) + 1) == goaway_after {
                            bye.notify_one();
                        }
                        answer(req)
                    });
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    builder.http2().max_concurrent_streams(max_streams);
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = bye.notified() => {}
                    }
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                });
            }
        })
        .abort_handle();
        H2Backend {
            addr,
            conns,
            h2_conns,
            task,
        }
    }
}

fn config(backend: SocketAddr, tls: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"web\"\nservers = [{{ address = \"{backend}\" }}]\n\
         health_check = {{ kind = \"none\" }}\nretries = {{ attempts = 0 }}\ntls = {{ {tls} }}\n"
    )
}

struct Setup {
    _dir: TempDir,
    pki: Pki,
    server: (std::path::PathBuf, std::path::PathBuf),
}

fn setup() -> Setup {
    let dir = TempDir::new().unwrap();
    let pki = Pki::new(dir.path());
    let server = pki.leaf("web-srv", Alg::Ecdsa, &["web.internal"], "serverAuth");
    Setup {
        _dir: dir,
        pki,
        server,
    }
}

fn h2_tls(s: &Setup) -> String {
    format!(
        "ca = \"{}\", server_name = \"web.internal\", alpn = [\"h2\", \"http/1.1\"]",
        s.pki.root().display()
    )
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
    let b = H2Backend::start(
        &s.server.0,
        &s.server.1,
        &[b"h2", b"http/1.1"],
        (None, None),
    )
    .await;
    // Health checks over the same pool tls: HTTP/1.1 (their ALPN leaves h2 out).
    let admin = format!("127.0.0.1:{}", rampart_testkit::free_port());
    let cfg = format!(
        "[admin]\naddress = \"{admin}\"\n{}",
        config(b.addr, &h2_tls(&s)).replace(
            "health_check = { kind = \"none\" }",
            "health_check = { kind = \"http\", path = \"/health\", interval = \"100ms\" }",
        )
    );
    let lb = Lb::start_threads(&cfg, 1).await;
    let (conns, h2_conns) = (b.conns.clone(), b.h2_conns.clone());
    assert!(
        wait_for(
            || conns.load(Ordering::SeqCst) >= 1 && h2_conns.load(Ordering::SeqCst) == 0,
            Duration::from_secs(10)
        )
        .await,
        "no health check came: {}",
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
    // One worker: every request above went over its one HTTP/2 connection.
    assert_eq!(b.h2_conns.load(Ordering::SeqCst), 1);
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
    let b = H2Backend::start(
        &s.server.0,
        &s.server.1,
        &[b"h2", b"http/1.1"],
        (None, None),
    )
    .await;
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
    assert_eq!(b.conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_picking_http1_is_served_over_http1_and_a_wrong_ca_is_502() {
    let s = setup();
    let b = H2Backend::start(&s.server.0, &s.server.1, &[b"http/1.1"], (None, None)).await;
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
    assert_eq!(b.conns.load(Ordering::SeqCst), 1);
    assert_eq!(b.h2_conns.load(Ordering::SeqCst), 0);

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
    let b = H2Backend::start(
        &s.server.0,
        &s.server.1,
        &[b"h2", b"http/1.1"],
        (Some(3), None),
    )
    .await;
    let lb = Lb::start_threads(&config(b.addr, &h2_tls(&s)), 1).await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    for i in 0..12 {
        let (status, body) = c.get(&format!("/g/{i}")).await.unwrap();
        assert_eq!(status, 200, "request {i}: {}", lb.proc.log_text());
        assert!(body.starts_with(&format!("HTTP/2.0 GET /g/{i} ")), "{body}");
    }
    // Three requests a connection (a request that met a closing one went on a new one).
    let n = b.h2_conns.load(Ordering::SeqCst);
    assert!((4..=5).contains(&n), "{n} connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_max_concurrent_streams_is_kept_requests_wait_for_a_stream() {
    let s = setup();
    let b = H2Backend::start(&s.server.0, &s.server.1, &[b"h2"], (None, Some(1))).await;
    let lb = Lb::start_threads(&config(b.addr, &h2_tls(&s)), 1).await;
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
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let addr = lb.addr;
        tasks.push(tokio::spawn(async move {
            Client::connect(addr)
                .await
                .unwrap()
                .get("/slow")
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{}", lb.proc.log_text());
        assert!(body.starts_with("HTTP/2.0 GET /slow"), "{body}");
    }
    // One at a time on the one connection: 6 x 100 ms.
    assert_eq!(SLOW_MAX.load(Ordering::SeqCst), 1);
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(b.h2_conns.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_an_upload_reaches_the_client() {
    let s = setup();
    let b = H2Backend::start(&s.server.0, &s.server.1, &[b"h2"], (None, None)).await;
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
    assert_eq!(b.h2_conns.load(Ordering::SeqCst), 1);
}
