//! `rampart web` serving HTTPS: certificates from a CA the test makes with the openssl
//! CLI, clients `openssl s_client` and the real `rampart lb` with a pool `tls`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rampart_testkit::{free_port, http_get, rampart_bin, wait_until, Proc};

use crate::common::{get, start_web};

fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA (`ca.crt`) and a server pair signed by it for 127.0.0.1 (`web.crt`, `web.key`).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(
        dir.join("leaf.cnf"),
        "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n",
    )
    .expect("cnf");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-subj", "/CN=test CA", "-days", "2"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(&ca, dir);
    let mut csr = vec!["req", "-new", "-subj", "/CN=web"];
    csr.extend(ec);
    csr.extend(["-keyout", "web.key", "-out", "web.csr"]);
    openssl(&csr, dir);
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "web.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.cnf",
            "-out",
            "web.crt",
        ],
        dir,
    );
    (dir.join("ca.crt"), dir.join("web.crt"), dir.join("web.key"))
}

/// `openssl s_client` sending `request` with extra `flags`; its output (stdout and
/// stderr) and whether it exited 0.
fn s_client(addr: SocketAddr, ca: &Path, flags: &[&str], request: &str) -> (String, bool) {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-ign_eof"])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(request.as_bytes());
    }
    let o = child.wait_with_output().expect("s_client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (text, o.status.success())
}

/// The value of a counter sample in the web node's plain `/metrics`.
fn counter(addr: SocketAddr, series: &str) -> f64 {
    let m = get(addr, "/metrics", &[]);
    assert_eq!(m.status, 200);
    m.text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const GET_HELLO: &str = "GET /hello.txt HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

#[test]
fn serves_https_with_its_certificate_and_refuses_tls_1_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("hello.txt"), "hello over tls\n").expect("file");
    let (ca, cert, key) = pki(dir.path());
    let w = start_web(
        "tls1",
        &[
            "--root",
            root.to_str().expect("utf8"),
            "--tls-cert",
            cert.to_str().expect("utf8"),
            "--tls-key",
            key.to_str().expect("utf8"),
        ],
        dir.path(),
    );

    // TLS 1.3 and 1.2, verified against the CA for 127.0.0.1; the page and the node's name.
    for version in ["-tls1_3", "-tls1_2"] {
        let (out, ok) = s_client(w.addr, &ca, &[version], GET_HELLO);
        assert!(ok, "{version}:\n{out}");
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{version}:\n{out}"
        );
        assert!(out.contains("HTTP/1.1 200 OK"), "{version}:\n{out}");
        assert!(out.contains("hello over tls"), "{version}:\n{out}");
        assert!(out.contains("x-served-by: tls1"), "{version}:\n{out}");
    }
    // ALPN h2 is offered (hyper serves HTTP/2 over TLS).
    let (out, _) = s_client(w.addr, &ca, &["-alpn", "h2"], GET_HELLO);
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert_eq!(
        counter(w.addr, "rampart_web_connections_total{transport=\"tls\"}"),
        3.0
    );

    // TLS 1.1 (allowed on the client's side: security level 0) reaches the server and
    // is refused there: the handshake fails and the node counts it.
    let failures = counter(w.addr, "rampart_web_tls_handshake_failures_total");
    let (out, ok) = s_client(
        w.addr,
        &ca,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
        GET_HELLO,
    );
    assert!(!ok && !out.contains("hello over tls"), "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || counter(
            w.addr,
            "rampart_web_tls_handshake_failures_total"
        ) == failures + 1.0),
        "the TLS 1.1 handshake did not reach the server:\n{out}"
    );

    // Plain HTTP on the same port: the health and metrics paths only, the site never.
    assert_eq!(get(w.addr, "/healthz", &[]).status, 200);
    assert_eq!(get(w.addr, "/readyz", &[]).status, 200);
    let r = get(w.addr, "/hello.txt", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(!r.text().contains("hello over tls"));
    assert!(r.text().contains("HTTPS"), "{}", r.text());
}

#[test]
fn a_bad_pair_stops_the_node_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("root");
    let (_, cert, _) = pki(dir.path());
    std::fs::write(dir.path().join("bad.key"), "not a key\n").expect("key");
    let o = Command::new(rampart_bin())
        .args(["web", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--root")
        .arg(&root)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(dir.path().join("bad.key"))
        .output()
        .expect("rampart web");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("bad.key"), "{err}");
    // From a topology: a missing file is named with its line and column.
    let topo = dir.path().join("t.toml");
    std::fs::write(
        &topo,
        format!(
            "[cluster]\nname = \"m\"\n[web]\nroot = \"site\"\n[[web.node]]\nname = \"w\"\n\
             listen = \"127.0.0.1:{}\"\ntls = {{ cert = \"{}\", key = \"missing.key\" }}\n",
            free_port(),
            cert.display()
        ),
    )
    .expect("topology");
    let o = Command::new(rampart_bin())
        .args(["web", "--config"])
        .arg(&topo)
        .args(["--node", "w"])
        .output()
        .expect("rampart web");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    let at = format!("{}:8:", topo.display());
    assert!(err.contains(&at) && err.contains("missing.key"), "{err}");
}

/// The real balancer with `tls = { ca }` on its pool: health checks and requests reach
/// the node over TLS (the node counts TLS connections only), and the answers arrive.
#[test]
fn the_balancer_reaches_the_node_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("hello.txt"), "hello over tls\n").expect("file");
    let (ca, cert, key) = pki(dir.path());
    let w = start_web(
        "tls2",
        &[
            "--root",
            root.to_str().expect("utf8"),
            "--tls-cert",
            cert.to_str().expect("utf8"),
            "--tls-key",
            key.to_str().expect("utf8"),
        ],
        dir.path(),
    );
    let plain_before = counter(w.addr, "rampart_web_connections_total{transport=\"plain\"}");
    let port = free_port();
    let lb: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let conf = format!(
        "[[listener]]\nname = \"site\"\naddress = \"{lb}\"\npool = \"web\"\n\n\
         [[pool]]\nname = \"web\"\nservers = [{{ name = \"w\", address = \"{}\" }}]\n\
         tls = {{ ca = \"{}\" }}\n\
         [pool.health_check]\nkind = \"http\"\npath = \"/readyz\"\ninterval = \"100ms\"\n\
         timeout = \"500ms\"\nrise = 1\nfall = 2\n",
        w.addr,
        ca.display()
    );
    let path = dir.path().join("lb.toml");
    std::fs::write(&path, conf).expect("lb config");
    let mut c = Command::new(rampart_bin());
    c.args(["lb", "--config"])
        .arg(&path)
        .args(["--threads", "1"]);
    let mut lbp = Proc::spawn("lb", c, &dir.path().join("lb.log"));
    let ok = wait_until(Duration::from_secs(15), || {
        http_get(lb, "/hello.txt").is_ok_and(|r| r.status == 200)
    });
    assert!(ok, "no answer through the balancer:\n{}", lbp.log_text());
    for _ in 0..20 {
        let r = get(lb, "/hello.txt", &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "hello over tls\n"));
    }
    // The requests shared one pooled TLS connection; every health check (100 ms, with
    // `Connection: close`) is a TLS connection of its own.
    let mut reads = 0;
    let tls_grows = wait_until(Duration::from_secs(5), || {
        reads += 1;
        counter(w.addr, "rampart_web_connections_total{transport=\"tls\"}") >= 5.0
    });
    assert!(
        tls_grows,
        "health checks are not TLS connections:\n{}",
        lbp.log_text()
    );
    // The node's only plain connections are this test's own /metrics reads (the page
    // itself is never served in plain: 400).
    reads += 1;
    let plain = counter(w.addr, "rampart_web_connections_total{transport=\"plain\"}");
    assert_eq!(plain, plain_before + f64::from(reads));
    assert_eq!(get(w.addr, "/hello.txt", &[]).status, 400);
    assert_eq!(
        counter(w.addr, "rampart_web_tls_handshake_failures_total"),
        0.0
    );
    lbp.kill();
}

/// A second server pair signed by `pki`'s CA, with this subject CN, into `cert` and `key`.
fn renewed_pair(dir: &Path, cn: &str, cert: &Path, key: &Path) {
    let subj = format!("/CN={cn}");
    openssl(
        &[
            "req",
            "-new",
            "-subj",
            &subj,
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "renewed.key",
            "-out",
            "renewed.csr",
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "renewed.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.cnf",
            "-out",
            "renewed.crt",
        ],
        dir,
    );
    // Replaced as a renewal tool does: new files moved over the old ones.
    std::fs::rename(dir.join("renewed.crt"), cert).expect("move cert");
    std::fs::rename(dir.join("renewed.key"), key).expect("move key");
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_the_old_one_when_the_new_files_are_bad() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("site");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("hello.txt"), "hello over tls\n").expect("file");
    let (ca, cert, key) = pki(dir.path());
    let mut w = start_web(
        "tlsreload",
        &[
            "--root",
            root.to_str().expect("utf8"),
            "--tls-cert",
            cert.to_str().expect("utf8"),
            "--tls-key",
            key.to_str().expect("utf8"),
        ],
        dir.path(),
    );
    let addr = w.addr;
    let presented = |want: &str| {
        let (out, ok) = s_client(addr, &ca, &[], GET_HELLO);
        ok && out.contains("Verify return code: 0 (ok)")
            && out.contains("hello over tls")
            && out.contains(&format!("CN = {want}"))
    };
    assert!(presented("web"));

    // A renewal: the new pair in place of the old, then SIGHUP.
    renewed_pair(dir.path(), "renewed", &cert, &key);
    assert!(presented("web"), "no reload before the signal");
    w.proc.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || presented("renewed")),
        "the renewed certificate is presented after SIGHUP:\n{}",
        w.proc.log_text()
    );

    // A key that does not go with the certificate: refused, the renewed pair stays.
    std::fs::copy(dir.path().join("ca.key"), &key).expect("wrong key");
    w.proc.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || w
            .proc
            .log_text()
            .contains("certificate reload refused")),
        "{}",
        w.proc.log_text()
    );
    assert!(presented("renewed"), "{}", w.proc.log_text());
    assert!(w.proc.is_running());

    // A node without TLS takes SIGHUP too (it used to end it) and keeps serving.
    let mut plain = start_web(
        "plainhup",
        &["--root", root.to_str().expect("utf8")],
        dir.path(),
    );
    plain.proc.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(plain.proc.is_running(), "{}", plain.proc.log_text());
    assert_eq!(get(plain.addr, "/hello.txt", &[]).status, 200);
}
