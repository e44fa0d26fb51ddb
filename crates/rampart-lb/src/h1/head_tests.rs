//! Unit and property tests of the HTTP/1 head rules (`head.rs`).

#![allow(clippy::unwrap_used)]

use super::*;
use crate::h1::chunked::Chunked;
use crate::h1::tests::{test_ctx, test_ctx_of, test_ctx_with};
use proptest::prelude::*;
use rampart_topology::lb::ForwardedHeaders;

#[test]
fn an_absolute_target_with_an_empty_path_goes_upstream_as_slash() {
    for (target, want) in [
        ("http://h.example:80?q", "GET /?q HTTP/1.1\r\n"),
        ("http://h.example", "GET / HTTP/1.1\r\n"),
        ("http://h.example/p?q", "GET /p?q HTTP/1.1\r\n"),
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = Vec::new();
        let Parsed::Complete(_) = parse_request(head.as_bytes(), &test_ctx(false), &mut out) else {
            panic!("{target} refused")
        };
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(want), "{target}: {text}");
        assert!(text.contains("\r\nhost: h.example"), "{text}");
    }
}

#[test]
fn the_request_head_chooses_the_route() {
    let text = r#"
[[listener]]
name = "site"
address = "127.0.0.1:1"
pool = "web"
[[listener.route]]
host = "*.example.com"
path_prefix = "/api/"
pool = "api"
[[listener.route]]
path_prefix = "/static/"
strip_prefix = true
pool = "static"
[[pool]]
name = "web"
servers = [{ name = "w", address = "127.0.0.1:2" }]
[[pool]]
name = "api"
servers = [{ name = "a", address = "127.0.0.1:3" }]
[[pool]]
name = "static"
servers = [{ name = "s", address = "127.0.0.1:4" }]
"#;
    let cfg = rampart_topology::lb::LbConfig::from_source(&rampart_topology::diag::Source::new(
        "lb.toml", text,
    ))
    .unwrap();
    let ctx = test_ctx_of(&cfg);
    for (head, want) in [
        (
            "GET /api/x HTTP/1.1\r\nHost: WWW.Example.com:8080\r\n\r\n",
            Some(0),
        ),
        ("GET /api/x HTTP/1.1\r\nHost: example.org\r\n\r\n", None),
        (
            "GET /static/a.css?v=1 HTTP/1.1\r\nHost: example.org\r\n\r\n",
            Some(1),
        ),
        ("GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n", None),
        // The absolute form's authority is the host, whatever Host says.
        (
            "GET http://a.example.com/api/v HTTP/1.1\r\nHost: other.org\r\n\r\n",
            Some(0),
        ),
        // HTTP/1.0 without Host: the path alone.
        ("GET /static/x HTTP/1.0\r\n\r\n", Some(1)),
        ("GET /api/x HTTP/1.0\r\n\r\n", None),
    ] {
        let mut out = Vec::new();
        let Parsed::Complete(r) = parse_request(head.as_bytes(), &ctx, &mut out) else {
            panic!("{head:?} refused")
        };
        assert_eq!(r.route, want, "{head:?}");
        // The static route strips its prefix, the others send the target as it came.
        let line = String::from_utf8(out).unwrap();
        let line = line.lines().next().unwrap().to_string();
        let sent = head.split(' ').nth(1).unwrap();
        let sent = sent.strip_prefix("http://a.example.com").unwrap_or(sent);
        match want {
            Some(1) => assert_eq!(line, format!("GET /{} HTTP/1.1", &sent[8..]), "{head:?}"),
            _ => assert_eq!(line, format!("GET {sent} HTTP/1.1"), "{head:?}"),
        }
        assert_eq!(
            ctx.listener.pool_for(r.route).name,
            ["api", "static"]
                .get(want.unwrap_or(9))
                .copied()
                .unwrap_or("web"),
            "{head:?}"
        );
    }
}

#[test]
fn a_redirecting_route_answers_the_head_itself() {
    let text = r#"
[[listener]]
name = "site"
address = "127.0.0.1:1"
pool = "web"
[[listener.route]]
host = "www.example.com"
redirect = "https://example.com"
[[listener.route]]
path_prefix = "/old/"
strip_prefix = true
redirect = "https://example.com/new/"
redirect_status = 308
[[pool]]
name = "web"
servers = [{ name = "w", address = "127.0.0.1:2" }]
"#;
    let cfg = rampart_topology::lb::LbConfig::from_source(&rampart_topology::diag::Source::new(
        "lb.toml", text,
    ))
    .unwrap();
    let ctx = test_ctx_of(&cfg);
    for (head, want_status, want_location, want_close, want_head) in [
        (
            "GET /a?b HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            302,
            "https://example.com/a?b",
            false,
            false,
        ),
        // The absolute form: its path, on its authority's route.
        (
            "GET http://www.example.com?q HTTP/1.1\r\nHost: x.org\r\n\r\n",
            302,
            "https://example.com/?q",
            false,
            false,
        ),
        (
            "HEAD /old/x/y HTTP/1.1\r\nHost: x.org\r\n\r\n",
            308,
            "https://example.com/new/x/y",
            false,
            true,
        ),
        // A body nobody reads closes the connection; so does the client's wish.
        (
            "POST /old/f HTTP/1.1\r\nHost: x.org\r\nContent-Length: 3\r\n\r\nabc",
            308,
            "https://example.com/new/f",
            true,
            false,
        ),
        (
            "GET /old/ HTTP/1.0\r\n\r\n",
            308,
            "https://example.com/new/",
            true,
            false,
        ),
    ] {
        let mut out = Vec::new();
        let Parsed::Redirect {
            head_len,
            status,
            location,
            close,
            head: is_head,
            ..
        } = parse_request(head.as_bytes(), &ctx, &mut out)
        else {
            panic!("{head:?} not redirected")
        };
        assert_eq!(
            (status, location.as_str(), close, is_head),
            (want_status, want_location, want_close, want_head),
            "{head:?}"
        );
        assert_eq!(&head[head_len..].replace("abc", ""), "", "{head:?}");
    }
    let mut out = Vec::new();
    assert!(matches!(
        parse_request(
            b"GET /new/x HTTP/1.1\r\nHost: x.org\r\n\r\n",
            &ctx,
            &mut out
        ),
        Parsed::Complete(_)
    ));
}

/// A guarded route sees every spelling of its path (the listener normalizes paths), the
/// server gets the path in normal form, and a client outside `allow` gets a 403.
#[test]
fn a_guarded_route_matches_the_normal_form_and_refuses_other_clients() {
    let text = r#"
[[listener]]
name = "site"
address = "127.0.0.1:1"
pool = "web"
[[listener.route]]
path_prefix = "/admin/"
allow = ["10.0.0.0/8"]
pool = "web"
[[listener.route]]
path_prefix = "/open/"
allow = ["192.0.2.0/24"]
pool = "web"
[[pool]]
name = "web"
servers = [{ name = "w", address = "127.0.0.1:2" }]
"#;
    let cfg = rampart_topology::lb::LbConfig::from_source(&rampart_topology::diag::Source::new(
        "lb.toml", text,
    ))
    .unwrap();
    // The test connection comes from 192.0.2.7.
    let ctx = test_ctx_of(&cfg);
    for target in [
        "/admin/",
        "//admin/x",
        "/%61dmin/",
        "/x/../admin/",
        "/./admin/y",
        "/x/%2e%2e/admin/",
        "http://h.example//admin/",
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut out = Vec::new();
        match parse_request(head.as_bytes(), &ctx, &mut out) {
            Parsed::Refused(r) => {
                assert_eq!((r.status, r.reason), (403, crate::firewall::Reason::Route))
            }
            _ => panic!("{target} not refused"),
        }
    }
    for (target, upstream) in [
        (
            "/open//a/./b/../c?x=/../y",
            "GET /open/a/c?x=/../y HTTP/1.1\r\n",
        ),
        ("/%6Fpen/%7e", "GET /open/~ HTTP/1.1\r\n"),
        ("/admin", "GET /admin HTTP/1.1\r\n"),
        ("/a%2fb", "GET /a%2Fb HTTP/1.1\r\n"),
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let mut out = Vec::new();
        let Parsed::Complete(_) = parse_request(head.as_bytes(), &ctx, &mut out) else {
            panic!("{target} refused")
        };
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(upstream), "{target}: {text}");
    }
    let mut out = Vec::new();
    assert!(matches!(
        parse_request(b"GET /a%zz HTTP/1.1\r\nHost: h\r\n\r\n", &ctx, &mut out),
        Parsed::Bad(400)
    ));
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
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: \r\n\r\nabc";
    assert!(matches!(
        parse_request(head, &test_ctx(false), &mut out),
        Parsed::Bad(400)
    ));
}

#[test]
fn response_heads_are_rewritten_without_hop_by_hop_fields() {
    let mut out = Vec::new();
    let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\nX-Kept: y\r\n\r\nhello";
    let RespParsed::Complete(r) = parse_response(head, false, false, Some(b"max-age=1"), &mut out)
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

fn parse(head: &[u8]) -> (Parsed, String) {
    let mut out = Vec::new();
    let p = parse_request(head, &test_ctx(false), &mut out);
    (p, String::from_utf8_lossy(&out).into_owned())
}

/// The forwarding lines (and any other the client sent) of `head` as rendered upstream.
fn rendered_with(head: &[u8], trusted: bool, fwd: ForwardedHeaders, peer: &str) -> String {
    let mut out = Vec::new();
    let p = parse_request(head, &test_ctx_with(trusted, fwd, peer), &mut out);
    assert!(matches!(p, Parsed::Complete(_)), "{p:?}");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_listener_chooses_which_forwarding_headers_are_added() {
    let sent = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 198.51.100.1\r\nX-Real-IP: 198.51.100.1\r\nForwarded: for=198.51.100.1\r\nX-Forwarded-Proto: https\r\n\r\n";
    let peer = "192.0.2.7:40000";
    let only_xff = ForwardedHeaders {
        x_forwarded_for: true,
        ..ForwardedHeaders::NONE
    };
    // Only X-Forwarded-For, from a client: the client's other claims are dropped all the
    // same, and nothing else is added.
    let out = rendered_with(sent, false, only_xff, peer);
    assert!(
        out.ends_with("\r\nhost: a.example\r\nx-forwarded-for: 192.0.2.7\r\n\r\n")
            || out.ends_with("Host: a.example\r\nx-forwarded-for: 192.0.2.7\r\n\r\n"),
        "{out}"
    );
    for gone in ["198.51.100.1", "real-ip", "roto", "orwarded:"] {
        assert!(!out.to_ascii_lowercase().contains(gone), "{gone}: {out}");
    }
    // None, from a trusted proxy: what it sent goes on as it came.
    let out = rendered_with(sent, true, ForwardedHeaders::NONE, peer);
    assert!(out.ends_with("Host: a.example\r\nX-Forwarded-For: 198.51.100.1\r\nX-Real-IP: 198.51.100.1\r\nForwarded: for=198.51.100.1\r\nX-Forwarded-Proto: https\r\n\r\n"), "{out}");
    // None, from a client: none of its claims, none of ours.
    let out = rendered_with(sent, false, ForwardedHeaders::NONE, peer);
    assert_eq!(out, "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n");
    // RFC 7239 alone: one element; from a trusted proxy after its own.
    let only_fwd = ForwardedHeaders {
        forwarded: true,
        ..ForwardedHeaders::NONE
    };
    let out = rendered_with(sent, false, only_fwd, peer);
    assert!(
        out.ends_with(
            "Host: a.example\r\nforwarded: for=192.0.2.7;proto=http;host=a.example\r\n\r\n"
        ),
        "{out}"
    );
    let out = rendered_with(sent, true, only_fwd, peer);
    assert!(out.contains("Forwarded: for=198.51.100.1\r\nX-Forwarded-Proto: https\r\nforwarded: for=192.0.2.7;proto=http;host=a.example\r\n\r\n"), "{out}");
    // An IPv6 client and a host with a port are quoted (RFC 7239 section 6).
    let out = rendered_with(
        b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
        false,
        only_fwd,
        "[2001:db8::7]:40000",
    );
    assert!(
        out.contains("forwarded: for=\"[2001:db8::7]\";proto=http;host=\"a.example:8080\"\r\n"),
        "{out}"
    );
    // X-Real-IP without X-Forwarded-For still names the client.
    let only_xri = ForwardedHeaders {
        x_real_ip: true,
        ..ForwardedHeaders::NONE
    };
    let out = rendered_with(sent, false, only_xri, peer);
    assert!(
        out.ends_with("Host: a.example\r\nx-real-ip: 192.0.2.7\r\n\r\n"),
        "{out}"
    );
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

/// Every CR of a rendered head starts a CRLF and every LF ends one.
fn only_crlf(out: &[u8]) -> bool {
    out.iter().enumerate().all(|(i, b)| match b {
        b'\r' => out.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && out[i - 1] == b'\r',
        _ => true,
    })
}

#[test]
fn kept_lines_are_copied_as_they_came_and_odd_ones_rendered_anew() {
    // Consecutive kept lines in one run, the space after the colon as it came; a line
    // ending in a bare LF, or with trailing whitespace, rendered anew with CRLF.
    let head = b"HTTP/1.1 200 OK\r\nServer:x\r\nDate:  d\r\nKeep-Alive: 5\r\nX-A: a\nX-B: b \t\r\nX-E:\r\nX-C: c\r\nContent-Length: 0\r\n\r\n";
    let mut out = Vec::new();
    let RespParsed::Complete(_) = parse_response(head, false, false, None, &mut out) else {
        panic!()
    };
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\nServer:x\r\nDate:  d\r\nX-A: a\r\nX-B: b\r\nX-E:\r\nX-C: c\r\ncontent-length: 0\r\n\r\n"
    );
    // The same in a request, around the fields the proxy drops or renders itself.
    let head = b"GET / HTTP/1.1\r\nHost: h\r\nUser-Agent:u\r\nConnection: keep-alive\r\nAccept: */*\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n";
    let mut out = Vec::new();
    let Parsed::Complete(_) = parse_request(head, &test_ctx(false), &mut out) else {
        panic!()
    };
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.starts_with(
            "GET / HTTP/1.1\r\nHost: h\r\nUser-Agent:u\r\nAccept: */*\r\nx-forwarded-for: "
        ),
        "{text}"
    );
    assert!(
        !text.contains("9.9.9.9") && only_crlf(text.as_bytes()),
        "{text}"
    );
}

/// Check what a parse produced: an error status of the codec's, or an upstream head
/// that parses, with one Host and one unambiguous framing.
fn check_parse(data: &[u8], trusted: bool) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    match parse_request(data, &test_ctx(trusted), &mut out) {
        Parsed::Partial => {}
        Parsed::Acme { .. } => prop_assert!(false, "no ACME order is pending"),
        Parsed::Redirect { .. } => prop_assert!(false, "no route redirects"),
        Parsed::Refused(r) => prop_assert!(false, "no firewall, yet refused: {r:?}"),
        Parsed::Bad(s) => prop_assert!(matches!(s, 400 | 431 | 501 | 505), "{s}"),
        Parsed::Complete(r) => {
            prop_assert!(r.head_len <= data.len());
            prop_assert!(
                only_crlf(&out),
                "a bare CR or LF in {:?}",
                String::from_utf8_lossy(&out)
            );
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
        let mut out = Vec::new();
        if let RespParsed::Complete(_) = parse_response(&data, false, false, None, &mut out) {
            prop_assert!(only_crlf(&out), "{:?}", String::from_utf8_lossy(&out));
        }
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

#[test]
fn a_status_line_is_copied_as_it_came_with_the_version_made_1_1() {
    let render = |head: &[u8]| {
        let mut out = Vec::new();
        let RespParsed::Complete(_) = parse_response(head, false, false, None, &mut out) else {
            panic!("{}", head.escape_ascii())
        };
        String::from_utf8(out).unwrap()
    };
    // Copied in one run with the kept fields after it.
    assert_eq!(
        render(b"HTTP/1.1 299 Odd  Reason\t!\r\nServer: s\r\nContent-Length: 0\r\n\r\n"),
        "HTTP/1.1 299 Odd  Reason\t!\r\nServer: s\r\ncontent-length: 0\r\n\r\n"
    );
    // An HTTP/1.0 server's answer goes to the client as HTTP/1.1, its body to the close.
    assert_eq!(
        render(b"HTTP/1.0 200 Fine\r\nServer: s\r\n\r\n"),
        "HTTP/1.1 200 Fine\r\nServer: s\r\nconnection: close\r\n\r\n"
    );
    // Rendered anew: a bare LF, no reason, a reason in obs-text (httparse reads it empty).
    assert_eq!(
        render(b"HTTP/1.0 200 OK\nContent-Length: 0\r\n\r\n"),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(render(b"HTTP/1.1 204\r\n\r\n"), "HTTP/1.1 204 \r\n\r\n");
    assert_eq!(
        render("HTTP/1.1 200 D\u{e9}j\u{e0}\r\nContent-Length: 0\r\n\r\n".as_bytes()),
        "HTTP/1.1 200 \r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn an_upgrade_takes_one_upgrade_field_and_several_are_declined() {
    let parse = |head: &[u8]| {
        let mut out = Vec::new();
        let Parsed::Complete(r) = parse_request(head, &test_ctx(false), &mut out) else {
            panic!("{}", head.escape_ascii())
        };
        (
            r.upgrade,
            String::from_utf8(out).unwrap().to_ascii_lowercase(),
        )
    };
    let (upgrade, up) =
        parse(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(upgrade);
    assert_eq!(up.matches("upgrade: websocket").count(), 1, "{up}");
    assert!(up.contains("connection: upgrade"), "{up}");
    for head in [
        &b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n\r\n"[..],
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade:\r\nUpgrade: websocket\r\n\r\n",
    ] {
        let (upgrade, up) = parse(head);
        assert!(!upgrade, "{up}");
        assert!(!up.contains("upgrade"), "{up}");
    }
}
