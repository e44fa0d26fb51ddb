//! HTTP/2 to a pool's servers (`tls = { alpn = ["h2", ...] }`, a server that picks `h2`).
//!
//! Multiplexed connections per server and worker, at most [`MAX_CONNS`], kept in the
//! server's `h2` slot ([`H2Slot`]) and shared by every request of that worker: the
//! "pool" of HTTP/2 is these connections, whose streams the requests are. Each request
//! holds a [`Lease`] on a stream of one connection until its answer is read, so the slot
//! knows how many streams each connection carries.
//!
//! Streams: a connection takes at most the server's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! (read from the server's SETTINGS frames as they pass, [`Watched`]; one stream until
//! the first SETTINGS came, unlimited when it names no limit). A request takes a stream
//! of the first connection with one free; when every connection is full, a new one is
//! opened while the worker has fewer than [`MAX_CONNS`] to that server (counting those
//! being opened); past that the request waits for a stream to end, at most the pool's
//! `queue` timeout, and gets a 503 (the queue's answer) past it ([`acquire`]). HAProxy
//! instead opens another connection whenever its connections' streams are all taken
//! (bounded by the server's `maxconn`); here the connections stay few and the streams
//! are queued, never sent past the server's limit. Both paths to the servers, the
//! HTTP/1.1 fast path's and the HTTP/2 clients' (`http_up.rs`), take their streams so.
//!
//! A connection the server closed (GOAWAY, an error, an end of stream) takes no new
//! stream and is dropped at the next checkout, so the next request opens a new one; one
//! unused for longer than the pool's `idle` timeout is dropped by the worker's sweep
//! ([`crate::upstream::sweep_idle`]). hyper's `client::conn::http2` drives each
//! connection in its own task.
//!
//! The requests come from the HTTP/1.1 fast path (`h1::up_h2`), which translates the
//! head it has already checked and rewritten, and from the HTTP/2-client path (`http.rs`,
//! [`to_upstream`]). Request bodies: [`crate::upstream_h2_body`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::state::ServerState;
use crate::upstream::ConnectError;
use crate::upstream_tls::UpStream;

pub use crate::upstream_h2_body::{BodyWriter, H2Body, REPLAY_MAX};

/// Most HTTP/2 connections kept per server and worker.
pub const MAX_CONNS: usize = 2;

/// HTTP/2 connections opened to servers (all pools), and requests sent over them.
pub static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
pub static STREAMS: AtomicU64 = AtomicU64::new(0);

/// What is known of one connection, shared by its reader ([`Watched`]), the slot and
/// the leases of its streams.
struct ConnInfo {
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (1 until its first SETTINGS came).
    max_streams: AtomicU32,
    /// Our streams open on it (leases).
    open: AtomicU32,
    /// The server sent GOAWAY, or the connection ended: no new stream.
    going: AtomicBool,
    /// Woken when a stream ends or the server's limit changes (the slot's).
    freed: Arc<Notify>,
}

impl ConnInfo {
    fn has_room(&self) -> bool {
        !self.going.load(Ordering::Acquire)
            && self.open.load(Ordering::Acquire) < self.max_streams.load(Ordering::Acquire)
    }
}

/// A pooled HTTP/2 connection: its request handle and when it was last used (the
/// [`crate::clock`] scale).
pub struct H2Conn {
    sender: SendRequest<H2Body>,
    used_ns: u64,
    info: Arc<ConnInfo>,
}

impl H2Conn {
    fn usable(&self) -> bool {
        !self.sender.is_closed() && !self.info.going.load(Ordering::Acquire)
    }
}

#[derive(Default)]
struct SlotConns {
    conns: Vec<H2Conn>,
    /// New connections being opened (reserved by [`Opening`]).
    opening: usize,
    /// The server's last new connection picked HTTP/1.1: no reservation to open one.
    h1: bool,
}

/// A server's HTTP/2 connections for one worker.
#[derive(Default)]
pub struct H2Slot {
    inner: Mutex<SlotConns>,
    freed: Arc<Notify>,
}

impl H2Slot {
    fn lock(&self) -> MutexGuard<'_, SlotConns> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop every connection (their streams in flight end first).
    pub fn clear(&self) {
        self.lock().conns.clear();
    }
}

/// A stream taken on a connection: given back (and a waiting request woken) on drop.
pub struct Lease {
    info: Arc<ConnInfo>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.info.open.fetch_sub(1, Ordering::AcqRel);
        self.info.freed.notify_waiters();
    }
}

fn lease(info: &Arc<ConnInfo>) -> Lease {
    info.open.fetch_add(1, Ordering::AcqRel);
    Lease { info: info.clone() }
}

/// A stream to send a request on: the connection's handle and the stream's lease (keep
/// it until the answer is read).
pub struct Stream {
    pub sender: SendRequest<H2Body>,
    pub lease: Lease,
}

/// Room reserved in a slot for a connection being opened; given back on drop unless the
/// connection joined the slot.
pub struct Opening<'a> {
    slot: Option<&'a H2Slot>,
}

impl Opening<'_> {
    /// The server picked HTTP/1.1: its next connections need no reservation.
    pub fn picked_h1(mut self) {
        if let Some(slot) = self.slot.take() {
            let mut l = slot.lock();
            l.opening = l.opening.saturating_sub(1);
            l.h1 = true;
            drop(l);
            slot.freed.notify_waiters();
        }
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut l = slot.lock();
            l.opening = l.opening.saturating_sub(1);
            drop(l);
            slot.freed.notify_waiters();
        }
    }
}

/// What [`acquire`] found.
pub enum Pick<'a> {
    /// A free stream of an open connection.
    Stream(Stream),
    /// No free stream, room for a new connection (reserved).
    Open(Opening<'a>),
}

/// Every connection's streams were taken for as long as the request may wait.
#[derive(Debug)]
pub struct Busy;

/// A stream of `server` for `worker`: a free one of an open connection, else room to
/// open a connection (within [`MAX_CONNS`]), else wait (at most `wait`) for a stream to
/// end.
pub async fn acquire(
    server: &ServerState,
    worker: usize,
    now_ns: u64,
    wait: Duration,
) -> Result<Pick<'_>, Busy> {
    let Some(slot) = server.h2.get(worker) else {
        return Ok(Pick::Open(Opening { slot: None }));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = slot.freed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut l = slot.lock();
            if let Some(s) = take_stream(&mut l, now_ns) {
                return Ok(Pick::Stream(s));
            }
            if l.h1 {
                return Ok(Pick::Open(Opening { slot: None }));
            }
            if l.conns.len() + l.opening < MAX_CONNS {
                l.opening += 1;
                return Ok(Pick::Open(Opening { slot: Some(slot) }));
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(Busy);
        }
    }
}

/// A free stream of the slot's usable connections (the others are dropped).
fn take_stream(l: &mut SlotConns, now_ns: u64) -> Option<Stream> {
    l.conns.retain(H2Conn::usable);
    let c = l.conns.iter_mut().find(|c| c.info.has_room())?;
    c.used_ns = now_ns;
    Some(Stream {
        sender: c.sender.clone(),
        lease: lease(&c.info),
    })
}

/// The HTTP/2 handshake over a TLS connection whose server picked `h2`: a stream of the
/// new connection. The connection joins `server`'s slot for `worker` (in the room
/// `opening` reserved, else when there is room) and is driven by its own task.
pub async fn handshake(
    conn: UpStream,
    server: &ServerState,
    worker: usize,
    timeout: Duration,
    now_ns: u64,
    mut opening: Option<Opening<'_>>,
) -> Result<Stream, ConnectError> {
    let addr: SocketAddr = server.addr;
    let slot = server.h2.get(worker);
    let info = Arc::new(ConnInfo {
        max_streams: AtomicU32::new(1),
        open: AtomicU32::new(0),
        going: AtomicBool::new(false),
        freed: slot.map_or_else(|| Arc::new(Notify::new()), |s| s.freed.clone()),
    });
    let io = Watched {
        inner: conn,
        info: info.clone(),
        scan: FrameScan::default(),
    };
    let hs = Builder::new(TokioExecutor::new()).handshake(TokioIo::new(io));
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
    let stream = Stream {
        sender: sender.clone(),
        lease: lease(&info),
    };
    if let Some(slot) = slot {
        let reserved = opening.as_mut().is_some_and(|o| o.slot.take().is_some());
        let mut l = slot.lock();
        l.h1 = false;
        if reserved {
            l.opening = l.opening.saturating_sub(1);
        }
        l.conns.retain(H2Conn::usable);
        if l.conns.len() + l.opening < MAX_CONNS {
            l.conns.push(H2Conn {
                sender,
                used_ns: now_ns,
                info,
            });
        }
        drop(l);
        slot.freed.notify_waiters();
    }
    Ok(stream)
}

/// Drop `worker`'s HTTP/2 connections of `server` that closed, or carry no stream and
/// were not used for `limit`: how many.
pub fn sweep(server: &ServerState, worker: usize, limit: Duration, now_ns: u64) -> usize {
    let Some(slot) = server.h2.get(worker) else {
        return 0;
    };
    let mut l = slot.lock();
    let before = l.conns.len();
    let max = limit.as_nanos() as u64;
    l.conns.retain(|c| {
        c.usable()
            && (c.info.open.load(Ordering::Acquire) > 0 || now_ns.saturating_sub(c.used_ns) <= max)
    });
    before - l.conns.len()
}

/// An HTTP/2 connection's transport, reading the server's frame headers as they pass:
/// its SETTINGS_MAX_CONCURRENT_STREAMS, its GOAWAY, its end.
struct Watched {
    inner: UpStream,
    info: Arc<ConnInfo>,
    scan: FrameScan,
}

/// Where the reader is in the server's frames.
#[derive(Default)]
struct FrameScan {
    head: [u8; 9],
    have: usize,
    /// Payload bytes left of the current frame.
    left: usize,
    /// In a SETTINGS frame (not an ACK): the entry being read.
    settings: bool,
    entry: [u8; 6],
    at: usize,
    /// Whether this SETTINGS frame named a stream limit; whether one came before.
    named: bool,
    seen: bool,
}

/// Frame types (RFC 9113 section 6) and the SETTINGS parameter the reader wants.
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

impl FrameScan {
    fn feed(&mut self, mut d: &[u8], info: &ConnInfo) {
        while !d.is_empty() {
            if self.left == 0 && self.have < 9 {
                let n = (9 - self.have).min(d.len());
                self.head[self.have..self.have + n].copy_from_slice(&d[..n]);
                self.have += n;
                d = &d[n..];
                if self.have < 9 {
                    return;
                }
                let h = self.head;
                self.left =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.settings = h[3] == SETTINGS && h[4] & 0x1 == 0;
                self.at = 0;
                self.named = false;
                if h[3] == GOAWAY {
                    info.going.store(true, Ordering::Release);
                    info.freed.notify_waiters();
                }
                if self.left == 0 {
                    self.frame_end(info);
                }
                continue;
            }
            let n = self.left.min(d.len());
            if self.settings {
                for &b in &d[..n] {
                    self.entry[self.at] = b;
                    self.at += 1;
                    if self.at == 6 {
                        self.at = 0;
                        let id = u16::from_be_bytes([self.entry[0], self.entry[1]]);
                        if id == MAX_CONCURRENT_STREAMS {
                            let v = u32::from_be_bytes([
                                self.entry[2],
                                self.entry[3],
                                self.entry[4],
                                self.entry[5],
                            ]);
                            info.max_streams.store(v, Ordering::Release);
                            self.named = true;
                        }
                    }
                }
            }
            self.left -= n;
            d = &d[n..];
            if self.left == 0 {
                self.frame_end(info);
            }
        }
    }

    fn frame_end(&mut self, info: &ConnInfo) {
        if self.settings {
            if !self.seen && !self.named {
                // No limit named in the first SETTINGS: unlimited (RFC 9113 6.5.2).
                info.max_streams.store(u32::MAX, Ordering::Release);
            }
            self.seen = true;
            info.freed.notify_waiters();
        }
        self.settings = false;
        self.have = 0;
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                me.scan.feed(&buf.filled()[before..], &me.info);
            }
            Poll::Ready(r) if r.is_err() || room => {
                // The end of the connection, or an error.
                me.info.going.store(true, Ordering::Release);
                me.info.freed.notify_waiters();
            }
            Poll::Ready(_) | Poll::Pending => {}
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Whether an error is the server refusing a stream it did not process, so that the
/// request may go again (RFC 9113 sections 8.7 and 6.8): a reset with `REFUSED_STREAM`,
/// or the server's GOAWAY for a stream above its last stream id (or opened after it; `h2`
/// gives a stream the GOAWAY's error only then: one cut by the connection's end gets an
/// I/O error).
pub fn unprocessed(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|e| {
            e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[ty, flags, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn info() -> ConnInfo {
        ConnInfo {
            max_streams: AtomicU32::new(1),
            open: AtomicU32::new(0),
            going: AtomicBool::new(false),
            freed: Arc::new(Notify::new()),
        }
    }

    #[test]
    fn the_servers_stream_limit_and_goaway_are_read_as_frames_pass() {
        let i = info();
        let mut scan = FrameScan::default();
        // A DATA frame, then SETTINGS (header table size, max streams 7), in odd pieces.
        let mut bytes = frame(0x0, 0, &[9; 20]);
        bytes.extend(frame(SETTINGS, 0, &[0, 1, 0, 0, 16, 0, 0, 3, 0, 0, 0, 7]));
        for piece in bytes.chunks(5) {
            scan.feed(piece, &i);
        }
        assert_eq!(i.max_streams.load(Ordering::Acquire), 7);
        // An ACK carries no settings; a later SETTINGS without the limit keeps it.
        scan.feed(&frame(SETTINGS, 1, &[]), &i);
        scan.feed(&frame(SETTINGS, 0, &[0, 4, 0, 1, 0, 0]), &i);
        assert_eq!(i.max_streams.load(Ordering::Acquire), 7);
        assert!(!i.going.load(Ordering::Acquire));
        scan.feed(&frame(GOAWAY, 0, &[0; 8]), &i);
        assert!(i.going.load(Ordering::Acquire));
        // A first SETTINGS naming no limit: unlimited.
        let i = info();
        FrameScan::default().feed(&frame(SETTINGS, 0, &[]), &i);
        assert_eq!(i.max_streams.load(Ordering::Acquire), u32::MAX);
        assert!(i.has_room());
    }
}
