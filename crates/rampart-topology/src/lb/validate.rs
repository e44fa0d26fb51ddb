//! From the file as written ([`super::raw`]) to the checked runtime types: every problem
//! found in one run, each as `file:line:col` and what was expected.

use super::*;

/// Collects diagnostics while validating, so one run reports every problem.
pub(super) struct Checker<'a> {
    pub(super) src: &'a Source,
    pub(super) errors: Vec<Diagnostic>,
}

impl Checker<'_> {
    pub(super) fn err<T>(&mut self, at: &Spanned<T>, msg: impl Into<String>) {
        self.errors.push(self.src.error_at(at.span(), msg));
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(s) = v else { return default };
        match parse_duration(s.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.err(s, e);
                default
            }
        }
    }

    /// A positive duration (a zero timeout or interval makes no sense).
    pub(super) fn positive_duration(
        &mut self,
        v: &Option<Spanned<String>>,
        default: Duration,
        what: &str,
    ) -> Duration {
        let d = self.duration(v, default);
        if d.is_zero() {
            if let Some(s) = v {
                self.err(s, format!("{what} must be greater than zero"));
            }
            return default;
        }
        d
    }

    pub(super) fn int(
        &mut self,
        v: &Option<Spanned<i64>>,
        default: i64,
        min: i64,
        max: i64,
        what: &str,
    ) -> i64 {
        let Some(n) = v else { return default };
        let x = *n.get_ref();
        if x < min || x > max {
            self.err(
                n,
                format!("{what} must be between {min} and {max}, got {x}"),
            );
            return default.clamp(min, max);
        }
        x
    }

    fn socket_addr(&mut self, v: &Spanned<String>, what: &str) -> Option<SocketAddr> {
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    v,
                    format!(
                        "bad {what} address \"{}\"; expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }
}

impl LbConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<LbConfig, ConfigError> {
        let src = Source::read(path)?;
        LbConfig::from_source(&src)
    }

    /// Parse and validate a config file's text.
    pub fn from_source(src: &Source) -> Result<LbConfig, ConfigError> {
        let raw: RawLbFile = src.parse()?;
        LbConfig::validate(src, &raw)
    }

    /// Validate a parsed file into the runtime type; every problem is reported.
    pub fn validate(src: &Source, raw: &RawLbFile) -> Result<LbConfig, ConfigError> {
        let mut c = Checker {
            src,
            errors: Vec::new(),
        };

        // Pools first: listeners refer to them by name.
        let mut pool_index: HashMap<&str, usize> = HashMap::new();
        let mut pools = Vec::new();
        for rp in &raw.pool {
            let name = rp.name.get_ref().as_str();
            if name.is_empty() {
                c.err(&rp.name, "pool name must not be empty");
            }
            if pool_index.insert(name, pools.len()).is_some() {
                c.err(&rp.name, format!("duplicate pool name \"{name}\""));
            }
            pools.push(validate_pool(&mut c, rp));
        }

        let unknown_pool = |name: &str| {
            let mut known: Vec<&str> = raw.pool.iter().map(|p| p.name.get_ref().as_str()).collect();
            known.sort_unstable();
            let known = if known.is_empty() {
                "no pool is defined (add a [[pool]])".to_string()
            } else {
                format!("defined pools: {}", known.join(", "))
            };
            format!("unknown pool \"{name}\"; {known}")
        };
        let mut listeners = Vec::new();
        let mut listener_names: HashMap<&str, ()> = HashMap::new();
        let mut listener_addrs: HashMap<SocketAddr, ()> = HashMap::new();
        for rl in &raw.listener {
            let name = rl.name.get_ref().as_str();
            if name.is_empty() {
                c.err(&rl.name, "listener name must not be empty");
            }
            if listener_names.insert(name, ()).is_some() {
                c.err(&rl.name, format!("duplicate listener name \"{name}\""));
            }
            let address = c.socket_addr(&rl.address, "listener");
            if let Some(a) = address {
                if listener_addrs.insert(a, ()).is_some() {
                    c.err(&rl.address, format!("duplicate listener address {a}"));
                }
            }
            let mode = match &rl.mode {
                None => Mode::Http,
                Some(m) => match m.get_ref().parse::<Mode>() {
                    Ok(m) => m,
                    Err(e) => {
                        c.err(m, e);
                        Mode::Http
                    }
                },
            };
            let pool = match pool_index.get(rl.pool.get_ref().as_str()) {
                Some(i) => {
                    if mode == Mode::Tcp
                        && pools
                            .get(*i)
                            .and_then(Option::as_ref)
                            .is_some_and(|p: &Pool| p.tls.is_some())
                    {
                        c.err(
                            &rl.pool,
                            "a pool with tls serves HTTP listeners only (TLS to the servers is for mode = \"http\")",
                        );
                    }
                    Some(*i)
                }
                None => {
                    c.err(&rl.pool, unknown_pool(rl.pool.get_ref()));
                    None
                }
            };
            let guarded = rl.route.iter().find(|r| r.get_ref().allow.is_some());
            let normalize_path = match (&rl.normalize_path, guarded) {
                (Some(n), Some(g)) if !*n.get_ref() => {
                    let (line, col) = c.src.position(g.span().start);
                    c.err(
                        n,
                        format!(
                            "normalize_path = false, but the route at line {line}, column {col} has allow: a guard on a path needs paths in normal form (or \"//admin\", \"/%61dmin\" and \"/x/../admin\" walk around a guard on \"/admin\")"
                        ),
                    );
                    false
                }
                (Some(n), _) => {
                    if *n.get_ref() && mode != Mode::Http {
                        c.err(n, "normalize_path needs mode = \"http\"");
                    }
                    *n.get_ref()
                }
                (None, g) => g.is_some(),
            };
            let routes = route::validate(
                &mut c,
                &rl.route,
                mode,
                &pool_index,
                &unknown_pool,
                normalize_path,
            );
            let max_connections = rl
                .max_connections
                .as_ref()
                .map(|_| c.int(&rl.max_connections, 1, 1, 1_000_000, "max_connections") as usize);
            let t = rl.timeouts.as_ref();
            let header_read_timeout = c.positive_duration(
                &t.and_then(|t| t.header_read.clone()),
                DEFAULT_HEADER_READ,
                "header_read",
            );
            let idle_timeout =
                c.positive_duration(&t.and_then(|t| t.idle.clone()), DEFAULT_CLIENT_IDLE, "idle");
            let mut tls = None;
            let mut redirect = None;
            if let Some(rt) = &rl.tls {
                if mode != Mode::Http {
                    c.err(
                        rt,
                        "tls needs mode = \"http\" (TLS is terminated for HTTP listeners)",
                    );
                }
                let t = rt.get_ref();
                let checked = tls::listener_tls(&mut c, rt);
                if let Some(from) = &t.redirect_from {
                    if let Some(a) = c.socket_addr(from, "redirect_from") {
                        if listener_addrs.insert(a, ()).is_some() {
                            c.err(from, format!("duplicate listener address {a}"));
                        }
                        let status = match &t.redirect_status {
                            None => 308,
                            Some(st) if matches!(*st.get_ref(), 301 | 308) => *st.get_ref() as u16,
                            Some(st) => {
                                c.err(
                                    st,
                                    format!(
                                        "redirect_status must be 301 or 308, got {}",
                                        st.get_ref()
                                    ),
                                );
                                308
                            }
                        };
                        redirect = Some((a, status));
                    }
                } else if let Some(st) = &t.redirect_status {
                    c.err(st, "redirect_status needs redirect_from = \"ADDR\"");
                }
                tls = Some(checked);
            }
            let firewall = rl.firewall.as_ref().map(|f| {
                if mode != Mode::Http {
                    if let Some(r) = &f.rate {
                        c.err(r, "rate limits need mode = \"http\" (they count requests)");
                    }
                }
                firewall::validate(&mut c, f, src.file.parent().unwrap_or(Path::new("")))
            });
            if let (Some(address), Some(pool)) = (address, pool) {
                listeners.push(Listener {
                    name: name.to_string(),
                    address,
                    mode,
                    pool,
                    max_connections,
                    header_read_timeout,
                    idle_timeout,
                    tls,
                    redirect_https: None,
                    firewall,
                    routes,
                    normalize_path,
                });
                if let Some((from, status)) = redirect {
                    listeners.push(Listener {
                        name: format!("{name}-redirect"),
                        address: from,
                        mode: Mode::Http,
                        pool,
                        max_connections,
                        header_read_timeout,
                        idle_timeout,
                        tls: None,
                        redirect_https: Some(RedirectHttps {
                            port: address.port(),
                            status,
                        }),
                        firewall: None,
                        routes: Vec::new(),
                        normalize_path: false,
                    });
                }
            }
        }
        if raw.listener.is_empty() {
            c.errors.push(
                src.error("no listener is defined; add a [[listener]] with name, address and pool"),
            );
        }

        let max_connections = raw
            .limits
            .as_ref()
            .map(|l| {
                c.int(
                    &l.max_connections,
                    DEFAULT_MAX_CONNECTIONS as i64,
                    1,
                    10_000_000,
                    "max_connections",
                )
            })
            .unwrap_or(DEFAULT_MAX_CONNECTIONS as i64) as usize;

        let mut trusted_proxies = Vec::new();
        for t in raw.forwarded.iter().flat_map(|f| f.trusted_proxies.iter()) {
            match t.get_ref().parse::<Cidr>() {
                Ok(n) => trusted_proxies.push(n),
                Err(e) => c.err(t, e),
            }
        }
        let mut forwarded_headers = ForwardedHeaders::default();
        if let Some(list) = raw.forwarded.as_ref().and_then(|f| f.headers.as_ref()) {
            forwarded_headers = ForwardedHeaders::NONE;
            let mut seen: Vec<String> = Vec::new();
            for name in list.get_ref() {
                let lower = name.get_ref().to_ascii_lowercase();
                if seen.contains(&lower) {
                    c.err(name, format!("\"{}\" is listed twice", name.get_ref()));
                } else if !forwarded_headers.set(&lower) {
                    c.err(
                        name,
                        format!(
                            "unknown forwarding header \"{}\"; expected some of \"{}\"",
                            name.get_ref(),
                            ForwardedHeaders::NAMES.join("\", \"")
                        ),
                    );
                }
                seen.push(lower);
            }
        }
        if trusted_proxies.is_empty() {
            // Nobody's X-Forwarded-For would be believed: the setting would do nothing.
            for f in raw.listener.iter().filter_map(|l| l.firewall.as_ref()) {
                if let Some(v) = f
                    .client_address
                    .as_ref()
                    .filter(|v| v.get_ref() == "x-forwarded-for")
                {
                    c.err(
                        v,
                        "client_address = \"x-forwarded-for\" needs the proxies it believes: \
                         forwarded = { trusted_proxies = [\"10.0.0.0/8\"] }",
                    );
                }
            }
        }

        let admin = raw.admin.as_ref().and_then(|a| validate_admin(&mut c, a));
        let grace = c.duration(
            &raw.shutdown.as_ref().and_then(|s| s.grace.clone()),
            DEFAULT_GRACE,
        );
        let access_log = raw.access_log.as_ref().map(|a| AccessLog {
            format: match &a.format {
                None => AccessLogFormat::Json,
                Some(f) => match f.get_ref().as_str() {
                    "json" => AccessLogFormat::Json,
                    "logfmt" => AccessLogFormat::Logfmt,
                    other => {
                        c.err(
                            f,
                            format!("unknown access log format \"{other}\"; expected \"json\" or \"logfmt\""),
                        );
                        AccessLogFormat::Json
                    }
                },
            },
            path: a
                .path
                .as_ref()
                .map(|p| resolve(c.src, p.get_ref())),
        });

        let listener_names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let vrrp = crate::vrrp::validate(src, &raw.vrrp, &listener_names, &mut c.errors);

        let pools: Vec<Pool> = pools.into_iter().flatten().collect();
        // Report in file order; problems without a position last.
        c.errors.sort_by_key(|d| (d.line == 0, d.line, d.col));
        if c.errors.is_empty() {
            Ok(LbConfig {
                listeners,
                pools,
                max_connections,
                trusted_proxies,
                forwarded_headers,
                admin,
                grace,
                access_log,
                vrrp,
            })
        } else {
            Err(ConfigError {
                diagnostics: c.errors,
            })
        }
    }

    /// The quick mode: one listener in front of one pool, everything else default.
    pub fn quick(
        listen: SocketAddr,
        backends: &[SocketAddr],
        algorithm: Algorithm,
        mode: Mode,
        check: CheckKind,
    ) -> Result<LbConfig, String> {
        if backends.is_empty() {
            return Err("at least one --backend is required".into());
        }
        let mut servers: Vec<Server> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            if servers.iter().any(|s| s.address == *b) {
                return Err(format!("--backend {b} is given twice"));
            }
            servers.push(Server {
                name: format!("s{}", i + 1),
                address: *b,
                weight: 1,
            });
        }
        Ok(LbConfig {
            listeners: vec![Listener {
                name: "main".into(),
                address: listen,
                mode,
                pool: 0,
                max_connections: None,
                header_read_timeout: DEFAULT_HEADER_READ,
                idle_timeout: DEFAULT_CLIENT_IDLE,
                tls: None,
                redirect_https: None,
                firewall: None,
                routes: Vec::new(),
                normalize_path: false,
            }],
            pools: vec![Pool {
                name: "backends".into(),
                algorithm,
                servers,
                health_check: HealthCheck::with_kind(check),
                passive_failures: 3,
                outlier: OutlierConfig::default(),
                panic_threshold: 0,
                slow_start: Duration::ZERO,
                lrt_decay: DEFAULT_LRT_DECAY,
                lrt_penalty: None,
                max_in_flight: None,
                queue: QueueConfig::default(),
                retries: RetryConfig::default(),
                timeouts: PoolTimeouts::default(),
                discovery: None,
                tls: None,
            }],
            max_connections: DEFAULT_MAX_CONNECTIONS,
            trusted_proxies: Vec::new(),
            forwarded_headers: ForwardedHeaders::default(),
            admin: None,
            grace: DEFAULT_GRACE,
            access_log: None,
            vrrp: Vec::new(),
        })
    }
}

impl AdminConfig {
    /// An admin listener on `address` for the command line: loopback clients only, no token.
    pub fn local(address: SocketAddr) -> AdminConfig {
        AdminConfig {
            address,
            token: None,
            allow: loopback_networks(),
        }
    }

    /// An admin listener whose every call needs the token in `file`: loopback clients
    /// only on a loopback address, any client (the token guards it, the firewall narrows
    /// who reaches it) on another.
    pub fn with_token_file(address: SocketAddr, file: std::path::PathBuf) -> AdminConfig {
        let allow = if address.ip().is_loopback() {
            loopback_networks()
        } else {
            ["0.0.0.0/0", "::/0"]
                .iter()
                .filter_map(|c| c.parse::<Cidr>().ok())
                .collect()
        };
        AdminConfig {
            address,
            token: Some(TokenSource::File(file)),
            allow,
        }
    }
}

/// A path from a config file, relative to that file's folder.
pub fn resolve_path(src: &Source, p: &str) -> std::path::PathBuf {
    resolve(src, p)
}

/// A path from the config, relative to the config file's folder.
fn resolve(src: &Source, p: &str) -> std::path::PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match src.file.parent() {
        Some(d) => d.join(p),
        None => p.to_path_buf(),
    }
}

fn loopback_networks() -> Vec<Cidr> {
    vec![
        Cidr {
            addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Cidr {
            addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ]
}

fn validate_admin(c: &mut Checker<'_>, a: &RawAdmin) -> Option<AdminConfig> {
    let address = c.socket_addr(&a.address, "admin")?;
    let token = match (&a.token_file, &a.token_env) {
        (Some(f), Some(_)) => {
            c.err(f, "give token_file or token_env, not both");
            None
        }
        (Some(f), None) => Some(TokenSource::File(resolve(c.src, f.get_ref()))),
        (None, Some(e)) => {
            if e.get_ref().is_empty() {
                c.err(e, "token_env must name an environment variable");
            }
            Some(TokenSource::Env(e.get_ref().clone()))
        }
        (None, None) => None,
    };
    let loopback = address.ip().is_loopback();
    if !loopback && token.is_none() && a.public_without_token != Some(true) {
        c.err(
            &a.address,
            format!(
                "admin address {address} is not loopback and no token is set; set token_file or token_env (or public_without_token = true to accept the risk)"
            ),
        );
    }
    let allow = match &a.allow {
        Some(list) => {
            let mut v = Vec::new();
            for n in list {
                match n.get_ref().parse::<Cidr>() {
                    Ok(n) => v.push(n),
                    Err(e) => c.err(n, e),
                }
            }
            v
        }
        None if loopback => loopback_networks(),
        None => vec![
            Cidr {
                addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                prefix: 0,
            },
            Cidr {
                addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                prefix: 0,
            },
        ],
    };
    Some(AdminConfig {
        address,
        token,
        allow,
    })
}

fn validate_pool(c: &mut Checker<'_>, rp: &RawPool) -> Option<Pool> {
    let algorithm = match &rp.algorithm {
        None => Algorithm::RoundRobin,
        Some(a) => match a.get_ref().parse::<Algorithm>() {
            Ok(a) => a,
            Err(_) => {
                let valid: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
                c.err(
                    a,
                    format!(
                        "unknown algorithm \"{}\"; valid algorithms: {}",
                        a.get_ref(),
                        valid.join(", ")
                    ),
                );
                Algorithm::RoundRobin
            }
        },
    };

    let mut servers = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, ()> = HashMap::new();
    let discovery = rp.discovery.as_ref().map(|d| {
        if d.etcd.get_ref().is_empty() {
            c.err(&d.etcd, "discovery needs at least one etcd endpoint");
        }
        for e in d.etcd.get_ref() {
            if !(e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://")) {
                c.err(
                    e,
                    format!(
                        "bad etcd endpoint \"{}\"; expected a URL such as \"http://127.0.0.1:2379\"",
                        e.get_ref()
                    ),
                );
            }
        }
        if d.cluster.get_ref().is_empty() {
            c.err(&d.cluster, "discovery cluster must not be empty");
        }
        Discovery {
            etcd: d.etcd.get_ref().iter().map(|e| e.get_ref().clone()).collect(),
            cluster: d.cluster.get_ref().clone(),
            service: d
                .service
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_else(|| rp.name.get_ref().clone()),
        }
    });
    if rp.servers.get_ref().is_empty() && discovery.is_none() {
        c.err(
            &rp.servers,
            format!("pool \"{}\" has no servers", rp.name.get_ref()),
        );
    }
    for (i, rs) in rp.servers.get_ref().iter().enumerate() {
        let name = match &rs.name {
            Some(n) => {
                if n.get_ref().is_empty() {
                    c.err(n, "server name must not be empty");
                }
                if names.insert(n.get_ref().clone(), ()).is_some() {
                    c.err(
                        n,
                        format!(
                            "duplicate server name \"{}\" in pool \"{}\"",
                            n.get_ref(),
                            rp.name.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => {
                let n = format!("s{}", i + 1);
                names.insert(n.clone(), ());
                n
            }
        };
        let address = c.socket_addr(&rs.address, "server");
        if let Some(a) = address {
            if addrs.insert(a, ()).is_some() {
                c.err(
                    &rs.address,
                    format!(
                        "duplicate server address {a} in pool \"{}\"",
                        rp.name.get_ref()
                    ),
                );
            }
        }
        let weight = c.int(&rs.weight, 1, 0, i64::from(MAX_WEIGHT), "weight") as u32;
        if let Some(address) = address {
            servers.push(Server {
                name,
                address,
                weight,
            });
        }
    }

    let health_check = match &rp.health_check {
        None => HealthCheck::with_kind(CheckKind::Tcp),
        Some(h) => {
            let d = HealthCheck::with_kind(CheckKind::Tcp);
            let kind = match h.kind.as_ref().map(|k| k.get_ref().as_str()) {
                None | Some("tcp") => CheckKind::Tcp,
                Some("none") => CheckKind::None,
                Some("http") => {
                    let path = match &h.path {
                        None => "/".to_string(),
                        Some(p) => {
                            if !p.get_ref().starts_with('/') {
                                c.err(
                                    p,
                                    format!(
                                        "health check path must start with '/', got \"{}\"",
                                        p.get_ref()
                                    ),
                                );
                            }
                            p.get_ref().clone()
                        }
                    };
                    let expect_status =
                        c.int(&h.expect_status, 200, 100, 599, "expect_status") as u16;
                    CheckKind::Http {
                        path,
                        expect_status,
                    }
                }
                Some(other) => {
                    if let Some(k) = &h.kind {
                        c.err(k, format!("unknown health check kind \"{other}\"; expected \"http\", \"tcp\" or \"none\""));
                    }
                    CheckKind::Tcp
                }
            };
            if !matches!(kind, CheckKind::Http { .. }) {
                if let Some(p) = &h.path {
                    c.err(p, "path is only used by kind = \"http\" health checks");
                }
            }
            HealthCheck {
                kind,
                interval: c.positive_duration(&h.interval, d.interval, "interval"),
                timeout: c.positive_duration(&h.timeout, d.timeout, "timeout"),
                rise: c.int(&h.rise, i64::from(d.rise), 1, 1000, "rise") as u32,
                fall: c.int(&h.fall, i64::from(d.fall), 1, 1000, "fall") as u32,
                jitter: c.duration(&h.jitter, d.jitter),
            }
        }
    };

    let passive_failures = c.int(&rp.passive_failures, 3, 0, 1000, "passive_failures") as u32;
    let d = OutlierConfig::default();
    let outlier = match &rp.outlier {
        None => d,
        Some(o) => {
            let pct = |c: &mut Checker, v: &Option<Spanned<i64>>, def: u32, what: &str| {
                c.int(v, i64::from(def), 0, 100, what) as u32
            };
            let base_ejection_time = c.positive_duration(
                &o.base_ejection_time,
                d.base_ejection_time,
                "base_ejection_time",
            );
            let max_ejection_time = match &o.max_ejection_time {
                // Unset: the default, or the base when the base is longer.
                None => d.max_ejection_time.max(base_ejection_time),
                Some(m) => {
                    let max = c.positive_duration(
                        &o.max_ejection_time,
                        d.max_ejection_time,
                        "max_ejection_time",
                    );
                    if max < base_ejection_time {
                        c.err(
                            m,
                            format!(
                                "max_ejection_time ({}) must not be shorter than base_ejection_time ({})",
                                m.get_ref(),
                                o.base_ejection_time.as_ref().map_or("30s", |b| b.get_ref().as_str())
                            ),
                        );
                    }
                    max.max(base_ejection_time)
                }
            };
            OutlierConfig {
                interval: c.positive_duration(&o.interval, d.interval, "outlier interval"),
                min_requests: c.int(
                    &o.min_requests,
                    i64::from(d.min_requests),
                    1,
                    1_000_000,
                    "min_requests",
                ) as u32,
                failure_percent: pct(c, &o.failure_percent, d.failure_percent, "failure_percent"),
                margin_percent: pct(c, &o.margin_percent, d.margin_percent, "margin_percent"),
                max_ejection_percent: pct(
                    c,
                    &o.max_ejection_percent,
                    d.max_ejection_percent,
                    "max_ejection_percent",
                ),
                base_ejection_time,
                max_ejection_time,
            }
        }
    };
    let panic_threshold = c.int(&rp.panic_threshold, 0, 0, 100, "panic_threshold") as u32;
    let slow_start = c.duration(&rp.slow_start, Duration::ZERO);
    let lrt_decay = c.positive_duration(&rp.lrt_decay, DEFAULT_LRT_DECAY, "lrt_decay");
    let lrt_penalty = rp
        .lrt_penalty
        .as_ref()
        .map(|_| c.positive_duration(&rp.lrt_penalty, DEFAULT_RESPONSE, "lrt_penalty"));
    let max_in_flight = rp
        .max_in_flight
        .as_ref()
        .map(|_| c.int(&rp.max_in_flight, 1, 1, 1_000_000, "max_in_flight") as u32);
    let dq = QueueConfig::default();
    let queue = match &rp.queue {
        None => dq,
        Some(q) => QueueConfig {
            size: c.int(&q.size, dq.size as i64, 0, 1_000_000, "queue size") as usize,
            timeout: c.positive_duration(&q.timeout, dq.timeout, "queue timeout"),
        },
    };
    let dr = RetryConfig::default();
    let retries = match &rp.retries {
        None => dr,
        Some(r) => {
            let budget_ratio = match &r.budget_ratio {
                None => dr.budget_ratio,
                Some(b) => {
                    let x = *b.get_ref();
                    if !(0.0..=10.0).contains(&x) {
                        c.err(
                            b,
                            format!("budget_ratio must be between 0.0 and 10.0, got {x}"),
                        );
                    }
                    x.clamp(0.0, 10.0)
                }
            };
            RetryConfig {
                attempts: c.int(
                    &r.attempts,
                    i64::from(dr.attempts),
                    0,
                    100,
                    "retry attempts",
                ) as u32,
                budget_ratio,
                min_per_sec: c.int(
                    &r.min_per_sec,
                    i64::from(dr.min_per_sec),
                    0,
                    1_000_000,
                    "min_per_sec",
                ) as u32,
            }
        }
    };
    let dt = PoolTimeouts::default();
    let timeouts = match &rp.timeouts {
        None => dt,
        Some(t) => PoolTimeouts {
            connect: c.positive_duration(&t.connect, dt.connect, "connect timeout"),
            response: c.positive_duration(&t.response, dt.response, "response timeout"),
            idle: c.positive_duration(&t.idle, dt.idle, "idle timeout"),
        },
    };

    if servers.is_empty() && discovery.is_none() {
        return None;
    }
    Some(Pool {
        name: rp.name.get_ref().clone(),
        algorithm,
        servers,
        health_check,
        passive_failures,
        outlier,
        panic_threshold,
        slow_start,
        lrt_decay,
        lrt_penalty,
        max_in_flight,
        queue,
        retries,
        timeouts,
        discovery,
        tls: rp.tls.as_ref().map(|t| tls::pool_tls(c, t)),
    })
}
