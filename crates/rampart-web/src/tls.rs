//! HTTPS on a node's listener (`[[web.node]] tls`, `--tls-cert`/`--tls-key`): rustls with
//! the ring provider (the balancer's), TLS 1.2 and 1.3 only, ALPN h2 and http/1.1.
//!
//! A listener with TLS tells a client's first byte apart: a TLS handshake record (0x16)
//! is a TLS connection, served by hyper and the application; anything else is plain
//! HTTP, which gets only `/healthz`, `/readyz` and `/metrics` (what `rampart up`, `status`
//! and the monitor read) and a 400 for every other path, so no page or API answer ever
//! leaves in clear. The zero-copy static-file path is plain-only (`sendfile(2)` cannot
//! encrypt); over TLS static files are served by the application.
//!
//! The certificate is read again on SIGHUP ([`NodeTls::reload`], as `nginx -s reload`
//! after a renewal): new handshakes get the new one, open connections keep theirs, and
//! files that do not load (or do not go together) leave the old one in place.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use rampart_topology::web::WebTls;

/// The first byte of a TLS connection: a handshake record.
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;

/// Why a node's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls cert {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("tls key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("tls: {0}")]
    Config(rustls::Error),
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// A node's listener TLS: its acceptor and the certificate it presents, swappable.
pub struct NodeTls {
    pub acceptor: TlsAcceptor,
    current: Arc<Current>,
    files: WebTls,
}

/// The certificate every handshake is given (one per node: no SNI choice).
#[derive(Debug)]
struct Current(arc_swap::ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl NodeTls {
    /// Read the node's certificate chain and key, checked to go together.
    pub fn new(t: &WebTls) -> Result<NodeTls, TlsError> {
        let current = Arc::new(Current(arc_swap::ArcSwap::from_pointee(load(t)?)));
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // No early data: a replayable request is not worth a round trip.
        cfg.max_early_data_size = 0;
        Ok(NodeTls {
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
            current,
            files: t.clone(),
        })
    }

    /// Read the same files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.0.store(Arc::new(load(&self.files)?));
        Ok(())
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A certificate chain and its key, checked to match.
fn load(t: &WebTls) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| TlsError::Cert {
            path: shown(&t.cert),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: shown(&t.cert),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: shown(&t.cert),
            reason: "no CERTIFICATE in the file (PEM expected)".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| TlsError::Key {
        path: shown(&t.key),
        reason: e.to_string(),
    })?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Key {
        path: shown(&t.key),
        reason: format!("does not go with {}: {e}", shown(&t.cert)),
    })?;
    // `from_der` checks the pair only when the key type can tell; ask explicitly.
    ck.keys_match().map_err(|e| TlsError::Key {
        path: shown(&t.key),
        reason: format!("does not go with {}: {e}", shown(&t.cert)),
    })?;
    Ok(ck)
}
