//! `[[listener.route]]`: requests sent to another pool than the listener's by their `Host`
//! and path (HAProxy's `use_backend ... if { hdr(host) ... } { path_beg ... }`, nginx's
//! `server_name` and prefix `location`s).
//!
//! ```toml
//! [[listener]]
//! name = "site"
//! address = "0.0.0.0:80"
//! pool = "web"                      # what no route takes
//!
//! [[listener.route]]                # the first route that matches wins
//! host = "api.example.com"          # or "*.example.com": any name under example.com;
//!                                   # hosts = ["a.example", "b.example"]: any of them
//! path_prefix = "/v2/"              # optional; host optional too, not both left out
//! pool = "api-v2"
//!
//! [[listener.route]]
//! path_prefix = "/static/"
//! strip_prefix = true               # the server gets /static/a.css as /a.css
//! pool = "static"
//!
//! [[listener.route]]                # answered by the balancer: no pool
//! host = "www.example.com"
//! redirect = "https://example.com"  # Location: https://example.com/the/path?and=query
//! redirect_status = 301             # 301, 302 (the default, as HAProxy's), 303, 307, 308
//!
//! [[listener.route]]
//! path = "/login"                   # this path exactly (HAProxy's `path`, nginx's `location =`)
//! methods = ["POST"]                # only these methods; "GET" takes HEAD too
//! pool = "auth"
//!
//! [[listener.route]]
//! header = { name = "X-Canary", value = "1" }   # this request field with this value
//! pool = "canary"                   # (HAProxy's hdr(X-Canary) -m str 1); no value: present
//!
//! [[listener.route]]                # a guard: only these clients, others get a 403
//! path_prefix = "/admin/"
//! allow = ["10.0.0.0/8", "::1"]     # [] closes the path to everyone
//! pool = "admin"
//! ```
//!
//! A route matches when every condition it has holds: one of its hosts, its path or path
//! prefix, one of its methods (compared case-sensitively, as HAProxy's `method`; a route
//! for `GET` takes `HEAD` as well, as HAProxy's `METH_GET` and nginx's `limit_except GET`),
//! its header field (the name in any case; the value exactly, any one of the field's lines
//! when it comes several times).
//! The host is compared without its port and a trailing dot, case-insensitively; an
//! absolute-form request target's authority stands for `Host`, as it does upstream. The
//! path prefix is compared byte for byte with the request's path (before `?`): as the client
//! sent it (as HAProxy's `path_beg`), or, on a listener that normalizes paths, in normal form
//! ([`super::path`]: `//admin`, `/%61dmin` and `/x/../admin` are all `/admin`). A route with
//! `allow = ["10.0.0.0/8"]` guards its requests (others get a 403); it turns normalization
//! on for its listener, since a guard that `//admin` walks around guards nothing. Matching
//! is pure and here, so both HTTP renderers of the balancer (the HTTP/1 fast path and
//! HTTP/2) route alike.

use super::*;

/// One route of a listener, checked: at least one condition (`host`, `path_prefix` or
/// `path`, `methods`); never both `path_prefix` and `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Any of these hosts (`host = "..."` or `hosts = [...]`); empty: any host.
    pub hosts: Vec<HostPattern>,
    pub path_prefix: Option<String>,
    /// This path exactly (before `?`), compared as `path_prefix` is.
    pub path: Option<String>,
    /// Any of these methods (`GET` also takes `HEAD`); empty: any method.
    pub methods: Vec<String>,
    /// A request header field this route needs.
    pub header: Option<HeaderMatch>,
    /// The server gets the path without `path_prefix` (nginx's `location /api/ { proxy_pass
    /// http://api/; }`): `/api/users?x` goes up as `/users?x`, `/api` as `/`. A redirect's
    /// `Location` loses it the same way.
    pub strip_prefix: bool,
    pub to: RouteTo,
    /// Only clients in these networks may use the route; the others get a 403 (HAProxy's
    /// `http-request deny if { path_beg /admin } !{ src 10.0.0.0/8 }`). `None`: everyone;
    /// empty: no one (a path closed to all, e.g. `/.git/`). The listener then matches
    /// paths in normal form.
    pub allow: Option<Vec<Cidr>>,
}

/// A route's `header`: a request field by name, with this value or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Lowercase.
    pub name: String,
    /// The field's value exactly; `None`: present with any value.
    pub value: Option<String>,
}

impl HeaderMatch {
    /// A field named `name` with value `value` satisfies it.
    pub fn takes(&self, name: &[u8], value: &[u8]) -> bool {
        name.eq_ignore_ascii_case(self.name.as_bytes())
            && self.value.as_ref().is_none_or(|v| v.as_bytes() == value)
    }
}

/// What a route does with the requests it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTo {
    /// Forward to a pool: index into [`LbConfig::pools`]; always valid.
    Pool(usize),
    /// Answer with a redirect, no server involved (HAProxy's `http-request redirect prefix`,
    /// nginx's `return 301 https://example.com$request_uri`): `Location` is `prefix` (no
    /// trailing `/`) then the request's path and query.
    Redirect { prefix: String, status: u16 },
}

/// The statuses a redirect may have.
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// A route's `host`: one name, or every name under a domain (`*.example.com`). Lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot (`.example.com`): matches `a.example.com` and
    /// `a.b.example.com`, not `example.com` itself (nginx's `*.example.com`).
    Under(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Under(s) => write!(f, "*{s}"),
        }
    }
}

impl HostPattern {
    /// `host` (already without port and trailing dot) matches.
    fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h.as_bytes()),
            HostPattern::Under(s) => {
                host.len() > s.len()
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }

    /// Every host `other` matches, this one matches too.
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Under(_), HostPattern::Exact(b)) => self.matches(b.as_bytes()),
            (HostPattern::Under(a), HostPattern::Under(b)) => b.ends_with(a.as_str()),
            (HostPattern::Exact(_), HostPattern::Under(_)) => false,
        }
    }

    /// Parse a route's `host` as written; the error says what was expected.
    pub fn parse(v: &str) -> Result<HostPattern, String> {
        let bad = || {
            format!(
                "bad host \"{v}\"; expected a name like \"api.example.com\", every name under a domain like \"*.example.com\", or an address, without a port"
            )
        };
        let lower = v.to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if let Some(inner) = lower.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return match inner.parse::<std::net::Ipv6Addr>() {
                Ok(_) => Ok(HostPattern::Exact(lower.to_string())),
                Err(_) => Err(bad()),
            };
        }
        let (under, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(if under {
            HostPattern::Under(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }
}

/// A `Host` value (or an authority) without its port and trailing dot: `Example.com.:80`
/// is `Example.com`, `[::1]:8080` is `[::1]`.
pub fn host_name(v: &[u8]) -> &[u8] {
    let v = v.trim_ascii();
    let name = if v.first() == Some(&b'[') {
        match v.iter().position(|&b| b == b']') {
            Some(i) => &v[..=i],
            None => v,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => &v[..i],
            None => v,
        }
    };
    name.strip_suffix(b".").unwrap_or(name)
}

/// The path of a request target: origin form up to `?`; an absolute-form target's path
/// after its authority (`/` when it has none); `*` and authority forms have none (no
/// prefix matches them).
pub fn target_path(target: &[u8]) -> &[u8] {
    let t = if target.first() == Some(&b'/') {
        target
    } else if let Some(i) = target.windows(3).position(|w| w == b"://") {
        let rest = &target[i + 3..];
        match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(j) if rest[j] == b'/' => &rest[j..],
            _ => b"/",
        }
    } else {
        return b"";
    };
    match t.iter().position(|&b| b == b'?' || b == b'#') {
        Some(i) => &t[..i],
        None => t,
    }
}

impl Route {
    /// This route takes a request for `host` (from [`host_name`]) at `path` (from
    /// [`target_path`]) with `method`, whose fields satisfy `has` ([`Request::has`]).
    pub fn matches(&self, host: Option<&[u8]>, path: &[u8], req: &Request<'_>) -> bool {
        let method = req.method;
        (self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h))))
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| path.starts_with(p.as_bytes()))
            && self.path.as_ref().is_none_or(|p| path == p.as_bytes())
            && (self.methods.is_empty() || self.methods.iter().any(|m| takes_method(m, method)))
            && self.header.as_ref().is_none_or(|h| (req.has)(h))
    }

    /// Render the upstream request target for `target` (origin form: path and query,
    /// which this route took) into `out`: without the path prefix when the route strips it,
    /// always starting with `/`; else as it came.
    pub fn push_target(&self, target: &[u8], out: &mut Vec<u8>) {
        let rest = match &self.path_prefix {
            Some(p) if self.strip_prefix => target.strip_prefix(p.as_bytes()),
            _ => None,
        };
        match rest {
            Some(r) => {
                if r.first() != Some(&b'/') {
                    out.push(b'/');
                }
                out.extend_from_slice(r);
            }
            None => out.extend_from_slice(target),
        }
    }

    /// `ip` (the client: the connection's peer, or the address a trusted proxy forwarded
    /// when the firewall judges that one) may use this route.
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        self.allow
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(ip)))
    }

    /// The pool this route forwards to; `None` for a redirect.
    pub fn pool(&self) -> Option<usize> {
        match self.to {
            RouteTo::Pool(p) => Some(p),
            RouteTo::Redirect { .. } => None,
        }
    }

    /// A redirecting route's status and `Location` for a request whose origin-form target
    /// (path and query) is `target`; `None` for a route to a pool.
    pub fn redirect(&self, target: &[u8]) -> Option<(u16, String)> {
        let RouteTo::Redirect { prefix, status } = &self.to else {
            return None;
        };
        let mut loc = Vec::with_capacity(prefix.len() + target.len() + 1);
        loc.extend_from_slice(prefix.as_bytes());
        if target.first() == Some(&b'/') {
            self.push_target(target, &mut loc);
        } else {
            // `OPTIONS *`: no path to keep.
            loc.push(b'/');
        }
        // A request target is ASCII (both parsers refuse anything else); lossy is a no-op.
        Some((*status, String::from_utf8_lossy(&loc).into_owned()))
    }

    /// Every request `later` takes, this one takes first.
    fn covers(&self, later: &Route) -> bool {
        // Each of the later route's hosts within one of ours (no hosts: any host).
        let host = self.hosts.is_empty()
            || (!later.hosts.is_empty()
                && later
                    .hosts
                    .iter()
                    .all(|b| self.hosts.iter().any(|a| a.covers(b))));
        // The later route's path (exact or prefix) within ours.
        let path = match (&self.path_prefix, &self.path) {
            (Some(a), _) => later
                .path_prefix
                .as_ref()
                .or(later.path.as_ref())
                .is_some_and(|b| b.starts_with(a.as_str())),
            (None, Some(a)) => later.path.as_ref() == Some(a),
            (None, None) => true,
        };
        // Each of the later route's methods among ours (no methods: any method).
        let methods = self.methods.is_empty()
            || (!later.methods.is_empty()
                && later.methods.iter().all(|m| {
                    self.methods.contains(m)
                        || (m == "HEAD" && self.methods.iter().any(|a| a == "GET"))
                }));
        // The later route's field within ours (no field: any request).
        let header = match (&self.header, &later.header) {
            (None, _) => true,
            (Some(a), Some(b)) => a.name == b.name && (a.value.is_none() || a.value == b.value),
            (Some(_), None) => false,
        };
        host && path && methods && header
    }
}

/// What a route looks at besides the host and the path: the method, and the request's
/// header fields through `has` (whether a field satisfies a [`HeaderMatch`]), so that
/// each HTTP path asks its own parsed fields.
pub struct Request<'a> {
    pub method: &'a [u8],
    pub has: &'a dyn Fn(&HeaderMatch) -> bool,
}

/// A route's method `listed` takes a request's `method`: the same bytes, or `HEAD` for
/// `GET` (a HEAD asks for what a GET would get).
fn takes_method(listed: &str, method: &[u8]) -> bool {
    listed.as_bytes() == method || (method == b"HEAD" && listed == "GET")
}

/// The first of `routes` that takes a request with the `Host` value (or absolute-form
/// authority) `host`, the request target `target`, and `req`'s method and fields;
/// `None`: the listener's pool.
pub fn pick(
    routes: &[Route],
    host: Option<&[u8]>,
    target: &[u8],
    req: &Request<'_>,
) -> Option<usize> {
    if routes.is_empty() {
        return None;
    }
    let host = host.map(host_name);
    let path = target_path(target);
    routes.iter().position(|r| r.matches(host, path, req))
}

/// `[[listener.route]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Several hosts (nginx's `server_name a b`, HAProxy's `hdr(host) -i a b`).
    #[serde(default)]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    /// One path exactly.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Only these methods.
    #[serde(default)]
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    /// Only requests with this field.
    #[serde(default)]
    pub header: Option<Spanned<RawHeaderMatch>>,
    #[serde(default)]
    pub strip_prefix: Option<Spanned<bool>>,
    #[serde(default)]
    pub pool: Option<Spanned<String>>,
    /// Instead of `pool`: answer with a redirect to this prefix.
    #[serde(default)]
    pub redirect: Option<Spanned<String>>,
    #[serde(default)]
    pub redirect_status: Option<Spanned<i64>>,
    /// Client networks that may use the route (others: 403).
    #[serde(default)]
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A route's `header` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: Spanned<String>,
    #[serde(default)]
    pub value: Option<Spanned<String>>,
}

/// A route's `redirect` as written: an absolute `http(s)` URL, or a path on the same site;
/// no query or fragment (the request's path and query follow it). Without trailing `/`.
fn parse_redirect(v: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "bad redirect \"{v}\"; expected an absolute URL without query, like \"https://example.com\" or \"https://example.com/new\", or a path like \"/new\""
        )
    };
    if v.is_empty()
        || v.bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b == b'?' || b == b'#' || b == b'"' || b == b'\\')
    {
        return Err(bad());
    }
    let lower = v.to_ascii_lowercase();
    let rest = if v.starts_with('/') {
        if v.starts_with("//") {
            // A scheme-relative URL: say which scheme.
            return Err(bad());
        }
        None
    } else if let Some(r) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    {
        Some(r)
    } else {
        return Err(bad());
    };
    if let Some(rest) = rest {
        let authority = rest.split('/').next().unwrap_or("");
        let host = host_name(authority.as_bytes());
        let port = &authority[host.len()..];
        let port_ok = port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
        let host = std::str::from_utf8(host).unwrap_or("");
        if authority.contains('@')
            || !port_ok
            || HostPattern::parse(host).is_err()
            || host.starts_with("*.")
        {
            return Err(bad());
        }
    }
    let scheme_len = v.len() - rest.map_or(v.len(), str::len);
    let trimmed = v.trim_end_matches('/');
    // Never trim into the scheme's `//`.
    Ok(if trimmed.len() < scheme_len {
        v[..scheme_len].to_string()
    } else {
        trimmed.to_string()
    })
}

/// Check a listener's routes; `pool_index` maps pool names to indices, `unknown_pool` words
/// the error for a name not in it.
pub(super) fn validate(
    c: &mut Checker<'_>,
    raw: &[Spanned<RawRoute>],
    mode: Mode,
    pool_index: &HashMap<&str, usize>,
    unknown_pool: &dyn Fn(&str) -> String,
    normalize: bool,
) -> Vec<Route> {
    let mut out: Vec<(Route, std::ops::Range<usize>)> = Vec::new();
    for sr in raw {
        let r = sr.get_ref();
        if mode != Mode::Http {
            c.err(
                sr,
                "routes need mode = \"http\" (they match on a request's Host and path)",
            );
            continue;
        }
        if let (Some(_), Some(many)) = (&r.host, &r.hosts) {
            c.err(many, "give host or hosts, not both");
            continue;
        }
        if let Some(many) = r.hosts.as_ref().filter(|h| h.get_ref().is_empty()) {
            c.err(
                many,
                "hosts is empty; leave it out for a route on the path alone",
            );
            continue;
        }
        let written: Vec<&Spanned<String>> = r
            .host
            .iter()
            .chain(r.hosts.iter().flat_map(|h| h.get_ref().iter()))
            .collect();
        let mut hosts = Vec::new();
        for h in &written {
            match HostPattern::parse(h.get_ref()) {
                Ok(p) => hosts.push(p),
                Err(e) => c.err(*h, e),
            }
        }
        if let (Some(_), Some(exact)) = (&r.path_prefix, &r.path) {
            c.err(exact, "give path or path_prefix, not both");
            continue;
        }
        let path_prefix = r
            .path_prefix
            .as_ref()
            .and_then(|p| check_path(c, p, "path_prefix", "\"/api/\"", normalize));
        let path = r
            .path
            .as_ref()
            .and_then(|p| check_path(c, p, "path", "\"/login\"", normalize));
        let mut methods: Vec<String> = Vec::new();
        if let Some(list) = &r.methods {
            if list.get_ref().is_empty() {
                c.err(
                    list,
                    "methods is empty; leave it out for a route that takes any method",
                );
                continue;
            }
            for m in list.get_ref() {
                match check_method(m.get_ref()) {
                    Ok(()) if methods.contains(m.get_ref()) => {
                        c.err(m, format!("method \"{}\" is listed twice", m.get_ref()))
                    }
                    Ok(()) => methods.push(m.get_ref().clone()),
                    Err(e) => c.err(m, e),
                }
            }
        }
        let to = match (&r.pool, &r.redirect) {
            (Some(_), Some(red)) => {
                c.err(
                    red,
                    "give pool or redirect, not both (a redirect is answered by the balancer)",
                );
                continue;
            }
            (None, None) => {
                c.err(
                    sr,
                    "a route needs pool (where its requests go) or redirect (where clients are sent)",
                );
                continue;
            }
            (Some(p), None) => {
                if let Some(st) = &r.redirect_status {
                    c.err(st, "redirect_status needs a redirect");
                    continue;
                }
                match pool_index.get(p.get_ref().as_str()) {
                    Some(i) => Some(RouteTo::Pool(*i)),
                    None => {
                        c.err(p, unknown_pool(p.get_ref()));
                        None
                    }
                }
            }
            (None, Some(red)) => {
                let status = match &r.redirect_status {
                    None => Some(302),
                    Some(st) => match u16::try_from(*st.get_ref()) {
                        Ok(n) if REDIRECT_STATUSES.contains(&n) => Some(n),
                        _ => {
                            c.err(
                                st,
                                format!(
                                    "redirect_status must be 301, 302, 303, 307 or 308, got {}",
                                    st.get_ref()
                                ),
                            );
                            None
                        }
                    },
                };
                let prefix = match parse_redirect(red.get_ref()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        c.err(red, e);
                        None
                    }
                };
                match (prefix, status) {
                    (Some(prefix), Some(status)) => Some(RouteTo::Redirect { prefix, status }),
                    _ => None,
                }
            }
        };
        if written.is_empty()
            && r.path_prefix.is_none()
            && r.path.is_none()
            && r.methods.is_none()
            && r.header.is_none()
        {
            c.err(
                sr,
                "a route needs a condition: host, path_prefix or path, methods, header (any of them together); what no route takes goes to the listener's pool",
            );
            continue;
        }
        let header = match &r.header {
            None => None,
            Some(h) => match check_header(c, h.get_ref()) {
                Some(m) => Some(m),
                None => continue,
            },
        };
        if let Some(sp) = &r.strip_prefix {
            if *sp.get_ref() && r.path_prefix.is_none() {
                c.err(sp, "strip_prefix needs a path_prefix to strip");
                continue;
            }
        }
        let allow = r.allow.as_ref().map(|list| {
            list.get_ref()
                .iter()
                .filter_map(|n| match n.get_ref().parse::<Cidr>() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        c.err(n, format!("{e} in allow"));
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        // A value already reported above.
        if hosts.len() != written.len()
            || r.path_prefix.is_some() != path_prefix.is_some()
            || r.path.is_some() != path.is_some()
            || methods.len() != r.methods.as_ref().map_or(0, |l| l.get_ref().len())
            || allow.as_ref().map(Vec::len) != r.allow.as_ref().map(|l| l.get_ref().len())
        {
            continue;
        }
        let Some(to) = to else { continue };
        let route = Route {
            hosts,
            path_prefix,
            path,
            methods,
            header,
            strip_prefix: r.strip_prefix.as_ref().is_some_and(|b| *b.get_ref()),
            to,
            allow,
        };
        if let Some((_, at)) = out.iter().find(|(earlier, _)| earlier.covers(&route)) {
            let (line, col) = c.src.position(at.start);
            c.err(
                sr,
                format!(
                    "this route is never used: the route at line {line}, column {col} takes every request it would (the first route that matches wins; put the more specific one first)"
                ),
            );
            continue;
        }
        out.push((route, sr.span()));
    }
    out.into_iter().map(|(r, _)| r).collect()
}

/// A route's `path_prefix` or `path` (`what`) as written: a path starting with `/`, no
/// query, no spaces; in normal form on a listener that normalizes paths (else no request
/// could match it). `None` once the error is reported.
fn check_path(
    c: &mut Checker<'_>,
    p: &Spanned<String>,
    what: &str,
    example: &str,
    normalize: bool,
) -> Option<String> {
    let v = p.get_ref();
    let ok = v.starts_with('/')
        && !v
            .bytes()
            .any(|b| b == b'?' || b == b'#' || b <= b' ' || b == 0x7f);
    if ok && normalize && !super::path::is_normal_path(v) {
        let mut n = Vec::new();
        let expected = match super::path::normalize_target(v.as_bytes(), &mut n) {
            Ok(_) => format!("expected \"{}\"", String::from_utf8_lossy(&n)),
            Err(_) => {
                "expected a path without \"\\\" whose every \"%\" has two hex digits".to_string()
            }
        };
        c.err(
            p,
            format!(
                "{what} \"{v}\" is not in normal form, and this listener matches paths in normal form (a route has allow, or normalize_path = true): no request would match it; {expected}"
            ),
        );
        None
    } else if ok {
        Some(v.clone())
    } else {
        c.err(
            p,
            format!(
                "bad {what} \"{v}\"; expected a path starting with \"/\" (no query, no spaces), e.g. {example}"
            ),
        );
        None
    }
}

/// A route's `header`: a field name (a token, not `Host`: a route has `host` for it) and
/// a value without control characters. `None` once the error is reported.
fn check_header(c: &mut Checker<'_>, h: &RawHeaderMatch) -> Option<HeaderMatch> {
    let name = h.name.get_ref();
    if name.is_empty() || !name.bytes().all(is_tchar) {
        c.err(
            &h.name,
            format!("bad header name \"{name}\"; expected a field name like \"X-Canary\""),
        );
        return None;
    }
    if name.eq_ignore_ascii_case("host") {
        c.err(
            &h.name,
            "a route matches the Host field with host (or hosts), which knows ports, trailing dots and absolute-form targets",
        );
        return None;
    }
    let value = match &h.value {
        Some(v)
            if v.get_ref()
                .bytes()
                .any(|b| b < b' ' && b != b'\t' || b == 0x7f) =>
        {
            c.err(v, "a header value cannot hold control characters");
            return None;
        }
        Some(v) if v.get_ref().trim() != v.get_ref() => {
            c.err(
                v,
                format!(
                    "header value \"{}\" starts or ends with whitespace, which a field value never does (it is trimmed); expected \"{}\"",
                    v.get_ref(),
                    v.get_ref().trim()
                ),
            );
            return None;
        }
        Some(v) => Some(v.get_ref().clone()),
        None => None,
    };
    Some(HeaderMatch {
        name: name.to_ascii_lowercase(),
        value,
    })
}

/// The methods every HTTP server knows (RFC 9110 and PATCH).
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A token character (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A method of a route's `methods`: a token (RFC 9110), and not a known method in the
/// wrong case (methods are case-sensitive: `get` is not `GET`).
fn check_method(m: &str) -> Result<(), String> {
    if m.is_empty() || !m.bytes().all(is_tchar) {
        return Err(format!(
            "bad method \"{m}\"; expected a method name like \"GET\" or \"POST\""
        ));
    }
    if let Some(k) = KNOWN_METHODS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(m) && **k != m)
    {
        return Err(format!(
            "method \"{m}\" is not \"{k}\": methods are case-sensitive, and clients send \"{k}\""
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
