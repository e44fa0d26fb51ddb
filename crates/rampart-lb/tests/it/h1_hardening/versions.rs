//! One policy whatever the protocol version: HTTP/1.0, upgrades and many `Connection`
//! tokens, HTTP/2 requests in front of an HTTP/1 upstream, pipelining after either.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_upgrades_and_many_connection_fields_keep_the_same_guarantees() {
    // HTTP/1.0, upgrades and heads naming many hop-by-hop fields: the backend still sees
    // one clean message per request, with our forwarded headers.
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let (out, _) = exchange(
        lb.addr,
        b"GET /h10 HTTP/1.0\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.ends_with("h10"),
        "{out}"
    );
    let (out, _) = exchange(
        lb.addr,
        b"POST /many HTTP/1.1\r\nHost: a\r\nConnection: close, a, b, c, d, e, f, g, h, i, content-length, host\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.ends_with("many"),
        "{out}"
    );
    // HTTP/1.0 needs no Host; the upstream request (HTTP/1.1) gets one.
    let (out, _) = exchange(lb.addr, b"GET /nohost HTTP/1.0\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.ends_with("nohost"),
        "{out}"
    );
    r.wait("three requests", |s| s.len() == 3).await;
    let seen = r.seen();
    assert_eq!(seen[2].header("host").len(), 1, "{:?}", seen[2]);
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        ["127.0.0.1"],
        "{:?}",
        seen[0]
    );
    assert!(seen[0].header("forwarded").is_empty(), "{:?}", seen[0]);
    assert_eq!(seen[0].header("x-real-ip"), ["127.0.0.1"], "{:?}", seen[0]);
    assert_eq!(seen[1].body, b"hello", "{:?}", seen[1]);
    // HTTP/1.0 with chunked, or lengths that disagree: refused.
    let cases: &[(&[u8], u16)] = &[
        (
            b"POST /te10 HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /h10cl HTTP/1.0\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
        (b"POST /h10clte HTTP/1.0\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET /fold HTTP/1.0\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET /twohosts HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /ws HTTP/1.0\r\nHost : a\r\n\r\n", 400),
        (b"GET /nul HTTP/1.0\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    ];
    refused(&lb, &r, cases).await;
    // Upgrades and many hop-by-hop names get the same checks.
    let cases: &[(&[u8], u16)] = &[
        (b"GET /up HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400),
        (b"GET /up HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400),
        (b"POST /up HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /many HTTP/1.1\r\nHost: a\r\nConnection: a, b, c, d, e, f, g, h, i\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ];
    refused(&lb, &r, cases).await;
    // An upgrade with both framings: whatever is answered, no second request reaches the
    // backend on that request's upstream connection.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\nConnection: upgrade\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let _ = read_to_close(&mut s, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = r.seen();
    if let Some(up) = seen.iter().find(|s| s.path() == "/up") {
        assert!(
            seen.iter()
                .all(|s| s.path() != "/smuggled" || s.conn != up.conn),
            "{seen:#?}"
        );
    }
    // Pipelined across the two servers: answers in order.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "{out}");
    let at = |p: &str| out.find(p).unwrap_or(usize::MAX);
    assert!(
        at("p1") < at("p2") && at("p2") < at("p3") && at("p3") != usize::MAX,
        "{out}"
    );
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

/// A header field as raw bytes.
type Field<'a> = (&'a [u8], &'a [u8]);

/// One HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block of literal fields (no indexing, no Huffman), any bytes allowed.
fn hpack(fields: &[Field]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        assert!(n.len() < 127 && v.len() < 127);
        b.push(0x00);
        b.push(n.len() as u8);
        b.extend_from_slice(n);
        b.push(v.len() as u8);
        b.extend_from_slice(v);
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_cannot_smuggle_into_the_http1_upstream() {
    // Raw HTTP/2 (h2c prior knowledge) with what HTTP/2 forbids and HTTP/1 would read as
    // framing: a body longer than its content-length, a transfer-encoding, CRLF inside a
    // value, an upper-case name. Each is refused by the HTTP/2 layer; nothing of it may
    // reach the backend as a second request or a longer body.
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let base: [Field; 4] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"a"),
        (b":path", b"/h2"),
    ];
    let cases: Vec<(Vec<Field>, &[u8])> = vec![
        (
            vec![(b"content-length", b"5")],
            b"helloGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            vec![(b"transfer-encoding", b"chunked")],
            b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            vec![(
                b"x-a",
                b"1\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1",
            )],
            b"",
        ),
        (vec![(b"X-Upper", b"1")], b""),
        (vec![(b"connection", b"keep-alive")], b""),
        (
            vec![(b"content-length", b"5"), (b"content-length", b"6")],
            b"hello!",
        ),
    ];
    for (extra, body) in &cases {
        let mut fields = base.to_vec();
        fields.extend_from_slice(extra);
        let mut w = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        w.extend(h2_frame(0x4, 0, 0, &[]));
        let end_stream = if body.is_empty() { 0x1 } else { 0 };
        w.extend(h2_frame(0x1, 0x4 | end_stream, 1, &hpack(&fields)));
        if !body.is_empty() {
            w.extend(h2_frame(0x0, 0x1, 1, body));
        }
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(&w).await.unwrap();
        // Read whatever comes (SETTINGS, RST_STREAM or GOAWAY) for a moment.
        let _ = read_to_close(&mut s, Duration::from_millis(500)).await;
    }
    let seen = r.seen();
    for s in &seen {
        assert!(
            s.path() != "/smuggled",
            "smuggled through HTTP/2: {seen:#?}"
        );
        assert!(
            !String::from_utf8_lossy(&s.body).contains("smuggled"),
            "{seen:#?}"
        );
        assert!(
            s.header("x-a").is_empty() && s.header("x-upper").is_empty(),
            "{seen:#?}"
        );
    }
    // A valid HTTP/2 request still gets through after all that.
    let mut fields = base.to_vec();
    fields[0] = (b":method", b"GET");
    fields[3] = (b":path", b"/h2ok");
    let mut w = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    w.extend(h2_frame(0x4, 0, 0, &[]));
    w.extend(h2_frame(0x1, 0x4 | 0x1, 1, &hpack(&fields)));
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(&w).await.unwrap();
    let _ = read_to_close(&mut s, Duration::from_millis(500)).await;
    r.wait("the valid HTTP/2 request", |s| {
        s.iter().any(|x| x.path() == "/h2ok")
    })
    .await;
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

/// Issue 12, finding 1: the requests pipelined after HTTP/1.0 kept alive or after an
/// upgrade the server declined get the same answers as on a fresh connection. Before,
/// hyper's HTTP/1 server took such a connection and forwarded a second Host or a
/// CONNECT; then it closed after them (what followed was never answered); now the fast
/// path serves HTTP/1.0 and upgrades itself, with one policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_after_http10_or_an_upgrade_meet_the_same_rules() {
    let b = crate::support::Backend::start("b").await;
    let lb = Lb::start_threads(
        &crate::support::http_config("round-robin", &crate::support::servers(&[(&b, 1)]), ""),
        1,
    )
    .await;
    let bad: [(&[u8], u16); 3] = [
        (
            b"GET /two-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            400,
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            501,
        ),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ];
    let prefixes: [(&str, &[u8]); 3] = [
        ("a fresh connection", b""),
        (
            "HTTP/1.0 kept alive",
            b"GET /first HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            "an upgrade the server declined",
            b"GET /no-upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (what, prefix) in prefixes {
        for (req, status) in &bad {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(req);
            bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
            let (out, closed) = exchange(lb.addr, &bytes).await;
            // Status lines wherever they start (a body without a final newline runs into
            // the next one).
            let statuses: Vec<&str> = out
                .match_indices("HTTP/1.1 ")
                .filter_map(|(i, _)| out.get(i + 9..i + 12))
                .collect();
            let mut want: Vec<String> = Vec::new();
            if !prefix.is_empty() {
                want.push("200".into());
            }
            want.push(status.to_string());
            if !closed || statuses != want {
                failures.push(format!(
                    "after {what}: {:?} -> {statuses:?} closed={closed}, expected {want:?} and a close",
                    String::from_utf8_lossy(req)
                ));
            }
        }
    }
    no_panic(&lb);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The backend saw the six first requests and nothing pipelined after them.
    assert_eq!(b.hits(), 6, "a pipelined request reached the backend");
}

/// HTTP/1.0 on the fast path: kept alive when the client asks (its requests go upstream as
/// HTTP/1.1 over one pooled connection), a chunked answer decoded for it (no transfer
/// coding in HTTP/1.0) and its connection then closed; an h2c upgrade is not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_is_kept_alive_when_asked_and_never_gets_a_chunked_body() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    for i in 0..3 {
        s.write_all(
            format!("GET /ka{i} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let want = format!("ka{i}");
        let out = read_until(&mut s, |t| t.ends_with(&want)).await;
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("\r\nconnection: keep-alive\r\n"),
            "{out}"
        );
    }
    s.write_all(b"GET /chunked HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "the body's end is the connection's: {out}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{out}");
    assert!(!head.contains("content-length"), "{out}");
    assert!(head.contains("\r\nconnection: close"), "{out}");
    assert_eq!(body, "hello world");
    // Without keep-alive: closed after one answer.
    let (out, closed) = exchange(
        lb.addr,
        b"GET /once HTTP/1.0\r\nHost: a\r\n\r\nGET /never HTTP/1.0\r\n\r\n",
    )
    .await;
    assert!(
        closed && out.ends_with("once") && !out.contains("never"),
        "{out}"
    );
    r.wait("five requests", |s| s.len() == 5).await;
    let seen = r.seen();
    for x in &seen {
        assert!(
            x.head
                .starts_with(&format!("GET {} HTTP/1.1\r\n", x.path())),
            "{x:?}"
        );
        assert_eq!(x.header("host"), ["a"], "{x:?}");
        assert!(x.header("connection").is_empty(), "{x:?}");
    }
    // One upstream connection served the kept-alive ones (and the chunked one after).
    assert!(
        seen[..4].iter().all(|x| x.conn == seen[0].conn),
        "{seen:#?}"
    );
    // h2c over an HTTP/1.1 connection is declined by not forwarding the upgrade.
    let (out, _) = exchange(
        lb.addr,
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.ends_with("h2c"),
        "{out}"
    );
    r.wait("the h2c one", |s| s.len() == 6).await;
    let h2c = r.seen().pop().unwrap();
    for n in ["upgrade", "connection", "http2-settings"] {
        assert!(h2c.header(n).is_empty(), "{n}: {h2c:?}");
    }
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}
