//! HTTP/2 to a pool's servers (`tls = { alpn = ["h2", ...] }`, a server that picks `h2`).
//!
//! One multiplexed connection per server and worker (at most [`MAX_CONNS`] when
//! concurrent first requests each opened one), kept in the server's `h2` slot and shared
//! by every request of that worker: the "pool" of HTTP/2 is this one connection, whose
//! streams the requests are. A connection the server closed (GOAWAY, an error, a reset)
//! reports itself closed and is dropped at the next checkout, so the next request opens
//! a new one; one unused for longer than the pool's `idle` timeout is dropped by the
//! worker's sweep ([`crate::upstream::sweep_idle`]). The server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` is kept by the `h2` crate: requests past it wait for
//! a stream to end. hyper's `client::conn::http2` drives each connection in its own task.
//!
//! The requests come from the HTTP/1.1 fast path (`h1::up_h2`), which translates the
//! head it has already checked and rewritten, and from the HTTP/2-client path (`http.rs`,
//! [`to_upstream`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use crate::state::ServerState;
use crate::upstream::ConnectError;
use crate::upstream_tls::UpStream;

/// Most HTTP/2 connections kept per server and worker.
pub const MAX_CONNS: usize = 2;

/// HTTP/2 connections opened to servers (all pools), and requests sent over them.
pub static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
pub static STREAMS: AtomicU64 = AtomicU64::new(0);

/// A pooled HTTP/2 connection: its request handle and when it was last used (the
/// [`crate::clock`] scale).
pub struct H2Conn {
    pub sender: SendRequest<H2Body>,
    pub used_ns: u64,
}

/// A request body sent over HTTP/2: nothing, or the chunks the fast path reads from the
/// client (`Some(data)`, then `None` for the end). A channel closed before its end
/// marker is an error, so that hyper resets the stream rather than end it: a server must
/// never take a cut body for a whole one.
pub enum H2Body {
    Empty,
    /// An HTTP/2 client's body (the hyper path).
    Hyper(crate::body::ReqBody),
    Stream {
        rx: mpsc::Receiver<Option<Bytes>>,
        len: Option<u64>,
        ended: bool,
    },
}

impl H2Body {
    /// A streamed body (`len`: its declared length) and the sender that feeds it.
    pub fn channel(len: Option<u64>) -> (mpsc::Sender<Option<Bytes>>, H2Body) {
        let (tx, rx) = mpsc::channel(4);
        (
            tx,
            H2Body::Stream {
                rx,
                len,
                ended: false,
            },
        )
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            H2Body::Empty => Poll::Ready(None),
            H2Body::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(io::Error::other),
            H2Body::Stream { ended: true, .. } => Poll::Ready(None),
            H2Body::Stream { rx, ended, .. } => match rx.poll_recv(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Some(d))) => Poll::Ready(Some(Ok(Frame::data(d)))),
                Poll::Ready(Some(None)) => {
                    *ended = true;
                    Poll::Ready(None)
                }
                Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::other(
                    "the client's request body was cut short",
                )))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            H2Body::Empty => true,
            H2Body::Hyper(b) => b.is_end_stream(),
            H2Body::Stream { ended, .. } => *ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            H2Body::Empty => SizeHint::with_exact(0),
            H2Body::Hyper(b) => b.size_hint(),
            H2Body::Stream { len: Some(n), .. } => SizeHint::with_exact(*n),
            H2Body::Stream { .. } => SizeHint::default(),
        }
    }
}

/// The HTTP/2 handshake over a TLS connection whose server picked `h2`; the connection
/// is kept in `server`'s slot for `worker` (when there is room) and driven by its own task.
pub async fn handshake(
    conn: UpStream,
    server: &ServerState,
    worker: usize,
    timeout: Duration,
    now_ns: u64,
) -> Result<SendRequest<H2Body>, ConnectError> {
    let addr: SocketAddr = server.addr;
    let hs = Builder::new(TokioExecutor::new()).handshake(TokioIo::new(conn));
    let (sender, driver) = match tokio::time::timeout(timeout, hs).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Handshake { addr, source }),
        Ok(Ok(x)) => x,
    };
    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        match driver.await {
            Ok(()) => tracing::debug!(%addr, "upstream HTTP/2 connection ended"),
            Err(e) => tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended"),
        }
    });
    if let Some(Ok(mut l)) = server.h2.get(worker).map(|m| m.lock()) {
        l.retain(|c| !c.sender.is_closed());
        if l.len() < MAX_CONNS {
            l.push(H2Conn {
                sender: sender.clone(),
                used_ns: now_ns,
            });
        }
    }
    Ok(sender)
}

/// An open HTTP/2 connection of `server` for `worker`; `None` when there is none (closed
/// ones are dropped on the way).
pub fn checkout(server: &ServerState, worker: usize, now_ns: u64) -> Option<SendRequest<H2Body>> {
    let mut l = server.h2.get(worker)?.lock().ok()?;
    l.retain(|c| !c.sender.is_closed());
    let c = l.iter_mut().find(|c| c.sender.is_ready())?;
    c.used_ns = now_ns;
    Some(c.sender.clone())
}

/// Drop `worker`'s HTTP/2 connections of `server` that closed or were not used for
/// `limit` (their streams in flight end first): how many.
pub fn sweep(server: &ServerState, worker: usize, limit: Duration, now_ns: u64) -> usize {
    let Some(Ok(mut l)) = server.h2.get(worker).map(|m| m.lock()) else {
        return 0;
    };
    let before = l.len();
    let max = limit.as_nanos() as u64;
    l.retain(|c| !c.sender.is_closed() && now_ns.saturating_sub(c.used_ns) <= max);
    before - l.len()
}

/// A request of the hyper path (an HTTP/2 client's, headers already prepared) for an
/// HTTP/2 server: `https` and the `:authority` (its own, else its `Host`, else
/// `authority`) in the URI, no `Host` field.
pub fn to_upstream(
    req: http::Request<crate::body::ReqBody>,
    authority: &str,
) -> http::Request<H2Body> {
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.remove(http::header::HOST);
    let auth = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            host.as_ref()
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| authority.to_string());
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let uri = http::Uri::builder()
        .scheme("https")
        .authority(auth)
        .path_and_query(path.clone())
        .build()
        .or_else(|_| {
            http::Uri::builder()
                .scheme("https")
                .authority(authority)
                .path_and_query(path)
                .build()
        });
    if let Ok(u) = uri {
        parts.uri = u;
    }
    parts.version = http::Version::HTTP_2;
    http::Request::from_parts(parts, H2Body::Hyper(body))
}

/// [`to_upstream`] undone, for a request that was not sent (to go on another connection).
pub fn back(req: http::Request<H2Body>) -> http::Request<crate::body::ReqBody> {
    let (mut parts, body) = req.into_parts();
    if let Some(a) = parts.uri.authority() {
        if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    parts.version = http::Version::HTTP_11;
    let body = match body {
        H2Body::Hyper(b) => b,
        _ => crate::body::ReqBody::Empty,
    };
    http::Request::from_parts(parts, body)
}
