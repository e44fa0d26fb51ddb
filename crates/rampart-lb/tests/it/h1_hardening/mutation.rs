//! Seeded random mutations of valid requests and responses: nothing malformed reaches the
//! other side, nothing hangs, nothing leaks into the next exchange.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_reach_the_backend_malformed_nor_hang() {
    // Differential fuzzing: valid requests (bodies, chunks, pipelining, HTTP/1.0,
    // upgrades) with a few random edits, sent to the balancer; whatever it accepts must
    // reach the strict backend well framed, and every connection must end once the client
    // is done sending. The seed is fixed so that a failure can be replayed.
    use rand::{Rng, SeedableRng};
    let r = Recorder::start().await;
    let lb = lb_for(&r, "timeouts = { header_read = \"2s\", idle = \"3s\" }").await;
    let seeds: [&[u8]; 7] = [
        b"GET /a?x=1 HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: keep-alive, x-h\r\nX-H: 1\r\n\r\nhelloGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://h.example/abs HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
        b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
        b"POST /old HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabcGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ];
    let bytes: &[&[u8]] = &[
        b"\r",
        b"\n",
        b"\r\n",
        b" ",
        b"\t",
        b":",
        b";",
        b",",
        b"0",
        b"5",
        b"a",
        b"f",
        b"x",
        b"-",
        b"\x00",
        b"\x7f",
        b"\x80",
        b"#",
        b"@",
        b"/",
        b"chunked",
        b"Content-Length: 2\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Host: b\r\n",
        b"\r\n\r\n",
        b" chunked",
        b"HTTP/1.0",
    ];
    // RAMPART_FUZZ_SEED=N explores other cases.
    let seed = std::env::var("RAMPART_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0001u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut cases = Vec::new();
    for _ in 0..240 {
        let mut data = seeds[rng.gen_range(0..seeds.len())].to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..=data.len());
            let ins = bytes[rng.gen_range(0..bytes.len())];
            match rng.gen_range(0..3) {
                0 => {
                    data.splice(at..at, ins.iter().copied());
                }
                1 if at < data.len() => {
                    data.remove(at);
                }
                _ if at < data.len() => data[at] = ins[0],
                _ => data.extend_from_slice(ins),
            }
        }
        cases.push(data);
    }
    for batch in cases.chunks(40) {
        let mut tasks = Vec::new();
        for data in batch {
            let data = data.clone();
            let addr = lb.addr;
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&data).await;
                let _ = s.shutdown().await;
                let (_, closed) = read_to_close(&mut s, Duration::from_secs(8)).await;
                (closed, data)
            }));
        }
        for t in tasks {
            let (closed, data) = t.await.unwrap();
            assert!(
                closed,
                "seed {seed}: the connection did not end: {:?}",
                String::from_utf8_lossy(&data)
            );
        }
    }
    eprintln!("seed {seed}: the backend saw {} requests", r.seen().len());
    assert!(!r.seen().is_empty());
    assert!(r.errors().is_empty(), "seed {seed}: {:#?}", r.errors());
    no_panic(&lb);
}

/// What a strict client makes of everything it read on a `Connection: close` exchange:
/// `Err` when the bytes are not one well-framed response (a cut body is fine: the close
/// tells the client).
fn strict_response(all: &[u8]) -> Result<Option<(u16, Vec<u8>)>, String> {
    if all.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(all);
    let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(format!("no complete head: {text:?}"));
    };
    let head = &text[..end];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut cl = Vec::new();
    let mut te = Vec::new();
    for l in lines {
        let (n, v) = l.split_once(':').ok_or(format!("bad field {l:?}"))?;
        if n.is_empty() || n.contains([' ', '\t']) || l.contains(['\r', '\n', '\0']) {
            return Err(format!("bad field {l:?}"));
        }
        match n.to_ascii_lowercase().as_str() {
            "content-length" => cl.push(v.trim().to_string()),
            "transfer-encoding" => te.push(v.trim().to_ascii_lowercase()),
            _ => {}
        }
    }
    if cl.len() > 1 || (!cl.is_empty() && !te.is_empty()) {
        return Err(format!("ambiguous framing: {head:?}"));
    }
    let body = &all[end + 4..];
    if status == 204 || status == 304 {
        return if body.is_empty() {
            Ok(Some((status, Vec::new())))
        } else {
            Err(format!("a body after {status}: {text:?}"))
        };
    }
    if let Some(t) = te.last() {
        if t.rsplit(',').next().map(str::trim) != Some("chunked") {
            // Until the close.
            return Ok(Some((status, body.to_vec())));
        }
        // Strict chunked: what follows the last chunk must be nothing.
        let mut rest = body;
        let mut out = Vec::new();
        loop {
            let Some(i) = rest.windows(2).position(|w| w == b"\r\n") else {
                return Ok(Some((status, out))); // cut short
            };
            let line = String::from_utf8_lossy(&rest[..i]).into_owned();
            let hex = line.split(';').next().unwrap_or("").trim_end();
            let n = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk {line:?}"))?;
            rest = &rest[i + 2..];
            if n == 0 {
                // Trailer lines up to an empty one, then nothing.
                loop {
                    let Some(k) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return Ok(Some((status, out))); // cut in the trailers
                    };
                    let line = &rest[..k];
                    rest = &rest[k + 2..];
                    if line.is_empty() {
                        return if rest.is_empty() {
                            Ok(Some((status, out)))
                        } else {
                            Err(format!("bytes after the last chunk: {text:?}"))
                        };
                    }
                }
            }
            if rest.len() < n + 2 {
                out.extend_from_slice(&rest[..rest.len().min(n)]);
                return Ok(Some((status, out))); // cut short
            }
            if &rest[n..n + 2] != b"\r\n" {
                return Err(format!("chunk data not followed by CRLF: {text:?}"));
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
    }
    match cl.first() {
        Some(v) => {
            let n: usize = v.parse().map_err(|_| format!("bad length {v:?}"))?;
            if body.len() > n {
                return Err(format!(
                    "{} bytes past the length {n}: {text:?}",
                    body.len() - n
                ));
            }
            Ok(Some((status, body.to_vec())))
        }
        None => Ok(Some((status, body.to_vec()))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_responses_reach_the_client_well_framed_and_never_leak_into_the_next() {
    // Differential fuzzing of the response side: a backend answers each request with a
    // randomly edited valid response (lengths, chunks, 1xx, 204, until-close) carrying the
    // request's marker, and keeps its connection for the next one. Every client must get
    // one well-framed response (or a cut one, then the close), and never another
    // request's marker: the balancer must not reuse a connection left out of step.
    use rand::{Rng, SeedableRng};
    let seed = std::env::var("RAMPART_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0002u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // The checker itself catches what it is for.
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nX",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\nX",
    ] {
        assert!(
            strict_response(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let good = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: 1\r\n\r\n";
    assert_eq!(strict_response(good), Ok(Some((200, b"ok".to_vec()))));
    let seeds: [&str; 6] = [
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-A: 1\r\n\r\nM{i}",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nM{a}\r\n3;x=1\r\n{b}\r\n0\r\nx-t: 1\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nM{i}",
        "HTTP/1.1 204 No Content\r\nX-M: M{i}\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nM{i}",
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\nX-M: M{i}\r\n\r\n",
    ];
    let edits: &[&[u8]] = &[
        b"\r",
        b"\n",
        b"\r\n",
        b" ",
        b":",
        b";",
        b",",
        b"0",
        b"9",
        b"f",
        b"\x00",
        b"\x7f",
        b"chunked",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nMXXXXX",
    ];
    let n = 120;
    let mut answers = Vec::new();
    for i in 0..n {
        let marker = format!("{i:05}");
        let s = seeds[rng.gen_range(0..seeds.len())]
            .replace("{i}", &marker)
            .replace("{a}", &marker[..2])
            .replace("{b}", &marker[2..]);
        let mut data = s.into_bytes();
        for _ in 0..rng.gen_range(0..3) {
            let at = rng.gen_range(0..=data.len());
            let ins = edits[rng.gen_range(0..edits.len())];
            match rng.gen_range(0..3) {
                0 => {
                    data.splice(at..at, ins.iter().copied());
                }
                1 if at < data.len() => {
                    data.remove(at);
                }
                _ if at < data.len() => data[at] = ins[0],
                _ => data.extend_from_slice(ins),
            }
        }
        answers.push(data);
    }
    let answers = Arc::new(answers);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listener = TcpListener::bind(addr).await.unwrap();
    let a = answers.clone();
    let backend = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let a = a.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let i: usize = head
                        .split(' ')
                        .nth(1)
                        .and_then(|p| p.strip_prefix("/f"))
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    if tcp.write_all(&a[i]).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
    .abort_handle();
    let config = format!(
        r#"
[[listener]]
name = "web"
address = "{{LISTEN}}"
pool = "app"

[[pool]]
name = "app"
servers = [{{ name = "fuzz", address = "{addr}" }}]
health_check = {{ kind = "none" }}
timeouts = {{ response = "1s" }}
"#
    );
    let lb = Lb::start_threads(&config, 1).await;
    let mut failures = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(
            format!("GET /f{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut all = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .is_ok();
        let sent = String::from_utf8_lossy(&answers[i]).into_owned();
        let text = String::from_utf8_lossy(&all).into_owned();
        if !closed {
            failures.push(format!(
                "#{i}: no close; backend sent {sent:?}; client got {text:?}"
            ));
            continue;
        }
        if let Err(e) = strict_response(&all) {
            failures.push(format!("#{i}: {e}; backend sent {sent:?}"));
        }
        // Never another request's marker.
        for j in 0..n {
            let other = format!("M{j:05}");
            if j != i && text.contains(&other) && !sent.contains(&other) {
                failures.push(format!("#{i} got #{j}'s answer: {text:?}"));
            }
        }
    }
    backend.abort();
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {n}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    no_panic(&lb);
}
