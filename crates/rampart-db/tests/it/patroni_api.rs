//! Patroni's REST API: real HAProxy 2.6 with Patroni's documented configuration in front
//! of a real cluster, and the endpoints (health checks, switchover) on live agents.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use rampart_testkit::{find_program, free_port, http_request, wait_until, Proc};
use tokio_postgres::Client;

use crate::harness::{connect_to, Cluster, Opts};

fn haproxy_bin() -> std::path::PathBuf {
    find_program("haproxy", &["/usr/sbin"]).expect("haproxy not found: apt-get install haproxy")
}

/// HAProxy with Patroni's documented configuration (docs/haproxy.cfg in Patroni: mode tcp,
/// `option httpchk OPTIONS /primary`, `http-check expect status 200`, `default-server
/// inter 3s fall 3 rise 2 on-marked-down shutdown-sessions`, `check port <api>`), the
/// intervals shortened for a test; plus a read-only listener on `/replica?lag=10MB`.
struct Haproxy {
    primary: u16,
    replicas: u16,
    _proc: Proc,
}

impl Haproxy {
    fn start(c: &Cluster) -> Haproxy {
        let (primary, replicas) = (free_port(), free_port());
        let servers = |check: &str| -> String {
            c.nodes
                .iter()
                .map(|n| {
                    format!(
                        "    server postgresql_{}_{} {}:{} maxconn 100 check port {}{check}\n",
                        n.host,
                        n.pg_port,
                        n.host,
                        n.pg_port,
                        n.api.port()
                    )
                })
                .collect()
        };
        let cfg = format!(
            "global\n    maxconn 100\n\n\
             defaults\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n    timeout server 30m\n    timeout check 1s\n\n\
             listen primary\n    bind 127.0.0.1:{primary}\n    option httpchk OPTIONS /primary\n    http-check expect status 200\n    \
             default-server inter 200ms fall 3 rise 2 on-marked-down shutdown-sessions\n{}\n\
             listen replicas\n    bind 127.0.0.1:{replicas}\n    balance roundrobin\n    option httpchk OPTIONS /replica?lag=10MB\n    http-check expect status 200\n    \
             default-server inter 200ms fall 3 rise 2 on-marked-down shutdown-sessions\n{}",
            servers(""),
            servers(""),
        );
        let path = c.dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let check = Command::new(haproxy_bin())
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy rejects the configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new(haproxy_bin());
        cmd.arg("-db").arg("-f").arg(&path);
        let p = Proc::spawn("haproxy", cmd, &c.dir.path().join("haproxy.log"));
        Haproxy {
            primary,
            replicas,
            _proc: p,
        }
    }
}

/// Connect through HAProxy and ask who answered: (server port, in recovery).
async fn who(port: u16) -> Option<(Client, i32, bool)> {
    let client = connect_to("127.0.0.1", port).await?;
    let row = tokio::time::timeout(
        Duration::from_secs(2),
        client.query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[]),
    )
    .await
    .ok()?
    .ok()?;
    let (p, r) = (row.get::<_, i32>(0), row.get::<_, bool>(1));
    Some((client, p, r))
}

async fn wait_who(port: u16, timeout: Duration, ok: impl Fn(i32, bool) -> bool) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some((_, p, r)) = who(port).await {
            if ok(p, r) {
                return Some(p);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_patronis_config_finds_the_primary_and_follows_a_failover() {
    let mut c = Cluster::start(Opts::default());
    let p = c.wait_primary(Duration::from_secs(60));
    for i in (0..3).filter(|&i| i != p) {
        c.wait_replica(i, Duration::from_secs(60));
    }
    assert!(
        wait_until(Duration::from_secs(20), || c.sync_standby(p).is_some()),
        "{}",
        c.list()
    );
    let h = Haproxy::start(&c);
    let old = i32::from(c.nodes[p].pg_port);

    // HAProxy's checks find the primary: writes through it land there.
    let got = wait_who(h.primary, Duration::from_secs(20), |_, rec| !rec).await;
    assert_eq!(got, Some(old), "HAProxy did not route to the primary");
    // ... and only ever there: ten fresh connections, all to the primary.
    for _ in 0..10 {
        let (_, port, rec) = who(h.primary).await.expect("connect through haproxy");
        assert_eq!((port, rec), (old, false));
    }
    // The read-only listener reaches replicas only (both, round robin).
    let mut seen = std::collections::HashSet::new();
    let start = Instant::now();
    while seen.len() < 2 && start.elapsed() < Duration::from_secs(20) {
        if let Some((_, port, rec)) = who(h.replicas).await {
            assert!(
                rec,
                "the replicas listener reached the primary (port {port})"
            );
            seen.insert(port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.len(),
        2,
        "the replicas listener did not reach both replicas: {seen:?}"
    );

    let (pc, _, _) = who(h.primary).await.expect("connect through haproxy");
    pc.batch_execute("CREATE TABLE acked (id bigint primary key)")
        .await
        .expect("create table through haproxy");
    let mut acked = Vec::new();
    for id in 1..=50i64 {
        pc.execute("INSERT INTO acked VALUES ($1)", &[&id])
            .await
            .expect("write through haproxy");
        acked.push(id);
    }
    drop(pc);

    // Kill the primary: HAProxy marks it down and sends new connections to the new one.
    let killed = Instant::now();
    c.kill_node(p);
    let mut id = 1000i64;
    let mut new_port = None;
    while killed.elapsed() < Duration::from_secs(60) {
        if let Some((client, port, false)) = who(h.primary).await {
            if client
                .execute("INSERT INTO acked VALUES ($1)", &[&id])
                .await
                .is_ok()
            {
                acked.push(id);
                new_port = Some(port);
                break;
            }
            id += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_port = new_port.unwrap_or_else(|| {
        panic!(
            "no write through HAProxy within 60 s of the kill:\n{}",
            c.list()
        )
    });
    assert_ne!(new_port, old, "HAProxy still routes to the killed primary");
    eprintln!(
        "haproxy: first write through HAProxy on the new primary (port {new_port}) {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let np = c.wait_primary(Duration::from_secs(10));
    assert_eq!(i32::from(c.nodes[np].pg_port), new_port);
    // Synchronous mode: every write acknowledged through HAProxy is on the new primary.
    let check = connect_to("127.0.0.1", c.nodes[np].pg_port)
        .await
        .expect("connect to the new primary");
    let rows = check
        .query("SELECT id FROM acked", &[])
        .await
        .expect("read");
    let have: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<i64> = acked
        .iter()
        .copied()
        .filter(|i| !have.contains(i))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    // The remaining replica still serves reads through the replicas listener.
    let r = wait_who(h.replicas, Duration::from_secs(30), |port, rec| {
        rec && port != old
    })
    .await;
    assert!(
        r.is_some(),
        "no replica reachable through HAProxy after the failover"
    );
}

fn req(
    api: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let r = http_request(api, method, path, headers, body.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_endpoints_and_switchover_on_live_agents() {
    let tokens = tempfile::tempdir().expect("temp dir");
    let token_file = tokens.path().join("api.token");
    std::fs::write(&token_file, "s3cret\n").expect("write token");
    let c = Cluster::start(Opts {
        first_alone: true,
        extra_db: format!("api_token_file = \"{}\"", token_file.display()),
        node_extra: vec![(2, "tags = { dc = \"west\", noloadbalance = true }".into())],
        ..Opts::default()
    });
    let p = c.wait_primary(Duration::from_secs(60));
    assert_eq!(p, 0);
    for i in 1..3 {
        c.wait_replica(i, Duration::from_secs(60));
    }
    assert!(
        wait_until(Duration::from_secs(20), || c.sync_standby(p).is_some()),
        "{}",
        c.list()
    );
    let sync = c.sync_standby(p).expect("sync standby");
    let s = c
        .nodes
        .iter()
        .position(|n| n.name == sync)
        .expect("sync node");
    let a = 3 - s; // the other replica (1 or 2)
    let api = |i: usize| c.nodes[i].api;

    // Health checks, for GET, HEAD and OPTIONS alike.
    // db3 (index 2) carries noloadbalance: no replica check passes there.
    let lb = |i: usize| if i == 2 { 503 } else { 200 };
    let expect: Vec<(usize, &str, u16)> = vec![
        (p, "/primary", 200),
        (p, "/", 200),
        (p, "/master", 200),
        (p, "/read-write", 200),
        (p, "/leader", 200),
        (p, "/standby-leader", 503),
        (p, "/replica", 503),
        (p, "/read-only", 200),
        (p, "/sync", 503),
        (p, "/health", 200),
        (s, "/primary", 503),
        (s, "/leader", 503),
        (s, "/sync", lb(s)),
        (s, "/async", 503),
        (s, "/replica?lag=10MB", lb(s)),
        (s, "/read-only", lb(s)),
        (a, "/async", lb(a)),
        (a, "/sync", 503),
        (2, "/replica", 503), // noloadbalance
        (2, "/health", 200),
        (1, "/replica?tag_dc=west", 503),
    ];
    for (i, path, want) in &expect {
        for m in ["GET", "HEAD", "OPTIONS"] {
            let (got, body) = req(api(*i), m, path, &[], "");
            assert_eq!(got, *want, "{m} {path} on {}: {body}", c.nodes[*i].name);
            if m == "OPTIONS" || m == "HEAD" {
                assert!(body.is_empty(), "{m} {path} has a body: {body}");
            }
        }
    }
    // GET carries Patroni's status document.
    let (_, body) = req(api(p), "GET", "/primary", &[], "");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(doc["role"], "primary", "{doc}");
    assert_eq!(doc["state"], "running", "{doc}");
    assert_eq!(doc["patroni"]["scope"], "it", "{doc}");
    assert!(doc["xlog"]["location"].as_u64().is_some(), "{doc}");
    let (_, body) = req(api(s), "GET", "/replica", &[], "");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(doc["sync_standby"], true, "{doc}");
    assert_eq!(doc["replication_state"], "streaming", "{doc}");
    assert_eq!(req(api(s), "GET", "/replica?lag=lots", &[], "").0, 400);
    for i in 0..3 {
        assert_eq!(req(api(i), "GET", "/liveness", &[], "").0, 200);
        assert_eq!(req(api(i), "GET", "/readiness", &[], "").0, 200);
    }
    // /cluster: rampart's document with Patroni's scope and each member's tags (every
    // member shows once its record is in etcd).
    let mut doc = serde_json::Value::Null;
    let complete = wait_until(Duration::from_secs(10), || {
        let (st, body) = req(api(s), "GET", "/cluster", &[], "");
        doc = serde_json::from_str(&body).unwrap_or_default();
        st == 200
            && doc["members"]
                .as_array()
                .is_some_and(|m| m.iter().filter(|m| m["role"] != "unknown").count() == 3)
    });
    assert!(complete, "{doc}");
    assert_eq!(doc["scope"], "it", "{doc}");
    let m3 = doc["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "db3"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(m3["tags"]["dc"], "west", "{doc}");
    assert_eq!(m3["tags"]["noloadbalance"], true, "{doc}");

    // Writes need the token: none, a wrong one, then patronictl's basic auth.
    let body = format!(
        "{{\"leader\": \"{}\", \"candidate\": \"{}\"}}",
        c.nodes[p].name, sync
    );
    assert_eq!(req(api(a), "POST", "/switchover", &[], &body).0, 401);
    assert_eq!(
        req(
            api(a),
            "POST",
            "/switchover",
            &[("Authorization", "Bearer nope")],
            &body
        )
        .0,
        401
    );
    let auth = [("Authorization", "Basic cGF0cm9uaTpzM2NyZXQ=")]; // patroni:s3cret
                                                                  // Patroni's refusals, before anything is written.
    let wrong_leader = format!(
        "{{\"leader\": \"{sync}\", \"candidate\": \"{}\"}}",
        c.nodes[a].name
    );
    let (st, text) = req(api(a), "POST", "/switchover", &auth, &wrong_leader);
    assert_eq!((st, text.as_str()), (412, "leader name does not match"));
    let not_sync = format!(
        "{{\"leader\": \"{}\", \"candidate\": \"{}\"}}",
        c.nodes[p].name, c.nodes[a].name
    );
    let (st, text) = req(api(a), "POST", "/switchover", &auth, &not_sync);
    assert_eq!(
        (st, text.as_str()),
        (412, "candidate name does not match with sync_standby")
    );
    let (st, _) = req(api(a), "POST", "/failover", &auth, "{}");
    assert_eq!(st, 400);
    assert_eq!(
        c.primary(),
        Some(p),
        "a refused request changed the primary"
    );

    // The switchover itself, through a replica's API, with Patroni's JSON.
    let (st, text) = req(
        api(a),
        "POST",
        "/switchover",
        &[("Authorization", "Bearer s3cret")],
        &body,
    );
    assert_eq!(
        (st, text.as_str()),
        (
            200,
            format!("Successfully switched over to \"{sync}\"").as_str()
        ),
        "{}",
        c.list()
    );
    let np = c.wait_primary(Duration::from_secs(30));
    assert_eq!(np, s);
    assert_eq!(req(api(np), "OPTIONS", "/primary", &[], "").0, 200);
    // /history shows the timeline switch.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, b) = req(api(np), "GET", "/history", &[], "");
            serde_json::from_str::<serde_json::Value>(&b)
                .ok()
                .and_then(|v| v.as_array().map(|a| !a.is_empty()))
                .unwrap_or(false)
        }),
        "/history stays empty after a switchover"
    );
    // The old primary follows the new one.
    c.wait_replica(p, Duration::from_secs(60));
    assert_eq!(req(api(p), "OPTIONS", "/replica", &[], "").0, 200);
    drop(tokens);
}
