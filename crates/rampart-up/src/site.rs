//! The site as a client reaches it, for drills and tests: the first HTTPS listener of the
//! topology (verified against the stack's CA, `[tls] ca`, or the listener's own
//! certificate file), else the first plain-HTTP listener that serves rather than
//! redirects. With `[tls] redirect_http` the plain listeners only redirect, so every
//! request of a drill goes through TLS like a browser's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_topology::lb::Mode;
use rampart_topology::Topology;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::http::{Client, Response};
use crate::UpError;

/// Where and how to reach the site.
#[derive(Clone)]
pub struct Site {
    pub addr: SocketAddr,
    /// Present for HTTPS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url())
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpError> {
    let pem = std::fs::read(path).map_err(crate::io("read the certificate", path))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpError::Drill(format!("{}: not PEM certificates: {e}", path.display())))
}

/// Where a client reaches a listener: a listener on 0.0.0.0 (the separate-hosts
/// rehearsal) through the first virtual IP.
fn reachable(t: &Topology, a: std::net::SocketAddr) -> std::net::SocketAddr {
    if !a.ip().is_unspecified() {
        return a;
    }
    t.lb.iter()
        .flat_map(|l| l.vips())
        .next()
        .map(|ip| std::net::SocketAddr::new(ip, a.port()))
        .unwrap_or(a)
}

impl Site {
    /// The site of `t` (see the module doc).
    pub fn of(t: &Topology) -> Result<Site, UpError> {
        let listeners: Vec<&rampart_topology::lb::Listener> =
            t.lb.iter()
                .flat_map(|l| &l.config.listeners)
                .filter(|l| l.mode == Mode::Http)
                .collect();
        if let Some(l) = listeners.iter().find(|l| l.tls.is_some()) {
            let mut trust: Vec<PathBuf> = Vec::new();
            if let Some(tls) = &t.tls {
                trust.push(tls.trust_file());
            }
            if let Some(lt) = &l.tls {
                trust.extend(lt.certs.iter().map(|c| c.cert.clone()));
            }
            let mut roots = rustls::RootCertStore::empty();
            let mut problems = Vec::new();
            for p in trust.iter().filter(|p| p.is_file()) {
                for c in read_certs(p)? {
                    // A leaf among the roots is refused by some verifiers; the CA is enough.
                    if let Err(e) = roots.add(c) {
                        problems.push(format!("{}: {e}", p.display()));
                    }
                }
            }
            if roots.is_empty() {
                return Err(UpError::Drill(format!(
                    "no certificate to verify the site https://{} with (looked at {}){}",
                    l.address,
                    trust
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if problems.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", problems.join("; "))
                    }
                )));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| UpError::Drill(format!("TLS client: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            return Ok(Site {
                addr: reachable(t, l.address),
                tls: Some(Arc::new(cfg)),
            });
        }
        listeners
            .iter()
            .find(|l| l.redirect_https.is_none())
            .map(|l| Site {
                addr: reachable(t, l.address),
                tls: None,
            })
            .ok_or_else(|| {
                UpError::Drill("the topology has no http listener to reach the site through".into())
            })
    }

    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}/",
            if self.is_https() { "https" } else { "http" },
            self.addr
        )
    }

    /// One request (`Connection: close`), every step bounded by `timeout`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Response> {
        let client = Client::with_timeout(timeout);
        let tcp = client.connect(self.addr)?;
        let host = self.addr.to_string();
        match &self.tls {
            None => client.request_on(tcp, &host, method, path, headers, body),
            Some(cfg) => {
                let name = ServerName::IpAddress(self.addr.ip().into());
                let conn = rustls::ClientConnection::new(cfg.clone(), name)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = rustls::StreamOwned::new(conn, tcp);
                client.request_on(stream, &host, method, path, headers, body)
            }
        }
    }

    pub fn get(&self, path: &str, timeout: Duration) -> std::io::Result<Response> {
        self.request("GET", path, &[], b"", timeout)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rampart_topology::default::{render, DefaultOptions};
    use rampart_topology::Source;

    fn topology(dir: &Path, text: &str) -> Topology {
        std::fs::create_dir_all(dir.join("site")).unwrap();
        Topology::from_source(&Source::new(dir.join("rampart.toml"), text)).unwrap()
    }

    #[test]
    fn the_site_is_https_verified_by_the_ca_else_a_plain_listener_that_serves() {
        let dir = tempfile::tempdir().unwrap();
        let text = render(&DefaultOptions {
            cluster: "main",
            data_dir: Path::new(".rampart/main"),
            port_base: 8000,
        });
        let t = topology(dir.path(), &text);
        // Nothing to verify with before rampart up made the CA.
        let e = Site::of(&t).unwrap_err().to_string();
        assert!(e.contains("no certificate to verify the site"), "{e}");
        crate::tls::ensure_self_signed(&t).unwrap();
        let s = Site::of(&t).unwrap();
        assert!(s.is_https());
        assert_eq!(s.url(), "https://127.0.0.1:8081/");
        // Without [tls] the plain listener serves, and is the site.
        let plain = "[cluster]\nname = \"t\"\n[web]\nroot = \"site\"\n\
            [[web.node]]\nname = \"web1\"\nlisten = \"127.0.0.1:8101\"\n\
            [[lb.nodes]]\nname = \"lb1\"\naddress = \"127.0.0.1:8091\"\n\
            [[lb.listener]]\nname = \"site\"\naddress = \"127.0.0.1:8080\"\npool = \"web\"\n\
            [[lb.pool]]\nname = \"web\"\nservers = [{ name = \"web1\", address = \"127.0.0.1:8101\" }]\n";
        let s = Site::of(&topology(dir.path(), plain)).unwrap();
        assert!(!s.is_https());
        assert_eq!(s.url(), "http://127.0.0.1:8080/");
    }
}
