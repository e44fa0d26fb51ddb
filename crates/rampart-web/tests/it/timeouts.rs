//! Slowloris defences of `rampart web`: a request head must arrive within
//! `header_read_timeout` (else 408 and close), an idle keep-alive connection closes after
//! `idle_timeout`, a client that stops reading a response is dropped after `idle_timeout`;
//! clients that keep talking are unaffected.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use rampart_testkit::{free_port, http_get, rampart_bin, wait_until, Proc};

use crate::common::start_web;

fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("site");
    std::fs::write(root.join("a.txt"), "hello\n").expect("w");
    dir
}

fn root(dir: &tempfile::TempDir) -> String {
    dir.path().join("site").to_str().expect("utf8").to_string()
}

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let wr = s.try_clone().expect("clone");
    (wr, BufReader::new(s))
}

/// Read one response: (status, body); the body by its content-length.
fn read_resp(rd: &mut BufReader<TcpStream>) -> (u16, Vec<u8>) {
    let mut line = String::new();
    rd.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        rd.read_line(&mut h).expect("header");
        if h == "\r\n" {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().expect("length");
            }
        }
    }
    let mut body = vec![0; len];
    rd.read_exact(&mut body).expect("body");
    (status, body)
}

/// Wait for the server to close: what it still sent, and how long it took.
fn until_closed(rd: &mut BufReader<TcpStream>, since: Instant) -> (Vec<u8>, Duration) {
    let mut rest = Vec::new();
    let r = rd.read_to_end(&mut rest);
    assert!(
        !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            || e.kind() == std::io::ErrorKind::TimedOut),
        "the server did not close the connection within 15 s"
    );
    (rest, since.elapsed())
}

#[test]
fn a_half_sent_head_gets_408_and_is_closed_within_the_header_timeout() {
    let dir = site();
    let mut w = start_web(
        "slow1",
        &[
            "--root",
            &root(&dir),
            "--header-read-timeout-ms",
            "1000",
            "--idle-timeout-ms",
            "2500",
        ],
        dir.path(),
    );
    // Half a head, then nothing: 408 and close, about a second after the accept.
    let (mut wr, mut rd) = connect(w.addr);
    let t = Instant::now();
    wr.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("send");
    let (rest, took) = until_closed(&mut rd, t);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 408 "), "got {text:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // Trickling a byte at a time does not extend it: the head's deadline is fixed.
    let (mut wr, mut rd) = connect(w.addr);
    let t = Instant::now();
    let trickle = std::thread::spawn(move || {
        for b in b"GET /a.txt HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa" {
            if wr.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (rest, took) = until_closed(&mut rd, t);
    assert!(
        String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 408 "),
        "got {rest:?}"
    );
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    let _ = trickle.join();
    // A connection that sends nothing at all is closed without an answer.
    let (_wr, mut rd) = connect(w.addr);
    let t = Instant::now();
    let (rest, took) = until_closed(&mut rd, t);
    assert!(rest.is_empty(), "got {rest:?}");
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // On a connection handed to hyper (not a static file), hyper's header timer applies,
    // set to the idle timeout (2.5 s).
    let (mut wr, mut rd) = connect(w.addr);
    wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert_eq!(read_resp(&mut rd), (200, b"ok\n".to_vec()));
    let t = Instant::now();
    wr.write_all(b"GET /healthz HTTP/1.1\r\nHo").expect("send");
    let (_, took) = until_closed(&mut rd, t);
    assert!(
        took >= Duration::from_millis(2000) && took < Duration::from_secs(7),
        "closed after {took:?}"
    );
    assert!(w.proc.is_running());
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // Set in the topology file this time: [web] idle_timeout_seconds.
    let dir = site();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let topo = dir.path().join("topology.toml");
    std::fs::write(
        &topo,
        format!(
            "[cluster]\nname = \"t\"\n[web]\nroot = \"site\"\nheader_read_timeout_seconds = 10.0\n\
             idle_timeout_seconds = 1.5\n[[web.node]]\nname = \"idle1\"\nlisten = \"{addr}\"\n"
        ),
    )
    .expect("topology");
    let mut c = Command::new(rampart_bin());
    c.arg("web")
        .arg("--config")
        .arg(&topo)
        .args(["--node", "idle1", "--threads", "2"])
        .env("RUST_LOG", "info");
    let mut proc = Proc::spawn("idle1", c, &dir.path().join("idle1.log"));
    let ok = wait_until(Duration::from_secs(20), || {
        http_get(addr, "/healthz").is_ok_and(|r| r.status == 200)
    });
    assert!(
        ok && proc.is_running(),
        "did not start:\n{}",
        proc.log_text()
    );
    // A client that keeps asking (every 0.6 s, for longer than the idle timeout) is served.
    let (mut wr, mut rd) = connect(addr);
    for _ in 0..5 {
        wr.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        assert_eq!(read_resp(&mut rd), (200, b"hello\n".to_vec()));
        std::thread::sleep(Duration::from_millis(600));
    }
    // Then it goes quiet: closed after 1.5 s (not after the 10 s header timeout).
    wr.write_all(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert_eq!(read_resp(&mut rd), (200, b"hello\n".to_vec()));
    let t = Instant::now();
    let (rest, took) = until_closed(&mut rd, t);
    assert!(rest.is_empty(), "an idle close sends nothing: {rest:?}");
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
}

#[test]
fn a_client_that_stops_reading_is_dropped_after_the_idle_timeout() {
    let dir = site();
    // Far more than the socket buffers of both ends hold.
    let len = 48 * 1024 * 1024;
    let big: Vec<u8> = (0..len as u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.path().join("site/big.bin"), &big).expect("w");
    let w = start_web(
        "slow3",
        &["--root", &root(&dir), "--idle-timeout-ms", "1000"],
        dir.path(),
    );
    let (mut wr, mut rd) = connect(w.addr);
    wr.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    // Read nothing for well over the timeout: the server gives up on the response.
    std::thread::sleep(Duration::from_secs(4));
    let mut got = Vec::new();
    let r = rd.read_to_end(&mut got);
    assert!(
        !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            || e.kind() == std::io::ErrorKind::TimedOut),
        "the server did not close the connection"
    );
    assert!(
        got.len() < len,
        "the whole response arrived ({} bytes): the stalled write was not abandoned",
        got.len()
    );
    // A client that reads gets all of it.
    let (mut wr, mut rd) = connect(w.addr);
    wr.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, body) = read_resp(&mut rd);
    assert!(status == 200 && body == big, "big.bin differs");
}

#[test]
fn a_pipelining_client_with_split_heads_is_unaffected_by_short_timeouts() {
    let dir = site();
    let mut w = start_web(
        "slow4",
        &[
            "--root",
            &root(&dir),
            "--header-read-timeout-ms",
            "1000",
            "--idle-timeout-ms",
            "1000",
        ],
        dir.path(),
    );
    let (mut wr, mut rd) = connect(w.addr);
    // For 3 s (three times both timeouts): pipelined requests, then a head in two pieces.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        wr.write_all(
            b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\nHEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /a.txt HTTP/1.1\r\nHo",
        )
        .expect("send");
        assert_eq!(read_resp(&mut rd), (200, b"hello\n".to_vec()));
        // HEAD: content-length without a body; read the head only.
        let mut line = String::new();
        rd.read_line(&mut line).expect("status");
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
        loop {
            line.clear();
            rd.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(400));
        wr.write_all(b"st: x\r\n\r\n").expect("send");
        assert_eq!(read_resp(&mut rd), (200, b"hello\n".to_vec()));
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(w.proc.is_running());
}
