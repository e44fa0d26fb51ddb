//! ACME: certificates ordered from a real ACME server, Let's Encrypt's `pebble` (Debian
//! package `pebble`), whose validation authority really fetches the HTTP-01 token from the
//! balancer's plain-HTTP listener and really makes the TLS-ALPN-01 handshake with its TLS
//! listener. `pebble-challtestsrv` answers pebble's DNS queries (every name is 127.0.0.1).
//! Clients are `curl` and `openssl s_client` trusting pebble's root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rampart_testkit::{free_port, rampart_bin, wait_port, Proc, TempDir};

use crate::support::Backend;

const DOMAIN: &str = "acme.test";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run a client"))
        .await
        .unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// pebble and its DNS server; killed on drop.
struct Pebble {
    _dns: Proc,
    proc: Proc,
    _dir: TempDir,
    directory: String,
    /// pebble's own HTTPS certificate (trusted to reach its directory).
    tls_cert: PathBuf,
    /// The root that issues the certificates, fetched from pebble's management API.
    root: PathBuf,
}

impl Pebble {
    /// Start pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1, issuing certificates valid `validity_s` seconds (0: pebble's default).
    async fn start(http_port: u16, tls_port: u16, validity_s: u64) -> Pebble {
        let dir = TempDir::new().unwrap();
        // pebble's HTTPS: a leaf for localhost and 127.0.0.1 under a test root (the root is
        // what the balancer is told to trust with `ca`).
        let pki = crate::pki::Pki::new(dir.path());
        let (chain, tls_key) = pki.leaf(
            "pebble",
            crate::pki::Alg::Ecdsa,
            &["localhost"],
            "serverAuth",
        );
        let tls_cert = pki.root();
        let dns_port = free_port();
        let mut cmd = Command::new("pebble-challtestsrv");
        cmd.args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{dns_port}"))
            .arg("-management")
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let dns = Proc::spawn("pebble-challtestsrv", cmd, &dir.path().join("dns.log"));

        let listen = free_port();
        let mgmt = free_port();
        let mut cfg = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": chain,
            "privateKey": tls_key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if validity_s > 0 {
            cfg["pebble"]["certificateValidityPeriod"] = validity_s.into();
        }
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&cfg_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0");
        let proc = Proc::spawn("pebble", cmd, &dir.path().join("pebble.log"));
        let up = tokio::task::spawn_blocking(move || {
            wait_port(addr(listen), Duration::from_secs(20))
                && wait_port(addr(mgmt), Duration::from_secs(20))
                && wait_port(addr(dns_port), Duration::from_secs(20))
        })
        .await
        .unwrap();
        assert!(up, "pebble did not start:\n{}", proc.log_text());
        // The issuing root (made at pebble's start).
        let root = dir.path().join("pebble-issuer-root.pem");
        let mut c = Command::new("curl");
        c.args(["-sS", "-f", "-m", "10", "--cacert"])
            .arg(&tls_cert)
            .arg("-o")
            .arg(&root)
            .arg(format!("https://127.0.0.1:{mgmt}/roots/0"));
        let o = run(c).await;
        assert!(o.status.success(), "pebble's root: {}", text(&o));
        Pebble {
            _dns: dns,
            proc,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            tls_cert,
            root,
            _dir: dir,
        }
    }
}

/// A `rampart lb` whose TLS listener orders its certificate from pebble.
struct AcmeLb {
    proc: Proc,
    tls: SocketAddr,
    state: PathBuf,
}

impl AcmeLb {
    /// `listener_extra`: more lines of `[listener.tls]`; `acme_extra`: more of the acme
    /// table.
    async fn start(
        dir: &Path,
        pebble: &Pebble,
        backend: &Backend,
        tls: SocketAddr,
        listener_extra: &str,
        acme_extra: &str,
    ) -> AcmeLb {
        AcmeLb::start_with(dir, pebble, backend, tls, listener_extra, acme_extra, "").await
    }

    /// [`AcmeLb::start`] with more configuration (`more`) at the end of the file.
    async fn start_with(
        dir: &Path,
        pebble: &Pebble,
        backend: &Backend,
        tls: SocketAddr,
        listener_extra: &str,
        acme_extra: &str,
        more: &str,
    ) -> AcmeLb {
        let state = dir.join("acme-state");
        let config = format!(
            "[[listener]]\nname = \"web\"\naddress = \"{tls}\"\npool = \"p\"\n\
             [listener.tls]\n{listener_extra}\n\
             acme = {{ directory = \"{}\", email = \"ops@acme.test\", domains = [\"{DOMAIN}\"], state_dir = \"{}\", ca = \"{}\"{acme_extra} }}\n\
             [[pool]]\nname = \"p\"\nservers = [{{ address = \"{}\" }}]\n{more}",
            pebble.directory,
            state.display(),
            pebble.tls_cert.display(),
            backend.addr,
        );
        let path = dir.join("lb.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(rampart_bin());
        cmd.arg("lb")
            .arg("--config")
            .arg(&path)
            .args(["--threads", "2"])
            .env("RUST_LOG", "info,rampart_lb=debug");
        let proc = Proc::spawn(
            "rampart lb",
            cmd,
            &dir.join(format!("lb-{}.log", free_port())),
        );
        let up = tokio::task::spawn_blocking(move || wait_port(tls, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(up, "rampart lb did not listen:\n{}", proc.log_text());
        AcmeLb { proc, tls, state }
    }

    fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// `curl https://acme.test:PORT/` trusting pebble's root: whether it succeeded, and its
/// output.
async fn get(pebble: &Pebble, tls: SocketAddr) -> (bool, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-f", "-m", "5", "--cacert"])
        .arg(&pebble.root)
        .arg("--resolve")
        .arg(format!("{DOMAIN}:{}:127.0.0.1", tls.port()))
        .arg(format!("https://{DOMAIN}:{}/", tls.port()));
    let o = run(c).await;
    (o.status.success(), text(&o))
}

/// Wait until the listener serves a certificate pebble issued; the seconds it took.
async fn wait_served(pebble: &Pebble, lb: &AcmeLb, timeout: Duration) -> f64 {
    let t0 = Instant::now();
    loop {
        let (ok, out) = get(pebble, lb.tls).await;
        if ok {
            return t0.elapsed().as_secs_f64();
        }
        assert!(
            t0.elapsed() < timeout,
            "no ACME certificate served within {timeout:?}; last curl: {out}\nlb log:\n{}\npebble log:\n{}",
            lb.log(),
            pebble.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The served leaf's issuer and serial, by `openssl s_client` and `openssl x509`.
async fn served_leaf(tls: SocketAddr) -> String {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "timeout 10 openssl s_client -connect {tls} -servername {DOMAIN} </dev/null 2>/dev/null | openssl x509 -noout -issuer -serial -ext subjectAltName"
    ));
    let o = run(c).await;
    assert!(o.status.success(), "s_client: {}", text(&o));
    text(&o)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_is_ordered_served_and_reused_after_a_restart() {
    let backend = Backend::start("backend-b").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 0).await;
    let dir = TempDir::new().unwrap();
    let redirect = format!("redirect_from = \"127.0.0.1:{http_port}\"");
    let lb = AcmeLb::start(dir.path(), &pebble, &backend, addr(tls_port), &redirect, "").await;
    let took = wait_served(&pebble, &lb, Duration::from_secs(60)).await;
    eprintln!("http-01: certificate served {took:.1} s after the balancer listened");
    let leaf = served_leaf(lb.tls).await;
    assert!(leaf.contains("Pebble Intermediate CA"), "{leaf}");
    assert!(leaf.contains(&format!("DNS:{DOMAIN}")), "{leaf}");
    assert!(lb.log().contains("ACME certificate ordered and installed"));
    // The state: account key and certificate key readable by the owner only.
    assert_eq!(mode(&lb.state.join("account.key")), 0o600);
    assert_eq!(mode(&lb.state.join("key.pem")), 0o600);
    assert!(lb.state.join("cert.pem").exists());
    // The backend answers through it.
    let (ok, out) = get(&pebble, lb.tls).await;
    assert!(ok && out.contains("backend-b"), "{out}");

    // A restart serves the stored certificate at once: no new order.
    let account = std::fs::read(lb.state.join("account.key")).unwrap();
    drop(lb);
    let lb = AcmeLb::start(dir.path(), &pebble, &backend, addr(tls_port), &redirect, "").await;
    let (ok, out) = get(&pebble, lb.tls).await;
    assert!(
        ok,
        "the stored certificate is not served at once: {out}\n{}",
        lb.log()
    );
    assert_eq!(served_leaf(lb.tls).await, leaf);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !lb.log().contains("ordering an ACME certificate"),
        "{}",
        lb.log()
    );
    assert_eq!(
        std::fs::read(lb.state.join("account.key")).unwrap(),
        account
    );
    // Plain HTTP still redirects (the challenge path is answered only while pending).
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"])
        .arg(format!(
            "http://127.0.0.1:{http_port}/.well-known/acme-challenge/x"
        ));
    let o = run(c).await;
    assert_eq!(String::from_utf8_lossy(&o.stdout), "308", "{}", text(&o));
}

/// A plain listener that forwards (no redirect) answers the token itself: the fast path
/// hands that one request to the path that knows the tokens; other paths still reach the
/// pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_is_answered_by_a_forwarding_plain_listener() {
    let backend = Backend::start("backend-b").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 0).await;
    let dir = TempDir::new().unwrap();
    let plain = format!(
        "[[listener]]\nname = \"plain\"\naddress = \"127.0.0.1:{http_port}\"\npool = \"p\"\n"
    );
    let lb = AcmeLb::start_with(
        dir.path(),
        &pebble,
        &backend,
        addr(tls_port),
        "",
        "",
        &plain,
    )
    .await;
    wait_served(&pebble, &lb, Duration::from_secs(60)).await;
    assert!(served_leaf(lb.tls).await.contains("Pebble Intermediate CA"));
    // No token pending: the challenge path goes to the pool like any other.
    let mut c = Command::new("curl");
    c.args(["-sS", "-m", "5"]).arg(format!(
        "http://127.0.0.1:{http_port}/.well-known/acme-challenge/x"
    ));
    let o = run(c).await;
    assert!(text(&o).contains("backend-b"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_is_ordered_and_served() {
    let backend = Backend::start("backend-b").await;
    // No plain-HTTP listener at all: pebble's HTTP port is closed.
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 0).await;
    let dir = TempDir::new().unwrap();
    let lb = AcmeLb::start(
        dir.path(),
        &pebble,
        &backend,
        addr(tls_port),
        "",
        ", challenge = \"tls-alpn-01\"",
    )
    .await;
    let took = wait_served(&pebble, &lb, Duration::from_secs(60)).await;
    eprintln!("tls-alpn-01: certificate served {took:.1} s after the balancer listened");
    let leaf = served_leaf(lb.tls).await;
    assert!(leaf.contains("Pebble Intermediate CA"), "{leaf}");
    assert!(
        lb.log().contains("answered an acme-tls/1 handshake"),
        "{}",
        lb.log()
    );
    // Ordinary clients still get h2 or http/1.1, never acme-tls/1.
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "timeout 10 openssl s_client -connect {} -servername {DOMAIN} -alpn h2,http/1.1 </dev/null 2>&1",
        lb.tls
    ));
    let o = run(c).await;
    assert!(text(&o).contains("ALPN protocol: h2"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_before_expiry_fails_no_request() {
    let backend = Backend::start("backend-b").await;
    let (http_port, tls_port) = (free_port(), free_port());
    // Certificates valid 40 s: renewed at half their life (renew_before is longer).
    let pebble = Pebble::start(http_port, tls_port, 40).await;
    let dir = TempDir::new().unwrap();
    let redirect = format!("redirect_from = \"127.0.0.1:{http_port}\"");
    let lb = AcmeLb::start(
        dir.path(),
        &pebble,
        &backend,
        addr(tls_port),
        &redirect,
        ", renew_before = \"30d\"",
    )
    .await;
    wait_served(&pebble, &lb, Duration::from_secs(60)).await;
    let first = served_leaf(lb.tls).await;
    // A client loop until two renewals were served (or a deadline): every request must
    // succeed, with a certificate that verifies (an expired one would not).
    let t0 = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    let mut serials = vec![first.clone()];
    let mut last_check = Instant::now();
    while serials.len() < 3 && t0.elapsed() < Duration::from_secs(90) {
        let (good, out) = get(&pebble, lb.tls).await;
        if good {
            ok += 1;
        } else {
            failed.push(out);
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = Instant::now();
            let leaf = served_leaf(lb.tls).await;
            if serials.last() != Some(&leaf) {
                serials.push(leaf);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "renewal: {ok} requests, {} failed, {} certificates served in {:.1} s",
        failed.len(),
        serials.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed requests: {failed:#?}");
    assert!(
        serials.len() >= 3,
        "not renewed twice: {serials:#?}\n{}",
        lb.log()
    );
    assert!(ok > 100, "{ok}");
    assert!(serials.iter().all(|s| s.contains("Pebble Intermediate CA")));
}

/// Two balancers on the same addresses (`SO_REUSEPORT`: the kernel spreads connections,
/// the CA's validation included, over both, as a virtual IP would after a failover) share
/// one order through etcd: one holds the lock and orders, both answer the challenge, and
/// the other takes the certificate from etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_shares_one_order_through_etcd() {
    let etcd = tokio::task::spawn_blocking(rampart_testkit::etcd::Etcd::start)
        .await
        .unwrap();
    let backend = Backend::start("backend-b").await;
    let (http_port, tls_port) = (free_port(), free_port());
    let pebble = Pebble::start(http_port, tls_port, 0).await;
    let share = format!(
        ", etcd = [\"{}\"], cluster = \"acme-pair\"",
        etcd.client_url(0)
    );
    let redirect = format!("redirect_from = \"127.0.0.1:{http_port}\"");
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = AcmeLb::start(
        dir_a.path(),
        &pebble,
        &backend,
        addr(tls_port),
        &redirect,
        &share,
    )
    .await;
    let b = AcmeLb::start(
        dir_b.path(),
        &pebble,
        &backend,
        addr(tls_port),
        &redirect,
        &share,
    )
    .await;
    let t0 = Instant::now();
    let both = loop {
        let ca = std::fs::read(a.state.join("cert.pem")).ok();
        let cb = std::fs::read(b.state.join("cert.pem")).ok();
        if let (Some(ca), true) = (&ca, ca == cb) {
            break ca.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the pair did not get one certificate:\nA:\n{}\nB:\n{}\npebble:\n{}",
            a.log(),
            b.log(),
            pebble.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(String::from_utf8_lossy(&both).contains("BEGIN CERTIFICATE"));
    let ordered = |l: &AcmeLb| l.log().matches("holding the pair's lock").count();
    assert_eq!(
        ordered(&a) + ordered(&b),
        1,
        "A:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    let (orderer, other) = if ordered(&a) == 1 { (&a, &b) } else { (&b, &a) };
    assert!(orderer
        .log()
        .contains("ACME certificate ordered, published and installed"));
    assert!(
        other.log().contains("ACME certificate taken from etcd"),
        "{}",
        other.log()
    );
    // Either may answer: both serve pebble's certificate.
    for _ in 0..10 {
        let (ok, out) = get(&pebble, addr(tls_port)).await;
        assert!(ok, "{out}");
    }
}
