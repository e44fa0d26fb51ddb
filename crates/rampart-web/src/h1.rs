//! The connection loop: a lean HTTP/1.1 path for static files, hyper for the rest.
//!
//! Every accepted connection starts here. Each request head is parsed with `httparse`;
//! a plain `GET`/`HEAD` (HTTP/1.1, no body, no upgrade, no `Expect`) of a path that is
//! not a route of the application (`/healthz`, `/readyz`, `/metrics`, the guestbook's)
//! and names a static file is answered right here from the file cache
//! ([`crate::files`]): the header lines come pre-rendered with the cached representation,
//! a small file's body is a copy of cached bytes into the one write, a big file goes out
//! with `sendfile(2)` (zero-copy) after the head. Keep-alive and pipelining are honoured.
//! Anything else (another method, a body, HTTP/1.0, h2c, a 404, a redirect, a malformed
//! head...) hands the connection, with the bytes already read, to hyper and the axum
//! application for the rest of its life, so every behaviour stays hyper's and axum's.
//!
//! A listener with TLS ([`crate::tls`]) looks at each connection's first byte: a TLS
//! handshake goes through rustls (within `header_read_timeout`) and the TLS stream to
//! hyper; plain HTTP goes to hyper too (not the fast path), which answers only the admin
//! paths (`crate::around`).
//!
//! Shutdown: a fast-path connection closes when idle or after the response in progress;
//! a hyper connection shuts down gracefully.
//!
//! Timeouts (slowloris): on the fast path a request head must be complete within
//! `header_read_timeout` of its first byte (of the accept, for a connection's first
//! request), else the client gets a 408 and the connection closes (silently when nothing
//! at all came); a keep-alive connection with no byte of a next request for
//! `idle_timeout` closes; a response write that makes no progress for `idle_timeout`
//! (a client that stopped reading) is abandoned and the connection closed. On the hyper
//! path (after a hand-over) hyper's header timer applies, set to `idle_timeout`: it also
//! runs while a keep-alive connection waits for its next request, and an idle connection
//! must outlive the balancer's pooled ones.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::files::{Conds, Found, Outcome, Rep, RepBody};
use crate::metrics::{Class, Kind, KindLabel, ReqLabels, TransportLabel};
use crate::{Node, Transport};

/// Request heads bigger than this go to hyper (which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed on the fast path; more go to hyper.
const MAX_HEADERS: usize = 48;

/// What every connection of a node shares.
pub(crate) struct Shared {
    node: Arc<Node>,
    app: axum::Router,
    builder: Builder<TokioExecutor>,
    served_by: Bytes,
    counters: [Counter; 4],
    duration: Histogram,
}

impl Shared {
    pub(crate) fn new(node: Arc<Node>, app: axum::Router) -> Shared {
        let m = &node.metrics;
        let counter = |class| {
            m.requests
                .get_or_create(&ReqLabels {
                    kind: Kind::Static,
                    class,
                })
                .clone()
        };
        let counters = [
            counter(Class::C2xx),
            counter(Class::C3xx),
            counter(Class::C4xx),
            counter(Class::C5xx),
        ];
        let duration = m
            .duration
            .get_or_create(&KindLabel { kind: Kind::Static })
            .clone();
        let mut served_by = Vec::new();
        served_by.extend_from_slice(node.served_by.as_str().as_bytes());
        served_by.extend_from_slice(b": ");
        served_by.extend_from_slice(node.served_by_value.as_bytes());
        served_by.extend_from_slice(b"\r\n");
        // hyper's one header timer also runs while a keep-alive connection waits for its
        // next request, so it gets `idle_timeout`: a balancer's pooled connection must not
        // be closed under it sooner (the lb keeps them 30 s). A connection's first head is
        // always read (and timed with `header_read_timeout`) by the fast path.
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(node.idle_timeout.max(node.header_read_timeout));
        Shared {
            node,
            app,
            builder,
            served_by: Bytes::from(served_by),
            counters,
            duration,
        }
    }
}

/// Serve one accepted connection until it closes or `stop` fires.
pub(crate) async fn connection(
    sh: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<()>,
) {
    let m = &sh.node.metrics;
    if let Some(acceptor) = sh.node.tls.as_ref().map(|t| t.acceptor.clone()) {
        let limit = sh.node.header_read_timeout;
        let mut first = [0u8; 1];
        match tokio::time::timeout(limit, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == crate::tls::HANDSHAKE_RECORD => {
                match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        m.connections
                            .get_or_create(&TransportLabel { transport: "tls" })
                            .inc();
                        return handoff(sh, tls, BytesMut::new(), peer, stop, Transport::Tls).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
                m.tls_handshake_failures.inc();
                return;
            }
            Ok(Ok(n)) if n > 0 => {
                m.connections
                    .get_or_create(&TransportLabel { transport: "plain" })
                    .inc();
                return handoff(sh, stream, BytesMut::new(), peer, stop, Transport::Plain).await;
            }
            // Closed, failed, or silent past the head timeout.
            _ => return,
        }
    }
    m.connections
        .get_or_create(&TransportLabel { transport: "plain" })
        .inc();
    fast_path(sh, stream, peer, stop).await
}

/// The plain-HTTP loop: static files answered here, the rest handed to hyper.
async fn fast_path(
    sh: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let (head_timeout, idle_timeout) = (sh.node.header_read_timeout, sh.node.idle_timeout);
    // The first request's head is timed from the accept.
    let mut head_deadline = Some(Instant::now() + head_timeout);
    loop {
        // Read until a whole request head is buffered.
        let idle_deadline = Instant::now() + idle_timeout;
        let answer = loop {
            if !buf.is_empty() {
                match decide(&sh, &buf, &mut out) {
                    Decision::Partial if buf.len() < MAX_HEAD => {}
                    Decision::Partial | Decision::Hyper => {
                        return handoff(sh, stream, buf, peer, stop, Transport::Plain).await;
                    }
                    Decision::Answer(a) => break a,
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let idle = buf.is_empty();
            if !idle && head_deadline.is_none() {
                head_deadline = Some(Instant::now() + head_timeout);
            }
            let deadline = head_deadline.unwrap_or(idle_deadline);
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = stop.changed(), if idle => return,
                _ = tokio::time::sleep_until(deadline) => {
                    if !idle {
                        // A head begun and not finished in time: 408, then close.
                        tracing::debug!(%peer, "request head timed out");
                        let _ = write_all(&stream, TIMEOUT_408, false, idle_timeout).await;
                    }
                    let _ = timed(idle_timeout, stream.shutdown()).await;
                    return;
                }
            }
        };
        head_deadline = None;
        let started = std::time::Instant::now();
        sh.node.metrics.in_flight.inc();
        let r = respond(&stream, &out, &answer, idle_timeout).await;
        sh.node.metrics.in_flight.dec();
        sh.duration.observe(started.elapsed().as_secs_f64());
        sh.counters[answer.class as usize].inc();
        buf.advance(answer.consumed);
        if r.is_err() || answer.close || !matches!(stop.has_changed(), Ok(false)) {
            if let Err(e) = &r {
                tracing::debug!(%peer, error = %e, "response not sent; closing");
            }
            let _ = timed(idle_timeout, stream.shutdown()).await;
            return;
        }
    }
}

/// The answer to a request head that did not arrive in time.
const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// `f`, or a `TimedOut` error after `limit`.
async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
    }
}

/// A request answered on the fast path: the head is in `out`, then maybe a body.
struct Answer {
    /// Bytes of the request consumed.
    consumed: usize,
    close: bool,
    class: Class,
    body: Option<BodyOut>,
}

/// A body sent after the head (small ones are copied into the head's buffer instead).
enum BodyOut {
    /// Cached bytes, too big to copy.
    Mem(Bytes),
    /// `count` bytes of the representation's file from `start`, by sendfile(2).
    File(Arc<Rep>, u64, u64),
}

/// Bodies up to this size are copied behind the head into one write; bigger ones are
/// written from the cache directly (so that a connection's buffer never grows past it).
const COPY_MAX: usize = 16 * 1024;

enum Decision {
    /// More bytes needed for a whole head.
    Partial,
    /// Not for the fast path: hand the connection to hyper.
    Hyper,
    Answer(Answer),
}

/// Parse the head at the start of `buf` and, when the fast path answers it, render the
/// response head into `out`.
fn decide(sh: &Shared, buf: &[u8], out: &mut Vec<u8>) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Decision::Partial,
        Err(_) => return Decision::Hyper,
    };
    let head = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Decision::Hyper,
    };
    if req.version != Some(1) {
        return Decision::Hyper;
    }
    let Some(target) = req.path else {
        return Decision::Hyper;
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if !path.starts_with('/') || is_app_route(&sh.node, path) {
        return Decision::Hyper;
    }
    let mut conds = Conds::default();
    let mut ae = "";
    let mut close = false;
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Decision::Hyper;
            }
        } else if n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("upgrade")
            || n.eq_ignore_ascii_case("expect")
        {
            return Decision::Hyper;
        } else if n.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&c| c == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Decision::Hyper;
                }
            }
        } else if n.eq_ignore_ascii_case("accept-encoding") {
            match std::str::from_utf8(h.value) {
                Ok(v) => ae = v,
                Err(_) => return Decision::Hyper,
            }
        } else if n.len() >= 5 && (n.as_bytes()[0] | 0x20 == b'i' || n.as_bytes()[0] | 0x20 == b'r')
        {
            let Ok(v) = std::str::from_utf8(h.value) else {
                return Decision::Hyper;
            };
            conds.set(n, v);
        }
    }
    let rep = match sh.node.files.lookup(path, ae) {
        Ok(Found::Rep(r)) => r,
        // Redirects, 400s and 404s (and what the upstream may answer): hyper's.
        _ => return Decision::Hyper,
    };
    let outcome = crate::files::evaluate(&rep, &conds);
    out.clear();
    let (status, class): (&[u8], Class) = match outcome {
        Outcome::Full => (b"HTTP/1.1 200 OK\r\n", Class::C2xx),
        Outcome::Partial { .. } => (b"HTTP/1.1 206 Partial Content\r\n", Class::C2xx),
        Outcome::NotModified => (b"HTTP/1.1 304 Not Modified\r\n", Class::C3xx),
        Outcome::PreconditionFailed => (b"HTTP/1.1 412 Precondition Failed\r\n", Class::C4xx),
        Outcome::Unsatisfiable => (b"HTTP/1.1 416 Range Not Satisfiable\r\n", Class::C4xx),
    };
    out.extend_from_slice(status);
    push_date(out);
    out.extend_from_slice(&rep.validators);
    let mut body = None;
    match outcome {
        Outcome::NotModified => {}
        Outcome::PreconditionFailed => out.extend_from_slice(b"content-length: 0\r\n"),
        Outcome::Unsatisfiable => {
            out.extend_from_slice(&rep.content);
            push_fmt(
                out,
                format_args!(
                    "content-range: bytes */{}\r\ncontent-length: 0\r\n",
                    rep.len
                ),
            );
        }
        Outcome::Full => {
            out.extend_from_slice(&rep.content);
            out.extend_from_slice(&rep.length_line);
            body = Some((0, rep.len));
        }
        Outcome::Partial { start, end } => {
            out.extend_from_slice(&rep.content);
            push_fmt(
                out,
                format_args!(
                    "content-range: bytes {start}-{end}/{}\r\ncontent-length: {}\r\n",
                    rep.len,
                    end - start + 1
                ),
            );
            body = Some((start, end - start + 1));
        }
    }
    out.extend_from_slice(&sh.served_by);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body = match body {
        Some((start, count)) if !head && count > 0 => match &rep.body {
            RepBody::Mem(m) => {
                let (s, e) = (start as usize, (start + count) as usize);
                if e > m.len() {
                    return Decision::Hyper;
                }
                if e - s <= COPY_MAX {
                    out.extend_from_slice(&m[s..e]);
                    None
                } else {
                    Some(BodyOut::Mem(m.slice(s..e)))
                }
            }
            RepBody::File(_) => Some(BodyOut::File(rep.clone(), start, count)),
        },
        _ => None,
    };
    Decision::Answer(Answer {
        consumed,
        close,
        class,
        body,
    })
}

/// The application's own routes (axum's, matched before the static fallback).
fn is_app_route(node: &Node, path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
        || (node.guestbook.is_some() && (path == "/" || path.starts_with("/api/messages")))
}

/// Write the head (and a small body) in `out`, then a file's bytes with sendfile(2).
/// Every wait for the socket to take more bytes is bounded by `stall` (no progress that
/// long: `TimedOut`).
async fn respond(stream: &TcpStream, out: &[u8], a: &Answer, stall: Duration) -> io::Result<()> {
    match &a.body {
        None => write_all(stream, out, false, stall).await,
        Some(BodyOut::Mem(bytes)) => {
            write_all(stream, out, true, stall).await?;
            write_all(stream, bytes, false, stall).await
        }
        Some(BodyOut::File(rep, start, count)) => {
            write_all(stream, out, true, stall).await?;
            let RepBody::File(file) = &rep.body else {
                return Err(io::Error::other("not a file body"));
            };
            send_file(stream, file, *start, *count, stall).await
        }
    }
}

/// Write all of `data`; `more`: more follows at once (MSG_MORE: one segment with it).
/// Fails with `TimedOut` when the socket takes nothing for `stall`.
async fn write_all(
    stream: &TcpStream,
    mut data: &[u8],
    more: bool,
    stall: Duration,
) -> io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    // MSG_MORE (0x8000 in linux/socket.h; nix 0.29 does not name it): hold the head
    // back so that it leaves in the same segment as the start of the file.
    const MSG_MORE: MsgFlags = MsgFlags::from_bits_retain(0x8000);
    let flags = if more {
        MSG_MORE | MsgFlags::MSG_NOSIGNAL
    } else {
        MsgFlags::MSG_NOSIGNAL
    };
    while !data.is_empty() {
        timed(stall, stream.writable()).await?;
        match stream.try_io(Interest::WRITABLE, || {
            send(stream.as_raw_fd(), data, flags).map_err(io::Error::from)
        }) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `count` bytes of `file` from `start` to the socket, zero-copy.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    start: u64,
    count: u64,
    stall: Duration,
) -> io::Result<()> {
    let end = start + count;
    let mut off = i64::try_from(start).map_err(io::Error::other)?;
    while (off as u64) < end {
        timed(stall, stream.writable()).await?;
        let want = usize::try_from((end - off as u64).min(1 << 30)).unwrap_or(1 << 30);
        match stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(stream, file, Some(&mut off), want)
                .map_err(io::Error::from)
        }) {
            // The file shrank under us: the promised length cannot be sent; close.
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn push_fmt(out: &mut Vec<u8>, args: std::fmt::Arguments) {
    use std::io::Write;
    let _ = out.write_fmt(args);
}

thread_local! {
    static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// The `date` header line, formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            d.0 = secs;
            d.1.clear();
            d.1.extend_from_slice(b"date: ");
            d.1.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            d.1.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&d.1);
    });
}

/// Give the connection (and the bytes read from it) to hyper and the axum application.
async fn handoff<S>(
    sh: Arc<Shared>,
    stream: S,
    buf: BytesMut,
    peer: SocketAddr,
    mut stop: watch::Receiver<()>,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Rewind {
        pre: buf.freeze(),
        inner: stream,
    });
    let svc = WithPeer {
        inner: TowerToHyperService::new(sh.app.clone()),
        peer,
        transport,
    };
    let conn = sh.builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The axum application with the peer address as `ConnectInfo` (what the proxy needs)
/// and the connection's [`Transport`].
#[derive(Clone)]
struct WithPeer {
    inner: TowerToHyperService<axum::Router>,
    peer: SocketAddr,
    transport: Transport,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for WithPeer {
    type Response = <TowerToHyperService<axum::Router> as hyper::service::Service<
        http::Request<hyper::body::Incoming>,
    >>::Response;
    type Error = <TowerToHyperService<axum::Router> as hyper::service::Service<
        http::Request<hyper::body::Incoming>,
    >>::Error;
    type Future = <TowerToHyperService<axum::Router> as hyper::service::Service<
        http::Request<hyper::body::Incoming>,
    >>::Future;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(self.transport);
        self.inner.call(req)
    }
}

/// A socket with bytes already read from it put back in front.
struct Rewind<S> {
    pre: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
