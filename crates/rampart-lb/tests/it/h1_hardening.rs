//! Attacks on the HTTP/1.1 fast path's own codec (crates/rampart-lb/src/h1.rs): request
//! smuggling and desync (RFC 9112 section 6), malformed heads, pipelining, bad backends,
//! limits, hop-by-hop and forwarded headers. Raw client sockets against the real binary,
//! in front of a raw backend that records exactly what the balancer forwarded and checks
//! its framing strictly.
//!
//! The behaviour these tests pin down (stricter than HAProxy where HAProxy would normalize,
//! because the fast path forwards body framing bytes as they came):
//! - a request with both `Content-Length` and `Transfer-Encoding` gets 400 and the
//!   connection closes (HAProxy removes the length and closes after the response);
//! - `Transfer-Encoding` must be exactly one `chunked` (any other coding list: 400);
//! - chunk framing is strict: CRLF only, hex sizes of at most 15 digits, extensions
//!   `;...` of visible characters, trailers `name: value` lines; anything else 400 + close;
//! - HTTP versions other than 1.0 and 1.1 get 505; a missing or repeated `Host` 400;
//! - the backend always sees one `Host`, at most one `Content-Length`, `chunked` alone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_testkit::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::support::{read_until, Lb};

/// One request as the backend received it.
#[derive(Debug, Clone)]
struct Seen {
    conn: u64,
    /// The head as received, CRLFs included.
    head: String,
    body: Vec<u8>,
    /// Raw trailer section of a chunked body (without the final CRLF).
    trailers: String,
    /// The body arrived whole.
    complete: bool,
}

impl Seen {
    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    /// Values of a header (case-insensitive name).
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

#[derive(Default)]
struct Record {
    seen: Vec<Seen>,
    /// Framing the backend found wrong (a desync in the making).
    errors: Vec<String>,
    /// Connections the balancer closed (the backend saw their end).
    closed: Vec<u64>,
    /// Paths whose head has arrived (recorded before the body is read).
    heads: Vec<String>,
    /// Paths whose scripted answer was written out in full.
    answered: Vec<String>,
}

/// A raw HTTP/1.1 backend that records every request (strictly parsed) and answers by path.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    rec: Arc<Mutex<Record>>,
    task: AbortHandle,
}

/// What the backend answers to a path: writes with pauses between them, then maybe a close.
fn script(path: &str) -> (Vec<Vec<u8>>, bool) {
    let one = |b: &[u8]| (vec![b.to_vec()], false);
    match path {
        // A response with more bytes than its length: the surplus looks like a response.
        "/surplus" => one(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED",
        ),
        // The same surplus, a little after the response.
        "/surplus-late" => (
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nPOISONED".to_vec(),
            ],
            false,
        ),
        // Both framings: Transfer-Encoding wins, and the connection is not reused.
        "/clte" => one(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        "/cl-conflict" => {
            one(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk")
        }
        "/te-twice" => one(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        "/fold" => one(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\nok"),
        "/bad-chunk" => one(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n"),
        // A chunked body with an extension and a trailer (decoded for an HTTP/1.0 client).
        "/chunked" => (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n".to_vec(),
                b"6\r\n world\r\n0\r\nX-T: 1\r\n\r\n".to_vec(),
            ],
            false,
        ),
        // Cut short: a length of 100 with 10 bytes, then the close.
        "/cut" => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec()],
            true,
        ),
        "/cut-chunked" => (
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n0123456789".to_vec()],
            true,
        ),
        // Bodies announced where there can be none, and sent anyway.
        "/204-body" => one(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
        "/304" => one(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
        "/head" => one(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        // The backend's own interim answers before the final one.
        "/interim" => one(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ninterim",
        ),
        "/hop" => one(
            b"HTTP/1.1 200 OK\r\nConnection: x-secret, content-length\r\nX-Secret: 1\r\nContent-Length: 3\r\n\r\nhop",
        ),
        // Malformed or oversized heads from the backend.
        "/huge-head" => {
            let mut h = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
            h.extend(std::iter::repeat_n(b'v', 70 * 1024));
            h.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
            (vec![h], false)
        }
        "/many-headers" => {
            let mut h = b"HTTP/1.1 200 OK\r\n".to_vec();
            for i in 0..300 {
                h.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
            }
            h.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
            (vec![h], false)
        }
        "/101" => one(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"),
        "/bad-cl" => one(b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok"),
        "/nul" => one(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"),
        "/garbage" => one(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
        "/cl-list" => one(b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nok"),
        "/big" => {
            // 256 MiB in 1 MiB writes.
            let mut v = vec![b"HTTP/1.1 200 OK\r\nContent-Length: 268435456\r\n\r\n".to_vec()];
            v.extend(std::iter::repeat_n(vec![b'z'; 1 << 20], 256));
            (v, false)
        }
        _ => {
            let body = path.trim_start_matches('/');
            (
                vec![format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()],
                false,
            )
        }
    }
}

/// Reads a connection's bytes as they come.
struct Reader {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    /// Read more; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// A CRLF-terminated line (without it); a bare LF or CR is an error.
    async fn line(&mut self, errors: &mut Vec<String>) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let l = &line[..line.len() - 1];
                if l.last() != Some(&b'\r') {
                    errors.push(format!("bare LF after {:?}", String::from_utf8_lossy(l)));
                    return None;
                }
                let l = &l[..l.len() - 1];
                if l.iter()
                    .any(|b| *b == b'\r' || (*b < 0x20 && *b != b'\t') || *b == 0x7f)
                {
                    errors.push(format!("control byte in {:?}", String::from_utf8_lossy(l)));
                }
                return Some(String::from_utf8_lossy(l).into_owned());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }
}

impl Recorder {
    async fn start() -> Recorder {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let conns = Arc::new(AtomicU64::new(0));
        let rec = Arc::new(Mutex::new(Record::default()));
        let (c, r) = (conns.clone(), rec.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let id = c.fetch_add(1, Ordering::Relaxed) + 1;
                let rec = r.clone();
                tokio::spawn(async move {
                    let mut rd = Reader {
                        tcp,
                        buf: Vec::new(),
                    };
                    while serve_one(&mut rd, id, &rec).await {}
                    rec.lock().unwrap().closed.push(id);
                });
            }
        })
        .abort_handle();
        Recorder {
            addr,
            conns,
            rec,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.rec.lock().unwrap().seen.clone()
    }

    fn errors(&self) -> Vec<String> {
        self.rec.lock().unwrap().errors.clone()
    }

    fn closed(&self, conn: u64) -> bool {
        self.rec.lock().unwrap().closed.contains(&conn)
    }

    fn conns(&self) -> u64 {
        self.conns.load(Ordering::Relaxed)
    }

    /// Wait (up to 5 s) until `f` holds for what was seen.
    async fn wait(&self, what: &str, f: impl Fn(&[Seen]) -> bool) {
        self.wait_record(what, |r| f(&r.seen)).await;
    }

    /// Wait (up to 5 s) until `f` holds for the whole record (heads, answers, closes).
    async fn wait_record(&self, what: &str, f: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f(&self.rec.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "backend never saw {what}: {:#?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many heads for `path` have arrived so far.
    fn heads(&self, path: &str) -> usize {
        let r = self.rec.lock().unwrap();
        r.heads.iter().filter(|p| *p == path).count()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read one request strictly, record it, answer it; false when the connection is over.
async fn serve_one(rd: &mut Reader, conn: u64, rec: &Mutex<Record>) -> bool {
    let mut errors = Vec::new();
    let mut head = String::new();
    let mut fields = Vec::new();
    let Some(line) = rd.line(&mut errors).await else {
        rec.lock().unwrap().errors.extend(errors);
        return false;
    };
    head.push_str(&line);
    head.push_str("\r\n");
    loop {
        let Some(l) = rd.line(&mut errors).await else {
            let mut r = rec.lock().unwrap();
            r.errors.extend(errors);
            r.errors.push(format!("head cut short: {head:?}"));
            return false;
        };
        head.push_str(&l);
        head.push_str("\r\n");
        if l.is_empty() {
            break;
        }
        match l.split_once(':') {
            Some((n, v)) if !n.is_empty() && !n.contains([' ', '\t']) => {
                fields.push((n.to_ascii_lowercase(), v.trim().to_string()))
            }
            _ => errors.push(format!("bad field line {l:?}")),
        }
    }
    let count = |n: &str| fields.iter().filter(|(k, _)| k == n).count();
    let value = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if count("host") != 1 {
        errors.push(format!("{} Host fields in {head:?}", count("host")));
    }
    if count("content-length") > 1 {
        errors.push(format!("several Content-Length in {head:?}"));
    }
    let te = value("transfer-encoding");
    if te.is_some() && count("content-length") > 0 {
        errors.push(format!("Content-Length and Transfer-Encoding in {head:?}"));
    }
    if count("transfer-encoding") > 1 || te.as_deref().is_some_and(|t| t != "chunked") {
        errors.push(format!("Transfer-Encoding other than chunked in {head:?}"));
    }
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    rec.lock().unwrap().heads.push(path);
    let mut seen = Seen {
        conn,
        head,
        body: Vec::new(),
        trailers: String::new(),
        complete: true,
    };
    if te.is_some() {
        loop {
            let Some(size) = rd.line(&mut errors).await else {
                seen.complete = false;
                break;
            };
            let hex = size
                .split(';')
                .next()
                .unwrap_or("")
                .trim_end_matches([' ', '\t']);
            let Ok(n) = usize::from_str_radix(hex, 16) else {
                errors.push(format!("bad chunk size {size:?}"));
                seen.complete = false;
                break;
            };
            if n == 0 {
                loop {
                    match rd.line(&mut errors).await {
                        None => {
                            seen.complete = false;
                            break;
                        }
                        Some(l) if l.is_empty() => break,
                        Some(l) => {
                            if !l.contains(':') || l.starts_with([' ', '\t']) {
                                errors.push(format!("bad trailer {l:?}"));
                            }
                            seen.trailers.push_str(&l);
                            seen.trailers.push_str("\r\n");
                        }
                    }
                }
                break;
            }
            match rd.exact(n + 2).await {
                Some(d) if d.ends_with(b"\r\n") => seen.body.extend_from_slice(&d[..n]),
                Some(_) => {
                    errors.push("chunk data not followed by CRLF".into());
                    seen.complete = false;
                    break;
                }
                None => {
                    seen.complete = false;
                    break;
                }
            }
        }
    } else if let Some(cl) = value("content-length") {
        match cl.parse::<usize>() {
            Ok(n) => {
                // Read what comes, up to the length.
                while rd.buf.len() < n && rd.fill().await {}
                let k = n.min(rd.buf.len());
                seen.body = rd.buf.drain(..k).collect();
                seen.complete = k == n;
            }
            Err(_) => errors.push(format!("bad Content-Length {cl:?}")),
        }
    }
    let complete = seen.complete;
    let path = seen.path().to_string();
    {
        let mut r = rec.lock().unwrap();
        r.errors.extend(errors);
        r.seen.push(seen);
    }
    if !complete {
        return false;
    }
    let (writes, close) = script(&path);
    for (i, w) in writes.iter().enumerate() {
        if i > 0 && path == "/surplus-late" {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if rd.tcp.write_all(w).await.is_err() {
            return false;
        }
    }
    rec.lock().unwrap().answered.push(path);
    !close
}

fn config(addr: SocketAddr, listener_extra: &str, top: &str) -> String {
    format!(
        r#"{top}
[[listener]]
name = "web"
address = "{{LISTEN}}"
pool = "app"
{listener_extra}

[[pool]]
name = "app"
algorithm = "round-robin"
servers = [{{ name = "raw", address = "{addr}" }}]
health_check = {{ kind = "none" }}
"#
    )
}

async fn lb_for(r: &Recorder, listener_extra: &str) -> Lb {
    Lb::start_threads(&config(r.addr, listener_extra, ""), 1).await
}

/// The balancer's log must not show a panic.
fn no_panic(lb: &Lb) {
    let log = lb.proc.log_text();
    assert!(!log.contains("panicked"), "the balancer panicked:\n{log}");
}

/// Write `req` on a new connection, read until the balancer closes it (or 5 s pass).
/// Returns what was read and whether the connection was closed.
async fn exchange(addr: SocketAddr, req: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    read_to_close(&mut s, Duration::from_secs(5)).await
}

async fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + limit;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// Each request must be refused with `status` and the connection closed, and nothing of
/// it (nor of the request smuggled after it) may reach the backend as a request.
async fn refused(lb: &Lb, r: &Recorder, cases: &[(&[u8], u16)]) {
    let mut failures = Vec::new();
    for (req, status) in cases {
        let mut bytes = req.to_vec();
        bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
        let (out, closed) = exchange(lb.addr, &bytes).await;
        let want = format!("HTTP/1.1 {status} ");
        if !out.starts_with(&want) || !closed || out.matches("HTTP/1.1").count() != 1 {
            failures.push(format!(
                "{:?}\n  -> closed={closed} {out:?}",
                String::from_utf8_lossy(req)
            ));
        }
    }
    let smuggled: Vec<Seen> = r
        .seen()
        .into_iter()
        .filter(|s| s.path() == "/smuggled" || s.head.contains("/smuggled"))
        .collect();
    assert!(
        failures.is_empty() && smuggled.is_empty(),
        "{} of {} not refused as expected:\n{}\nsmuggled: {smuggled:#?}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

mod mutation;
mod requests;
mod responses;
mod versions;
