//! OCSP stapling against a real responder (`openssl ocsp` serving a CA's index), checked
//! with `openssl s_client -status`: the answer is stapled; a reload of the same
//! certificate keeps it without a new fetch, a new certificate gets its own (never the old
//! one's); handshakes do not wait for a responder that does not answer; the staple is kept
//! while the responder is down and it is valid, and a `revoked` answer replaces a `good`
//! one at the next refresh (stapled as it is); a listener with `ocsp_stapling = false` and
//! a chain without its issuer staple nothing.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rampart_testkit::{free_port, rampart_bin, wait_port, Proc, TempDir};

use crate::pki::{run, text};
use crate::support::Backend;

/// A `rampart lb` whose configuration file the test rewrites.
struct Lb {
    proc: Proc,
    addr: SocketAddr,
    config: PathBuf,
}

impl Lb {
    /// Start `rampart lb` with `config` (`{LISTEN}`: a free address) written in `dir`.
    async fn start(dir: &Path, config: &str) -> Lb {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut lb = Lb {
            proc: Proc::spawn("placeholder", Command::new("true"), &dir.join("true.log")),
            addr,
            config: dir.join("lb.toml"),
        };
        lb.write(config);
        let mut cmd = Command::new(rampart_bin());
        cmd.arg("lb")
            .arg("--config")
            .arg(&lb.config)
            .args(["--threads", "2"])
            .env("RUST_LOG", "info,rampart_lb=debug");
        lb.proc = Proc::spawn("rampart lb", cmd, &dir.join("lb.log"));
        let a = lb.addr;
        let up = tokio::task::spawn_blocking(move || wait_port(a, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(up, "rampart lb did not listen:\n{}", lb.proc.log_text());
        lb
    }

    fn write(&self, config: &str) {
        let text = config.replace("{LISTEN}", &self.addr.to_string());
        std::fs::write(&self.config, text).unwrap();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// `ca.pem` and leaves it signed for `leaf.key`, naming the responder at `port`:
/// `leaf-1001.pem` and `leaf-1002.pem` (serials 0x1001, 0x1002), and `chain-1001.pem`,
/// `chain-1002.pem` (leaf then CA).
fn make_pki(dir: &Path, port: u16) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(ec);
    args.extend([
        "-subj",
        "/CN=ocsp test ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(dir, &args);
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(ec);
    args.extend([
        "-subj", "/CN=leaf", "-keyout", "leaf.key", "-out", "leaf.csr",
    ]);
    openssl(dir, &args);
    leaf(dir, "0x1001", "1001", port);
    leaf(dir, "0x1002", "1002", port);
}

/// A leaf for `leaf.key` with serial `serial` naming the responder at `port`:
/// `leaf-{name}.pem` and `chain-{name}.pem`.
fn leaf(dir: &Path, serial: &str, name: &str, port: u16) {
    std::fs::write(
        dir.join("leaf.ext"),
        format!(
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:ocsp.test,IP:127.0.0.1\n\
             authorityInfoAccess=OCSP;URI:http://127.0.0.1:{port}/ocsp\n"
        ),
    )
    .unwrap();
    let out = format!("leaf-{name}.pem");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            &out,
        ],
    );
    let mut chain = std::fs::read(dir.join(&out)).unwrap();
    chain.extend(std::fs::read(dir.join("ca.pem")).unwrap());
    std::fs::write(dir.join(format!("chain-{name}.pem")), chain).unwrap();
}

/// The responder's index: serials 1001 and 1002 valid, or `revoked` (as of 2026-01-01).
fn write_index(dir: &Path, revoked: &[&str]) {
    let mut text = String::new();
    for serial in ["1001", "1002"] {
        if revoked.contains(&serial) {
            text += &format!("R\t301231000000Z\t260101000000Z\t{serial}\tunknown\t/CN=leaf\n");
        } else {
            text += &format!("V\t301231000000Z\t\t{serial}\tunknown\t/CN=leaf\n");
        }
    }
    std::fs::write(dir.join("index.txt"), text).unwrap();
    // Both leaves have the same subject.
    std::fs::write(dir.join("index.txt.attr"), "unique_subject = no\n").unwrap();
}

/// `openssl ocsp` answering on `port`, signing with the CA, answers valid one minute (so
/// the balancer fetches again after 30 s).
async fn responder(dir: &Path, port: u16) -> Proc {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args([
        "ocsp",
        "-index",
        "index.txt",
        "-rsigner",
        "ca.pem",
        "-rkey",
        "ca.key",
        "-CA",
        "ca.pem",
        "-nmin",
        "1",
        "-ignore_err",
        "-port",
    ]);
    cmd.arg(port.to_string());
    let p = Proc::spawn("openssl ocsp", cmd, &dir.join("ocsp.log"));
    // Not probed with a connection: `openssl ocsp` (3.0) hangs on one closed unused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.log_text().contains("waiting for OCSP client connections") {
        assert!(
            Instant::now() < deadline,
            "openssl ocsp did not listen: {}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

/// `openssl s_client -status` to `addr`: its output (the stapled answer, if any).
async fn status(addr: SocketAddr, ca: &Path) -> String {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "timeout 10 openssl s_client -connect {addr} -status -CAfile '{}' </dev/null",
        ca.display()
    ));
    text(&run(c).await)
}

fn stapled_good(out: &str) -> bool {
    out.contains("OCSP Response Status: successful") && out.contains("Cert Status: good")
}

/// The staple metric's value for listener `l`.
async fn valid_until(admin: SocketAddr, l: &str) -> i64 {
    let mut c = Command::new("curl");
    c.args(["-sS", "-m", "10"])
        .arg(format!("http://{admin}/metrics"));
    let m = text(&run(c).await);
    m.lines()
        .find(|x| {
            x.starts_with("rampart_tls_ocsp_staple_valid_until_seconds{")
                && x.contains(&format!("listener=\"{l}\""))
        })
        .and_then(|x| x.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no staple metric for {l}: {m}"))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Ask `addr` for its stapled answer every 250 ms until `ok` holds of the output or
/// `timeout` passes: whether it held, and the last output.
async fn wait_status(
    addr: SocketAddr,
    ca: &Path,
    ok: impl Fn(&str) -> bool,
    timeout: Duration,
) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = status(addr, ca).await;
        if ok(&out) {
            return (true, out);
        }
        if Instant::now() > deadline {
            return (false, out);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until `lb`'s log holds `what` more than `n` times.
async fn wait_log(lb: &Lb, what: &str, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while lb.proc.log_text().matches(what).count() <= n {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

const STAPLED: &str = "OCSP response stapled (good)";
const LOADED: &str = "TLS certificate loaded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_staples_survive_reloads_and_never_hold_handshakes() {
    let b = Backend::start("b").await;
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let port = free_port();
    make_pki(dir, port);
    write_index(dir, &[]);
    let _resp = responder(dir, port).await;
    // A responder that never answers: connections wait in its backlog.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_dir = dir.join("hole");
    std::fs::create_dir(&hole_dir).unwrap();
    for f in ["ca.pem", "ca.key", "leaf.key", "leaf.csr"] {
        std::fs::copy(dir.join(f), hole_dir.join(f)).unwrap();
    }
    leaf(
        &hole_dir,
        "0x1003",
        "1003",
        hole.local_addr().unwrap().port(),
    );

    std::fs::copy(dir.join("chain-1001.pem"), dir.join("chain.pem")).unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let off: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let lone: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let slow: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let p = |f: &str| dir.join(f).display().to_string();
    let (chain, lone_pem, key) = (p("chain.pem"), p("leaf-1001.pem"), p("leaf.key"));
    let slow_pem = hole_dir.join("chain-1003.pem").display().to_string();
    let cfg = format!(
        "[admin]\naddress = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"web\"\n\
         tls = {{ cert = \"{chain}\", key = \"{key}\" }}\n\
         [[listener]]\nname = \"off\"\naddress = \"{off}\"\npool = \"web\"\n\
         tls = {{ cert = \"{chain}\", key = \"{key}\", ocsp_stapling = false }}\n\
         [[listener]]\nname = \"lone\"\naddress = \"{lone}\"\npool = \"web\"\n\
         tls = {{ cert = \"{lone_pem}\", key = \"{key}\" }}\n\
         [[listener]]\nname = \"slow\"\naddress = \"{slow}\"\npool = \"web\"\n\
         tls = {{ cert = \"{slow_pem}\", key = \"{key}\" }}\n\
         [[pool]]\nname = \"web\"\nservers = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"none\" }}\n",
        b.addr
    );
    let lb = Lb::start(dir, &cfg).await;
    let ca = dir.join("ca.pem");

    // The answer is stapled soon after the start.
    let (ok, last) = wait_status(lb.addr, &ca, stapled_good, Duration::from_secs(20)).await;
    assert!(ok, "no good answer stapled: {last}\n{}", lb.proc.log_text());
    assert!(last.contains("Serial Number: 1001"), "{last}");
    assert!(last.contains("Verify return code: 0 (ok)"), "{last}");
    let t = now();
    let until = valid_until(admin, "web").await;
    assert!((t..=t + 70).contains(&until), "valid until {until} at {t}");

    // Off, and no issuer in the chain: nothing stapled, the latter said once.
    for a in [off, lone] {
        let out = status(a, &ca).await;
        assert!(
            out.contains("OCSP response: no response sent"),
            "{a}: {out}"
        );
        assert!(out.contains("CONNECTED"), "{a}: {out}");
    }
    assert_eq!(valid_until(admin, "off").await, 0);
    assert_eq!(valid_until(admin, "lone").await, 0);
    let log = lb.proc.log_text();
    assert_eq!(
        log.matches("names an OCSP responder but cannot be stapled")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("no issuer certificate"), "{log}");

    // The silent responder's fetch hangs (up to its 10 s timeout): handshakes on that
    // listener complete meanwhile, without a staple, as fast as the others.
    assert!(
        !lb.proc.log_text().contains("timed out"),
        "{}",
        lb.proc.log_text()
    );
    for _ in 0..5 {
        let start = Instant::now();
        let out = status(slow, &hole_dir.join("ca.pem")).await;
        let took = start.elapsed();
        assert!(out.contains("OCSP response: no response sent"), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(took < Duration::from_secs(2), "a handshake took {took:?}");
    }

    // The same certificate written again: reloaded, its staple kept (no new fetch).
    let (loaded, fetched) = {
        let log = lb.proc.log_text();
        (log.matches(LOADED).count(), log.matches(STAPLED).count())
    };
    std::fs::copy(dir.join("chain-1001.pem"), dir.join("chain.pem")).unwrap();
    assert!(
        wait_log(&lb, LOADED, loaded, Duration::from_secs(10)).await,
        "no reload: {}",
        lb.proc.log_text()
    );
    let out = status(lb.addr, &ca).await;
    assert!(
        stapled_good(&out) && out.contains("Serial Number: 1001"),
        "staple lost by a reload: {out}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lb.proc.log_text().matches(STAPLED).count(),
        fetched,
        "fetched again after a reload of the same certificate: {}",
        lb.proc.log_text()
    );

    // A new certificate: its own answer is fetched and stapled, the old one never
    // presented with it.
    let loaded = lb.proc.log_text().matches(LOADED).count();
    std::fs::copy(dir.join("chain-1002.pem"), dir.join("chain.pem")).unwrap();
    assert!(
        wait_log(&lb, LOADED, loaded, Duration::from_secs(10)).await,
        "no reload: {}",
        lb.proc.log_text()
    );
    let (ok, last) = wait_status(
        lb.addr,
        &ca,
        |o| {
            assert!(!o.contains("Serial Number: 1001"), "old staple served: {o}");
            stapled_good(o) && o.contains("Serial Number: 1002")
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(
        ok,
        "the new certificate's answer is not stapled: {last}\n{}",
        lb.proc.log_text()
    );
    assert!(lb.proc.log_text().matches(STAPLED).count() > fetched);

    // A configuration reload that changes the listener's TLS settings (its set-up is
    // made again): the staple stays, not fetched again.
    let fetched = lb.proc.log_text().matches(STAPLED).count();
    lb.write(&cfg.replace(
        &format!("tls = {{ cert = \"{chain}\", key = \"{key}\" }}"),
        &format!("tls = {{ cert = \"{chain}\", key = \"{key}\", hsts = \"1d\" }}"),
    ));
    lb.proc.signal(Signal::SIGHUP);
    assert!(
        wait_log(&lb, "configuration reloaded", 0, Duration::from_secs(10)).await,
        "no reload: {}",
        lb.proc.log_text()
    );
    // The new set-up serves (HSTS on) from a connection accepted after the swap.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Command::new("curl");
        c.args(["-sS", "-m", "10", "-o", "/dev/null", "-D", "-", "--cacert"])
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{}/", lb.addr.port()));
        let head = text(&run(c).await);
        if head.contains("max-age=86400") {
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded: {head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = status(lb.addr, &ca).await;
    assert!(
        stapled_good(&out) && out.contains("Serial Number: 1002"),
        "staple lost by a configuration reload: {out}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        lb.proc.log_text().matches(STAPLED).count(),
        fetched,
        "fetched again after a configuration reload: {}",
        lb.proc.log_text()
    );

    // The silent responder's fetch timed out and is retried; the listener still serves.
    assert!(
        wait_log(&lb, "timed out", 0, Duration::from_secs(15)).await,
        "{}",
        lb.proc.log_text()
    );
    let out = status(slow, &hole_dir.join("ca.pem")).await;
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    assert_eq!(valid_until(admin, "slow").await, 0);
    drop(hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_staple_kept_while_the_responder_is_down_and_replaced_by_revocation() {
    let b = Backend::start("b").await;
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let port = free_port();
    make_pki(dir, port);
    write_index(dir, &[]);
    let mut resp = responder(dir, port).await;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (chain, key) = (
        dir.join("chain-1001.pem").display().to_string(),
        dir.join("leaf.key").display().to_string(),
    );
    let cfg = format!(
        "[admin]\naddress = \"{admin}\"\n\
         [[listener]]\nname = \"web\"\naddress = \"{{LISTEN}}\"\npool = \"web\"\n\
         tls = {{ cert = \"{chain}\", key = \"{key}\" }}\n\
         [[pool]]\nname = \"web\"\nservers = [{{ address = \"{}\" }}]\nhealth_check = {{ kind = \"none\" }}\n",
        b.addr
    );
    let lb = Lb::start(dir, &cfg).await;
    let ca = dir.join("ca.pem");
    let (ok, last) = wait_status(lb.addr, &ca, stapled_good, Duration::from_secs(20)).await;
    assert!(ok, "no good answer stapled: {last}\n{}", lb.proc.log_text());
    let until = valid_until(admin, "web").await;

    // The responder goes away and the certificate is revoked meanwhile: the refresh
    // (halfway to nextUpdate, 30 s) fails and the good answer stays stapled while valid.
    resp.kill();
    write_index(dir, &["1001"]);
    assert!(
        wait_log(&lb, "OCSP fetch failed", 0, Duration::from_secs(45)).await,
        "no failed fetch: {}",
        lb.proc.log_text()
    );
    let out = status(lb.addr, &ca).await;
    assert!(now() < until - 2, "the refresh came too late: {until}");
    assert!(stapled_good(&out), "staple dropped while valid: {out}");
    assert_eq!(valid_until(admin, "web").await, until);

    // The responder is back and says revoked: the next try (10 s after the failure)
    // staples that answer; the good one is gone.
    let _resp = responder(dir, port).await;
    let (revoked, last) = wait_status(
        lb.addr,
        &ca,
        |o| o.contains("Cert Status: revoked"),
        Duration::from_secs(40),
    )
    .await;
    assert!(
        revoked,
        "the revoked answer is not stapled: {last}\n{}",
        lb.proc.log_text()
    );
    assert!(!last.contains("Cert Status: good"), "{last}");
    assert_eq!(valid_until(admin, "web").await, 0);
    assert!(lb.proc.log_text().contains("REVOKED"));
}
