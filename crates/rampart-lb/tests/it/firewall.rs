//! The L7 firewall of a listener against a running balancer: per-client rate limits
//! (429 with Retry-After, other clients unaffected), per-client connection caps, method
//! and body-size limits, deny lists from the file and the admin API, changed at run time
//! and by reload, and the refusals counted by reason.

use std::net::SocketAddr;
use std::time::Duration;

use rampart_testkit::{free_port, http_request};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{read_until, servers, Backend, Lb};

/// A balancer with an admin listener whose listener "web" has `firewall`; `deny_file`,
/// when given, is written beside the config as `deny.txt`.
async fn start(backend: &Backend, firewall: &str) -> (Lb, SocketAddr) {
    start_with(backend, "", firewall).await
}

/// [`start`] with `top` (tables such as `[forwarded]`) before the listener.
async fn start_with(backend: &Backend, top: &str, firewall: &str) -> (Lb, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[admin]\naddress = \"{admin}\"\n\n{top}\n[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"app\"\nfirewall = {firewall}\n\n[[pool]]\nname = \"app\"\n{}\n",
        servers(&[(backend, 1)])
    );
    let lb = Lb::start(&config).await;
    assert!(
        tokio::task::spawn_blocking(move || rampart_testkit::wait_port(
            admin,
            Duration::from_secs(5)
        ))
        .await
        .unwrap(),
        "no admin listener:\n{}",
        lb.proc.log_text()
    );
    (lb, admin)
}

/// A connection to `addr` from `local` (127.0.0.x: another client to the balancer).
async fn connect_from(addr: SocketAddr, local: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    sock.connect(addr).await.unwrap()
}

/// Send `req` on a new connection from `local`; the whole answer (up to the close or a
/// complete body), or "" when the balancer closed without one.
async fn exchange(addr: SocketAddr, local: &str, req: &[u8]) -> String {
    let mut s = connect_from(addr, local).await;
    if s.write_all(req).await.is_err() {
        return String::new();
    }
    read_until(&mut s, |t| {
        let Some(end) = t.find("\r\n\r\n") else {
            return false;
        };
        let len = t[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        t.len() >= end + 4 + len
    })
    .await
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n";

async fn api(
    admin: SocketAddr,
    method: &'static str,
    path: &'static str,
    body: String,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || {
        let r = http_request(
            admin,
            method,
            path,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        (
            r.status,
            serde_json::from_str(&r.text()).unwrap_or(Value::Null),
        )
    })
    .await
    .unwrap()
}

/// The firewall's refusal counters of listener "web".
async fn refused(admin: SocketAddr) -> Value {
    let (_, v) = api(admin, "GET", "/api/firewall", String::new()).await;
    v["listeners"]
        .as_array()
        .and_then(|l| l.iter().find(|f| f["listener"] == "web"))
        .map(|f| f["refused"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_429_while_another_is_served() {
    let b = Backend::start("b").await;
    let (lb, admin) = start(&b, "{ rate = \"5/s\", burst = 5 }").await;
    // The abuser: 40 requests at once from 127.0.0.2.
    let mut abuser = Vec::new();
    for _ in 0..40 {
        abuser.push(tokio::spawn(exchange(lb.addr, "127.0.0.2", GET)));
    }
    let mut codes = Vec::new();
    for h in abuser {
        codes.push(h.await.unwrap());
    }
    let ok = codes.iter().filter(|a| status(a) == 200).count();
    let limited: Vec<&String> = codes.iter().filter(|a| status(a) == 429).collect();
    assert!(
        (5..=8).contains(&ok),
        "{ok} of 40 passed a 5/s limit with a burst of 5"
    );
    assert_eq!(ok + limited.len(), 40, "{codes:?}");
    assert!(
        limited[0].to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        limited[0]
    );
    // Another client at a normal rate (4/s) meanwhile: never refused.
    for _ in 0..8 {
        let a = exchange(lb.addr, "127.0.0.3", GET).await;
        assert_eq!(status(&a), 200, "the well-behaved client was refused: {a}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let r = refused(admin).await;
    assert_eq!(r["rate"].as_u64(), Some(limited.len() as u64), "{r}");
    let m = tokio::task::spawn_blocking(move || {
        http_request(admin, "GET", "/metrics", &[], b"")
            .unwrap()
            .text()
    })
    .await
    .unwrap();
    assert!(
        m.contains(&format!(
            "rampart_firewall_refused_total{{listener=\"web\",reason=\"rate\"}} {}",
            limited.len()
        )),
        "{m}"
    );
    drop(lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_are_capped_and_freed_on_close() {
    let b = Backend::start("b").await;
    let (lb, admin) = start(&b, "{ max_connections_per_client = 3 }").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(lb.addr, "127.0.0.4").await);
    }
    // Accepted by the balancer (a finished handshake is not yet an accepted connection).
    let mut open = 0;
    for _ in 0..250 {
        let (_, st) = api(admin, "GET", "/api/state", String::new()).await;
        open = st["listeners"][0]["connections"].as_u64().unwrap_or(0);
        if open == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 3, "{}", lb.proc.log_text());
    // The fourth is closed at once, with nothing said.
    let a = exchange(lb.addr, "127.0.0.4", GET).await;
    assert_eq!(a, "", "a fourth connection was served: {a}");
    // Another client is not affected.
    assert_eq!(status(&exchange(lb.addr, "127.0.0.5", GET).await), 200);
    // One closes: a new one is admitted.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        if status(&exchange(lb.addr, "127.0.0.4", GET).await) == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "the cap was not freed by a close:\n{}",
        lb.proc.log_text()
    );
    assert!(refused(admin).await["connections"].as_u64().unwrap_or(0) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_body_sizes_are_limited_on_every_path() {
    let b = Backend::start("b").await;
    let (lb, admin) = start(&b, "{ methods = [\"GET\", \"POST\"], max_body = \"1kB\" }").await;
    let a = exchange(
        lb.addr,
        "127.0.0.6",
        b"DELETE / HTTP/1.1\r\nHost: lb.test\r\n\r\n",
    )
    .await;
    assert_eq!(status(&a), 405, "{a}");
    assert!(a.to_ascii_lowercase().contains("allow: get, post"), "{a}");
    // HTTP/1.0: the same policy.
    let a = exchange(lb.addr, "127.0.0.6", b"DELETE / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&a), 405, "HTTP/1.0: {a}");
    // A declared body past the limit: 413 before a byte of it is read.
    let a = exchange(
        lb.addr,
        "127.0.0.6",
        b"POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(status(&a), 413, "{a}");
    let a = exchange(
        lb.addr,
        "127.0.0.6",
        b"POST / HTTP/1.0\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(status(&a), 413, "HTTP/1.0: {a}");
    // A chunked body that grows past it while streaming: cut with a 413.
    let mut big =
        b"POST / HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        big.extend_from_slice(b"200\r\n");
        big.extend_from_slice(&[b'x'; 512]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    let a = exchange(lb.addr, "127.0.0.6", &big).await;
    assert_eq!(status(&a), 413, "chunked: {a}");
    // Within the limits: served.
    let a = exchange(
        lb.addr,
        "127.0.0.6",
        b"POST / HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(status(&a), 200, "{a}");
    let r = refused(admin).await;
    assert_eq!(r["method"].as_u64(), Some(2), "{r}");
    assert_eq!(r["body"].as_u64(), Some(3), "{r}");
    drop(lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_are_denied_from_the_file_and_at_run_time_and_a_reload_changes_them() {
    let b = Backend::start("b").await;
    let dir = rampart_testkit::TempDir::new().unwrap();
    let deny = dir.path().join("deny.txt");
    // Ten thousand networks, one of them the client's.
    let mut text = String::from("# generated\n");
    for i in 0..10_000u32 {
        text.push_str(&format!("10.{}.{}.0/24\n", (i >> 8) & 0xff, i & 0xff));
    }
    text.push_str("127.0.0.7/32\n");
    std::fs::write(&deny, &text).unwrap();
    let (lb, admin) = start(&b, &format!("{{ deny_file = \"{}\" }}", deny.display())).await;
    assert_eq!(
        exchange(lb.addr, "127.0.0.7", GET).await,
        "",
        "a denied client was served"
    );
    assert_eq!(status(&exchange(lb.addr, "127.0.0.8", GET).await), 200);
    // Blocked at run time through the admin API, then lifted.
    let (s, v) = api(
        admin,
        "POST",
        "/api/firewall/blocks",
        r#"{"network": "127.0.0.8/32"}"#.into(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        exchange(lb.addr, "127.0.0.8", GET).await,
        "",
        "a blocked client was served"
    );
    let (_, st) = api(admin, "GET", "/api/firewall", String::new()).await;
    assert_eq!(st["blocks"][0], "127.0.0.8/32", "{st}");
    let (s, _) = api(
        admin,
        "DELETE",
        "/api/firewall/blocks",
        r#"{"network": "127.0.0.8/32"}"#.into(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(status(&exchange(lb.addr, "127.0.0.8", GET).await), 200);
    let (s, v) = api(
        admin,
        "POST",
        "/api/firewall/blocks",
        r#"{"network": "not-an-ip"}"#.into(),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // The file changes and the balancer reloads: 127.0.0.7 served, 127.0.0.9 denied.
    std::fs::write(&deny, text.replace("127.0.0.7/32", "127.0.0.9/32")).unwrap();
    let (s, v) = api(admin, "POST", "/api/reload", String::new()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(status(&exchange(lb.addr, "127.0.0.7", GET).await), 200);
    assert_eq!(exchange(lb.addr, "127.0.0.9", GET).await, "");
    // A bad line: the reload is refused, naming file:line, and the old list stays.
    std::fs::write(&deny, format!("{text}300.1.2.3/8\n")).unwrap();
    let (s, v) = api(admin, "POST", "/api/reload", String::new()).await;
    assert_ne!(s, 200, "{v}");
    assert!(v.to_string().contains("deny.txt:10003"), "{v}");
    assert_eq!(
        exchange(lb.addr, "127.0.0.9", GET).await,
        "",
        "the old list is kept"
    );
    let r = refused(admin).await;
    assert!(r["denied"].as_u64().unwrap_or(0) >= 3, "{r}");
    assert!(r["blocked"].as_u64().unwrap_or(0) >= 1, "{r}");
}

/// A slow POST from `local`: a head announcing 1 MB, then 10 bytes every 300 ms, until
/// the balancer answers or closes, or `give_up` passes. (status, how long it was held).
async fn slow_post(addr: SocketAddr, local: String, give_up: Duration) -> (u16, Duration) {
    use tokio::io::AsyncReadExt;
    let t0 = std::time::Instant::now();
    let mut s = connect_from(addr, &local).await;
    let head = b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 1000000\r\n\r\n";
    if s.write_all(head).await.is_err() {
        return (0, t0.elapsed());
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while t0.elapsed() < give_up {
        if s.write_all(&[b'x'; 10]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    (status(&String::from_utf8_lossy(&got)), t0.elapsed())
}

/// `n` GETs one after another from `local`, each on a new connection: their latencies.
async fn latencies(addr: SocketAddr, local: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let a = exchange(addr, local, GET).await;
        assert_eq!(status(&a), 200, "a normal client's request failed: {a}");
        out.push(t.elapsed());
    }
    out.sort();
    out
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_post_attack_is_cut_while_a_normal_client_keeps_its_latency() {
    let b = Backend::start("b").await;
    // The control: without a minimum rate, a slow POST holds its connections (to the
    // balancer and to the server) as long as it trickles.
    let (plain, _) = start(&b, "{ }").await;
    let (code, held) = slow_post(plain.addr, "127.0.0.11".into(), Duration::from_secs(3)).await;
    assert!(
        code == 0 && held >= Duration::from_secs(3),
        "without min_upload_rate the slow POST ended after {held:?} with {code}"
    );
    drop(plain);

    let (lb, admin) = start(&b, "{ min_upload_rate = \"2kB/s\" }").await;
    // The latency bound may be missed once by a stall of the host (the tests of this binary
    // run two at a time on two cores: one 30 ms stall is the p99 of 100 requests), so a miss
    // is tried once more with a new attack; every other check holds on every try.
    let mut tries = 0;
    loop {
        tries += 1;
        let (pb, pd) = slow_post_attack(&lb, admin, tries).await;
        // The goal is 2x; on a loaded test machine a few ms of scheduling noise is allowed.
        let ok = pd <= (pb * 2).max(pb + Duration::from_millis(25));
        if ok || tries == 2 {
            assert!(
                ok,
                "the normal client's p99 went from {pb:?} to {pd:?}, twice"
            );
            break;
        }
    }
    assert_eq!(
        refused(admin).await["slow-upload"].as_u64(),
        Some(200 * tries)
    );
}

/// 200 slow POSTs at once, each from its own address (`round` picks a fresh set), while a
/// normal client's latency is measured: (its p99 before, during). Asserts that every
/// attacker was cut in time.
async fn slow_post_attack(lb: &Lb, admin: SocketAddr, round: u64) -> (Duration, Duration) {
    let base = latencies(lb.addr, "127.0.0.10", 100).await;
    // 200 attackers, each from its own address (so no per-client cap helps).
    let mut attack = Vec::new();
    for i in 0..200u32 {
        let local = format!("127.{round}.{}.{}", 1 + i / 250, 1 + i % 250);
        attack.push(tokio::spawn(slow_post(
            lb.addr,
            local,
            Duration::from_secs(8),
        )));
    }
    // Measured while all 200 hold their connections (before the rate cuts them).
    let mut open = 0;
    // Up to ~4 s: on a loaded host 200 connects take a while.
    for _ in 0..400 {
        let (_, st) = api(admin, "GET", "/api/state", String::new()).await;
        open = st["listeners"][0]["connections"].as_u64().unwrap_or(0);
        if open >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(open >= 200, "only {open} attackers connected");
    let during = latencies(lb.addr, "127.0.0.10", 100).await;
    let mut cut = 0;
    let mut longest = Duration::ZERO;
    for h in attack {
        let (code, held) = h.await.unwrap();
        if code == 408 {
            cut += 1;
        }
        longest = longest.max(held);
    }
    let (pb, pd) = (p99(&base), p99(&during));
    eprintln!(
        "slow POST x200: {cut} cut with 408, longest held {longest:?}; normal client p99 {pb:?} before, {pd:?} during"
    );
    assert_eq!(
        cut, 200,
        "not every slow POST was cut (longest held {longest:?})"
    );
    // 2 adverts of the rate: 1 s of grace, then the first 10 bytes owe 2 kB.
    assert!(
        longest < Duration::from_secs(4),
        "a slow POST was held {longest:?}"
    );
    (pb, pd)
}

/// Behind a trusted proxy (`client_address = "x-forwarded-for"`): the rate limit and the
/// deny list judge the client the proxy names, on HTTP/1 and HTTP/2 alike; the proxy's own
/// connections are not capped; a peer that is not a trusted proxy is judged by its own
/// address whatever `X-Forwarded-For` it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_client_it_names_is_judged() {
    let b = Backend::start("b").await;
    let (lb, admin) = start_with(
        &b,
        "[forwarded]\ntrusted_proxies = [\"127.0.0.9/32\"]\n",
        "{ rate = \"1/m\", burst = 2, deny = [\"198.51.100.0/24\"], max_connections_per_client = 2, client_address = \"x-forwarded-for\" }",
    )
    .await;
    let from = |client: &str| {
        format!("GET / HTTP/1.1\r\nHost: lb.test\r\nX-Forwarded-For: 6.6.6.6, {client}\r\nConnection: close\r\n\r\n")
    };
    // Two clients through one proxy: each has its own bucket of 2.
    let mut codes = Vec::new();
    for client in ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2"] {
        codes.push(status(
            &exchange(lb.addr, "127.0.0.9", from(client).as_bytes()).await,
        ));
    }
    assert_eq!(codes, [200, 200, 429, 200]);
    // A denied client behind the proxy: 403.
    let a = exchange(lb.addr, "127.0.0.9", from("198.51.100.5").as_bytes()).await;
    assert_eq!(status(&a), 403, "{a}");
    // The proxy holds many connections at once (the per-client cap is for clients).
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(lb.addr, "127.0.0.9").await);
    }
    for (i, s) in held.iter_mut().enumerate() {
        s.write_all(from(&format!("203.0.113.{}", 10 + i)).as_bytes())
            .await
            .unwrap();
        let a = read_until(s, |t| t.ends_with('b')).await;
        assert_eq!(status(&a), 200, "held connection {i}: {a}");
    }
    drop(held);
    // HTTP/2 from the proxy: the same judgement.
    let tcp = connect_from(lb.addr, "127.0.0.9").await;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut h2 = Vec::new();
    for client in ["198.51.100.6", "203.0.113.1", "203.0.113.4"] {
        let req = hyper::Request::get(format!("http://{}/", lb.addr))
            .header("x-forwarded-for", client)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        h2.push(sender.send_request(req).await.unwrap().status().as_u16());
    }
    assert_eq!(h2, [403, 429, 200]);
    // Not a trusted proxy: its own address counts, whatever it forwards.
    let mut codes = Vec::new();
    for client in ["203.0.113.5", "203.0.113.6", "203.0.113.7"] {
        codes.push(status(
            &exchange(lb.addr, "127.0.0.10", from(client).as_bytes()).await,
        ));
    }
    assert_eq!(codes, [200, 200, 429]);
    let a = exchange(lb.addr, "127.0.0.10", from("198.51.100.5").as_bytes()).await;
    assert_eq!(
        status(&a),
        429,
        "judged as 127.0.0.10 (over its rate), not as the denied client: {a}"
    );
    let r = refused(admin).await;
    assert_eq!(r["denied"].as_u64(), Some(2), "{r}");
    assert_eq!(r["rate"].as_u64(), Some(4), "{r}");
    drop(lb);
}
