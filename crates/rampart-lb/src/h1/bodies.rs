//! Bodies and tunnels of the fast path: what is left of a body being forwarded (its
//! framing), a request body from the client to the server (a socket or an HTTP/2 stream), a
//! response body back, an upgraded connection both ways.

use super::*;

/// A body being forwarded: what is left of it.
pub(super) enum Left {
    Length(u64),
    Chunked(Chunked),
    /// Chunked, forwarded without its framing (to an HTTP/1.0 client).
    Dechunk(Chunked),
    Close,
}

impl Left {
    pub(super) fn of(f: Framing) -> Option<Left> {
        match f {
            Framing::None => None,
            Framing::Length(n) => Some(Left::Length(n)),
            Framing::Chunked => Some(Left::Chunked(Chunked::default())),
            Framing::Close => Some(Left::Close),
        }
    }

    /// A response body's: as [`Left::of`], decoding a chunked one when `dechunk`.
    pub(super) fn of_response(f: Framing, dechunk: bool) -> Option<Left> {
        match (f, dechunk) {
            (Framing::Chunked, true) => Some(Left::Dechunk(Chunked::default())),
            _ => Left::of(f),
        }
    }

    /// [`Left::take`]; what to forward is `data[..k]`, or, for [`Left::Dechunk`], what was
    /// appended to `decoded`.
    pub(super) fn take_into(
        &mut self,
        data: &[u8],
        decoded: &mut Vec<u8>,
    ) -> Result<usize, BadChunk> {
        match self {
            Left::Dechunk(c) => c.scan_with(data, |d| decoded.extend_from_slice(d)),
            _ => self.take(data),
        }
    }

    pub(super) fn decodes(&self) -> bool {
        matches!(self, Left::Dechunk(_))
    }

    /// How much of `data` belongs to the body; updates what is left.
    pub(super) fn take(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
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

    pub(super) fn done(&self) -> bool {
        match self {
            Left::Length(n) => *n == 0,
            Left::Chunked(c) | Left::Dechunk(c) => c.done(),
            Left::Close => false,
        }
    }
}

/// Where a request body goes: an upstream socket, or an HTTP/2 stream's channel.
pub(super) trait BodySink: Send {
    /// Send `data`, by `deadline`.
    fn put(
        &mut self,
        data: &[u8],
        deadline: Instant,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

impl BodySink for UpStream {
    fn put(
        &mut self,
        data: &[u8],
        deadline: Instant,
    ) -> impl Future<Output = io::Result<()>> + Send {
        write_flush(self, data, deadline)
    }
}

/// Forward the rest of a request body from the client (what is in `buf`, then reads) to
/// the upstream (decoded when `left` is [`Left::Dechunk`]). A read stalled for
/// `client_stall`, or a write for `up_stall`, fails.
pub(super) async fn send_body<T: ClientStream>(
    io: &mut T,
    buf: &mut Buf,
    up: &mut impl BodySink,
    left: &mut Left,
    s: &crate::state::ServerState,
    (client_stall, up_stall): (Duration, Duration),
    limits: BodyLimits,
) -> Result<(), Failure> {
    let start = Instant::now();
    let mut total: u64 = 0;
    let mut decoded = Vec::new();
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
        decoded.clear();
        let k = left
            .take_into(buf.data(), &mut decoded)
            .map_err(|_| Failure::BadBody)?;
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
            let data = if left.decodes() {
                &decoded[..]
            } else {
                &buf.data()[..k]
            };
            if !data.is_empty() {
                up.put(data, Instant::now() + up_stall)
                    .await
                    .map_err(Failure::Sent)?;
            }
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
pub(super) struct BodyLimits {
    /// Bytes (chunked bodies; a declared length is checked with the head).
    pub(super) max: Option<u64>,
    /// Bytes per second, after [`BODY_RATE_GRACE`].
    pub(super) min_rate: Option<u64>,
}

impl BodyLimits {
    /// No limit.
    pub(super) const NONE: BodyLimits = BodyLimits {
        max: None,
        min_rate: None,
    };

    /// The firewall's limits for `req`'s body. A chunked body's size is known only as it
    /// streams (counted with its framing); a declared length was checked with the head.
    pub(super) fn of(ctx: &ConnCtx, req: &ReqInfo) -> BodyLimits {
        let fw = ctx.listener.firewall.as_deref();
        BodyLimits {
            max: match req.body {
                Framing::Chunked => fw.and_then(|f| f.max_body()),
                _ => None,
            },
            min_rate: fw.and_then(|f| f.min_upload_rate()),
        }
    }
}

/// The first moments of a body are not held to the minimum upload rate (a connection's
/// slow start, a client computing what it sends).
const BODY_RATE_GRACE: Duration = Duration::from_secs(1);

/// Forward the rest of a response body; whether it ended cleanly.
pub(super) async fn stream_response<T: ClientStream>(
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
pub(super) async fn tunnel<T: ClientStream>(
    io: &mut T,
    buf: &mut Buf,
    mut up: UpStream,
    ctx: &ConnCtx,
) {
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
