use super::*;
use proptest::prelude::*;

/// Heads as clients and servers send them: the fast path takes each.
const REQUESTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"POST /api/v1/items?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello",
    b"GET /a HTTP/1.0\r\nConnection:keep-alive\r\nX-Empty:\r\nX-Tab:\tv\tw\r\n\r\n",
];
const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 07:18:03 GMT\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\nhello from backend0\n",
    b"HTTP/1.0 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-A:  spaced value\r\n\r\n",
    b"HTTP/1.1 204 \r\n\r\n",
];

#[test]
fn the_heads_clients_and_servers_send_take_the_fast_path() {
    for h in REQUESTS {
        assert!(check_agrees(h).0, "{}", h.escape_ascii());
    }
    for h in RESPONSES {
        assert!(check_agrees(h).1, "{}", h.escape_ascii());
    }
    let mut f = Vec::new();
    let line = request(REQUESTS[1], &mut f).unwrap().unwrap();
    assert_eq!(
        (line.method, line.target, line.version),
        (&b"POST"[..], &b"/api/v1/items?x=1&y=%20"[..], 1)
    );
    assert_eq!(line.head_len, REQUESTS[1].len() - 5);
    let names: Vec<&[u8]> = f.iter().map(|f| f.name(REQUESTS[1])).collect();
    assert_eq!(
        names,
        [
            &b"Host"[..],
            b"User-Agent",
            b"Accept",
            b"Content-Length",
            b"Content-Type"
        ]
    );
    assert_eq!(f[3].kind, H::ContentLength);
    assert_eq!(f[3].value(REQUESTS[1]), b"5");
    assert_eq!(
        &REQUESTS[1][f[1].line().unwrap()],
        b"User-Agent: curl/7.88.1\r\n"
    );
    let line = response(RESPONSES[2], &mut f).unwrap().unwrap();
    assert_eq!(
        (line.code, line.reason, line.version, line.head_len),
        (204, &b""[..], 1, 17)
    );
    assert_eq!(line.line_end, Some(15));
    assert!(f.is_empty());
}

#[test]
fn what_the_fast_path_leaves_httparse_reads_and_refuses() {
    let mut f = Vec::new();
    // A bare LF: httparse takes it; the line is rendered anew, not copied.
    let head = b"GET / HTTP/1.1\nHost: h\nX-A: b \r\n\r\n";
    assert_eq!(check_agrees(head), (false, false));
    let line = request(head, &mut f).unwrap().unwrap();
    assert_eq!((line.target, line.head_len), (&b"/"[..], head.len()));
    assert_eq!(f.len(), 2);
    assert_eq!((f[0].value(head), f[0].line()), (&b"h"[..], None));
    // Trailing whitespace is trimmed (httparse's reading), and such a line not copied.
    assert_eq!((f[1].value(head), f[1].line()), (&b"b"[..], None));
    // Obs-text in a value is httparse's to read; in a target too.
    let head = "GET /\u{e9} HTTP/1.1\r\nHost: h\r\nX: caf\u{e9}\r\n\r\n".as_bytes();
    let line = request(head, &mut f).unwrap().unwrap();
    assert_eq!(line.target, "/\u{e9}".as_bytes());
    assert!(f[1].line().is_some());
    // Not all there yet.
    assert_eq!(request(b"GET / HTTP/1.1\r\nHost: h\r\n", &mut f), Ok(None));
    assert_eq!(response(b"HTTP/1.1 200 OK\r\n", &mut f), Ok(None));
    // Refusals are httparse's, with its error.
    assert_eq!(
        request(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", &mut f),
        Err(httparse::Error::HeaderName)
    );
    assert_eq!(
        request(b"GET / HTTP/2.0\r\n\r\n", &mut f),
        Err(httparse::Error::Version)
    );
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(
        request(head.as_bytes(), &mut f),
        Err(httparse::Error::TooManyHeaders)
    );
    let just: String = (0..MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    let head = format!("GET / HTTP/1.1\r\n{just}\r\n");
    assert!(check_agrees(head.as_bytes()).0);
}

/// Each head, changed in one place: each byte replaced by every byte value, a byte of the
/// ones that delimit inserted before each, each byte removed, each prefix.
fn variants(head: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    const INSERT: &[u8] = b"\r\n\t :,;\x00\x7f\x80\xffa/";
    let replaced = (0..head.len()).flat_map(move |i| {
        (0..=255u8).map(move |b| {
            let mut v = head.to_vec();
            v[i] = b;
            v
        })
    });
    let inserted = (0..=head.len()).flat_map(move |i| {
        INSERT.iter().map(move |&b| {
            let mut v = head.to_vec();
            v.insert(i, b);
            v
        })
    });
    let removed = (0..head.len()).map(move |i| {
        let mut v = head.to_vec();
        v.remove(i);
        v
    });
    replaced.chain(inserted).chain(removed)
}

#[test]
fn every_one_byte_change_of_a_head_reads_as_httparse_reads_it() {
    let mut taken = 0;
    let mut left = 0;
    for h in REQUESTS.iter().chain(RESPONSES).take(4) {
        for v in variants(h) {
            let (req, resp) = check_agrees(&v);
            if req || resp {
                taken += 1;
            } else {
                left += 1;
            }
        }
    }
    // Both paths are exercised: most changes keep a strict head (a letter for a letter),
    // many do not.
    assert!(
        taken > 10_000 && left > 10_000,
        "{taken} taken, {left} left"
    );
}

#[test]
fn no_prefix_of_a_head_is_taken() {
    for h in REQUESTS.iter().chain(RESPONSES) {
        let mut f = Vec::new();
        let end = if h.starts_with(b"HTTP/") {
            response(h, &mut f).unwrap().unwrap().head_len
        } else {
            request(h, &mut f).unwrap().unwrap().head_len
        };
        for n in 0..end {
            assert_eq!(check_agrees(&h[..n]), (false, false), "{n}");
        }
    }
}

/// A head-like input: a first line and fields from pieces that are mostly, not always,
/// what a strict head holds.
fn head_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => "[A-Za-z][A-Za-z0-9-]{0,20}".prop_map(String::into_bytes),
        2 => Just(b": ".to_vec()),
        2 => Just(b":".to_vec()),
        3 => Just(b"\r\n".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => Just(b" ".to_vec()),
        1 => Just(b"\t".to_vec()),
        1 => Just(b"HTTP/1.1".to_vec()),
        1 => Just(b"HTTP/1.0".to_vec()),
        1 => "[0-9]{1,4}".prop_map(String::into_bytes),
        1 => "[ -~]{0,30}".prop_map(String::into_bytes),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    let first = prop_oneof![
        "(GET|POST|PUT|OPTIONS|M-SEARCH) /[!-~]{0,20} HTTP/1\\.[01]\r\n"
            .prop_map(String::into_bytes),
        "HTTP/1\\.[01] [0-9]{3} [ -~]{0,12}\r\n".prop_map(String::into_bytes),
    ];
    (first, prop::collection::vec(piece, 0..40)).prop_map(|(mut f, ps)| {
        for p in ps {
            f.extend_from_slice(&p);
        }
        f.extend_from_slice(b"\r\n\r\n");
        f
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]
    #[test]
    fn head_like_input_reads_as_httparse_reads_it(data in head_like()) {
        check_agrees(&data);
    }
}

/// Every name `classify` knows, with its meaning.
const KNOWN: [(&str, H); 18] = [
    ("te", H::Hop),
    ("host", H::Host),
    ("expect", H::Expect),
    ("upgrade", H::Upgrade),
    ("trailer", H::Hop),
    ("forwarded", H::Fwd),
    ("x-real-ip", H::Xri),
    ("connection", H::Connection),
    ("keep-alive", H::Hop),
    ("content-length", H::ContentLength),
    ("x-forwarded-for", H::Xff),
    ("proxy-connection", H::Hop),
    ("x-forwarded-host", H::Xfh),
    ("transfer-encoding", H::TransferEncoding),
    ("x-forwarded-proto", H::Xfp),
    ("proxy-authenticate", H::Hop),
    ("proxy-authorization", H::Hop),
    ("strict-transport-security", H::Hsts),
];

/// The token characters of RFC 9110 section 5.6.2 (what a field name is made of).
const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

proptest! {
    /// `classify` compares with one OR a byte: for any token it must agree with a plain
    /// case-insensitive comparison, also for names one character off a known one (`_` for
    /// `-`, `^` for `~`...).
    #[test]
    fn a_field_name_is_classified_as_a_case_insensitive_comparison_would(
        which in 0..KNOWN.len(),
        case_flips in any::<u32>(),
        swap in proptest::option::of((any::<prop::sample::Index>(), 0..TCHARS.len())),
    ) {
        let mut name: Vec<u8> = KNOWN[which].0.bytes().collect();
        for (i, b) in name.iter_mut().enumerate() {
            if case_flips >> (i % 32) & 1 == 1 {
                *b = b.to_ascii_uppercase();
            }
        }
        if let Some((at, c)) = swap {
            let i = at.index(name.len());
            name[i] = TCHARS[c];
        }
        let name = String::from_utf8(name).unwrap();
        let want = KNOWN
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            .map_or(H::Other, |&(_, h)| h);
        prop_assert_eq!(classify(name.as_bytes()), want, "{}", name);
    }
}

#[test]
fn every_known_field_name_is_classified_whatever_its_case() {
    for (name, h) in KNOWN {
        assert_eq!(classify(name.as_bytes()), h, "{name}");
        assert_eq!(classify(name.to_ascii_uppercase().as_bytes()), h, "{name}");
        assert_eq!(
            classify(name.replace('-', "_").as_bytes()),
            if name.contains('-') { H::Other } else { h }
        );
    }
    assert_eq!(classify(b"content-lengths"), H::Other);
    assert_eq!(classify(b"x-forwarded-fo"), H::Other);
}

#[test]
fn every_one_character_change_of_a_known_name_is_classified_as_a_comparison_would() {
    // Word-at-a-time comparison must cover every byte, whatever the name's length.
    for (name, _) in KNOWN {
        for i in 0..name.len() {
            for &c in TCHARS {
                let mut n = name.as_bytes().to_vec();
                n[i] = c;
                let n = String::from_utf8(n).unwrap();
                let want = KNOWN
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&n))
                    .map_or(H::Other, |&(_, h)| h);
                assert_eq!(classify(n.as_bytes()), want, "{n}");
            }
        }
    }
}
