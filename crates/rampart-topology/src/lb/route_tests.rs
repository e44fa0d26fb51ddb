//! Tests of route.rs: matching, covering, targets, redirects.

use super::*;

/// No header fields.
fn none(_: &HeaderMatch) -> bool {
    false
}

/// A request with `method` and no header field.
fn bare(method: &str) -> Request<'_> {
    Request {
        method: method.as_bytes(),
        has: &none,
    }
}

fn route(host: Option<&str>, prefix: Option<&str>, pool: usize) -> Route {
    Route {
        hosts: host
            .map(|h| HostPattern::parse(h).expect("valid host"))
            .into_iter()
            .collect(),
        path_prefix: prefix.map(str::to_string),
        path: None,
        methods: Vec::new(),
        header: None,
        strip_prefix: false,
        to: RouteTo::Pool(pool),
        allow: None,
    }
}

#[test]
fn a_redirect_keeps_the_path_and_query_after_its_prefix() {
    let mut r = route(Some("www.example.com"), None, 0);
    r.to = RouteTo::Redirect {
        prefix: "https://example.com".into(),
        status: 301,
    };
    let loc = |r: &Route, t: &str| r.redirect(t.as_bytes()).map(|(s, l)| format!("{s} {l}"));
    assert_eq!(
        loc(&r, "/a/b?c=d"),
        Some("301 https://example.com/a/b?c=d".into())
    );
    assert_eq!(loc(&r, "/"), Some("301 https://example.com/".into()));
    assert_eq!(loc(&r, "*"), Some("301 https://example.com/".into()));
    // Stripping: the rest of the path, as the pool's server would have had it.
    r.path_prefix = Some("/old/".into());
    r.strip_prefix = true;
    assert_eq!(
        loc(&r, "/old/x?y"),
        Some("301 https://example.com/x?y".into())
    );
    assert_eq!(loc(&route(None, Some("/"), 3), "/x"), None);
}

#[test]
fn redirect_prefixes_are_urls_or_paths_without_query() {
    for (v, want) in [
        ("https://example.com", "https://example.com"),
        ("https://example.com/", "https://example.com"),
        (
            "HTTP://Example.com:8080/new/",
            "HTTP://Example.com:8080/new",
        ),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("https://10.0.0.1", "https://10.0.0.1"),
        ("/new", "/new"),
        ("/", ""),
    ] {
        assert_eq!(parse_redirect(v).as_deref(), Ok(want), "{v}");
    }
    for bad in [
        "",
        "example.com",
        "//example.com",
        "ftp://example.com",
        "https://",
        "https:///x",
        "https://example.com?x",
        "https://example.com/#f",
        "https://user@example.com",
        "https://example.com:0",
        "https://example.com:99999",
        "https://*.example.com",
        "https://exa mple.com",
        "https://example.com/\u{e9}",
    ] {
        let e = parse_redirect(bad).expect_err(bad);
        assert!(e.contains("expected an absolute URL"), "{bad}: {e}");
    }
}

#[test]
fn a_stripping_route_sends_the_rest_of_the_path_as_nginx_does() {
    let target = |prefix: &str, strip: bool, t: &str| {
        let mut r = route(None, Some(prefix), 0);
        r.strip_prefix = strip;
        let mut out = Vec::new();
        r.push_target(t.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        target("/api/", true, "/api/users?x=/api/"),
        "/users?x=/api/"
    );
    assert_eq!(target("/api/", true, "/api/"), "/");
    assert_eq!(target("/api", true, "/api"), "/");
    assert_eq!(target("/api", true, "/api?q"), "/?q");
    assert_eq!(target("/api", true, "/apix"), "/x");
    assert_eq!(target("/api", true, "/api/v"), "/v");
    assert_eq!(target("/api/", false, "/api/users"), "/api/users");
}

#[test]
fn host_names_lose_port_and_trailing_dot() {
    assert_eq!(host_name(b"Example.COM:8080"), b"Example.COM");
    assert_eq!(host_name(b"example.com."), b"example.com");
    assert_eq!(host_name(b"example.com.:80"), b"example.com");
    assert_eq!(host_name(b"[::1]:8080"), b"[::1]");
    assert_eq!(host_name(b"[::1]"), b"[::1]");
    assert_eq!(host_name(b"10.0.0.1:80"), b"10.0.0.1");
    assert_eq!(host_name(b" a.b "), b"a.b");
}

#[test]
fn target_paths_of_every_form() {
    assert_eq!(target_path(b"/api/x?y=/z"), b"/api/x");
    assert_eq!(target_path(b"/"), b"/");
    assert_eq!(target_path(b"http://h.example/api/x?q"), b"/api/x");
    assert_eq!(target_path(b"http://h.example?q"), b"/");
    assert_eq!(target_path(b"https://h.example"), b"/");
    assert_eq!(target_path(b"*"), b"");
    assert_eq!(target_path(b"h.example:443"), b"");
}

#[test]
fn host_patterns_parse_lowercase_and_refuse_ports_and_stray_wildcards() {
    assert_eq!(
        HostPattern::parse("API.Example.com."),
        Ok(HostPattern::Exact("api.example.com".into()))
    );
    assert_eq!(
        HostPattern::parse("*.Example.com"),
        Ok(HostPattern::Under(".example.com".into()))
    );
    assert_eq!(
        HostPattern::parse("[::1]"),
        Ok(HostPattern::Exact("[::1]".into()))
    );
    assert!(HostPattern::parse("10.0.0.1").is_ok());
    for bad in [
        "",
        "example.com:80",
        "a.*.com",
        "*example.com",
        "*",
        "http://example.com",
        "a..b",
        ".example.com",
        "[::1]:80",
        "[zz]",
        "exa mple.com",
    ] {
        let e = HostPattern::parse(bad).expect_err(bad);
        assert!(e.contains("expected a name"), "{bad}: {e}");
    }
}

#[test]
fn the_first_matching_route_wins_and_none_is_the_listeners_pool() {
    let routes = [
        route(Some("api.example.com"), Some("/v2/"), 1),
        route(Some("api.example.com"), None, 2),
        route(Some("*.example.com"), Some("/static/"), 3),
        route(None, Some("/static/"), 4),
    ];
    let pool = |host: Option<&str>, target: &str| {
        pick(
            &routes,
            host.map(str::as_bytes),
            target.as_bytes(),
            &bare("GET"),
        )
        .and_then(|i| routes[i].pool())
    };
    assert_eq!(pool(Some("api.example.com"), "/v2/users"), Some(1));
    assert_eq!(pool(Some("API.example.com:443"), "/v2/users?x"), Some(1));
    assert_eq!(pool(Some("api.example.com"), "/v1/users"), Some(2));
    assert_eq!(pool(Some("api.example.com"), "/v2"), Some(2));
    assert_eq!(pool(Some("www.example.com"), "/static/a.css"), Some(3));
    assert_eq!(pool(Some("a.b.example.com"), "/static/a.css"), Some(3));
    // `*.example.com` is every name under it, not the domain itself.
    assert_eq!(pool(Some("example.com"), "/static/a.css"), Some(4));
    assert_eq!(pool(None, "/static/a.css"), Some(4));
    assert_eq!(pool(Some("other.org"), "/"), None);
    assert_eq!(pool(None, "*"), None);
    // Absolute form: the path after the authority.
    assert_eq!(pool(Some("x.org"), "http://x.org/static/i.png"), Some(4));
    // Not decoded: a route sends, it does not guard.
    assert_eq!(pool(Some("x.org"), "/%73tatic/a.css"), None);
    assert_eq!(pick(&[], Some(b"a"), b"/", &bare("GET")), None);
}

#[test]
fn exact_paths_and_methods_narrow_a_route() {
    let mut login = route(None, None, 1);
    login.path = Some("/login".into());
    login.methods = vec!["POST".into()];
    let mut reads = route(None, Some("/api/"), 2);
    reads.methods = vec!["GET".into(), "OPTIONS".into()];
    let mut writes = route(Some("api.example.com"), None, 3);
    writes.methods = vec!["POST".into(), "PUT".into(), "DELETE".into()];
    let routes = [login, reads, writes];
    let pool = |host: &str, target: &str, method: &str| {
        pick(
            &routes,
            Some(host.as_bytes()),
            target.as_bytes(),
            &bare(method),
        )
        .and_then(|i| routes[i].pool())
    };
    assert_eq!(pool("x.org", "/login", "POST"), Some(1));
    assert_eq!(pool("x.org", "/login?next=/a", "POST"), Some(1));
    assert_eq!(pool("x.org", "/login", "GET"), None, "not its method");
    assert_eq!(
        pool("x.org", "/login/", "POST"),
        None,
        "not its path exactly"
    );
    assert_eq!(pool("x.org", "/logins", "POST"), None);
    assert_eq!(pool("x.org", "/api/users", "GET"), Some(2));
    assert_eq!(
        pool("x.org", "/api/users", "HEAD"),
        Some(2),
        "GET takes HEAD"
    );
    assert_eq!(pool("x.org", "/api/users", "OPTIONS"), Some(2));
    assert_eq!(pool("x.org", "/api/users", "get"), None, "case-sensitive");
    assert_eq!(pool("x.org", "/api/users", "POST"), None);
    assert_eq!(pool("api.example.com", "/api/users", "POST"), Some(3));
    assert_eq!(pool("api.example.com", "/api/users", "GET"), Some(2));
    assert_eq!(pool("api.example.com", "/", "PATCH"), None);
}

#[test]
fn a_header_condition_takes_the_field_by_name_and_value() {
    let mut canary = route(None, None, 1);
    canary.header = Some(HeaderMatch {
        name: "x-canary".into(),
        value: Some("1".into()),
    });
    let mut beta = route(None, Some("/app/"), 2);
    beta.header = Some(HeaderMatch {
        name: "x-beta".into(),
        value: None,
    });
    let routes = [canary, beta];
    let pool = |fields: &[(&str, &str)], target: &str| {
        let has = |h: &HeaderMatch| {
            fields
                .iter()
                .any(|(n, v)| h.takes(n.as_bytes(), v.as_bytes()))
        };
        let req = Request {
            method: b"GET",
            has: &has,
        };
        pick(&routes, Some(b"x.org"), target.as_bytes(), &req).and_then(|i| routes[i].pool())
    };
    assert_eq!(pool(&[("X-Canary", "1")], "/"), Some(1));
    assert_eq!(pool(&[("x-canary", "1")], "/app/x"), Some(1));
    assert_eq!(pool(&[("X-Canary", "0")], "/"), None);
    assert_eq!(pool(&[("X-Canary", "1 ")], "/"), None, "the value exactly");
    assert_eq!(pool(&[("X-Canary", "0"), ("X-Canary", "1")], "/"), Some(1));
    assert_eq!(pool(&[("X-Beta", "")], "/app/x"), Some(2), "present");
    assert_eq!(pool(&[("X-Beta", "yes")], "/"), None, "and the prefix");
    assert_eq!(pool(&[], "/app/x"), None);
}

#[test]
fn covering_is_what_the_matcher_does() {
    // A route covers a later one exactly when every request the later one takes, it
    // takes: checked over a grid of requests.
    let hosts = [
        None,
        Some("a.example.com"),
        Some("b.a.example.com"),
        Some("example.com"),
        Some("other.org"),
    ];
    let paths = ["/", "/api", "/api/", "/api/v2/x", "/static/x"];
    let methods = ["GET", "HEAD", "POST", "PUT"];
    let patterns = [
        None,
        Some("a.example.com"),
        Some("*.example.com"),
        Some("*.a.example.com"),
        Some("example.com"),
    ];
    let prefixes = [None, Some("/api"), Some("/api/"), Some("/static/")];
    let exact = [None, Some("/api"), Some("/api/v2/x")];
    let method_sets: [&[&str]; 5] = [&[], &["GET"], &["HEAD"], &["GET", "POST"], &["POST"]];
    let header_conds = [
        None,
        Some(("x-a", None)),
        Some(("x-a", Some("1"))),
        Some(("x-b", Some("1"))),
    ];
    // The requests' fields: none, x-a: 1, x-a: 2, x-b: 1.
    let field_sets: [&[(&str, &str)]; 4] = [&[], &[("X-A", "1")], &[("x-a", "2")], &[("x-b", "1")]];
    let mut all = Vec::new();
    for h in patterns {
        for p in prefixes {
            for e in exact.into_iter().filter(|e| e.is_none() || p.is_none()) {
                for (ms, hc) in method_sets.iter().zip(header_conds.iter().cycle()) {
                    let mut r = route(h, p, 0);
                    r.path = e.map(str::to_string);
                    r.methods = ms.iter().map(|m| m.to_string()).collect();
                    r.header = hc.map(|(n, v)| HeaderMatch {
                        name: n.into(),
                        value: v.map(str::to_string),
                    });
                    all.push(r.clone());
                    // And with a second host.
                    if h.is_some() {
                        r.hosts.push(HostPattern::parse("other.org").unwrap());
                        all.push(r);
                    }
                }
            }
        }
    }
    let mut covered = 0;
    for a in &all {
        for b in &all {
            let takes_all = hosts.iter().all(|h| {
                paths.iter().all(|p| {
                    methods.iter().all(|m| {
                        field_sets.iter().all(|fs| {
                            let has = |hm: &HeaderMatch| {
                                fs.iter().any(|(n, v)| hm.takes(n.as_bytes(), v.as_bytes()))
                            };
                            let req = Request {
                                method: m.as_bytes(),
                                has: &has,
                            };
                            let h = h.map(str::as_bytes);
                            let p = p.as_bytes();
                            !b.matches(h, p, &req) || a.matches(h, p, &req)
                        })
                    })
                })
            });
            if a.covers(b) {
                assert!(takes_all, "{a:?} covers {b:?} but misses a request");
                covered += 1;
            }
        }
    }
    assert!(
        covered > all.len() * 4,
        "{covered} of {} pairs",
        all.len().pow(2)
    );
    let mut get = route(None, Some("/api"), 0);
    get.methods = vec!["GET".into()];
    let mut head = route(None, None, 0);
    head.path = Some("/api/v2".into());
    head.methods = vec!["HEAD".into()];
    assert!(
        get.covers(&head),
        "GET takes HEAD, the prefix takes the path"
    );
    assert!(!head.covers(&get));
    assert!(route(None, Some("/api"), 0).covers(&route(Some("x.org"), Some("/api/v2"), 0)));
    // Two hosts are covered only when each of them is.
    let mut two = route(Some("a.example.com"), None, 0);
    two.hosts.push(HostPattern::parse("other.org").unwrap());
    assert!(!route(Some("*.example.com"), None, 0).covers(&two));
    assert!(two.covers(&route(Some("other.org"), Some("/x"), 0)));
    let get = bare("GET");
    assert!(
        two.matches(Some(b"other.org"), b"/", &get)
            && two.matches(Some(b"a.example.com"), b"/", &get)
    );
    assert!(!two.matches(Some(b"b.example.com"), b"/", &get) && !two.matches(None, b"/", &get));
    assert!(!route(Some("x.org"), None, 0).covers(&route(None, Some("/"), 0)));
}
