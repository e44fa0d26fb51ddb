//! Requests the fast path must refuse or pass on exactly: body framing, malformed heads,
//! pipelining, a client that closes mid-body, size and time limits, hop-by-hop and
//! forwarded fields.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_or_invalid_body_framing_is_refused_and_the_connection_closes() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let p = |s: &'static str| s.as_bytes();
    let cases: &[(&[u8], u16)] = &[
        // Content-Length and Transfer-Encoding together, both orders.
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), 400),
        // Several lengths that disagree, or are not plain decimal numbers.
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5.0\r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551621\r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nhello"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5a\r\n\r\nhello"), 400),
        // Transfer codings other than one final chunked.
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n"), 400),
        // Invalid chunk framing.
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x00b\r\nhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n"), 400),
        // Trailers that are not field lines.
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon here\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-a: 1\r\n folded\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-a: 1\nx-b: 2\r\n\r\n"), 400),
        (p("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-a: 1\x00\r\n\r\n"), 400),
    ];
    refused(&lb, &r, cases).await;
    // A chunk extension longer than any sane one, and a huge chunk-size line.
    let mut long_ext =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;".to_vec();
    long_ext.extend(std::iter::repeat_n(b'x', 8192));
    long_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    let mut zeros = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    zeros.extend(std::iter::repeat_n(b'0', 100));
    zeros.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    refused(&lb, &r, &[(&long_ext, 400), (&zeros, 400)]).await;
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    // Partly forwarded bodies ended on upstream connections that were then closed (the
    // backend records a cut body, then its connection's end, a moment apart).
    r.wait_record("every cut body's connection closed", |rec| {
        rec.seen
            .iter()
            .all(|s| s.complete || rec.closed.contains(&s.conn))
    })
    .await;
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_heads_and_request_lines_get_4xx_or_505() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let p = |s: &'static str| s.as_bytes();
    let cases: &[(&[u8], u16)] = &[
        // Field syntax.
        (
            p("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n"),
            400,
        ),
        (
            p("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded\r\n\r\n"),
            400,
        ),
        (p("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\rHost: a\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nX-\x00A: 1\r\n\r\n"), 400),
        // Request lines.
        (p("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400),
        (p("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET / http/1.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET / HTTP/1\r\nHost: a\r\n\r\n"), 400),
        (p("GET / HTTP/01.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET /\r\nHost: a\r\n\r\n"), 400),
        (p("GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505),
        (p("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505),
        (p("GET / HTTP/3.0\r\nHost: a\r\n\r\n"), 505),
        (p("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        (p("GET relative/path HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        // Fragments and raw non-ASCII bytes in the target.
        (p("GET /index.html#.png HTTP/1.1\r\nHost: a\r\n\r\n"), 400),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        // No tunnels through a reverse proxy.
        (
            p("CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\n\r\n"),
            501,
        ),
        (p("CONNECT internal.example:22 HTTP/1.0\r\n\r\n"), 501),
        // Host: missing, twice, or not a host.
        (p("GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400),
        (p("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"), 400),
    ];
    refused(&lb, &r, cases).await;

    // What is accepted is forwarded in a normal form.
    let (out, _) = exchange(lb.addr, b"GET /lf HTTP/1.1\nHost: a\nConnection: close\n\n").await;
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.ends_with("lf"),
        "{out}"
    );
    let (out, _) = exchange(
        lb.addr,
        b"GET http://real.example:8080/abs?q=1 HTTP/1.1\r\nHost: spoofed.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let (out, _) = exchange(
        lb.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    r.wait("three requests", |s| s.len() == 3).await;
    let seen = r.seen();
    assert!(
        seen[0].head.starts_with("GET /lf HTTP/1.1\r\n"),
        "{:?}",
        seen[0]
    );
    // Absolute form: origin form upstream, and the target's authority is the Host.
    assert!(
        seen[1].head.starts_with("GET /abs?q=1 HTTP/1.1\r\n"),
        "{:?}",
        seen[1]
    );
    assert_eq!(
        seen[1].header("host"),
        ["real.example:8080"],
        "{:?}",
        seen[1]
    );
    assert!(
        seen[2].head.starts_with("OPTIONS * HTTP/1.1\r\n"),
        "{:?}",
        seen[2]
    );
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_reach_the_backend_one_message_at_a_time() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    // Bodies that look like requests, all in one write.
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let chunk = format!("{:x}\r\n{smuggle}\r\n", smuggle.len());
    let all = format!(
        "GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
         POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{smuggle}\
         POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}0\r\nx-t: 1\r\n\r\n\
         HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n\
         GET /four HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        smuggle.len()
    );
    s.write_all(all.as_bytes()).await.unwrap();
    let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "{out}");
    // Responses in order, each framed.
    let bodies: Vec<&str> = out.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(bodies.len(), 5, "{out}");
    assert!(bodies[0].ends_with("\r\n\r\none"), "{out}");
    assert!(bodies[1].ends_with("\r\n\r\ntwo"), "{out}");
    assert!(bodies[2].ends_with("\r\n\r\nthree"), "{out}");
    assert!(bodies[3].ends_with("\r\n\r\n"), "{out}");
    assert!(bodies[4].ends_with("\r\n\r\nfour"), "{out}");
    let seen = r.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path()).collect();
    assert_eq!(
        paths,
        ["/one", "/two", "/three", "/head", "/four"],
        "{seen:#?}"
    );
    assert_eq!(seen[1].body, smuggle.as_bytes());
    assert_eq!(seen[2].body, smuggle.as_bytes());
    assert_eq!(seen[2].trailers, "x-t: 1\r\n");
    assert!(seen.iter().all(|s| s.complete && s.conn == 1), "{seen:#?}");
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_then_a_client_close_leaves_no_poisoned_upstream_connection() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    for req in [
        &b"POST /short HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789"[..],
        b"POST /short HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n0123456789",
    ] {
        let heads = r.heads("/short");
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        // Once the request has reached the backend (its body still incomplete), go away:
        // the backend sees the end of that upstream connection in the middle of the body.
        r.wait_record("the short request's head", |rec| {
            rec.heads.iter().filter(|p| *p == "/short").count() == heads + 1
        })
        .await;
        let short = r.seen().iter().filter(|x| x.path() == "/short").count();
        drop(s);
        r.wait("the short request", |s| {
            s.iter().filter(|x| x.path() == "/short").count() == short + 1
        })
        .await;
        // The next requests go over clean upstream connections.
        for i in 0..3 {
            let (out, _) = exchange(
                lb.addr,
                format!("GET /after{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            assert!(out.ends_with(&format!("after{i}")), "{out}");
        }
    }
    let seen = r.seen();
    let short: Vec<&Seen> = seen.iter().filter(|s| s.path() == "/short").collect();
    assert_eq!(short.len(), 2, "{seen:#?}");
    for (i, s) in seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.path() == "/short")
    {
        assert!(!s.complete, "{s:?}");
        assert!(
            r.closed(s.conn),
            "the upstream connection of a cut body stayed open"
        );
        assert!(
            seen[i + 1..].iter().all(|x| x.conn != s.conn),
            "a request followed a cut body on its upstream connection: {seen:#?}"
        );
    }
    assert_eq!(seen.len(), 8, "{seen:#?}");
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_too_many_fields_and_slowloris_get_431_and_408() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "timeouts = { header_read = \"1s\", idle = \"5s\" }").await;
    // One huge field, a huge target, many small fields.
    let mut huge = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'v', 70 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut target = b"GET /".to_vec();
    target.extend(std::iter::repeat_n(b'p', 70 * 1024));
    target.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    for req in [&huge, &target, &many] {
        let (out, closed) = exchange(lb.addr, req).await;
        assert!(out.starts_with("HTTP/1.1 431 ") && closed, "{out}");
    }
    // A head trickled a byte at a time: 408 at the header timeout, not later.
    for keepalive_first in [false, true] {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        if keepalive_first {
            s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let out = read_until(&mut s, |t| t.ends_with("first")).await;
            assert!(out.ends_with("first"), "{out}");
        }
        let t = Instant::now();
        let trickle = b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut out = String::new();
        for b in trickle {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            let mut got = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(40), s.read(&mut got)).await {
                Ok(Ok(n)) if n > 0 => {
                    out.push_str(&String::from_utf8_lossy(&got[..n]));
                    break;
                }
                Ok(_) => break,
                Err(_) => {}
            }
        }
        let (rest, closed) = read_to_close(&mut s, Duration::from_secs(3)).await;
        out.push_str(&rest);
        assert!(out.starts_with("HTTP/1.1 408 ") && closed, "{out}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{took:?}"
        );
    }
    assert!(r.seen().iter().all(|s| s.path() != "/slow"));
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_go_and_framing_fields_stay() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let (out, closed) = exchange(
        lb.addr,
        b"POST /hop-req HTTP/1.1\r\nHost: a\r\nConnection: close, X-Foo, Content-Length, Host, Transfer-Encoding\r\nX-Foo: secret\r\nKeep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nTrailer: x-t\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n12345",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 ") && closed, "{out}");
    assert!(out.contains("connection: close"), "{out}");
    r.wait("the request", |s| !s.is_empty()).await;
    let seen = r.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let s = &seen[0];
    for gone in [
        "x-foo",
        "keep-alive",
        "te",
        "proxy-connection",
        "trailer",
        "connection",
    ] {
        assert!(s.header(gone).is_empty(), "{gone} forwarded: {s:?}");
    }
    assert_eq!(s.header("content-length"), ["40"], "{s:?}");
    assert_eq!(s.header("host"), ["a"], "{s:?}");
    assert_eq!(s.body.len(), 40);
    // The backend names framing fields in its Connection: they stay for the client.
    let (out, _) = exchange(
        lb.addr,
        b"GET /hop HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("\r\n\r\nhop"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("content-length: 3\r\n"), "{out}");
    assert!(!lower.contains("x-secret"), "{out}");
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_replaced_for_untrusted_clients_and_extended_for_trusted_ones() {
    let r = Recorder::start().await;
    let spoof = b"GET /xff HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 7.7.7.7, 8.8.8.8\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n";
    let lb = lb_for(&r, "").await;
    let (out, _) = exchange(lb.addr, spoof).await;
    assert!(out.ends_with("xff"), "{out}");
    r.wait("the request", |s| s.len() == 1).await;
    let s = &r.seen()[0];
    assert_eq!(s.header("x-forwarded-for"), ["127.0.0.1"], "{s:?}");
    assert_eq!(s.header("x-forwarded-proto"), ["http"], "{s:?}");
    assert_eq!(s.header("x-forwarded-host"), ["shop.example"], "{s:?}");
    // Forwarded and X-Real-IP from an untrusted client are dropped; X-Real-IP is its own.
    assert!(s.header("forwarded").is_empty(), "{s:?}");
    assert_eq!(s.header("x-real-ip"), ["127.0.0.1"], "{s:?}");
    no_panic(&lb);
    drop(lb);
    // A trusted peer's chain is kept, in order, and extended.
    let trusted = Lb::start_threads(
        &config(
            r.addr,
            "",
            "[forwarded]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        ),
        1,
    )
    .await;
    let (out, _) = exchange(trusted.addr, spoof).await;
    assert!(out.ends_with("xff"), "{out}");
    r.wait("the second request", |s| s.len() == 2).await;
    let s = &r.seen()[1];
    assert_eq!(
        s.header("x-forwarded-for"),
        ["6.6.6.6, 7.7.7.7, 8.8.8.8, 127.0.0.1"],
        "{s:?}"
    );
    assert_eq!(s.header("x-forwarded-proto"), ["https"], "{s:?}");
    assert_eq!(s.header("x-forwarded-host"), ["evil.example"], "{s:?}");
    assert_eq!(s.header("forwarded"), ["for=6.6.6.6;proto=https"], "{s:?}");
    assert_eq!(s.header("x-real-ip"), ["6.6.6.6"], "{s:?}");
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&trusted);
}
