//! Real backends (hyper servers on loopback, in this process), the real `rampart` binary,
//! and small clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_testkit::{free_port, rampart_bin, wait_port, Proc, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

/// An HTTP backend that answers with its name; can be slowed, made unhealthy, killed.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub delay_ms: Arc<AtomicU64>,
    pub healthy: Arc<AtomicBool>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        // Bound on port 0, not on a port picked first: another test (or process) may take
        // a picked port before it is bound.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(name, listener)
    }

    fn serve(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let b = Backend {
            name: name.to_string(),
            addr,
            hits: Arc::new(AtomicU64::new(0)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            healthy: Arc::new(AtomicBool::new(true)),
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        let state = Arc::new(BackendState {
            name: Bytes::from(name.to_string()),
            hits: b.hits.clone(),
            delay_ms: b.delay_ms.clone(),
            healthy: b.healthy.clone(),
        });
        let tasks = b.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let h = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
                tasks.lock().unwrap().push(h.abort_handle());
            }
        });
        b.tasks.lock().unwrap().push(accept.abort_handle());
        b
    }

    /// Stop listening and drop every open connection (like a SIGKILL of the server).
    pub fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

struct BackendState {
    name: Bytes,
    hits: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

impl BackendState {
    async fn handle(&self, mut req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        if path == "/health" {
            return if self.healthy.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ok")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "sick")
            };
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        // `/no-upgrade` declines an upgrade: an ordinary answer, the connection stays HTTP.
        if req.headers().contains_key(hyper::header::UPGRADE) && path != "/no-upgrade" {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 4096];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "");
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "Upgrade".parse().unwrap());
            return r;
        }
        if path == "/upload" {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
                }
            }
            return text(StatusCode::OK, n.to_string());
        }
        // A path with a `target` segment: the request target as this server got it.
        if path.split('/').any(|s| s == "target") {
            let pq = req.uri().path_and_query().map_or("", |p| p.as_str());
            return text(StatusCode::OK, pq.to_string());
        }
        if path == "/headers" {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            return text(StatusCode::OK, out);
        }
        let d = self.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if path == "/fail" {
            return text(StatusCode::INTERNAL_SERVER_ERROR, self.name.clone());
        }
        text(StatusCode::OK, self.name.clone())
    }
}

/// A TCP backend that greets with its name and then echoes.
pub struct EchoBackend {
    pub addr: SocketAddr,
    task: AbortHandle,
}

impl EchoBackend {
    pub async fn start(name: &str) -> EchoBackend {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let greeting = format!("{name}\n");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if tcp.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        })
        .abort_handle();
        EchoBackend { addr, task }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running `rampart lb` process (killed on drop) and its config directory.
pub struct Lb {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Holds the config file and the log for the process's lifetime.
    _dir: TempDir,
}

impl Lb {
    /// Start `rampart lb --config` with `config`, where `{LISTEN}` is replaced by a free address.
    pub async fn start(config: &str) -> Lb {
        Lb::start_threads(config, 2).await
    }

    /// [`Lb::start`] with `threads` workers. With one, connections are accepted (and
    /// balanced) in the order they were made; with more, the probe connection that waits
    /// for the port may be accepted by another worker after the test's first connections.
    pub async fn start_threads(config: &str, threads: usize) -> Lb {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("lb.toml");
        std::fs::write(&path, config.replace("{LISTEN}", &addr.to_string())).unwrap();
        let mut cmd = Command::new(rampart_bin());
        cmd.arg("lb")
            .arg("--config")
            .arg(&path)
            .arg("--threads")
            .arg(threads.to_string());
        cmd.env("RUST_LOG", "info,rampart_lb=debug");
        cmd.env("RUST_BACKTRACE", "1");
        let proc = Proc::spawn("rampart lb", cmd, &dir.path().join("lb.log"));
        let lb = Lb {
            proc,
            addr,
            _dir: dir,
        };
        let a = lb.addr;
        let up = tokio::task::spawn_blocking(move || wait_port(a, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(
            up,
            "rampart lb did not listen on {a}:\n{}",
            lb.proc.log_text()
        );
        lb
    }

    /// The config file the balancer was started with (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("lb.toml")
    }

    /// Write `config` (with `{LISTEN}` replaced), send SIGHUP and wait until the process
    /// says how the reload ended: `Ok` when applied, `Err(log)` when refused (the log
    /// then names why).
    pub async fn reload_with(&self, config: &str) -> Result<(), String> {
        let ended = |t: &str| {
            t.matches("configuration reloaded").count() + t.matches("reload refused").count()
        };
        let before = ended(&self.proc.log_text());
        let text = config.replace("{LISTEN}", &self.addr.to_string());
        std::fs::write(self.config_path(), text).unwrap();
        self.proc.signal(nix::sys::signal::Signal::SIGHUP);
        let done = wait_for(
            || ended(&self.proc.log_text()) > before,
            Duration::from_secs(10),
        )
        .await;
        let log = self.proc.log_text();
        assert!(done, "the reload did not end: {log}");
        let last = log.rfind("configuration reloaded").unwrap_or(0);
        match log.rfind("reload refused") {
            Some(r) if r > last => Err(log),
            _ => Ok(()),
        }
    }

    /// Resident memory of the rampart process in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

/// A keep-alive HTTP/1.1 client connection, optionally from a given local address.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let tcp = TcpStream::connect(addr).await?;
        Client::over(tcp).await
    }

    /// Connect from `local_ip` (e.g. 127.0.0.7), for source-IP hashing.
    pub async fn connect_from(addr: SocketAddr, local_ip: &str) -> std::io::Result<Client> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(format!("{local_ip}:0").parse().unwrap())?;
        let tcp = sock.connect(addr).await?;
        Client::over(tcp).await
    }

    async fn over(tcp: TcpStream) -> std::io::Result<Client> {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    /// Whether the connection can take a request (false once the server closed it, e.g.
    /// after answering with `Connection: close`).
    pub async fn usable(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    /// GET `path`: (status, body).
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), hyper::Error> {
        self.request(
            Request::get(path)
                .header("host", "lb.test")
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    pub async fn request(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<(u16, String), hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One GET over a fresh connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = Client::connect(addr).await.expect("connect to the lb");
    c.get(path).await.expect("GET through the lb")
}

/// A pool's `servers = [...]` line for these backends, with weights.
pub fn servers(backends: &[(&Backend, u32)]) -> String {
    let items: Vec<String> = backends
        .iter()
        .map(|(b, w)| {
            format!(
                "{{ name = \"{}\", address = \"{}\", weight = {w} }}",
                b.name, b.addr
            )
        })
        .collect();
    format!("servers = [{}]", items.join(", "))
}

/// A config with one HTTP listener in front of one pool; `pool_extra` goes into the pool.
pub fn http_config(algorithm: &str, servers_line: &str, pool_extra: &str) -> String {
    format!(
        r#"
[[listener]]
name = "web"
address = "{{LISTEN}}"
pool = "app"

[[pool]]
name = "app"
algorithm = "{algorithm}"
{servers_line}
{pool_extra}
"#
    )
}

/// Poll `f` every 20 ms until it holds or `timeout` passes (then one last look).
pub async fn wait_for(mut f: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// Read from `s` until `done` says the text so far is complete, the peer closes, or 5 s
/// pass: what was read. Never one `read()` taken as a whole answer.
pub async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&String::from_utf8_lossy(&got)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}
