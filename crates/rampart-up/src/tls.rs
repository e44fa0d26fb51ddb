//! `[tls] self_signed = true`: before the balancers start, write a self-signed
//! certificate (localhost, 127.0.0.1) to every HTTPS listener's cert/key paths that are
//! missing, with the openssl CLI. Existing files are kept (a warm start reuses them, an
//! operator's own pair is never overwritten).

use std::path::{Path, PathBuf};
use std::process::Command;

use rampart_topology::security::Certificate;
use rampart_topology::Topology;

use crate::{io, UpError};

/// The (cert, key) pairs up must create: HTTPS listeners' files that do not exist yet,
/// when the topology asks for a self-signed certificate.
pub fn missing_pairs(t: &Topology) -> Vec<(PathBuf, PathBuf)> {
    let self_signed = t
        .tls
        .as_ref()
        .is_some_and(|c| c.certificate == Certificate::SelfSigned);
    if !self_signed {
        return Vec::new();
    }
    let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
    for l in t.lb.iter().flat_map(|l| &l.config.listeners) {
        if let Some(tls) = &l.tls {
            let pair = (tls.cert.clone(), tls.key.clone());
            if (!pair.0.is_file() || !pair.1.is_file()) && !out.contains(&pair) {
                out.push(pair);
            }
        }
    }
    out
}

/// Create each missing pair: an EC P-256 key and a certificate valid 825 days for
/// `localhost` and `127.0.0.1`.
pub fn ensure_self_signed(t: &Topology) -> Result<Vec<PathBuf>, UpError> {
    let mut made = Vec::new();
    for (cert, key) in missing_pairs(t) {
        for f in [&cert, &key] {
            if let Some(dir) = f.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
        }
        make_pair(&cert, &key)?;
        made.push(cert);
    }
    Ok(made)
}

fn make_pair(cert: &Path, key: &Path) -> Result<(), UpError> {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "825",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .map_err(|e| UpError::Missing {
            program: "openssl".into(),
            hint: format!(
                "[tls] self_signed needs the openssl CLI to make a certificate ({e}); install Debian's openssl package, or give cert and key files"
            ),
        })?;
    if !out.status.success() {
        return Err(UpError::Start(format!(
            "openssl could not make a self-signed certificate {}: {}",
            cert.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // The key is readable by this user only.
    std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io("protect", key))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_topology::default::{render, DefaultOptions};
    use rampart_topology::Source;

    #[test]
    fn the_default_topology_gets_a_self_signed_pair_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("site")).unwrap();
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: Path::new(".rampart/main"),
            port_base: 8000,
        });
        let t = Topology::from_source(&Source::new(dir.path().join("rampart.toml"), text)).unwrap();
        let want = missing_pairs(&t);
        assert_eq!(
            want,
            vec![(
                dir.path().join(".rampart/main/tls/site.crt"),
                dir.path().join(".rampart/main/tls/site.key")
            )]
        );
        let made = ensure_self_signed(&t).unwrap();
        assert_eq!(made, vec![want[0].0.clone()]);
        let pem = std::fs::read_to_string(&want[0].0).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert!(std::fs::read_to_string(&want[0].1)
            .unwrap()
            .contains("PRIVATE KEY"));
        // A second start keeps the pair.
        assert!(missing_pairs(&t).is_empty());
        assert!(ensure_self_signed(&t).unwrap().is_empty());
    }
}
