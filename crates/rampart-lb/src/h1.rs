//! The HTTP/1.1 fast path: our own codec on both sides of the proxy. This module runs a
//! connection (read a head, proxy it, stream both bodies, tunnel an upgrade); `head`
//! parses and renders heads and holds the rules every HTTP/1 request meets, `chunked`
//! scans (or decodes) the chunked coding, `buf` holds the per-thread buffer free lists,
//! `bodies` streams bodies and tunnels, `up_h2` sends a request to a server that speaks
//! HTTP/2 (a pool whose `tls` offers `h2`), `timer` times every wait of a connection on
//! one timer (no timer wheel operation per request), `forward` takes one request through
//! the pool (pick, attempt, retry, error answer).
//!
//! Every HTTP/1.x client connection (plain or over TLS) is served here, HTTP/1.0 and
//! upgrades (WebSocket) included: one codec and one policy for every HTTP/1 request. Request heads are
//! parsed with `httparse` from a per-connection buffer and rewritten straight into the
//! upstream head (hop-by-hop headers dropped, `X-Forwarded-*` set); the request's own task
//! writes it to a pooled upstream socket, reads and parses the response head, rewrites it
//! and streams both bodies through bounded buffers (`Content-Length`, chunked, and
//! until-close for responses). No task, channel or hyper state per upstream connection:
//! an idle upstream connection is its socket in the server's pool
//! ([`crate::upstream::checkin_raw`]), and it goes back there only when its response ended
//! cleanly and it may be reused.
//!
//! A connection waiting for its next request holds no buffer: on a plain socket it waits
//! for readability, then takes a 16 KiB buffer from a per-thread free list, and gives it
//! back when the exchange is over and nothing of a next request is left in it. The per
//! request work is boxed, so the waiting task is small.
//!
//! HTTP/1.0: kept alive when the client asks (`Connection: keep-alive`); its requests go
//! upstream as HTTP/1.1 (a `Host`, empty when the client sent none, as RFC 9112 section
//! 3.2 has it), so upstream connections are pooled as for any request, and a chunked answer
//! is decoded for the client, whose connection then ends with the body. An upgrade
//! (`Upgrade` named in `Connection`, HTTP/1.1, not `h2c`) goes upstream with its `Upgrade`
//! field; a `101` answer joins the two connections into a tunnel, any other answer leaves
//! the connection an HTTP one. Only the h2c preface leaves this path, for hyper's HTTP/2
//! server. `CONNECT` gets 501 (no tunnels); a `Connection` field naming more than
//! `MAX_CONN_TOKENS` fields gets 400.
//!
//! Errors: a malformed head gets 400, an oversized one 431, a head not complete in time
//! 408, an HTTP version other than 1.x 505 (the connection then closes); upstream failures
//! get the pool's 502/503/504 bodies.
//!
//! Smuggling guards (RFC 9112 section 6; tests in tests/it/h1_hardening.rs): since chunked
//! bodies go upstream byte for byte, their framing is checked strictly (CRLF only, visible
//! extensions, `name: value` trailers); a request with both `Content-Length` and
//! `Transfer-Encoding`, codings other than one `chunked`, lengths that disagree, no `Host`
//! or two get 400. Upstream heads carry one `Host`, one rendered `Content-Length` or
//! `Transfer-Encoding: chunked`, and `Connection` never removes those. A response with both
//! framings is read as chunked and its connection not reused.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

use crate::clock::ns_at;
use crate::conn::ConnCtx;
use crate::http::{self as hyper_path, Prefixed, H2_PREFACE, STOP_LINGER};
use crate::state::{mark_tried, Fail, InFlight, Outcome, PickError, PoolState};
use crate::upstream::{self, ConnectError};
use crate::upstream_h2::Pick;
use crate::upstream_tls::{self, UpStream};

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

mod answer;
mod bodies;
mod buf;
mod chunked;
mod forward;
mod head;
mod scan;
mod timer;
mod up_h2;
mod write;

use answer::*;
use bodies::*;
pub(crate) use buf::trim_every as trim_spare_buffers_every;
use buf::{Buf, Out, BUF};
use chunked::{BadChunk, Chunked};
#[cfg(test)]
use forward::may_resend;
use forward::proxy;
use head::*;
use write::{by, write_counted, write_flush};

/// A request head may grow the client's buffer to this; a bigger one gets 431.
const MAX_HEAD: usize = 64 * 1024;
/// After the server stopped reading a request body (closed, or reset): how long to wait
/// for the response it may have sent first.
const EARLY_RESPONSE_WAIT: Duration = Duration::from_secs(1);
/// A lingering close reads and drops a client's unread body for at most this long...
const LINGER: Duration = Duration::from_secs(2);
/// ... or this many bytes.
const LINGER_MAX: usize = 4 << 20;

/// A client stream the fast path serves.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Wait until the peer sent something without holding a buffer (a plain socket);
    /// streams that cannot tell (TLS) return at once.
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send + '_;

    /// The local address the client connected to (a system call).
    fn local_ip(&self) -> Option<IpAddr>;
}

impl ClientStream for TcpStream {
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        // The socket's own reader slot, not a waiter list entry in the task: smaller.
        std::future::poll_fn(move |cx| self.poll_read_ready(cx))
    }

    fn local_ip(&self) -> Option<IpAddr> {
        self.local_addr().ok().map(|a| a.ip())
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        std::future::ready(Ok(()))
    }

    fn local_ip(&self) -> Option<IpAddr> {
        self.get_ref().0.local_ip()
    }
}

/// The local address of a client connection: its listener's, unless that is a wildcard
/// (then the socket's, a system call).
pub(crate) fn local_ip<T: ClientStream>(ctx: &ConnCtx, io: &T) -> Option<IpAddr> {
    crate::wake::local_ip(ctx.listener.cfg.address.ip(), || io.local_ip())
}

/// Whether the connection came in on a virtual address this balancer gave up
/// (`crate::wake`): it closes now if idle, after its request if not.
fn on_given_up_address<T: ClientStream>(ctx: &ConnCtx, io: &T) -> bool {
    crate::wake::any_given_up() && local_ip(ctx, io).is_some_and(crate::wake::given_up)
}

/// What a wait for the client's next request came to.
#[derive(Clone, Copy)]
enum Woke {
    Ready,
    Failed,
    TimedOut,
}

impl Woke {
    fn of(r: Result<io::Result<()>, timer::Elapsed>) -> Woke {
        match r {
            Ok(Ok(())) => Woke::Ready,
            Ok(Err(_)) => Woke::Failed,
            Err(timer::Elapsed) => Woke::TimedOut,
        }
    }
}

/// What the connection does after one exchange.
enum Next {
    KeepAlive,
    Close,
    /// Close, but the client may still be sending a body nobody reads: read and drop it
    /// for a while first (a lingering close, as nginx does), so that our response is not
    /// lost to the reset that closing on unread data would send.
    Linger,
    /// The h2c preface: hyper's HTTP/2 server takes the connection.
    H2,
}

/// Serve one client connection (accepted at `accepted`) until it closes, times out, or
/// the process stops. `h2c`: an HTTP/2 prior-knowledge preface may come (plain sockets).
/// `guard` (the connection's admission permits and counters) is dropped with it.
///
/// An `async move` block rather than an `async fn`, and the guard taken here rather than
/// by a wrapping block: an `async fn` moves its arguments into locals and rustc keeps
/// both in the future, as it keeps a wrapper's captures beside the inner future. That
/// made every idle connection's task 768 bytes (tokio rounds a task to 128); without the
/// copies it is 512 (the `idle` scenario of `bench/lb`).
#[allow(clippy::manual_async_fn)] // on purpose, see above
pub(crate) fn serve<T: ClientStream, G: Send + 'static>(
    mut io: T,
    ctx: Arc<ConnCtx>,
    accepted: Instant,
    h2c: bool,
    guard: G,
) -> impl Future<Output = ()> + Send {
    async move {
        let _guard = &guard;
        let cfg = &ctx.listener.cfg;
        // The connection's one wait for a wake-up (the stop, its virtual address given
        // up), across all its waits (`UnlessWoken`); made before `stopping()` is read.
        let mut woken = std::pin::pin!(crate::wake::this_thread().notified());
        let mut buf: Option<Buf> = None;
        let mut first = true;
        // Every wait of the connection, on one timer (`timer`'s docs).
        let mut timer = std::pin::pin!(timer::idle());
        loop {
            if buf.as_ref().is_none_or(|b| b.is_empty()) {
                // Waiting for the next request: give the buffer back.
                buf = None;
                // (Its outcome as a plain enum: no `io::Error` kept across the next await.)
                let woke = if crate::stopping() {
                    None
                } else {
                    // (The start and timeout in a block of their own: not kept in the
                    // future; the wait made here, so it is kept once, inside the other.)
                    let wait = {
                        let (start, timeout) = if first {
                            (accepted, cfg.header_read_timeout)
                        } else {
                            (Instant::now(), cfg.idle_timeout)
                        };
                        timer::within(timer.as_mut(), start, timeout, io.ready())
                    };
                    timer::UnlessWoken::new(wait, woken.as_mut())
                        .await
                        .map(Woke::of)
                };
                let woke = match woke {
                    Some(w) => w,
                    // Its virtual address went to another balancer: close now, while the
                    // FIN still reaches the client from here (its next request would not).
                    None if on_given_up_address(&ctx, &io) => {
                        tracing::debug!(peer = %ctx.peer, "closing an idle client connection: its virtual address moved to another balancer");
                        return;
                    }
                    // Stopping: a client in the middle of a series of requests gets a
                    // little while to send its next one (answered with `Connection:
                    // close`), so no request races the close; an idle connection closes
                    // after that. (Awaited outside the first wait, so the two waits do not
                    // add up in the task.)
                    None if crate::stopping() => Woke::of(
                        timer::within(timer.as_mut(), Instant::now(), STOP_LINGER, io.ready())
                            .await,
                    ),
                    // Woken for another address: wait again, on a new waiter. (The idle
                    // timeout starts over: wakes are rare.)
                    None => {
                        woken.set(crate::wake::this_thread().notified());
                        if on_given_up_address(&ctx, &io) {
                            return;
                        }
                        continue;
                    }
                };
                match woke {
                    Woke::Ready => {}
                    Woke::Failed => return,
                    Woke::TimedOut => {
                        tracing::debug!(peer = %ctx.peer, "closing idle client connection");
                        return;
                    }
                }
            }
            // Allocated first, then written: the future is built in place instead of on the
            // stack and copied (a 2.9 KB memcpy per request into a cold allocation).
            let next = Box::into_pin(Box::write(
                Box::new_uninit(),
                exchange(
                    &mut io,
                    &mut buf,
                    &ctx,
                    first && h2c,
                    first,
                    accepted,
                    timer.as_mut(),
                    woken.as_mut(),
                ),
            ))
            .await;
            first = false;
            match next {
                Next::KeepAlive => {}
                Next::Close => {
                    let _ = timer::within(
                        timer.as_mut(),
                        Instant::now(),
                        Duration::from_secs(1),
                        io.shutdown(),
                    )
                    .await;
                    return;
                }
                Next::Linger => {
                    // Boxed: its buffer must not live in every connection's future.
                    Box::pin(linger(&mut io)).await;
                    return;
                }
                Next::H2 => {
                    let prefix = buf
                        .take()
                        .map_or_else(Bytes::new, |b| Bytes::copy_from_slice(b.data()));
                    let stream = Prefixed { prefix, inner: io };
                    // (Its local address found inside the box: not kept in this future.)
                    let c = ctx.clone();
                    Box::pin(async move {
                        let local = local_ip(&c, &stream.inner);
                        hyper_path::serve_h2(stream, c.peer, c, local).await
                    })
                    .await;
                    return;
                }
            }
        }
    }
}

/// A lingering close: shut our side, then read and drop what the client still sends
/// (for `LINGER`, at most `LINGER_MAX` bytes).
async fn linger<T: ClientStream>(io: &mut T) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    let until = Instant::now() + LINGER;
    let mut sink = vec![0u8; 4096];
    let mut dropped = 0usize;
    while dropped < LINGER_MAX {
        match tokio::time::timeout_at(until, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => break,
        }
    }
}

/// Read one request head and serve it. `woken`: the connection's wait for a wake-up
/// (`crate::wake`), which ends an idle wait here (a TLS stream's: it cannot wait for the
/// client's next bytes without reading them).
#[allow(clippy::too_many_arguments)]
async fn exchange<T: ClientStream>(
    io: &mut T,
    slot: &mut Option<Buf>,
    ctx: &ConnCtx,
    h2c: bool,
    first: bool,
    accepted: Instant,
    mut timer: Pin<&mut Sleep>,
    mut woken: Pin<&mut Notified<'static>>,
) -> Next {
    let cfg = &ctx.listener.cfg;
    let buf = slot.get_or_insert_with(Buf::take);
    let mut out = Out::take();
    // When the head's time started (it has `header_read_timeout`), once part of it came.
    let mut head_since = first.then_some(accepted);
    // How much of a partial head was parsed: a head trickled a byte at a time is parsed
    // again only when a line ends (it cannot end, or turn bad, before), not per read.
    let mut parsed = 0;
    let req = loop {
        if !buf.is_empty() {
            let d = buf.data();
            if h2c && H2_PREFACE.starts_with(&d[..d.len().min(H2_PREFACE.len())]) && d.len() >= 3 {
                if d.len() >= H2_PREFACE.len() {
                    return Next::H2;
                }
            } else if parsed > 0 && d.len() < MAX_HEAD && !d[parsed.min(d.len())..].contains(&b'\n')
            {
            } else {
                match parse_request(d, ctx, &mut out.0) {
                    Parsed::Partial if buf.len() >= MAX_HEAD => {
                        let _ = send_error(io, ctx, 431, MSG_431, true, false).await;
                        return Next::Close;
                    }
                    Parsed::Partial => parsed = buf.len(),
                    Parsed::Bad(status) => {
                        let msg = match status {
                            431 => MSG_431,
                            505 => MSG_505,
                            501 => MSG_501,
                            _ => MSG_400,
                        };
                        let _ = send_error(io, ctx, status, msg, true, false).await;
                        return Next::Close;
                    }
                    Parsed::Complete(mut r) => {
                        // Came in on an address given up: the client's next request goes
                        // to the new master on a new connection.
                        if on_given_up_address(ctx, io) {
                            r.close = true;
                        }
                        break r;
                    }
                    Parsed::Acme {
                        head_len,
                        key_auth,
                        close,
                    } => {
                        buf.consume(head_len);
                        let r = send_error(io, ctx, 200, key_auth.as_bytes(), close, false).await;
                        ctx.listener.stats.counters.response(200, 0);
                        return if close || r.is_err() {
                            Next::Close
                        } else {
                            Next::KeepAlive
                        };
                    }
                    Parsed::Redirect {
                        head_len,
                        status,
                        location,
                        close,
                        head,
                        log: entry,
                    } => {
                        buf.consume(head_len);
                        let msg = format!("{status} {}: {location}\n", reason(status));
                        let h = Some(("location", location.as_str()));
                        let r =
                            send_error_with(io, ctx, status, msg.as_bytes(), close, head, h).await;
                        ctx.listener.stats.counters.response(status, 0);
                        if let Some((method, target)) = entry {
                            let bytes = (!head).then_some(msg.len() as u64);
                            log(ctx, "-", &method, &target, status, bytes, 0, None);
                        }
                        return if close || r.is_err() {
                            Next::Close
                        } else {
                            Next::KeepAlive
                        };
                    }
                    Parsed::Refused(r) => {
                        // Closed after the answer: a body the client may send is never read.
                        let h = r.header.as_ref().map(|(n, v)| (*n, v.as_str()));
                        let _ = send_error_with(io, ctx, r.status, r.message, true, false, h).await;
                        ctx.listener.stats.counters.response(r.status, 0);
                        return Next::Close;
                    }
                }
            }
        }
        // Waiting idle for the next request (a TLS stream waits here, not in `serve`).
        let idle = head_since.is_none() && buf.is_empty();
        let (start, timeout) = match head_since {
            Some(t) => (Some(t), cfg.header_read_timeout),
            // (The clock is read only if the read waits.) Stopping: a little while for the
            // next request, as in `serve`.
            None if idle && crate::stopping() => (None, STOP_LINGER),
            None if idle => (None, cfg.idle_timeout),
            None => (
                Some(*head_since.insert(Instant::now())),
                cfg.header_read_timeout,
            ),
        };
        let start = || start.unwrap_or_else(Instant::now);
        let read = timer::within_io(timer.as_mut(), start, timeout, buf.read_from(io, MAX_HEAD));
        let read = if idle && !crate::stopping() {
            timer::UnlessWoken::new(read, woken.as_mut()).await
        } else {
            Some(read.await)
        };
        let Some(read) = read else {
            // Woken: its virtual address given up (close now), the stop (the next idle
            // read has `STOP_LINGER`), or another's address (wait again, on a new waiter).
            if !on_given_up_address(ctx, io) {
                if crate::stopping() {
                    continue;
                }
                woken.set(crate::wake::this_thread().notified());
                if !on_given_up_address(ctx, io) {
                    continue;
                }
            }
            tracing::debug!(peer = %ctx.peer, "closing an idle client connection: its virtual address moved to another balancer");
            return Next::Close;
        };
        match read {
            Ok(0) => return Next::Close,
            Err(e) if e.kind() != io::ErrorKind::TimedOut => return Next::Close,
            // A partial head's time starts when the wait for its rest does (above): no
            // clock read for the whole heads most reads bring.
            Ok(_) => {}
            Err(_) => {
                if !buf.is_empty() {
                    tracing::debug!(peer = %ctx.peer, "request head timed out");
                    let _ = send_error(io, ctx, 408, MSG_408, true, false).await;
                }
                return Next::Close;
            }
        }
    };
    buf.consume(req.head_len);
    proxy(io, buf, ctx, &req, &mut out.0, timer).await
}

/// How one attempt on one server ended when it did not produce a response.
enum Failure {
    /// Nothing was sent (connect failed).
    Unsent(ConnectError),
    /// The request (or part of it) was sent and the connection failed before any response
    /// byte, or the response head was malformed.
    Sent(io::Error),
    /// No response head within the response timeout.
    Timeout,
    /// The client went away or sent a malformed body: close without an answer.
    Client,
    /// The client's chunked body was malformed (nothing was answered yet).
    BadBody,
    /// The client's chunked body went past the firewall's `max_body`.
    TooLarge,
    /// The client's body came slower than the firewall's `min_upload_rate`.
    TooSlow,
    /// Every stream of the server's HTTP/2 connections stayed taken past the queue timeout.
    Busy,
}

#[allow(clippy::too_many_arguments)]
fn log(
    ctx: &ConnCtx,
    pool: &str,
    method: &str,
    path: &str,
    status: u16,
    bytes: Option<u64>,
    total_ns: u64,
    served: Option<&crate::accesslog::Served>,
) {
    crate::accesslog::write(&crate::accesslog::Entry {
        client: ctx.peer,
        listener: &ctx.listener.cfg.name,
        pool,
        method,
        path,
        status,
        bytes,
        total_ns,
        served,
    });
}

/// Account for a response whose head just came from the attempt's server (the request's
/// last byte went at `sent`, the answer's first at `first` when the head took several
/// reads): the server's and the listener's counters, the balancer's measures, the access
/// log. When the head came (and that on the data path's clock).
fn answered(
    ctx: &ConnCtx,
    req: &ReqInfo,
    at: &up_h2::At<'_>,
    info: &RespInfo,
    sent: Instant,
    first: Option<Instant>,
) -> (Instant, u64) {
    let s = at.slot.server();
    let t1 = Instant::now();
    let end = ns_at(t1.into_std());
    let took = end.saturating_sub(at.started_ns);
    s.stats.response(info.status, took);
    let pool = &at.slot.pool;
    // The server's own time: only least response time reads it.
    let (sent_ns, first_ns) = if pool.records_response_time() {
        (
            ns_at(sent.into_std()),
            first.map_or(end, |f| ns_at(f.into_std())),
        )
    } else {
        (end, end)
    };
    pool.on_answer(at.slot.server, info.status, sent_ns, first_ns, end);
    let total = end.saturating_sub(at.t0_ns);
    ctx.listener.stats.counters.response(info.status, total);
    if let Some((method, path)) = &req.log {
        let served = crate::accesslog::Served {
            server: s.name.clone(),
            attempts: at.attempt + 1,
            upstream_ns: took,
        };
        let bytes = match info.body {
            Framing::None => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let pool = &pool.cfg.name;
        log(
            ctx,
            pool,
            method,
            path,
            info.status,
            bytes,
            total,
            Some(&served),
        );
    }
    (t1, end)
}

#[cfg(test)]
pub(crate) mod tests;
