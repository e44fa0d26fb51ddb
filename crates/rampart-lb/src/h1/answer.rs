//! The balancer's own short answers on the HTTP/1 fast path: errors (400, 408, 431,
//! 501, 505, the firewall's refusals) and redirects, with their reason phrases.

use std::io;

use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::buf::Out;
use super::head::push_header;
use super::write::write_flush;
use crate::conn::ConnCtx;

pub(super) const MSG_400: &[u8] = b"400 Bad Request: malformed request\n";
pub(super) const MSG_408: &[u8] = b"408 Request Timeout: the request head did not arrive in time\n";
pub(super) const MSG_431: &[u8] = b"431 Request Header Fields Too Large\n";
pub(super) const MSG_501: &[u8] = b"501 Not Implemented: CONNECT is not supported\n";
pub(super) const MSG_505: &[u8] = b"505 HTTP Version Not Supported\n";

/// The reason phrase of the balancer's own answers (the firewall's 403, 405, 413 and 429
/// too, and the redirects').
pub(super) fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// A short error answer of the balancer itself.
pub(super) async fn send_error<T: AsyncWrite + Unpin>(
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
pub(super) async fn send_error_with<T: AsyncWrite + Unpin>(
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
