//! TLS from the balancer to the servers: a rustls HTTPS backend in the test (optionally
//! asking for a client certificate), certificates from the `openssl` CLI.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use rampart_testkit::{free_port, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pki::{Alg, Pki};
use crate::support::{Client, Lb};
use crate::tls_support::{pool_config as config, serve, server_config, setup, TlsServer};

/// An HTTPS backend answering `tls <client certificate CN or "anonymous">`.
struct TlsBackend {
    addr: SocketAddr,
    handshakes: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    _server: TlsServer,
}

impl TlsBackend {
    /// With `client_ca`, a client certificate signed by it is required.
    async fn start(chain: &Path, key: &Path, client_ca: Option<&Path>) -> TlsBackend {
        let cfg = server_config(chain, key, &[b"http/1.1"], client_ca);
        let handshakes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let (h, r) = (handshakes.clone(), requests.clone());
        let server = serve(cfg, move |tls, _| {
            let (h, r) = (h.clone(), r.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let who = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| {
                        // The CN is the last printable run of the subject; enough for the
                        // names the test gives ("lb-client").
                        let der = c.as_ref();
                        let pos = der.windows(9).position(|w| w == b"lb-client");
                        if pos.is_some() {
                            "lb-client"
                        } else {
                            "other"
                        }
                    })
                    .unwrap_or("anonymous");
                let svc = hyper::service::service_fn(move |_req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "tls {who}"
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            }
        })
        .await;
        TlsBackend {
            addr: server.addr,
            handshakes,
            requests,
            _server: server,
        }
    }
}

/// One HTTP/1.0 request over a raw connection; the answer.
async fn http10(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_the_servers_with_pooled_connections() {
    let s = setup();
    let client = s.pki.leaf("lb-client", Alg::Ecdsa, &[], "clientAuth");
    let root = s.pki.root();
    let backend = TlsBackend::start(&s.server.0, &s.server.1, Some(&root)).await;
    let lb = Lb::start(&config(
        backend.addr,
        &format!(
            "ca = \"{}\", server_name = \"web.internal\", cert = \"{}\", key = \"{}\"",
            root.display(),
            client.0.display(),
            client.1.display()
        ),
    ))
    .await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    for _ in 0..5 {
        let (status, body) = c.get("/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "tls lb-client"));
    }
    // One handshake for five requests on one client connection: pooled.
    assert_eq!(backend.requests.load(Ordering::SeqCst), 5);
    assert_eq!(backend.handshakes.load(Ordering::SeqCst), 1);
    // The other (hyper) path speaks TLS too.
    let old = http10(lb.addr).await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    assert!(old.ends_with("tls lb-client"), "{old}");

    // Without the client certificate the server refuses: 502.
    let lb2 = Lb::start(&config(
        backend.addr,
        &format!(
            "ca = \"{}\", server_name = \"web.internal\"",
            root.display()
        ),
    ))
    .await;
    let mut c = Client::connect(lb2.addr).await.unwrap();
    let (status, _) = c.get("/").await.unwrap();
    assert_eq!(status, 502, "{}", lb2.proc.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_name_is_refused_with_502_and_a_clear_log_line() {
    let s = setup();
    let backend = TlsBackend::start(&s.server.0, &s.server.1, None).await;
    let other_dir = TempDir::new().unwrap();
    let other = Pki::new(other_dir.path());
    let cases = [
        (
            // Another CA with the same names: the chain's signatures do not verify.
            format!(
                "ca = \"{}\", server_name = \"web.internal\"",
                other.root().display()
            ),
            "invalid peer certificate: BadSignature",
        ),
        (
            format!(
                "ca = \"{}\", server_name = \"db.internal\"",
                s.pki.root().display()
            ),
            "not valid for name",
        ),
    ];
    for (tls, why) in &cases {
        let lb = Lb::start(&config(backend.addr, tls)).await;
        let mut c = Client::connect(lb.addr).await.unwrap();
        let (status, _) = c.get("/").await.unwrap();
        assert_eq!(status, 502);
        let want = format!("TLS handshake with {} as", backend.addr);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = lb.proc.log_text();
            if let Some(line) = log.lines().find(|l| l.contains(&want)) {
                assert!(line.contains("connect failed"), "{line}");
                assert!(line.contains(why), "expected {why}: {line}");
                break;
            }
            assert!(Instant::now() < deadline, "no log line for {tls}:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 0);
    // The right CA and name: served, verified by the server's IP when no name is given
    // (the certificate names 127.0.0.1).
    for tls in [
        format!(
            "ca = \"{}\", server_name = \"web.internal\"",
            s.pki.root().display()
        ),
        format!("ca = \"{}\"", s.pki.root().display()),
    ] {
        let lb = Lb::start(&config(backend.addr, &tls)).await;
        let mut c = Client::connect(lb.addr).await.unwrap();
        assert_eq!(
            c.get("/").await.unwrap(),
            (200, "tls anonymous".to_string())
        );
    }
}

#[test]
fn an_unusable_ca_file_refuses_start_naming_it() {
    let dir = TempDir::new().unwrap();
    let bad = dir.path().join("ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let cfg = dir.path().join("lb.toml");
    std::fs::write(
        &cfg,
        config(
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            &format!("ca = \"{}\"", bad.display()),
        )
        .replace("{LISTEN}", &format!("127.0.0.1:{}", free_port())),
    )
    .unwrap();
    let o = std::process::Command::new(rampart_testkit::rampart_bin())
        .args(["lb", "--config"])
        .arg(&cfg)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("pool \"web\": TLS ca file {}", bad.display())),
        "{err}"
    );
}

/// A TLS backend that answers one request per connection (keep-alive announced), then
/// ends it while idle (close_notify and FIN) a moment later: the balancer must not send
/// the next request into it.
async fn closing_backend(chain: &Path, key: &Path) -> (TlsServer, Arc<AtomicU64>, Arc<AtomicU64>) {
    let cfg = server_config(chain, key, &[b"http/1.1"], None);
    let handshakes = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let (h, c) = (handshakes.clone(), closed.clone());
    let server = serve(cfg, move |mut tls, _| {
        let (h, c) = (h.clone(), c.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head, then a Content-Length body if any.
            let need = loop {
                let Ok(n) = tls.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    break end + 4 + len;
                }
            };
            while buf.len() < need {
                let Ok(n) = tls.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            // close_notify and FIN; the socket stays open a while, never read again.
            let _ = tls.shutdown().await;
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    (server, handshakes, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_after_the_server_ended_an_idle_pooled_tls_connection_goes_on_a_new_one() {
    let s = setup();
    let (server, handshakes, closed) = closing_backend(&s.server.0, &s.server.1).await;
    let addr = server.addr;
    let lb = Lb::start(&config(
        addr,
        &format!(
            "ca = \"{}\", server_name = \"web.internal\"",
            s.pki.root().display()
        ),
    ))
    .await;
    let mut c = Client::connect(lb.addr).await.unwrap();
    for i in 1..=3u64 {
        // A POST is resent only when none of it went out: had it been sent into the
        // ended connection, the client would get a 502.
        let req = hyper::Request::post("/pay")
            .header("host", "lb.test")
            .body(Full::new(Bytes::from_static(b"amount=1")))
            .unwrap();
        let (status, body) = c.request(req).await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "ok"),
            "{}",
            lb.proc.log_text()
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while closed.load(Ordering::SeqCst) < i {
            assert!(Instant::now() < deadline, "the backend did not close");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 3);
}
