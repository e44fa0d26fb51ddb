//! HTTP/2 forwarding (h2c and over TLS by ALPN): one client connection served by hyper's
//! HTTP/2 server, each request sent to a server of the listener's pool over a reused
//! HTTP/1.1 connection, or a stream of an HTTP/2 one ([`crate::http_up`]). Every HTTP/1.x connection is the fast path's ([`crate::h1`]);
//! this module also accepts connections and sends each to its path.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rampart_topology::lb::RedirectHttps;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::body::{Finish, ReqBody, RespBody};
use crate::clock::now_ns;
use crate::conn::ConnCtx;
use crate::http_up::{attempt_on, Failure};
use crate::io::{self, Busy, CountedIo};
use crate::state::{mark_tried, Fail, InFlight, Outcome, PickError, PoolState};
use crate::tls::{self, TlsTerm};
use crate::upstream::{self, ConnectError};
use crate::upstream_h2;
use crate::ListenerRt;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The client connection preface of HTTP/2.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Svc = Arc<ConnCtx>;

/// Serve one accepted client connection (on a task of its own, which also holds `guard`)
/// until it closes or times out.
///
/// HTTP/1.x is served by the fast path ([`crate::h1`]), which hands hyper's HTTP/2 server
/// the h2c preface.
///
/// A TLS listener's connections are served after the handshake (HTTP/2 by ALPN through
/// hyper); a redirecting listener answers every request with a redirect to HTTPS.
/// Each kind gets a task of its own type, so that the plain one (most connections, many
/// of them idle) is no bigger than it needs.
pub fn spawn<G: Send + 'static>(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRt>,
    worker: usize,
    guard: G,
) {
    let accepted = tokio::time::Instant::now();
    if let Some(r) = listener.cfg.redirect_https {
        tokio::spawn(async move {
            let _guard = guard;
            serve_redirect(tcp, peer, listener, r).await
        });
        return;
    }
    if let Some(term) = listener.tls.clone() {
        tokio::spawn(async move {
            let _guard = guard;
            serve_tls(tcp, peer, listener, worker, term, accepted).await
        });
        return;
    }
    let Some(ctx) = ConnCtx::new(peer, &listener, worker, None) else {
        return;
    };
    drop(listener);
    tokio::spawn(crate::h1::serve(tcp, ctx, accepted, true, guard));
}

type HandleFuture =
    Pin<Box<dyn std::future::Future<Output = Result<Response<RespBody>, Infallible>> + Send>>;

/// The per-connection service. Its future is boxed so that it is `Unpin`, which hyper's
/// `poll_without_shutdown` (used for parking) requires.
fn service(
    ctx: &Svc,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<RespBody>,
    Error = Infallible,
    Future = HandleFuture,
> + Clone {
    let ctx = ctx.clone();
    hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        Box::pin(async move {
            let started = now_ns();
            let stats = ctx.listener.stats.clone();
            let hsts = ctx.hsts().cloned();
            let log = crate::accesslog::enabled().then(|| {
                let route = route_of(&ctx.listener, &req);
                (req.method().clone(), req.uri().clone(), ctx.clone(), route)
            });
            let mut r = handle(req, ctx).await;
            if let Some(v) = hsts {
                r.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, v);
            }
            let took = now_ns().saturating_sub(started);
            stats.counters.response(r.status().as_u16(), took);
            if let Some((method, uri, ctx, route)) = log {
                let l = &ctx.listener;
                let pool = l.pool_name_for(route);
                crate::accesslog::log_response(l, pool, ctx.peer, &method, &uri, &r, took);
            }
            Ok::<_, Infallible>(r)
        }) as HandleFuture
    })
}

/// Which of the listener's routes takes `req` (the fast path's rule: the target's
/// authority, else `Host`, its path, its method and its fields).
fn route_of<B>(l: &crate::ListenerRt, req: &Request<B>) -> Option<usize> {
    if l.cfg.routes.is_empty() {
        return None;
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| req.headers().get(header::HOST).map(HeaderValue::as_bytes));
    let has = |h: &rampart_topology::lb::HeaderMatch| {
        req.headers()
            .iter()
            .any(|(n, v)| h.takes(n.as_str().as_bytes(), v.as_bytes()))
    };
    let r = rampart_topology::lb::RouteRequest {
        method: req.method().as_str().as_bytes(),
        has: &has,
    };
    l.route(host, req.uri().path().as_bytes(), &r)
}

/// Put `uri`'s path in normal form (the listener's `normalize_path`), as the fast path
/// does; false for a malformed escape.
fn normalize_uri(uri: &mut Uri) -> bool {
    let Some(pq) = uri.path_and_query() else {
        return true;
    };
    let mut out = Vec::with_capacity(pq.as_str().len());
    match rampart_topology::lb::path::normalize_target(pq.as_str().as_bytes(), &mut out) {
        Err(_) => false,
        Ok(false) => true,
        Ok(true) => {
            // Made of a valid target's bytes (decoded ones are unreserved): valid.
            let Ok(pq) = http::uri::PathAndQuery::try_from(out) else {
                return false;
            };
            let mut parts = std::mem::take(uri).into_parts();
            parts.path_and_query = Some(pq);
            match Uri::from_parts(parts) {
                Ok(u) => {
                    *uri = u;
                    true
                }
                Err(_) => false,
            }
        }
    }
}

/// The upstream target without the route's path prefix (`strip_prefix`), as the fast path
/// renders it.
fn strip_route_prefix(parts: &mut http::request::Parts, r: &rampart_topology::lb::Route) {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(pq.len());
    r.push_target(pq.as_bytes(), &mut out);
    // Bytes of a valid target minus a prefix of it: valid.
    if let Ok(pq) = http::uri::PathAndQuery::try_from(out) {
        parts.uri = Uri::from(pq);
    }
}

/// When the process stops, how long an idle keep-alive connection may still bring its
/// next request.
pub(crate) const STOP_LINGER: Duration = Duration::from_millis(1000);

/// Streams a client may have open on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 100;
/// Streams a client may reset before they were accepted, at once.
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams this side may reset for a client's errors, per connection.
const H2_MAX_LOCAL_RESETS: usize = 200;
/// The largest request head of HTTP/2 (the fast path's HTTP/1 head limit is 64 KiB).
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

/// `local`: the address the client connected to (its connection ends by GOAWAY when this
/// balancer gives that virtual address up: `crate::wake`).
pub(crate) async fn serve_h2<T>(tcp: T, peer: SocketAddr, ctx: Svc, local: Option<IpAddr>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &ctx.listener.cfg;
    let io = TokioIo::new(CountedIo::new(tcp, ctx.activity().clone()));
    // Stream floods capped (HAProxy: tune.h2.max-concurrent-streams 100): a client may
    // have 100 streams open, and one that resets streams faster than they are accepted
    // (the "rapid reset" attack, CVE-2023-44487) or makes this side reset many is sent
    // GOAWAY (ENHANCE_YOUR_CALM) and closed.
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .serve_connection(io, service(&ctx));
    tokio::pin!(conn);
    let watch = io::watch(ctx.activity().clone(), cfg.idle_timeout, None);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if is_flood(&e) {
                    tracing::info!(%peer, "HTTP/2 stream or reset flood: GOAWAY (ENHANCE_YOUR_CALM), closed");
                    if let Some(fw) = ctx.listener.firewall.as_deref() {
                        fw.stats.count(crate::firewall::Reason::H2Flood);
                    }
                } else {
                    tracing::debug!(%peer, error = %e, "h2 client connection ended with an error");
                }
            }
        }
        _ = watch => tracing::debug!(%peer, "closing idle h2 client connection"),
        _ = crate::shutdown_token().cancelled() => {
            // Stopping: GOAWAY, finish the streams in flight.
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
        _ = crate::wake::given_up_wait(local) => {
            // Its virtual address went to another balancer: the same, so that the client
            // opens its next connection there.
            tracing::debug!(%peer, "GOAWAY to an h2 client: its virtual address moved to another balancer");
            conn.as_mut().graceful_shutdown();
            let _ = conn.as_mut().await;
        }
    }
}

/// Whether hyper ended an HTTP/2 connection for a flood: its own GOAWAY with
/// ENHANCE_YOUR_CALM (too many pending or local resets).
fn is_flood(e: &hyper::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away()
                && !h2.is_remote()
                && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        src = s.source();
    }
    false
}

/// HTTPS: the TLS handshake, then HTTP/2 when the client chose it by ALPN, else HTTP/1.1.
async fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRt>,
    worker: usize,
    term: Arc<TlsTerm>,
    accepted: tokio::time::Instant,
) {
    let Some(ctx) = ConnCtx::new(peer, &listener, worker, Some(&term)) else {
        return;
    };
    let timeout = listener.cfg.header_read_timeout;
    let Some((stream, h2)) = tls::handshake(&term, tcp, peer, timeout).await else {
        return;
    };
    if h2 {
        let local = crate::h1::local_ip(&ctx, &stream);
        serve_h2(stream, peer, ctx, local).await;
    } else {
        crate::h1::serve(stream, ctx, accepted, false, ()).await;
    }
}

/// A plain-HTTP listener of a TLS one: every request gets a redirect to the same host
/// and path over HTTPS, and the connection closes.
async fn serve_redirect(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRt>,
    to: RedirectHttps,
) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let r = acme_answer(&req).unwrap_or_else(|| redirect_response(&req, to));
        std::future::ready(Ok::<_, Infallible>(r))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(listener.cfg.header_read_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), svc);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "redirect connection ended with an error");
    }
}

/// The answer to `GET /.well-known/acme-challenge/<token>` for a token an ACME order of
/// this balancer waits for (RFC 8555 section 8.3).
fn acme_answer<B>(req: &Request<B>) -> Option<Response<RespBody>> {
    if req.method() != Method::GET {
        return None;
    }
    let key_auth = crate::acme::http01(req.uri().path())?;
    let mut r = Response::new(RespBody::full(Bytes::from(key_auth), None));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(r)
}

/// `301`/`308` to `https://HOST[:PORT]/PATH?QUERY`; 400 without a usable host.
fn redirect_response<B>(req: &Request<B>, to: RedirectHttps) -> Response<RespBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        let mut r = Response::new(RespBody::full(
            Bytes::from_static(b"400 Bad Request: no Host to redirect to\n"),
            None,
        ));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let port = if to.port == 443 {
        String::new()
    } else {
        format!(":{}", to.port)
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{pq}", host.host());
    let mut r = Response::new(RespBody::full(
        Bytes::from(format!("Moved to {location}\n")),
        None,
    ));
    *r.status_mut() = StatusCode::from_u16(to.status).unwrap_or(StatusCode::PERMANENT_REDIRECT);
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A stream that first yields `prefix` (bytes already read from it), then reads `inner`.
pub(crate) struct Prefixed<T> {
    pub(crate) prefix: Bytes,
    pub(crate) inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn error_response(status: StatusCode, msg: &Bytes, busy: Busy) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(msg.clone(), Some(busy)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A redirecting route's answer (the fast path's, in hyper's types).
fn redirect_to(status: u16, location: &str, busy: Busy) -> Response<RespBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    let msg = format!(
        "{} {}: {location}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Redirect")
    );
    let mut r = error_response(status, &Bytes::from(msg), busy);
    // A request target's bytes after a checked prefix: a valid field value.
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A copy of a body-less request's head, to send it again on another server.
struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    fn build(&self) -> Request<ReqBody> {
        let mut r = Request::new(ReqBody::Empty);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

async fn handle(mut req: Request<Incoming>, ctx: Arc<ConnCtx>) -> Response<RespBody> {
    let busy = Busy::new(ctx.activity());
    // No tunnels over HTTP/2 either (the fast path answers an HTTP/1 CONNECT alike).
    // (Every answer is counted by `service`, these too.)
    if req.method() == Method::CONNECT {
        return error_response(
            StatusCode::NOT_IMPLEMENTED,
            &Bytes::from_static(b"501 Not Implemented: CONNECT is not supported\n"),
            busy,
        );
    }
    // An ACME HTTP-01 token, on a plain-HTTP listener: before the firewall and the pool.
    if ctx.listener.tls.is_none() {
        if let Some(r) = acme_answer(&req) {
            return r;
        }
    }
    // The firewall's request checks, as on the fast path (one policy for HTTP/1 and
    // HTTP/2 alike).
    if let Some(fw) = ctx.listener.firewall.as_deref() {
        if fw.checks_requests() {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let forwarded = if ctx.trusted && fw.keys_forwarded() {
                let fields: Vec<&[u8]> = req
                    .headers()
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                ctx.forwarded_client(&fields)
            } else {
                None
            };
            if let Err(r) = fw.check_request(
                ctx.peer.ip(),
                forwarded,
                req.method().as_str(),
                declared,
                std::time::Instant::now(),
            ) {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
                let mut resp = error_response(status, &Bytes::from_static(r.message), busy);
                if let Some((n, v)) = r.header {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        resp.headers_mut().insert(n, v);
                    }
                }
                return resp;
            }
        }
    }
    if ctx.listener.cfg.normalize_path && !normalize_uri(req.uri_mut()) {
        return error_response(
            StatusCode::BAD_REQUEST,
            &Bytes::from_static(b"400 Bad Request: malformed escape in the path\n"),
            busy,
        );
    }
    let route = route_of(&ctx.listener, &req);
    if let Some(r) = route.and_then(|i| ctx.listener.cfg.routes.get(i)) {
        if r.allow.is_some() {
            let fw = ctx.listener.firewall.as_deref();
            let forwarded = fw
                .filter(|fw| ctx.trusted && fw.keys_forwarded())
                .and_then(|_| {
                    let fields: Vec<&[u8]> = req
                        .headers()
                        .get_all(&X_FORWARDED_FOR)
                        .iter()
                        .map(|v| v.as_bytes())
                        .collect();
                    ctx.forwarded_client(&fields)
                });
            if let Err(r) = crate::firewall::check_route(fw, r, ctx.peer.ip(), forwarded) {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
                return error_response(status, &Bytes::from_static(r.message), busy);
            }
        }
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Some((status, location)) = r.redirect(pq.as_bytes()) {
            return redirect_to(status, &location, busy);
        }
    }
    let pool = &ctx.listener.pool_for(route).get_on(ctx.worker);
    let mut now = now_ns();
    pool.budget.on_request(now);

    let (mut parts, body) = req.into_parts();
    prepare_headers(&mut parts, &ctx);
    if let Some(r) = route.and_then(|i| ctx.listener.cfg.routes.get(i)) {
        if r.strip_prefix {
            strip_route_prefix(&mut parts, r);
        }
    }

    let body = if body.is_end_stream() {
        ReqBody::Empty
    } else {
        ReqBody::Incoming(body, Arc::new(Notify::new()), None)
    };
    // A request with no body and an idempotent method can be sent again after a failure
    // past the point of sending.
    // Only worth the copy when there is another server to try.
    let retries = pool.cfg.retries.attempts;
    let replay = (retries > 0
        && pool.servers.len() > 1
        && matches!(body, ReqBody::Empty)
        && idempotent(&parts.method))
    .then(|| Replay {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
    });
    let mut req = Some(Request::from_parts(parts, body));

    let mut tried = 0u64;
    let mut attempt = 0u32;
    let mut last_status = StatusCode::BAD_GATEWAY;
    loop {
        let slot = match pool.pick(ctx.hash_key, tried).await {
            Ok(s) => s,
            Err(PickError::NoneUp) if attempt == 0 => {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, &pool.msg_503_down, busy)
            }
            Err(PickError::NoneUp) => return failed(pool, last_status, busy),
            Err(PickError::QueueFull | PickError::QueueTimeout) => {
                return error_response(StatusCode::SERVICE_UNAVAILABLE, &pool.msg_503_queue, busy)
            }
        };
        let i = slot.server;
        tried = mark_tried(tried, i);
        let Some(r) = req.take().or_else(|| replay.as_ref().map(Replay::build)) else {
            return failed(pool, last_status, busy);
        };
        let started = now;
        match attempt_on(r, &slot, &ctx).await {
            Ok((resp, sender, lease, sent)) => {
                let s = slot.server();
                let end = now_ns();
                let took = end.saturating_sub(started);
                s.stats.response(resp.status().as_u16(), took);
                pool.on_answer(i, resp.status().as_u16(), sent, end, end);
                let served = crate::accesslog::enabled().then(|| crate::accesslog::Served {
                    server: s.name.clone(),
                    attempts: attempt + 1,
                    upstream_ns: took,
                });
                let mut r = respond(resp, (sender, lease), slot, &ctx, busy);
                if let Some(served) = served {
                    r.extensions_mut().insert(served);
                }
                return r;
            }
            Err(f) => {
                let s = slot.server();
                now = now_ns();
                let can_retry_budget =
                    |pool: &PoolState| attempt < retries && pool.budget.try_retry(now);
                match f {
                    Failure::Unsent(r, err) => {
                        if let Some(e) = &err {
                            tracing::warn!(pool = %pool.cfg.name, server = %s.name, error = %e, "connect failed");
                            pool.on_passive(i, Outcome::Failed(Fail::Connect), now);
                            last_status = match e {
                                ConnectError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                                _ => StatusCode::BAD_GATEWAY,
                            };
                        }
                        req = Some(*r);
                        drop(slot);
                        if !can_retry_budget(pool) {
                            return failed(pool, last_status, busy);
                        }
                    }
                    Failure::Sent(e) => {
                        tracing::warn!(pool = %pool.cfg.name, server = %s.name, error = %e, "upstream failed before answering");
                        pool.on_passive(i, Outcome::Failed(Fail::BeforeAnswer), now);
                        last_status = StatusCode::BAD_GATEWAY;
                        drop(slot);
                        if replay.is_none() || !can_retry_budget(pool) {
                            return failed(pool, last_status, busy);
                        }
                    }
                    Failure::Busy => {
                        return error_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &pool.msg_503_queue,
                            busy,
                        )
                    }
                    Failure::Timeout => {
                        tracing::warn!(pool = %pool.cfg.name, server = %s.name, timeout = ?pool.cfg.timeouts.response, "upstream response timed out");
                        pool.on_passive(i, Outcome::Failed(Fail::Timeout), now);
                        return error_response(StatusCode::GATEWAY_TIMEOUT, &pool.msg_504, busy);
                    }
                }
                attempt += 1;
            }
        }
    }
}

fn failed(pool: &PoolState, status: StatusCode, busy: Busy) -> Response<RespBody> {
    let msg = if status == StatusCode::GATEWAY_TIMEOUT {
        &pool.msg_504
    } else {
        &pool.msg_502
    };
    error_response(status, msg, busy)
}

fn respond(
    mut resp: Response<Incoming>,
    (sender, lease): (Option<SendRequest<ReqBody>>, Option<upstream_h2::Lease>),
    slot: InFlight,
    ctx: &ConnCtx,
    busy: Busy,
) -> Response<RespBody> {
    strip_hop_by_hop(resp.headers_mut());
    let (parts, body) = resp.into_parts();
    let mut finish = Finish {
        sender,
        lease,
        worker: ctx.worker,
        slot,
    };
    if body.is_end_stream() {
        // hyper will not poll an empty body: the exchange is over now.
        if let Some(s) = finish.sender.take() {
            upstream::checkin(
                finish.slot.server(),
                ctx.worker,
                s,
                finish.slot.pool.cfg.timeouts.idle,
            );
        }
    }
    Response::from_parts(
        parts,
        RespBody::Upstream {
            body,
            finish: Some(finish),
            busy: Some(busy),
        },
    )
}

/// Remove hop-by-hop headers: those named in `Connection`, and the fixed list.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            for t in v.as_bytes().split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.is_empty()
                    || t.eq_ignore_ascii_case(b"close")
                    || t.eq_ignore_ascii_case(b"keep-alive")
                    || t.eq_ignore_ascii_case(b"upgrade")
                {
                    continue;
                }
                // Never the Host or the length: `Connection` names end-to-end fields only.
                if let Ok(n) = HeaderName::from_bytes(t) {
                    if n != header::HOST && n != header::CONTENT_LENGTH {
                        named.push(n);
                    }
                }
            }
        }
        for n in named {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::PROXY_AUTHENTICATE);
    h.remove(header::PROXY_AUTHORIZATION);
    h.remove(header::TE);
    h.remove(header::TRAILER);
    h.remove(header::TRANSFER_ENCODING);
    h.remove(header::UPGRADE);
}

/// Make the client's request head fit for the upstream: origin-form URI, HTTP/1.1, a
/// `Host`, no hop-by-hop headers, `X-Forwarded-*`.
fn prepare_headers(parts: &mut http::request::Parts, ctx: &ConnCtx) {
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    // HTTP/2 requests carry the host in the URI's authority.
    if !h.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                h.insert(header::HOST, v);
            }
        }
    }
    if !h.contains_key(header::HOST) {
        // An HTTP/1.0 client may send none, an HTTP/1.1 server needs one: empty, as RFC 9112
        // section 3.2 has it for a target without an authority.
        h.insert(header::HOST, HeaderValue::from_static(""));
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;

    let keep = ctx.trusted;
    let fwd = ctx.listener.forwarded;
    if !keep {
        // What an untrusted client says of its own address or scheme is dropped, whether
        // the balancer adds its own or not.
        for name in [
            &X_FORWARDED_FOR,
            &X_REAL_IP,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &header::FORWARDED,
        ] {
            h.remove(name);
        }
    }
    if fwd.x_forwarded_for {
        // A trusted peer's chain is kept and appended to.
        let prev: Vec<&[u8]> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .collect();
        let mut v = Vec::with_capacity(prev.iter().map(|p| p.len() + 2).sum::<usize>() + 39);
        for p in prev {
            v.extend_from_slice(p);
            v.extend_from_slice(b", ");
        }
        ctx.push_peer_ip(&mut v);
        let v = HeaderValue::from_bytes(&v).unwrap_or_else(|_| ctx.peer_ip_value());
        h.insert(&X_FORWARDED_FOR, v);
    }
    if fwd.x_real_ip && !h.contains_key(&X_REAL_IP) {
        h.insert(&X_REAL_IP, ctx.peer_ip_value());
    }
    if fwd.x_forwarded_proto && !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if ctx.https { "https" } else { "http" };
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if fwd.x_forwarded_host && !h.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = h.get(header::HOST).cloned() {
            h.insert(&X_FORWARDED_HOST, host);
        }
    }
    if fwd.forwarded {
        let mut v = Vec::with_capacity(64);
        ctx.push_forwarded_element(&mut v, h.get(header::HOST).map(HeaderValue::as_bytes));
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            // After a trusted peer's own, which it kept: one list, in order.
            h.append(header::FORWARDED, v);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod forwarded_tests {
    use super::*;
    use crate::h1::tests::test_ctx_with;
    use rampart_topology::lb::ForwardedHeaders;

    /// The request as HTTP/2 or hyper's HTTP/1 path sends it on: the header lines.
    fn prepared(fwd: ForwardedHeaders, trusted: bool, peer: &str) -> Vec<(String, String)> {
        let req = Request::builder()
            .uri("https://a.example:8443/p")
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-real-ip", "198.51.100.1")
            .header("forwarded", "for=198.51.100.1")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        prepare_headers(&mut parts, &test_ctx_with(trusted, fwd, peer));
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    fn all(h: &[(String, String)], name: &str) -> Vec<String> {
        h.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    #[test]
    fn the_hyper_path_adds_the_same_headers_as_the_fast_path() {
        let peer = "192.0.2.7:40000";
        // The default four, from a client: its claims replaced.
        let h = prepared(ForwardedHeaders::default(), false, peer);
        assert_eq!(all(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(all(&h, "x-real-ip"), ["192.0.2.7"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["a.example:8443"]);
        assert!(all(&h, "forwarded").is_empty(), "{h:?}");
        // Only X-Forwarded-For: nothing else of the client's, nothing else of ours.
        let only_xff = ForwardedHeaders {
            x_forwarded_for: true,
            ..ForwardedHeaders::NONE
        };
        let h = prepared(only_xff, false, peer);
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["host", "x-forwarded-for"], "{h:?}");
        // From a trusted proxy: its chain appended to, its Forwarded kept and ours after.
        let fwd = ForwardedHeaders {
            x_forwarded_for: true,
            forwarded: true,
            ..ForwardedHeaders::NONE
        };
        let h = prepared(fwd, true, peer);
        assert_eq!(all(&h, "x-forwarded-for"), ["198.51.100.1, 192.0.2.7"]);
        assert_eq!(
            all(&h, "forwarded"),
            [
                "for=198.51.100.1",
                "for=192.0.2.7;proto=http;host=\"a.example:8443\""
            ]
        );
        assert_eq!(all(&h, "x-real-ip"), ["198.51.100.1"]);
        // None, from a trusted proxy: all it sent, as it came.
        let h = prepared(ForwardedHeaders::NONE, true, peer);
        assert_eq!(all(&h, "x-forwarded-for"), ["198.51.100.1"]);
        assert_eq!(all(&h, "forwarded"), ["for=198.51.100.1"]);
        // RFC 7239 from an IPv6 client.
        let only_fwd = ForwardedHeaders {
            forwarded: true,
            ..ForwardedHeaders::NONE
        };
        let h = prepared(only_fwd, false, "[2001:db8::7]:40000");
        assert_eq!(
            all(&h, "forwarded"),
            ["for=\"[2001:db8::7]\";proto=http;host=\"a.example:8443\""]
        );
    }
}
