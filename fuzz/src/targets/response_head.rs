//! The fast path's response-head parser on arbitrary bytes. The first byte's low bits say
//! how it is asked (1: the request was a HEAD, 2: the client connection closes anyway,
//! 4: set HSTS); the rest is the response. Never a panic; a head it takes is rendered to
//! the client as one strict head with one framing that says what will be forwarded, no
//! hop-by-hop field, `connection: close` exactly when the client connection closes; a
//! response framed twice never leaves its connection reusable.

use crate::{elements, response_head, show, HOP_BY_HOP};
use rampart_lb::fuzzing::{parse_response, Framing, ResponseOutcome};

const HSTS: &[u8] = b"max-age=60";

/// One input: panics on what the target exists to find.
pub fn run(input: &[u8]) {
    let Some((&flags, data)) = input.split_first() else {
        return;
    };
    let (head_req, close, hsts) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let hsts = hsts.then_some(HSTS);
    let got = parse_response(data, head_req, close, hsts);
    let r = match &got {
        ResponseOutcome::Partial | ResponseOutcome::Bad => return,
        ResponseOutcome::Interim(n) => {
            assert!(*n > 0 && *n <= data.len());
            let mut hs = [httparse::EMPTY_HEADER; 512];
            let mut resp = httparse::Response::new(&mut hs);
            let ok = matches!(resp.parse(data), Ok(httparse::Status::Complete(m)) if m == *n);
            assert!(
                ok && resp
                    .code
                    .is_some_and(|c| (100..200).contains(&c) && c != 101)
            );
            return;
        }
        ResponseOutcome::Complete(r) => r,
    };
    assert!(r.head_len > 0 && r.head_len <= data.len());
    // (httparse takes any three digits: 000 to 099 come through as final statuses.)
    assert!(
        r.status < 1000 && !(100..200).contains(&r.status),
        "{}",
        r.status
    );
    let out = &r.client_head;
    let (status, h) =
        response_head(out).unwrap_or_else(|e| panic!("{} rendered {}: {e}", show(data), show(out)));
    assert_eq!(status, r.status);
    for n in HOP_BY_HOP.iter().filter(|n| **n != "connection") {
        assert_eq!(h.count(n), 0, "{n} in {}", show(out));
    }
    if r.close {
        assert_eq!(h.one("connection"), Some(&b"close"[..]), "{}", show(out));
    } else {
        assert_eq!(h.count("connection"), 0, "{}", show(out));
    }
    assert!(!close || r.close, "the client connection closes anyway");
    match hsts {
        Some(v) => assert_eq!(h.one("strict-transport-security"), Some(v)),
        None => {}
    }
    assert!(h.count("content-length") <= 1, "{}", show(out));
    let te_chunked = || {
        let c: Vec<&[u8]> = h.all("transfer-encoding").flat_map(elements).collect();
        c.last().is_some_and(|l| l.eq_ignore_ascii_case(b"chunked"))
    };
    match r.body {
        Framing::Chunked => {
            assert!(te_chunked(), "{}", show(out));
            assert_eq!(h.count("content-length"), 0);
        }
        Framing::Length(n) => {
            assert!(n > 0);
            assert_eq!(h.count("transfer-encoding"), 0);
            assert_eq!(h.one("content-length"), Some(n.to_string().as_bytes()));
        }
        Framing::Close => {
            assert!(r.close && !r.reusable);
            assert_eq!(h.count("content-length"), 0);
            assert!(!te_chunked());
        }
        Framing::None => {
            // HEAD, 204, 304, or a length of 0: nothing follows, whatever the head says.
            assert!(
                head_req
                    || r.status == 204
                    || r.status == 304
                    || h.one("content-length") == Some(&b"0"[..]),
                "{}",
                show(out)
            );
        }
    }
    // Both framings in what came: chunked wins, and the connection is not reused.
    let mut hs = [httparse::EMPTY_HEADER; 512];
    let mut resp = httparse::Response::new(&mut hs);
    if resp.parse(data).is_ok() {
        let has = |n: &str| resp.headers.iter().any(|f| f.name.eq_ignore_ascii_case(n));
        if has("content-length") && has("transfer-encoding") {
            assert!(!r.reusable, "{}", show(data));
            assert_eq!(h.count("content-length"), 0);
        }
    }
    // What follows the head changes nothing, and the head is no shorter.
    assert_eq!(
        parse_response(&data[..r.head_len], head_req, close, hsts),
        got
    );
    assert_eq!(
        parse_response(&data[..r.head_len - 1], head_req, close, hsts),
        ResponseOutcome::Partial
    );
}
