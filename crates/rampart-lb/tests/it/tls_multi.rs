//! HTTPS with several certificates per listener (SNI, RSA beside ECDSA, chains) and
//! session resumption (tickets and session IDs, on one balancer and across a pair sharing
//! a ticket key file), checked with `openssl s_client`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rampart_testkit::TempDir;

use crate::pki::{run, text, Alg, Pki};
use crate::support::{Backend, Lb};

/// `openssl s_client` to `addr`, naming `sni` (`None`: no SNI), with `args`, sending an
/// HTTP/1.1 request that closes the connection (so session tickets arrive before the
/// end). Its combined output.
async fn s_client(addr: SocketAddr, sni: Option<&str>, args: &[&str]) -> String {
    let mut c = Command::new("sh");
    let mut line = format!(
        "printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n' | timeout 10 openssl s_client -ign_eof -connect {addr}"
    );
    match sni {
        Some(n) => line.push_str(&format!(" -servername {n}")),
        None => line.push_str(" -noservername"),
    }
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    c.arg("-c").arg(line);
    text(&run(c).await)
}

/// The subject CN of the certificate the server presented.
fn peer_cn(out: &str) -> Option<String> {
    // Non-brief output: "subject=CN = a-ec"
    out.lines()
        .find_map(|l| {
            l.strip_prefix("subject=CN = ")
                .or_else(|| l.strip_prefix("subject=CN="))
        })
        .map(str::to_string)
}

fn verified(out: &str) -> bool {
    out.contains("Verify return code: 0 (ok)")
}

struct Certs {
    pki: Pki,
    /// (chain, key) by name.
    files: Vec<(String, (PathBuf, PathBuf))>,
}

impl Certs {
    fn get(&self, name: &str) -> &(PathBuf, PathBuf) {
        &self.files.iter().find(|(n, _)| n == name).unwrap().1
    }
}

/// a.test in ECDSA (the default) and RSA, b.test in ECDSA, *.c.test in RSA (names given
/// in the configuration, not from the certificate).
fn make_certs(dir: &Path) -> Certs {
    let pki = Pki::new(dir);
    let mut files = Vec::new();
    for (name, alg, dns) in [
        ("a-ec", Alg::Ecdsa, &["a.test", "www.a.test"][..]),
        ("a-rsa", Alg::Rsa, &["a.test", "www.a.test"][..]),
        ("b-ec", Alg::Ecdsa, &["b.test"][..]),
        ("c-rsa", Alg::Rsa, &["c.example"][..]),
    ] {
        files.push((name.to_string(), pki.leaf(name, alg, dns, "serverAuth")));
    }
    Certs { pki, files }
}

fn listener_tls(c: &Certs, extra: &str) -> String {
    let p = |n: &str| {
        let (cert, key) = c.get(n);
        (cert.display().to_string(), key.display().to_string())
    };
    let (a_ec, a_ec_k) = p("a-ec");
    let (a_rsa, a_rsa_k) = p("a-rsa");
    let (b, b_k) = p("b-ec");
    let (cr, cr_k) = p("c-rsa");
    format!(
        "[listener.tls]\ncert = \"{a_ec}\"\nkey = \"{a_ec_k}\"\n\
         certificates = [{{ cert = \"{a_rsa}\", key = \"{a_rsa_k}\" }}, {{ cert = \"{b}\", key = \"{b_k}\" }}, {{ cert = \"{cr}\", key = \"{cr_k}\", names = [\"*.c.test\"] }}]\n{extra}\n"
    )
}

fn config(backend: &Backend, tls: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"web\"\n{tls}\n\
         [[pool]]\nname = \"web\"\nservers = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"none\" }}\n",
        backend.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_and_the_clients_signature_schemes_choose_the_certificate() {
    let b = Backend::start("b").await;
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let lb = Lb::start(&config(&b, &listener_tls(&certs, ""))).await;
    let root = certs.pki.root();
    let root = root.to_str().unwrap();
    let verify = ["-CAfile", root, "-verify_return_error"];

    let cases: &[(Option<&str>, &[&str], &str)] = &[
        // By name; the ECDSA one when the client can take both.
        (Some("a.test"), &[], "a-ec"),
        (Some("WWW.A.TEST"), &["-tls1_2"], "a-ec"),
        // The client's offer picks RSA or ECDSA, TLS 1.3 and 1.2.
        (
            Some("a.test"),
            &[
                "-tls1_3",
                "-sigalgs",
                "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384",
            ],
            "a-rsa",
        ),
        (
            Some("a.test"),
            &["-tls1_2", "-sigalgs", "RSA+SHA256"],
            "a-rsa",
        ),
        (
            Some("a.test"),
            &["-tls1_3", "-sigalgs", "ecdsa_secp256r1_sha256"],
            "a-ec",
        ),
        (
            Some("a.test"),
            &["-tls1_2", "-sigalgs", "ECDSA+SHA256"],
            "a-ec",
        ),
        // Another name, a configured wildcard name.
        (Some("b.test"), &[], "b-ec"),
        (Some("x.c.test"), &[], "c-rsa"),
        // No SNI or an unknown name: the default (and its RSA twin for RSA-only clients).
        (None, &[], "a-ec"),
        (Some("unknown.test"), &[], "a-ec"),
        (None, &["-sigalgs", "rsa_pss_rsae_sha256"], "a-rsa"),
    ];
    for (sni, args, want) in cases {
        let mut all: Vec<&str> = args.to_vec();
        if *want != "c-rsa" {
            // c-rsa's names are configured, not in its certificate: no verification.
            all.extend(verify);
        }
        let out = s_client(lb.addr, *sni, &all).await;
        assert_eq!(
            peer_cn(&out).as_deref(),
            Some(*want),
            "{sni:?} {args:?}: {out}"
        );
        if *want != "c-rsa" {
            // Verified against the root: the intermediate came with the leaf.
            assert!(verified(&out), "{sni:?} {args:?}: {out}");
            assert!(out.contains("HTTP/1.1 200"), "{out}");
        }
    }
    // TLS 1.1 is refused.
    let out = s_client(
        lb.addr,
        Some("a.test"),
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    )
    .await;
    assert!(
        peer_cn(&out).is_none() && out.contains("alert"),
        "TLS 1.1: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_reloads_and_a_bad_one_keeps_the_old() {
    let b = Backend::start("b").await;
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let lb = Lb::start(&config(&b, &listener_tls(&certs, ""))).await;
    assert_eq!(
        peer_cn(&s_client(lb.addr, Some("b.test"), &[]).await).as_deref(),
        Some("b-ec")
    );
    // b.test's file becomes garbage; a.test's RSA certificate is renewed.
    std::fs::write(&certs.get("b-ec").0, "not a certificate").unwrap();
    let (new_chain, new_key) = certs
        .pki
        .leaf("a-rsa2", Alg::Rsa, &["a.test"], "serverAuth");
    let (chain, key) = certs.get("a-rsa");
    std::fs::rename(&new_key, key).unwrap();
    std::fs::rename(&new_chain, chain).unwrap();
    let rsa_only = ["-sigalgs", "rsa_pss_rsae_sha256"];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = s_client(lb.addr, Some("a.test"), &rsa_only).await;
        if peer_cn(&out).as_deref() == Some("a-rsa2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served: {out}\n{}",
            lb.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The broken one is still served from memory, and the log says why.
    let out = s_client(lb.addr, Some("b.test"), &[]).await;
    assert_eq!(peer_cn(&out).as_deref(), Some("b-ec"), "{out}");
    assert_eq!(
        peer_cn(&s_client(lb.addr, Some("a.test"), &[]).await).as_deref(),
        Some("a-ec")
    );
    let log = lb.proc.log_text();
    assert!(
        log.contains("cannot be loaded; the current one stays") && log.contains("b-ec-chain.pem"),
        "{log}"
    );
}

/// Connect with `args` saving the session to `sess`, then again resuming it; the second
/// output.
async fn resume(
    first: SocketAddr,
    second: SocketAddr,
    sess: &Path,
    args: &[&str],
) -> (String, String) {
    let s = sess.to_str().unwrap();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-sess_out", s]);
    let one = s_client(first, Some("a.test"), &a).await;
    assert!(one.contains("HTTP/1.1 200"), "{one}");
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["-sess_in", s]);
    let two = s_client(second, Some("a.test"), &a).await;
    (one, two)
}

fn reused(out: &str) -> bool {
    out.lines().any(|l| l.starts_with("Reused, TLSv1."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_by_ticket_and_session_id() {
    let b = Backend::start("b").await;
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let lb = Lb::start(&config(&b, &listener_tls(&certs, ""))).await;
    let sess = dir.path().join("sess");
    for args in [
        &["-tls1_3"][..],
        &["-tls1_2"][..],
        &["-tls1_2", "-no_ticket"][..],
    ] {
        let (one, two) = resume(lb.addr, lb.addr, &sess, args).await;
        assert!(one.contains("New, TLSv1."), "{args:?}: {one}");
        assert!(reused(&two), "{args:?} not resumed: {two}");
        assert!(two.contains("HTTP/1.1 200"), "{two}");
        // 0-RTT is not offered by the server.
        assert!(!two.contains("Early data was accepted"), "{two}");
    }
    // Without tickets and without a cache nothing resumes (the check above can fail).
    let lb2 = Lb::start(&config(
        &b,
        &listener_tls(&certs, "session_tickets = false\nsession_cache = 0"),
    ))
    .await;
    for args in [&["-tls1_3"][..], &["-tls1_2"][..]] {
        let (_, two) = resume(lb2.addr, lb2.addr, &sess, args).await;
        assert!(
            !reused(&two) && two.contains("New, TLSv1."),
            "{args:?}: {two}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_one_balancer_resumes_on_the_other() {
    let b = Backend::start("b").await;
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let keys = dir.path().join("ticket.keys");
    let k = keys.display();
    // The first creates and rotates the file; the second only reads it.
    let owner = Lb::start(&config(
        &b,
        &listener_tls(
            &certs,
            &format!("ticket_keys_file = \"{k}\"\nticket_keys_rotate = \"1h\""),
        ),
    ))
    .await;
    let reader = Lb::start(&config(
        &b,
        &listener_tls(&certs, &format!("ticket_keys_file = \"{k}\"")),
    ))
    .await;
    let other = Lb::start(&config(&b, &listener_tls(&certs, ""))).await;
    let text = std::fs::read_to_string(&keys).unwrap();
    assert_eq!(
        text.lines().filter(|l| !l.starts_with('#')).count(),
        2,
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let sess = dir.path().join("sess");
    for args in [&["-tls1_3"][..], &["-tls1_2"][..]] {
        let (_, two) = resume(owner.addr, reader.addr, &sess, args).await;
        assert!(reused(&two), "{args:?}: owner to reader not resumed: {two}");
        let (_, two) = resume(reader.addr, owner.addr, &sess, args).await;
        assert!(reused(&two), "{args:?}: reader to owner not resumed: {two}");
        // A balancer with keys of its own does not take them.
        let (_, two) = resume(owner.addr, other.addr, &sess, args).await;
        assert!(!reused(&two), "{args:?}: resumed with other keys: {two}");
    }
    // The operator rotates the file: the reader follows, and a ticket sealed before the
    // rotation still resumes on both.
    let s = sess.to_str().unwrap();
    let before = s_client(owner.addr, Some("a.test"), &["-tls1_3", "-sess_out", s]).await;
    assert!(before.contains("HTTP/1.1 200"), "{before}");
    let new_key = "ab".repeat(32);
    std::fs::write(&keys, format!("{new_key}\n{text}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(owner.proc.log_text().contains("TLS ticket keys loaded")
        && reader.proc.log_text().contains("TLS ticket keys loaded"))
    {
        assert!(
            Instant::now() < deadline,
            "the rotated key file was not read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for lb in [&reader, &owner] {
        let out = s_client(lb.addr, Some("a.test"), &["-tls1_3", "-sess_in", s]).await;
        assert!(reused(&out), "after rotation: {out}");
    }
    let (_, two) = resume(reader.addr, owner.addr, &sess, &["-tls1_3"]).await;
    assert!(reused(&two), "new tickets after rotation: {two}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificates_expiry_is_a_metric() {
    let b = Backend::start("b").await;
    let dir = TempDir::new().unwrap();
    let certs = make_certs(dir.path());
    let admin: SocketAddr = format!("127.0.0.1:{}", rampart_testkit::free_port())
        .parse()
        .unwrap();
    let cfg = format!(
        "[admin]\naddress = \"{admin}\"\n{}",
        config(&b, &listener_tls(&certs, ""))
    );
    let _lb = Lb::start(&cfg).await;
    let mut c = Command::new("curl");
    c.args(["-sS", "-m", "10"])
        .arg(format!("http://{admin}/metrics"));
    let m = text(&run(c).await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The four certificates were made for 2 days.
    let lines: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("rampart_tls_certificate_not_after_seconds{"))
        .collect();
    assert_eq!(lines.len(), 4, "{m}");
    for name in ["a-ec", "a-rsa", "b-ec", "c-rsa"] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("{name}-chain.pem")) && l.contains("listener=\"web\""))
            .unwrap_or_else(|| panic!("no expiry for {name}: {m}"));
        let t: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((t - (now + 2 * 86_400)).abs() < 300, "{line} vs now {now}");
        let left = line.replace(
            "rampart_tls_certificate_not_after_seconds",
            "rampart_tls_certificate_expires_in_seconds",
        );
        let left = left.rsplit_once(' ').unwrap().0;
        let v: i64 = m
            .lines()
            .find_map(|l| l.strip_prefix(left)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no seconds left for {name}: {m}"));
        assert!((v - 2 * 86_400).abs() < 300, "{left} {v}");
    }
}
