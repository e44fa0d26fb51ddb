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
//! [[listener.route]]                # a guard: only these clients, others get a 403
//! path_prefix = "/admin/"
//! allow = ["10.0.0.0/8", "::1"]     # [] closes the path to everyone
//! pool = "admin"
//! ```
//!
//! A route matches when every condition it has holds: one of its hosts, its path or path
//! prefix, one of its methods (compared case-sensitively, as HAProxy's `method`; a route
//! for `GET` takes `HEAD` as well, as HAProxy's `METH_GET` and nginx's `limit_except GET`).
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
    /// [`target_path`]) with `method`.
    pub fn matches(&self, host: Option<&[u8]>, path: &[u8], method: &[u8]) -> bool {
        (self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h))))
            && self
                .path_prefix
                .as_ref()
                .is_none_or(|p| path.starts_with(p.as_bytes()))
            && self.path.as_ref().is_none_or(|p| path == p.as_bytes())
            && (self.methods.is_empty() || self.methods.iter().any(|m| takes_method(m, method)))
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
        host && path && methods
    }
}

/// A route's method `listed` takes a request's `method`: the same bytes, or `HEAD` for
/// `GET` (a HEAD asks for what a GET would get).
fn takes_method(listed: &str, method: &[u8]) -> bool {
    listed.as_bytes() == method || (method == b"HEAD" && listed == "GET")
}

/// The first of `routes` that takes a request with the `Host` value (or absolute-form
/// authority) `host`, the request target `target` and `method`; `None`: the listener's
/// pool.
pub fn pick(routes: &[Route], host: Option<&[u8]>, target: &[u8], method: &[u8]) -> Option<usize> {
    if routes.is_empty() {
        return None;
    }
    let host = host.map(host_name);
    let path = target_path(target);
    routes.iter().position(|r| r.matches(host, path, method))
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
        if written.is_empty() && r.path_prefix.is_none() && r.path.is_none() && r.methods.is_none()
        {
            c.err(
                sr,
                "a route needs a condition: host, path_prefix or path, methods (any of them together); what no route takes goes to the listener's pool",
            );
            continue;
        }
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
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: Option<&str>, pool: usize) -> Route {
        Route {
            hosts: host
                .map(|h| HostPattern::parse(h).expect("valid host"))
                .into_iter()
                .collect(),
            path_prefix: prefix.map(str::to_string),
            path: None,
            methods: Vec::new(),
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
            pick(&routes, host.map(str::as_bytes), target.as_bytes(), b"GET")
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
        assert_eq!(pick(&[], Some(b"a"), b"/", b"GET"), None);
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
                method.as_bytes(),
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
        let mut all = Vec::new();
        for h in patterns {
            for p in prefixes {
                for e in exact.into_iter().filter(|e| e.is_none() || p.is_none()) {
                    for ms in method_sets {
                        let mut r = route(h, p, 0);
                        r.path = e.map(str::to_string);
                        r.methods = ms.iter().map(|m| m.to_string()).collect();
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
                            let h = h.map(str::as_bytes);
                            let (p, m) = (p.as_bytes(), m.as_bytes());
                            !b.matches(h, p, m) || a.matches(h, p, m)
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
        assert!(
            two.matches(Some(b"other.org"), b"/", b"GET")
                && two.matches(Some(b"a.example.com"), b"/", b"GET")
        );
        assert!(
            !two.matches(Some(b"b.example.com"), b"/", b"GET") && !two.matches(None, b"/", b"GET")
        );
        assert!(!route(Some("x.org"), None, 0).covers(&route(None, Some("/"), 0)));
    }
}
