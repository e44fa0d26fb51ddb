//! The fast path's request-head parser on arbitrary bytes, from an untrusted client and
//! from a trusted proxy. Never a panic; a head it takes is rendered upstream as one
//! strict HTTP/1.1 head with one Host, one unambiguous framing that says what the codec
//! will forward, no hop-by-hop field, and no client-set forwarding fields from an
//! untrusted peer; what follows the head changes nothing (pipelining).

use crate::{elements, request_head, show, HOP_BY_HOP};
use rampart_lb::fuzzing::{parse_request, Framing, RequestOutcome};

fn check(data: &[u8], trusted: bool) {
    let got = parse_request(data, trusted);
    let r = match &got {
        RequestOutcome::Partial => return,
        RequestOutcome::Refused => panic!("no firewall, yet refused"),
        RequestOutcome::Acme => panic!("no ACME order is pending"),
        RequestOutcome::Redirect => panic!("no route redirects"),
        RequestOutcome::Bad(s) => {
            assert!(matches!(s, 400 | 431 | 501 | 505), "status {s}");
            return;
        }
        RequestOutcome::Complete(r) => r,
    };
    assert!(r.head_len <= data.len() && r.head_len > 0);
    let out = &r.upstream_head;
    let (method, target, h) =
        request_head(out).unwrap_or_else(|e| panic!("{} rendered {}: {e}", show(data), show(out)));
    assert!(
        target.starts_with('/') || (target == "*" && method == "OPTIONS"),
        "target {target:?}"
    );
    assert!(out.starts_with(format!("{method} {target} HTTP/1.1\r\n").as_bytes()));
    assert_eq!(h.count("host"), 1, "{}", show(out));
    assert_eq!(h.count("x-forwarded-for"), 1);
    // A trusted proxy's X-Real-IP fields are kept as they came; else one is set.
    assert!(h.count("x-real-ip") >= 1);
    for n in HOP_BY_HOP {
        // An upgrade goes upstream with its `Upgrade` and `Connection: upgrade`, only them.
        if r.upgrade && n == "upgrade" {
            assert_eq!(h.count(n), 1, "{n} in {}", show(out));
        } else if r.upgrade && n == "connection" {
            assert_eq!(h.one(n), Some(&b"upgrade"[..]), "{}", show(out));
        } else {
            assert_eq!(h.count(n), 0, "{n} in {}", show(out));
        }
    }
    if r.expect {
        assert_eq!(h.count("expect"), 0, "100-continue is answered here");
    }
    if !trusted {
        for n in ["forwarded", "x-forwarded-proto", "x-forwarded-host"] {
            assert!(h.count(n) <= 1, "{n}");
        }
        assert_eq!(h.count("forwarded"), 0);
        assert_eq!(h.one("x-forwarded-for"), Some(&b"192.0.2.7"[..]));
        assert_eq!(h.one("x-real-ip"), Some(&b"192.0.2.7"[..]));
        assert_eq!(h.one("x-forwarded-proto"), Some(&b"http"[..]));
    }
    // The framing upstream is the one the codec will forward, and only it.
    match r.body {
        Framing::Chunked => {
            assert_eq!(h.one("transfer-encoding"), Some(&b"chunked"[..]));
            assert_eq!(h.count("content-length"), 0);
        }
        Framing::Length(n) => {
            assert!(n > 0);
            assert_eq!(h.count("transfer-encoding"), 0);
            assert_eq!(h.one("content-length"), Some(n.to_string().as_bytes()));
        }
        Framing::None => {
            assert_eq!(h.count("transfer-encoding"), 0);
            assert!(h.all("content-length").all(|v| v == b"0"));
            assert!(h.count("content-length") <= 1);
        }
        Framing::Close => panic!("a request read until the close"),
    }
    // A field the client's Connection named (other than the framing and Host, which the
    // codec never drops that way) does not go upstream.
    let mut hs = [httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut hs);
    if req.parse(data).is_ok() {
        for c in req
            .headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        {
            for t in elements(c.value) {
                let t = String::from_utf8_lossy(t).to_ascii_lowercase();
                // An upgrade's own `Upgrade` goes upstream with `Connection: upgrade`
                // (checked with the hop-by-hop fields above).
                if r.upgrade && t == "upgrade" {
                    continue;
                }
                if !matches!(
                    t.as_str(),
                    "close"
                        | "host"
                        | "content-length"
                        | "transfer-encoding"
                        | "expect"
                        | "x-forwarded-for"
                        | "x-forwarded-proto"
                        | "x-forwarded-host"
                        | "x-real-ip"
                        | "forwarded"
                        | "strict-transport-security"
                ) {
                    assert_eq!(h.count(&t), 0, "{t} named by Connection, in {}", show(out));
                }
            }
        }
    }
    // Pipelining: the bytes after the head change nothing, and the head is no shorter.
    assert_eq!(parse_request(&data[..r.head_len], trusted), got);
    assert_eq!(
        parse_request(&data[..r.head_len - 1], trusted),
        RequestOutcome::Partial,
        "{}",
        show(&data[..r.head_len])
    );
}

/// One input: panics on what the target exists to find.
pub fn run(data: &[u8]) {
    check(data, false);
    check(data, true);
}
