//! Backends that answer badly: surplus or doubly framed bodies, cut bodies, interim and
//! bodiless answers, malformed heads, answers before the request body; and a client that
//! stops reading.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surplus_or_doubly_framed_responses_never_reach_the_next_request() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    // Same client connection, then new ones: never the surplus.
    for first in ["/surplus", "/surplus-late", "/clte"] {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(format!("GET {first} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let want = if first == "/clte" { "0\r\n\r\n" } else { "ok" };
        let out = read_until(&mut s, |t| t.ends_with(want)).await;
        assert!(
            out.starts_with("HTTP/1.1 200 ") && out.ends_with(want),
            "{first}: {out}"
        );
        if first == "/clte" {
            assert!(
                !out.to_ascii_lowercase().contains("content-length"),
                "{out}"
            );
        }
        // The backend has written all of its answer, surplus included (for /surplus-late
        // 100 ms after the response), before the next request is sent; then a moment for
        // the balancer's event loop to register those bytes on its idle upstream
        // connection (not observable from here).
        r.wait_record("the whole answer written", |rec| {
            rec.answered.iter().any(|p| p == first)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = r.conns();
        s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let out = read_until(&mut s, |t| t.ends_with("next") || t.contains("POISONED")).await;
        assert!(
            out.ends_with("next") && !out.contains("POISONED"),
            "after {first}: {out}"
        );
        assert_eq!(
            r.conns(),
            before + 1,
            "after {first}: the upstream connection was reused"
        );
        let (out, _) = exchange(
            lb.addr,
            b"GET /fresh HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            out.ends_with("fresh") && !out.contains("POISONED"),
            "after {first}: {out}"
        );
    }
    // A response with lengths that disagree, a doubled chunked, a folded line: 502.
    for bad in ["/cl-conflict", "/te-twice", "/fold"] {
        let (out, _) = exchange(
            lb.addr,
            format!("GET {bad} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 502 "), "{bad}: {out}");
    }
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_cuts_its_body_short_closes_the_client_connection() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    for (path, status, tail) in [
        ("/cut", 200, "0123456789"),
        ("/cut-chunked", 200, "0123456789"),
    ] {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        let t = Instant::now();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "{path}: the client connection was left open: {out}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{path}: {:?}",
            t.elapsed()
        );
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {out}"
        );
        assert!(out.ends_with(tail), "{path}: {out}");
        assert_eq!(out.matches("HTTP/1.1").count(), 1, "{path}: {out}");
    }
    // Malformed from its first chunk: nothing was sent yet, so a 502, and the client's
    // connection goes on.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"GET /bad-chunk HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| t.ends_with("answer\n")).await;
    assert!(out.starts_with("HTTP/1.1 502 "), "{out}");
    s.write_all(b"GET /then HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| t.ends_with("then")).await;
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.ends_with("\r\n\r\nthen"),
        "{out}"
    );
    // The balancer goes on with clean connections.
    let (out, _) = exchange(
        lb.addr,
        b"GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("fine"), "{out}");
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_grow_the_balancer() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let before = lb.rss_kib();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        // The status line at least (one read may bring less), then stop reading.
        let head = read_until(&mut s, |t| t.contains("\r\n")).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head:?}");
        clients.push(s);
    }
    // 4 x 256 MiB are waiting at the backends; none of it may pile up in the balancer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = lb.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "the balancer grew by {grown} KiB");
    // A client that pipelines requests without ever reading the answers.
    let mut flood = TcpStream::connect(lb.addr).await.unwrap();
    let reqs = b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n".repeat(20_000);
    let _ = tokio::time::timeout(Duration::from_secs(3), flood.write_all(&reqs)).await;
    let grown = lb.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "the balancer grew by {grown} KiB");
    drop(flood);
    drop(clients);
    let (out, _) = exchange(
        lb.addr,
        b"GET /still HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.ends_with("still"), "{out}");
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_and_bodiless_responses_keep_both_sides_in_step() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    // The backend's 100 and 103 are not passed on; the final answer is.
    s.write_all(b"GET /interim HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| t.ends_with("interim")).await;
    assert!(
        out.starts_with("HTTP/1.1 200 ") && out.ends_with("interim"),
        "{out}"
    );
    assert_eq!(out.matches("HTTP/1.1").count(), 1, "{out}");
    // Expect: 100-continue: one 100 from the balancer, the body, one answer.
    s.write_all(
        b"POST /expect HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let out = read_until(&mut s, |t| t.ends_with("\r\n\r\n")).await;
    assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let out = read_until(&mut s, |t| t.ends_with("expect")).await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    // HEAD, 204 and 304: no body passed on, whatever is announced or sent; the client
    // connection stays in step.
    for path in ["/head", "/304", "/204-body"] {
        let method = if path == "/head" { "HEAD" } else { "GET" };
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let out = read_until(&mut s, |t| t.ends_with("after")).await;
        let (first, second) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        assert!(first.starts_with("HTTP/1.1 "), "{path}: {out}");
        assert!(
            second.starts_with("HTTP/1.1 200 ") && second.ends_with("\r\n\r\nafter"),
            "{path}: {out}"
        );
        assert!(!out.contains("hello"), "{path}: {out}");
    }
    let seen = r.seen();
    let expect = seen.iter().find(|s| s.path() == "/expect").unwrap();
    assert_eq!(expect.body, b"hello");
    assert!(expect.header("expect").is_empty(), "{expect:?}");
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_backend_responses_get_502_and_the_client_connection_goes_on() {
    let r = Recorder::start().await;
    let lb = lb_for(&r, "").await;
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    for bad in [
        "/huge-head",
        "/many-headers",
        "/101",
        "/bad-cl",
        "/nul",
        "/garbage",
    ] {
        s.write_all(format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let out = read_until(&mut s, |t| t.ends_with("answer\n")).await;
        assert!(
            out.starts_with("HTTP/1.1 502 ") && !out.contains("ok"),
            "{bad}: {out}"
        );
    }
    // A length repeated with the same value: one length for the client.
    s.write_all(b"GET /cl-list HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| t.ends_with("ok")).await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert_eq!(
        out.to_ascii_lowercase().matches("content-length").count(),
        1,
        "{out}"
    );
    s.write_all(b"GET /last HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let out = read_until(&mut s, |t| t.ends_with("last")).await;
    assert!(out.ends_with("\r\n\r\nlast"), "{out}");
    assert!(r.errors().is_empty(), "{:#?}", r.errors());
    no_panic(&lb);
}

/// A backend that answers a request before its body (a 413, say) and closes: with
/// `graceful`, it shuts its side down and drops the rest of the body; otherwise it closes
/// with the body unread, which resets the connection.
async fn early_answer_backend(graceful: bool) -> (SocketAddr, AbortHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
                    .await;
                if graceful {
                    let _ = s.shutdown().await;
                    while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    (addr, task.abort_handle())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_before_the_body_has_its_answer_reach_the_client() {
    for graceful in [false, true] {
        let (addr, backend) = early_answer_backend(graceful).await;
        let lb = Lb::start_threads(&config(addr, "", ""), 1).await;
        for _ in 0..3 {
            let s = TcpStream::connect(lb.addr).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let total: usize = 64 << 20;
            let writer = tokio::spawn(async move {
                let head =
                    format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n");
                if wr.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    if wr.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
            });
            let mut got = Vec::new();
            let mut buf = [0u8; 16384];
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            writer.abort();
            let out = String::from_utf8_lossy(&got);
            assert!(
                out.starts_with("HTTP/1.1 413 ") && out.ends_with("too large"),
                "graceful {graceful}: {out:?}"
            );
            // The body was cut: the client connection ends with the answer.
            assert!(
                graceful || out.to_ascii_lowercase().contains("connection: close"),
                "graceful {graceful}: {out}"
            );
        }
        no_panic(&lb);
        backend.abort();
    }
}
