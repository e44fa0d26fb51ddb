//! Unit tests of the load balancer's configuration (`lb.rs` and its modules).

#![allow(clippy::unwrap_used)]

use super::*;
use std::path::PathBuf;

const GOOD: &str = r#"
[limits]
max_connections = 5000

[forwarded]
trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]

[[listener]]
name = "web"
address = "127.0.0.1:8080"
pool = "app"
[listener.timeouts]
header_read = "5s"
idle = "30s"

[[listener]]
name = "pg"
address = "127.0.0.1:6432"
mode = "tcp"
pool = "db"
max_connections = 100

[[pool]]
name = "app"
algorithm = "least-response-time"
servers = [
  { name = "a", address = "127.0.0.1:9001", weight = 5 },
  { name = "b", address = "127.0.0.1:9002" },
]
slow_start = "10s"
max_in_flight = 50
[pool.health_check]
kind = "http"
path = "/health"
expect_status = 204
interval = "500ms"
timeout = "250ms"
rise = 1
fall = 2
jitter = "50ms"
[pool.queue]
size = 10
timeout = "2s"
[pool.retries]
attempts = 1
budget_ratio = 0.1
[pool.timeouts]
connect = "1s"
response = "3s"

[[pool]]
name = "db"
servers = [{ name = "p", address = "127.0.0.1:5432" }]
health_check = { kind = "tcp" }
"#;

fn parse(text: &str) -> Result<LbConfig, ConfigError> {
    LbConfig::from_source(&Source::new("lb.toml", text))
}

/// The single error of `text`, with (line, col).
fn one_error(text: &str) -> (usize, usize, String) {
    let e = parse(text).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    (d.line, d.col, d.message.clone())
}

fn with_pool(listener_extra: &str, pool: &str) -> String {
    format!("[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n{listener_extra}\n[[pool]]\nname = \"p\"\n{pool}\n")
}

#[test]
fn good_file_validates_into_runtime_types() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.max_connections, 5000);
    assert_eq!(c.trusted_proxies.len(), 2);
    assert_eq!(c.listeners.len(), 2);
    let web = &c.listeners[0];
    assert_eq!(web.mode, Mode::Http);
    assert_eq!(web.pool, 0);
    assert_eq!(web.header_read_timeout, Duration::from_secs(5));
    assert_eq!(c.listeners[1].mode, Mode::Tcp);
    assert_eq!(c.listeners[1].pool, 1);
    assert_eq!(c.listeners[1].max_connections, Some(100));
    let app = &c.pools[0];
    assert_eq!(app.algorithm, Algorithm::LeastResponseTime);
    assert_eq!(app.servers[0].weight, 5);
    assert_eq!(app.servers[1].weight, 1);
    assert_eq!(
        app.health_check.kind,
        CheckKind::Http {
            path: "/health".into(),
            expect_status: 204
        }
    );
    assert_eq!(app.health_check.interval, Duration::from_millis(500));
    assert_eq!(app.max_in_flight, Some(50));
    assert_eq!(app.queue.size, 10);
    assert_eq!(app.retries.attempts, 1);
    assert_eq!(app.timeouts.response, Duration::from_secs(3));
    assert_eq!(app.slow_start, Duration::from_secs(10));
    assert_eq!(c.pools[1].algorithm, Algorithm::RoundRobin);
    assert_eq!(c.pools[1].health_check.kind, CheckKind::Tcp);
}

#[test]
fn unknown_pool_is_reported_at_the_reference() {
    let text = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"nope\"\n[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\n";
    let (l, col, m) = one_error(text);
    assert_eq!((l, col), (4, 8), "{m}");
    assert!(
        m.contains("unknown pool \"nope\"") && m.contains("defined pools: p"),
        "{m}"
    );
}

#[test]
fn duplicate_pool_name() {
    let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\" }]\n[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:2\" }]");
    let (l, col, m) = one_error(&text);
    assert_eq!((l, col), (10, 8), "{m}");
    assert!(m.contains("duplicate pool name"), "{m}");
}

#[test]
fn duplicate_listener_name_and_address() {
    let text = "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:80\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nservers = [{ address = \"127.0.0.1:1\" }]\n";
    let e = parse(text).unwrap_err();
    let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(pos, vec![(6, 8), (7, 11)], "{e}");
    assert!(e.diagnostics[0].message.contains("duplicate listener name"));
    assert!(e.diagnostics[1]
        .message
        .contains("duplicate listener address"));
}

#[test]
fn duplicate_server_name_and_address() {
    let text = with_pool(
            "",
            "servers = [\n  { name = \"a\", address = \"127.0.0.1:1\" },\n  { name = \"a\", address = \"127.0.0.1:1\" },\n]",
        );
    let e = parse(&text).unwrap_err();
    let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(pos, vec![(10, 12), (10, 27)], "{e}");
    assert!(e.diagnostics[0]
        .message
        .contains("duplicate server name \"a\""));
    assert!(e.diagnostics[1]
        .message
        .contains("duplicate server address 127.0.0.1:1"));
}

#[test]
fn bad_address() {
    let text = with_pool("", "servers = [{ address = \"localhost\" }]");
    let (l, col, m) = one_error(&text);
    assert_eq!((l, col), (8, 24), "{m}");
    assert!(m.contains("bad server address \"localhost\""), "{m}");
}

#[test]
fn weight_out_of_bounds() {
    let text = with_pool(
        "",
        "servers = [{ address = \"127.0.0.1:1\", weight = 257 }]",
    );
    let (l, col, m) = one_error(&text);
    assert_eq!((l, col), (8, 48), "{m}");
    assert!(
        m.contains("weight must be between 0 and 256, got 257"),
        "{m}"
    );
    let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\", weight = -1 }]");
    assert!(one_error(&text).2.contains("got -1"));
    let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\", weight = 0 }]");
    assert_eq!(parse(&text).unwrap().pools[0].servers[0].weight, 0);
}

#[test]
fn unknown_algorithm_lists_valid_ones() {
    let text = with_pool(
        "",
        "algorithm = \"fastest\"\nservers = [{ address = \"127.0.0.1:1\" }]",
    );
    let (l, col, m) = one_error(&text);
    assert_eq!((l, col), (8, 13), "{m}");
    for a in Algorithm::ALL {
        assert!(m.contains(a.as_str()), "{m}");
    }
}

#[test]
fn outlier_defaults_and_settings() {
    let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\" }]");
    let p = &parse(&text).unwrap().pools[0];
    assert_eq!(p.outlier, OutlierConfig::default());
    assert_eq!((p.passive_failures, p.panic_threshold), (3, 0));
    let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\npanic_threshold = 50\n[pool.outlier]\ninterval = \"1s\"\nmin_requests = 5\nfailure_percent = 0\nmargin_percent = 10\nmax_ejection_percent = 100\nbase_ejection_time = \"10m\"",
        );
    let p = &parse(&text).unwrap().pools[0];
    assert_eq!(p.panic_threshold, 50);
    assert_eq!(
        p.outlier,
        OutlierConfig {
            interval: Duration::from_secs(1),
            min_requests: 5,
            failure_percent: 0,
            margin_percent: 10,
            max_ejection_percent: 100,
            base_ejection_time: Duration::from_secs(600),
            // Unset and shorter than the base: the base.
            max_ejection_time: Duration::from_secs(600),
        }
    );
}

#[test]
fn outlier_errors_name_their_position() {
    let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\npanic_threshold = 101\noutlier = { max_ejection_percent = -1, interval = \"0s\", min_requests = 0 }",
        );
    let e = parse(&text).unwrap_err();
    let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(pos, vec![(9, 19), (10, 36), (10, 51), (10, 72)], "{e}");
    assert!(e.diagnostics[0]
        .message
        .contains("panic_threshold must be between 0 and 100, got 101"));
    assert!(e.diagnostics[1]
        .message
        .contains("max_ejection_percent must be between 0 and 100, got -1"));
    assert!(e.diagnostics[2]
        .message
        .contains("outlier interval must be greater than zero"));
    assert!(e.diagnostics[3].message.contains("min_requests"));
    let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\noutlier = { base_ejection_time = \"1m\", max_ejection_time = \"30s\", spread = 3 }",
        );
    let e = parse(&text).unwrap_err();
    assert!(e.to_string().contains("spread"), "{e}");
    let text = with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\noutlier = { base_ejection_time = \"1m\", max_ejection_time = \"30s\" }",
        );
    let (l, col, m) = one_error(&text);
    assert_eq!((l, col), (9, 60), "{m}");
    assert!(
        m.contains("max_ejection_time (30s) must not be shorter than base_ejection_time (1m)"),
        "{m}"
    );
}

#[test]
fn lrt_decay_and_penalty() {
    let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\" }]");
    let p = parse(&text).unwrap().pools[0].clone();
    assert_eq!((p.lrt_decay, p.lrt_penalty), (Duration::from_secs(5), None));
    let text = with_pool(
        "",
        "servers = [{ address = \"127.0.0.1:1\" }]\nlrt_decay = \"10s\"\nlrt_penalty = \"2s\"",
    );
    let p = parse(&text).unwrap().pools[0].clone();
    assert_eq!(p.lrt_decay, Duration::from_secs(10));
    assert_eq!(p.lrt_penalty, Some(Duration::from_secs(2)));
    let text = with_pool(
        "",
        "servers = [{ address = \"127.0.0.1:1\" }]\nlrt_decay = \"0s\"\nlrt_penalty = \"soon\"",
    );
    let e = parse(&text).unwrap_err();
    let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(pos, vec![(9, 13), (10, 15)], "{e}");
    assert!(e.diagnostics[0]
        .message
        .contains("lrt_decay must be greater than zero"));
    assert!(e.diagnostics[1].message.contains("bad duration"));
}

#[test]
fn bad_duration_and_mode_and_kind() {
    let text = with_pool("mode = \"udp\"", "servers = [{ address = \"127.0.0.1:1\" }]\nslow_start = \"10 parsecs\"\nhealth_check = { kind = \"icmp\" }");
    let e = parse(&text).unwrap_err();
    let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(pos, vec![(5, 8), (9, 14), (10, 25)], "{e}");
    assert!(e.diagnostics[0].message.contains("unknown mode"));
    assert!(e.diagnostics[1].message.contains("bad duration"));
    assert!(e.diagnostics[2]
        .message
        .contains("unknown health check kind"));
}

#[test]
fn tls_listener_with_redirect_and_hsts() {
    let text = with_pool(
            "tls = { cert = \"certs/site.pem\", key = \"/k.pem\", hsts = \"365d\", redirect_from = \"127.0.0.1:81\", redirect_status = 301 }",
            "servers = [{ address = \"127.0.0.1:1\" }]",
        );
    let c = LbConfig::from_source(&Source::new("/etc/rampart/lb.toml", text)).unwrap();
    assert_eq!(c.listeners.len(), 2);
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.certs[0].cert,
        PathBuf::from("/etc/rampart/certs/site.pem")
    );
    assert_eq!(tls.certs[0].key, PathBuf::from("/k.pem"));
    assert_eq!(tls.hsts_max_age, Some(365 * 86400));
    let r = &c.listeners[1];
    assert_eq!(r.name, "l-redirect");
    assert_eq!(r.address, "127.0.0.1:81".parse().unwrap());
    assert!(r.tls.is_none());
    assert_eq!(
        r.redirect_https,
        Some(RedirectHttps {
            port: 80,
            status: 301
        })
    );
}

#[test]
fn tls_errors_have_positions() {
    let text = with_pool(
            "mode = \"tcp\"\ntls = { cert = \"c.pem\", key = \"k.pem\", redirect_from = \"127.0.0.1:80\", redirect_status = 302, hsts = \"forever\" }",
            "servers = [{ address = \"127.0.0.1:1\" }]",
        );
    let e = parse(&text).unwrap_err();
    let msgs: Vec<String> = e
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect();
    assert_eq!(msgs.len(), 4, "{msgs:#?}");
    assert!(
        msgs[0].starts_with("6:7: tls needs mode = \"http\""),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("bad duration \"forever\"")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("duplicate listener address 127.0.0.1:80")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.contains("redirect_status must be 301 or 308, got 302")),
        "{msgs:#?}"
    );
    let text = with_pool(
        "tls = { cert = \"c.pem\" }",
        "servers = [{ address = \"127.0.0.1:1\" }]",
    );
    let (l, _, m) = one_error(&text);
    assert_eq!(l, 5, "{m}");
    assert!(m.contains("key"), "{m}");
}

#[test]
fn unknown_field_is_a_parse_error_with_position() {
    let text = with_pool("", "servers = [{ address = \"127.0.0.1:1\", wieght = 2 }]");
    let (l, col, m) = one_error(&text);
    assert_eq!(l, 8, "{m}");
    assert!(col > 1);
    assert!(m.contains("unknown field"), "{m}");
}

#[test]
fn empty_pool_and_missing_listener() {
    let e = parse("[[pool]]\nname = \"p\"\nservers = []\n").unwrap_err();
    assert_eq!(e.diagnostics.len(), 2, "{e}");
    assert_eq!((e.diagnostics[0].line, e.diagnostics[0].col), (3, 11));
    assert!(e.diagnostics[0].message.contains("has no servers"));
    assert!(e.diagnostics[1].message.contains("no listener"));
}

#[test]
fn bad_trusted_proxy_and_zero_timeout() {
    let text = format!(
        "[forwarded]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{}",
        with_pool(
            "",
            "servers = [{ address = \"127.0.0.1:1\" }]\ntimeouts = { connect = \"0s\" }"
        )
    );
    let e = parse(&text).unwrap_err();
    let pos: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
    assert_eq!(pos, vec![(2, 20), (11, 24)], "{e}");
}

#[test]
fn forwarded_headers_default_list_and_errors() {
    let pool = "servers = [{ address = \"127.0.0.1:1\" }]";
    // Not given: the four X- headers, no RFC 7239 one.
    let c = parse(&with_pool("", pool)).unwrap();
    assert_eq!(c.forwarded_headers, ForwardedHeaders::default());
    assert!(c.forwarded_headers.x_real_ip && !c.forwarded_headers.forwarded);
    // A list is the whole set, any case.
    let text = format!(
        "[forwarded]\nheaders = [\"X-Forwarded-For\", \"forwarded\"]\n{}",
        with_pool("", pool)
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.forwarded_headers,
        ForwardedHeaders {
            x_forwarded_for: true,
            forwarded: true,
            ..ForwardedHeaders::NONE
        }
    );
    // Empty: none.
    let text = format!("[forwarded]\nheaders = []\n{}", with_pool("", pool));
    assert_eq!(
        parse(&text).unwrap().forwarded_headers,
        ForwardedHeaders::NONE
    );
    // Unknown and repeated names, each at its position.
    let text = format!(
        "[forwarded]\nheaders = [\"x-forwarded-for\", \"via\", \"X-Forwarded-For\"]\n{}",
        with_pool("", pool)
    );
    let e = parse(&text).unwrap_err();
    let got: Vec<(usize, usize, &str)> = e
        .diagnostics
        .iter()
        .map(|d| (d.line, d.col, d.message.as_str()))
        .collect();
    assert_eq!(got.len(), 2, "{e}");
    assert_eq!((got[0].0, got[0].1), (2, 31), "{e}");
    assert!(
        got[0].2.contains("unknown forwarding header \"via\""),
        "{e}"
    );
    assert!(got[0].2.contains("\"x-real-ip\""), "{e}");
    assert_eq!((got[1].0, got[1].1), (2, 38), "{e}");
    assert!(got[1].2.contains("listed twice"), "{e}");
}

#[test]
fn forwarded_headers_command_line_list() {
    assert_eq!(
        ForwardedHeaders::parse_list("x-forwarded-for, X-Real-IP").unwrap(),
        ForwardedHeaders {
            x_forwarded_for: true,
            x_real_ip: true,
            ..ForwardedHeaders::NONE
        }
    );
    assert_eq!(
        ForwardedHeaders::parse_list("none").unwrap(),
        ForwardedHeaders::NONE
    );
    assert_eq!(
        ForwardedHeaders::parse_list("").unwrap(),
        ForwardedHeaders::NONE
    );
    let e = ForwardedHeaders::parse_list("x-forwarded-for,via").unwrap_err();
    assert!(e.contains("\"via\"") && e.contains("forwarded"), "{e}");
}

#[test]
fn readme_example_is_valid() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme.find("## Load balancer").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let c = parse(text).unwrap();
    assert_eq!(c.pools[0].servers.len(), 2);
    assert_eq!(c.pools[0].max_in_flight, Some(200));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
    assert!(parse_duration("2").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("2 days").is_err());
}

#[test]
fn cidr_contains() {
    let n: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(n.contains("10.1.2.3".parse().unwrap()));
    assert!(!n.contains("11.0.0.1".parse().unwrap()));
    assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
    let all: Cidr = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("1.2.3.4".parse().unwrap()));
    let one: Cidr = "::1".parse().unwrap();
    assert!(one.contains("::1".parse().unwrap()));
    assert!(!one.contains("::2".parse().unwrap()));
    assert!("1.2.3.4/40".parse::<Cidr>().is_err());
}

#[test]
fn health_check_argument() {
    assert_eq!("none".parse::<CheckKind>().unwrap(), CheckKind::None);
    assert_eq!("tcp".parse::<CheckKind>().unwrap(), CheckKind::Tcp);
    assert_eq!(
        "http:/healthz".parse::<CheckKind>().unwrap(),
        CheckKind::Http {
            path: "/healthz".into(),
            expect_status: 200
        }
    );
    assert!("http:healthz".parse::<CheckKind>().is_err());
}

#[test]
fn quick_mode_builds_one_pool() {
    let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
    let c = LbConfig::quick(
        "127.0.0.1:8080".parse().unwrap(),
        &[a, b],
        Algorithm::SourceIpHash,
        Mode::Tcp,
        CheckKind::None,
    )
    .unwrap();
    assert_eq!(c.pools[0].servers.len(), 2);
    assert_eq!(c.listeners[0].mode, Mode::Tcp);
    assert!(LbConfig::quick(
        a,
        &[b, b],
        Algorithm::RoundRobin,
        Mode::Http,
        CheckKind::Tcp
    )
    .is_err());
    assert!(LbConfig::quick(a, &[], Algorithm::RoundRobin, Mode::Http, CheckKind::Tcp).is_err());
}

/// A request with this method and no header field.
fn method(m: &'static [u8]) -> RouteRequest<'static> {
    RouteRequest {
        method: m,
        has: &|_| false,
    }
}

const ROUTED: &str = r#"[[listener]]
name = "site"
address = "127.0.0.1:8080"
pool = "web"
[[listener.route]]
host = "API.example.com"
path_prefix = "/v2/"
pool = "api"
[[listener.route]]
path_prefix = "/static/"
strip_prefix = true
pool = "static"

[[pool]]
name = "web"
servers = [{ name = "w", address = "127.0.0.1:9001" }]
[[pool]]
name = "api"
servers = [{ name = "a", address = "127.0.0.1:9002" }]
[[pool]]
name = "static"
servers = [{ name = "s", address = "127.0.0.1:9003" }]
"#;

#[test]
fn routes_validate_in_order_with_their_pools() {
    let c = parse(ROUTED).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.pool, 0);
    assert_eq!(
        l.routes,
        vec![
            Route {
                hosts: vec![HostPattern::Exact("api.example.com".into())],
                path_prefix: Some("/v2/".into()),
                path: None,
                methods: Vec::new(),
                header: None,
                strip_prefix: false,
                to: RouteTo::Pool(1),
                allow: None,
            },
            Route {
                hosts: Vec::new(),
                path_prefix: Some("/static/".into()),
                path: None,
                methods: Vec::new(),
                header: None,
                strip_prefix: true,
                to: RouteTo::Pool(2),
                allow: None,
            },
        ]
    );
    assert_eq!(
        pick_route(
            &l.routes,
            Some(b"api.example.com:8080"),
            b"/v2/x",
            &method(b"GET")
        ),
        Some(0)
    );
    assert_eq!(pick_route(&l.routes, None, b"/", &method(b"GET")), None);
}

#[test]
fn route_errors_name_their_position() {
    // An unknown pool, at its name.
    let text = ROUTED.replace("pool = \"static\"\n\n", "pool = \"statik\"\n\n");
    let (l, col, m) = one_error(&text);
    assert_eq!((l, col), (12, 8), "{m}");
    assert!(
        m.contains("unknown pool \"statik\"; defined pools: api, static, web"),
        "{m}"
    );
    // A host with a port.
    let (l, col, m) = one_error(&ROUTED.replace("API.example.com", "api.example.com:443"));
    assert_eq!((l, col), (6, 8), "{m}");
    assert!(m.contains("without a port"), "{m}");
    // A path that is not one.
    let (l, col, m) = one_error(&ROUTED.replace("\"/static/\"", "\"static\""));
    assert_eq!((l, col), (10, 15), "{m}");
    assert!(m.contains("expected a path starting with \"/\""), "{m}");
    // A route that matches everything.
    let text = ROUTED.replace("path_prefix = \"/static/\"\nstrip_prefix = true\n", "");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    assert_eq!(e.diagnostics[0].line, 9, "{e}");
    assert!(
        e.diagnostics[0]
            .message
            .contains("a route needs a condition: host, path_prefix or path, methods"),
        "{e}"
    );
    // Several hosts: each checked at its own position; not beside host; not empty.
    let (l, col, m) = one_error(&ROUTED.replace(
        "host = \"API.example.com\"",
        "hosts = [\"api.example.com\", \"api.example.org:80\"]",
    ));
    assert_eq!((l, col), (6, 29), "{m}");
    assert!(m.contains("without a port"), "{m}");
    let (l, col, m) = one_error(&ROUTED.replace(
        "host = \"API.example.com\"",
        "host = \"a.example\"\nhosts = [\"b.example\"]",
    ));
    assert_eq!((l, col), (7, 9), "{m}");
    assert!(m.contains("host or hosts, not both"), "{m}");
    let (_, _, m) = one_error(&ROUTED.replace("host = \"API.example.com\"", "hosts = []"));
    assert!(m.contains("hosts is empty"), "{m}");
    let two = parse(&ROUTED.replace(
        "host = \"API.example.com\"",
        "hosts = [\"api.example.com\", \"*.api.example.com\"]",
    ))
    .unwrap();
    assert_eq!(two.listeners[0].routes[0].hosts.len(), 2);
    // Nothing to strip.
    let (l, col, m) =
        one_error(&ROUTED.replace("path_prefix = \"/static/\"\n", "host = \"x.org\"\n"));
    assert_eq!((l, col), (11, 16), "{m}");
    assert!(m.contains("strip_prefix needs a path_prefix"), "{m}");
    // A route the one before it shadows.
    let text = ROUTED.replace(
        "path_prefix = \"/static/\"",
        "path_prefix = \"/v2/x\"\nhost = \"api.example.com\"",
    );
    let text = text.replacen("path_prefix = \"/v2/\"", "path_prefix = \"/v2\"", 1);
    let e = parse(&text).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    assert_eq!(d.line, 9, "{e}");
    assert!(
        d.message
            .contains("never used: the route at line 5, column 1"),
        "{e}"
    );
    // Routes on a TCP listener.
    let text = ROUTED.replace("pool = \"web\"\n", "pool = \"web\"\nmode = \"tcp\"\n");
    let e = parse(&text).unwrap_err();
    assert!(
        e.diagnostics
            .iter()
            .all(|d| d.message.contains("routes need mode = \"http\"")),
        "{e}"
    );
    assert_eq!(e.diagnostics.len(), 2, "{e}");
    // An unknown key.
    let e = parse(&ROUTED.replace("path_prefix = \"/static/\"", "path_beg = \"/static/\""))
        .unwrap_err();
    assert!(e.to_string().contains("path_beg"), "{e}");
}

#[test]
fn exact_path_and_method_routes_validate_and_their_errors_name_their_position() {
    let exact = ROUTED.replace(
        "path_prefix = \"/static/\"\nstrip_prefix = true\n",
        "path = \"/login\"\nmethods = [\"POST\", \"PUT\"]\n",
    );
    let c = parse(&exact).unwrap();
    let r = &c.listeners[0].routes[1];
    assert_eq!(r.path.as_deref(), Some("/login"));
    assert_eq!(r.methods, ["POST", "PUT"]);
    assert_eq!(
        pick_route(&c.listeners[0].routes, None, b"/login", &method(b"PUT")),
        Some(1)
    );
    assert_eq!(
        pick_route(&c.listeners[0].routes, None, b"/login", &method(b"GET")),
        None
    );
    // Methods alone are a condition (all writes to one pool).
    let writes = ROUTED.replace(
        "path_prefix = \"/static/\"\nstrip_prefix = true\n",
        "methods = [\"POST\"]\n",
    );
    assert_eq!(
        parse(&writes).unwrap().listeners[0].routes[1].methods,
        ["POST"]
    );
    // Path and prefix together; an empty list; a method in the wrong case; not a token;
    // twice; a path that is not one.
    let (l, col, m) = one_error(&ROUTED.replace("strip_prefix = true\n", "path = \"/static/a\"\n"));
    assert_eq!((l, col), (11, 8), "{m}");
    assert!(m.contains("give path or path_prefix, not both"), "{m}");
    let (l, col, m) = one_error(&exact.replace("[\"POST\", \"PUT\"]", "[]"));
    assert_eq!((l, col), (11, 11), "{m}");
    assert!(m.contains("methods is empty"), "{m}");
    let (l, col, m) = one_error(&exact.replace("\"PUT\"", "\"put\""));
    assert_eq!((l, col), (11, 20), "{m}");
    assert!(
        m.contains("methods are case-sensitive, and clients send \"PUT\""),
        "{m}"
    );
    let (_, _, m) = one_error(&exact.replace("\"PUT\"", "\"PU T\""));
    assert!(m.contains("bad method \"PU T\""), "{m}");
    let (_, _, m) = one_error(&exact.replace("\"PUT\"", "\"POST\""));
    assert!(m.contains("\"POST\" is listed twice"), "{m}");
    let (l, col, m) = one_error(&exact.replace("\"/login\"", "\"login\""));
    assert_eq!((l, col), (10, 8), "{m}");
    assert!(
        m.contains("bad path \"login\"; expected a path starting with \"/\""),
        "{m}"
    );
    // A header condition, alone or with others; its errors.
    let canary = ROUTED.replace(
        "path_prefix = \"/static/\"\nstrip_prefix = true\n",
        "header = { name = \"X-Canary\", value = \"1\" }\n",
    );
    let c = parse(&canary).unwrap();
    assert_eq!(
        c.listeners[0].routes[1].header,
        Some(HeaderMatch {
            name: "x-canary".into(),
            value: Some("1".into())
        })
    );
    let (l, col, m) = one_error(&canary.replace("X-Canary", "X Canary"));
    assert_eq!((l, col), (10, 19), "{m}");
    assert!(m.contains("bad header name \"X Canary\""), "{m}");
    let (_, _, m) = one_error(&canary.replace("X-Canary", "Host"));
    assert!(m.contains("matches the Host field with host"), "{m}");
    let (l, col, m) = one_error(&canary.replace("\"1\"", "\"1 \""));
    assert_eq!((l, col), (10, 39), "{m}");
    assert!(m.contains("expected \"1\""), "{m}");
    let e = parse(&canary.replace("value = ", "values = ")).unwrap_err();
    assert!(e.to_string().contains("values"), "{e}");
    // Shadowed: a prefix route for any method before an exact path under it.
    let text = exact.replacen(
        "host = \"API.example.com\"\npath_prefix = \"/v2/\"",
        "path_prefix = \"/\"",
        1,
    );
    let e = parse(&text).unwrap_err();
    assert!(e.diagnostics[0].message.contains("never used"), "{e}");
}

#[test]
fn a_redirecting_route_has_no_pool_and_its_errors_name_their_position() {
    let redirecting = ROUTED.replace(
        "pool = \"static\"\n\n",
        "redirect = \"https://static.example.com/\"\nredirect_status = 308\n\n",
    );
    let c = parse(&redirecting).unwrap();
    let r = &c.listeners[0].routes[1];
    assert_eq!(
        r.to,
        RouteTo::Redirect {
            prefix: "https://static.example.com".into(),
            status: 308
        }
    );
    assert_eq!(r.pool(), None);
    assert_eq!(
        r.redirect(b"/static/a.css?v=2"),
        Some((308, "https://static.example.com/a.css?v=2".into()))
    );
    // 302 unless said.
    let c = parse(&redirecting.replace("redirect_status = 308\n", "")).unwrap();
    assert!(matches!(
        c.listeners[0].routes[1].to,
        RouteTo::Redirect { status: 302, .. }
    ));
    // A bad URL, at its value.
    let (l, col, m) = one_error(&redirecting.replace("https://static", "static"));
    assert_eq!((l, col), (12, 12), "{m}");
    assert!(m.contains("bad redirect \"static.example.com/\""), "{m}");
    // A status that is not a redirect's.
    let (l, col, m) = one_error(&redirecting.replace("= 308", "= 200"));
    assert_eq!((l, col), (13, 19), "{m}");
    assert!(
        m.contains("redirect_status must be 301, 302, 303, 307 or 308, got 200"),
        "{m}"
    );
    // Both pool and redirect, at the redirect; neither, at the route.
    let (l, col, m) = one_error(&redirecting.replace("redirect =", "pool = \"web\"\nredirect ="));
    assert_eq!((l, col), (13, 12), "{m}");
    assert!(m.contains("give pool or redirect, not both"), "{m}");
    let (l, _, m) = one_error(&ROUTED.replace("pool = \"static\"\n\n", "\n"));
    assert_eq!(l, 9, "{m}");
    assert!(m.contains("a route needs pool"), "{m}");
    // A status without a redirect.
    let (l, col, m) = one_error(&ROUTED.replace(
        "pool = \"static\"\n\n",
        "pool = \"static\"\nredirect_status = 301\n\n",
    ));
    assert_eq!((l, col), (13, 19), "{m}");
    assert!(m.contains("redirect_status needs a redirect"), "{m}");
}

#[test]
fn a_guarded_route_turns_path_normalization_on_and_its_errors_name_their_position() {
    let guarded = ROUTED.replace(
        "pool = \"static\"\n\n",
        "pool = \"static\"\nallow = [\"10.0.0.0/8\", \"::1\"]\n\n",
    );
    let c = parse(&guarded).unwrap();
    let l = &c.listeners[0];
    assert!(
        l.normalize_path,
        "a route with allow normalizes its listener's paths"
    );
    assert_eq!(l.routes[0].allow, None);
    let allow = l.routes[1].allow.as_ref().expect("allow");
    assert_eq!(allow.len(), 2);
    assert!(l.routes[1].allows("10.1.2.3".parse().unwrap()));
    assert!(l.routes[1].allows("::1".parse().unwrap()));
    assert!(!l.routes[1].allows("192.0.2.1".parse().unwrap()));
    assert!(l.routes[0].allows("192.0.2.1".parse().unwrap()));
    // Closed to everyone.
    let closed =
        parse(&ROUTED.replace("pool = \"static\"\n\n", "pool = \"static\"\nallow = []\n\n"))
            .unwrap();
    assert!(!closed.listeners[0].routes[1].allows("10.0.0.1".parse().unwrap()));
    // Without allow, paths are matched as sent unless the file says otherwise.
    assert!(!parse(ROUTED).unwrap().listeners[0].normalize_path);
    let on = ROUTED.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nnormalize_path = true\n",
    );
    assert!(parse(&on).unwrap().listeners[0].normalize_path);
    // A bad network, at its position.
    let (l, col, m) = one_error(&guarded.replace("\"::1\"", "\"10.0.0.0/33\""));
    assert_eq!((l, col), (13, 24), "{m}");
    assert!(
        m.contains("bad network \"10.0.0.0/33\"") && m.contains("in allow"),
        "{m}"
    );
    // normalize_path = false beside a guard.
    let off = guarded.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nnormalize_path = false\n",
    );
    let (l, col, m) = one_error(&off);
    assert_eq!((l, col), (5, 18), "{m}");
    assert!(
        m.contains("normalize_path = false, but the route at line 10, column 1 has allow"),
        "{m}"
    );
    // A prefix no normalized path can start with.
    let (l, col, m) = one_error(&guarded.replace("\"/static/\"", "\"/static//x/../\""));
    assert_eq!((l, col), (10, 15), "{m}");
    assert!(
        m.contains("not in normal form") && m.contains("expected \"/static/\""),
        "{m}"
    );
    // On a TCP listener.
    let tcp = ROUTED
        .replace("pool = \"web\"\n", "pool = \"web\"\nmode = \"tcp\"\nnormalize_path = true\n")
        .replace("[[listener.route]]\nhost = \"API.example.com\"\npath_prefix = \"/v2/\"\npool = \"api\"\n", "")
        .replace("[[listener.route]]\npath_prefix = \"/static/\"\nstrip_prefix = true\npool = \"static\"\n", "");
    let (_, _, m) = one_error(&tcp);
    assert!(m.contains("normalize_path needs mode = \"http\""), "{m}");
}
