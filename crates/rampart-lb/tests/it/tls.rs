//! HTTPS: TLS termination with certificates made at test time by the `openssl` CLI, checked
//! with `openssl s_client` and `curl` (real clients, real handshakes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rampart_testkit::{free_port, rampart_bin, TempDir};

use crate::support::{Backend, Lb};

/// A self-signed certificate for `localhost` and 127.0.0.1 with common name `cn`.
fn make_cert(dir: &Path, cn: &str, cert: &str, key: &str) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-addext")
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .arg("-keyout")
        .arg(dir.join(key))
        .arg("-out")
        .arg(dir.join(cert))
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl req: {out:?}");
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run a client"))
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `openssl s_client` against `addr` with extra `args`; its combined output.
async fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.args(["10", "openssl", "s_client", "-brief", "-connect"])
        .arg(addr.to_string())
        .args(["-servername", "localhost"])
        .args(args)
        .stdin(std::process::Stdio::null());
    let o = run(c).await;
    (o.status.success(), text(&o))
}

/// `curl` to `https://localhost:PORT/PATH` trusting `ca`; (status line and headers and body,
/// HTTP version).
async fn curl(addr: SocketAddr, ca: &Path, path: &str, extra: &[&str]) -> String {
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "-m", "10", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", addr.port()))
        .args(extra)
        .args(["-w", "\nversion=%{http_version}\n"])
        .arg(format!("https://localhost:{}{path}", addr.port()));
    let o = run(c).await;
    assert!(o.status.success(), "curl: {}", text(&o));
    text(&o)
}

struct TlsLb {
    lb: Lb,
    dir: TempDir,
    redirect: SocketAddr,
}

impl TlsLb {
    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
}

async fn start(backend: &Backend) -> TlsLb {
    let dir = TempDir::new().unwrap();
    make_cert(dir.path(), "first", "cert.pem", "key.pem");
    let redirect: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = format!(
        r#"
[[listener]]
name = "web"
address = "{{LISTEN}}"
pool = "web"
tls = {{ cert = "{}", key = "{}", hsts = "365d", redirect_from = "{redirect}" }}

[[pool]]
name = "web"
servers = [{{ address = "{}" }}]
health_check = {{ kind = "none" }}
"#,
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
        backend.addr
    );
    let lb = Lb::start(&cfg).await;
    TlsLb { lb, dir, redirect }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_alpn_hsts_and_forwarded_proto() {
    let b = Backend::start("b").await;
    let t = start(&b).await;
    let ca = t.cert();
    let ca_s = ca.to_str().unwrap();
    let addr = t.lb.addr;

    // TLS 1.2 and 1.3 complete with a verified certificate.
    for (flag, want) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(addr, &[flag, "-CAfile", ca_s, "-verify_return_error"]).await;
        assert!(ok, "{flag}: {out}");
        assert!(
            out.contains(&format!("Protocol version: {want}")),
            "{flag}: {out}"
        );
        assert!(out.contains("CN = first"), "{out}");
    }
    // TLS 1.1 is refused by the server (the client is allowed to offer it).
    let (ok, out) = s_client(addr, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).await;
    assert!(
        !out.contains("CONNECTION ESTABLISHED") && !out.contains("Protocol version"),
        "TLS 1.1 was accepted: {out}"
    );
    assert!(!ok || out.contains("alert"), "{out}");
    assert!(
        out.contains("alert"),
        "expected a TLS alert from the server: {out}"
    );

    // ALPN: curl asks for h2 and gets HTTP/2; asked for HTTP/1.1 only, gets 1.1.
    let h2 = curl(addr, &ca, "/headers", &["--http2"]).await;
    assert!(h2.contains("version=2"), "{h2}");
    let h1 = curl(addr, &ca, "/headers", &["--http1.1"]).await;
    assert!(h1.contains("version=1.1"), "{h1}");
    for out in [&h2, &h1] {
        let lower = out.to_ascii_lowercase();
        assert!(
            lower.contains("strict-transport-security: max-age=31536000"),
            "{out}"
        );
        // The backend echoes what it received.
        assert!(lower.contains("x-forwarded-proto: https"), "{out}");
        assert!(lower.contains("x-forwarded-host: localhost:"), "{out}");
    }
    // Keep-alive over TLS: several requests on one connection.
    let many = curl(
        addr,
        &ca,
        "/a",
        &["--http1.1", &format!("https://localhost:{}/b", addr.port())],
    )
    .await;
    assert_eq!(many.matches("HTTP/1.1 200").count(), 2, "{many}");
    assert!(b.hits() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_listener_redirects_to_https() {
    let b = Backend::start("b").await;
    let t = start(&b).await;
    let mut c = Command::new("curl");
    c.args(["-sS", "-i", "-m", "10"])
        .arg(format!("http://localhost:{}/a/b?c=1", t.redirect.port()));
    let o = run(c).await;
    let out = text(&o);
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let want = format!("location: https://localhost:{}/a/b?c=1", t.lb.addr.port());
    assert!(out.to_ascii_lowercase().contains(&want), "{out}");
    assert_eq!(b.hits(), 0, "a redirect must not reach the backend");
    // Following it ends on the HTTPS listener.
    let mut c = Command::new("curl");
    c.args(["-sS", "-L", "-m", "10", "--cacert"])
        .arg(t.cert())
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", t.lb.addr.port()))
        .arg(format!("http://localhost:{}/x", t.redirect.port()));
    let o = run(c).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_file_is_served_without_restart() {
    let b = Backend::start("b").await;
    let t = start(&b).await;
    let (ok, out) = s_client(t.lb.addr, &[]).await;
    assert!(ok && out.contains("CN = first"), "{out}");
    // Rotate: write the new pair next to the old one, then move both into place.
    make_cert(t.dir.path(), "second", "new-cert.pem", "new-key.pem");
    std::fs::rename(
        t.dir.path().join("new-key.pem"),
        t.dir.path().join("key.pem"),
    )
    .unwrap();
    std::fs::rename(
        t.dir.path().join("new-cert.pem"),
        t.dir.path().join("cert.pem"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out) = s_client(t.lb.addr, &[]).await;
        if ok && out.contains("CN = second") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old certificate after 10 s: {out}\n{}",
            t.lb.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(t.lb.proc.log_text().contains("TLS certificate loaded"));
}

#[test]
fn a_missing_certificate_file_refuses_start_naming_it() {
    let dir = TempDir::new().unwrap();
    make_cert(dir.path(), "k", "cert.pem", "key.pem");
    let missing = dir.path().join("missing.pem");
    let cfg = dir.path().join("lb.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:{}\"\npool = \"p\"\n\
             tls = {{ cert = \"{}\", key = \"key.pem\" }}\n\n\
             [[pool]]\nname = \"p\"\nservers = [{{ address = \"127.0.0.1:9\" }}]\n",
            free_port(),
            missing.display()
        ),
    )
    .unwrap();
    let o = Command::new(rampart_bin())
        .args(["lb", "--config"])
        .arg(&cfg)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "cannot read the TLS cert file {}",
            missing.display()
        )),
        "{err}"
    );
    // A key that does not belong to the certificate is refused too, naming the key file.
    make_cert(dir.path(), "other", "other-cert.pem", "other-key.pem");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&missing.display().to_string(), "cert.pem")
            .replace("key.pem", "other-key.pem"),
    )
    .unwrap();
    let o = Command::new(rampart_bin())
        .args(["lb", "--config"])
        .arg(&cfg)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("other-key.pem") && err.contains("does not fit the certificate"),
        "{err}"
    );
}
