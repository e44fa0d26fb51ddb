//! The rustls side of the tests of TLS to the servers (`tls_upstream`, `tls_upstream_h2`,
//! `tls_upstream_h2_limits`): certificates (the `openssl` CLI, through `pki`), a server
//! configuration, an accept loop handing each TLS connection on, the pool configuration
//! around them, and an HTTPS backend that speaks HTTP/2 and HTTP/1.1 by ALPN.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
use tokio_rustls::server::TlsStream;

use crate::pki::{Alg, Pki};

/// A test PKI with the servers' certificate (`web.internal`, and 127.0.0.1).
pub struct Setup {
    _dir: TempDir,
    pub pki: Pki,
    pub server: (PathBuf, PathBuf),
}

pub fn setup() -> Setup {
    let dir = TempDir::new().unwrap();
    let pki = Pki::new(dir.path());
    let server = pki.leaf("web-srv", Alg::Ecdsa, &["web.internal"], "serverAuth");
    Setup {
        _dir: dir,
        pki,
        server,
    }
}

pub fn certs(p: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(p)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A rustls server configuration offering `alpn`; with `client_ca`, a client
/// certificate signed by it is required.
pub fn server_config(
    chain: &Path,
    key: &Path,
    alpn: &[&[u8]],
    client_ca: Option<&Path>,
) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        None => b.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(certs(ca));
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
    };
    let mut cfg = b
        .with_single_cert(certs(chain), PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// A TLS server on loopback; stops (with its connections' tasks left to end) on drop.
pub struct TlsServer {
    pub addr: SocketAddr,
    task: AbortHandle,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accept TLS connections with `cfg`, handing each to `on_conn` (in its own task) with
/// its rank (0 for the first handshake done).
pub async fn serve<F, Fut>(cfg: rustls::ServerConfig, on_conn: F) -> TlsServer
where
    F: Fn(TlsStream<TcpStream>, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let on_conn = Arc::new(on_conn);
    let rank = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, on_conn, rank) = (acceptor.clone(), on_conn.clone(), rank.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let n = rank.fetch_add(1, Ordering::SeqCst);
                on_conn(tls, n).await;
            });
        }
    })
    .abort_handle();
    TlsServer { addr, task }
}

/// A balancer configuration: listener `web` in front of pool `web` (one server, no
/// health checks, no retries) with `tls = { <tls> }`.
pub fn pool_config(backend: SocketAddr, tls: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"web\"\nservers = [{{ address = \"{backend}\" }}]\n\
         health_check = {{ kind = \"none\" }}\nretries = {{ attempts = 0 }}\ntls = {{ {tls} }}\n"
    )
}

/// The pool `tls` settings for the setup's servers, offering `alpn`.
pub fn tls_alpn(s: &Setup, alpn: &str) -> String {
    format!(
        "ca = \"{}\", server_name = \"web.internal\", alpn = [{alpn}]",
        s.pki.root().display()
    )
}

pub const BIG: usize = 4 << 20;
pub const CHUNK: usize = 16 << 10;
pub const CHUNKS: usize = 64;

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// How the backend's first connection turns its first request away unprocessed (an
/// HTTP/2 peer written frame by frame): `REFUSED_STREAM`, or a GOAWAY whose last stream
/// id is 0; after `after_body` bytes of the request body came.
#[derive(Clone, Copy)]
pub enum Refuse {
    Reset { after_body: usize },
    GoAway { after_body: usize },
}

/// What an [`H2Backend`] does besides answering.
#[derive(Clone, Copy, Default)]
pub struct Opts {
    /// Each connection ends gracefully (GOAWAY) at that request.
    pub goaway_after: Option<u64>,
    /// HTTP/2 clients may open that many streams at once.
    pub max_streams: Option<u32>,
    /// The first connection refuses its request.
    pub refuse_first: Option<Refuse>,
}

/// What an [`H2Backend`] saw.
#[derive(Default)]
pub struct Seen {
    /// TLS connections accepted, and how many of them picked h2.
    pub conns: AtomicU64,
    pub h2_conns: AtomicU64,
    /// h2 connections that carried a request other than a health check's.
    pub h2_served: AtomicU64,
    /// Health checks (`/health`) that came over HTTP/2.
    pub h2_checks: AtomicU64,
    /// `/slow` requests being answered, and the most at once.
    pub slow_now: AtomicU64,
    pub slow_max: AtomicU64,
}

/// An HTTPS backend offering `alpn` (only HTTP/2 when that is `h2` alone): `/big` is
/// 4 MiB with its length, `/stream` 1 MiB in chunks without one, `/slow` answers after
/// 100 ms, `/reject` answers 413 without reading the body, anything else echoes its
/// version, method, authority, body and trailers.
pub struct H2Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    _server: TlsServer,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: &Seen,
) -> Result<Response<Body>, Infallible> {
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
            let now = seen.slow_now.fetch_add(1, Ordering::SeqCst) + 1;
            seen.slow_max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen.slow_now.fetch_sub(1, Ordering::SeqCst);
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
            let body = req.into_body().collect().await.unwrap();
            let trailers = body.trailers().map(|t| {
                t.iter()
                    .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            let body = body.to_bytes();
            let mut out = match trailers {
                None => format!("{head} len={}\n", body.len()),
                Some(t) => format!("{head} len={} trailers={t}\n", body.len()),
            }
            .into_bytes();
            out.extend_from_slice(&body);
            Response::new(Full::new(Bytes::from(out)).boxed())
        }
    };
    Ok(r)
}

impl H2Backend {
    pub async fn start(s: &Setup, alpn: &[&[u8]], opts: Opts) -> H2Backend {
        let cfg = server_config(&s.server.0, &s.server.1, alpn, None);
        let h2_only = alpn == [b"h2"];
        let seen = Arc::new(Seen::default());
        let seen2 = seen.clone();
        let server = serve(cfg, move |tls, rank| {
            let seen = seen2.clone();
            async move {
                seen.conns.fetch_add(1, Ordering::SeqCst);
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                if h2 {
                    seen.h2_conns.fetch_add(1, Ordering::SeqCst);
                }
                if let (0, Some(r)) = (rank, opts.refuse_first) {
                    refuse(tls, r).await;
                    return;
                }
                let served = AtomicU64::new(0);
                let counted = AtomicBool::new(false);
                let bye = tokio::sync::Notify::new();
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    if Some(served.fetch_add(1, Ordering::SeqCst) + 1) == opts.goaway_after {
                        bye.notify_one();
                    }
                    let over_h2 = req.version() == hyper::Version::HTTP_2;
                    if req.uri().path() == "/health" {
                        if over_h2 {
                            seen.h2_checks.fetch_add(1, Ordering::SeqCst);
                        }
                    } else if over_h2 && !counted.swap(true, Ordering::SeqCst) {
                        seen.h2_served.fetch_add(1, Ordering::SeqCst);
                    }
                    let seen = seen.clone();
                    async move { answer(req, &seen).await }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http2().max_concurrent_streams(opts.max_streams);
                if h2_only {
                    builder = builder.http2_only();
                }
                let conn = builder.serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = bye.notified() => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        })
        .await;
        H2Backend {
            addr: server.addr,
            seen,
            _server: server,
        }
    }
}

/// One HTTP/2 frame.
fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let n = payload.len() as u32;
    out.extend_from_slice(&n.to_be_bytes()[1..]);
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HTTP/2 server side written frame by frame that turns the first request away
/// unprocessed (see [`Refuse`]), then reads what the client still sends until it closes.
async fn refuse(mut tls: TlsStream<TcpStream>, how: Refuse) {
    // Room for a body: a 1 MiB stream window (SETTINGS_INITIAL_WINDOW_SIZE) and as much
    // more for the connection.
    let mut out = Vec::new();
    frame(&mut out, 0x4, 0, 0, &[0, 4, 0, 0x10, 0, 0]);
    frame(&mut out, 0x8, 0, 0, &(1u32 << 20).to_be_bytes());
    if tls.write_all(&out).await.is_err() {
        return;
    }
    let mut preface = [0u8; 24];
    if tls.read_exact(&mut preface).await.is_err() {
        return;
    }
    let after = match how {
        Refuse::Reset { after_body } | Refuse::GoAway { after_body } => after_body,
    };
    let (mut stream, mut body) = (None, 0usize);
    loop {
        let mut h = [0u8; 9];
        if tls.read_exact(&mut h).await.is_err() {
            return;
        }
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let mut payload = vec![0u8; len];
        if tls.read_exact(&mut payload).await.is_err() {
            return;
        }
        let sid = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match h[3] {
            0x4 if h[4] & 1 == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, 0x4, 1, 0, &[]);
                let _ = tls.write_all(&ack).await;
            }
            0x1 => stream = stream.or(Some(sid)),
            0x0 => body += len,
            _ => {}
        }
        if stream.is_some() && body >= after {
            break;
        }
    }
    let sid = stream.unwrap_or(1);
    let mut out = Vec::new();
    let no_error = 0u32.to_be_bytes();
    let goaway: Vec<u8> = [0u32.to_be_bytes(), no_error].concat();
    match how {
        Refuse::Reset { .. } => {
            frame(&mut out, 0x3, 0, sid, &7u32.to_be_bytes());
            frame(&mut out, 0x7, 0, 0, &goaway);
        }
        Refuse::GoAway { .. } => frame(&mut out, 0x7, 0, 0, &goaway),
    }
    let _ = tls.write_all(&out).await;
    // What the client still sends, read (closing with it unread would reset the
    // connection, and the frames above with it), until it closes.
    let mut sink = vec![0u8; 64 << 10];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = tls.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
