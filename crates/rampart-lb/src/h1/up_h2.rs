//! The fast path's requests to a server that speaks HTTP/2 (a pool with `tls = { alpn =
//! ["h2", ...] }` whose server picked `h2`; the connections are [`crate::upstream_h2`]'s).
//!
//! One HTTP policy: the request head the fast path parsed, checked and rewritten
//! (`X-Forwarded-*` set, hop-by-hop fields dropped) is what goes upstream, translated: its
//! `Host` becomes the `:authority`, the fields HTTP/2 forbids (`Connection`,
//! `Transfer-Encoding`, ...) are left out, a chunked body goes decoded (HTTP/2 frames it).
//! The request body streams from the client into the stream while the answer is awaited;
//! a chunked body's trailer fields go as HTTP/2 trailers (a HEADERS frame ending the
//! stream), without the fields a trailer may not carry ([`trailer_fields`]). The response
//! head is rendered as an HTTP/1.1 head (`Content-Length` when the server gave one, else
//! chunked) and goes through the same response rules as an HTTP/1.1 server's
//! ([`parse_response_to`]: HSTS, HEAD, HTTP/1.0 clients), then its body streams to the
//! client in that framing.
//!
//! Retries: a request the connection refused before sending it (closed meanwhile) goes
//! once more on a new connection to the same server, and so does one the server did not
//! process: refused with `REFUSED_STREAM`, or above the last stream id of its GOAWAY (RFC
//! 9113 sections 8.7 and 6.8), with its body when all of it that was read is kept (the
//! first [`REPLAY_MAX`] bytes, [`crate::upstream_h2_body`]); a longer one is a 502, as
//! any failure past sending is the caller's (`Failure::Sent`: retried elsewhere only
//! when idempotent and body-less).

use std::io;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;

use super::*;
use crate::upstream_h2::{self, BodyWriter, H2Body, Stream, REPLAY_MAX};

/// Where an attempt stands in its request: its server slot, when it started (and the
/// request), which attempt it is.
pub(super) struct At<'a> {
    pub(super) slot: &'a InFlight,
    /// When the attempt and the request started, on the data path's clock
    /// (`clock::ns_at`: converted once, each conversion costs a `Timespec` subtraction).
    pub(super) started_ns: u64,
    pub(super) t0_ns: u64,
    pub(super) attempt: u32,
}

/// Request fields HTTP/2 forbids (RFC 9113 section 8.2.2), and `Expect` (answered here).
const DROPPED: [&str; 7] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "expect",
];

impl BodySink for BodyWriter {
    async fn put(&mut self, data: &[u8], deadline: Instant) -> io::Result<()> {
        by(
            deadline,
            BodyWriter::put(self, Bytes::copy_from_slice(data)),
        )
        .await
    }
}

/// Fields a trailer section may not carry (RFC 9110 section 6.5.1: framing, routing,
/// request modifiers, authentication, content metadata; hyper's list), and those HTTP/2
/// forbids (RFC 9113 section 8.2.2).
const NOT_IN_TRAILERS: [&str; 18] = [
    "authorization",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "host",
    "max-forwards",
    "set-cookie",
    "trailer",
    "transfer-encoding",
    "te",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "expect",
    "proxy-authorization",
];

/// The trailer section of a chunked body (`name: value` lines, each with its CRLF, as the
/// chunked scanner checked them) as HTTP/2 trailers, leaving out what may not be one.
fn trailer_fields(raw: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in raw.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if NOT_IN_TRAILERS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    h
}

/// The upstream head the fast path rendered (`head`, HTTP/1.1) as an HTTP/2 request with
/// `body`; `authority` when it has no usable `Host`.
fn to_h2(head: &[u8], authority: &str, body: H2Body) -> Result<Request<H2Body>, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut fields);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("the upstream request head does not parse".into()),
    }
    let method = Method::from_bytes(r.method.unwrap_or("GET").as_bytes())
        .map_err(|e| format!("method: {e}"))?;
    let target = r.path.unwrap_or("/");
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.version_mut() = Version::HTTP_2;
    let mut host: Option<&[u8]> = None;
    let h = req.headers_mut();
    for f in r.headers.iter() {
        if f.name.eq_ignore_ascii_case("host") {
            host = host.or(Some(f.value));
            continue;
        }
        if DROPPED.iter().any(|d| f.name.eq_ignore_ascii_case(d))
            || (f.name.eq_ignore_ascii_case("te") && !f.value.eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            h.append(n, v);
        }
    }
    let authority = host
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| http::uri::Authority::try_from(h).ok())
        .map_or_else(|| authority.to_string(), |a| a.to_string());
    let path = if target.starts_with('/') || target == "*" {
        target.to_string()
    } else {
        // Absolute form: its path.
        target
            .parse::<Uri>()
            .ok()
            .and_then(|u| u.path_and_query().map(|p| p.to_string()))
            .unwrap_or_else(|| "/".to_string())
    };
    *req.uri_mut() = Uri::builder()
        .scheme("https")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| format!("request target: {e}"))?;
    Ok(req)
}

/// An HTTP/2 response head as an HTTP/1.1 one, for [`parse_response_to`]: the server's
/// `Content-Length`, else `0` for a body that already ended, else chunked.
fn h1_head(resp: &http::response::Parts, ended: bool, head_req: bool, out: &mut Vec<u8>) {
    let status = resp.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in resp.headers.iter() {
        push_header(out, n.as_str().as_bytes(), v.as_bytes());
    }
    let code = status.as_u16();
    let bodiless = head_req || code == 204 || code == 304 || code < 200;
    if !bodiless && !resp.headers.contains_key(http::header::CONTENT_LENGTH) {
        if ended {
            out.extend_from_slice(b"content-length: 0\r\n");
        } else {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A new HTTP/2 connection to the attempt's server, for a request to send again.
async fn reopen(ctx: &ConnCtx, at: &At<'_>) -> Result<Stream, String> {
    let s = at.slot.server();
    let t = at.slot.pool.cfg.timeouts;
    let tls = at.slot.pool.cfg.tls.as_ref();
    let (conn, h2) = crate::upstream_tls::connect_alpn(s.addr, t.connect, tls)
        .await
        .map_err(|e| e.to_string())?;
    if !h2 {
        return Err(format!("{} no longer picks h2", s.addr));
    }
    let now = crate::clock::now_ns();
    upstream_h2::handshake(conn, s, ctx.worker, t.connect, now, None)
        .await
        .map_err(|e| e.to_string())
}

/// The request's head (HTTP/1.1, as rendered) and authority, and its body's writer: what
/// builds it again.
struct Again<'a> {
    head: &'a [u8],
    authority: &'a str,
    body: Option<&'a BodyWriter>,
}

/// Send the request; once more on a new connection when it was not sent, or when the
/// server did not process it and all of its body that was read is kept. With the lease
/// of the stream the answer comes on.
async fn send(
    mut stream: Stream,
    mut request: Request<H2Body>,
    ctx: &ConnCtx,
    at: &At<'_>,
    again: Again<'_>,
) -> Result<(hyper::Response<Incoming>, upstream_h2::Lease), Failure> {
    let mut renewed = false;
    loop {
        upstream_h2::STREAMS.fetch_add(1, Ordering::Relaxed);
        let next = match stream.sender.try_send_request(request).await {
            Ok(r) => {
                if let Some(w) = again.body {
                    w.settle();
                }
                return Ok((r, stream.lease));
            }
            Err(mut e) => match e.take_message() {
                Some(r) => r,
                None => {
                    let e = e.into_error();
                    if renewed || !upstream_h2::unprocessed(&e) {
                        return Err(Failure::Sent(io::Error::other(e)));
                    }
                    let body = match again.body {
                        None => H2Body::Empty,
                        Some(w) => w.replay().ok_or_else(|| {
                            Failure::Sent(io::Error::other(format!(
                                "{e} (not processed; its body is past the {REPLAY_MAX} bytes kept to send it again)"
                            )))
                        })?,
                    };
                    tracing::debug!(server = %at.slot.server().name, error = %e, "HTTP/2 request not processed: sent again");
                    to_h2(again.head, again.authority, body)
                        .map_err(|m| Failure::Sent(io::Error::other(m)))?
                }
            },
        };
        if renewed {
            return Err(Failure::Sent(io::Error::other(
                "the HTTP/2 connection closed before the request went",
            )));
        }
        renewed = true;
        request = next;
        drop(stream);
        stream = reopen(ctx, at)
            .await
            .map_err(|e| Failure::Sent(io::Error::other(e)))?;
    }
}

/// Send the request (head rendered in `out`, body still with the client) on `stream`
/// and stream the answer to the client.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<T: ClientStream>(
    stream: Stream,
    io: &mut T,
    buf: &mut Buf,
    ctx: &ConnCtx,
    req: &ReqInfo,
    out: &mut Vec<u8>,
    at: At<'_>,
    continued: &mut bool,
) -> Result<Next, Failure> {
    let pool = &at.slot.pool;
    let s = at.slot.server();
    let t = pool.cfg.timeouts;
    let client_stall = ctx.listener.cfg.idle_timeout;
    let authority = pool
        .cfg
        .tls
        .as_ref()
        .and_then(|c| c.server_name.clone())
        .unwrap_or_else(|| s.addr.to_string());
    let (writer, body) = match req.body {
        Framing::None => (None, H2Body::Empty),
        Framing::Length(n) => {
            let (w, b) = BodyWriter::new(Some(n));
            (Some(w), b)
        }
        _ => {
            let (w, b) = BodyWriter::new(None);
            (Some(w), b)
        }
    };
    let request = to_h2(out, &authority, body).map_err(|e| Failure::Sent(io::Error::other(e)))?;
    let limits = BodyLimits::of(ctx, req);
    let done = Notify::new();
    // (In a block: the two futures borrow the client stream and `out` until they drop.)
    let (pumped, answer) = {
        // The body, from the client into the stream: when its last byte went.
        let pump = async {
            let r = async {
                let Some(mut tx) = writer.clone() else {
                    return Ok(Instant::now());
                };
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
                let mut left = match req.body {
                    Framing::Length(n) => Left::Length(n),
                    _ => Left::Dechunk(Chunked::keeping_trailers()),
                };
                send_body(
                    io,
                    buf,
                    &mut tx,
                    &mut left,
                    s,
                    (client_stall, t.response),
                    limits,
                )
                .await?;
                let trailers = match &left {
                    Left::Dechunk(c) => trailer_fields(c.trailers()),
                    _ => HeaderMap::new(),
                };
                tx.finish(trailers).map_err(Failure::Sent)?;
                Ok(Instant::now())
            }
            .await;
            done.notify_one();
            r
        };
        // The answer; the response timeout runs from the end of the request body.
        let answer = async {
            let deadline = async {
                done.notified().await;
                tokio::time::sleep(t.response).await;
            };
            let again = Again {
                head: &out[..],
                authority: &authority,
                body: writer.as_ref(),
            };
            tokio::select! {
                r = send(stream, request, ctx, &at, again) => Some(r),
                _ = deadline => None,
            }
        };
        tokio::pin!(pump);
        tokio::pin!(answer);
        let mut pumped = None;
        let answer = loop {
            tokio::select! {
                r = &mut pump, if pumped.is_none() => match r {
                    Ok(at) => pumped = Some(Ok(at)),
                    Err(Failure::Sent(e)) => pumped = Some(Err(e)),
                    // The client's side failed: the stream is reset (its body never ends).
                    Err(f) => return Err(f),
                },
                a = &mut answer => break a,
            }
        };
        // An early answer: the rest of the body still goes (the server may read it).
        let pumped = match pumped {
            Some(p) => p,
            None => match pump.await {
                Ok(at) => Ok(at),
                Err(Failure::Sent(e)) => Err(e),
                Err(f) => return Err(f),
            },
        };
        (pumped, answer)
    };
    // The server stopped taking the body but answered: the client connection ends with
    // this answer (the rest of its body was never read).
    let (sent, cut) = match pumped {
        Ok(at) => (at, false),
        Err(_) => (Instant::now(), true),
    };
    // (The stream's lease: given back when this returns, the answer read.)
    let (resp, _lease) = match answer {
        None => return Err(Failure::Timeout),
        Some(Err(f)) => return Err(f),
        Some(Ok(r)) => r,
    };
    let (parts, mut body) = resp.into_parts();
    let mut text = Vec::with_capacity(512);
    h1_head(&parts, body.is_end_stream(), req.head, &mut text);
    let client = Client {
        head_req: req.head,
        close: req.close || crate::stopping() || cut,
        http10: req.http10,
        upgrade: false,
    };
    let mut head = Vec::with_capacity(text.len() + 64);
    let info = match parse_response_to(&text, client, ctx.hsts().map(|v| v.as_bytes()), &mut head) {
        RespParsed::Complete(info) => info,
        _ => {
            return Err(Failure::Sent(io::Error::other(
                "unusable HTTP/2 response head",
            )))
        }
    };
    answered(ctx, req, &at, &info, sent, None);
    out.clear();
    out.extend_from_slice(&head);
    let complete = stream_body(io, &mut body, &info, s, (client_stall, t.response), out).await;
    if !complete {
        return Ok(Next::Close);
    }
    if cut {
        return Ok(Next::Linger);
    }
    Ok(if info.close {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// Stream an HTTP/2 response body to the client in the framing `info` gives (what is in
/// `out`, the head, goes first; frames that are already here go with it): whether it
/// ended cleanly.
async fn stream_body<T: ClientStream>(
    io: &mut T,
    body: &mut Incoming,
    info: &RespInfo,
    s: &crate::state::ServerState,
    (client_stall, up_stall): (Duration, Duration),
    out: &mut Vec<u8>,
) -> bool {
    let chunked = info.body == Framing::Chunked && !info.dechunk;
    let mut left = match info.body {
        Framing::None => {
            return write_flush(io, out, Instant::now() + client_stall)
                .await
                .is_ok();
        }
        Framing::Length(n) => Some(n),
        _ => None,
    };
    loop {
        let frame = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(f) => f,
            None => {
                // Nothing more yet: what is gathered goes now.
                if !out.is_empty() {
                    if write_flush(io, out, Instant::now() + client_stall)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    out.clear();
                }
                match tokio::time::timeout(up_stall, body.frame()).await {
                    Ok(f) => f,
                    Err(_) => return false,
                }
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(server = %s.name, error = %e, "HTTP/2 response body failed");
                return false;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    if d.is_empty() {
                        continue;
                    }
                    if let Some(n) = left.as_mut() {
                        if d.len() as u64 > *n {
                            return false;
                        }
                        *n -= d.len() as u64;
                    }
                    s.stats.bytes_out(d.len());
                    if chunked {
                        out.extend_from_slice(format!("{:x}\r\n", d.len()).as_bytes());
                        out.extend_from_slice(&d);
                        out.extend_from_slice(b"\r\n");
                    } else {
                        out.extend_from_slice(&d);
                    }
                    if out.len() >= BUF {
                        if write_flush(io, out, Instant::now() + client_stall)
                            .await
                            .is_err()
                        {
                            return false;
                        }
                        out.clear();
                    }
                }
                Err(f) => {
                    if let (Ok(trailers), true) = (f.into_trailers(), chunked) {
                        out.extend_from_slice(b"0\r\n");
                        for (n, v) in trailers.iter() {
                            push_header(out, n.as_str().as_bytes(), v.as_bytes());
                        }
                        out.extend_from_slice(b"\r\n");
                        return write_flush(io, out, Instant::now() + client_stall)
                            .await
                            .is_ok();
                    }
                }
            },
        }
    }
    if left.is_some_and(|n| n > 0) {
        return false;
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    out.is_empty()
        || write_flush(io, out, Instant::now() + client_stall)
            .await
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_goes_without_host_and_connection_fields() {
        let head = b"POST http://ignored/p?q=1 HTTP/1.1\r\nHost: example.org:8443\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nTE: gzip\r\nX-Forwarded-For: 10.0.0.1\r\nExpect: 100-continue\r\n\r\n";
        let r = to_h2(head, "fallback", H2Body::Empty).expect("translates");
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri().to_string(), "https://example.org:8443/p?q=1");
        assert_eq!(r.version(), Version::HTTP_2);
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-forwarded-for"]);
        let r = to_h2(
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            "web.internal",
            H2Body::Empty,
        )
        .expect("translates");
        assert_eq!(r.uri().to_string(), "https://web.internal/");
    }

    #[test]
    fn trailers_go_without_the_fields_a_trailer_may_not_carry() {
        let t = trailer_fields(
            b"X-Sum: 7\r\nContent-Length: 3\r\nauthorization: x\r\nx-e:\r\nx-w:  a b \r\n",
        );
        let got: Vec<(&str, &[u8])> = t.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            got,
            [
                ("x-sum", &b"7"[..]),
                ("x-e", &b""[..]),
                ("x-w", &b"a b"[..])
            ]
        );
        assert!(trailer_fields(b"").is_empty());
    }

    #[test]
    fn the_answer_head_gets_a_framing() {
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = http::StatusCode::NOT_FOUND;
        parts.headers.insert("x-a", HeaderValue::from_static("b"));
        let mut out = Vec::new();
        h1_head(&parts, false, false, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nx-a: b\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        h1_head(&parts, true, false, &mut out);
        assert!(out.ends_with(b"content-length: 0\r\n\r\n"));
        out.clear();
        h1_head(&parts, false, true, &mut out);
        assert!(out.ends_with(b"x-a: b\r\n\r\n"));
    }
}
