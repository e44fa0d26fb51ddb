//! One attempt of the hyper path (`http.rs`: HTTP/2 clients) on one server: a pooled
//! connection (HTTP/2 first, when the pool offers `h2`: a stream within the server's
//! limit, waited for up to the pool's queue timeout, [`upstream_h2::acquire`]) or a new
//! one, the request sent, its answer's head awaited within the response timeout. A request
//! the server did not process (REFUSED_STREAM, above a GOAWAY's last stream id) goes once
//! more on a new connection, a body from its first byte through `upstream_h2_body`'s
//! replaying writer (fed by its `pump`) when all of it read so far is kept (64 KiB).

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::body::ReqBody;
use crate::clock::now_ns;
use crate::conn::ConnCtx;
use crate::state::{InFlight, PoolState, ServerState};
use crate::upstream::{self, ConnectError};
use crate::upstream_h2::{self, Opening, Pick};
use crate::upstream_h2_body::{self, BodyWriter, H2Body, Replayer, REPLAY_MAX};

/// How one attempt on one server ended, when it did not produce a response.
pub(crate) enum Failure {
    /// Nothing was sent; the request is handed back.
    Unsent(Box<Request<ReqBody>>, Option<ConnectError>),
    /// The request (or part of it) was sent and the connection failed before any
    /// response byte.
    Sent(Box<dyn std::error::Error + Send + Sync>),
    /// No response head within the response timeout.
    Timeout,
    /// Every stream of the server's HTTP/2 connections stayed taken past the queue
    /// timeout (nothing was sent).
    Busy,
}

/// An upstream connection of this path: HTTP/1.1, or HTTP/2 when the pool offers `h2` and
/// the server picked it (that one stays in the server's `h2` slot: nothing to hand back).
pub(crate) enum Up {
    H1(SendRequest<ReqBody>),
    H2(upstream_h2::Stream),
}

/// An open pooled connection of `s` for `worker`, HTTP/2 first when `h2`: a free
/// stream, else (within the limit of connections) the room reserved for a new one, else
/// a free stream waited for (at most `wait`).
async fn next_pooled(
    s: &ServerState,
    worker: usize,
    (idle, wait): (Duration, Duration),
    h2: bool,
) -> Result<(Option<Up>, Option<Opening<'_>>), upstream_h2::Busy> {
    let mut opening = None;
    if h2 {
        match upstream_h2::acquire(s, worker, now_ns(), wait).await? {
            Pick::Stream(h) => return Ok((Some(Up::H2(h)), None)),
            Pick::Open(o) => opening = Some(o),
        }
    }
    Ok((
        upstream::checkout(s, worker, idle).await.map(Up::H1),
        opening,
    ))
}

/// A new connection to `s`: offering `h2` when `h2`, HTTP/1.1 when the server did not pick it.
async fn connect(
    s: &ServerState,
    worker: usize,
    pool: &PoolState,
    h2: bool,
    opening: Option<Opening<'_>>,
) -> Result<Up, ConnectError> {
    let (t, tls) = (pool.cfg.timeouts, pool.cfg.tls.as_ref());
    if !h2 {
        return upstream::connect_http(s.addr, t.connect, tls)
            .await
            .map(Up::H1);
    }
    let (conn, picked) = crate::upstream_tls::connect_alpn(s.addr, t.connect, tls).await?;
    if picked {
        upstream_h2::handshake(conn, s, worker, t.connect, now_ns(), opening)
            .await
            .map(Up::H2)
    } else {
        if let Some(o) = opening {
            o.picked_h1();
        }
        upstream::handshake_http1(conn, s.addr).await.map(Up::H1)
    }
}

/// A copy of `req`'s head, without its body.
fn head_of(req: &Request<ReqBody>) -> Request<ReqBody> {
    let mut r = Request::new(ReqBody::Empty);
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// An HTTP/2 client's body sent over HTTP/2 through a pump (see `attempt_on`).
struct Pumped {
    replayer: Replayer,
    first: Option<H2Body>,
    /// Notified when the client's body ended (the response timeout starts then).
    sent: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// Send `req` on `up` (over HTTP/2 with `body` instead of its own when given: then `req`
/// is the head, kept); a request that was not sent comes back with the error.
async fn send_on(
    up: &mut Up,
    req: Request<ReqBody>,
    body: Option<H2Body>,
    authority: &str,
) -> Result<Response<Incoming>, (Option<Request<ReqBody>>, hyper::Error)> {
    match (up, body) {
        (Up::H1(s), _) => s
            .try_send_request(req)
            .await
            .map_err(|mut e| (e.take_message(), e.into_error())),
        (Up::H2(s), None) => {
            upstream_h2::STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            s.sender
                .try_send_request(upstream_h2::to_upstream(req, authority))
                .await
                .map_err(|mut e| (e.take_message().map(upstream_h2::back), e.into_error()))
        }
        (Up::H2(s), Some(body)) => {
            upstream_h2::STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let head = head_of(&req);
            let mut r = upstream_h2::to_upstream(head, authority);
            *r.body_mut() = body;
            s.sender
                .try_send_request(r)
                .await
                .map_err(|mut e| (e.take_message().map(|_| req), e.into_error()))
        }
    }
}

/// Send `req` to the slot's server: over an idle pooled connection when there is one
/// (falling back to a new connection when it turns out closed), else a new one. With the
/// HTTP/1.1 connection to hand back after the response, or the HTTP/2 stream's lease to
/// keep until its body is read.
#[allow(clippy::type_complexity)]
pub(crate) async fn attempt_on(
    mut req: Request<ReqBody>,
    slot: &InFlight,
    ctx: &ConnCtx,
) -> Result<
    (
        Response<Incoming>,
        Option<SendRequest<ReqBody>>,
        Option<upstream_h2::Lease>,
        u64,
    ),
    Failure,
> {
    let pool = &slot.pool;
    let s = slot.server();
    let t = pool.cfg.timeouts;
    let h2 = pool.cfg.tls.as_ref().is_some_and(|c| c.offers_h2());
    let authority = pool
        .cfg
        .tls
        .as_ref()
        .and_then(|c| c.server_name.clone())
        .unwrap_or_else(|| s.addr.to_string());
    let wait = (t.idle, pool.cfg.queue.timeout);
    let (mut pooled, mut opening) = match next_pooled(s, ctx.worker, wait, h2).await {
        Ok(p) => p,
        Err(_) => return Err(Failure::Busy),
    };
    let mut resent = false;
    // An HTTP/2 client's body bound for an HTTP/2 stream goes through a pump and a
    // `BodyWriter` that keep its first `REPLAY_MAX` bytes, so that a request the server did
    // not process goes again with its body, as the fast path's do; `first` is the body's
    // first reader, later ones are replays.
    let mut pumped: Option<Pumped> = None;
    loop {
        let from_pool = pooled.is_some();
        let mut up = match pooled.take() {
            Some(u) => {
                drop(opening.take());
                u
            }
            None => match connect(s, ctx.worker, pool, h2, opening.take()).await {
                Ok(u) => u,
                Err(e) => return Err(Failure::Unsent(Box::new(req), Some(e))),
            },
        };
        // The response timeout runs from the end of the request body (at once for a
        // request without one), so a long upload is not cut off.
        let sent = match req.body_mut() {
            ReqBody::Incoming(_, sent, to) => {
                *to = Some((slot.pool.clone(), slot.server));
                Some(sent.clone())
            }
            ReqBody::Empty => None,
        };
        if sent.is_some() && matches!(up, Up::H2(_)) && pumped.is_none() {
            let body = std::mem::replace(req.body_mut(), ReqBody::Empty);
            let (w, first) = BodyWriter::new(http_body::Body::size_hint(&body).exact());
            pumped = Some(Pumped {
                replayer: w.replayer(),
                first: Some(first),
                sent: sent.clone(),
            });
            tokio::spawn(upstream_h2_body::pump(body, w));
        }
        let sent = match &pumped {
            Some(p) => p.sent.clone(),
            None => sent,
        };
        // A body-less request on HTTP/2: its head, to send it once more on a new
        // connection should the server not process it.
        let again = (matches!(up, Up::H2(_)) && sent.is_none() && !resent).then(|| head_of(&req));
        // A pumped body's reader for this try: the first, else a replay from its first byte.
        let body = match (&mut pumped, &up) {
            (None, _) => None,
            (Some(_), Up::H1(_)) => {
                // The server no longer picks h2 and the body went into the pump.
                return Err(Failure::Sent(
                    "the server answered HTTP/1.1 on a retry of a streamed HTTP/2 body".into(),
                ));
            }
            (Some(p), Up::H2(_)) => match p.first.take().or_else(|| p.replayer.replay()) {
                Some(b) => Some(b),
                None => {
                    tracing::warn!(server = %s.name, kept = REPLAY_MAX, "HTTP/2 request not processed and its body is past the bytes kept to send it again");
                    return Err(Failure::Sent(
                        "the request was not processed and its body is past the bytes kept to send it again"
                            .into(),
                    ));
                }
            },
        };
        // When the request's last byte went out: least-response-time measures the server
        // from there (a body-less request goes out at once).
        let sent_at = std::sync::atomic::AtomicU64::new(now_ns());
        let response_deadline = async {
            if let Some(sent) = &sent {
                sent.notified().await;
                sent_at.store(now_ns(), std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(t.response).await;
        };
        // A pumped body's request is sent by its head: kept for a retry.
        let mut head = body.as_ref().map(|_| head_of(&req));
        let res = tokio::select! {
            r = send_on(&mut up, req, body, &authority) => r,
            _ = response_deadline => return Err(Failure::Timeout),
        };
        match res {
            Ok(resp) => {
                if let Some(p) = &pumped {
                    p.replayer.settle();
                }
                let (sender, lease) = match up {
                    Up::H1(s) => (Some(s), None),
                    Up::H2(h) => (None, Some(h.lease)),
                };
                return Ok((
                    resp,
                    sender,
                    lease,
                    sent_at.load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
            Err((Some(r), e)) => {
                // Not sent. A pooled connection that closed meanwhile is no fault of
                // the server: try the next idle one or a new connection.
                req = r;
                if !from_pool {
                    if pumped.is_some() {
                        // Its body is in the pump: no other server can have it.
                        return Err(Failure::Sent(Box::new(e)));
                    }
                    return Err(Failure::Unsent(Box::new(req), None));
                }
                (pooled, opening) = match next_pooled(s, ctx.worker, wait, h2).await {
                    Ok(p) => p,
                    Err(_) => return Err(Failure::Busy),
                };
            }
            Err((None, e)) => match again {
                // Refused unprocessed (REFUSED_STREAM, GOAWAY): once more, on a new
                // connection to the same server.
                Some(r) if upstream_h2::unprocessed(&e) => {
                    tracing::debug!(server = %s.name, error = %e, "HTTP/2 request not processed: sent again");
                    req = r;
                    resent = true;
                }
                // With its body, from the first byte (the head is still in `req`).
                // (Replayable or not is known before another connection is opened.)
                None if !resent && upstream_h2::unprocessed(&e) => {
                    let (Some(p), Some(h)) = (pumped.as_mut(), head.take()) else {
                        return Err(Failure::Sent(Box::new(e)));
                    };
                    let Some(b) = p.replayer.replay() else {
                        tracing::warn!(server = %s.name, kept = REPLAY_MAX, error = %e, "HTTP/2 request not processed and its body is past the bytes kept to send it again");
                        return Err(Failure::Sent(Box::new(e)));
                    };
                    tracing::debug!(server = %s.name, error = %e, "HTTP/2 request not processed: sent again with its body");
                    p.first = Some(b);
                    req = h;
                    resent = true;
                }
                _ => return Err(Failure::Sent(Box::new(e))),
            },
        }
    }
}
