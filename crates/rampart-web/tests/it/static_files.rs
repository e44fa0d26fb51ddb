use std::os::unix::fs::symlink;
use std::time::Duration;

use rampart_testkit::wait_until;

use crate::common::{get, request, start_web};

/// Cached files are checked again at least every second (files::CHECK_EVERY).
const CHANGE_SEEN_WITHIN: Duration = Duration::from_secs(3);

/// A site folder inside a parent that also holds a secret the server must never show.
fn site() -> (tempfile::TempDir, std::path::PathBuf) {
    let parent = tempfile::tempdir().expect("tempdir");
    std::fs::write(parent.path().join("secret.txt"), "TOP-SECRET-OUTSIDE").expect("secret");
    std::fs::create_dir(parent.path().join("outside")).expect("outside dir");
    std::fs::write(parent.path().join("outside/x.txt"), "TOP-SECRET-OUTSIDE").expect("x");
    let root = parent.path().join("site");
    std::fs::create_dir_all(root.join("docs")).expect("site");
    std::fs::write(root.join("index.html"), "<h1>home</h1>\n").expect("w");
    std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>\n").expect("w");
    std::fs::write(root.join("style.css"), "body { color: red }\n").expect("w");
    std::fs::write(root.join("app.js"), "console.log(1)\n").expect("w");
    std::fs::write(root.join("data.json"), "{}\n").expect("w");
    std::fs::write(root.join("pic.png"), b"\x89PNG\r\n\x1a\n").expect("w");
    std::fs::write(root.join("blob"), b"\0\x01\x02").expect("w");
    std::fs::write(root.join(".env"), "TOP-SECRET-OUTSIDE").expect("w");
    let k: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("1k.bin"), &k).expect("w");
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17u32)
        .map(|i| (i % 253) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).expect("w");
    symlink(parent.path().join("secret.txt"), root.join("leak.txt")).expect("symlink");
    symlink(parent.path().join("outside"), root.join("outdir")).expect("symlink");
    symlink(root.join("style.css"), root.join("alias.css")).expect("symlink");
    (parent, root)
}

#[test]
fn content_types_index_and_methods() {
    let (dir, root) = site();
    let w = start_web(
        "static1",
        &["--root", root.to_str().expect("utf8")],
        dir.path(),
    );
    for (path, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/data.json", "application/json"),
        ("/pic.png", "image/png"),
        ("/blob", "application/octet-stream"),
    ] {
        let r = get(w.addr, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert_eq!(r.header("x-served-by"), Some("static1"), "{path}");
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
    }
    assert_eq!(get(w.addr, "/", &[]).text(), "<h1>home</h1>\n");
    let r = get(w.addr, "/docs", &[]);
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/")));
    assert_eq!(get(w.addr, "/docs/", &[]).text(), "<h1>docs</h1>\n");
    assert_eq!(get(w.addr, "/nope.html", &[]).status, 404);
    let r = request(w.addr, "HEAD", "/1k.bin", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1024"));
    assert!(r.body.is_empty(), "HEAD has no body");
    let r = request(w.addr, "POST", "/style.css", &[], b"x");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    // A symlink that stays inside the root is followed.
    assert_eq!(
        get(w.addr, "/alias.css", &[]).text(),
        "body { color: red }\n"
    );
    // A file changed on disk is served new within a second (the cache checks stat),
    // and never half old, half new.
    std::fs::write(root.join("style.css"), "body { color: blue }\n").expect("w");
    assert!(wait_until(CHANGE_SEEN_WITHIN, || {
        let t = get(w.addr, "/style.css", &[]).text();
        assert!(
            t == "body { color: blue }\n" || t == "body { color: red }\n",
            "{t:?}"
        );
        t == "body { color: blue }\n"
    }));
}

#[test]
fn conditional_requests() {
    let (dir, root) = site();
    let w = start_web(
        "static2",
        &["--root", root.to_str().expect("utf8")],
        dir.path(),
    );
    let r = get(w.addr, "/style.css", &[]);
    let etag = r.header("etag").expect("etag").to_string();
    let lm = r
        .header("last-modified")
        .expect("last-modified")
        .to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let r = get(w.addr, "/style.css", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let list = format!("\"nope\", {etag}");
    assert_eq!(
        get(w.addr, "/style.css", &[("If-None-Match", &list)]).status,
        304
    );
    assert_eq!(
        get(w.addr, "/style.css", &[("If-None-Match", "*")]).status,
        304
    );
    assert_eq!(
        get(w.addr, "/style.css", &[("If-None-Match", "\"other\"")]).status,
        200
    );
    assert_eq!(
        get(w.addr, "/style.css", &[("If-Modified-Since", &lm)]).status,
        304
    );
    let r = get(
        w.addr,
        "/style.css",
        &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")],
    );
    assert_eq!(r.status, 200);
    // If-None-Match wins over If-Modified-Since.
    let r = get(
        w.addr,
        "/style.css",
        &[("If-None-Match", "\"other\""), ("If-Modified-Since", &lm)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        get(w.addr, "/style.css", &[("If-Match", "\"other\"")]).status,
        412
    );
    assert_eq!(
        get(w.addr, "/style.css", &[("If-Match", &etag)]).status,
        200
    );
    let r = get(
        w.addr,
        "/style.css",
        &[("If-Unmodified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")],
    );
    assert_eq!(r.status, 412);
    // A changed file gets a new validator.
    std::fs::write(root.join("style.css"), "body { color: green; }\n").expect("w");
    assert!(wait_until(CHANGE_SEEN_WITHIN, || {
        let r = get(w.addr, "/style.css", &[("If-None-Match", &etag)]);
        r.status == 200 && r.header("etag") != Some(etag.as_str())
    }));
}

#[test]
fn range_requests() {
    let (dir, root) = site();
    let w = start_web(
        "static3",
        &["--root", root.to_str().expect("utf8")],
        dir.path(),
    );
    let k: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let r = get(w.addr, "/1k.bin", &[("Range", "bytes=0-9")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 0-9/1024"));
    assert_eq!(r.body, &k[0..10]);
    let r = get(w.addr, "/1k.bin", &[("Range", "bytes=-10")]);
    assert_eq!((r.status, r.body.as_slice()), (206, &k[1014..]));
    let r = get(w.addr, "/1k.bin", &[("Range", "bytes=1000-")]);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1023/1024"));
    assert_eq!(r.body, &k[1000..]);
    let r = get(w.addr, "/1k.bin", &[("Range", "bytes=1000-5000")]);
    assert_eq!(r.body, &k[1000..]);
    let r = get(w.addr, "/1k.bin", &[("Range", "bytes=1024-")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */1024"));
    // Malformed or multi-range: the whole file.
    for h in ["bytes=5-1", "bytes=0-1,4-5", "lines=1-2", "bytes=x-y"] {
        let r = get(w.addr, "/1k.bin", &[("Range", h)]);
        assert_eq!((r.status, r.body.len()), (200, 1024), "{h}");
    }
    // If-Range: honoured with the current validator, else the whole file.
    let etag = get(w.addr, "/1k.bin", &[])
        .header("etag")
        .expect("etag")
        .to_string();
    let r = get(
        w.addr,
        "/1k.bin",
        &[("Range", "bytes=0-1"), ("If-Range", &etag)],
    );
    assert_eq!(r.status, 206);
    let r = get(
        w.addr,
        "/1k.bin",
        &[("Range", "bytes=0-1"), ("If-Range", "\"old\"")],
    );
    assert_eq!((r.status, r.body.len()), (200, 1024));
    // A file too big for the cache is streamed, ranges included.
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17u32)
        .map(|i| (i % 253) as u8)
        .collect();
    let r = get(w.addr, "/big.bin", &[]);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big, "big file content differs");
    let r = get(w.addr, "/big.bin", &[("Range", "bytes=2000000-2000099")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &big[2_000_000..2_000_100]);
}

#[test]
fn traversal_attempts_never_leave_the_root() {
    let (dir, root) = site();
    let w = start_web(
        "static4",
        &["--root", root.to_str().expect("utf8")],
        dir.path(),
    );
    for path in [
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/docs/%2e%2e/%2e%2e/secret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/index.html%00.txt",
        "/leak.txt",
        "/outdir/x.txt",
        "/.env",
        "/%2eenv",
        "//secret.txt",
        "/docs/./../../secret.txt",
        "/%ff%fe",
    ] {
        let r = get(w.addr, path, &[]);
        assert!(
            r.status == 400 || r.status == 404,
            "{path}: status {}",
            r.status
        );
        assert!(!r.text().contains("TOP-SECRET"), "{path} leaked the secret");
    }
    // The server survived all of that.
    assert_eq!(get(w.addr, "/", &[]).status, 200);
    // A served file replaced by a symlink out of the root is not followed: the cached
    // copy until the next check, then 404.
    assert_eq!(get(w.addr, "/app.js", &[]).status, 200);
    std::fs::remove_file(root.join("app.js")).expect("rm");
    symlink(dir.path().join("secret.txt"), root.join("app.js")).expect("symlink");
    assert!(wait_until(CHANGE_SEEN_WITHIN, || {
        let r = get(w.addr, "/app.js", &[]);
        assert!(!r.text().contains("TOP-SECRET"));
        r.status == 404
    }));
}

#[test]
fn precompressed_variants() {
    let (dir, root) = site();
    std::fs::write(root.join("app.js.gz"), b"GZIP-BYTES").expect("w");
    std::fs::write(root.join("app.js.br"), b"BROTLI-BYTES").expect("w");
    std::fs::write(root.join("style.css.gz"), b"CSS-GZIP").expect("w");
    let w = start_web(
        "static5",
        &["--root", root.to_str().expect("utf8")],
        dir.path(),
    );
    let cases: [(&str, &str, Option<&str>, &str); 6] = [
        ("/app.js", "gzip, deflate, br", Some("br"), "BROTLI-BYTES"),
        ("/app.js", "gzip", Some("gzip"), "GZIP-BYTES"),
        ("/app.js", "br;q=0, gzip", Some("gzip"), "GZIP-BYTES"),
        ("/app.js", "identity", None, "console.log(1)\n"),
        ("/style.css", "br, gzip", Some("gzip"), "CSS-GZIP"),
        ("/data.json", "br, gzip", None, "{}\n"),
    ];
    for (path, ae, enc, body) in cases {
        let r = get(w.addr, path, &[("Accept-Encoding", ae)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), enc, "{path} {ae}");
        assert_eq!(r.text(), body, "{path} {ae}");
        if path != "/data.json" {
            assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{path} {ae}");
            assert_eq!(
                r.header("content-type"),
                Some(if path == "/app.js" {
                    "text/javascript; charset=utf-8"
                } else {
                    "text/css; charset=utf-8"
                })
            );
        }
    }
    // Without Accept-Encoding the identity file, still marked as varying.
    let r = get(w.addr, "/app.js", &[]);
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    // Variants have their own validators.
    let e1 = get(w.addr, "/app.js", &[("Accept-Encoding", "br")])
        .header("etag")
        .map(str::to_string);
    let e2 = get(w.addr, "/app.js", &[])
        .header("etag")
        .map(str::to_string);
    assert_ne!(e1, e2);
}

/// One response read off a kept-alive connection.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_resp(r: &mut impl std::io::BufRead, head: bool) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).expect("header");
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').expect("header line");
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if !head && status != 304 {
        let len: usize = resp
            .header("content-length")
            .expect("content-length")
            .parse()
            .expect("length");
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body).expect("body");
    }
    resp
}

#[test]
fn one_connection_pipelines_static_requests_then_moves_to_hyper() {
    use std::io::{BufReader, Write};
    let (dir, root) = site();
    let w = start_web(
        "static6",
        &["--root", root.to_str().expect("utf8")],
        dir.path(),
    );
    let k: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17u32)
        .map(|i| (i % 253) as u8)
        .collect();
    // A cached file too big to be copied behind the head (written from the cache).
    let mid: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(root.join("mid.bin"), &mid).expect("w");
    let s = std::net::TcpStream::connect(w.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut wr = s.try_clone().expect("clone");
    let mut rd = BufReader::new(s);
    // Three pipelined requests in one write, the static fast path answers them in order.
    wr.write_all(
        b"GET /1k.bin HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /style.css?v=2 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=2000000-2000099\r\n\r\n",
    )
    .expect("send");
    let r = read_resp(&mut rd, false);
    assert_eq!((r.status, r.body.as_slice()), (200, k.as_slice()));
    assert_eq!(r.header("x-served-by"), Some("static6"));
    assert!(r.header("date").is_some() && r.header("etag").is_some());
    let r = read_resp(&mut rd, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    let r = read_resp(&mut rd, false);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &big[2_000_000..2_000_100]);
    wr.write_all(
        b"GET /mid.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /mid.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=-20000\r\n\r\n",
    )
    .expect("send");
    let r = read_resp(&mut rd, false);
    assert!(r.status == 200 && r.body == mid, "mid.bin differs");
    let r = read_resp(&mut rd, false);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &mid[mid.len() - 20000..])
    );
    // A head that arrives in pieces.
    wr.write_all(b"GET /big.bin HTTP/1.1\r\nHo").expect("send");
    std::thread::sleep(Duration::from_millis(100));
    wr.write_all(b"st: x\r\n\r\n").expect("send");
    let r = read_resp(&mut rd, false);
    assert_eq!(r.status, 200);
    assert!(r.body == big, "big file over sendfile differs");
    // Not a static file: the same connection continues on hyper, bytes already read included.
    wr.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /1k.bin HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .expect("send");
    let r = read_resp(&mut rd, false);
    assert_eq!((r.status, r.body.as_slice()), (200, b"ok\n".as_slice()));
    let r = read_resp(&mut rd, false);
    assert_eq!((r.status, r.body.as_slice()), (200, k.as_slice()));
    assert_eq!(r.header("x-served-by"), Some("static6"));
    // HTTP/1.0 and bodies go to hyper from the start; answers are the same.
    let s = std::net::TcpStream::connect(w.addr).expect("connect");
    let mut wr = s.try_clone().expect("clone");
    let mut rd = BufReader::new(s);
    wr.write_all(b"GET /1k.bin HTTP/1.0\r\n\r\n").expect("send");
    let r = read_resp(&mut rd, false);
    assert_eq!((r.status, r.body.as_slice()), (200, k.as_slice()));
    let s = std::net::TcpStream::connect(w.addr).expect("connect");
    let mut wr = s.try_clone().expect("clone");
    let mut rd = BufReader::new(s);
    wr.write_all(b"GET /1k.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        .expect("send");
    let r = read_resp(&mut rd, false);
    assert_eq!((r.status, r.body.len()), (200, 1024));
    // Connection: close is honoured.
    wr.write_all(b"GET /1k.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let r = read_resp(&mut rd, false);
    assert_eq!(r.status, 200);
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut rd, &mut rest).expect("closed");
    assert!(rest.is_empty());
}
