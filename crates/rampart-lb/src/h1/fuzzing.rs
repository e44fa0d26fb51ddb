//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing` only): thin wrappers
//! over the fast path's private codec that return owned, inspectable results. A child of
//! `h1` so that nothing of the codec is widened for the rest of the crate.

use std::sync::Arc;

use super::{BadChunk, ConnCtx, Left, Parsed, RespParsed};

/// How a message body is delimited (the codec's own `Framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes (responses only).
    Close,
}

impl From<super::Framing> for Framing {
    fn from(f: super::Framing) -> Framing {
        match f {
            super::Framing::None => Framing::None,
            super::Framing::Length(n) => Framing::Length(n),
            super::Framing::Chunked => Framing::Chunked,
            super::Framing::Close => Framing::Close,
        }
    }
}

impl From<Framing> for super::Framing {
    fn from(f: Framing) -> super::Framing {
        match f {
            Framing::None => super::Framing::None,
            Framing::Length(n) => super::Framing::Length(n),
            Framing::Chunked => super::Framing::Chunked,
            Framing::Close => super::Framing::Close,
        }
    }
}

/// A request head the fast path takes, with the head it sends upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head_len: usize,
    pub body: Framing,
    pub close: bool,
    pub expect: bool,
    pub replayable: bool,
    pub head: bool,
    /// An HTTP/1.0 client.
    pub http10: bool,
    /// An upgrade, sent upstream with `Upgrade` and `Connection: upgrade`.
    pub upgrade: bool,
    pub upstream_head: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    Partial,
    Complete(Request),
    Bad(u16),
    Refused,
    /// An ACME HTTP-01 token answered by the balancer (never without a pending order).
    Acme,
    /// A redirecting route's answer (never: the fuzzed listener has no routes).
    Redirect,
}

thread_local! {
    /// A connection from 192.0.2.7 on a plain listener without a firewall, its peer
    /// untrusted (0) or a trusted proxy (1), as the unit tests build it.
    static CTX: [Arc<ConnCtx>; 2] = [ctx(false), ctx(true)];
}

fn ctx(trusted: bool) -> Arc<ConnCtx> {
    use rampart_topology::lb::{CheckKind, LbConfig, Mode};
    let cfg = LbConfig::quick(
        ([127, 0, 0, 1], 1).into(),
        &[([127, 0, 0, 1], 2).into()],
        rampart_balance::Algorithm::RoundRobin,
        Mode::Http,
        CheckKind::None,
    )
    .expect("a one-server config");
    let pool = crate::state::PoolState::new(cfg.pools[0].clone(), 1, 1);
    let rt = Arc::new(crate::ListenerRt {
        cfg: cfg.listeners[0].clone(),
        pool: Arc::new(crate::state::PoolHandle::new(pool, 1)),
        routes: Box::new([]),
        trusted: if trusted {
            vec!["192.0.2.0/24".parse().expect("a CIDR")]
        } else {
            Vec::new()
        },
        forwarded: Default::default(),
        stats: Arc::new(crate::ListenerStats::new(1)),
        limit: None,
        tls: None,
        firewall: None,
    });
    ConnCtx::new(([192, 0, 2, 7], 40000).into(), &rt, 0, None).expect("a connection context")
}

/// Parse a request head as the fast path does, from a peer that is a trusted proxy or not.
pub fn parse_request(data: &[u8], trusted: bool) -> RequestOutcome {
    let mut out = Vec::new();
    let parsed = CTX.with(|c| super::parse_request(data, &c[usize::from(trusted)], &mut out));
    match parsed {
        Parsed::Partial => RequestOutcome::Partial,
        Parsed::Bad(s) => RequestOutcome::Bad(s),
        Parsed::Refused(_) => RequestOutcome::Refused,
        Parsed::Acme { .. } => RequestOutcome::Acme,
        Parsed::Redirect { .. } => RequestOutcome::Redirect,
        Parsed::Complete(r) => RequestOutcome::Complete(Request {
            head_len: r.head_len,
            body: r.body.into(),
            close: r.close,
            expect: r.expect,
            replayable: r.replayable,
            head: r.head,
            http10: r.http10,
            upgrade: r.upgrade,
            upstream_head: out,
        }),
    }
}

/// A response head the fast path takes, with the head it sends the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    pub body: Framing,
    pub reusable: bool,
    pub close: bool,
    pub client_head: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOutcome {
    Partial,
    Interim(usize),
    Bad,
    Complete(Response),
}

/// Parse a response head as the fast path does (`head_req`: it answers a HEAD; `close`:
/// the client connection closes after it anyway; `hsts`: the header value to set).
pub fn parse_response(
    data: &[u8],
    head_req: bool,
    close: bool,
    hsts: Option<&[u8]>,
) -> ResponseOutcome {
    let mut out = Vec::new();
    match super::parse_response(data, head_req, close, hsts, &mut out) {
        RespParsed::Partial => ResponseOutcome::Partial,
        RespParsed::Interim(n) => ResponseOutcome::Interim(n),
        RespParsed::Bad => ResponseOutcome::Bad,
        RespParsed::Complete(r) => ResponseOutcome::Complete(Response {
            head_len: r.head_len,
            status: r.status,
            body: r.body.into(),
            reusable: r.reusable,
            close: r.close,
            client_head: out,
        }),
    }
}

/// Panics unless the head scanner's fast path, wherever it takes `data` (as a request head,
/// as a response head), reads what httparse reads: the same first line, the same fields at
/// the same offsets, the same length. Returns whether it took it as (request, response).
pub fn scan_agrees(data: &[u8]) -> (bool, bool) {
    super::scan::check_agrees(data)
}

/// What the body decoder made of a body that came in pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// How much of each piece it took as body (pieces after the end are not fed).
    pub taken: Vec<usize>,
    pub done: bool,
    /// The chunked framing was refused.
    pub bad: bool,
}

/// Feed `pieces` one after the other to the body decoder for `framing`, as the proxy does
/// with what each read brings, until the body ends or is refused.
pub fn decode_body(framing: Framing, pieces: &[&[u8]]) -> Decoded {
    let mut d = Decoded {
        taken: Vec::new(),
        done: false,
        bad: false,
    };
    let Some(mut left) = Left::of(framing.into()) else {
        d.done = true;
        return d;
    };
    for p in pieces {
        if left.done() {
            // The body ended (or was empty: a length of 0): what follows is not fed.
            break;
        }
        match left.take(p) {
            Ok(k) => d.taken.push(k),
            Err(BadChunk) => {
                d.bad = true;
                return d;
            }
        }
    }
    d.done = left.done();
    d
}
