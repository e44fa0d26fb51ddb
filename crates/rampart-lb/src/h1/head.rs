//! HTTP/1 heads: a request head parsed and rendered for the upstream, a response head
//! parsed and rendered for the client, and the rules every HTTP/1 request meets
//! ([`head_policy`]).

// The scanner classifies names and bounds the fields: its `H` and `MAX_HEADERS` are this
// module's words too (and `h1`'s, through it).
use super::scan::{self, Field};
pub(super) use super::scan::{H, MAX_HEADERS};
use crate::conn::ConnCtx;
use rampart_topology::lb::path::normalize_target;

/// Hop-by-hop header names a request's `Connection` may list; more go to hyper.
pub(super) const MAX_CONN_TOKENS: usize = 16;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (responses only).
    Close,
}

/// A parsed request head (its upstream rendering is in the `out` buffer).
#[derive(Debug)]
pub(super) struct ReqInfo {
    pub(super) head_len: usize,
    pub(super) body: Framing,
    /// The client asked to close after this exchange.
    pub(super) close: bool,
    /// `Expect: 100-continue` (answered here, not forwarded).
    pub(super) expect: bool,
    /// Idempotent without a body: may be sent again after a failure past sending.
    pub(super) replayable: bool,
    pub(super) head: bool,
    /// Method and target, only when access logging is on.
    pub(super) log: Option<(String, String)>,
    /// An HTTP/1.0 client: its answer is never chunked.
    pub(super) http10: bool,
    /// The client asks for an upgrade (sent upstream with it; a `101` makes a tunnel).
    pub(super) upgrade: bool,
    /// The listener's route that takes it (`None`: the listener's pool).
    pub(super) route: Option<usize>,
}

#[derive(Debug)]
pub(super) enum Parsed {
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
    /// A redirecting route took it: answered here with `status` and `location`.
    Redirect {
        head_len: usize,
        status: u16,
        location: String,
        /// A body nobody reads, or the client's wish, ends the connection.
        close: bool,
        head: bool,
        /// Method and target, only when access logging is on.
        log: Option<(String, String)>,
    },
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
pub(super) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// A `Content-Length` value (possibly a list of equal values); `None` when invalid, also
/// when empty (next to a valid one, an empty field was read as absent).
pub(super) fn content_length(v: &[u8], prev: Option<u64>) -> Option<u64> {
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
pub(super) fn ends_chunked(v: &[u8]) -> bool {
    tokens(v)
        .last()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
}

/// Whether a request's `Transfer-Encoding` value is exactly `chunked`.
pub(super) fn only_chunked(v: &[u8]) -> bool {
    let mut t = tokens(v);
    t.next().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) && t.next().is_none()
}

/// Whether a `Host` value (or a target's authority) is `host[:port]` of the characters
/// RFC 3986 allows there (no user info, no path, no list); empty is allowed.
pub(super) fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|b| HOST_BYTES[usize::from(*b)])
}

/// The bytes [`valid_host`] allows, by value (a table: this runs for every request).
static HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
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
            );
        b += 1;
    }
    t
};

/// The rules every HTTP/1.x request head meets, whichever code path serves it (this
/// codec, or hyper's for HTTP/1.0 and upgrades, which calls it for each request it
/// reads, pipelined ones included): one policy, one function. `hosts`: how many `Host`
/// fields, `host` the last. The error is the status to answer.
pub(crate) fn head_policy(
    method: &[u8],
    target: &[u8],
    http10: bool,
    hosts: usize,
    host: Option<&[u8]>,
) -> Result<(), u16> {
    if method == b"CONNECT" {
        // A reverse proxy opens no tunnels.
        return Err(501);
    }
    // One Host, a plausible one (RFC 9112 section 3.2).
    if hosts > 1
        || host.is_some_and(|h| !valid_host(h))
        || (hosts == 0 && !http10 && (target.starts_with(b"/") || target == b"*"))
    {
        return Err(400);
    }
    // A target of visible ASCII without a fragment (HAProxy refuses `#` too since
    // CVE-2023-45539: `/index.html#.png` read as a `.png` path by one side only).
    if !target
        .iter()
        .all(|&b| (0x21..=0x7e).contains(&b) && b != b'#')
    {
        return Err(400);
    }
    Ok(())
}

/// A request's method and target for the access log (both ASCII by then).
fn log_line(method: &[u8], target: &[u8]) -> (String, String) {
    (
        String::from_utf8_lossy(method).into_owned(),
        String::from_utf8_lossy(target).into_owned(),
    )
}

/// Whether a head refused for its version names a well-formed `HTTP/x.y` (505) rather
/// than garbage (400).
pub(super) fn other_version(data: &[u8]) -> bool {
    let line = data.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let v = parts.nth(2).unwrap_or_default();
    parts.next().is_none()
        && matches!(v, [b'H', b'T', b'T', b'P', b'/', a, b'.', c] if a.is_ascii_digit() && c.is_ascii_digit())
}

/// `n` in decimal, in `buf`.
pub(super) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
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

pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Header lines kept in a rendered head, copied as they came in `data` (the head scanned):
/// a run of consecutive kept lines is one copy. A line is copied only when it is
/// `name ":" OWS value CRLF` there (the scanner says); any other (a bare LF, trailing
/// whitespace) is rendered anew by [`push_header`]. Call [`Lines::flush`] before writing
/// anything else.
pub(super) struct Lines<'a> {
    data: &'a [u8],
    run: std::ops::Range<usize>,
}

impl<'a> Lines<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Lines { data, run: 0..0 }
    }

    /// Start with `range` of `data` (nothing written yet): the lines pushed next that follow
    /// it are copied with it.
    #[inline]
    pub(super) fn start(&mut self, range: std::ops::Range<usize>) {
        self.run = range;
    }

    #[inline]
    pub(super) fn push(&mut self, out: &mut Vec<u8>, f: &Field) {
        match f.line() {
            Some(l) if !self.run.is_empty() && l.start == self.run.end => self.run.end = l.end,
            Some(l) => {
                self.flush(out);
                self.run = l;
            }
            None => {
                self.flush(out);
                push_header(out, f.name(self.data), f.value(self.data));
            }
        }
    }

    #[inline]
    pub(super) fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(run) = self.data.get(self.run.clone()) {
            out.extend_from_slice(run);
        }
        self.run = 0..0;
    }
}

/// Parse the request head at the start of `data` and render its upstream head into `out`.
pub(super) fn parse_request(data: &[u8], ctx: &ConnCtx, out: &mut Vec<u8>) -> Parsed {
    scan::with_fields(|fields| request_with(data, ctx, out, fields))
}

fn request_with(data: &[u8], ctx: &ConnCtx, out: &mut Vec<u8>, fields: &mut Vec<Field>) -> Parsed {
    let scan::ReqLine {
        method,
        target,
        version,
        head_len,
    } = match scan::request(data, fields) {
        Ok(Some(line)) => line,
        Ok(None) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Bad(431),
        Err(httparse::Error::Version) if other_version(data) => return Parsed::Bad(505),
        Err(_) => return Parsed::Bad(400),
    };
    let fields = &fields[..];
    // HTTP/1.0 needs no Host, and may not use a transfer coding (RFC 9112 section 6.1).
    let http10 = version != 1;
    // First pass: what the head says about framing, hop-by-hop names, forwarding.
    let mut close = false;
    let mut keep_alive = false;
    let mut conn_upgrade = false;
    let mut upgrade_to: Option<&[u8]> = None;
    let mut upgrade_fields = 0;
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
    // Each name was classified by the scanner; the rendering below reads that too.
    for f in fields {
        let value = f.value(data);
        match f.kind {
            H::Connection => {
                for t in tokens(value) {
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
            H::ContentLength => match content_length(value, length) {
                Some(n) => length = Some(n),
                None => return Parsed::Bad(400),
            },
            H::TransferEncoding => {
                te = true;
                te_fields += 1;
                chunked = only_chunked(value);
            }
            H::Host => {
                host = Some(value);
                hosts += 1;
            }
            H::Upgrade => {
                upgrade_fields += 1;
                upgrade_to = Some(value);
            }
            H::Expect => expect = value.trim_ascii().eq_ignore_ascii_case(b"100-continue"),
            H::Xff => has_xff = true,
            H::Xfp => has_xfp = true,
            H::Xfh => has_xfh = true,
            H::Xri => has_xri = true,
            H::Hop | H::Hsts | H::Fwd | H::Other => {}
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
        // One `Upgrade` field, naming more than h2c: several (a list split over lines, or
        // an empty one beside it) are declined rather than forwarded for the server to
        // pick from, h2c perhaps (found by fuzz/'s request_head target).
        && upgrade_fields == 1
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
    if !ctx.https && method == b"GET" && crate::acme::http01_target(target) {
        if let Some(key_auth) = std::str::from_utf8(target)
            .ok()
            .and_then(crate::acme::http01)
        {
            return Parsed::Acme {
                head_len,
                key_auth,
                // A body nobody reads ends the connection.
                close: close || body != Framing::None,
            };
        }
    }
    // The client a trusted proxy named, when the firewall judges that one.
    let forwarded = |fw: &crate::firewall::Firewall| {
        if ctx.trusted && fw.keys_forwarded() {
            let xff: Vec<&[u8]> = fields
                .iter()
                .filter(|f| f.kind == H::Xff)
                .map(|f| f.value(data))
                .collect();
            ctx.forwarded_client(&xff)
        } else {
            None
        }
    };
    if let Some(fw) = ctx.listener.firewall.as_deref() {
        if fw.checks_requests() {
            let declared = if chunked { None } else { length };
            let forwarded = forwarded(fw);
            let now = std::time::Instant::now();
            // (A method is token characters: always UTF-8.)
            let method = std::str::from_utf8(method).unwrap_or_default();
            if let Err(r) = fw.check_request(ctx.peer.ip(), forwarded, method, declared, now) {
                return Parsed::Refused(r);
            }
        }
    }
    // The request line, origin-form.
    out.clear();
    out.extend_from_slice(method);
    out.push(b' ');
    let mut uri_host: Option<Vec<u8>> = None;
    if target.starts_with(b"/") || (target == b"*" && method == b"OPTIONS") {
        out.extend_from_slice(target);
    } else {
        let Ok(uri) = http::Uri::try_from(target) else {
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
    let start = method.len() + 1;
    if ctx.listener.cfg.normalize_path {
        // The routes match, and the server gets, the path in normal form.
        let rendered = out.split_off(start);
        if normalize_target(&rendered, out).is_err() {
            return Parsed::Bad(400);
        }
    }
    // The pool, by the listener's routes; a route may strip its prefix from the target
    // just rendered (origin form from `start`).
    let has = |h: &rampart_topology::lb::HeaderMatch| {
        fields.iter().any(|f| h.takes(f.name(data), f.value(data)))
    };
    let req = rampart_topology::lb::RouteRequest { method, has: &has };
    let route = ctx
        .listener
        .route(uri_host.as_deref().or(host), &out[start..], &req);
    if let Some(r) = route.and_then(|i| ctx.listener.cfg.routes.get(i)) {
        if r.allow.is_some() {
            let fw = ctx.listener.firewall.as_deref();
            if let Err(refused) =
                crate::firewall::check_route(fw, r, ctx.peer.ip(), fw.and_then(forwarded))
            {
                return Parsed::Refused(refused);
            }
        }
        if let Some((status, location)) = r.redirect(&out[start..]) {
            return Parsed::Redirect {
                head_len,
                status,
                location,
                close: close || body != Framing::None,
                head: method == b"HEAD",
                log: crate::accesslog::enabled().then(|| log_line(method, target)),
            };
        }
        if r.strip_prefix {
            let rendered = out.split_off(start);
            r.push_target(&rendered, out);
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let keep = ctx.trusted;
    let fwd = ctx.listener.forwarded;
    let mut lines = Lines::new(data);
    for f in fields {
        let kind = f.kind;
        match kind {
            H::Hop | H::Connection | H::TransferEncoding => continue,
            // Rendered below when the balancer adds it; a trusted peer's kept as it came
            // when not.
            H::Xff if fwd.x_forwarded_for || !keep => continue,
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
        // `Connection` may name end-to-end fields only: never the framing or the Host.
        if kind == H::Other && n_named > 0 {
            let name = f.name(data);
            if named[..n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
            {
                continue;
            }
        }
        lines.push(out, f);
    }
    lines.flush(out);
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
    // The forwarding headers the listener adds (`forwarded.headers`).
    let mut ip = 0..0;
    if fwd.x_forwarded_for {
        // A trusted peer's chain is kept and appended to.
        out.extend_from_slice(b"x-forwarded-for: ");
        if keep && has_xff {
            for f in fields {
                if f.kind == H::Xff {
                    let v = f.value(data).trim_ascii();
                    if !v.is_empty() {
                        out.extend_from_slice(v);
                        out.extend_from_slice(b", ");
                    }
                }
            }
        }
        let start = out.len();
        ctx.push_peer_ip(out);
        ip = start..out.len();
        out.extend_from_slice(b"\r\n");
    }
    if fwd.x_real_ip && !(keep && has_xri) {
        out.extend_from_slice(b"x-real-ip: ");
        if ip.is_empty() {
            ctx.push_peer_ip(out);
        } else {
            out.extend_from_within(ip);
        }
        out.extend_from_slice(b"\r\n");
    }
    if fwd.x_forwarded_proto && !(keep && has_xfp) {
        out.extend_from_slice(if ctx.https {
            b"x-forwarded-proto: https\r\n"
        } else {
            b"x-forwarded-proto: http\r\n"
        });
    }
    if fwd.x_forwarded_host && !(keep && has_xfh) {
        if let Some(h) = host {
            push_header(out, b"x-forwarded-host", h);
        }
    }
    if fwd.forwarded {
        // After a trusted peer's own `Forwarded` lines, which it kept: one list, in order.
        out.extend_from_slice(b"forwarded: ");
        ctx.push_forwarded_element(out, host);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let head = method == b"HEAD";
    // RFC 9110 section 9.2.2; only without a body are they resent (`replayable`).
    let idempotent = matches!(
        method,
        b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE"
    );
    Parsed::Complete(ReqInfo {
        head_len,
        body,
        close,
        expect: expect && body != Framing::None,
        replayable: idempotent && body == Framing::None,
        head,
        log: crate::accesslog::enabled().then(|| log_line(method, target)),
        http10,
        upgrade,
        route,
    })
}

/// A parsed response head (its client rendering is in `out`).
#[derive(Debug)]
pub(super) struct RespInfo {
    pub(super) head_len: usize,
    pub(super) status: u16,
    pub(super) body: Framing,
    /// The upstream connection may carry another request after this response.
    pub(super) reusable: bool,
    /// The client connection closes after this response.
    pub(super) close: bool,
    /// A chunked body decoded for an HTTP/1.0 client (sent until the connection closes).
    pub(super) dechunk: bool,
    /// `101 Switching Protocols` to an upgrade: the connection becomes a tunnel.
    pub(super) switched: bool,
}

#[derive(Debug)]
pub(super) enum RespParsed {
    Partial,
    /// A 1xx response to skip (its length).
    Interim(usize),
    Bad,
    Complete(RespInfo),
}

/// [`parse_response_to`] for an HTTP/1.1 client that asked for no upgrade.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn parse_response(
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
pub(super) struct Client {
    /// The request was a `HEAD`.
    pub(super) head_req: bool,
    /// The client connection closes after the response anyway.
    pub(super) close: bool,
    /// An HTTP/1.0 client: no chunked answer, `Connection: keep-alive` to keep it.
    pub(super) http10: bool,
    /// The request asked for an upgrade: a `101` is expected, not a protocol error.
    pub(super) upgrade: bool,
}

/// Parse the response head at the start of `data`; render its head for `client` into
/// `out`.
pub(super) fn parse_response_to(
    data: &[u8],
    client: Client,
    hsts: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> RespParsed {
    scan::with_fields(|fields| response_with(data, client, hsts, out, fields))
}

fn response_with(
    data: &[u8],
    client: Client,
    hsts: Option<&[u8]>,
    out: &mut Vec<u8>,
    fields: &mut Vec<Field>,
) -> RespParsed {
    let Client {
        head_req,
        close,
        http10,
        upgrade,
    } = client;
    let scan::StatusLine {
        code: status,
        reason,
        version,
        line_end,
        head_len,
    } = match scan::response(data, fields) {
        Ok(Some(line)) => line,
        Ok(None) => return RespParsed::Partial,
        Err(_) => return RespParsed::Bad,
    };
    let fields = &fields[..];
    if status == 101 && upgrade && version == 1 {
        // The server switched: its head goes to the client as it came, but for the
        // hop-by-hop fields other than `Upgrade`.
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 101 ");
        out.extend_from_slice(reason);
        out.extend_from_slice(b"\r\n");
        for f in fields {
            match f.kind {
                H::Hop | H::Connection | H::ContentLength | H::TransferEncoding => {}
                _ => push_header(out, f.name(data), f.value(data)),
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
    for f in fields {
        let value = f.value(data);
        match f.kind {
            H::Connection => {
                for t in tokens(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        upstream_close = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") && n_named < MAX_CONN_TOKENS {
                        named[n_named] = t;
                        n_named += 1;
                    }
                }
            }
            H::ContentLength => match content_length(value, length) {
                Some(n) => length = Some(n),
                None => return RespParsed::Bad,
            },
            H::TransferEncoding => {
                te = true;
                // The codings of all the fields make one list, empty ones add nothing
                // ("chunked" then "" is chunked: found by fuzz/'s response_head target).
                if tokens(value).next().is_some() {
                    chunked = ends_chunked(value);
                }
                chunked_seen += tokens(value)
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
    let mut lines = Lines::new(data);
    match line_end {
        // `HTTP/1.x DDD reason CRLF` as it came, in one copy with the fields kept after it
        // (the version is made 1.1 below).
        Some(end) => lines.start(0..end),
        None => {
            out.extend_from_slice(b"HTTP/1.1 ");
            let mut code = [0u8; 3];
            code[0] = b'0' + (status / 100 % 10) as u8;
            code[1] = b'0' + (status / 10 % 10) as u8;
            code[2] = b'0' + (status % 10) as u8;
            out.extend_from_slice(&code);
            out.push(b' ');
            out.extend_from_slice(reason);
            out.extend_from_slice(b"\r\n");
        }
    }
    for f in fields {
        let kind = f.kind;
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
        // `Connection` may name end-to-end fields only: never the framing.
        if kind == H::Other && n_named > 0 {
            let name = f.name(data);
            if named[..n_named]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
            {
                continue;
            }
        }
        lines.push(out, f);
    }
    lines.flush(out);
    if line_end.is_some() {
        // The status line was copied: this is its version's minor digit.
        if let Some(minor) = out.get_mut(7) {
            *minor = b'1';
        }
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

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
