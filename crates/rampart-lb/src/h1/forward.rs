//! Forwarding one request: pick a server, send the request over a pooled socket (or an
//! HTTP/2 stream), stream the answer back, and retry or answer an error when the attempt
//! failed. `serve` (the parent module) owns the connection; this owns one request's trip
//! through the pool. What the HTTP/2 upstream path shares with it (`Failure`, `answered`,
//! `log`) stays in the parent, so this module and `up_h2` do not import each other.

use super::*;

/// Whether a request whose write to a pooled connection failed after `written` bytes may
/// go out again on another connection: when none of it reached the socket, or when it is
/// idempotent and has no body (RFC 9110 section 9.2.2), so that the server may safely see
/// it twice. A POST that was partly sent is never resent.
pub(super) fn may_resend(written: usize, replayable: bool) -> bool {
    written == 0 || replayable
}

/// Proxy one request (head parsed, its upstream rendering in `out`) and answer it.
pub(super) async fn proxy<T: ClientStream>(
    io: &mut T,
    buf: &mut Buf,
    ctx: &ConnCtx,
    req: &ReqInfo,
    out: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
) -> Next {
    let t0 = Instant::now();
    let now = ns_at(t0.into_std());
    let pool = ctx.listener.pool_for(req.route).get_on(ctx.worker);
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
        let (started, started_ns) = if attempt == 0 {
            (t0, now)
        } else {
            let t = Instant::now();
            (t, ns_at(t.into_std()))
        };
        let r = attempt_on(
            io,
            buf,
            ctx,
            req,
            out,
            &slot,
            (started, started_ns),
            now,
            attempt,
            &mut continued,
            timer.as_mut(),
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
            Failure::Busy => break (503, pool.msg_503_queue.clone()),
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
            &pool.cfg.name,
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
    (started, now_ns): (Instant, u64),
    t0_ns: u64,
    attempt: u32,
    continued: &mut bool,
    mut timer: Pin<&mut Sleep>,
) -> Result<Next, Failure> {
    let pool = &slot.pool;
    let s = slot.server();
    let t = pool.cfg.timeouts;
    let client_stall = ctx.listener.cfg.idle_timeout;
    // A pool offering `h2`: a server that picked it gets the request over HTTP/2 (an
    // upgrade goes over HTTP/1.1, whose ALPN leaves `h2` out).
    let h2 = !req.upgrade && pool.cfg.tls.as_ref().is_some_and(|c| c.offers_h2());
    let h2_at = up_h2::At {
        slot,
        started_ns: now_ns,
        t0_ns,
        attempt,
    };
    // (Boxed: the HTTP/2 exchange's state does not weigh on every HTTP/1.1 request's.)
    let mut opening = None;
    if h2 {
        let wait = pool.cfg.queue.timeout;
        match crate::upstream_h2::acquire(s, ctx.worker, now_ns, wait).await {
            Ok(Pick::Stream(st)) => {
                return Box::pin(up_h2::forward(st, io, buf, ctx, req, out, h2_at, continued)).await
            }
            Ok(Pick::Open(o)) => opening = Some(o),
            Err(_) => return Err(Failure::Busy),
        }
    }
    let mut pooled = upstream::checkout_raw(s, ctx.worker, t.idle, now_ns);
    // A new connection whose server picked HTTP/1.1.
    let mut fresh = None;
    if h2 && pooled.is_none() {
        let (conn, picked_h2) =
            upstream_tls::connect_alpn(s.addr, t.connect, pool.cfg.tls.as_ref())
                .await
                .map_err(Failure::Unsent)?;
        if picked_h2 {
            let st = crate::upstream_h2::handshake(conn, s, ctx.worker, t.connect, now_ns, opening)
                .await
                .map_err(Failure::Unsent)?;
            return Box::pin(up_h2::forward(st, io, buf, ctx, req, out, h2_at, continued)).await;
        }
        if let Some(o) = opening.take() {
            o.picked_h1();
        }
        fresh = Some(conn);
    }
    drop(opening);
    let mut may_renew = true;
    let mut ub = Buf::take();
    let (mut up, info, cut, sent, first) = 'conn: loop {
        let from_pool = pooled.is_some();
        let mut up = match pooled.take().or_else(|| fresh.take()) {
            Some(c) => c,
            None => upstream_tls::connect(s.addr, t.connect, pool.cfg.tls.as_ref())
                .await
                .map_err(Failure::Unsent)?,
        };
        // The head, with the body when all of it is here already (a small POST): one write.
        let head_len = out.len();
        let mut left = Left::of(req.body);
        let mut inline = 0;
        // (The firewall's rules are read only for a request with a body.)
        let limits = if req.body == Framing::None {
            BodyLimits::NONE
        } else {
            BodyLimits::of(ctx, req)
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
        let w = timer::within_io(
            timer.as_mut(),
            || started,
            t.response,
            write_counted(&mut up, out, &mut written),
        )
        .await;
        out.truncate(head_len);
        if let Err(e) = w {
            if from_pool && may_resend(written, req.replayable) {
                // Closed while idle: no fault of the server, and nothing of the request
                // reached it (or it may be sent twice).
                pooled = upstream::checkout_raw(s, ctx.worker, t.idle, now_ns);
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
        // measure) starts here. (A clock read only for what uses it: a body's end starts
        // the response timeout; else it runs from the attempt's start.)
        let sent = if sent_body || pool.records_response_time() {
            Instant::now()
        } else {
            started
        };
        // The response head; the response timeout runs from the end of the request. After
        // a cut body, only what the server already sent counts: a moment to read it.
        let (since, timeout) = if cut.is_some() {
            (sent, EARLY_RESPONSE_WAIT.min(t.response))
        } else if sent_body {
            (sent, t.response)
        } else {
            (started, t.response)
        };
        // When the answer's first byte came, if the head took more than one read (else the
        // clock read after the head stands for it).
        let mut first: Option<Instant> = None;
        loop {
            let read = ub.read_from(&mut up, MAX_HEAD);
            let n = match timer::within(timer.as_mut(), since, timeout, read).await {
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
    let (t1, end) = answered(ctx, req, &h2_at, &info, sent, first);
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
