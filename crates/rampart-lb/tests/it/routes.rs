//! Routes: requests sent to pools by Host and path (`[[listener.route]]`), over HTTP/1.1
//! and HTTP/2, changed by a reload, refused with their position when wrong.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::support::{wait_for, Backend, Client, Lb};

/// Three pools of one backend each; `routes`: the `[[listener.route]]` tables.
fn routed(web: &Backend, api: &Backend, stat: &Backend, routes: &str) -> String {
    format!(
        r#"
[access_log]
format = "json"
path = "access.log"

[[listener]]
name = "site"
address = "{{LISTEN}}"
pool = "web"
{routes}

[[pool]]
name = "web"
servers = [{{ name = "{}", address = "{}" }}]
[[pool]]
name = "api"
servers = [{{ name = "{}", address = "{}" }}]
[[pool]]
name = "static"
servers = [{{ name = "{}", address = "{}" }}]
"#,
        web.name, web.addr, api.name, api.addr, stat.name, stat.addr
    )
}

const ROUTES: &str = r#"
[[listener.route]]
hosts = ["api.example.com", "api.example.org"]
pool = "api"
[[listener.route]]
path_prefix = "/static/"
pool = "static"
[[listener.route]]
path_prefix = "/svc"
strip_prefix = true
pool = "api"
"#;

/// Who answered `host` + `path` over HTTP/1.1 (on the kept-alive `cl`) and over HTTP/2.
async fn answer(cl: &mut Client, h2: &mut H2, host: &str, path: &str) -> (String, String) {
    answer_to(cl, h2, "GET", host, path).await
}

/// [`answer`] to a request with `method` (and no body).
async fn answer_to(
    cl: &mut Client,
    h2: &mut H2,
    method: &str,
    host: &str,
    path: &str,
) -> (String, String) {
    answer_with(cl, h2, method, host, path, &[]).await
}

/// [`answer_to`], the request carrying these header fields.
async fn answer_with(
    cl: &mut Client,
    h2: &mut H2,
    method: &str,
    host: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (String, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (n, v) in fields {
        req = req.header(*n, *v);
    }
    let (st, h1) = cl
        .request(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(st, 200, "{method} {host}{path}: {h1}");
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"));
    for (n, v) in fields {
        req = req.header(*n, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "{method} {host}{path} over HTTP/2");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (h1, String::from_utf8(body.to_vec()).unwrap())
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

async fn h2c(addr: SocketAddr) -> H2 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_each_request_to_its_pool_and_a_reload_changes_them() {
    let web = Backend::start("web1").await;
    let api = Backend::start("api1").await;
    let stat = Backend::start("static1").await;
    let lb = Lb::start(&routed(&web, &api, &stat, ROUTES)).await;
    // One connection of each protocol: a route is chosen per request, not per connection.
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut h2 = h2c(lb.addr).await;
    for (host, path, want) in [
        ("api.example.com", "/v1/users", "api1"),
        ("API.Example.com:8080", "/static/x.css", "api1"),
        ("www.example.com", "/static/x.css?v=2", "static1"),
        ("www.example.com", "/", "web1"),
        ("www.example.com", "/staticx", "web1"),
        ("api.example.com.", "/", "api1"),
        ("api.example.org", "/", "api1"),
    ] {
        let (h1, h2) = answer(&mut cl, &mut h2, host, path).await;
        assert_eq!((h1.as_str(), h2.as_str()), (want, want), "{host}{path}");
    }
    // /svc strips its prefix: the api server gets /headers (and dumps them), over both
    // protocols; the client's query stays.
    let (b1, b2) = answer(&mut cl, &mut h2, "www.example.com", "/svc/headers?x=1").await;
    for body in [&b1, &b2] {
        assert!(body.contains("host: www.example.com\n"), "{body}");
        assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    }
    let (b1, b2) = answer(&mut cl, &mut h2, "www.example.com", "/svc").await;
    assert_eq!((b1.as_str(), b2.as_str()), ("api1", "api1"));
    // The access log names the pool each request went to.
    let log = lb.config_path().with_file_name("access.log");
    let lines = || std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
    assert!(wait_for(|| lines() >= 14, Duration::from_secs(3)).await);
    let text = std::fs::read_to_string(&log).unwrap();
    let pools: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["pool"].to_string(), v["server"].to_string()))
        .collect();
    for (pool, server) in &pools {
        let want = match server.as_str() {
            "\"api1\"" => "\"api\"",
            "\"static1\"" => "\"static\"",
            _ => "\"web\"",
        };
        assert_eq!(pool, want, "{text}");
    }
    assert!(pools.iter().any(|(p, _)| p == "\"static\""), "{text}");

    // Reloaded: /static/ now served by the api pool, first; the host route after it.
    let swapped = r#"
[[listener.route]]
path_prefix = "/static/"
pool = "api"
[[listener.route]]
host = "*.example.com"
pool = "static"
"#;
    lb.reload_with(&routed(&web, &api, &stat, swapped))
        .await
        .unwrap();
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut h2 = h2c(lb.addr).await;
    for (host, path, want) in [
        ("www.example.com", "/static/x.css", "api1"),
        ("www.example.com", "/", "static1"),
        ("a.b.example.com", "/", "static1"),
        ("example.com", "/", "web1"),
    ] {
        let (h1, h2) = answer(&mut cl, &mut h2, host, path).await;
        assert_eq!((h1.as_str(), h2.as_str()), (want, want), "{host}{path}");
    }

    // A route to a pool that does not exist: refused with its position, routes kept.
    let bad = swapped.replace("pool = \"static\"", "pool = \"statik\"");
    let log = lb
        .reload_with(&routed(&web, &api, &stat, &bad))
        .await
        .unwrap_err();
    let path = lb.config_path();
    let at = format!(
        "{}:16:8: unknown pool \"statik\"; defined pools: api, static, web",
        path.display()
    );
    assert!(log.contains(&at), "{log}");
    let (h1, h2) = answer(&mut cl, &mut h2, "www.example.com", "/").await;
    assert_eq!((h1.as_str(), h2.as_str()), ("static1", "static1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_paths_and_methods_route_over_both_protocols() {
    let web = Backend::start("web1").await;
    let api = Backend::start("api1").await;
    let stat = Backend::start("static1").await;
    // HAProxy's `use_backend api if { path /login } METH_POST`, `use_backend static if
    // METH_GET { path_beg /assets/ }`, and every other write to the api pool.
    let routes = r#"
[[listener.route]]
path = "/login"
methods = ["POST"]
pool = "api"
[[listener.route]]
path_prefix = "/assets/"
methods = ["GET"]
pool = "static"
[[listener.route]]
methods = ["PUT", "DELETE"]
pool = "api"
"#;
    let lb = Lb::start(&routed(&web, &api, &stat, routes)).await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut h2 = h2c(lb.addr).await;
    for (method, path, want) in [
        ("POST", "/login", "api1"),
        ("POST", "/login?next=/a", "api1"),
        ("GET", "/login", "web1"),
        ("POST", "/login/x", "web1"),
        ("GET", "/assets/a.css", "static1"),
        ("POST", "/assets/a.css", "web1"),
        ("PUT", "/anything", "api1"),
        ("DELETE", "/assets/a.css", "api1"),
        ("OPTIONS", "/", "web1"),
    ] {
        let (h1, h2) = answer_to(&mut cl, &mut h2, method, "www.example.com", path).await;
        assert_eq!((h1.as_str(), h2.as_str()), (want, want), "{method} {path}");
    }
    // HEAD takes the GET route (its answer has no body to name the server: the access
    // log names the pool).
    let req = Request::head("/assets/a.css")
        .header("host", "www.example.com")
        .body(Full::default())
        .unwrap();
    let (st, _) = cl.request(req).await.unwrap();
    assert_eq!(st, 200);
    let log = lb.config_path().with_file_name("access.log");
    assert!(
        wait_for(
            || std::fs::read_to_string(&log).is_ok_and(|t| t
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|v| v["method"] == "HEAD" && v["pool"] == "static")),
            Duration::from_secs(3)
        )
        .await,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_field_routes_canary_requests_over_both_protocols() {
    let web = Backend::start("web1").await;
    let api = Backend::start("api1").await;
    let stat = Backend::start("static1").await;
    // HAProxy's `use_backend canary if { hdr(x-canary) -m str 1 }`; a field that only
    // needs to be there, under a prefix.
    let routes = r#"
[[listener.route]]
header = { name = "X-Canary", value = "1" }
pool = "api"
[[listener.route]]
path_prefix = "/app/"
header = { name = "X-Beta" }
pool = "static"
"#;
    let lb = Lb::start(&routed(&web, &api, &stat, routes)).await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut h2 = h2c(lb.addr).await;
    for (fields, path, want) in [
        (&[("x-canary", "1")][..], "/", "api1"),
        (&[("X-Canary", "0")][..], "/", "web1"),
        (&[("x-canary", "0"), ("x-canary", "1")][..], "/a", "api1"),
        (&[][..], "/", "web1"),
        (&[("x-beta", "yes")][..], "/app/x", "static1"),
        (&[("x-beta", "yes")][..], "/other", "web1"),
        (&[][..], "/app/x", "web1"),
    ] {
        let (h1, h2) = answer_with(&mut cl, &mut h2, "GET", "www.example.com", path, fields).await;
        assert_eq!(
            (h1.as_str(), h2.as_str()),
            (want, want),
            "{fields:?} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_can_never_match_refuses_the_start() {
    let web = Backend::start("web1").await;
    let shadowed = r#"
[[listener.route]]
path_prefix = "/api"
pool = "api"
[[listener.route]]
host = "api.example.com"
path_prefix = "/api/v2/"
pool = "static"
"#;
    let dir = rampart_testkit::TempDir::new().unwrap();
    let path = dir.path().join("lb.toml");
    std::fs::write(
        &path,
        routed(&web, &web, &web, shadowed).replace("{LISTEN}", "127.0.0.1:1"),
    )
    .unwrap();
    let out = std::process::Command::new(rampart_testkit::rampart_bin())
        .args(["lb", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let at = format!(
        "{}:14:1: this route is never used: the route at line 11, column 1 takes every request it would",
        path.display()
    );
    assert!(err.contains(&at), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_route_is_answered_by_the_balancer_over_both_protocols() {
    use tokio::io::AsyncWriteExt;

    use crate::support::read_until;

    let web = Backend::start("web1").await;
    let redirects = r#"
[[listener.route]]
host = "www.example.com"
redirect = "https://example.com/"
redirect_status = 301
[[listener.route]]
path_prefix = "/old/"
strip_prefix = true
redirect = "/new"
"#;
    let lb = Lb::start(&routed(&web, &web, &web, redirects)).await;

    // Three requests in one write: two redirects (the second a HEAD: no body), then one
    // for the pool, all answered in order on the one connection.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: WWW.example.com:80\r\n\r\n\
          HEAD /old/x?y HTTP/1.1\r\nHost: site\r\n\r\n\
          GET / HTTP/1.1\r\nHost: site\r\n\r\n",
    )
    .await
    .unwrap();
    let text = read_until(&mut s, |t| t.ends_with("web1")).await;
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(
        answers[0].starts_with("301 Moved Permanently\r\n"),
        "{text}"
    );
    assert!(
        answers[0].contains("\r\nlocation: https://example.com/a/b?c=1\r\n"),
        "{text}"
    );
    assert!(
        answers[0].ends_with("301 Moved Permanently: https://example.com/a/b?c=1\n"),
        "{text}"
    );
    assert!(answers[1].starts_with("302 Found\r\n"), "{text}");
    assert!(answers[1].contains("\r\nlocation: /new/x?y\r\n"), "{text}");
    assert!(
        answers[1].ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {text}"
    );
    assert!(!text.contains("connection: close"), "{text}");
    assert!(answers[2].starts_with("200 "), "{text}");
    assert_eq!(web.hits(), 1, "only the last request reached a server");

    // A request with a body nobody reads: answered, then the connection ends.
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(b"POST /old/form HTTP/1.1\r\nHost: site\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let text = read_until(&mut s, |_| false).await;
    assert!(text.starts_with("HTTP/1.1 302 Found\r\n"), "{text}");
    assert!(text.contains("\r\nlocation: /new/form\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");

    // HTTP/2: the same rule.
    let mut h2 = h2c(lb.addr).await;
    let req = Request::get("http://www.example.com/z?q")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(
        resp.headers()["location"].to_str().unwrap(),
        "https://example.com/z?q"
    );
    let req = Request::get("http://site/other")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    assert_eq!(web.hits(), 2);

    // The access log has each redirect, with no pool.
    let log = lb.config_path().with_file_name("access.log");
    let lines = || std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
    assert!(wait_for(|| lines() >= 6, Duration::from_secs(3)).await);
    let text = std::fs::read_to_string(&log).unwrap();
    let seen: Vec<(String, u64)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["pool"].to_string(), v["status"].as_u64().unwrap_or(0)))
        .collect();
    let redirected: Vec<u64> = seen
        .iter()
        .filter(|(p, _)| p == "\"-\"")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(redirected, [301, 302, 302, 301], "{text}");
    assert_eq!(
        seen.iter().filter(|(p, _)| p == "\"web\"").count(),
        2,
        "{text}"
    );
}

/// A route guarded by `allow`: a client outside it gets a 403 however it writes the path
/// (the listener matches paths in normal form, over both protocols), the refusals are
/// counted, a client inside it reaches the pool with the path in normal form, and a
/// reload changes who may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_route_refuses_other_clients_however_the_path_is_written() {
    let web = Backend::start("web1").await;
    let api = Backend::start("api1").await;
    let stat = Backend::start("static1").await;
    let admin: SocketAddr = format!("127.0.0.1:{}", rampart_testkit::free_port())
        .parse()
        .unwrap();
    let guarded = |admin_allow: &str| {
        format!(
            r#"
[[listener.route]]
path_prefix = "/admin/"
allow = [{admin_allow}]
pool = "api"
[[listener.route]]
path_prefix = "/open/"
allow = ["127.0.0.0/8", "::1"]
pool = "static"
"#
        )
    };
    let config = |admin_allow: &str| {
        format!(
            "[admin]\naddress = \"{admin}\"\n{}",
            routed(&web, &api, &stat, &guarded(admin_allow))
        )
    };
    let lb = Lb::start(&config("\"10.0.0.0/8\"")).await;
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut h2 = h2c(lb.addr).await;
    let spellings = [
        "/admin/",
        "//admin/x",
        "/%61dmin/",
        "/x/../admin/",
        "/./admin/x",
        "/x/%2E%2e/admin/",
    ];
    for path in spellings {
        let req = Request::get(path)
            .header("host", "www.example.com")
            .body(Full::default())
            .unwrap();
        let (st, body) = cl.request(req).await.unwrap();
        assert_eq!(st, 403, "{path}: {body}");
        // The refusal closes the HTTP/1 connection (a body would be left unread).
        cl = Client::connect(lb.addr).await.unwrap();
        let req = Request::get(format!("http://www.example.com{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 403, "{path} over HTTP/2");
    }
    assert_eq!(api.hits(), 0, "a refused request reached the guarded pool");
    // Inside the allow list: the server gets the path in normal form, the query as sent.
    for (path, want) in [
        ("/open//a/../target?q=/../x", "/open/target?q=/../x"),
        ("/%6Fpen/./target", "/open/target"),
        ("/open/%7e/target", "/open/~/target"),
    ] {
        let (h1, h2) = answer(&mut cl, &mut h2, "www.example.com", path).await;
        assert_eq!((h1.as_str(), h2.as_str()), (want, want), "{path}");
    }
    // A malformed escape is refused on a normalizing listener.
    let (st, _) = cl.get("/open/%zz").await.unwrap();
    assert_eq!(st, 400);
    // Counted by reason, as the firewall's other refusals.
    let want = format!(
        "rampart_firewall_refused_total{{listener=\"site\",reason=\"route\"}} {}",
        2 * spellings.len()
    );
    let metrics = tokio::task::spawn_blocking(move || {
        rampart_testkit::http_request(admin, "GET", "/metrics", &[], b"")
            .map(|r| r.text())
            .unwrap_or_default()
    })
    .await
    .unwrap();
    assert!(metrics.contains(&want), "{want} not in:\n{metrics}");

    // Reloaded with loopback allowed: the same spellings reach the api pool.
    lb.reload_with(&config("\"127.0.0.1\"")).await.unwrap();
    let mut cl = Client::connect(lb.addr).await.unwrap();
    let mut h2 = h2c(lb.addr).await;
    for path in spellings {
        let (h1, h2) = answer(&mut cl, &mut h2, "www.example.com", path).await;
        assert_eq!((h1.as_str(), h2.as_str()), ("api1", "api1"), "{path}");
    }
}
