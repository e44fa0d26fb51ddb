//! `[tls] self_signed = true`: before the roles start, `rampart up` makes the stack's own
//! small PKI with the openssl CLI, in `[tls] dir`: a CA (`ca.crt`, `ca.key`), every HTTPS
//! listener's cert/key pair that is missing, signed by it (localhost, 127.0.0.1 and the
//! listener's IP), and with `[tls] replication` the database nodes' pair (`db.crt`,
//! `db.key`: localhost, 127.0.0.1 and every db host), and with `[tls] upstream` each web
//! node's pair (`web-<name>.crt`, `web-<name>.key`: localhost, 127.0.0.1 and the node's
//! listen address, the name the balancers verify). Clients (drills, tests, replicas)
//! trust `ca.crt`. Existing files are kept (a warm start reuses them); a listener pair in
//! `dir` that this CA did not sign (made by an older rampart up) is made again, and an
//! operator's own pair outside `dir` is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use rampart_topology::security::{Certificate, TlsConfig, SELF_SIGNED_CA};
use rampart_topology::Topology;

use crate::{io, UpError};

/// One certificate to make: where, and the names it is valid for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// subjectAltName entries, e.g. `DNS:localhost`, `IP:127.0.0.1`.
    pub names: Vec<String>,
}

fn san(host: &str) -> String {
    if host.parse::<std::net::IpAddr>().is_ok() {
        format!("IP:{host}")
    } else {
        format!("DNS:{host}")
    }
}

fn names(extra: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = vec!["DNS:localhost".to_string(), "IP:127.0.0.1".to_string()];
    for h in extra {
        let n = san(&h);
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

fn self_signed(t: &Topology) -> Option<&TlsConfig> {
    t.tls
        .as_ref()
        .filter(|c| c.certificate == Certificate::SelfSigned)
}

/// The leaf certificates the topology needs (made when missing): HTTPS listeners'
/// pairs, and the db pair with `[tls] replication`.
pub fn wanted(t: &Topology) -> Vec<Want> {
    let Some(tls) = self_signed(t) else {
        return Vec::new();
    };
    let mut out: Vec<Want> = Vec::new();
    // The virtual IPs clients reach the site on (a listener on 0.0.0.0 serves them).
    let vips: Vec<String> =
        t.lb.iter()
            .flat_map(|l| l.vips())
            .map(|v| v.to_string())
            .collect();
    for l in t.lb.iter().flat_map(|l| &l.config.listeners) {
        // The pair `up` makes is the listener's default certificate.
        if let Some(lt) = l.tls.as_ref().and_then(|t| t.certs.first()) {
            let mut ips: Vec<String> = vips.clone();
            if !l.address.ip().is_unspecified() {
                ips.push(l.address.ip().to_string());
            }
            if let Some(w) = out.iter_mut().find(|w| w.cert == lt.cert) {
                for ip in &ips {
                    let n = san(ip);
                    if !w.names.contains(&n) {
                        w.names.push(n);
                    }
                }
                continue;
            }
            out.push(Want {
                cert: lt.cert.clone(),
                key: lt.key.clone(),
                names: names(ips),
            });
        }
    }
    if tls.upstream {
        for w in &t.web {
            let (cert, key) = tls.web_pair(&w.name);
            // An operator's own [[web.node]] tls pair is never made here.
            if w.tls.as_ref().is_some_and(|p| p.cert == cert) {
                let ip = w.listen.ip();
                out.push(Want {
                    cert,
                    key,
                    names: names((!ip.is_unspecified()).then(|| ip.to_string())),
                });
            }
        }
    }
    if tls.replication {
        if let Some(db) = &t.db {
            let (cert, key) = tls.db_pair();
            out.push(Want {
                cert,
                key,
                names: names(db.nodes.iter().map(|n| n.host.clone())),
            });
        }
    }
    out
}

/// The pairs that must be made now: missing ones, and ones in `dir` not signed by `ca`
/// or not valid for every name wanted (a rehearsal on another subnet moves the web
/// nodes' and virtual addresses).
pub fn missing_pairs(t: &Topology) -> Vec<Want> {
    let Some(tls) = self_signed(t) else {
        return Vec::new();
    };
    let ca = tls.dir.join(SELF_SIGNED_CA.0);
    wanted(t)
        .into_iter()
        .filter(|w| {
            !w.cert.is_file()
                || !w.key.is_file()
                || (w.cert.starts_with(&tls.dir)
                    && (!signed_by(&w.cert, &ca) || !covers(&w.cert, &w.names)))
        })
        .collect()
}

/// Make what is missing; returns the certificates written (CA first, when made).
pub fn ensure_self_signed(t: &Topology) -> Result<Vec<PathBuf>, UpError> {
    let Some(tls) = self_signed(t) else {
        return Ok(Vec::new());
    };
    let mut made = Vec::new();
    let ca = tls.dir.join(SELF_SIGNED_CA.0);
    let ca_key = tls.dir.join(SELF_SIGNED_CA.1);
    if !ca.is_file() || !ca_key.is_file() {
        std::fs::create_dir_all(&tls.dir).map_err(io("create", &tls.dir))?;
        make_ca(&ca, &ca_key, &t.cluster)?;
        made.push(ca.clone());
    }
    for w in missing_pairs(t) {
        for f in [&w.cert, &w.key] {
            if let Some(dir) = f.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
        }
        make_leaf(&w, &ca, &ca_key)?;
        made.push(w.cert);
    }
    Ok(made)
}

/// Whether `cert`'s subjectAltName holds every one of `names` (`DNS:x`, `IP:a`).
fn covers(cert: &Path, names: &[String]) -> bool {
    let Ok(o) = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&o.stdout);
    let have: Vec<&str> = text
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .collect();
    o.status.success()
        && names.iter().all(|n| {
            let shown = match n.strip_prefix("IP:") {
                Some(ip) => format!("IP Address:{ip}"),
                None => n.clone(),
            };
            have.contains(&shown.as_str())
        })
}

/// Whether `cert` verifies against `ca` (`openssl verify`).
fn signed_by(cert: &Path, ca: &Path) -> bool {
    ca.is_file()
        && Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(cert)
            .output()
            .is_ok_and(|o| o.status.success())
}

fn openssl(args: &[&std::ffi::OsStr], what: &str, out: &Path) -> Result<(), UpError> {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| UpError::Missing {
            program: "openssl".into(),
            hint: format!(
                "[tls] self_signed needs the openssl CLI to make certificates ({e}); install Debian's openssl package, or give cert and key files"
            ),
        })?;
    if !o.status.success() {
        return Err(UpError::Start(format!(
            "openssl could not make {what} {}: {}",
            out.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(())
}

/// A request config: the subject and the extensions of the certificate.
fn write_req_config(path: &Path, cn: &str, ext: &str) -> Result<(), UpError> {
    let text = format!(
        "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = ext\n\n[dn]\nCN = {cn}\n\n[ext]\n{ext}\n"
    );
    std::fs::write(path, text).map_err(io("write", path))
}

fn protect(key: &Path) -> Result<(), UpError> {
    // The key is readable by this user only.
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io("protect", key))
}

/// The stack's CA: EC P-256, ten years.
fn make_ca(cert: &Path, key: &Path, cluster: &str) -> Result<(), UpError> {
    let cfg = cert.with_extension("cnf");
    write_req_config(
        &cfg,
        &format!("rampart {cluster} stack CA"),
        "basicConstraints = critical,CA:TRUE,pathlen:0\nkeyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash",
    )?;
    let r = openssl(
        &[
            "req".as_ref(),
            "-x509".as_ref(),
            "-config".as_ref(),
            cfg.as_os_str(),
            "-newkey".as_ref(),
            "ec".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:prime256v1".as_ref(),
            "-nodes".as_ref(),
            "-days".as_ref(),
            "3650".as_ref(),
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
        ],
        "the stack's CA",
        cert,
    );
    let _ = std::fs::remove_file(&cfg);
    r?;
    protect(key)
}

/// A server certificate signed by the CA: EC P-256, 825 days.
fn make_leaf(w: &Want, ca: &Path, ca_key: &Path) -> Result<(), UpError> {
    let cfg = w.cert.with_extension("cnf");
    write_req_config(
        &cfg,
        "localhost",
        &format!(
            "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\nsubjectAltName = {}",
            w.names.join(",")
        ),
    )?;
    let r = openssl(
        &[
            "req".as_ref(),
            "-x509".as_ref(),
            "-config".as_ref(),
            cfg.as_os_str(),
            "-CA".as_ref(),
            ca.as_os_str(),
            "-CAkey".as_ref(),
            ca_key.as_os_str(),
            "-newkey".as_ref(),
            "ec".as_ref(),
            "-pkeyopt".as_ref(),
            "ec_paramgen_curve:prime256v1".as_ref(),
            "-nodes".as_ref(),
            "-days".as_ref(),
            "825".as_ref(),
            "-keyout".as_ref(),
            w.key.as_os_str(),
            "-out".as_ref(),
            w.cert.as_os_str(),
        ],
        "a certificate",
        &w.cert,
    );
    let _ = std::fs::remove_file(&cfg);
    r?;
    protect(&w.key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_topology::default::{render, DefaultOptions};
    use rampart_topology::security::SELF_SIGNED_DB;
    use rampart_topology::Source;

    fn openssl_text(cert: &Path) -> String {
        let o = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn the_default_topology_gets_a_ca_and_pairs_it_signed_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("site")).unwrap();
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: Path::new(".rampart/main"),
            port_base: 8000,
        });
        let t = Topology::from_source(&Source::new(dir.path().join("rampart.toml"), text)).unwrap();
        let tls_dir = dir.path().join(".rampart/main/tls");
        let want = missing_pairs(&t);
        let certs: Vec<PathBuf> = want.iter().map(|w| w.cert.clone()).collect();
        assert_eq!(
            certs,
            vec![tls_dir.join("site.crt"), tls_dir.join(SELF_SIGNED_DB.0)]
        );
        let made = ensure_self_signed(&t).unwrap();
        assert_eq!(
            made,
            vec![
                tls_dir.join(SELF_SIGNED_CA.0),
                tls_dir.join("site.crt"),
                tls_dir.join(SELF_SIGNED_DB.0)
            ]
        );
        let ca = tls_dir.join(SELF_SIGNED_CA.0);
        for c in &certs {
            assert!(signed_by(c, &ca), "{}", c.display());
            let text = openssl_text(c);
            assert!(text.contains("CA:FALSE"), "{text}");
            assert!(text.contains("IP Address:127.0.0.1"), "{text}");
        }
        assert!(openssl_text(&ca).contains("CA:TRUE"));
        let key = std::fs::metadata(tls_dir.join("site.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
            0o600
        );
        // A second start keeps everything.
        assert!(missing_pairs(&t).is_empty());
        assert!(ensure_self_signed(&t).unwrap().is_empty());
        // A pair in dir the CA did not sign (an older rampart up's self-signed one) is
        // made again; nothing else is.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        make_ca(&other.join("x.crt"), &other.join("x.key"), "other").unwrap();
        std::fs::copy(other.join("x.crt"), tls_dir.join("site.crt")).unwrap();
        assert!(!signed_by(&tls_dir.join("site.crt"), &ca));
        assert_eq!(
            ensure_self_signed(&t).unwrap(),
            vec![tls_dir.join("site.crt")]
        );
        assert!(signed_by(&tls_dir.join("site.crt"), &ca));
    }

    #[test]
    fn upstream_tls_gives_each_web_node_a_pair_for_its_address() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("site")).unwrap();
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: Path::new(".rampart/main"),
            port_base: 8000,
        })
        .replace("[tls]\n", "[tls]\nupstream = true\n");
        let t = Topology::from_source(&Source::new(dir.path().join("rampart.toml"), text)).unwrap();
        let tls_dir = dir.path().join(".rampart/main/tls");
        let web: Vec<Want> = wanted(&t)
            .into_iter()
            .filter(|w| {
                w.cert.parent() == Some(tls_dir.as_path())
                    && w.cert
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("web-"))
            })
            .collect();
        assert_eq!(web.len(), 3, "{web:?}");
        assert_eq!(web[0].cert, tls_dir.join("web-web1.crt"));
        assert_eq!(web[0].names, vec!["DNS:localhost", "IP:127.0.0.1"]);
        ensure_self_signed(&t).unwrap();
        let ca = tls_dir.join(SELF_SIGNED_CA.0);
        for w in &web {
            assert!(signed_by(&w.cert, &ca), "{}", w.cert.display());
            assert!(openssl_text(&w.cert).contains("TLS Web Server Authentication"));
        }
        assert!(missing_pairs(&t).is_empty());
        // The same node on another address (a rehearsal on another subnet): made again.
        let mut moved = web[0].clone();
        moved.names.push("IP:10.9.8.7".into());
        assert!(covers(&web[0].cert, &web[0].names));
        assert!(!covers(&moved.cert, &moved.names));
    }
}
