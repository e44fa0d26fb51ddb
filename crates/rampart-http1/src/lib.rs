//! A minimal blocking HTTP/1.1 client: one request per connection (`Connection: close`),
//! every step bounded by a timeout, the response read whole (up to a size limit) and
//! de-chunked. For health probes, status and fire drills (`rampart-up`) and for tests
//! (`rampart-testkit` re-exports it), where a blocking call on a loopback address is
//! what the caller wants and an async client would be a runtime to carry around.
//!
//! Not for load: the monitor and the load balancer use hyper.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Timeouts and limits of a request.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub connect_timeout: Duration,
    /// Each read and write.
    pub io_timeout: Duration,
    /// Bytes of response read at most (head and body).
    pub max_response: u64,
}

impl Client {
    /// Connect, read and write each bounded by `timeout`; responses up to 4 MiB.
    pub const fn with_timeout(timeout: Duration) -> Client {
        Client {
            connect_timeout: timeout,
            io_timeout: timeout,
            max_response: 4 << 20,
        }
    }

    pub fn get(&self, addr: SocketAddr, path: &str) -> std::io::Result<Response> {
        self.request(addr, "GET", path, &[], b"")
    }

    pub fn request(
        &self,
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let s = self.connect(addr)?;
        self.request_on(s, &addr.to_string(), method, path, headers, body)
    }

    /// A TCP connection with this client's timeouts (to wrap, e.g. in TLS, for
    /// [`Client::request_on`]).
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, self.connect_timeout)?;
        s.set_read_timeout(Some(self.io_timeout))?;
        s.set_write_timeout(Some(self.io_timeout))?;
        Ok(s)
    }

    /// One request on a connected stream (plain, or TLS the caller set up), `Host: host`.
    /// The response ends where the stream does; an end without TLS close_notify after a
    /// response head counts as the end.
    pub fn request_on<S: Read + Write>(
        &self,
        mut s: S,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        s.flush()?;
        let mut raw = Vec::new();
        match s.take(self.max_response).read_to_end(&mut raw) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(e),
        }
        parse(&raw)
    }
}

/// `GET path`, everything bounded by `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    Client::with_timeout(timeout).get(addr, path)
}

/// Any request, everything bounded by `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    Client::with_timeout(timeout).request(addr, method, path, headers, body)
}

fn bad(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

/// A whole response as read from a `Connection: close` socket.
pub fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("incomplete response head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 response head"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    }) {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let pos = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..pos]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[pos + 2..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size.checked_add(2)? {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_plain_and_chunked() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        let r = parse(
            b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "abc"));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        assert!(parse(b"HTTP/1.1 200").is_err());
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n"
        )
        .is_err());
    }

    /// Reads one request from `s`: the head up to its blank line, then the body its
    /// `Content-Length` announces (the test's 5 s read timeout bounds the wait).
    fn read_whole_request(s: &mut std::net::TcpStream) -> String {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if got.len() >= end + 4 + len {
                    return String::from_utf8_lossy(&got).into_owned();
                }
            }
            let n = s.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "the client closed before its request was complete: {got:?}"
            );
            got.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn a_real_round_trip() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // The client may write the head and the body separately: read until the head
            // is complete and then the body its Content-Length announces, never one read().
            let req = read_whole_request(&mut s);
            s.write_all(b"HTTP/1.1 201 Created\r\nX-A: b\r\nContent-Length: 3\r\n\r\nyes")
                .unwrap();
            req
        });
        let r = request(
            addr,
            "POST",
            "/p",
            &[("X-Q", "1")],
            b"hi",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            (r.status, r.header("x-a"), r.text().as_str()),
            (201, Some("b"), "yes")
        );
        let req = t.join().unwrap();
        assert!(
            req.starts_with("POST /p HTTP/1.1\r\n")
                && req.contains("X-Q: 1\r\n")
                && req.contains("Content-Length: 2\r\n")
                && req.ends_with("\r\n\r\nhi"),
            "{req}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&raw);
        }
    }
}
