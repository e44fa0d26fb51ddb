//! The floor under `bench/lb`'s cpu scenario.
//!
//! A proxy with nothing but the data path: each client connection gets one upstream
//! connection (the backends in turn, at accept), and each request goes client -> proxy ->
//! server -> proxy -> client with an `X-Forwarded-For` added, as every balancer in the
//! bench adds it. No per-request balancing, pool, timer, limit, metric or log: the four
//! system calls per request (two receives, two sends) and what the I/O model costs around
//! them. Three I/O models on one thread:
//!
//! - `epoll`: a hand-written loop over mio (what tokio uses underneath), no runtime;
//! - `tokio`: a task per connection on tokio's current-thread runtime (rampart's model);
//! - `uring`: io_uring, one `io_uring_enter` per batch of completions.
//!
//! `tokio-rr` and `tokio-p2c` choose a server per request instead (round robin, or the less
//! busy of two drawn at random) over each server's idle upstream connections, as a balancer
//! does: `bench/lb-scale --floor` runs them with up to thousands of servers.
//!
//! `io-floor MODE LISTEN BACKEND...`; GET requests without a body and answers with a
//! `Content-Length` only (what wrk and the bench's nginx send): this is a measuring tool.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

mod epoll;
mod tokio_rt;
mod uring;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!(
            "usage: io-floor epoll|tokio|uring|tokio-rr|tokio-p2c LISTEN BACKEND [BACKEND...]"
        );
        std::process::exit(2);
    }
    let parse = |s: &String| -> SocketAddr {
        s.parse().unwrap_or_else(|e| {
            eprintln!("io-floor: {s}: {e}");
            std::process::exit(2)
        })
    };
    let listen = parse(&args[1]);
    let backends: Vec<SocketAddr> = args[2..].iter().map(parse).collect();
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("io-floor: bind {listen}: {e}");
        std::process::exit(1)
    });
    let r = match args[0].as_str() {
        "epoll" => epoll::run(listener, &backends),
        "tokio" => tokio_rt::run(listener, &backends, tokio_rt::Choice::Pinned),
        "tokio-rr" => tokio_rt::run(listener, &backends, tokio_rt::Choice::RoundRobin),
        "tokio-p2c" => tokio_rt::run(listener, &backends, tokio_rt::Choice::TwoChoices),
        "uring" => uring::run(listener, &backends),
        m => {
            eprintln!("io-floor: unknown mode {m}");
            std::process::exit(2)
        }
    };
    if let Err(e) = r {
        eprintln!("io-floor: {e}");
        std::process::exit(1);
    }
}

/// A blocking connect to the `n`th backend in turn, then non-blocking with no delay (set
/// up once per client connection, before the measured load).
fn connect_upstream(backends: &[SocketAddr], n: usize) -> io::Result<TcpStream> {
    let s = TcpStream::connect(backends[n % backends.len()])?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The end of the head (past its blank line), if it is all in `b`.
fn head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A complete request's length, its upstream rendering appended to `out`.
fn take_request(b: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let end = head_end(b)?;
    out.extend_from_slice(&b[..end - 2]);
    out.extend_from_slice(b"X-Forwarded-For: 127.0.0.1\r\n\r\n");
    Some(end)
}

/// A complete response's length (head and `Content-Length` body), if it is all in `b`.
fn response_len(b: &[u8]) -> Option<usize> {
    let end = head_end(b)?;
    let mut len = 0usize;
    for line in b[..end].split(|&c| c == b'\n') {
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            len = std::str::from_utf8(&line[15..])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
        }
    }
    (b.len() >= end + len).then_some(end + len)
}

/// Reads what `s` has into `buf` (through `scratch`) until it would block: `Ok(false)` at
/// its end.
fn read_available(s: &mut impl Read, buf: &mut Vec<u8>, scratch: &mut [u8]) -> io::Result<bool> {
    loop {
        match s.read(scratch) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes as much of `buf` as `s` takes, draining it: `Ok(true)` when all went.
fn write_available(s: &mut impl Write, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match s.write(&buf[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.drain(..done);
    Ok(buf.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gets_the_header_and_a_response_its_body() {
        let mut out = Vec::new();
        assert_eq!(
            take_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r", &mut out),
            None
        );
        assert_eq!(
            take_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX", &mut out),
            Some(27)
        );
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
        );
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nab";
        assert_eq!(response_len(r), None);
        assert_eq!(
            response_len(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
            Some(41)
        );
    }
}
