use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::pg::PgCluster;
use rampart_testkit::{http_get, wait_until};
use serde_json::Value;

use crate::common::{get, request, start_web, Web};

fn start_guestbook(name: &str, pg: &PgCluster, dir: &std::path::Path, extra: &[&str]) -> Web {
    let mut args: Vec<String> = vec!["--root".into(), dir.to_str().expect("utf8").into()];
    args.push("--db-node".into());
    args.push(pg.primary.host_port());
    for r in &pg.replicas {
        args.push("--db-node".into());
        args.push(r.host_port());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let w = start_web(name, &a, dir);
    let ok = wait_until(Duration::from_secs(20), || {
        http_get(w.addr, "/readyz").is_ok_and(|r| r.status == 200)
    });
    assert!(ok, "{name} never became ready:\n{}", w.proc.log_text());
    w
}

fn post(w: &Web, author: &str, text: &str) -> rampart_testkit::HttpResponse {
    let body = serde_json::json!({ "author": author, "text": text }).to_string();
    request(
        w.addr,
        "POST",
        "/api/messages",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

fn json(r: &rampart_testkit::HttpResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.text()))
}

/// (what, request headers, body, expected status)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);

#[test]
fn api_validates_input_with_json_errors() {
    let pg = PgCluster::start(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start_guestbook("gb-validate", &pg, dir.path(), &[]);
    let ct = [("Content-Type", "application/json")];
    let cases: Vec<Case> = vec![
        (
            "text/plain body",
            vec![("Content-Type", "text/plain")],
            br#"{"author":"a","text":"b"}"#.to_vec(),
            415,
        ),
        ("not json", ct.to_vec(), b"{author".to_vec(), 400),
        ("array", ct.to_vec(), b"[1,2]".to_vec(), 400),
        (
            "missing text",
            ct.to_vec(),
            br#"{"author":"a"}"#.to_vec(),
            400,
        ),
        (
            "extra field",
            ct.to_vec(),
            br#"{"author":"a","text":"b","admin":true}"#.to_vec(),
            400,
        ),
        (
            "number author",
            ct.to_vec(),
            br#"{"author":1,"text":"b"}"#.to_vec(),
            400,
        ),
        (
            "invalid utf-8",
            ct.to_vec(),
            b"{\"author\":\"\xff\xfe\",\"text\":\"b\"}".to_vec(),
            400,
        ),
        (
            "empty author",
            ct.to_vec(),
            br#"{"author":"  ","text":"b"}"#.to_vec(),
            422,
        ),
        (
            "long author",
            ct.to_vec(),
            format!(r#"{{"author":"{}","text":"b"}}"#, "a".repeat(65)).into_bytes(),
            422,
        ),
        (
            "long text",
            ct.to_vec(),
            format!(r#"{{"author":"a","text":"{}"}}"#, "é".repeat(2001)).into_bytes(),
            422,
        ),
        (
            "control char",
            ct.to_vec(),
            br#"{"author":"a\u0007","text":"b"}"#.to_vec(),
            422,
        ),
        ("huge body", ct.to_vec(), vec![b' '; 20_000], 413),
    ];
    for (what, headers, body, want) in cases {
        let r = request(w.addr, "POST", "/api/messages", &headers, &body);
        assert_eq!(r.status, want, "{what}: {}", r.text());
        let v = json(&r);
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    }
    for q in [
        "/api/messages?limit=0",
        "/api/messages?limit=101",
        "/api/messages?limit=abc",
        "/api/messages/abc",
        "/api/messages/-1",
    ] {
        let r = get(w.addr, q, &[]);
        assert_eq!(r.status, 400, "{q}");
        assert!(json(&r)["error"].is_string());
    }
    let r = get(w.addr, "/api/messages", &[("X-Rampart-Token", "garbage")]);
    assert_eq!(r.status, 400);
    let r = get(w.addr, "/api/messages/999999", &[]);
    assert_eq!(r.status, 404, "{}\n{}", r.text(), w.proc.log_text());
    assert_eq!(json(&r)["error"], "no such message");
    // A valid message, with its unicode intact, and the headers every API answer carries.
    let r = post(&w, "Zoë", "héllo <b>wörld</b> ✓");
    assert_eq!(r.status, 201, "{}", r.text());
    let m = json(&r);
    assert_eq!(
        (m["author"].as_str(), m["text"].as_str()),
        (Some("Zoë"), Some("héllo <b>wörld</b> ✓"))
    );
    assert!(m["id"].as_i64().is_some_and(|i| i > 0));
    assert_eq!(r.header("x-served-by"), Some("gb-validate"));
    assert_eq!(r.header("x-db-role"), Some("primary"));
    assert_eq!(r.header("x-db-node"), Some(pg.primary.host_port().as_str()));
    let token = r
        .header("x-rampart-token")
        .expect("token header")
        .to_string();
    let cookie = r.header("set-cookie").expect("cookie");
    assert!(
        cookie.starts_with(&format!("rampart_token={token};")),
        "{cookie}"
    );
    let r = get(w.addr, "/api/messages?limit=5", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("x-db-role").is_some() && r.header("x-db-node").is_some());
    // The page escapes what visitors wrote.
    let page = get(
        w.addr,
        "/",
        &[("Cookie", &format!("rampart_token={token}"))],
    );
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("héllo &lt;b&gt;wörld&lt;/b&gt; ✓"), "{html}");
    assert!(html.contains("<form method=\"post\""));
}

#[test]
fn post_then_get_with_token_always_sees_the_write() {
    let pg = PgCluster::start(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start_guestbook("gb-ryw", &pg, dir.path(), &[]);
    let replica = pg.replicas[0].host_port();
    let (mut on_replica, mut on_primary) = (0, 0);
    let started = Instant::now();
    for i in 0..1000 {
        let r = post(&w, "ryw", &format!("message {i}"));
        assert_eq!(r.status, 201, "{}", r.text());
        let id = json(&r)["id"].as_i64().expect("id");
        let token = r.header("x-rampart-token").expect("token").to_string();
        // Alternate the two ways a client hands the token back.
        let cookie = format!("rampart_token={token}");
        let h: [(&str, &str); 1] = if i % 2 == 0 {
            [("X-Rampart-Token", &token)]
        } else {
            [("Cookie", &cookie)]
        };
        let g = get(w.addr, &format!("/api/messages/{id}"), &h);
        assert_eq!(
            g.status,
            200,
            "iteration {i}: write {id} not visible on {:?} ({:?})",
            g.header("x-db-node"),
            g.header("x-db-role")
        );
        assert_eq!(json(&g)["text"], format!("message {i}"));
        match g.header("x-db-role") {
            Some("replica") => {
                assert_eq!(g.header("x-db-node"), Some(replica.as_str()));
                on_replica += 1
            }
            Some("primary") => on_primary += 1,
            other => panic!("unexpected role {other:?}"),
        }
        if i % 100 == 0 {
            let l = get(w.addr, "/api/messages?limit=1", &h);
            assert_eq!(json(&l)[0]["id"], id, "the newest message comes first");
        }
    }
    eprintln!(
        "1000 token reads: {on_replica} on the replica, {on_primary} on the primary, {:?}",
        started.elapsed()
    );
    // Streaming on loopback keeps up, so the replica serves most token reads.
    assert!(
        on_replica > 500,
        "only {on_replica} of 1000 token reads on the replica"
    );
    // Reads without a token go to the replica.
    for _ in 0..20 {
        let r = get(w.addr, "/api/messages?limit=3", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-db-role"), Some("replica"));
    }
}

#[test]
fn a_paused_replica_gets_no_token_read_it_cannot_serve() {
    let pg = PgCluster::start(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start_guestbook("gb-pause", &pg, dir.path(), &["--read-wait-ms", "100"]);
    pg.wait_caught_up();
    pg.replicas[0].sql("SELECT pg_wal_replay_pause()");
    let paused_at = pg.replicas[0].sql("SELECT pg_last_wal_replay_lsn()");
    for i in 0..30 {
        let r = post(&w, "pause", &format!("while paused {i}"));
        assert_eq!(r.status, 201);
        let id = json(&r)["id"].as_i64().expect("id");
        let token = r.header("x-rampart-token").expect("token").to_string();
        let g = get(
            w.addr,
            &format!("/api/messages/{id}"),
            &[("X-Rampart-Token", &token)],
        );
        assert_eq!(g.status, 200, "write {id} not visible");
        assert_eq!(
            g.header("x-db-role"),
            Some("primary"),
            "the paused replica took a read it cannot serve"
        );
        let l = get(
            w.addr,
            "/api/messages?limit=1",
            &[("X-Rampart-Token", &token)],
        );
        assert_eq!(json(&l)[0]["id"], id);
        assert_eq!(l.header("x-db-role"), Some("primary"));
    }
    // The replica really was behind all along, and token-less reads still use it.
    assert_eq!(
        pg.replicas[0].sql("SELECT pg_last_wal_replay_lsn()"),
        paused_at
    );
    let r = get(w.addr, "/api/messages?limit=1", &[]);
    assert_eq!(r.header("x-db-role"), Some("replica"));
    pg.replicas[0].sql("SELECT pg_wal_replay_resume()");
    let r = post(&w, "pause", "after resume");
    let token = r.header("x-rampart-token").expect("token").to_string();
    let ok = wait_until(Duration::from_secs(10), || {
        get(
            w.addr,
            "/api/messages?limit=1",
            &[("X-Rampart-Token", &token)],
        )
        .header("x-db-role")
            == Some("replica")
    });
    assert!(ok, "the resumed replica never served token reads again");
}

#[test]
fn the_page_form_redirects_and_shows_the_new_message() {
    let pg = PgCluster::start(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start_guestbook("gb-page", &pg, dir.path(), &[]);
    // Two more nodes on the same database migrate concurrently and idempotently.
    let w2 = start_guestbook("gb-page2", &pg, dir.path(), &[]);
    assert_eq!(
        pg.primary.sql("SELECT count(*) FROM schema_migrations"),
        "2",
        "each migration applied once"
    );
    drop(w2);
    let r = request(
        w.addr,
        "POST",
        "/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"author=Ann&text=Hello+from+the+form%21",
    );
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    let cookies: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.split(';').next().unwrap_or(""))
        .collect();
    assert!(
        cookies.iter().any(|c| c.starts_with("rampart_token=")),
        "{cookies:?}"
    );
    let page = get(w.addr, "/", &[("Cookie", &cookies.join("; "))]);
    let html = page.text();
    assert!(html.contains("Hello from the form!"), "{html}");
    assert!(html.contains("Thanks, your message is below."));
    let r = request(
        w.addr,
        "POST",
        "/",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"author=&text=x",
    );
    assert_eq!(r.status, 422);
}

#[test]
fn readyz_needs_a_writable_primary_and_sigterm_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A database that does not exist: alive, not ready.
    let dead = format!("127.0.0.1:{}", rampart_testkit::free_port());
    let w = start_web(
        "gb-nodb",
        &[
            "--root",
            dir.path().to_str().expect("utf8"),
            "--db-node",
            &dead,
        ],
        dir.path(),
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(get(w.addr, "/readyz", &[]).status, 503);
    assert_eq!(get(w.addr, "/healthz", &[]).status, 200);
    assert_eq!(get(w.addr, "/api/messages", &[]).status, 503);
    drop(w);

    let pg = PgCluster::start(0);
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 239) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).expect("w");
    let mut w = start_guestbook("gb-drain", &pg, dir.path(), &["--drain-ms", "1500"]);
    let m = get(w.addr, "/metrics", &[]).text();
    assert!(m.contains("rampart_web_ready 1"), "{m}");
    // A slow download in flight when SIGTERM arrives still completes.
    let addr = w.addr;
    let (started_tx, started) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut started = Some(started_tx);
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read: {e}"),
            }
            if let Some(tx) = started.take() {
                let _ = tx.send(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        got
    });
    // The download is in flight (its first bytes arrived) when SIGTERM comes: waited
    // for, not a fixed pause.
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow download never started");
    w.proc.signal(Signal::SIGTERM);
    // Draining (polled until the signal is handled): alive, not ready, still serving.
    assert!(
        wait_until(Duration::from_secs(5), || {
            http_get(w.addr, "/readyz").is_ok_and(|r| r.status == 503)
        }),
        "/readyz still ready 5 s after SIGTERM:\n{}",
        w.proc.log_text()
    );
    assert_eq!(get(w.addr, "/api/messages", &[]).status, 200);
    let code = w
        .proc
        .wait_exit(Duration::from_secs(30))
        .expect("exit after drain");
    assert_eq!(code, Some(0), "{}", w.proc.log_text());
    let got = slow.join().expect("slow reader");
    let body_start = got.windows(4).position(|x| x == b"\r\n\r\n").expect("head") + 4;
    assert!(
        got[body_start..] == big[..],
        "in-flight download cut: {} of {} bytes",
        got.len() - body_start,
        big.len()
    );
    assert!(
        http_get(addr, "/healthz").is_err(),
        "still accepting after shutdown"
    );
}

/// `Idempotency-Key`: the same key sent again returns the message stored the first time
/// (201, same id) and stores nothing new; a malformed key is a 400.
#[test]
fn a_write_sent_again_under_its_key_is_stored_once() {
    let pg = PgCluster::start(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let w = start_guestbook("gb-key", &pg, dir.path(), &[]);
    let send = |key: &str, text: &str| {
        let body = serde_json::json!({ "author": "k", "text": text }).to_string();
        request(
            w.addr,
            "POST",
            "/api/messages",
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", key),
            ],
            body.as_bytes(),
        )
    };
    let a = send("order-42", "first");
    assert_eq!(a.status, 201, "{}", a.text());
    let b = send("order-42", "first");
    assert_eq!(b.status, 201, "{}", b.text());
    assert_eq!(json(&a)["id"], json(&b)["id"], "a second copy was stored");
    let c = send("order-43", "first");
    assert_ne!(
        json(&a)["id"],
        json(&c)["id"],
        "another key is another write"
    );
    let l = json(&get(w.addr, "/api/messages?limit=100", &[]));
    let n = l
        .as_array()
        .expect("list")
        .iter()
        .filter(|m| m["text"] == "first")
        .count();
    assert_eq!(n, 2);
    for bad in ["", "has space", &"x".repeat(201)] {
        let r = send(bad, "bad key");
        assert_eq!(r.status, 400, "key {bad:?}: {}", r.text());
    }
}
