//! `rampart web`: the web and application server behind the balancer.
//!
//! One node serves static files from its root folder, proxies everything else to an
//! external application server when one is configured (`upstream`), or runs the built-in
//! guestbook on PostgreSQL (through `rampart-dbroute`) when a database is configured.
//! `/healthz` is liveness, `/readyz` readiness (a writable primary is known when a
//! database is configured, or was within the write hold of a failover under way; and the
//! node is not draining), `/metrics` Prometheus.
//! Every response names the node in the `X-Served-By` header (name configurable).
//!
//! Shutdown on SIGTERM/SIGINT: mark not ready and deregister, wait `drain` so the
//! balancers stop sending, then stop accepting and finish the requests in flight.

pub mod files;
pub mod guestbook;
mod h1;
pub mod metrics;
pub mod mime;
pub mod proxy;
pub mod register;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use rampart_dbroute::{ConnParams, Router as DbRouter, RouterConfig, TopologySource};
use rampart_topology::web::{DbTopology, WebConfig};

pub use rampart_topology::web;

use files::{Miss, StaticFiles};
use guestbook::Guestbook;
use metrics::{Class, Kind, KindLabel, Metrics, ReqLabels, RoleLabel};
use proxy::Proxy;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("static root {path}: {source}")]
    Root {
        path: String,
        source: std::io::Error,
    },
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("database TLS: {0}")]
    DbTls(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("serve: {0}")]
    Serve(std::io::Error),
    #[error("install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Shared state of one node.
pub struct Node {
    pub name: String,
    served_by: HeaderName,
    served_by_value: HeaderValue,
    files: StaticFiles,
    proxy: Option<Proxy>,
    pub guestbook: Option<Arc<Guestbook>>,
    draining: AtomicBool,
    pub metrics: Metrics,
    /// A request head must arrive within this (fast path: else 408; hyper's header timer).
    header_read_timeout: Duration,
    /// A keep-alive connection idle this long, or a client reading nothing this long, is closed.
    idle_timeout: Duration,
    /// HTTPS on the listener ([`tls`]): plain HTTP then gets only the admin paths.
    pub tls: Option<tls::NodeTls>,
}

/// How a request arrived (a request extension set for every request hyper serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

/// The paths served in plain HTTP on a TLS listener (and never counted as traffic).
pub(crate) fn is_admin_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

impl Node {
    /// Is the node ready for traffic?
    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        match &self.guestbook {
            Some(gb) => gb.can_serve(),
            None => true,
        }
    }

    /// Stop answering ready (the first step of a graceful shutdown).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Build a node's state; starts the database router (and migrations) when configured.
/// Must run inside a tokio runtime.
pub fn build_node(cfg: &WebConfig) -> Result<Arc<Node>, WebError> {
    let files = StaticFiles::new(&cfg.root).map_err(|source| WebError::Root {
        path: cfg.root.display().to_string(),
        source,
    })?;
    let tls = cfg.tls.as_ref().map(tls::NodeTls::new).transpose()?;
    let guestbook = match (&cfg.upstream, &cfg.database) {
        (None, Some(db)) => {
            let source = match &db.topology {
                DbTopology::Agents(a) => TopologySource::Agents(a.clone()),
                DbTopology::Nodes(n) => TopologySource::Static(n.clone()),
                DbTopology::Etcd {
                    endpoints,
                    cluster,
                    agents,
                } => TopologySource::Etcd {
                    endpoints: endpoints.clone(),
                    cluster: cluster.clone(),
                    agents: agents.clone(),
                },
            };
            let mut rc = RouterConfig::new(source);
            rc.conn = ConnParams {
                user: db.user.clone(),
                dbname: db.dbname.clone(),
                password: db.password.clone(),
                application_name: format!("rampart-web-{}", cfg.name),
                // One bound for connecting and for every call: a frozen node costs
                // that, then the write goes elsewhere (see guestbook::WRITE_HOLD).
                connect_timeout: db.call_timeout,
                call_timeout: db.call_timeout,
                tls: match &db.tls_ca {
                    None => None,
                    Some(ca) => Some(
                        rampart_dbroute::tls::MakeRustls::from_ca_file(ca)
                            .map_err(WebError::DbTls)?,
                    ),
                },
            };
            rc.max_lag_bytes = db.max_lag_bytes;
            rc.read_wait = db.read_wait;
            rc.pool_size = db.pool_size;
            let gb = Guestbook::new(DbRouter::start(rc));
            tokio::spawn(gb.clone().migrate_until_done());
            Some(gb)
        }
        _ => None,
    };
    Ok(Arc::new(Node {
        name: cfg.name.clone(),
        served_by: HeaderName::from_bytes(cfg.served_by_header.as_str().as_bytes())
            .unwrap_or(HeaderName::from_static("x-served-by")),
        served_by_value: HeaderValue::from_str(&cfg.name)
            .unwrap_or(HeaderValue::from_static("rampart-web")),
        files,
        proxy: cfg.upstream.as_deref().map(Proxy::new),
        guestbook,
        draining: AtomicBool::new(false),
        metrics: Metrics::new(),
        header_read_timeout: cfg.header_read_timeout,
        idle_timeout: cfg.idle_timeout,
        tls,
    }))
}

/// The HTTP application of a node.
pub fn app(node: Arc<Node>) -> axum::Router {
    let mut r = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(node.clone());
    if let Some(gb) = &node.guestbook {
        let g = axum::Router::new()
            .route("/", get(guestbook::page).post(guestbook::form_post))
            .route(
                "/api/messages",
                get(guestbook::api_list).post(guestbook::api_post),
            )
            .route("/api/messages/{id}", get(guestbook::api_get))
            .with_state(gb.clone());
        r = r.merge(g);
    }
    r.fallback(fallback)
        .with_state(node.clone())
        .layer(axum::middleware::from_fn_with_state(node, around))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else if node.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no writable primary\n").into_response()
    }
}

async fn metrics_handler(State(node): State<Arc<Node>>, headers: http::HeaderMap) -> Response {
    node.metrics.ready.set(node.is_ready() as i64);
    if let Some(gb) = &node.guestbook {
        let s = gb.router.stats();
        let m = &node.metrics;
        m.db_reads
            .get_or_create(&RoleLabel { role: "replica" })
            .set(s.reads_replica.load(Ordering::Relaxed) as i64);
        m.db_reads
            .get_or_create(&RoleLabel { role: "primary" })
            .set(s.reads_primary.load(Ordering::Relaxed) as i64);
        m.db_reads_waited
            .set(s.reads_waited.load(Ordering::Relaxed) as i64);
        m.db_writes.set(s.writes.load(Ordering::Relaxed) as i64);
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = rampart_metrics::respond_with_host(accept, node.metrics.encode());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Static files first; then the upstream (if any); else 404.
async fn fallback(State(node): State<Arc<Node>>, req: Request) -> Response {
    let is_read = req.method() == Method::GET || req.method() == Method::HEAD;
    if is_read {
        match node
            .files
            .serve(req.method(), req.uri().path(), req.headers())
            .await
        {
            Ok(r) => return r,
            Err(Miss::BadPath) => return plain(StatusCode::BAD_REQUEST, "bad path\n"),
            Err(Miss::NotFound) => {}
        }
    }
    if let Some(p) = &node.proxy {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        return p.forward(req, peer).await;
    }
    if is_read {
        plain(StatusCode::NOT_FOUND, "not found\n")
    } else {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// Around every request: the X-Served-By header and the request metrics.
async fn around(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if node.tls.is_some()
        && req.extensions().get::<Transport>() != Some(&Transport::Tls)
        && !is_admin_path(path)
    {
        // nginx's answer to plain HTTP on an HTTPS port; the page never leaves in clear.
        let mut r = plain(
            StatusCode::BAD_REQUEST,
            "this listener serves HTTPS; plain HTTP gets only /healthz, /readyz and /metrics\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        node.metrics
            .requests
            .get_or_create(&ReqLabels {
                kind: Kind::Admin,
                class: Class::C4xx,
            })
            .inc();
        return r;
    }
    let kind = if is_admin_path(path) {
        Kind::Admin
    } else if node.guestbook.is_some() && (path == "/" || path.starts_with("/api/")) {
        Kind::App
    } else if node.proxy.is_some() && req.method() != Method::GET && req.method() != Method::HEAD {
        Kind::Proxy
    } else {
        Kind::Static
    };
    let started = Instant::now();
    node.metrics.in_flight.inc();
    let mut resp = next.run(req).await;
    node.metrics.in_flight.dec();
    node.metrics
        .duration
        .get_or_create(&KindLabel { kind })
        .observe(started.elapsed().as_secs_f64());
    node.metrics
        .requests
        .get_or_create(&ReqLabels {
            kind,
            class: Class::of(resp.status().as_u16()),
        })
        .inc();
    resp.headers_mut()
        .insert(node.served_by.clone(), node.served_by_value.clone());
    resp
}

/// Serve `node` on `listener` until `shutdown` resolves, then finish in-flight requests
/// (bounded by `grace`). Static files take the HTTP/1.1 fast path of [`h1`]; everything
/// else is served by hyper and the axum [`app`].
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), WebError> {
    let shared = Arc::new(h1::Shared::new(node.clone(), app(node)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(h1::connection(shared.clone(), stream, peer, stop_rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors or similar: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(());
    tokio::select! {
        _ = stop_tx.closed() => Ok(()),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish in time; closing");
            Ok(())
        }
    }
}

/// Hooks around a node's life, for registration with the balancers.
pub trait Lifecycle: Send + Sync + 'static {
    /// Called once the listener is bound and the node serves.
    fn started(
        &self,
        node: &Arc<Node>,
        addr: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// Called first on shutdown, before the drain wait (deregister here).
    fn stopping(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// No registration (quick mode, or no etcd configured).
pub struct NoRegistration;

impl Lifecycle for NoRegistration {
    async fn started(&self, _: &Arc<Node>, _: SocketAddr) {}
    async fn stopping(&self) {}
}

/// Run a node until SIGTERM or SIGINT, on `threads` worker threads (1 = a single-threaded
/// runtime). Blocks.
pub fn run(cfg: WebConfig, threads: usize) -> Result<(), WebError> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(WebError::Runtime)?;
    match cfg.registration.clone() {
        Some(reg) => {
            let l = register::EtcdRegistration::new(reg, &cfg.name);
            rt.block_on(run_async(cfg, l))
        }
        None => rt.block_on(run_async(cfg, NoRegistration)),
    }
}

/// The body of [`run`], with a registration hook.
pub async fn run_async<L: Lifecycle>(cfg: WebConfig, lifecycle: L) -> Result<(), WebError> {
    use tokio::signal::unix::{signal, SignalKind};
    // SIGHUP re-reads the certificate: handled before the port answers (its default
    // action would end the node).
    let mut hup = signal(SignalKind::hangup()).map_err(WebError::Signals)?;
    let node = build_node(&cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| WebError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(WebError::Serve)?;
    let mut term = signal(SignalKind::terminate()).map_err(WebError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(WebError::Signals)?;
    tracing::info!(name = %cfg.name, %addr, root = %cfg.root.display(), tls = cfg.tls.is_some(),
        upstream = cfg.upstream.as_deref().unwrap_or("-"),
        database = cfg.database.is_some(), "rampart web serving");
    let reloads = {
        let node = node.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match &node.tls {
                    Some(t) => match t.reload() {
                        Ok(()) => tracing::info!("SIGHUP: certificate reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: certificate reload refused; the one in use stays")
                        }
                    },
                    None => tracing::info!(
                        "SIGHUP: nothing to reload here (no TLS; other settings take effect at a restart)"
                    ),
                }
            }
        })
    };
    lifecycle.started(&node, addr).await;
    let drain = cfg.drain;
    let n2 = node.clone();
    let lifecycle = Arc::new(lifecycle);
    let l2 = lifecycle.clone();
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
        n2.start_draining();
        l2.stopping().await;
        tokio::time::sleep(drain).await;
        tracing::info!("no longer accepting; finishing requests in flight");
    };
    let r = serve(node, listener, shutdown, Duration::from_secs(30)).await;
    reloads.abort();
    tracing::info!("rampart web stopped");
    r
}
