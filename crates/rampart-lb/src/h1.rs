//! The HTTP/1.1 fast path: our own codec on both sides of the proxy.
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

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::ns_at;
use crate::http::{self as hyper_path, ConnCtx, Prefixed, H2_PREFACE, STOP_LINGER};
use crate::state::{mark_tried, Fail, InFlight, Outcome, PickError, PoolState};
use crate::upstream::{self, ConnectError};
use crate::upstream_tls::{self, UpStream};

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

/// Size of a read buffer when it is taken: enough for almost every head and small body.
const SMALL: usize = 4 * 1024;
/// What a buffer grows to while streaming a body that fills it (HAProxy's `bufsize`).
const BUF: usize = 16 * 1024;
/// A request head may grow the client's buffer to this; a bigger one gets 431.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head; more get 431 (request) or 502 (response).
const MAX_HEADERS: usize = 128;
/// Small buffers (and head scratch vectors) kept per thread for reuse: more than the
/// exchanges in flight at once under load, so that buffers are not freed and allocated
/// again per request (p99 1.20x -> 1.00x of HAProxy, CPU 0.92x -> 0.87x, in the bench);
/// at most 2 MiB per thread.
const FREE_MAX: usize = 256;
/// Big (streaming) buffers kept per thread: at most 512 KiB.
const FREE_MAX_BIG: usize = 32;
/// Hop-by-hop header names a request's `Connection` may list; more go to hyper.
const MAX_CONN_TOKENS: usize = 16;
/// After the server stopped reading a request body (closed, or reset): how long to wait
/// for the response it may have sent first.
const EARLY_RESPONSE_WAIT: Duration = Duration::from_secs(1);
/// A lingering close reads and drops a client's unread body for at most this long...
const LINGER: Duration = Duration::from_secs(2);
/// ... or this many bytes.
const LINGER_MAX: usize = 4 << 20;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_SMALL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_OUT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static STOP: &'static CancellationToken =
        Box::leak(Box::new(crate::shutdown_token().child_token()));
}

/// This thread's view of the process-wide stop token (its own waiter list).
fn stop_token() -> &'static CancellationToken {
    STOP.with(|s| *s)
}

/// A byte buffer from the thread's free lists: bytes `start..len` of `v` are unread, its
/// capacity is the room (never zeroed: reads go into the spare capacity). It starts at
/// [`SMALL`] and grows when a head needs it or a read fills it.
pub(crate) struct Buf {
    v: Vec<u8>,
    start: usize,
    /// The last read filled the buffer: grow before the next one.
    full: bool,
}

impl Buf {
    fn take() -> Buf {
        let v = FREE_SMALL
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(SMALL));
        Buf {
            v,
            start: 0,
            full: false,
        }
    }

    fn grow(&mut self, max: usize) {
        let cap = self.v.capacity();
        let n = if cap < BUF {
            BUF.min(max)
        } else {
            (cap * 2).min(max)
        };
        if n == BUF {
            if let Some(mut big) = FREE.try_with(|f| f.borrow_mut().pop()).ok().flatten() {
                big.extend_from_slice(&self.v[self.start..]);
                self.start = 0;
                let small = std::mem::replace(&mut self.v, big);
                give_back(small);
                return;
            }
        }
        self.v.reserve_exact(n.saturating_sub(self.v.len()));
    }

    fn data(&self) -> &[u8] {
        &self.v[self.start..]
    }

    fn len(&self) -> usize {
        self.v.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.v.len()
    }

    fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.v.len() {
            self.start = 0;
            self.v.clear();
        }
    }

    /// Make room at the end (compacting, then growing up to `max`); false when full.
    fn make_room(&mut self, max: usize) -> bool {
        if self.full && self.v.capacity() < max {
            self.full = false;
            self.grow(max);
        }
        if self.v.len() < self.v.capacity() {
            return true;
        }
        if self.start > 0 {
            self.v.drain(..self.start);
            self.start = 0;
            return true;
        }
        if self.v.capacity() < max {
            self.grow(max);
            return true;
        }
        false
    }

    /// One read from `r` into the free space; 0 at end of stream.
    async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> io::Result<usize> {
        use bytes::BufMut;
        if !self.make_room(max) {
            return Err(io::Error::other("buffer full"));
        }
        let room = self.v.capacity() - self.v.len();
        let n = r.read_buf(&mut (&mut self.v).limit(room)).await?;
        self.full = self.v.len() == self.v.capacity();
        Ok(n)
    }
}

/// Keep a buffer of one of the two pooled sizes for reuse.
fn give_back(mut v: Vec<u8>) {
    v.clear();
    let (list, max) = match v.capacity() {
        SMALL => (&FREE_SMALL, FREE_MAX),
        BUF => (&FREE, FREE_MAX_BIG),
        _ => return,
    };
    let _ = list.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < max {
            f.push(v);
        }
    });
}

impl Drop for Buf {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.v));
    }
}

/// A scratch vector for rendered heads, from the thread's free list.
struct Out(Vec<u8>);

/// Capacity of a new [`Out`]; one that grew past [`MAX_HEAD`] is not kept.
const OUT: usize = 4096;

impl Out {
    fn take() -> Out {
        let v = FREE_OUT
            .try_with(|f| f.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(OUT));
        Out(v)
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.0.capacity() <= MAX_HEAD + BUF {
            let mut v = std::mem::take(&mut self.0);
            v.clear();
            let _ = FREE_OUT.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < FREE_MAX {
                    f.push(v);
                }
            });
        }
    }
}

/// A client stream the fast path serves.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Wait until the peer sent something without holding a buffer (a plain socket);
    /// streams that cannot tell (TLS) return at once.
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
}

impl ClientStream for TcpStream {
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        // The socket's own reader slot, not a waiter list entry in the task: smaller.
        std::future::poll_fn(move |cx| self.poll_read_ready(cx))
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    fn ready(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        std::future::ready(Ok(()))
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
pub(crate) async fn serve<T: ClientStream>(
    mut io: T,
    ctx: Arc<ConnCtx>,
    accepted: Instant,
    h2c: bool,
) {
    let cfg = &ctx.listener.cfg;
    let stop = stop_token();
    let mut buf: Option<Buf> = None;
    let mut first = true;
    loop {
        if buf.as_ref().is_none_or(|b| b.is_empty()) {
            // Waiting for the next request: give the buffer back.
            buf = None;
            let deadline = if first {
                accepted + cfg.header_read_timeout
            } else {
                Instant::now() + cfg.idle_timeout
            };
            let ready = tokio::select! {
                r = tokio::time::timeout_at(deadline, io.ready()) => Some(r),
                _ = stop.cancelled() => None,
            };
            // Stopping: a client in the middle of a series of requests gets a little
            // while to send its next one (answered with `Connection: close`), so no
            // request races the close; an idle connection closes after that.
            // (Awaited outside the select, so the two waits do not add up in the task.)
            let ready = match ready {
                Some(r) => r,
                None => tokio::time::timeout(STOP_LINGER, io.ready()).await,
            };
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!(peer = %ctx.peer, "closing idle client connection");
                    return;
                }
            }
        }
        let next = Box::pin(exchange(
            &mut io,
            &mut buf,
            &ctx,
            first && h2c,
            first,
            accepted,
        ))
        .await;
        first = false;
        match next {
            Next::KeepAlive => {}
            Next::Close => {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
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
                Box::pin(hyper_path::serve_h2(stream, ctx.peer, ctx.clone())).await;
                return;
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

/// Read one request head and serve it.
async fn exchange<T: ClientStream>(
    io: &mut T,
    slot: &mut Option<Buf>,
    ctx: &ConnCtx,
    h2c: bool,
    first: bool,
    accepted: Instant,
) -> Next {
    let cfg = &ctx.listener.cfg;
    let buf = slot.get_or_insert_with(Buf::take);
    let mut out = Out::take();
    let mut head_deadline = first.then(|| accepted + cfg.header_read_timeout);
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
                    Parsed::Complete(r) => break r,
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
        let deadline = match head_deadline {
            Some(d) => d,
            None if buf.is_empty() => Instant::now() + cfg.idle_timeout,
            None => *head_deadline.insert(Instant::now() + cfg.header_read_timeout),
        };
        match by(deadline, buf.read_from(io, MAX_HEAD)).await {
            Ok(0) => return Next::Close,
            Err(e) if e.kind() != io::ErrorKind::TimedOut => return Next::Close,
            Ok(_) => {
                if head_deadline.is_none() && !buf.is_empty() {
                    head_deadline = Some(Instant::now() + cfg.header_read_timeout);
                }
            }
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
    proxy(io, buf, ctx, &req, &mut out.0).await
}

const MSG_400: &[u8] = b"400 Bad Request: malformed request\n";
const MSG_408: &[u8] = b"408 Request Timeout: the request head did not arrive in time\n";
const MSG_431: &[u8] = b"431 Request Header Fields Too Large\n";
const MSG_501: &[u8] = b"501 Not Implemented: CONNECT is not supported\n";
const MSG_505: &[u8] = b"505 HTTP Version Not Supported\n";

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (responses only).
    Close,
}

/// A parsed request head (its upstream rendering is in the `out` buffer).
#[derive(Debug)]
struct ReqInfo {
    head_len: usize,
    body: Framing,
    /// The client asked to close after this exchange.
    close: bool,
    /// `Expect: 100-continue` (answered here, not forwarded).
    expect: bool,
    /// Idempotent without a body: may be sent again after a failure past sending.
    replayable: bool,
    head: bool,
    /// Method and target, only when access logging is on.
    log: Option<(String, String)>,
    /// An HTTP/1.0 client: its answer is never chunked.
    http10: bool,
    /// The client asks for an upgrade (sent upstream with it; a `101` makes a tunnel).
    upgrade: bool,
}

#[derive(Debug)]
enum Parsed {
    Partial,
    Complete(ReqInfo),
    Bad(u16),
    /// The listener's firewall refuses the request.
    Refused(crate::firewall::Refusal),
    /// An ACME HTTP-01 token an order waits for: its key authorization, answered here.
    Acme {
        head_len: usize,
        key_auth: String,
        close: bool,
    },
}

/// A header name's meaning to the proxy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum H {
    Other,
    /// Always dropped (hop-by-hop).
    Hop,
    Connection,
    ContentLength,
    TransferEncoding,
    Host,
    Upgrade,
    Expect,
    Xff,
    Xfp,
    Xfh,
    /// `Forwarded` (RFC 7239): kept from trusted peers only.
    Fwd,
    /// `X-Real-IP`: kept from trusted peers, else set to the peer's address.
    Xri,
    Hsts,
}

fn classify(name: &str) -> H {
    let n = name.as_bytes();
    let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
    match n.len() {
        2 if is("te") => H::Hop,
        4 if is("host") => H::Host,
        6 if is("expect") => H::Expect,
        7 if is("upgrade") => H::Upgrade,
        7 if is("trailer") => H::Hop,
        9 if is("forwarded") => H::Fwd,
        9 if is("x-real-ip") => H::Xri,
        10 if is("connection") => H::Connection,
        10 if is("keep-alive") => H::Hop,
        14 if is("content-length") => H::ContentLength,
        15 if is("x-forwarded-for") => H::Xff,
        16 if is("proxy-connection") => H::Hop,
        16 if is("x-forwarded-host") => H::Xfh,
        17 if is("transfer-encoding") => H::TransferEncoding,
        17 if is("x-forwarded-proto") => H::Xfp,
        18 if is("proxy-authenticate") => H::Hop,
        19 if is("proxy-authorization") => H::Hop,
        25 if is("strict-transport-security") => H::Hsts,
        _ => H::Other,
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value (possibly a list of equal values); `None` when invalid, also
/// when empty (next to a valid one, an empty field was read as absent).
fn content_length(v: &[u8], prev: Option<u64>) -> Option<u64> {
    let mut n = prev;
    let mut any = false;
    for t in tokens(v) {
        any = true;
        if t.len() > 18 || !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let x = t.iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0'));
        if n.is_some_and(|p| p != x) {
            return None;
        }
        n = Some(x);
    }
    n.filter(|_| any)
}

/// Whether the last transfer coding is `chunked`.
fn ends_chunked(v: &[u8]) -> bool {
    tokens(v)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Whether a request's `Transfer-Encoding` value is exactly `chunked`.
fn only_chunked(v: &[u8]) -> bool {
    let mut t = tokens(v);
    t.next().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) && t.next().is_none()
}

/// Whether a `Host` value (or a target's authority) is `host[:port]` of the characters
/// RFC 3986 allows there (no user info, no path, no list); empty is allowed.
fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// The rules every HTTP/1.x request head meets, whichever code path serves it (this
/// codec, or hyper's for HTTP/1.0 and upgrades, which calls it for each request it
/// reads, pipelined ones included): one policy, one function. `hosts`: how many `Host`
/// fields, `host` the last. The error is the status to answer.
pub(crate) fn head_policy(
    method: &str,
    target: &str,
    http10: bool,
    hosts: usize,
    host: Option<&[u8]>,
) -> Result<(), u16> {
    if method == "CONNECT" {
        // A reverse proxy opens no tunnels.
        return Err(501);
    }
    // One Host, a plausible one (RFC 9112 section 3.2).
    if hosts > 1
        || host.is_some_and(|h| !valid_host(h))
        || (hosts == 0 && !http10 && (target.starts_with('/') || target == "*"))
    {
        return Err(400);
    }
    // A target of visible ASCII without a fragment (HAProxy refuses `#` too since
    // CVE-2023-45539: `/index.html#.png` read as a `.png` path by one side only).
    if !target
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err(400);
    }
    Ok(())
}

/// Whether a head refused for its version names a well-formed `HTTP/x.y` (505) rather
/// than garbage (400).
fn other_version(data: &[u8]) -> bool {
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let v = parts.nth(2).unwrap_or_default();
    parts.next().is_none()
        && matches!(v, [b'H', b'T', b'T', b'P', b'/', a, b'.', c] if a.is_ascii_digit() && c.is_ascii_digit())
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parse the request head at the start of `data` and render its upstream head into `out`.
fn parse_request(data: &[u8], ctx: &ConnCtx, out: &mut Vec<u8>) -> Parsed {
    // Uninitialized: zeroing 4 KiB of headers per head showed in profiles.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(data, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(431),
        Err(httparse::Error::Version) if other_version(data) => return Parsed::Bad(505),
        Err(_) => return Parsed::Bad(400),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Bad(400);
    };
    // HTTP/1.0 needs no Host, and may not use a transfer coding (RFC 9112 section 6.1).
    let http10 = version != 1;
    // First pass: what the head says about framing, hop-by-hop names, forwarding.
    let mut close = false;
    let mut keep_alive = false;
    let mut conn_upgrade = false;
    let mut upgrade_to: Option<&[u8]> = None;
    let mut named: [&[u8]; MAX_CONN_TOKENS] = [b""; MAX_CONN_TOKENS];
    let mut n_named = 0;
    let mut too_many = false;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te = false;
    let mut te_fields = 0;
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut expect = false;
    let (mut has_xff, mut has_xfp, mut has_xfh, mut has_xri) = (false, false, false, false);
    for h in req.headers.iter() {
        match classify(h.name) {
            H::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        conn_upgrade = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    } else {
                        if n_named == MAX_CONN_TOKENS {
                            too_many = true;
                        } else {
                            named[n_named] = t;
                            n_named += 1;
                        }
                    }
                }
            }
            H::ContentLength => match content_length(h.value, length) {
                Some(n) => length = Some(n),
                None => return Parsed::Bad(400),
            },
            H::TransferEncoding => {
                te = true;
                te_fields += 1;
                chunked = only_chunked(h.value);
            }
            H::Host => {
                host = Some(h.value);
                hosts += 1;
            }
            H::Upgrade if !h.value.trim_ascii().is_empty() => upgrade_to = Some(h.value),
            H::Expect => expect = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue"),
            H::Xff => has_xff = true,
            H::Xfp => has_xfp = true,
            H::Xfh => has_xfh = true,
            H::Xri => has_xri = true,
            H::Upgrade | H::Hop | H::Hsts | H::Fwd | H::Other => {}
        }
    }
    // Smuggling guards (RFC 9112 section 6): the body's framing must be unambiguous, for
    // the upstream gets its chunked framing bytes as they came. Both a length and a
    // transfer coding, or codings other than one `chunked`, are refused (HAProxy drops the
    // length and closes after the answer; a 400 is simpler and as safe).
    if te && (te_fields > 1 || !chunked || length.is_some() || http10) {
        return Parsed::Bad(400);
    }
    if let Err(status) = head_policy(method, target, http10, hosts, host) {
        return Parsed::Bad(status);
    }
    if too_many {
        // More hop-by-hop names than any real client sends.
        return Parsed::Bad(400);
    }
    // An HTTP/1.0 connection is kept only when the client asks.
    let close = close || (http10 && !keep_alive);
    // An upgrade is HTTP/1.1's, named in `Connection`; h2c's (HTTP/2 over this connection)
    // is declined by not forwarding it, as HAProxy does.
    let upgrade = !http10
        && conn_upgrade
        && upgrade_to.is_some_and(|v| !tokens(v).all(|t| t.eq_ignore_ascii_case(b"h2c")));
    let expect = expect && !http10;
    let body = if chunked {
        Framing::Chunked
    } else {
        match length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    // An ACME HTTP-01 token (while an order waits for it) on a plain-HTTP listener:
    // answered here, before the firewall's request checks and the pool.
    if !ctx.https && method == "GET" && crate::acme::http01_target(target) {
        if let Some(key_auth) = crate::acme::http01(target) {
            return Parsed::Acme {
                head_len,
                key_auth,
                // A body nobody reads ends the connection.
                close: close || body != Framing::None,
            };
        }
    }
    if let Some(fw) = ctx.listener.firewall.as_deref() {
        if fw.checks_requests() {
            let declared = if chunked { None } else { length };
            let forwarded = if ctx.trusted && fw.keys_forwarded() {
                let mut fields: Vec<&[u8]> = Vec::new();
                fields.extend(
                    req.headers
                        .iter()
                        .filter(|h| classify(h.name) == H::Xff)
                        .map(|h| h.value),
                );
                ctx.forwarded_client(&fields)
            } else {
                None
            };
            let now = std::time::Instant::now();
            if let Err(r) = fw.check_request(ctx.peer.ip(), forwarded, method, declared, now) {
                return Parsed::Refused(r);
            }
        }
    }
    // The request line, origin-form.
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let mut uri_host: Option<Vec<u8>> = None;
    if target.starts_with('/') || (target == "*" && method == "OPTIONS") {
        out.extend_from_slice(target.as_bytes());
    } else {
        let Ok(uri) = target.parse::<http::Uri>() else {
            return Parsed::Bad(400);
        };
        let (Some(a), Some(scheme)) = (uri.authority(), uri.scheme_str()) else {
            return Parsed::Bad(400);
        };
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
            || !valid_host(a.as_str().as_bytes())
        {
            return Parsed::Bad(400);
        }
        uri_host = Some(a.as_str().as_bytes().to_vec());
        // An empty path is `/` in origin form (RFC 9112 section 3.2.1): `http://h?q` is
        // `/?q`, never `?q` (found by fuzz/'s request_differential target).
        let pq = uri.path_and_query().map_or("", |p| p.as_str());
        if !pq.starts_with('/') {
            out.push(b'/');
        }
        out.extend_from_slice(pq.as_bytes());
    }
    if uri_host.is_none() && hosts == 0 && !http10 {
        return Parsed::Bad(400);
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let keep = ctx.trusted;
    for h in req.headers.iter() {
        let kind = classify(h.name);
        match kind {
            H::Hop | H::Connection | H::TransferEncoding | H::Xff => continue,
            H::Upgrade if !upgrade => continue,
            // Rendered once below, from what was parsed.
            H::ContentLength => continue,
            // An absolute-form target's authority is the host (RFC 9112 section 3.2.2).
            H::Host if uri_host.is_some() => continue,
            H::Expect if expect => continue,
            // What an untrusted client says of its own address or scheme is dropped.
            H::Xfp | H::Xfh | H::Fwd | H::Xri if !keep => continue,
            _ => {}
        }
        let name = h.name.as_bytes();
        // `Connection` may name end-to-end fields only: never the framing or the Host.
        if kind == H::Other
            && n_named > 0
            && named[..n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        push_header(out, name, h.value);
    }
    if let Some(h) = uri_host.as_deref() {
        push_header(out, b"host", h);
    } else if hosts == 0 {
        // HTTP/1.0 without one: HTTP/1.1 upstream needs the field, empty for a target
        // without an authority (RFC 9112 section 3.2).
        out.extend_from_slice(b"host: \r\n");
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
    }
    let host = uri_host.as_deref().or(host);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    // X-Forwarded-For: a trusted peer's chain is kept and appended to.
    out.extend_from_slice(b"x-forwarded-for: ");
    if keep && has_xff {
        for h in req.headers.iter() {
            if classify(h.name) == H::Xff {
                let v = h.value.trim_ascii();
                if !v.is_empty() {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
            }
        }
    }
    ctx.push_peer_ip(out);
    out.extend_from_slice(b"\r\n");
    if !(keep && has_xri) {
        out.extend_from_slice(b"x-real-ip: ");
        ctx.push_peer_ip(out);
        out.extend_from_slice(b"\r\n");
    }
    if !(keep && has_xfp) {
        out.extend_from_slice(if ctx.https {
            b"x-forwarded-proto: https\r\n"
        } else {
            b"x-forwarded-proto: http\r\n"
        });
    }
    if !(keep && has_xfh) {
        if let Some(h) = host {
            push_header(out, b"x-forwarded-host", h);
        }
    }
    out.extend_from_slice(b"\r\n");
    let head = method == "HEAD";
    // RFC 9110 section 9.2.2; only without a body are they resent (`replayable`).
    let idempotent = matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    );
    Parsed::Complete(ReqInfo {
        head_len,
        body,
        close,
        expect: expect && body != Framing::None,
        replayable: idempotent && body == Framing::None,
        head,
        log: crate::accesslog::enabled().then(|| (method.to_string(), target.to_string())),
        http10,
        upgrade,
    })
}

/// A parsed response head (its client rendering is in `out`).
#[derive(Debug)]
struct RespInfo {
    head_len: usize,
    status: u16,
    body: Framing,
    /// The upstream connection may carry another request after this response.
    reusable: bool,
    /// The client connection closes after this response.
    close: bool,
    /// A chunked body decoded for an HTTP/1.0 client (sent until the connection closes).
    dechunk: bool,
    /// `101 Switching Protocols` to an upgrade: the connection becomes a tunnel.
    switched: bool,
}

#[derive(Debug)]
enum RespParsed {
    Partial,
    /// A 1xx response to skip (its length).
    Interim(usize),
    Bad,
    Complete(RespInfo),
}

/// [`parse_response_to`] for an HTTP/1.1 client that asked for no upgrade.
#[cfg(any(test, feature = "fuzzing"))]
fn parse_response(
    data: &[u8],
    head_req: bool,
    close: bool,
    hsts: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> RespParsed {
    let client = Client {
        head_req,
        close,
        http10: false,
        upgrade: false,
    };
    parse_response_to(data, client, hsts, out)
}

/// What a response head's rendering depends on in the request it answers.
#[derive(Debug, Clone, Copy)]
struct Client {
    /// The request was a `HEAD`.
    head_req: bool,
    /// The client connection closes after the response anyway.
    close: bool,
    /// An HTTP/1.0 client: no chunked answer, `Connection: keep-alive` to keep it.
    http10: bool,
    /// The request asked for an upgrade: a `101` is expected, not a protocol error.
    upgrade: bool,
}

/// Parse the response head at the start of `data`; render its head for `client` into
/// `out`.
fn parse_response_to(
    data: &[u8],
    client: Client,
    hsts: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> RespParsed {
    let Client {
        head_req,
        close,
        http10,
        upgrade,
    } = client;
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        data,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return RespParsed::Partial,
        Err(_) => return RespParsed::Bad,
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return RespParsed::Bad;
    };
    if status == 101 && upgrade && version == 1 {
        // The server switched: its head goes to the client as it came, but for the
        // hop-by-hop fields other than `Upgrade`.
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 101 ");
        out.extend_from_slice(resp.reason.unwrap_or("Switching Protocols").as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in resp.headers.iter() {
            match classify(h.name) {
                H::Hop | H::Connection | H::ContentLength | H::TransferEncoding => {}
                _ => push_header(out, h.name.as_bytes(), h.value),
            }
        }
        out.extend_from_slice(b"connection: upgrade\r\n\r\n");
        return RespParsed::Complete(RespInfo {
            head_len,
            status,
            body: Framing::None,
            reusable: false,
            close: true,
            dechunk: false,
            switched: true,
        });
    }
    if (100..200).contains(&status) {
        // 100 Continue, 103 Early Hints...: skipped; a 101 was not asked for.
        return if status == 101 {
            RespParsed::Bad
        } else {
            RespParsed::Interim(head_len)
        };
    }
    let mut upstream_close = version == 0;
    let mut named: [&[u8]; MAX_CONN_TOKENS] = [b""; MAX_CONN_TOKENS];
    let mut n_named = 0;
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut chunked = false;
    let mut chunked_seen = 0;
    for h in resp.headers.iter() {
        match classify(h.name) {
            H::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        upstream_close = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") && n_named < MAX_CONN_TOKENS {
                        named[n_named] = t;
                        n_named += 1;
                    }
                }
            }
            H::ContentLength => match content_length(h.value, length) {
                Some(n) => length = Some(n),
                None => return RespParsed::Bad,
            },
            H::TransferEncoding => {
                te = true;
                // The codings of all the fields make one list, empty ones add nothing
                // ("chunked" then "" is chunked: found by fuzz/'s response_head target).
                if tokens(h.value).next().is_some() {
                    chunked = ends_chunked(h.value);
                }
                chunked_seen += tokens(h.value)
                    .filter(|t| t.eq_ignore_ascii_case(b"chunked"))
                    .count();
            }
            _ => {}
        }
    }
    if chunked_seen > 1 {
        // Chunked twice: no telling where the body ends.
        return RespParsed::Bad;
    }
    // Both framings: the transfer coding wins, and the connection is not reused (RFC 9112
    // section 6.3, a sign of response splitting).
    if te && length.is_some() {
        upstream_close = true;
    }
    let body = if head_req || status == 204 || status == 304 {
        Framing::None
    } else if te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    // An HTTP/1.0 client knows no chunked coding: the body is decoded for it, and its end
    // is the connection's.
    let dechunk = http10 && body == Framing::Chunked;
    let close = close || body == Framing::Close || dechunk;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = [0u8; 3];
    code[0] = b'0' + (status / 100 % 10) as u8;
    code[1] = b'0' + (status / 10 % 10) as u8;
    code[2] = b'0' + (status % 10) as u8;
    out.extend_from_slice(&code);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let kind = classify(h.name);
        match kind {
            H::Hop | H::Connection | H::Upgrade => continue,
            // Kept as it came when the body is forwarded chunked, or for a HEAD.
            // (A coding list not ending in chunked is kept too: the body is read until the
            // server closes, and the client must know its coding.)
            H::TransferEncoding
                if dechunk
                    || !(body == Framing::Chunked
                        || body == Framing::Close
                        || (chunked && head_req && !http10)) =>
            {
                continue
            }
            // Rendered once below, from what was parsed.
            H::ContentLength => continue,
            H::Hsts if hsts.is_some() => continue,
            _ => {}
        }
        let name = h.name.as_bytes();
        // `Connection` may name end-to-end fields only: never the framing.
        if kind == H::Other
            && n_named > 0
            && named[..n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        push_header(out, name, h.value);
    }
    if let (false, Some(n)) = (te, length) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = hsts {
        push_header(out, b"strict-transport-security", v);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    RespParsed::Complete(RespInfo {
        head_len,
        status,
        body,
        reusable: !upstream_close && body != Framing::Close,
        close,
        dechunk,
        switched: false,
    })
}

/// Where a chunked body ends, found by scanning it as it is forwarded (unchanged:
/// chunk extensions and trailers pass through).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    st: CSt,
    size: u64,
    digits: u8,
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum CSt {
    #[default]
    Size,
    /// Whitespace after the size: only more of it, `;` or the CR may follow.
    ExtWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// A chunked body that does not follow the grammar.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadChunk;

/// Longest chunk-size line (with extensions), and all trailers together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

impl Chunked {
    pub(crate) fn done(&self) -> bool {
        self.st == CSt::Done
    }

    /// How many bytes at the start of `data` belong to the body: all of them, unless it
    /// ends inside.
    pub(crate) fn scan(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        self.scan_with(data, |_| {})
    }

    /// [`Chunked::scan`], handing `on_data` each run of chunk data (the body without its
    /// framing).
    pub(crate) fn scan_with(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                CSt::Done => return Ok(i),
                CSt::Data => {
                    let take = self.size.min((data.len() - i) as u64);
                    on_data(&data[i..i + take as usize]);
                    i += take as usize;
                    self.size -= take;
                    if self.size == 0 {
                        self.st = CSt::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = data[i];
            i += 1;
            match self.st {
                CSt::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(BadChunk);
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits += 1;
                        // At most 2^52 - 1, as HAProxy: a server in a language whose
                        // integers are doubles must read the same size.
                        if self.size >> 52 != 0 {
                            return Err(BadChunk);
                        }
                    }
                    b';' if self.digits > 0 => self.st = CSt::Ext,
                    b' ' | b'\t' if self.digits > 0 => self.st = CSt::ExtWs,
                    b'\r' if self.digits > 0 => self.st = CSt::SizeLf,
                    _ => return Err(BadChunk),
                },
                // Strict framing, since the bytes go upstream as they came: CRLF only (a
                // bare LF or CR is where two parsers disagree), visible characters in
                // extensions, `name: value` trailers without folding.
                CSt::ExtWs | CSt::Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(BadChunk);
                    }
                    match b {
                        b'\r' => self.st = CSt::SizeLf,
                        b' ' | b'\t' => {}
                        b';' => self.st = CSt::Ext,
                        _ if self.st == CSt::ExtWs => return Err(BadChunk),
                        0x21..=0x7e | 0x80..=0xff => {}
                        _ => return Err(BadChunk),
                    }
                }
                CSt::SizeLf if b == b'\n' => self.line_end(),
                CSt::DataCr if b == b'\r' => self.st = CSt::DataLf,
                CSt::DataLf if b == b'\n' => self.st = CSt::Size,
                CSt::TrailerStart if b == b'\r' => self.st = CSt::FinalLf,
                CSt::TrailerStart | CSt::TrailerName if is_tchar(b) => {
                    self.st = CSt::TrailerName;
                    self.trailer_byte()?;
                }
                CSt::TrailerName if b == b':' => {
                    self.st = CSt::Trailer;
                    self.trailer_byte()?;
                }
                CSt::Trailer => {
                    self.trailer_byte()?;
                    match b {
                        b'\r' => self.st = CSt::TrailerLf,
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(BadChunk),
                    }
                }
                CSt::TrailerLf if b == b'\n' => self.st = CSt::TrailerStart,
                CSt::FinalLf if b == b'\n' => self.st = CSt::Done,
                _ => return Err(BadChunk),
            }
        }
        Ok(i)
    }

    fn trailer_byte(&mut self) -> Result<(), BadChunk> {
        self.line += 1;
        if self.line > MAX_TRAILERS {
            return Err(BadChunk);
        }
        Ok(())
    }

    fn line_end(&mut self) {
        self.digits = 0;
        if self.size == 0 {
            self.line = 0;
            self.st = CSt::TrailerStart;
        } else {
            self.line = 0;
            self.st = CSt::Data;
        }
    }
}

/// A `token` character of a field name (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// A body being forwarded: what is left of it.
enum Left {
    Length(u64),
    Chunked(Chunked),
    /// Chunked, forwarded without its framing (to an HTTP/1.0 client).
    Dechunk(Chunked),
    Close,
}

impl Left {
    fn of(f: Framing) -> Option<Left> {
        match f {
            Framing::None => None,
            Framing::Length(n) => Some(Left::Length(n)),
            Framing::Chunked => Some(Left::Chunked(Chunked::default())),
            Framing::Close => Some(Left::Close),
        }
    }

    /// A response body's: as [`Left::of`], decoding a chunked one when `dechunk`.
    fn of_response(f: Framing, dechunk: bool) -> Option<Left> {
        match (f, dechunk) {
            (Framing::Chunked, true) => Some(Left::Dechunk(Chunked::default())),
            _ => Left::of(f),
        }
    }

    /// [`Left::take`]; what to forward is `data[..k]`, or, for [`Left::Dechunk`], what was
    /// appended to `decoded`.
    fn take_into(&mut self, data: &[u8], decoded: &mut Vec<u8>) -> Result<usize, BadChunk> {
        match self {
            Left::Dechunk(c) => c.scan_with(data, |d| decoded.extend_from_slice(d)),
            _ => self.take(data),
        }
    }

    fn decodes(&self) -> bool {
        matches!(self, Left::Dechunk(_))
    }

    /// How much of `data` belongs to the body; updates what is left.
    fn take(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        match self {
            Left::Length(n) => {
                let k = (*n).min(data.len() as u64);
                *n -= k;
                Ok(k as usize)
            }
            Left::Chunked(c) | Left::Dechunk(c) => c.scan(data),
            Left::Close => Ok(data.len()),
        }
    }

    fn done(&self) -> bool {
        match self {
            Left::Length(n) => *n == 0,
            Left::Chunked(c) | Left::Dechunk(c) => c.done(),
            Left::Close => false,
        }
    }
}

/// `f`, or `TimedOut` at `deadline`. An operation that completes at once (most writes,
/// reads of bytes already there) sets no timer.
async fn by<F: Future<Output = io::Result<R>>, R>(deadline: Instant, f: F) -> io::Result<R> {
    let mut f = std::pin::pin!(f);
    let first = std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    if let Some(r) = first {
        return r;
    }
    match tokio::time::timeout_at(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    by(deadline, async {
        w.write_all(data).await?;
        w.flush().await
    })
    .await
}

/// Write all of `data`, counting in `written` what the socket took (also when it fails).
async fn write_counted<W: AsyncWrite + Unpin>(
    w: &mut W,
    data: &[u8],
    written: &mut usize,
) -> io::Result<()> {
    while let Some(rest) = data.get(*written..).filter(|r| !r.is_empty()) {
        match w.write(rest).await? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => *written += n,
        }
    }
    w.flush().await
}

/// Whether a request whose write to a pooled connection failed after `written` bytes may
/// go out again on another connection: when none of it reached the socket, or when it is
/// idempotent and has no body (RFC 9110 section 9.2.2), so that the server may safely see
/// it twice. A POST that was partly sent is never resent.
fn may_resend(written: usize, replayable: bool) -> bool {
    written == 0 || replayable
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A short error answer of the balancer itself.
async fn send_error<T: ClientStream>(
    io: &mut T,
    ctx: &ConnCtx,
    status: u16,
    msg: &[u8],
    close: bool,
    head: bool,
) -> io::Result<()> {
    send_error_with(io, ctx, status, msg, close, head, None).await
}

/// [`send_error`] with one more header (`Retry-After`, `Allow`).
async fn send_error_with<T: ClientStream>(
    io: &mut T,
    ctx: &ConnCtx,
    status: u16,
    msg: &[u8],
    close: bool,
    head: bool,
    extra: Option<(&str, &str)>,
) -> io::Result<()> {
    let mut out = Out::take();
    let o = &mut out.0;
    o.extend_from_slice(b"HTTP/1.1 ");
    o.extend_from_slice(status.to_string().as_bytes());
    o.push(b' ');
    o.extend_from_slice(reason(status).as_bytes());
    o.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    o.extend_from_slice(msg.len().to_string().as_bytes());
    o.extend_from_slice(b"\r\n");
    if let Some(v) = ctx.hsts() {
        push_header(o, b"strict-transport-security", v.as_bytes());
    }
    if let Some((n, v)) = extra {
        push_header(o, n.as_bytes(), v.as_bytes());
    }
    if close {
        o.extend_from_slice(b"connection: close\r\n");
    }
    o.extend_from_slice(b"\r\n");
    if !head {
        o.extend_from_slice(msg);
    }
    write_flush(io, o, Instant::now() + ctx.listener.cfg.idle_timeout).await
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
}

/// Proxy one request (head parsed, its upstream rendering in `out`) and answer it.
async fn proxy<T: ClientStream>(
    io: &mut T,
    buf: &mut Buf,
    ctx: &ConnCtx,
    req: &ReqInfo,
    out: &mut Vec<u8>,
) -> Next {
    let t0 = Instant::now();
    let now = ns_at(t0.into_std());
    let pool = ctx.listener.pool.get();
    pool.budget.on_request(now);
    let stopping = crate::stopping();
    // After an error answer, a request body that was not read leaves the connection
    // unusable.
    let close_on_error = req.close || stopping || req.body != Framing::None;
    let retries = pool.cfg.retries.attempts;
    let mut tried = 0u64;
    let mut attempt = 0u32;
    let mut last_status = 502u16;
    let mut continued = false;
    let (status, msg): (u16, Bytes) = loop {
        let picked = if attempt == 0 {
            pool.pick_at(ctx.hash_key, tried, now).await
        } else {
            pool.pick(ctx.hash_key, tried).await
        };
        let slot = match picked {
            Ok(s) => s,
            Err(PickError::NoneUp) if attempt == 0 => break (503, pool.msg_503_down.clone()),
            Err(PickError::NoneUp) => break failed(&pool, last_status),
            Err(PickError::QueueFull | PickError::QueueTimeout) => {
                break (503, pool.msg_503_queue.clone())
            }
        };
        let i = slot.server;
        tried = mark_tried(tried, i);
        let started = if attempt == 0 { t0 } else { Instant::now() };
        let r = attempt_on(
            io,
            buf,
            ctx,
            req,
            out,
            &slot,
            started,
            t0,
            attempt,
            &mut continued,
        )
        .await;
        let f = match r {
            Ok(next) => return next,
            Err(f) => f,
        };
        let s = slot.server();
        let now = crate::clock::now_ns();
        let can_retry = |pool: &PoolState| attempt < retries && pool.budget.try_retry(now);
        match f {
            Failure::Unsent(e) => {
                tracing::warn!(pool = %pool.cfg.name, server = %s.name, error = %e, "connect failed");
                pool.on_passive(i, Outcome::Failed(Fail::Connect), now);
                last_status = match e {
                    ConnectError::Timeout { .. } => 504,
                    _ => 502,
                };
                drop(slot);
                if !can_retry(&pool) {
                    break failed(&pool, last_status);
                }
            }
            Failure::Sent(e) => {
                tracing::warn!(pool = %pool.cfg.name, server = %s.name, error = %e, "upstream failed before answering");
                pool.on_passive(i, Outcome::Failed(Fail::BeforeAnswer), now);
                last_status = 502;
                drop(slot);
                if !req.replayable || !can_retry(&pool) {
                    break failed(&pool, last_status);
                }
            }
            Failure::Timeout => {
                tracing::warn!(pool = %pool.cfg.name, server = %s.name, timeout = ?pool.cfg.timeouts.response, "upstream response timed out");
                pool.on_passive(i, Outcome::Failed(Fail::Timeout), now);
                break (504, pool.msg_504.clone());
            }
            Failure::Client => return Next::Close,
            Failure::BadBody => {
                drop(slot);
                let _ = send_error(io, ctx, 400, MSG_400, true, false).await;
                return Next::Close;
            }
            Failure::TooLarge | Failure::TooSlow => {
                drop(slot);
                if let Some(fw) = ctx.listener.firewall.as_deref() {
                    let r = if matches!(f, Failure::TooLarge) {
                        fw.body_too_large()
                    } else {
                        tracing::info!(peer = %ctx.peer, "request body too slow: cut (min_upload_rate)");
                        fw.too_slow()
                    };
                    let _ = send_error(io, ctx, r.status, r.message, true, false).await;
                    ctx.listener.stats.counters.response(r.status, 0);
                }
                return Next::Close;
            }
        }
        attempt += 1;
    };
    let _ = send_error(io, ctx, status, &msg, close_on_error, req.head).await;
    let took = crate::clock::now_ns().saturating_sub(now);
    ctx.listener.stats.counters.response(status, took);
    if let Some((method, path)) = &req.log {
        log(
            ctx,
            method,
            path,
            status,
            Some(msg.len() as u64),
            took,
            None,
        );
    }
    if close_on_error {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

fn failed(pool: &PoolState, status: u16) -> (u16, Bytes) {
    if status == 504 {
        (504, pool.msg_504.clone())
    } else {
        (502, pool.msg_502.clone())
    }
}

fn log(
    ctx: &ConnCtx,
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
        pool: &ctx.listener.pool.name,
        method,
        path,
        status,
        bytes,
        total_ns,
        served,
    });
}

/// Send the request to the slot's server over a pooled socket (a new one when there is
/// none, or when the pooled one turns out closed) and stream its answer to the client.
#[allow(clippy::too_many_arguments)]
async fn attempt_on<T: ClientStream>(
    io: &mut T,
    buf: &mut Buf,
    ctx: &ConnCtx,
    req: &ReqInfo,
    out: &mut Vec<u8>,
    slot: &InFlight,
    started: Instant,
    t0: Instant,
    attempt: u32,
    continued: &mut bool,
) -> Result<Next, Failure> {
    let pool = &slot.pool;
    let s = slot.server();
    let t = pool.cfg.timeouts;
    let client_stall = ctx.listener.cfg.idle_timeout;
    let mut pooled = upstream::checkout_raw(s, ctx.worker, t.idle, ns_at(started.into_std()));
    let mut may_renew = true;
    let mut ub = Buf::take();
    let (mut up, info, cut, sent, first) = 'conn: loop {
        let from_pool = pooled.is_some();
        let mut up = match pooled.take() {
            Some(c) => c,
            None => upstream_tls::connect(s.addr, t.connect, pool.cfg.tls.as_ref())
                .await
                .map_err(Failure::Unsent)?,
        };
        // The head, with the body when all of it is here already (a small POST): one write.
        let head_len = out.len();
        let mut left = Left::of(req.body);
        let mut inline = 0;
        // A chunked body's size is known only as it streams (counted with its framing);
        // a declared length was checked with the head.
        let fw = ctx.listener.firewall.as_deref();
        let limits = BodyLimits {
            max: match req.body {
                Framing::Chunked => fw.and_then(|f| f.max_body()),
                _ => None,
            },
            min_rate: fw.and_then(|f| f.min_upload_rate()),
        };
        let limit = limits.max;
        if let Some(l) = left.as_mut() {
            if !req.expect {
                inline = l.take(buf.data()).map_err(|_| Failure::BadBody)?;
                if limit.is_some_and(|m| inline as u64 > m) {
                    return Err(Failure::TooLarge);
                }
                if l.done() {
                    out.extend_from_slice(&buf.data()[..inline]);
                } else {
                    // Not all here: start over below, streaming.
                    left = Left::of(req.body);
                    inline = 0;
                }
            }
        }
        let mut written = 0;
        let w = by(
            started + t.response,
            write_counted(&mut up, out, &mut written),
        )
        .await;
        out.truncate(head_len);
        if let Err(e) = w {
            if from_pool && may_resend(written, req.replayable) {
                // Closed while idle: no fault of the server, and nothing of the request
                // reached it (or it may be sent twice).
                pooled = upstream::checkout_raw(s, ctx.worker, t.idle, ns_at(started.into_std()));
                continue;
            }
            return Err(Failure::Sent(e));
        }
        let mut sent_body = false;
        // The server stopped taking the body (closed, or reset): it may have answered
        // already (a 413, a 401), which the client should get rather than a 502.
        let mut cut: Option<io::Error> = None;
        if let Some(mut l) = left {
            if inline > 0 {
                buf.consume(inline);
                s.stats.bytes_in(inline);
            } else {
                if req.expect && !*continued {
                    *continued = true;
                    write_flush(
                        io,
                        b"HTTP/1.1 100 Continue\r\n\r\n",
                        Instant::now() + client_stall,
                    )
                    .await
                    .map_err(|_| Failure::Client)?;
                }
                match send_body(
                    io,
                    buf,
                    &mut up,
                    &mut l,
                    s,
                    (client_stall, t.response),
                    limits,
                )
                .await
                {
                    Ok(()) => {}
                    Err(Failure::Sent(e)) => cut = Some(e),
                    Err(f) => return Err(f),
                }
            }
            sent_body = true;
        }
        // The request's last byte is out: the server's time (least-response-time's
        // measure) starts here.
        let sent = Instant::now();
        // The response head; the response timeout runs from the end of the request. After
        // a cut body, only what the server already sent counts: a moment to read it.
        let deadline = if cut.is_some() {
            sent + EARLY_RESPONSE_WAIT.min(t.response)
        } else if sent_body {
            sent + t.response
        } else {
            started + t.response
        };
        // When the answer's first byte came, if the head took more than one read (else the
        // clock read after the head stands for it).
        let mut first: Option<Instant> = None;
        loop {
            let n = match tokio::time::timeout_at(deadline, ub.read_from(&mut up, MAX_HEAD)).await {
                Err(_) => return Err(cut.take().map_or(Failure::Timeout, Failure::Sent)),
                Ok(r) => r,
            };
            if let (Some(e), Ok(0) | Err(_)) = (cut.as_ref(), &n) {
                return Err(Failure::Sent(io::Error::new(e.kind(), e.to_string())));
            }
            match n {
                Ok(0) | Err(_) if ub.is_empty() && from_pool && req.replayable && may_renew => {
                    // A pooled connection the server closed as we used it: once more on
                    // a new one.
                    may_renew = false;
                    continue 'conn;
                }
                Ok(0) => return Err(Failure::Sent(io::Error::from(io::ErrorKind::UnexpectedEof))),
                Err(e) => return Err(Failure::Sent(e)),
                Ok(_) => {}
            }
            loop {
                // After a cut body the client connection ends with this response: the rest
                // of its body was never read.
                let close = req.close || crate::stopping() || cut.is_some();
                let hsts = ctx.hsts().map(|v| v.as_bytes());
                let client = Client {
                    head_req: req.head,
                    close,
                    http10: req.http10,
                    upgrade: req.upgrade,
                };
                match parse_response_to(ub.data(), client, hsts, out) {
                    RespParsed::Partial => break,
                    RespParsed::Interim(n) => ub.consume(n),
                    RespParsed::Bad => {
                        return Err(Failure::Sent(io::Error::other("malformed response head")))
                    }
                    RespParsed::Complete(info) => {
                        break 'conn (up, info, cut.is_some(), sent, first)
                    }
                }
                if ub.is_empty() {
                    break;
                }
            }
            // Bytes came but not the whole head (or an interim answer): the first byte's time.
            if first.is_none() {
                first = Some(Instant::now());
            }
        }
    };
    // A response: account for it, then stream it.
    let t1 = Instant::now();
    let end = ns_at(t1.into_std());
    let took = end.saturating_sub(ns_at(started.into_std()));
    s.stats.response(info.status, took);
    pool.on_answer(
        slot.server,
        info.status,
        ns_at(sent.into_std()),
        first.map_or(end, |f| ns_at(f.into_std())),
        end,
    );
    let total = end.saturating_sub(ns_at(t0.into_std()));
    ctx.listener.stats.counters.response(info.status, total);
    if let Some((method, path)) = &req.log {
        let served = crate::accesslog::Served {
            server: s.name.clone(),
            attempts: attempt + 1,
            upstream_ns: took,
        };
        let bytes = match info.body {
            Framing::None => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        };
        log(ctx, method, path, info.status, bytes, total, Some(&served));
    }
    ub.consume(info.head_len);
    if info.switched {
        // What the server sent past its head is the tunnel's first bytes.
        out.extend_from_slice(ub.data());
        let n = ub.len();
        ub.consume(n);
        if write_flush(io, out, t1 + client_stall).await.is_err() {
            return Ok(Next::Close);
        }
        Box::pin(tunnel(io, buf, up, ctx)).await;
        return Ok(Next::Close);
    }
    let mut left = Left::of_response(info.body, info.dechunk);
    // The head with the body bytes already here: one write.
    if let Some(l) = left.as_mut() {
        // A malformed chunked body: 502 (nothing was sent to the client yet).
        let mut decoded = Vec::new();
        let k = l
            .take_into(ub.data(), &mut decoded)
            .map_err(|_| Failure::Sent(io::Error::other("malformed response body")))?;
        if l.decodes() {
            out.extend_from_slice(&decoded);
        } else {
            out.extend_from_slice(&ub.data()[..k]);
        }
        ub.consume(k);
        s.stats.bytes_out(k);
    }
    if write_flush(io, out, t1 + client_stall).await.is_err() {
        return Ok(Next::Close);
    }
    let mut complete = left.as_ref().is_none_or(Left::done);
    if !complete {
        if let Some(l) = left.as_mut() {
            complete = stream_response(io, &mut up, &mut ub, l, s, client_stall, t.response).await;
        }
    }
    if !complete {
        // The client saw a response cut short (or the server closed to end it): its
        // connection cannot go on.
        return Ok(Next::Close);
    }
    if cut {
        return Ok(Next::Linger);
    }
    if info.reusable && ub.is_empty() {
        upstream::checkin_raw(s, ctx.worker, up, t.idle, end);
    }
    Ok(if info.close {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Forward the rest of a request body from the client (what is in `buf`, then reads) to
/// the upstream. A read stalled for `client_stall`, or a write for `up_stall`, fails.
async fn send_body<T: ClientStream>(
    io: &mut T,
    buf: &mut Buf,
    up: &mut UpStream,
    left: &mut Left,
    s: &crate::state::ServerState,
    (client_stall, up_stall): (Duration, Duration),
    limits: BodyLimits,
) -> Result<(), Failure> {
    let start = Instant::now();
    let mut total: u64 = 0;
    loop {
        if buf.is_empty() {
            // With a minimum rate, the next byte is due when the rate says so.
            let due = limits.min_rate.map(|r| {
                start + BODY_RATE_GRACE + Duration::from_secs_f64((total + 1) as f64 / r as f64)
            });
            let stall = Instant::now() + client_stall;
            let deadline = due.map_or(stall, |d| d.min(stall));
            match by(deadline, buf.read_from(io, BUF)).await {
                Ok(0) => return Err(Failure::Client),
                Err(e) if e.kind() == io::ErrorKind::TimedOut && due == Some(deadline) => {
                    return Err(Failure::TooSlow)
                }
                Err(_) => return Err(Failure::Client),
                Ok(_) => {}
            }
        }
        let k = left.take(buf.data()).map_err(|_| Failure::BadBody)?;
        total += k as u64;
        if limits.max.is_some_and(|m| total > m) {
            return Err(Failure::TooLarge);
        }
        if let Some(r) = limits.min_rate {
            let allowed = start.elapsed().saturating_sub(BODY_RATE_GRACE);
            if (total as f64) < r as f64 * allowed.as_secs_f64() && !left.done() {
                return Err(Failure::TooSlow);
            }
        }
        if k > 0 {
            write_flush(up, &buf.data()[..k], Instant::now() + up_stall)
                .await
                .map_err(Failure::Sent)?;
            buf.consume(k);
            s.stats.bytes_in(k);
        }
        if left.done() {
            return Ok(());
        }
    }
}

/// The firewall's limits on a streamed request body.
#[derive(Clone, Copy)]
struct BodyLimits {
    /// Bytes (chunked bodies; a declared length is checked with the head).
    max: Option<u64>,
    /// Bytes per second, after [`BODY_RATE_GRACE`].
    min_rate: Option<u64>,
}

/// The first moments of a body are not held to the minimum upload rate (a connection's
/// slow start, a client computing what it sends).
const BODY_RATE_GRACE: Duration = Duration::from_secs(1);

/// Forward the rest of a response body; whether it ended cleanly.
async fn stream_response<T: ClientStream>(
    io: &mut T,
    up: &mut UpStream,
    ub: &mut Buf,
    left: &mut Left,
    s: &crate::state::ServerState,
    client_stall: Duration,
    up_stall: Duration,
) -> bool {
    // Decoded chunk data, for an HTTP/1.0 client (left empty otherwise).
    let mut decoded = Vec::new();
    loop {
        if ub.is_empty() {
            match by(Instant::now() + up_stall, ub.read_from(up, BUF)).await {
                Ok(0) => return matches!(left, Left::Close),
                Err(_) => return false,
                Ok(_) => {}
            }
        }
        decoded.clear();
        let Ok(k) = left.take_into(ub.data(), &mut decoded) else {
            return false;
        };
        if k > 0 {
            let bytes = if left.decodes() {
                &decoded[..]
            } else {
                &ub.data()[..k]
            };
            if !bytes.is_empty()
                && write_flush(io, bytes, Instant::now() + client_stall)
                    .await
                    .is_err()
            {
                return false;
            }
            ub.consume(k);
            s.stats.bytes_out(k);
        }
        if left.done() {
            return true;
        }
    }
}

/// After a `101`: copy bytes both ways until either side closes (what the client sent
/// past its request first). The server's slot stays taken meanwhile, as a connection.
async fn tunnel<T: ClientStream>(io: &mut T, buf: &mut Buf, mut up: UpStream, ctx: &ConnCtx) {
    if !buf.is_empty() {
        let stall = Instant::now() + ctx.listener.cfg.idle_timeout;
        if write_flush(&mut up, buf.data(), stall).await.is_err() {
            return;
        }
        let n = buf.len();
        buf.consume(n);
    }
    match tokio::io::copy_bidirectional(io, &mut up).await {
        Ok((to_server, to_client)) => {
            tracing::debug!(peer = %ctx.peer, to_server, to_client, "upgraded connection ended");
        }
        Err(e) => tracing::debug!(peer = %ctx.peer, error = %e, "upgraded connection ended"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunked_body(chunks: &[Vec<u8>], trailer: bool) -> Vec<u8> {
        let mut b = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            b.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            b.extend_from_slice(c);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n");
        if trailer {
            b.extend_from_slice(b"x-sum: 7\r\n");
        }
        b.extend_from_slice(b"\r\n");
        b
    }

    #[test]
    fn chunked_scan_finds_the_end_and_leaves_what_follows() {
        let mut body = chunked_body(&[b"hello".to_vec(), vec![b'x'; 300]], true);
        let n = body.len();
        body.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut c = Chunked::default();
        assert_eq!(c.scan(&body), Ok(n));
        assert!(c.done());
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn chunked_scan_is_independent_of_how_bytes_arrive(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
            trailer in any::<bool>(),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let body = chunked_body(&chunks, trailer);
            let mut data = body.clone();
            data.extend_from_slice(b"NEXT");
            let mut c = Chunked::default();
            let mut pos = 0;
            let mut cuts = cuts.into_iter().cycle();
            while !c.done() && pos < data.len() {
                let end = (pos + cuts.next().unwrap()).min(data.len());
                let k = c.scan(&data[pos..end]).unwrap();
                pos += k;
                if k < end - (pos - k) {
                    break;
                }
            }
            prop_assert!(c.done());
            prop_assert_eq!(pos, body.len());
        }
    }

    #[tokio::test]
    async fn an_idle_connection_costs_a_small_future() {
        // Every client connection holds one `serve` future for its whole life: what it
        // keeps across awaits is the balancer's memory per idle connection (the bench's
        // idle scenario). A buffer held in it (say a 4 KiB array) shows up here first.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let fut = serve(c, test_ctx(false), Instant::now(), true);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1024, "the serve future is {size} bytes");
    }

    #[tokio::test]
    async fn buffers_start_small_grow_when_filled_and_are_reused() {
        let data = vec![7u8; 40 * 1024];
        let mut r = &data[..];
        let mut b = Buf::take();
        assert_eq!(b.v.capacity(), SMALL);
        // A body streamed through: each read filled the buffer, so it grows to BUF, no more.
        let mut got = 0;
        while got < data.len() {
            let n = b.read_from(&mut r, BUF).await.unwrap();
            got += n;
            b.consume(n);
        }
        assert_eq!(b.v.capacity(), BUF);
        drop(b);
        assert_eq!(Buf::take().v.capacity(), SMALL);
        // A head that does not fit grows it up to the given limit, then it is full.
        let big = vec![7u8; 2 * MAX_HEAD];
        let mut b = Buf::take();
        let mut r = &big[..];
        while let Ok(n) = b.read_from(&mut r, MAX_HEAD).await {
            assert!(n > 0);
        }
        assert_eq!((b.v.capacity(), b.len()), (MAX_HEAD, MAX_HEAD));
        assert!(b.data().iter().all(|x| *x == 7));
    }

    #[test]
    fn an_absolute_target_with_an_empty_path_goes_upstream_as_slash() {
        for (target, want) in [
            ("http://h.example:80?q", "GET /?q HTTP/1.1\r\n"),
            ("http://h.example", "GET / HTTP/1.1\r\n"),
            ("http://h.example/p?q", "GET /p?q HTTP/1.1\r\n"),
        ] {
            let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut out = Vec::new();
            let Parsed::Complete(_) = parse_request(head.as_bytes(), &test_ctx(false), &mut out)
            else {
                panic!("{target} refused")
            };
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(want), "{target}: {text}");
            assert!(text.contains("\r\nhost: h.example"), "{text}");
        }
    }

    #[test]
    fn content_length_lists_must_agree() {
        assert_eq!(content_length(b"12", None), Some(12));
        assert_eq!(content_length(b"12, 12", None), Some(12));
        assert_eq!(content_length(b"12, 13", None), None);
        assert_eq!(content_length(b"12", Some(13)), None);
        assert_eq!(content_length(b"-1", None), None);
        assert_eq!(content_length(b"1e3", None), None);
        // An empty field (or one of commas) is no length, even after a valid one.
        assert_eq!(content_length(b"", Some(12)), None);
        assert_eq!(content_length(b" , ", Some(12)), None);
        let mut out = Vec::new();
        let head =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: \r\n\r\nabc";
        assert!(matches!(
            parse_request(head, &test_ctx(false), &mut out),
            Parsed::Bad(400)
        ));
    }

    #[test]
    fn response_heads_are_rewritten_without_hop_by_hop_fields() {
        let mut out = Vec::new();
        let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\nX-Kept: y\r\n\r\nhello";
        let RespParsed::Complete(r) =
            parse_response(head, false, false, Some(b"max-age=1"), &mut out)
        else {
            panic!()
        };
        assert_eq!(r.body, Framing::Length(5));
        assert!(r.reusable && !r.close);
        assert_eq!(r.head_len, head.len() - 5);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nX-Kept: y\r\ncontent-length: 5\r\nstrict-transport-security: max-age=1\r\n\r\n"
        );
        // No length, not chunked: until the server closes, and so does the client.
        let mut out = Vec::new();
        let RespParsed::Complete(r) =
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n", false, false, None, &mut out)
        else {
            panic!()
        };
        assert_eq!(r.body, Framing::Close);
        assert!(!r.reusable && r.close);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("connection: close"));
        // HEAD, 204 and 304 have no body whatever they announce.
        for (h, head_req) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..], true),
            (b"HTTP/1.1 204 No Content\r\n\r\n", false),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
        ] {
            let RespParsed::Complete(r) = parse_response(h, head_req, false, None, &mut Vec::new())
            else {
                panic!()
            };
            assert_eq!(r.body, Framing::None);
            assert!(r.reusable);
        }
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 100 Continue\r\n\r\n",
                false,
                false,
                None,
                &mut Vec::new()
            ),
            RespParsed::Interim(25)
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false,
                None,
                &mut Vec::new()
            ),
            RespParsed::Bad
        ));
    }

    // Hardening: the request parser against smuggling and malformed heads.

    fn test_ctx(trusted: bool) -> Arc<ConnCtx> {
        use rampart_topology::lb::{CheckKind, LbConfig, Mode};
        let cfg = LbConfig::quick(
            "127.0.0.1:1".parse().unwrap(),
            &["127.0.0.1:2".parse().unwrap()],
            rampart_balance::Algorithm::RoundRobin,
            Mode::Http,
            CheckKind::None,
        )
        .unwrap();
        let pool = crate::state::PoolState::new(cfg.pools[0].clone(), 1, 1);
        let rt = Arc::new(crate::ListenerRt {
            cfg: cfg.listeners[0].clone(),
            pool: Arc::new(crate::state::PoolHandle::new(pool, 1)),
            trusted: if trusted {
                vec!["192.0.2.0/24".parse().unwrap()]
            } else {
                Vec::new()
            },
            stats: Arc::new(crate::ListenerStats::new(1)),
            limit: None,
            tls: None,
            firewall: None,
        });
        ConnCtx::new("192.0.2.7:40000".parse().unwrap(), &rt, 0, None).unwrap()
    }

    #[test]
    fn only_unsent_or_idempotent_body_less_requests_are_resent() {
        assert!(may_resend(0, false), "nothing reached the socket");
        assert!(may_resend(10, true), "a GET may be seen twice");
        assert!(!may_resend(1, false), "a partly sent POST must not be");
    }

    #[tokio::test]
    async fn write_counted_counts_what_went_out_before_a_failure() {
        // A pipe that takes 100 bytes, then its reader goes away.
        let (mut w, mut r) = tokio::io::duplex(100);
        let data = vec![b'x'; 1000];
        let mut written = 0;
        let writing = write_counted(&mut w, &data, &mut written);
        let reading = async {
            let mut b = [0u8; 60];
            r.read_exact(&mut b).await.unwrap();
            drop(r);
        };
        let (res, ()) = tokio::join!(writing, reading);
        assert!(res.is_err());
        assert!((100..1000).contains(&written), "{written}");
        let (mut w, _r) = tokio::io::duplex(4096);
        let mut written = 0;
        write_counted(&mut w, b"abc", &mut written).await.unwrap();
        assert_eq!(written, 3);
    }

    /// A POST whose head went partly out on a pooled connection that the server then
    /// resets is answered 502 and never sent again (before: resent on a new connection).
    /// In process because the partial write needs small socket buffers on the balancer's
    /// side: over loopback the kernel takes megabytes at once otherwise.
    #[tokio::test]
    async fn a_partly_written_post_on_a_pooled_connection_is_not_resent() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::net::TcpSocket;
        // The backend: small receive buffers; the first connection reads 1000 bytes and
        // resets, later ones count a POST and answer.
        let ls = TcpSocket::new_v4().unwrap();
        ls.set_recv_buffer_size(4096).unwrap();
        ls.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = ls.listen(16).unwrap();
        let backend = listener.local_addr().unwrap();
        let posts = Arc::new(AtomicU32::new(0));
        let p2 = posts.clone();
        let server = tokio::spawn(async move {
            let mut first = true;
            loop {
                let Ok((mut c, _)) = listener.accept().await else {
                    return;
                };
                let mut b = vec![0u8; 1000];
                if c.read_exact(&mut b).await.is_ok() && b.starts_with(b"POST") {
                    p2.fetch_add(1, Ordering::SeqCst);
                }
                if first {
                    first = false;
                    socket2::SockRef::from(&c)
                        .set_linger(Some(Duration::ZERO))
                        .unwrap();
                    drop(c);
                    continue;
                }
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 65536];
                    let _ = tokio::time::timeout(Duration::from_millis(300), async {
                        while c.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                    })
                    .await;
                    let _ = c
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let ctx = ctx_for(backend);
        // A pooled connection with a small send buffer (as a busy or slow link has).
        let us = TcpSocket::new_v4().unwrap();
        us.set_send_buffer_size(4096).unwrap();
        let up = us.connect(backend).await.unwrap();
        let pool = ctx.listener.pool.get();
        pool.servers[0].idle_raw[0]
            .lock()
            .unwrap()
            .push(upstream::IdleRaw {
                conn: UpStream::Plain(up),
                since_ns: crate::clock::now_ns(),
            });
        // A POST with a ~56 KiB head.
        let mut req = b"POST /pay HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n".to_vec();
        for i in 0..100 {
            req.extend_from_slice(format!("x-pad-{i}: {}\r\n", "p".repeat(550)).as_bytes());
        }
        req.extend_from_slice(b"\r\nhi");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (lb_side, _) = l.accept().await.unwrap();
        let serving = tokio::spawn(serve(lb_side, ctx, Instant::now(), false));
        client.write_all(&req).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let mut b = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                }
            }
        })
        .await;
        let answer = String::from_utf8_lossy(&got).into_owned();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            posts.load(Ordering::SeqCst),
            1,
            "the POST reached the server again"
        );
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        serving.abort();
        server.abort();
    }

    /// A connection context whose pool is one server at `backend` (round robin, no checks).
    fn ctx_for(backend: std::net::SocketAddr) -> Arc<ConnCtx> {
        use rampart_topology::lb::{CheckKind, LbConfig, Mode};
        let cfg = LbConfig::quick(
            "127.0.0.1:1".parse().unwrap(),
            &[backend],
            rampart_balance::Algorithm::RoundRobin,
            Mode::Http,
            CheckKind::None,
        )
        .unwrap();
        let pool = crate::state::PoolState::new(cfg.pools[0].clone(), 1, 1);
        let rt = Arc::new(crate::ListenerRt {
            cfg: cfg.listeners[0].clone(),
            pool: Arc::new(crate::state::PoolHandle::new(pool, 1)),
            trusted: Vec::new(),
            stats: Arc::new(crate::ListenerStats::new(1)),
            limit: None,
            tls: None,
            firewall: None,
        });
        ConnCtx::new("192.0.2.7:40000".parse().unwrap(), &rt, 0, None).unwrap()
    }

    fn parse(head: &[u8]) -> (Parsed, String) {
        let mut out = Vec::new();
        let p = parse_request(head, &test_ctx(false), &mut out);
        (p, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn ambiguous_framing_missing_or_odd_hosts_and_other_versions_are_refused() {
        for (head, want) in [
            (&b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..], 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
            (b"GET /index.html#.png HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"GET http://a/#x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.0\r\n\r\n", 501),
            (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTQ/1.1\r\nHost: a\r\n\r\n", 400),
        ] {
            let (p, _) = parse(head);
            assert!(
                matches!(p, Parsed::Bad(s) if s == want),
                "{:?}: {p:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn accepted_heads_are_rendered_with_one_host_one_length_and_their_framing_fields() {
        let (p, out) = parse(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\nConnection: content-length, host, x-foo\r\nX-Foo: 1\r\n\r\n");
        assert!(
            matches!(&p, Parsed::Complete(r) if r.body == Framing::Length(5)),
            "{p:?}"
        );
        assert!(out.starts_with("POST /x HTTP/1.1\r\nHost: a\r\n"), "{out}");
        assert_eq!(out.matches("content-length: 5\r\n").count(), 1, "{out}");
        assert_eq!(
            out.to_ascii_lowercase().matches("content-length").count(),
            1,
            "{out}"
        );
        assert!(!out.contains("X-Foo"), "{out}");
        // Absolute form: the target's authority replaces the Host.
        let (p, out) = parse(b"GET http://b.example:81/p?q HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(matches!(p, Parsed::Complete(_)), "{p:?}");
        assert!(out.starts_with("GET /p?q HTTP/1.1\r\n"), "{out}");
        assert!(
            out.contains("host: b.example:81\r\n") && !out.contains("Host: a"),
            "{out}"
        );
        assert!(out.contains("x-forwarded-host: b.example:81\r\n"), "{out}");
        // A chunked request: TE once, no length.
        let (p, out) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n");
        assert!(
            matches!(&p, Parsed::Complete(r) if r.body == Framing::Chunked),
            "{p:?}"
        );
        assert!(out.ends_with("transfer-encoding: chunked\r\nx-forwarded-for: 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"), "{out}");
        // A POST with an empty body keeps its zero length.
        let (_, out) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert!(out.contains("content-length: 0\r\n"), "{out}");
    }

    #[test]
    fn chunk_framing_is_strict_crlf_visible_extensions_and_field_trailers() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5;a\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"0\n\r\n",
            b"0\r\n\n",
            b"0\r\nx: 1\n\r\n",
            b"0\r\n x: 1\r\n\r\n",
            b"0\r\nx : 1\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
            b"0\r\nnocolon\r\n\r\n",
            b"0\r\nx: \x01\r\n\r\n",
            b"0\r\nx: 1\r\r\n",
            b"10000000000000\r\n",
            b"0000000000000000A\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"5 ;a=b\r\nhello\r\n0\r\n\r\n"[..],
            b"5;a=\"q\";b\r\nhello\r\n0;x\r\nx-a: 1\r\nx-b:\r\n\r\n",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"00000000000000A\r\n0123456789\r\n0\r\n\r\n",
        ] {
            let mut c = Chunked::default();
            assert_eq!(
                c.scan(good),
                Ok(good.len()),
                "{:?}",
                String::from_utf8_lossy(good)
            );
            assert!(c.done());
        }
    }

    #[test]
    fn doubly_framed_or_other_coded_responses_are_framed_safely() {
        // Both framings: chunked wins, the length goes, the connection is not reused.
        let mut out = Vec::new();
        let RespParsed::Complete(r) = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            false,
            None,
            &mut out,
        ) else {
            panic!()
        };
        assert_eq!(r.body, Framing::Chunked);
        assert!(!r.reusable);
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.to_ascii_lowercase().contains("content-length"),
            "{text}"
        );
        // A coding other than chunked last: until the close, the coding kept for the client.
        let mut out = Vec::new();
        let RespParsed::Complete(r) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            false,
            false,
            None,
            &mut out,
        ) else {
            panic!()
        };
        assert_eq!(r.body, Framing::Close);
        assert!(!r.reusable && r.close);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Transfer-Encoding: chunked, gzip\r\n"),
            "{text}"
        );
        // An empty field adds no coding: still chunked.
        let RespParsed::Complete(r) = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n",
            false,
            false,
            None,
            &mut Vec::new(),
        ) else {
            panic!()
        };
        assert_eq!(r.body, Framing::Chunked);
        // Chunked twice, over one or two fields: no telling where the body ends.
        for h in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(
                parse_response(h, false, false, None, &mut Vec::new()),
                RespParsed::Bad
            ));
        }
    }

    const SEEDS: [&[u8]; 5] = [
        b"GET /a?b=c HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: keep-alive, x-h\r\nX-H: 1\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET http://h.example/p HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ];

    /// Check what a parse produced: an error status of the codec's, or an upstream head
    /// that parses, with one Host and one unambiguous framing.
    fn check_parse(data: &[u8], trusted: bool) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        match parse_request(data, &test_ctx(trusted), &mut out) {
            Parsed::Partial => {}
            Parsed::Acme { .. } => prop_assert!(false, "no ACME order is pending"),
            Parsed::Refused(r) => prop_assert!(false, "no firewall, yet refused: {r:?}"),
            Parsed::Bad(s) => prop_assert!(matches!(s, 400 | 431 | 501 | 505), "{s}"),
            Parsed::Complete(r) => {
                prop_assert!(r.head_len <= data.len());
                let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
                let mut req = httparse::Request::new(&mut hs);
                let n = req.parse(&out);
                prop_assert!(
                    matches!(n, Ok(httparse::Status::Complete(n)) if n == out.len()),
                    "{:?} rendered {:?}",
                    String::from_utf8_lossy(data),
                    String::from_utf8_lossy(&out)
                );
                let count = |name: &str| {
                    req.headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case(name))
                        .count()
                };
                prop_assert_eq!(count("host"), 1);
                prop_assert!(count("content-length") <= 1);
                prop_assert_eq!(
                    count("transfer-encoding"),
                    usize::from(r.body == Framing::Chunked)
                );
                prop_assert!(count("content-length") == 0 || r.body != Framing::Chunked);
                prop_assert_eq!(count("x-forwarded-for"), 1);
                prop_assert_eq!(count("x-real-ip"), 1);
                if !trusted {
                    prop_assert_eq!(count("forwarded"), 0);
                }
                for h in [
                    "connection",
                    "keep-alive",
                    "te",
                    "upgrade",
                    "proxy-connection",
                ] {
                    prop_assert_eq!(count(h), 0, "{}", h);
                }
                if let Framing::Length(n) = r.body {
                    let v = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"));
                    let want = n.to_string();
                    prop_assert_eq!(v.map(|h| h.value), Some(want.as_bytes()));
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic_the_request_parser(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_parse(&data, false)?;
        }

        #[test]
        fn mutated_requests_parse_to_an_error_or_an_unambiguous_upstream_head(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(&b"\r\n \t:,;\x00\x7f\x800aAzZ-/*?@\"chunked"[..])),
                1..6,
            ),
            trusted in any::<bool>(),
        ) {
            let mut data = SEEDS[seed].to_vec();
            for (at, op, b) in edits {
                let i = at.index(data.len() + 1);
                match op {
                    0 => data.insert(i, b),
                    1 if i < data.len() => { data.remove(i); }
                    _ if i < data.len() => data[i] = b,
                    _ => data.push(b),
                }
            }
            check_parse(&data, trusted)?;
            let mut c = Chunked::default();
            let _ = c.scan(&data);
            let _ = parse_response(&data, false, false, None, &mut Vec::new());
        }

        #[test]
        fn random_bytes_never_panic_the_response_parser_or_the_chunk_scanner(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            head in any::<bool>(),
        ) {
            let _ = parse_response(&data, head, false, None, &mut Vec::new());
            let mut c = Chunked::default();
            let _ = c.scan(&data);
        }
    }
}
